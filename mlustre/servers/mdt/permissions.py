"""permissions.py - who may do what to an inode: the caller's credentials and Linux's
permission rules (generic_permission, the sticky bit, set-id bits dropped by writes).

Pure functions of a credential and inode rows: no database, no clock.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from .errors import fail
from .schema import GID, MODE, UID, Row


@dataclass(frozen=True, slots=True)
class Cred:
    """The caller's identity, as the client's kernel reported it."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def in_group(cred: Cred, gid: int) -> bool:
    return gid == cred.gid or gid in cred.groups


def perm_ok(cred: Cred, r: Row, mask: int) -> bool:
    """Linux generic_permission: owner, then group, then other bits; root bypasses r/w.

    Root also bypasses x on directories, but needs some x bit to "execute" a file.
    """
    mode = r[MODE]
    if cred.uid == 0:
        if mask & os.X_OK and not stat.S_ISDIR(mode) and not mode & 0o111:
            return False
        return True
    if cred.uid == r[UID]:
        bits = (mode >> 6) & 7
    elif in_group(cred, r[GID]):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & mask == mask


def kill_suid(mode: int) -> int:
    """What a write by an unprivileged user does to the set-id bits (Linux should_remove_suid)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


def only_kills_setid(old: int, new: int) -> bool:
    """Is chmod old -> new only the clearing of set-id bits that a write or truncate does?
    The kernel sends that as a plain mode change by the writer (FUSE without
    handle_killpriv: fuse_setattr turns ATTR_KILL_SUID/SGID into ATTR_MODE); Linux lets it
    through for anyone who may write (notify_change with ATTR_FORCE), not only the owner."""
    setid = stat.S_ISUID | stat.S_ISGID
    return new != old and new & ~setid == old & ~setid and not new & setid & ~old


def check_sticky(cred: Cred, d: Row, victim: Row) -> None:
    """In a sticky directory only root, the directory's owner or the entry's owner may
    remove or replace an entry (EPERM)."""
    if (
        d[MODE] & stat.S_ISVTX
        and cred.uid != 0
        and cred.uid != d[UID]
        and cred.uid != victim[UID]
    ):
        raise fail(errno.EPERM, "sticky directory")
