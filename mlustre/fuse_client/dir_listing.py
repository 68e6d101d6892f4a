"""dir_listing.py - directories whose every name the client knows, under a lock.

A client holding a PR lock with the UPDATE bit on a directory knows that nobody changes
its entries: creating, removing or renaming a name in it takes EX UPDATE on it, which
calls that lock back first. A readdir that lists the whole directory in one reply and
grants that lock with it (MDS_READPAGE with "locks") so gives the complete listing,
true for as long as the lock is held. Lookups of names it lacks are then answered
"no such file" without a round trip (an untar's or a build's lookup before each
create), and names it has come with their own locks from the same reply.

Our own updates in the directory cancel our lock early and get a new one with the
reply; when the MDT says nothing else ran in between ("parent_lock_continues"), the
listing moves to the new lock with our change applied (md_cache.update_call).

Plain bookkeeping, no I/O. Bounded: at most `max_names` names over all directories,
the least recently used directories go first.
"""

from __future__ import annotations

from collections import OrderedDict

from .ldlm_client import ClientLock, LockState

MAX_NAMES = 200_000


class Listings:
    """dir ino -> (the lock that keeps it true, name -> ino)."""

    def __init__(self, max_names: int = MAX_NAMES) -> None:
        self.max_names = max_names
        self._dirs: OrderedDict[int, tuple[ClientLock, dict[bytes, int]]] = OrderedDict()
        self._names = 0

    def __len__(self) -> int:
        return len(self._dirs)

    def names(self, parent: int) -> dict[bytes, int] | None:
        """The complete listing of `parent` if its lock is still held, else None."""
        held = self._dirs.get(parent)
        if held is None:
            return None
        if held[0].state is not LockState.GRANTED:
            self._drop(parent)
            return None
        self._dirs.move_to_end(parent)
        return held[1]

    def complete(self, parent: int, lock: ClientLock, names: dict[bytes, int]) -> None:
        """`names` is all of `parent` under `lock` (granted with the listing)."""
        self._drop(parent)
        if lock.state is not LockState.GRANTED or len(names) > self.max_names:
            return
        self._dirs[parent] = (lock, names)
        self._names += len(names)
        while self._names > self.max_names and self._dirs:
            self._drop(next(iter(self._dirs)))

    def detach(self, parent: int) -> dict[bytes, int] | None:
        """Take `parent`'s listing away (its lock is about to be cancelled early)."""
        held = self._dirs.get(parent)
        if held is None:
            return None
        self._drop(parent)
        return held[1]

    def lock_gone(self, parent: int, lock: ClientLock) -> None:
        """A lock on `parent` is being given back: a listing it kept is no longer true."""
        held = self._dirs.get(parent)
        if held is not None and held[0] is lock:
            self._drop(parent)

    def add(self, parent: int, name: bytes, ino: int) -> None:
        """We made `name` in `parent` (under the lock that keeps its listing)."""
        names = self.names(parent)
        if names is not None and name not in names:
            names[name] = ino
            self._names += 1

    def remove(self, parent: int, name: bytes) -> None:
        names = self.names(parent)
        if names is not None and names.pop(name, None) is not None:
            self._names -= 1

    def _drop(self, parent: int) -> None:
        held = self._dirs.pop(parent, None)
        if held is not None:
            self._names -= len(held[1])
