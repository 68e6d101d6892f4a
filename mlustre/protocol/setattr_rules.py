"""setattr_rules.py - Linux's rules for chmod, chown and utimes, and for reading and
writing an inode by its mode bits, as pure functions of a credential and the inode's
mode, owner and group.

Two sides run them: the MDT, which enforces them on every setattr, and a client that
holds a write-back lock on a file (md_writeback.py), which applies a chmod, chown or
utimes itself and tells the MDT later. The MDT must never refuse what the client has
already told its application was done, so both decide with this one code.

No I/O, no clock: the caller passes the inode's fields.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Cred:
    """The caller's identity, as the client's kernel reported it."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


class SetattrDenied(Exception):
    """The caller may not make this change (errno: EPERM or EACCES)."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(what)
        self.errno = err
        self.what = what


def in_group(cred: Cred, gid: int) -> bool:
    return gid == cred.gid or gid in cred.groups


def mode_permits(cred: Cred, mode: int, uid: int, gid: int, mask: int) -> bool:
    """Linux generic_permission: owner, then group, then other bits; root bypasses r/w.

    Root also bypasses x on directories, but needs some x bit to "execute" a file.
    """
    if cred.uid == 0:
        if mask & os.X_OK and not stat.S_ISDIR(mode) and not mode & 0o111:
            return False
        return True
    if cred.uid == uid:
        bits = (mode >> 6) & 7
    elif in_group(cred, gid):
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


def owner_and_mode(cred: Cred, mode: int, uid: int, gid: int, attrs: dict[str, Any],
                   via_handle: bool) -> tuple[int, int, int]:
    """The (mode, uid, gid) a chown/chgrp/chmod in `attrs` leaves, or SetattrDenied: only
    root gives a file away, the owner changes its group to one of theirs, the owner (or a
    writer clearing set-id bits) changes the mode, a non-root chown drops set-id bits."""
    root = cred.uid == 0
    owner = root or cred.uid == uid
    if "uid" in attrs:
        new_uid = int(attrs["uid"])
        if not root and not (cred.uid == uid and new_uid == uid):
            raise SetattrDenied(errno.EPERM, "chown")
        uid = new_uid
    if "gid" in attrs:
        new_gid = int(attrs["gid"])
        if not root and not (cred.uid == uid and (new_gid == gid or in_group(cred, new_gid))):
            raise SetattrDenied(errno.EPERM, "chgrp")
        gid = new_gid
    if "mode" in attrs:
        new_mode = stat.S_IFMT(mode) | (int(attrs["mode"]) & 0o7777)
        if not owner and not (only_kills_setid(mode, new_mode)
                              and (via_handle or mode_permits(cred, mode, uid, gid, os.W_OK))):
            raise SetattrDenied(errno.EPERM, "chmod")
        mode = new_mode
        if not root and not in_group(cred, gid):
            mode &= ~stat.S_ISGID
    elif ("uid" in attrs or "gid" in attrs) and not root and stat.S_ISREG(mode):
        mode = kill_suid(mode)
    return mode, uid, gid


def check_times(cred: Cred, owner: bool, mode: int, uid: int, gid: int,
                attrs: dict[str, Any]) -> None:
    """SetattrDenied unless the caller may set the times in `attrs`: explicit times only
    the owner (or root), "now" anyone who may write. owner: as the file was before this
    setattr's chown."""
    for key in ("atime", "mtime"):
        if key + "_ns" in attrs:
            if not owner:
                raise SetattrDenied(errno.EPERM, "set times")
        elif attrs.get(key + "_now"):
            if not owner and not mode_permits(cred, mode, uid, gid, os.W_OK):
                raise SetattrDenied(errno.EACCES, "set times to now")
