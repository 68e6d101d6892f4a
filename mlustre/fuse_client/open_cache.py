"""open_cache.py - MDT open handles kept after the last close (Lustre's open cache).

A read-only open is an MDT request (the MDT checks permission and counts the open), and
tar, cp and git open the same files again and again. While the client holds an MDT
lock on the file whose bits cover its name, attributes and permissions (LOOKUP, UPDATE,
PERM), nothing that open checked can have changed: unlink, rename over it, chmod/chown,
an ACL change or a new link all take those bits in EX on the MDT and call the lock back
first. So the handle of a read-only open is kept at release, tied to that lock, and a
later read-only open by the same credentials takes it back without a request. The lock
going (callback, LRU, our own early cancel) closes what it kept; an eviction or a new
MDT instance forgets them (the MDT holds none of them any more).

No I/O here: the caller closes the handles these methods return.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from .ldlm_client import ClientLock, LockState

OPEN_CACHE_MAX = 1024  # handles kept per client (each is an open file on the MDT)

Key = tuple[int, Hashable]  # (inode, the opener's credentials)

# Flags that make an open more than "read it": they change the file, or ask the MDT
# for a check of their own (O_NOATIME: only the owner may).
_NOT_CACHED = os.O_TRUNC | os.O_CREAT | os.O_APPEND | os.O_NOATIME


def cacheable_open(flags: int) -> bool:
    """Is an open with these flags one the open cache keeps and serves (read-only)?"""
    return flags & os.O_ACCMODE == os.O_RDONLY and not flags & _NOT_CACHED


def cred_key(cred: Sequence[Any] | None) -> Hashable:
    """[uid, gid, groups] as a key: a kept open serves the credentials it was checked
    for, no others."""
    if not cred:
        return None
    uid, gid, groups = (list(cred) + [0, 0, []])[:3]
    return (uid, gid, tuple(groups or ()))


class OpenCache:
    """Closed read-only opens whose MDT handles are kept under an MDT lock."""

    def __init__(self, limit: int = OPEN_CACHE_MAX) -> None:
        if limit < 0:
            raise ValueError("the open cache limit must not be negative")
        self.limit = limit
        self._kept: OrderedDict[Key, tuple[int, ClientLock]] = OrderedDict()
        self._by_lock: dict[int, set[Key]] = {}
        self.stats = {"kept": 0, "hits": 0, "closed": 0}

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, ino: int, cred: Hashable, handle: int, lock: ClientLock) -> list[int]:
        """A read-only open of `ino` by `cred` closes while `lock` protects it: keep its
        handle. Returns the handles to close now (one it replaces, the oldest beyond
        the limit, or this one if the lock is no longer granted)."""
        if lock.state is not LockState.GRANTED or self.limit == 0:
            return [handle]
        out = []
        key = (ino, cred)
        old = self._pop(key)
        if old is not None:
            out.append(old)
        self._kept[key] = (handle, lock)
        self._by_lock.setdefault(lock.handle, set()).add(key)
        self.stats["kept"] += 1
        while len(self._kept) > self.limit:
            oldest = next(iter(self._kept))
            h = self._pop(oldest)
            assert h is not None
            out.append(h)
        self.stats["closed"] += len(out)
        return out

    def take(self, ino: int, cred: Hashable) -> int | None:
        """The handle kept for a read-only open of `ino` by `cred`, if its lock still
        holds (it is no longer kept: the new open owns it)."""
        key = (ino, cred)
        kept = self._kept.get(key)
        if kept is None or kept[1].state is not LockState.GRANTED:
            return None
        self._pop(key)
        self.stats["hits"] += 1
        return kept[0]

    def lock_gone(self, lock: ClientLock) -> list[int]:
        """`lock` is being given back: the handles it kept, to close."""
        out = []
        for key in self._by_lock.pop(lock.handle, set()):
            kept = self._kept.pop(key, None)
            if kept is not None:
                out.append(kept[0])
        self.stats["closed"] += len(out)
        return out

    def forget_all(self) -> list[int]:
        """Eviction or a new MDT instance: the MDT holds none of these any more."""
        out = [h for h, _ in self._kept.values()]
        self._kept.clear()
        self._by_lock.clear()
        return out

    def _pop(self, key: Key) -> int | None:
        kept = self._kept.pop(key, None)
        if kept is None:
            return None
        keys = self._by_lock.get(kept[1].handle)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_lock[kept[1].handle]
        return kept[0]
