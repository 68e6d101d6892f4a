"""schema.py - the MDT database's tables, the column order of an inode row, and what a
client is told about an inode (its attribute dict).

Every inode row the storage reads is selected with `COLS` (or `ICOLS` in a join), so the
index constants below name its columns; a directory-entry join appends the entry's id
(and name) after them.
"""

from __future__ import annotations

import json
import stat
from typing import Any

ROOT_INO = 1
SCHEMA_VERSION = 1
NAME_MAX = 255

S_IFMT = stat.S_IFMT(0o177777)

Row = tuple[Any, ...]

# Column order of every inode row (see COLS).
INO, GEN, MODE, NLINK, UID, GID, RDEV, SIZE = range(8)
ATIME, MTIME, CTIME, LAYOUT, PARENT, WRITTEN, DIR_LAYOUT = range(8, 15)
COLS = (
    "ino, gen, mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, layout, "
    "parent, written, dir_layout"
)
ICOLS = ", ".join("i." + c.strip() for c in COLS.split(","))

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    gen INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    target BLOB,
    layout TEXT,
    parent INTEGER NOT NULL DEFAULT 0,
    written INTEGER NOT NULL DEFAULT 0,
    dir_layout TEXT
);
CREATE INDEX IF NOT EXISTS inodes_orphans ON inodes(ino) WHERE nlink = 0;
CREATE TABLE IF NOT EXISTS dirents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    UNIQUE (parent, name)
);
CREATE INDEX IF NOT EXISTS dirents_parent_id ON dirents(parent, id);
CREATE INDEX IF NOT EXISTS dirents_ino ON dirents(ino);
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replies (
    uuid TEXT NOT NULL,
    xid INTEGER NOT NULL,
    transno INTEGER NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (uuid, xid)
);
CREATE TABLE IF NOT EXISTS som_unsure (ino INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS destroy_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ost_idx INTEGER NOT NULL,
    object_id INTEGER NOT NULL
);
"""


def attr_of(r: Row) -> dict:
    """The attributes of an inode row as replies carry them (what stat(2) needs)."""
    mode = r[MODE]
    fmt = mode & S_IFMT
    size = r[SIZE]
    layout = None
    if fmt == stat.S_IFREG:
        blocks = (size + 511) // 512
        if r[LAYOUT]:
            layout = json.loads(r[LAYOUT])
    elif fmt == stat.S_IFDIR:
        size, blocks = 4096, 8
    elif fmt == stat.S_IFLNK:
        blocks = (size + 511) // 512
    else:
        blocks = 0
    return {
        "ino": r[INO],
        "gen": r[GEN],
        "mode": mode,
        "nlink": r[NLINK],
        "uid": r[UID],
        "gid": r[GID],
        "rdev": r[RDEV],
        "size": size,
        "blocks": blocks,
        "atime_ns": r[ATIME],
        "mtime_ns": r[MTIME],
        "ctime_ns": r[CTIME],
        "layout": layout,
    }
