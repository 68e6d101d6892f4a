"""interfaces.py - what a target's components may ask of the target that holds them.

A lock service, a barrier and a recovery window are each given, by the target's
constructor, an object satisfying one of these small protocols (the target itself,
seen through the few members the component uses) rather than the whole server: the
components do not import target.py, and what they may do to it is written here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from .export import Export


class LockServiceHost(Protocol):
    """What the lock service needs of its target: the connected clients (to send them
    ASTs), reporting a client's protocol violation, and closing an evicted export."""

    @property
    def name(self) -> str: ...

    @property
    def exports(self) -> Mapping[str, Export]: ...

    def violation(self, uuid: str, kind: str, detail: str = "") -> None: ...

    async def evict_export(self, uuid: str, reason: str) -> None: ...


class TaskHost(Protocol):
    """Commits and background tasks of the target (the barrier's needs)."""

    async def commit(self) -> int: ...

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Start a task in the target's nursery; False if it is not running."""
        ...


class RecoveryHost(Protocol):
    """What the recovery window needs of its target: the connected clients, its
    transno, and the two ways a client goes (the lock service's eviction, and the
    eviction of one that did not come back in the window), then forgetting it."""

    @property
    def name(self) -> str: ...

    @property
    def exports(self) -> Mapping[str, Export]: ...

    @property
    def last_transno(self) -> int: ...

    async def evict(self, uuid: str, reason: str) -> None: ...

    async def evict_unrecovered(self, uuid: str, reason: str) -> None: ...

    def client_left(self, uuid: str) -> None: ...
