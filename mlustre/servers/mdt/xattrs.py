"""xattrs.py - extended attributes, with setxattr(2)'s flags and Linux's permission rule
(reading "user." names needs read permission; changing any needs ownership or write)."""

from __future__ import annotations

import errno
import os

from .db import MdtDb
from .errors import fail
from .inodes import Inodes
from .permissions import Cred, perm_ok
from .schema import UID, Row

XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536


class Xattrs:
    """The xattrs table (rows go with their inode, see Inodes.destroy)."""

    def __init__(self, db: MdtDb, inodes: Inodes) -> None:
        self._conn = db.conn
        self._inodes = inodes

    def get(self, cred: Cred, ino: int, name: bytes) -> bytes:
        """Value of an xattr; "user." names need read permission (Linux xattr_permission)."""
        r = self._inodes.row(ino)
        if name.startswith(b"user.") and not perm_ok(cred, r, os.R_OK):
            raise fail(errno.EACCES)
        v = self._conn.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
        ).fetchone()
        if v is None:
            raise fail(errno.ENODATA)
        return bytes(v[0])

    def with_any(self, inos: list[int]) -> set[int]:
        """Which of `inos` have at least one xattr (one query for a readdir page)."""
        found: set[int] = set()
        for i in range(0, len(inos), 500):
            part = inos[i:i + 500]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in self._conn.execute(
                f"SELECT DISTINCT ino FROM xattrs WHERE ino IN ({marks})", part))
        return found

    def names(self, cred: Cred, ino: int) -> list[bytes]:
        """Names of all xattrs of an inode (no permission needed, as in Linux)."""
        self._inodes.row(ino)
        rows = self._conn.execute("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,))
        return [bytes(r[0]) for r in rows]

    def _target(self, cred: Cred, ino: int, name: bytes) -> Row:
        if not name:
            raise fail(errno.EINVAL, "empty xattr name")
        if len(name) > XATTR_NAME_MAX:
            raise fail(errno.ERANGE, "xattr name too long")
        r = self._inodes.row(ino)
        if cred.uid != 0 and cred.uid != r[UID] and not perm_ok(cred, r, os.W_OK):
            raise fail(errno.EACCES)
        return r

    def set(self, cred: Cred, ino: int, name: bytes, value: bytes, flags: int,
            now: int) -> dict:
        """Set an xattr; XATTR_CREATE / XATTR_REPLACE as in setxattr(2).  Returns {}."""
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise fail(errno.EINVAL, "bad xattr flags")
        name, value = bytes(name), bytes(value)
        if len(value) > XATTR_SIZE_MAX:
            raise fail(errno.E2BIG)
        self._target(cred, ino, name)
        conn = self._conn
        if flags:
            exists = conn.execute(
                "SELECT 1 FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
            ).fetchone()
            if flags & XATTR_CREATE and exists:
                raise fail(errno.EEXIST)
            if flags & XATTR_REPLACE and not exists:
                raise fail(errno.ENODATA)
        conn.execute(
            "INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)", (ino, name, value)
        )
        self._inodes.touch_ctime(ino, now)
        return {}

    def remove(self, cred: Cred, ino: int, name: bytes, now: int) -> dict:
        """Remove an xattr (ENODATA if absent).  Returns {}."""
        name = bytes(name)
        self._target(cred, ino, name)
        cur = self._conn.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
        if cur.rowcount == 0:
            raise fail(errno.ENODATA)
        self._inodes.touch_ctime(ino, now)
        return {}
