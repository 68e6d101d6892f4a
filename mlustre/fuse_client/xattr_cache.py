"""xattr_cache.py - extended attributes cached under the inode's MDT lock.

Setting or removing an extended attribute takes EX UPDATE on its inode (the MDT calls
back every PR lock with the UPDATE bit first), so what a client learned of an inode's
xattrs while it held such a lock stays true until that lock goes. The kernel asks for
"security.capability" before every write and after every chown, and `ls -l` for
"security.selinux" of every file: most files have no xattrs at all, and a client that
knows it answers without a round trip.

Knowledge comes from a getxattr reply (one name), from a create (a new file has none)
and from a readdir with locks (the MDT says which entries have any). It is valid only
while the lock it was learned under is granted: no callback is needed to drop it.
Plain bookkeeping, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ldlm_client import ClientLock, LockState

UNKNOWN = object()  # (xattr_cache.known: ask the MDT)
MAX_NAMES = 64  # per inode: beyond that, nothing more is remembered


@dataclass(slots=True)
class XattrKnowledge:
    lock: ClientLock
    values: dict[bytes, bytes | None] = field(default_factory=dict)  # None: absent
    complete: bool = False  # every name the inode has is in `values`


def usable(k: XattrKnowledge | None, md: list[ClientLock]) -> bool:
    return k is not None and k.lock.state is LockState.GRANTED and k.lock in md


def known(k: XattrKnowledge | None, md: list[ClientLock], name: bytes) -> object:
    """The cached value of `name` (bytes), None if the inode has no such xattr, or
    UNKNOWN. `md`: the inode's granted MDT locks."""
    if k is None or not usable(k, md):
        return UNKNOWN
    if name in k.values:
        return k.values[name]
    return None if k.complete else UNKNOWN


def has_none(k: XattrKnowledge | None, md: list[ClientLock]) -> bool:
    """Is the inode known to have no xattr at all (listxattr: nothing to list)?"""
    return (k is not None and usable(k, md) and k.complete
            and all(v is None for v in k.values.values()))


def learned(k: XattrKnowledge | None, lock: ClientLock, name: bytes,
            value: bytes | None) -> XattrKnowledge | None:
    """What a getxattr sent under `lock` (granted all along) said; the knowledge to keep."""
    if lock.state is not LockState.GRANTED:
        return k
    if k is None or k.lock is not lock:
        k = XattrKnowledge(lock)
    if name in k.values or len(k.values) < MAX_NAMES:
        k.values[name] = value
    return k


def none_at_all(lock: ClientLock) -> XattrKnowledge | None:
    """The inode has no xattrs (new, or the MDT said so) under `lock`."""
    if lock.state is not LockState.GRANTED:
        return None
    return XattrKnowledge(lock, complete=True)


def moved(k: XattrKnowledge | None, lock: ClientLock | None) -> XattrKnowledge | None:
    """Our own update replaced the lock `k` was learned under with `lock`, nothing else
    running on the MDT in between (its reply's "lock_continues"): still true under it."""
    if k is None or lock is None or lock.state is not LockState.GRANTED:
        return None
    return XattrKnowledge(lock, k.values, k.complete)
