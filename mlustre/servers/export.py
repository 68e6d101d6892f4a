"""export.py - the server side of one client's connection to a target (Lustre's
obd_export), and the statistics counters every target component adds to.

Kept apart from target.py so that the components a target is built from (lock
service, barrier, recovery window) can name them without importing the target.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.message import Message
from ..protocol.rpc import Endpoint


@dataclass
class Export:
    """The server side of one client's connection to this target."""

    uuid: str
    endpoint: Endpoint
    connected_at: float = field(default_factory=time.time)
    nid: str = ""
    release: str = "2.0"
    flags: int = 0
    handle: int = 0
    requests: int = 0
    last_seen: float = 0.0  # (trio clock) the last request, pings included


# A request handler: (export, request) -> what the reply carries (target.py, DEFERRED).
Handler = Callable[[Export, Message], Awaitable[Any]]


class Stats(dict[str, int]):
    """A target's counters (lctl's `stats` parameter): one table that the target and
    each of its components count into, handed to them by the target's constructor."""

    def count(self, what: str, n: int = 1) -> None:
        self[what] = self.get(what, 0) + n
