"""handles.py - open handles, and the inodes they keep alive after their last name went
(orphans).

Handles live in memory only: after a restart no file is open, so inodes unlinked while
open (nlink 0) are destroyed by ``cleanup_orphans()`` once clients had their chance to
re-open them (open replay).  Handle numbers carry the boot count in their high bits, so a
handle of an earlier run never matches one of this run.
"""

from __future__ import annotations

import errno
import os
import stat

from .db import MdtDb
from .errors import fail
from .inodes import Inodes
from .permissions import Cred, kill_suid, perm_ok
from .schema import COLS, CTIME, INO, MODE, MTIME, NLINK, SIZE, Row, attr_of
from .size_on_mdt import SizeAuthority


def writes(flags: int | None) -> bool:
    """Does an open with these flags write (or truncate) the file?"""
    return flags is not None and (flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC))


class OpenHandles:
    """Handle -> inode, and how many handles each inode has open.  Changes are staged
    with the running operation (db.on_success): a failed operation opens nothing."""

    def __init__(self, db: MdtDb, inodes: Inodes, size: SizeAuthority) -> None:
        self._db = db
        self._inodes = inodes
        self._size = size
        self._next_handle = db.boots << 32
        self._handles: dict[int, int] = {}
        self._opens: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._handles)

    def is_open(self, handle: int) -> bool:
        """Is `handle` an open handle (of any client)?"""
        return handle in self._handles

    def open_count(self, ino: int) -> int:
        """How many handles are open on ino."""
        return self._opens.get(ino, 0)

    def new(self, ino: int, flags: int | None = None) -> int:
        """Allocate a handle now; register it only if the operation succeeds. flags:
        the open's (a writer's handle makes the size on the MDT unsure, size_on_mdt.py)."""
        self._next_handle += 1
        handle = self._next_handle
        if writes(flags):
            self._size.writer_opened(ino, handle)

        def register() -> None:
            self._handles[handle] = ino
            self._opens[ino] = self._opens.get(ino, 0) + 1

        self._db.on_success(register)
        return handle

    def open(self, cred: Cred, ino: int, flags: int, reopen: bool, now: int) -> dict:
        """Open an inode: permission by access mode (+W for O_TRUNC); O_TRUNC empties it.
        reopen: a file opened before a restart (unlinked ones too): no permission check,
        no truncation.  Returns {"handle", "attr", "truncated"}."""
        r = list(self._inodes.row(ino))
        if reopen:
            return {"handle": self.new(ino, flags), "attr": attr_of(r), "truncated": False}
        acc = flags & os.O_ACCMODE
        mask = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(acc, os.R_OK | os.W_OK)
        if flags & os.O_TRUNC:
            mask |= os.W_OK
        if stat.S_ISDIR(r[MODE]) and mask & os.W_OK:
            raise fail(errno.EISDIR)
        if not perm_ok(cred, r, mask):
            raise fail(errno.EACCES)
        truncated = False
        if flags & os.O_TRUNC and stat.S_ISREG(r[MODE]):
            r[SIZE] = 0
            r[MTIME] = r[CTIME] = now
            if cred.uid != 0:
                r[MODE] = kill_suid(r[MODE])
            self._db.conn.execute(
                "UPDATE inodes SET size = 0, mtime_ns = ?, ctime_ns = ?, mode = ? WHERE ino = ?",
                (now, now, r[MODE], ino),
            )
            self._size.truncated(ino)
            truncated = True
        return {"handle": self.new(ino, flags), "attr": attr_of(r), "truncated": truncated}

    def close(self, handle: int, clean: bool = True) -> dict:
        """Drop an open; the last close of an unlinked inode destroys it.  Returns {}.
        clean: a writer's close after it reported its size (not a client that left)."""
        ino = self._handles.get(handle)
        if ino is None:
            raise fail(errno.EBADF, f"unknown handle {handle}")
        self._size.closing(handle, clean)
        if self._opens.get(ino, 0) <= 1:
            r = self._db.conn.execute(
                f"SELECT {COLS} FROM inodes WHERE ino = ?", (ino,)).fetchone()
            if r is not None and r[NLINK] == 0:
                self._inodes.destroy(r)

        def unregister() -> None:
            del self._handles[handle]
            left = self._opens.get(ino, 0) - 1
            if left > 0:
                self._opens[ino] = left
            else:
                self._opens.pop(ino, None)

        self._db.on_success(unregister)
        return {}

    def drop_link(self, r: Row, now: int) -> None:
        """One name of r went away; destroy it, or leave an orphan if it is still open."""
        nlink = 0 if stat.S_ISDIR(r[MODE]) else r[NLINK] - 1
        if nlink == 0 and self._opens.get(r[INO], 0) == 0:
            self._inodes.destroy(r)
        else:
            self._db.conn.execute(
                "UPDATE inodes SET nlink = ?, ctime_ns = ? WHERE ino = ?", (nlink, now, r[INO])
            )

    def cleanup_orphans(self) -> int:
        """Destroy every inode with no links and no opens (after a restart: all of them);
        return how many.  An operation without transno."""
        rows = self._db.conn.execute(f"SELECT {COLS} FROM inodes WHERE nlink = 0").fetchall()
        n = 0
        for r in rows:
            if self._opens.get(r[INO], 0) == 0:
                self._inodes.destroy(r)
                n += 1
        return n
