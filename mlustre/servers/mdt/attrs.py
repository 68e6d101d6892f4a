"""attrs.py - an inode's attributes: reading them, access checks, and the updates that
change them (chmod/chown/truncate/utimes, the size and times data writes leave, atime).

Linux's rules: only the owner (or root) changes mode and explicit times, only root gives
a file away, a non-root chown or write drops set-id bits, and "now" times need write
permission.
"""

from __future__ import annotations

import errno
import os
import stat

from ...protocol.constants import MAX_FILE_SIZE
from ...protocol.setattr_rules import SetattrDenied, check_times, owner_and_mode
from .db import MdtDb
from .errors import fail
from .inodes import Inodes
from .permissions import Cred, kill_suid, perm_ok
from .schema import ATIME, CTIME, GID, MODE, MTIME, S_IFMT, SIZE, UID, WRITTEN, attr_of
from .size_on_mdt import SizeAuthority

KNOWN_ATTRS = frozenset(
    {"mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "atime_now", "mtime_now",
     "write_size", "write_mtime_ns", "ctime_ns"}
)


class Attributes:
    """Attribute reads and updates of inode rows."""

    def __init__(self, db: MdtDb, inodes: Inodes, size: SizeAuthority) -> None:
        self._conn = db.conn
        self._inodes = inodes
        self._size = size

    def getattr(self, ino: int) -> dict:
        """Attributes of an inode (ENOENT if it is gone)."""
        return attr_of(self._inodes.row(ino))

    def access(self, cred: Cred, ino: int, mask: int) -> None:
        """EACCES unless cred may access ino with mask (os.R_OK|W_OK|X_OK; 0 = exists)."""
        if mask & ~(os.R_OK | os.W_OK | os.X_OK):
            raise fail(errno.EINVAL)
        r = self._inodes.row(ino)
        if mask and not perm_ok(cred, r, mask):
            raise fail(errno.EACCES)

    def setattr(self, cred: Cred, ino: int, attrs: dict, via_handle: bool, now: int) -> dict:
        """chmod/chown/truncate/utimes with Linux permission rules; returns the new attr.
        via_handle: a truncate through an open handle (its open checked the permission)."""
        a = {k: v for k, v in attrs.items() if v is not None and v is not False}
        unknown = set(a) - KNOWN_ATTRS
        if unknown:
            raise fail(errno.EINVAL, f"unknown attributes {sorted(unknown)}")
        r = list(self._inodes.row(ino))
        if not a:
            return attr_of(r)
        root = cred.uid == 0
        owner = root or cred.uid == r[UID]
        fmt = r[MODE] & S_IFMT
        try:
            mode, r[UID], r[GID] = owner_and_mode(cred, r[MODE], r[UID], r[GID], a,
                                                  via_handle)
        except SetattrDenied as e:
            raise fail(e.errno, e.what) from None
        if "size" in a:
            size = int(a["size"])
            if fmt == stat.S_IFDIR:
                raise fail(errno.EISDIR)
            if fmt != stat.S_IFREG:
                raise fail(errno.EINVAL, "size of a non-regular file")
            if size < 0:
                raise fail(errno.EINVAL, "negative size")
            if size > MAX_FILE_SIZE:
                raise fail(errno.EFBIG, f"size beyond the maximum file size {MAX_FILE_SIZE}")
            if not via_handle and not perm_ok(cred, r, os.W_OK):
                raise fail(errno.EACCES)
            r[SIZE] = size
            r[MTIME] = now
            if size > 0:
                r[WRITTEN] = 1
            self._size.truncated(ino)
            if not root and "mode" not in a:
                mode = kill_suid(mode)
        if "write_size" in a:
            # The size its writer's data gave the file (a write_update riding on the
            # setattr that follows it, as tar's utimes after writing): grows only.
            if fmt != stat.S_IFREG:
                raise fail(errno.EINVAL, "write size of a non-regular file")
            grown = int(a["write_size"])
            if not 0 <= grown <= MAX_FILE_SIZE:
                raise fail(errno.EFBIG if grown > 0 else errno.EINVAL, "write size")
            if grown > r[SIZE]:
                r[SIZE] = grown
            r[WRITTEN] = 1
        try:
            check_times(cred, owner, r[MODE], r[UID], r[GID], a)
        except SetattrDenied as e:
            raise fail(e.errno, e.what) from None
        if "write_mtime_ns" in a and "mtime_ns" not in a and not a.get("mtime_now"):
            # (The mtime its writer's data gave the file, riding with write_size on a
            # write-back flush: no explicit time set after it.)
            r[MTIME] = max(r[MTIME], int(a["write_mtime_ns"]))
        for key, idx in (("atime", ATIME), ("mtime", MTIME)):
            if key + "_ns" in a:
                r[idx] = int(a[key + "_ns"])
            elif a.get(key + "_now"):
                r[idx] = now
        if "ctime_ns" in a:
            # A write-back flush: the change was made on the client, at its time.
            now = int(a["ctime_ns"])
        r[MODE] = mode
        r[CTIME] = now
        self._conn.execute(
            "UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, atime_ns = ?, mtime_ns = ?,"
            " ctime_ns = ?, written = ? WHERE ino = ?",
            (mode, r[UID], r[GID], r[SIZE], r[ATIME], r[MTIME], now, r[WRITTEN], ino),
        )
        return attr_of(r)

    def touch_atime(self, ino: int, atime_ns: int) -> dict:
        """A client read the file: set its atime only (ctime stays, as for a read)."""
        r = list(self._inodes.row(ino))
        if atime_ns < 0:
            raise fail(errno.EINVAL, "negative time")
        r[ATIME] = atime_ns
        self._conn.execute("UPDATE inodes SET atime_ns = ? WHERE ino = ?", (atime_ns, ino))
        return attr_of(r)

    def write_update(self, ino: int, size: int, mtime_ns: int, kill_priv: bool) -> dict:
        """The client wrote data to the OSTs: grow size, set mtime/ctime, and drop set-id
        bits if a non-root writer wrote (kill_priv; root keeps them, as on Linux)."""
        r = list(self._inodes.row(ino))
        if stat.S_ISDIR(r[MODE]):
            raise fail(errno.EISDIR)
        if not stat.S_ISREG(r[MODE]):
            raise fail(errno.EINVAL, "write to a non-regular file")
        if size < 0:
            raise fail(errno.EINVAL, "negative size")
        if size > MAX_FILE_SIZE:
            raise fail(errno.EFBIG, f"size beyond the maximum file size {MAX_FILE_SIZE}")
        r[SIZE] = max(size, r[SIZE])
        r[MTIME] = mtime_ns
        # ctime never goes back: a chmod may have reached us before this report of an
        # earlier write.
        r[CTIME] = max(r[CTIME], mtime_ns)
        if kill_priv:
            r[MODE] = kill_suid(r[MODE])
        r[WRITTEN] = 1
        self._conn.execute(
            "UPDATE inodes SET size = ?, mtime_ns = ?, ctime_ns = ?, mode = ?, written = 1"
            " WHERE ino = ?",
            (r[SIZE], mtime_ns, r[CTIME], r[MODE], ino),
        )
        return attr_of(r)
