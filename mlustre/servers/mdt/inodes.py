"""inodes.py - inode rows and directory-entry rows: fetch, insert, remove, and the
timestamps and link counts a directory change moves.  Shared by the namespace, the
attribute updates and the open handles."""

from __future__ import annotations

import errno
import json
import logging
import stat

from .db import MdtDb
from .destroy_log import DestroyLog
from .errors import fail
from .permissions import Cred, in_group
from .replayed import ReplayedUpdate
from .schema import COLS, GID, ICOLS, INO, LAYOUT, MODE, Row

log = logging.getLogger(__name__)


class Inodes:
    """The inodes and dirents tables, with the ``inodes`` meta counter (statfs)."""

    def __init__(self, db: MdtDb, destroy_log: DestroyLog) -> None:
        self._db = db
        self._destroy_log = destroy_log

    def row(self, ino: int) -> Row:
        """The inode row (ENOENT if it is gone)."""
        r = self._db.conn.execute(f"SELECT {COLS} FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if r is None:
            raise fail(errno.ENOENT, f"no inode {ino}")
        return r

    def entry(self, parent: int, name: bytes) -> Row | None:
        """The inode row `name` in `parent` names, with the entry's id appended."""
        return self._db.conn.execute(
            f"SELECT {ICOLS}, d.id FROM dirents d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent = ? AND d.name = ?",
            (parent, name),
        ).fetchone()

    def count(self) -> int:
        """How many inodes exist (a meta counter: COUNT(*) would scan)."""
        return self._db.meta_get("inodes", 1)

    def insert(
        self,
        cred: Cred,
        parent: Row,
        mode: int,
        *,
        nlink: int,
        now: int,
        rdev: int = 0,
        size: int = 0,
        target: bytes | None = None,
        layout: dict | None = None,
        replayed: ReplayedUpdate | None = None,
    ) -> Row:
        """Insert a new inode owned by cred, applying the parent's set-group-ID rules.
        A replayed create gets its first inode number and generation back if free."""
        gid = cred.gid
        is_dir = stat.S_ISDIR(mode)
        if parent[MODE] & stat.S_ISGID:
            gid = parent[GID]
            if is_dir:
                mode |= stat.S_ISGID
        if not is_dir and mode & stat.S_ISGID and cred.uid != 0 and not in_group(cred, gid):
            mode &= ~stat.S_ISGID
        layout_json = json.dumps(layout, separators=(",", ":")) if layout else None
        dir_parent = parent[INO] if is_dir else 0
        # gen .. ctime_ns, in the column order shared by the INSERT and the returned row.
        common = (self._db.boots, mode, nlink, cred.uid, gid, rdev, size, now, now, now)
        forced = self._replayed_identity(replayed)
        if forced is not None:
            common = (forced[1], *common[1:])
        # (ino NULL: SQLite picks the next rowid)
        ino = self._db.conn.execute(
            "INSERT INTO inodes (ino, gen, mode, nlink, uid, gid, rdev, size, atime_ns,"
            " mtime_ns, ctime_ns, target, layout, parent)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (forced[0] if forced else None, *common, target, layout_json, dir_parent),
        ).lastrowid
        self._db.meta_add("inodes", 1)
        return (ino, *common, layout_json, dir_parent, 0, None)

    def _replayed_identity(self, replayed: ReplayedUpdate | None) -> tuple[int, int] | None:
        """(ino, gen) a replayed create must reuse, if that inode number is free."""
        identity = replayed.identity() if replayed is not None else None
        if identity is None:
            return None
        if self._db.conn.execute("SELECT 1 FROM inodes WHERE ino = ?",
                                 (identity[0],)).fetchone():
            log.warning("replayed create: inode %d is taken; a new number is used",
                        identity[0])
            return None
        return identity

    def add_entry(self, parent: int, name: bytes, ino: int) -> None:
        self._db.conn.execute(
            "INSERT INTO dirents (parent, name, ino) VALUES (?, ?, ?)", (parent, name, ino)
        )

    def remove_entry(self, entry_id: int) -> None:
        self._db.conn.execute("DELETE FROM dirents WHERE id = ?", (entry_id,))

    def has_entries(self, ino: int) -> bool:
        return (
            self._db.conn.execute(
                "SELECT 1 FROM dirents WHERE parent = ? LIMIT 1", (ino,)).fetchone()
            is not None
        )

    def touch_dir(self, ino: int, now: int, nlink_delta: int = 0) -> None:
        """An entry was added or removed: the directory's mtime and ctime move."""
        self._db.conn.execute(
            "UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? WHERE ino = ?",
            (now, now, nlink_delta, ino),
        )

    def touch_ctime(self, ino: int, now: int) -> None:
        self._db.conn.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, ino))

    def destroy(self, r: Row) -> None:
        """Remove an inode that has no links and no opens; log its OST objects."""
        ino = r[INO]
        self._db.conn.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
        self._db.conn.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
        self._destroy_log.add_layout(r[LAYOUT])
        self._db.meta_add("inodes", -1)
        log.debug("destroyed inode %d", ino)
