"""reply_log.py - what a target answered each client's recent updates (Lustre's
last_rcvd reply data), so that a resent request whose reply was lost is answered
again instead of executed twice (a mkdir does not come back EEXIST, an unlink not
ENOENT).

Sans-IO: the target records every reply to an update it executed, and asks before
executing a request flagged RESENT. A target whose updates are transactional
(the MDT) also writes each record in the update's own transaction, so a record
survives exactly when its update does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

SLOTS = 256  # replies remembered per client (more than it can have in flight)


@dataclass(slots=True)
class SavedReply:
    transno: int
    status: int
    body: dict[str, Any]


class ReplyLog:
    """Per client uuid, the replies to its last SLOTS update requests, by xid."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._by_client: dict[str, OrderedDict[int, SavedReply]] = {}
        self._running: set[tuple[str, int]] = set()

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_client.values())

    def record(self, uuid: str, xid: int, saved: SavedReply) -> int | None:
        """Remember a reply; the oldest xid forgotten for that client, if any."""
        replies = self._by_client.setdefault(uuid, OrderedDict())
        replies[xid] = saved
        replies.move_to_end(xid)
        if len(replies) > self.slots:
            old, _ = replies.popitem(last=False)
            return old
        return None

    def lookup(self, uuid: str, xid: int) -> SavedReply | None:
        replies = self._by_client.get(uuid)
        return replies.get(xid) if replies is not None else None

    def forget_client(self, uuid: str) -> None:
        """The client is gone for good (evicted): its resends are refused anyway."""
        self._by_client.pop(uuid, None)

    # A request whose execution has started but not answered yet (an update waiting
    # for locks): a resend of it must wait for that answer, not execute again.
    def start(self, uuid: str, xid: int) -> bool:
        """Mark (uuid, xid) running; False if it already is."""
        key = (uuid, xid)
        if key in self._running:
            return False
        self._running.add(key)
        return True

    def done(self, uuid: str, xid: int) -> None:
        self._running.discard((uuid, xid))

    def running(self, uuid: str, xid: int) -> bool:
        return (uuid, xid) in self._running
