"""permissions.py - who may do what to an inode: the caller's credentials and Linux's
permission rules (generic_permission, the sticky bit, set-id bits dropped by writes).

Pure functions of a credential and inode rows: no database, no clock.
"""

from __future__ import annotations

import errno
import stat

from ...protocol.setattr_rules import (  # noqa: F401 (the MDT takes them from here)
    Cred,
    in_group,
    kill_suid,
    mode_permits,
    only_kills_setid,
)
from .errors import fail
from .schema import GID, MODE, UID, Row


def perm_ok(cred: Cred, r: Row, mask: int) -> bool:
    """Linux generic_permission on an inode row (protocol/setattr_rules.py)."""
    return mode_permits(cred, r[MODE], r[UID], r[GID], mask)


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
