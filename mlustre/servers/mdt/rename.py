"""rename.py - rename(2), with Linux's RENAME_NOREPLACE and RENAME_EXCHANGE.

The checks come in Linux's order (search on both directories, the source's existence,
loops, write permission, the sticky rule, then type and emptiness of a replaced target),
so that each failure gives a local filesystem's errno.
"""

from __future__ import annotations

import errno
import os
import stat

from ...protocol.constants import RENAME_EXCHANGE, RENAME_NOREPLACE
from .db import MdtDb
from .errors import fail
from .handles import OpenHandles
from .inodes import Inodes
from .namespace import Namespace, check_name
from .permissions import Cred, check_sticky, perm_ok
from .schema import INO, MODE, NLINK, Row


class Renames:
    """Moving names between (or within) directories."""

    def __init__(self, db: MdtDb, inodes: Inodes, handles: OpenHandles,
                 namespace: Namespace) -> None:
        self._conn = db.conn
        self._inodes = inodes
        self._handles = handles
        self._namespace = namespace

    def rename(
        self,
        cred: Cred,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
        now: int,
    ) -> dict:
        """POSIX rename plus Linux RENAME_NOREPLACE/RENAME_EXCHANGE; returns {"replaced"}."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise fail(errno.EINVAL, "bad rename flags")
        old_name = check_name(old_name)
        new_name = check_name(new_name)
        ns = self._namespace
        od = ns.dir(cred, old_parent, os.X_OK)
        nd = od if new_parent == old_parent else ns.dir(cred, new_parent, os.X_OK)
        src = self._inodes.entry(old_parent, old_name)
        if src is None:
            raise fail(errno.ENOENT)
        if nd[NLINK] == 0:
            raise fail(errno.ENOENT, "target directory was removed")
        tgt = self._inodes.entry(new_parent, new_name)
        if flags & RENAME_EXCHANGE:
            if tgt is None:
                raise fail(errno.ENOENT)
            return self._exchange(cred, od, nd, src, tgt, now)
        if tgt is not None and flags & RENAME_NOREPLACE:
            raise fail(errno.EEXIST)
        src_dir = stat.S_ISDIR(src[MODE])
        if src_dir and new_parent != old_parent and ns.is_ancestor(src[INO], new_parent):
            raise fail(errno.EINVAL, "directory moved into its own subtree")
        if tgt is not None and tgt[INO] == src[INO]:
            return {"replaced": None}  # two names of one inode: POSIX says do nothing
        for d in (od, nd):
            if not perm_ok(cred, d, os.W_OK | os.X_OK):
                raise fail(errno.EACCES)
        check_sticky(cred, od, src)
        if tgt is not None:
            check_sticky(cred, nd, tgt)
            tgt_dir = stat.S_ISDIR(tgt[MODE])
            if src_dir and not tgt_dir:
                raise fail(errno.ENOTDIR)
            if tgt_dir and not src_dir:
                raise fail(errno.EISDIR)
            if tgt_dir and self._inodes.has_entries(tgt[INO]):
                raise fail(errno.ENOTEMPTY)
        deltas = {old_parent: 0, new_parent: 0}
        replaced = None
        if tgt is not None:
            self._inodes.remove_entry(tgt[-1])
            self._handles.drop_link(tgt, now)
            if stat.S_ISDIR(tgt[MODE]):
                deltas[new_parent] -= 1
            replaced = tgt[INO]
        self._conn.execute(
            "UPDATE dirents SET parent = ?, name = ? WHERE id = ?", (new_parent, new_name, src[-1])
        )
        if src_dir and new_parent != old_parent:
            deltas[old_parent] -= 1
            deltas[new_parent] += 1
            self._conn.execute(
                "UPDATE inodes SET parent = ?, ctime_ns = ? WHERE ino = ?",
                (new_parent, now, src[INO]),
            )
        else:
            self._inodes.touch_ctime(src[INO], now)
        for ino, delta in deltas.items():
            self._inodes.touch_dir(ino, now, delta)
        return {"replaced": replaced}

    def _exchange(self, cred: Cred, od: Row, nd: Row, src: Row, tgt: Row, now: int) -> dict:
        """RENAME_EXCHANGE: swap what two names point at, any types."""
        old_parent, new_parent = od[INO], nd[INO]
        src_dir, tgt_dir = stat.S_ISDIR(src[MODE]), stat.S_ISDIR(tgt[MODE])
        ns = self._namespace
        if old_parent != new_parent:
            if src_dir and ns.is_ancestor(src[INO], new_parent):
                raise fail(errno.EINVAL, "directory moved into its own subtree")
            if tgt_dir and ns.is_ancestor(tgt[INO], old_parent):
                raise fail(errno.EINVAL, "directory moved into its own subtree")
        if src[INO] == tgt[INO]:
            return {"replaced": None}
        for d in (od, nd):
            if not perm_ok(cred, d, os.W_OK | os.X_OK):
                raise fail(errno.EACCES)
        check_sticky(cred, od, src)
        check_sticky(cred, nd, tgt)
        conn = self._conn
        conn.execute("UPDATE dirents SET ino = ? WHERE id = ?", (tgt[INO], src[-1]))
        conn.execute("UPDATE dirents SET ino = ? WHERE id = ?", (src[INO], tgt[-1]))
        conn.execute(
            "UPDATE inodes SET parent = CASE WHEN parent = 0 THEN 0 ELSE ? END, ctime_ns = ?"
            " WHERE ino = ?",
            (new_parent, now, src[INO]),
        )
        conn.execute(
            "UPDATE inodes SET parent = CASE WHEN parent = 0 THEN 0 ELSE ? END, ctime_ns = ?"
            " WHERE ino = ?",
            (old_parent, now, tgt[INO]),
        )
        shift = int(src_dir) - int(tgt_dir)  # subdirectories moving from old to new parent
        if old_parent == new_parent:
            self._inodes.touch_dir(old_parent, now)
        else:
            self._inodes.touch_dir(old_parent, now, -shift)
            self._inodes.touch_dir(new_parent, now, shift)
        return {"replaced": None}
