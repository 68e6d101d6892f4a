"""mdt_store.py - the metadata target's storage and POSIX namespace logic, on SQLite.

The MDT keeps every inode, directory entry, extended attribute and file layout in one
SQLite database.  This module is pure synchronous code: the trio MDS server calls it from
its event loop, so every method does a handful of indexed queries and never scans.

Transactions: each update runs inside its own SAVEPOINT of a transaction that the server
ends with ``settle()`` once it has recorded the update's reply (a COMMIT to the WAL without
fsync: the update survives the death of the process, not of the machine), or with
``commit()``, which also fsyncs (a machine crash loses nothing before it).  Each update gets
the next transaction number ("transno"); ``last_committed`` - the fsynced point - tells
clients which of their requests are durable; updates after it can be lost with the machine,
to be replayed by clients.  A failing operation leaves no partial change and consumes no
transno.

Open handles live in memory only: after a restart no file is open, so inodes unlinked while
open (orphans, nlink 0) are removed by ``cleanup_orphans()``.  Removing a regular file
appends its OST objects to a destroy log that a server task drains.
"""

from __future__ import annotations

import bisect
import contextvars
import errno
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import msgpack

from ..protocol.constants import MAX_FILE_SIZE
from ..protocol.errors import ErrnoError
from .reply_log import SavedReply

log = logging.getLogger(__name__)

# Set (by the server, for the task serving one request) while a client replays an
# update the store lost in a crash: (its original transno, the attributes its reply
# gave the inode it created), so that the replay gets the same transno, inode number,
# generation and OST objects as the first time.
REPLAY_HINT: contextvars.ContextVar[tuple[int, dict] | None] = contextvars.ContextVar(
    "mdt_replay_hint", default=None)

ROOT_INO = 1
OBJECT_ID_GAP = 1 << 24  # object ids skipped at each start (more than one run can lose)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

XATTR_CREATE = 1
XATTR_REPLACE = 2

NAME_MAX = 255
SYMLINK_MAX = 4095
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
STRIPE_SIZE_UNIT = 65536
STRIPE_SIZE_MAX = 1 << 32  # as Lustre (LOV_MAX_STRIPE_SIZE: under 4 GiB, here 4 GiB)
SCHEMA_VERSION = 1

_S_IFMT = stat.S_IFMT(0o177777)
_KNOWN_ATTRS = frozenset(
    {"mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "atime_now", "mtime_now"}
)
_LAYOUT_KEYS = ("stripe_count", "stripe_size", "stripe_offset")
# Keys of a full file layout that a caller may hand back to us; they are outputs, not settings.
_LAYOUT_OUTPUT_KEYS = frozenset({"objects", "gen"})

# Column order of every inode row this module reads (see _COLS).
_INO, _GEN, _MODE, _NLINK, _UID, _GID, _RDEV, _SIZE = range(8)
_ATIME, _MTIME, _CTIME, _LAYOUT, _PARENT, _WRITTEN, _DIR_LAYOUT = range(8, 15)
_COLS = (
    "ino, gen, mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, layout, "
    "parent, written, dir_layout"
)
_ICOLS = ", ".join("i." + c.strip() for c in _COLS.split(","))

_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS destroy_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ost_idx INTEGER NOT NULL,
    object_id INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Cred:
    """The caller's identity, as the client's kernel reported it."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


class MdtError(ErrnoError):
    """An operation failed with a POSIX errno (positive int in .errno)."""


Row = tuple[Any, ...]


def _fail(code: int, msg: str = "") -> MdtError:
    return MdtError(code, msg)


def _in_group(cred: Cred, gid: int) -> bool:
    return gid == cred.gid or gid in cred.groups


def _perm_ok(cred: Cred, r: Row, mask: int) -> bool:
    """Linux generic_permission: owner, then group, then other bits; root bypasses r/w.

    Root also bypasses x on directories, but needs some x bit to "execute" a file.
    """
    mode = r[_MODE]
    if cred.uid == 0:
        if mask & os.X_OK and not stat.S_ISDIR(mode) and not mode & 0o111:
            return False
        return True
    if cred.uid == r[_UID]:
        bits = (mode >> 6) & 7
    elif _in_group(cred, r[_GID]):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & mask == mask


def _check_name(name: bytes) -> bytes:
    """Reject names a directory entry can never have (checked before any lookup)."""
    if not isinstance(name, bytes):
        name = os.fsencode(name) if isinstance(name, str) else bytes(name)
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise _fail(errno.EINVAL, f"invalid name {name!r}")
    if len(name) > NAME_MAX:
        raise _fail(errno.ENAMETOOLONG)
    return name


def _kill_suid(mode: int) -> int:
    """What a write by an unprivileged user does to the set-id bits (Linux should_remove_suid)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


def _only_kills_setid(old: int, new: int) -> bool:
    """Is chmod old -> new only the clearing of set-id bits that a write or truncate does?
    The kernel sends that as a plain mode change by the writer (FUSE without
    handle_killpriv: fuse_setattr turns ATTR_KILL_SUID/SGID into ATTR_MODE); Linux lets it
    through for anyone who may write (notify_change with ATTR_FORCE), not only the owner."""
    setid = stat.S_ISUID | stat.S_ISGID
    return new != old and new & ~setid == old & ~setid and not new & setid & ~old


def _attr(r: Row) -> dict:
    mode = r[_MODE]
    fmt = mode & _S_IFMT
    size = r[_SIZE]
    layout = None
    if fmt == stat.S_IFREG:
        blocks = (size + 511) // 512
        if r[_LAYOUT]:
            layout = json.loads(r[_LAYOUT])
    elif fmt == stat.S_IFDIR:
        size, blocks = 4096, 8
    elif fmt == stat.S_IFLNK:
        blocks = (size + 511) // 512
    else:
        blocks = 0
    return {
        "ino": r[_INO],
        "gen": r[_GEN],
        "mode": mode,
        "nlink": r[_NLINK],
        "uid": r[_UID],
        "gid": r[_GID],
        "rdev": r[_RDEV],
        "size": size,
        "blocks": blocks,
        "atime_ns": r[_ATIME],
        "mtime_ns": r[_MTIME],
        "ctime_ns": r[_CTIME],
        "layout": layout,
    }


def _check_layout(layout: dict | None, ost_count: int) -> dict:
    """Validate striping settings; return only the keys that were given (None = not given)."""
    if layout is None:
        return {}
    if not isinstance(layout, dict):
        raise _fail(errno.EINVAL, "layout must be a dict")
    out: dict[str, int] = {}
    for key, value in layout.items():
        if key in _LAYOUT_OUTPUT_KEYS or value is None:
            continue
        if key not in _LAYOUT_KEYS:
            raise _fail(errno.EINVAL, f"unknown layout key {key!r}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(errno.EINVAL, f"{key} must be an int")
        out[key] = value
    count = out.get("stripe_count")
    if count is not None and count < -1:
        raise _fail(errno.EINVAL, "stripe_count must be -1 or >= 0")
    size = out.get("stripe_size")
    if size is not None and (size <= 0 or size % STRIPE_SIZE_UNIT or size > STRIPE_SIZE_MAX):
        raise _fail(errno.EINVAL, f"stripe_size must be a positive multiple of {STRIPE_SIZE_UNIT} "
                                  f"of at most {STRIPE_SIZE_MAX}")
    offset = out.get("stripe_offset")
    if offset is not None and not (offset == -1 or 0 <= offset < ost_count):
        raise _fail(errno.EINVAL, "stripe_offset must be -1 or a valid OST index")
    return out


class MdtStore:
    """The MDT's inodes, namespace, xattrs, layouts and destroy log in one SQLite database."""

    def __init__(
        self,
        path: str,
        *,
        ost_count: int,
        default_stripe_count: int = 1,
        default_stripe_size: int = 1 << 20,
        release: str = "2.0",
    ) -> None:
        if ost_count < 1:
            raise ValueError("ost_count must be >= 1")
        if default_stripe_size <= 0 or default_stripe_size % STRIPE_SIZE_UNIT:
            raise ValueError(f"default_stripe_size must be a multiple of {STRIPE_SIZE_UNIT}")
        self.path = str(path)
        self.ost_count = ost_count
        self.default_stripe_count = default_stripe_count
        self.default_stripe_size = default_stripe_size
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: settle()'s commits reach the WAL (safe from a kill) without an fsync;
        # commit() switches to FULL for one commit, which fsyncs the WAL (safe from a
        # machine crash).
        db.execute("PRAGMA synchronous=NORMAL")
        self._unsynced = False
        db.execute("BEGIN IMMEDIATE")
        # Statement by statement: executescript() would commit behind our back.
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                db.execute(stmt)
        self._meta: dict[str, int] = dict(db.execute("SELECT key, value FROM meta"))
        now = time.time_ns()
        if db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone() is None:
            db.execute(
                "INSERT INTO inodes (ino, gen, mode, nlink, uid, gid, size, atime_ns, mtime_ns,"
                " ctime_ns, parent) VALUES (?, 1, ?, 2, 0, 0, 4096, ?, ?, ?, ?)",
                (ROOT_INO, stat.S_IFDIR | 0o755, now, now, now, ROOT_INO),
            )
            self._meta.update({"schema_version": SCHEMA_VERSION, "last_transno": 0, "inodes": 1})
            log.info("created new MDT database %s", self.path)
        stored_version = self._meta.get("schema_version", SCHEMA_VERSION)
        if stored_version > SCHEMA_VERSION:
            log.warning(
                "MDT database %s has schema version %d, newer than %d; continuing",
                self.path,
                stored_version,
                SCHEMA_VERSION,
            )
        # A boot counter in the high bits keeps handles from an earlier run from matching ours.
        self._meta["boots"] = self._meta.get("boots", 0) + 1
        # Ids handed out after the last commit of an earlier run were lost with it but may
        # already name objects on the OSTs: never hand them out again. The generation of new
        # inodes is the boot count, so a reused inode number is a different (ino, gen).
        # Objects of those ids may exist without a file (orphans): cleaned up once recovery
        # is over, from the first id not committed (of the earliest run not cleaned up yet)
        # to this run's first id.
        self._run_start: dict[int, int] = {}
        for key in [k for k in self._meta if k.startswith("obj_next:")]:
            ost = int(key.split(":", 1)[1])
            self._meta.setdefault(f"orphans_from:{ost}", self._meta[key])
            self._meta[key] += OBJECT_ID_GAP
            self._run_start[ost] = self._meta[key]
        # Which release created which inodes (by ranges of inode numbers), for their FIDs:
        # IGIF for those created under 1.8. A new range starts where the release changes.
        code = 18 if release == "1.8" else 20
        ranges = {int(k.split(":", 1)[1]): v for k, v in self._meta.items()
                  if k.startswith("release_from:")}
        if not ranges or ranges[max(ranges)] != code:
            start = 1 if not ranges else \
                (db.execute("SELECT max(ino) FROM inodes").fetchone()[0] or 0) + 1
            self._meta[f"release_from:{start}"] = code
            ranges[start] = code
        self._release_starts = sorted(ranges)
        self._release_codes = [ranges[k] for k in self._release_starts]
        db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", self._meta.items())
        db.execute("COMMIT")
        self.replay_barrier = False
        self._last_transno: int = self._meta.get("last_transno", 0)
        self._last_committed: int = self._last_transno
        self._next_handle = self._meta["boots"] << 32
        self._handles: dict[int, int] = {}
        self._opens: dict[int, int] = {}
        self._root_default = self._load_dir_default(ROOT_INO)
        # Per-operation state, valid only inside _run.
        self._dirty: dict[str, int] = {}
        self._hooks: list[Callable[[], None]] = []
        self._closed = False

    # ------------------------------------------------------------------ transactions

    @property
    def in_transaction(self) -> bool:
        """Are there uncommitted changes (with or without a transno)?"""
        return self._db.in_transaction

    @property
    def last_transno(self) -> int:
        """Highest transno assigned so far (persisted with each update)."""
        return self._last_transno

    @property
    def last_committed(self) -> int:
        """Highest transno whose transaction is committed."""
        return self._last_committed

    @property
    def unsynced(self) -> bool:
        """Changes settled (safe from a kill) but not yet fsynced?"""
        return self._unsynced

    def settle(self) -> None:
        """End the open transaction (a COMMIT to the WAL, no fsync): what it holds now
        survives a kill -9 of the server. Not under a replay barrier."""
        if self._db.in_transaction and not self.replay_barrier:
            self._db.execute("COMMIT")
            self._unsynced = True

    def commit(self) -> int:
        """Make everything durable (fsync); return last_committed. Under a replay
        barrier nothing is committed any more: the next crash loses it all (clients
        must replay it), as Lustre's replay_barrier makes the device read-only."""
        if self.replay_barrier:
            return self._last_committed
        db = self._db
        if db.in_transaction:
            db.execute("COMMIT")
            self._unsynced = True
        if self._unsynced or self._last_committed < self._last_transno:
            db.execute("PRAGMA synchronous=FULL")
            try:  # a commit with FULL fsyncs the WAL, and with it every frame before
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           ("synced_transno", self._last_transno))
                db.execute("COMMIT")
            finally:
                db.execute("PRAGMA synchronous=NORMAL")
            self._unsynced = False
        self._last_committed = self._last_transno
        return self._last_committed

    @overload
    def close(self) -> None: ...

    @overload
    def close(self, handle: int) -> tuple[int, dict]: ...

    def close(self, handle: int | None = None) -> tuple[int, dict] | None:
        """close(): commit and close the store.  close(handle): drop an open (an update).

        The spec names both operations "close"; the argument tells them apart.
        """
        if handle is None:
            if not self._closed:
                self.commit()
                self._db.close()
                self._closed = True
            return None
        return self._run(self._close_handle, handle)

    def _run(self, fn: Callable[..., Any], *args: Any, transno: bool = True, **kw: Any) -> Any:
        """Run one operation atomically inside the long transaction.

        The SAVEPOINT makes a failed operation vanish entirely; in-memory effects (meta
        counters, open handles) are staged in _dirty/_hooks and applied only on success.
        """
        db = self._db
        if not db.in_transaction:
            db.execute("BEGIN IMMEDIATE")
        db.execute("SAVEPOINT op")
        self._dirty = {}
        self._hooks = []
        try:
            result = fn(*args, **kw)
            hint = REPLAY_HINT.get()
            if transno and hint is not None and hint[0] > self._last_transno + 1:
                self._last_transno = hint[0] - 1  # (transnos lost with others' updates)
            if transno:
                self._dirty["last_transno"] = self._last_transno + 1
            if self._dirty:
                db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", self._dirty.items()
                )
            db.execute("RELEASE op")
        except BaseException:
            self._dirty = {}
            self._hooks = []
            if db.in_transaction:  # some SQLite errors (e.g. disk full) abort it all
                db.execute("ROLLBACK TO op")
                db.execute("RELEASE op")
            raise
        self._meta.update(self._dirty)
        hooks = self._hooks
        self._dirty = {}
        self._hooks = []
        for hook in hooks:
            hook()
        if not transno:
            return result
        self._last_transno += 1
        return self._last_transno, result

    def created_under_18(self, ino: int) -> bool:
        """Was inode `ino` created by a 1.8 server (so that its FID is IGIF)?"""
        i = bisect.bisect_right(self._release_starts, ino) - 1
        return i >= 0 and self._release_codes[i] == 18

    def _meta_get(self, key: str, default: int = 0) -> int:
        if key in self._dirty:
            return self._dirty[key]
        return self._meta.get(key, default)

    def _meta_add(self, key: str, delta: int, default: int = 0) -> int:
        """Add delta to a meta counter (staged for this op); return the old value."""
        old = self._meta_get(key, default)
        self._dirty[key] = old + delta
        return old

    # ------------------------------------------------------------------ row helpers

    def _row(self, ino: int) -> Row:
        r = self._db.execute(f"SELECT {_COLS} FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if r is None:
            raise _fail(errno.ENOENT, f"no inode {ino}")
        return r

    def _dir(self, cred: Cred, ino: int, mask: int) -> Row:
        """Fetch a directory the caller uses, checking type and permission."""
        r = self._row(ino)
        if not stat.S_ISDIR(r[_MODE]):
            raise _fail(errno.ENOTDIR)
        if not _perm_ok(cred, r, mask):
            raise _fail(errno.EACCES)
        return r

    def _entry(self, parent: int, name: bytes) -> Row | None:
        return self._db.execute(
            f"SELECT {_ICOLS}, d.id FROM dirents d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent = ? AND d.name = ?",
            (parent, name),
        ).fetchone()

    def _touch_dir(self, ino: int, now: int, nlink_delta: int = 0) -> None:
        """An entry was added or removed: the directory's mtime and ctime move."""
        self._db.execute(
            "UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? WHERE ino = ?",
            (now, now, nlink_delta, ino),
        )

    def _check_sticky(self, cred: Cred, d: Row, victim: Row) -> None:
        if (
            d[_MODE] & stat.S_ISVTX
            and cred.uid != 0
            and cred.uid != d[_UID]
            and cred.uid != victim[_UID]
        ):
            raise _fail(errno.EPERM, "sticky directory")

    def _load_dir_default(self, ino: int) -> dict | None:
        r = self._db.execute("SELECT dir_layout FROM inodes WHERE ino = ?", (ino,)).fetchone()
        return json.loads(r[0]) if r and r[0] else None

    # ------------------------------------------------------------------ layouts

    def _alloc_objects(self, count: int, offset: int) -> tuple[int, list[list[int]]]:
        """Pick OSTs for `count` stripes and take a fresh object id on each."""
        n = self.ost_count
        if offset == -1:
            start = self._meta_add("rr_next", 1) % n
        else:
            start = offset % n
        objects = []
        for i in range(count):
            ost = (start + i) % n
            objects.append([ost, self._meta_add(f"obj_next:{ost}", 1, default=1)])
        return start, objects

    def orphan_ranges(self) -> dict[int, tuple[int, int]]:
        """OST index -> object ids [lo, hi) handed out by earlier runs after their last
        commit: objects of creations lost with a crash may exist there."""
        out = {}
        for key, lo in self._meta.items():
            if key.startswith("orphans_from:"):
                ost = int(key.split(":", 1)[1])
                hi = self._run_start.get(ost, lo)
                out[ost] = (lo, max(lo, hi))
        return out

    def objects_in(self, ost: int, lo: int, hi: int) -> list[int]:
        """Object ids in [lo, hi) on OST `ost` that a file's layout names (replayed
        creations reuse the ids they had), open-unlinked files included."""
        rows = self._db.execute(
            "SELECT DISTINCT json_extract(o.value, '$[1]') AS oid"
            " FROM inodes, json_each(inodes.layout, '$.objects') AS o"
            " WHERE inodes.layout IS NOT NULL AND json_extract(o.value, '$[0]') = ?"
            " AND oid >= ? AND oid < ? ORDER BY oid", (ost, lo, hi))
        return [r[0] for r in rows]

    def orphans_cleaned(self, ost: int) -> None:
        """The OST destroyed the orphans of orphan_ranges()[ost] (kept at the next commit;
        done again after a crash before it, which destroys nothing more)."""
        key = f"orphans_from:{ost}"

        def op() -> None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
            self._hooks.append(lambda: self._meta.pop(key, None))

        self._run(op, transno=False)

    def _new_layout(self, settings: dict, gen: int) -> dict:
        count = settings["stripe_count"]
        if count == -1 or count > self.ost_count:
            count = self.ost_count
        count = max(count, 1)
        start, objects = self._alloc_objects(count, settings["stripe_offset"])
        return {
            "stripe_count": count,
            "stripe_size": settings["stripe_size"],
            "stripe_offset": start,
            "objects": objects,
            "gen": gen,
        }

    def _settings_for(self, parent: Row, explicit: dict) -> dict:
        """Per-key precedence: explicit > parent default > root default > store default."""
        settings = {
            "stripe_count": self.default_stripe_count,
            "stripe_size": self.default_stripe_size,
            "stripe_offset": -1,
        }
        if self._root_default:
            settings.update(self._root_default)
        if parent[_INO] != ROOT_INO and parent[_DIR_LAYOUT]:
            settings.update(json.loads(parent[_DIR_LAYOUT]))
        settings.update(explicit)
        return settings

    def _log_destroy(self, layout_json: str | None) -> None:
        if not layout_json:
            return
        objects = json.loads(layout_json)["objects"]
        self._db.executemany(
            "INSERT INTO destroy_log (ost_idx, object_id) VALUES (?, ?)",
            [(ost, oid) for ost, oid in objects],
        )

    def _destroy(self, r: Row) -> None:
        """Remove an inode that has no links and no opens; log its OST objects."""
        ino = r[_INO]
        self._db.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
        self._db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
        self._log_destroy(r[_LAYOUT])
        self._meta_add("inodes", -1)
        log.debug("destroyed inode %d", ino)

    def _drop_link(self, r: Row, now: int) -> None:
        """One name of r went away; destroy it or leave an orphan if it is still open."""
        nlink = 0 if stat.S_ISDIR(r[_MODE]) else r[_NLINK] - 1
        if nlink == 0 and self._opens.get(r[_INO], 0) == 0:
            self._destroy(r)
        else:
            self._db.execute(
                "UPDATE inodes SET nlink = ?, ctime_ns = ? WHERE ino = ?", (nlink, now, r[_INO])
            )

    # ------------------------------------------------------------------ reads

    def getattr(self, ino: int) -> dict:
        """Attributes of an inode (ENOENT if it is gone)."""
        return _attr(self._row(ino))

    def lookup(self, cred: Cred, parent: int, name: bytes) -> dict:
        """Attributes of `name` in directory `parent` (needs search permission).

        "." and ".." resolve (the parent column is "..") so NFS-style lookups work.
        """
        d = self._dir(cred, parent, os.X_OK)
        if name == b".":
            return _attr(d)
        if name == b"..":
            return _attr(self._row(d[_PARENT] or ROOT_INO))
        name = _check_name(name)
        r = self._entry(parent, name)
        if r is None:
            raise _fail(errno.ENOENT)
        return _attr(r)

    # ------------------------------------------------------------------ reply data

    def save_reply(self, uuid: str, xid: int, saved: SavedReply,
                   forgotten: int | None = None) -> None:
        """Keep a reply in the open transaction, with the update it answers (Lustre's
        last_rcvd reply data): both survive a crash, or neither."""
        db = self._db
        if not db.in_transaction:
            db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO replies (uuid, xid, transno, status, body)"
                   " VALUES (?, ?, ?, ?, ?)",
                   (uuid, xid, saved.transno, saved.status,
                    msgpack.packb(saved.body, use_bin_type=True)))
        if forgotten is not None:
            db.execute("DELETE FROM replies WHERE uuid = ? AND xid = ?", (uuid, forgotten))

    def saved_replies(self) -> list[tuple[str, int, SavedReply]]:
        """Every kept reply, oldest first per client."""
        rows = self._db.execute(
            "SELECT uuid, xid, transno, status, body FROM replies ORDER BY rowid").fetchall()
        return [(u, x, SavedReply(t, st, msgpack.unpackb(b, raw=False))) for u, x, t, st, b
                in rows]

    def child_ino(self, parent: int, name: bytes) -> int | None:
        """The inode `name` in `parent` names, without permission checks (the MDT
        locks it before an update; the update itself checks permissions)."""
        r = self._db.execute("SELECT ino FROM dirents WHERE parent = ? AND name = ?",
                             (parent, name)).fetchone()
        return None if r is None else int(r[0])

    def readlink(self, ino: int) -> bytes:
        """Target of a symlink (EINVAL for anything else)."""
        r = self._db.execute("SELECT mode, target FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if r is None:
            raise _fail(errno.ENOENT)
        if not stat.S_ISLNK(r[0]):
            raise _fail(errno.EINVAL, "not a symlink")
        return bytes(r[1])

    def readdir(
        self, cred: Cred, ino: int, cookie: int, count: int
    ) -> list[tuple[bytes, dict, int]]:
        """Up to `count` entries after `cookie`, in dirent-id order so cookies stay valid."""
        self._dir(cred, ino, os.R_OK)
        if count <= 0:
            return []
        rows = self._db.execute(
            f"SELECT {_ICOLS}, d.id, d.name FROM dirents d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
            (ino, cookie, count),
        ).fetchall()
        return [(bytes(r[-1]), _attr(r), r[-2]) for r in rows]

    def getxattr(self, cred: Cred, ino: int, name: bytes) -> bytes:
        """Value of an xattr; "user." names need read permission (Linux xattr_permission)."""
        r = self._row(ino)
        if name.startswith(b"user.") and not _perm_ok(cred, r, os.R_OK):
            raise _fail(errno.EACCES)
        v = self._db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
        ).fetchone()
        if v is None:
            raise _fail(errno.ENODATA)
        return bytes(v[0])

    def listxattr(self, cred: Cred, ino: int) -> list[bytes]:
        """Names of all xattrs of an inode (no permission needed, as in Linux)."""
        self._row(ino)
        rows = self._db.execute("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,))
        return [bytes(r[0]) for r in rows]

    def statfs(self) -> dict:
        """Inode counts; kept in a meta counter because COUNT(*) would scan."""
        files = self._meta_get("inodes", 1)
        return {"files": files, "ffree": max(2**32 - files, 0), "namemax": NAME_MAX}

    def access(self, cred: Cred, ino: int, mask: int) -> None:
        """EACCES unless cred may access ino with mask (os.R_OK|W_OK|X_OK; 0 = exists)."""
        if mask & ~(os.R_OK | os.W_OK | os.X_OK):
            raise _fail(errno.EINVAL)
        r = self._row(ino)
        if mask and not _perm_ok(cred, r, mask):
            raise _fail(errno.EACCES)

    def get_dir_layout(self, ino: int) -> dict | None:
        """The default layout stored on a directory (None if unset or not a directory)."""
        r = self._row(ino)
        if not stat.S_ISDIR(r[_MODE]) or not r[_DIR_LAYOUT]:
            return None
        return json.loads(r[_DIR_LAYOUT])

    def path_of(self, ino: int) -> bytes:
        """One path of ino relative to the root, without a leading "/" (b"" for the root).

        Walks directory entries up to the root; for a hard-linked file the oldest link
        is taken. ENOENT for an unknown inode or one no directory names (an orphan).
        """
        r = self._row(ino)
        if ino == ROOT_INO:
            return b""
        if r[_NLINK] == 0:
            raise _fail(errno.ENOENT, f"inode {ino} is not linked in the namespace")
        parts: list[bytes] = []
        if stat.S_ISDIR(r[_MODE]):
            parent = r[_PARENT]
        else:  # dirents_ino makes this an index lookup
            e = self._db.execute(
                "SELECT parent, name FROM dirents WHERE ino = ? ORDER BY id LIMIT 1", (ino,)
            ).fetchone()
            if e is None:
                raise _fail(errno.ENOENT, f"inode {ino} is not linked in the namespace")
            parent = e[0]
            parts.append(bytes(e[1]))
            ino = parent
            parent = None
        while ino != ROOT_INO:
            if parent is None:
                p = self._db.execute("SELECT parent FROM inodes WHERE ino = ?", (ino,)).fetchone()
                parent = p[0] if p else 0
            # A directory has one entry, found through its parent's (parent, name) index.
            e = self._db.execute(
                "SELECT name FROM dirents WHERE parent = ? AND ino = ? LIMIT 1", (parent, ino)
            ).fetchone() if parent else None
            if e is None:
                raise _fail(errno.ENOENT, f"inode {ino} is not linked in the namespace")
            parts.append(bytes(e[0]))
            ino, parent = parent, None
            if len(parts) > 100_000:  # a loop would be corruption; don't hang the server
                raise _fail(errno.ELOOP, "directory parent chain loops")
        return b"/".join(reversed(parts))

    def open_count(self, ino: int) -> int:
        """How many handles are open on ino."""
        return self._opens.get(ino, 0)

    # ------------------------------------------------------------------ namespace updates

    def _insert_inode(
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
    ) -> Row:
        """Insert a new inode owned by cred, applying the parent's set-group-ID rules."""
        gid = cred.gid
        is_dir = stat.S_ISDIR(mode)
        if parent[_MODE] & stat.S_ISGID:
            gid = parent[_GID]
            if is_dir:
                mode |= stat.S_ISGID
        if not is_dir and mode & stat.S_ISGID and cred.uid != 0 and not _in_group(cred, gid):
            mode &= ~stat.S_ISGID
        layout_json = json.dumps(layout, separators=(",", ":")) if layout else None
        dir_parent = parent[_INO] if is_dir else 0
        # gen .. ctime_ns, in the column order shared by the INSERT and the returned row.
        common = (self._meta["boots"], mode, nlink, cred.uid, gid, rdev, size, now, now, now)
        forced = self._replayed_identity()  # a replayed create: its first ino and gen
        if forced is not None:
            common = (forced[1], *common[1:])
        # (ino NULL: SQLite picks the next rowid)
        ino = self._db.execute(
            "INSERT INTO inodes (ino, gen, mode, nlink, uid, gid, rdev, size, atime_ns,"
            " mtime_ns, ctime_ns, target, layout, parent)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (forced[0] if forced else None, *common, target, layout_json, dir_parent),
        ).lastrowid
        self._meta_add("inodes", 1)
        return (ino, *common, layout_json, dir_parent, 0, None)

    def _replayed_identity(self) -> tuple[int, int] | None:
        """(ino, gen) a replayed create must reuse, if that inode number is free."""
        hint = REPLAY_HINT.get()
        attr = hint[1] if hint else None
        if not attr or type(attr.get("ino")) is not int or type(attr.get("gen")) is not int:
            return None
        if self._db.execute("SELECT 1 FROM inodes WHERE ino = ?", (attr["ino"],)).fetchone():
            log.warning("replayed create: inode %d is taken; a new number is used",
                        attr["ino"])
            return None
        return attr["ino"], attr["gen"]

    def _replayed_layout(self) -> dict | None:
        """The layout (OST objects) a replayed create had the first time."""
        hint = REPLAY_HINT.get()
        layout = hint[1].get("layout") if hint and hint[1] else None
        return layout if isinstance(layout, dict) and layout.get("objects") else None

    def _add_entry(self, parent: int, name: bytes, ino: int) -> None:
        self._db.execute(
            "INSERT INTO dirents (parent, name, ino) VALUES (?, ?, ?)", (parent, name, ino)
        )

    def _prepare_create(
        self, cred: Cred, parent: int, name: bytes
    ) -> tuple[Row, bytes, Row | None]:
        """Common start of create/mkdir/symlink/link: Linux order is X, then EEXIST, then W."""
        name = _check_name(name)
        d = self._dir(cred, parent, os.X_OK)
        if d[_NLINK] == 0:
            raise _fail(errno.ENOENT, "directory was removed")
        return d, name, self._entry(parent, name)

    def create(
        self,
        cred: Cred,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int = 0,
        *,
        open_flags: int | None = None,
        exclusive: bool = True,
        layout: dict | None = None,
    ) -> tuple[int, dict]:
        """mknod/creat of any non-directory type; optionally open the result.

        Returns {"attr", "handle", "created"}.  With exclusive=False an existing regular
        file is opened instead (O_CREAT without O_EXCL).
        """
        return self._run(
            self._create, cred, parent, name, mode, rdev, open_flags, exclusive, layout
        )

    def _create(
        self,
        cred: Cred,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int,
        open_flags: int | None,
        exclusive: bool,
        layout: dict | None,
    ) -> dict:
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt == stat.S_IFDIR:
            raise _fail(errno.EPERM, "use mkdir for directories")
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise _fail(errno.EINVAL, "bad file type")
        explicit = _check_layout(layout, self.ost_count)
        d, name, existing = self._prepare_create(cred, parent, name)
        if existing is not None:
            if exclusive:
                raise _fail(errno.EEXIST)
            if stat.S_ISDIR(existing[_MODE]):
                raise _fail(errno.EISDIR)
            if not stat.S_ISREG(existing[_MODE]):
                raise _fail(errno.EEXIST)
            if open_flags is None:
                return {"attr": _attr(existing), "handle": None, "created": False}
            res = self._open(cred, existing[_INO], open_flags)
            return {"attr": res["attr"], "handle": res["handle"], "created": False}
        if not _perm_ok(cred, d, os.W_OK | os.X_OK):
            raise _fail(errno.EACCES)
        if fmt in (stat.S_IFCHR, stat.S_IFBLK) and cred.uid != 0:
            raise _fail(errno.EPERM, "only root makes device nodes")
        now = time.time_ns()
        new_layout = None
        if fmt == stat.S_IFREG:
            new_layout = self._replayed_layout() or \
                self._new_layout(self._settings_for(d, explicit), 1)
        r = self._insert_inode(
            cred,
            d,
            fmt | (mode & 0o7777),
            nlink=1,
            now=now,
            rdev=rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
            layout=new_layout,
        )
        self._add_entry(parent, name, r[_INO])
        self._touch_dir(parent, now)
        handle = None
        if open_flags is not None:
            # The creator may open what it just made whatever the mode (Linux skips the check).
            handle = self._new_handle(r[_INO])
        return {"attr": _attr(r), "handle": handle, "created": True}

    def mkdir(self, cred: Cred, parent: int, name: bytes, mode: int) -> tuple[int, dict]:
        """Make a directory; returns its attr.  Parent nlink grows by one."""
        return self._run(self._mkdir, cred, parent, name, mode)

    def _mkdir(self, cred: Cred, parent: int, name: bytes, mode: int) -> dict:
        d, name, existing = self._prepare_create(cred, parent, name)
        if existing is not None:
            raise _fail(errno.EEXIST)
        if not _perm_ok(cred, d, os.W_OK | os.X_OK):
            raise _fail(errno.EACCES)
        now = time.time_ns()
        # Linux vfs_mkdir keeps only rwx and sticky from the caller's mode.
        r = self._insert_inode(cred, d, stat.S_IFDIR | (mode & 0o1777), nlink=2, now=now, size=4096)
        self._add_entry(parent, name, r[_INO])
        self._touch_dir(parent, now, 1)
        return _attr(r)

    def symlink(self, cred: Cred, parent: int, name: bytes, target: bytes) -> tuple[int, dict]:
        """Make a symlink (mode 0o120777, size = len(target)); returns its attr."""
        return self._run(self._symlink, cred, parent, name, target)

    def _symlink(self, cred: Cred, parent: int, name: bytes, target: bytes) -> dict:
        target = bytes(target)
        if not target:
            raise _fail(errno.ENOENT, "empty symlink target")
        if len(target) > SYMLINK_MAX:
            raise _fail(errno.ENAMETOOLONG)
        d, name, existing = self._prepare_create(cred, parent, name)
        if existing is not None:
            raise _fail(errno.EEXIST)
        if not _perm_ok(cred, d, os.W_OK | os.X_OK):
            raise _fail(errno.EACCES)
        now = time.time_ns()
        r = self._insert_inode(
            cred, d, stat.S_IFLNK | 0o777, nlink=1, now=now, size=len(target), target=target
        )
        self._add_entry(parent, name, r[_INO])
        self._touch_dir(parent, now)
        return _attr(r)

    def link(self, cred: Cred, ino: int, new_parent: int, new_name: bytes) -> tuple[int, dict]:
        """Add a hard link; returns the inode's attr (EPERM for directories)."""
        return self._run(self._link, cred, ino, new_parent, new_name)

    def _link(self, cred: Cred, ino: int, new_parent: int, new_name: bytes) -> dict:
        r = self._row(ino)
        if stat.S_ISDIR(r[_MODE]):
            raise _fail(errno.EPERM, "hard link to a directory")
        d, new_name, existing = self._prepare_create(cred, new_parent, new_name)
        if existing is not None:
            raise _fail(errno.EEXIST)
        if not _perm_ok(cred, d, os.W_OK | os.X_OK):
            raise _fail(errno.EACCES)
        if r[_NLINK] == 0:
            raise _fail(errno.ENOENT, "inode was unlinked")
        now = time.time_ns()
        self._add_entry(new_parent, new_name, ino)
        self._db.execute(
            "UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? WHERE ino = ?", (now, ino)
        )
        self._touch_dir(new_parent, now)
        return self.getattr(ino)

    def _prepare_remove(self, cred: Cred, parent: int, name: bytes) -> tuple[Row, Row]:
        """Common start of unlink/rmdir: X, lookup, W, then the sticky rule."""
        name = _check_name(name)
        d = self._dir(cred, parent, os.X_OK)
        r = self._entry(parent, name)
        if r is None:
            raise _fail(errno.ENOENT)
        if not _perm_ok(cred, d, os.W_OK | os.X_OK):
            raise _fail(errno.EACCES)
        self._check_sticky(cred, d, r)
        return d, r

    def unlink(self, cred: Cred, parent: int, name: bytes) -> tuple[int, dict]:
        """Remove a non-directory name; returns {"ino"}.  Open files become orphans."""
        return self._run(self._unlink, cred, parent, name)

    def _unlink(self, cred: Cred, parent: int, name: bytes) -> dict:
        _d, r = self._prepare_remove(cred, parent, name)
        if stat.S_ISDIR(r[_MODE]):
            raise _fail(errno.EISDIR)
        now = time.time_ns()
        self._db.execute("DELETE FROM dirents WHERE id = ?", (r[-1],))
        self._drop_link(r, now)
        self._touch_dir(parent, now)
        return {"ino": r[_INO]}

    def rmdir(self, cred: Cred, parent: int, name: bytes) -> tuple[int, dict]:
        """Remove an empty directory; returns {"ino"}."""
        return self._run(self._rmdir, cred, parent, name)

    def _rmdir(self, cred: Cred, parent: int, name: bytes) -> dict:
        if name == b".":
            raise _fail(errno.EINVAL, "rmdir of '.'")
        if name == b"..":
            raise _fail(errno.ENOTEMPTY, "rmdir of '..'")
        _d, r = self._prepare_remove(cred, parent, name)
        if not stat.S_ISDIR(r[_MODE]):
            raise _fail(errno.ENOTDIR)
        if r[_INO] == ROOT_INO:
            raise _fail(errno.EBUSY, "rmdir of the root")
        if self._has_entries(r[_INO]):
            raise _fail(errno.ENOTEMPTY)
        now = time.time_ns()
        self._db.execute("DELETE FROM dirents WHERE id = ?", (r[-1],))
        self._drop_link(r, now)
        self._touch_dir(parent, now, -1)
        return {"ino": r[_INO]}

    def _has_entries(self, ino: int) -> bool:
        return (
            self._db.execute("SELECT 1 FROM dirents WHERE parent = ? LIMIT 1", (ino,)).fetchone()
            is not None
        )

    def _is_ancestor(self, ancestor: int, ino: int) -> bool:
        """True if `ancestor` is ino or one of ino's parent directories."""
        seen = 0
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            r = self._db.execute("SELECT parent FROM inodes WHERE ino = ?", (ino,)).fetchone()
            if r is None or not r[0]:
                return False
            ino = r[0]
            seen += 1
            if seen > 1_000_000:  # a loop would be corruption; don't hang the server
                raise _fail(errno.ELOOP, "directory parent chain loops")

    def rename(
        self,
        cred: Cred,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int = 0,
    ) -> tuple[int, dict]:
        """POSIX rename plus Linux RENAME_NOREPLACE/RENAME_EXCHANGE; returns {"replaced"}."""
        return self._run(self._rename, cred, old_parent, old_name, new_parent, new_name, flags)

    def _rename(
        self,
        cred: Cred,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
    ) -> dict:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise _fail(errno.EINVAL, "bad rename flags")
        old_name = _check_name(old_name)
        new_name = _check_name(new_name)
        od = self._dir(cred, old_parent, os.X_OK)
        nd = od if new_parent == old_parent else self._dir(cred, new_parent, os.X_OK)
        src = self._entry(old_parent, old_name)
        if src is None:
            raise _fail(errno.ENOENT)
        if nd[_NLINK] == 0:
            raise _fail(errno.ENOENT, "target directory was removed")
        tgt = self._entry(new_parent, new_name)
        if flags & RENAME_EXCHANGE:
            if tgt is None:
                raise _fail(errno.ENOENT)
            return self._exchange(cred, od, nd, src, tgt)
        if tgt is not None and flags & RENAME_NOREPLACE:
            raise _fail(errno.EEXIST)
        src_dir = stat.S_ISDIR(src[_MODE])
        if src_dir and new_parent != old_parent and self._is_ancestor(src[_INO], new_parent):
            raise _fail(errno.EINVAL, "directory moved into its own subtree")
        if tgt is not None and tgt[_INO] == src[_INO]:
            return {"replaced": None}  # two names of one inode: POSIX says do nothing
        for d in (od, nd):
            if not _perm_ok(cred, d, os.W_OK | os.X_OK):
                raise _fail(errno.EACCES)
        self._check_sticky(cred, od, src)
        if tgt is not None:
            self._check_sticky(cred, nd, tgt)
            tgt_dir = stat.S_ISDIR(tgt[_MODE])
            if src_dir and not tgt_dir:
                raise _fail(errno.ENOTDIR)
            if tgt_dir and not src_dir:
                raise _fail(errno.EISDIR)
            if tgt_dir and self._has_entries(tgt[_INO]):
                raise _fail(errno.ENOTEMPTY)
        now = time.time_ns()
        deltas = {old_parent: 0, new_parent: 0}
        replaced = None
        if tgt is not None:
            self._db.execute("DELETE FROM dirents WHERE id = ?", (tgt[-1],))
            self._drop_link(tgt, now)
            if stat.S_ISDIR(tgt[_MODE]):
                deltas[new_parent] -= 1
            replaced = tgt[_INO]
        self._db.execute(
            "UPDATE dirents SET parent = ?, name = ? WHERE id = ?", (new_parent, new_name, src[-1])
        )
        if src_dir and new_parent != old_parent:
            deltas[old_parent] -= 1
            deltas[new_parent] += 1
            self._db.execute(
                "UPDATE inodes SET parent = ?, ctime_ns = ? WHERE ino = ?",
                (new_parent, now, src[_INO]),
            )
        else:
            self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, src[_INO]))
        for ino, delta in deltas.items():
            self._touch_dir(ino, now, delta)
        return {"replaced": replaced}

    def _exchange(self, cred: Cred, od: Row, nd: Row, src: Row, tgt: Row) -> dict:
        """RENAME_EXCHANGE: swap what two names point at, any types."""
        old_parent, new_parent = od[_INO], nd[_INO]
        src_dir, tgt_dir = stat.S_ISDIR(src[_MODE]), stat.S_ISDIR(tgt[_MODE])
        if old_parent != new_parent:
            if src_dir and self._is_ancestor(src[_INO], new_parent):
                raise _fail(errno.EINVAL, "directory moved into its own subtree")
            if tgt_dir and self._is_ancestor(tgt[_INO], old_parent):
                raise _fail(errno.EINVAL, "directory moved into its own subtree")
        if src[_INO] == tgt[_INO]:
            return {"replaced": None}
        for d in (od, nd):
            if not _perm_ok(cred, d, os.W_OK | os.X_OK):
                raise _fail(errno.EACCES)
        self._check_sticky(cred, od, src)
        self._check_sticky(cred, nd, tgt)
        now = time.time_ns()
        db = self._db
        db.execute("UPDATE dirents SET ino = ? WHERE id = ?", (tgt[_INO], src[-1]))
        db.execute("UPDATE dirents SET ino = ? WHERE id = ?", (src[_INO], tgt[-1]))
        db.execute(
            "UPDATE inodes SET parent = CASE WHEN parent = 0 THEN 0 ELSE ? END, ctime_ns = ?"
            " WHERE ino = ?",
            (new_parent, now, src[_INO]),
        )
        db.execute(
            "UPDATE inodes SET parent = CASE WHEN parent = 0 THEN 0 ELSE ? END, ctime_ns = ?"
            " WHERE ino = ?",
            (old_parent, now, tgt[_INO]),
        )
        shift = int(src_dir) - int(tgt_dir)  # subdirectories moving from old to new parent
        if old_parent == new_parent:
            self._touch_dir(old_parent, now)
        else:
            self._touch_dir(old_parent, now, -shift)
            self._touch_dir(new_parent, now, shift)
        return {"replaced": None}

    # ------------------------------------------------------------------ attribute updates

    def setattr(
        self, cred: Cred, ino: int, attrs: dict, *, via_handle: bool = False
    ) -> tuple[int, dict]:
        """chmod/chown/truncate/utimes with Linux permission rules; returns the new attr."""
        return self._run(self._setattr, cred, ino, attrs, via_handle)

    def _setattr(self, cred: Cred, ino: int, attrs: dict, via_handle: bool) -> dict:
        a = {k: v for k, v in attrs.items() if v is not None and v is not False}
        unknown = set(a) - _KNOWN_ATTRS
        if unknown:
            raise _fail(errno.EINVAL, f"unknown attributes {sorted(unknown)}")
        r = list(self._row(ino))
        if not a:
            return _attr(r)
        root = cred.uid == 0
        owner = root or cred.uid == r[_UID]
        fmt = r[_MODE] & _S_IFMT
        now = time.time_ns()
        mode = r[_MODE]
        if "uid" in a:
            uid = int(a["uid"])
            if not root and not (cred.uid == r[_UID] and uid == r[_UID]):
                raise _fail(errno.EPERM, "chown")
            r[_UID] = uid
        if "gid" in a:
            gid = int(a["gid"])
            if not root and not (cred.uid == r[_UID] and (gid == r[_GID] or _in_group(cred, gid))):
                raise _fail(errno.EPERM, "chgrp")
            r[_GID] = gid
        if "mode" in a:
            new_mode = (mode & _S_IFMT) | (int(a["mode"]) & 0o7777)
            if not owner and not (_only_kills_setid(mode, new_mode)
                                  and (via_handle or _perm_ok(cred, r, os.W_OK))):
                raise _fail(errno.EPERM, "chmod")
            mode = new_mode
            if not root and not _in_group(cred, r[_GID]):
                mode &= ~stat.S_ISGID
        elif ("uid" in a or "gid" in a) and not root and fmt == stat.S_IFREG:
            mode = _kill_suid(mode)
        if "size" in a:
            size = int(a["size"])
            if fmt == stat.S_IFDIR:
                raise _fail(errno.EISDIR)
            if fmt != stat.S_IFREG:
                raise _fail(errno.EINVAL, "size of a non-regular file")
            if size < 0:
                raise _fail(errno.EINVAL, "negative size")
            if size > MAX_FILE_SIZE:
                raise _fail(errno.EFBIG, f"size beyond the maximum file size {MAX_FILE_SIZE}")
            if not via_handle and not _perm_ok(cred, r, os.W_OK):
                raise _fail(errno.EACCES)
            r[_SIZE] = size
            r[_MTIME] = now
            if size > 0:
                r[_WRITTEN] = 1
            if not root and "mode" not in a:
                mode = _kill_suid(mode)
        for key, idx in (("atime", _ATIME), ("mtime", _MTIME)):
            if key + "_ns" in a:
                if not owner:
                    raise _fail(errno.EPERM, "set times")
                r[idx] = int(a[key + "_ns"])
            elif a.get(key + "_now"):
                if not owner and not _perm_ok(cred, r, os.W_OK):
                    raise _fail(errno.EACCES)
                r[idx] = now
        r[_MODE] = mode
        r[_CTIME] = now
        self._db.execute(
            "UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, atime_ns = ?, mtime_ns = ?,"
            " ctime_ns = ?, written = ? WHERE ino = ?",
            (mode, r[_UID], r[_GID], r[_SIZE], r[_ATIME], r[_MTIME], now, r[_WRITTEN], ino),
        )
        return _attr(r)

    def setxattr(
        self, cred: Cred, ino: int, name: bytes, value: bytes, flags: int = 0
    ) -> tuple[int, dict]:
        """Set an xattr; XATTR_CREATE / XATTR_REPLACE as in setxattr(2).  Returns {}."""
        return self._run(self._setxattr, cred, ino, name, value, flags)

    def _xattr_target(self, cred: Cred, ino: int, name: bytes) -> Row:
        if not name:
            raise _fail(errno.EINVAL, "empty xattr name")
        if len(name) > XATTR_NAME_MAX:
            raise _fail(errno.ERANGE, "xattr name too long")
        r = self._row(ino)
        if cred.uid != 0 and cred.uid != r[_UID] and not _perm_ok(cred, r, os.W_OK):
            raise _fail(errno.EACCES)
        return r

    def _setxattr(self, cred: Cred, ino: int, name: bytes, value: bytes, flags: int) -> dict:
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise _fail(errno.EINVAL, "bad xattr flags")
        name, value = bytes(name), bytes(value)
        if len(value) > XATTR_SIZE_MAX:
            raise _fail(errno.E2BIG)
        self._xattr_target(cred, ino, name)
        db = self._db
        if flags:
            exists = db.execute(
                "SELECT 1 FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
            ).fetchone()
            if flags & XATTR_CREATE and exists:
                raise _fail(errno.EEXIST)
            if flags & XATTR_REPLACE and not exists:
                raise _fail(errno.ENODATA)
        db.execute(
            "INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)", (ino, name, value)
        )
        db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (time.time_ns(), ino))
        return {}

    def removexattr(self, cred: Cred, ino: int, name: bytes) -> tuple[int, dict]:
        """Remove an xattr (ENODATA if absent).  Returns {}."""
        return self._run(self._removexattr, cred, ino, name)

    def _removexattr(self, cred: Cred, ino: int, name: bytes) -> dict:
        name = bytes(name)
        self._xattr_target(cred, ino, name)
        cur = self._db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
        if cur.rowcount == 0:
            raise _fail(errno.ENODATA)
        self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (time.time_ns(), ino))
        return {}

    # ------------------------------------------------------------------ open / close / data

    def _new_handle(self, ino: int) -> int:
        """Allocate a handle now; register it only if the operation succeeds."""
        self._next_handle += 1
        handle = self._next_handle

        def register() -> None:
            self._handles[handle] = ino
            self._opens[ino] = self._opens.get(ino, 0) + 1

        self._hooks.append(register)
        return handle

    def open(self, cred: Cred, ino: int, flags: int,
             replay: bool = False) -> tuple[int, dict]:
        """Open an inode: permission by access mode (+W for O_TRUNC); O_TRUNC empties it.
        replay: re-open a file opened before a restart (unlinked ones too): no
        permission check, no truncation.

        An update so that it is replayable.  Returns {"handle", "attr", "truncated"}.
        """
        return self._run(self._open, cred, ino, flags, replay)

    def _open(self, cred: Cred, ino: int, flags: int, replay: bool = False) -> dict:
        r = list(self._row(ino))
        if replay:
            return {"handle": self._new_handle(ino), "attr": _attr(r), "truncated": False}
        acc = flags & os.O_ACCMODE
        mask = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(acc, os.R_OK | os.W_OK)
        if flags & os.O_TRUNC:
            mask |= os.W_OK
        if stat.S_ISDIR(r[_MODE]) and mask & os.W_OK:
            raise _fail(errno.EISDIR)
        if not _perm_ok(cred, r, mask):
            raise _fail(errno.EACCES)
        truncated = False
        if flags & os.O_TRUNC and stat.S_ISREG(r[_MODE]):
            now = time.time_ns()
            r[_SIZE] = 0
            r[_MTIME] = r[_CTIME] = now
            if cred.uid != 0:
                r[_MODE] = _kill_suid(r[_MODE])
            self._db.execute(
                "UPDATE inodes SET size = 0, mtime_ns = ?, ctime_ns = ?, mode = ? WHERE ino = ?",
                (now, now, r[_MODE], ino),
            )
            truncated = True
        return {"handle": self._new_handle(ino), "attr": _attr(r), "truncated": truncated}

    def handle_open(self, handle: int) -> bool:
        """Is `handle` an open handle (of any client)?"""
        return handle in self._handles

    def _close_handle(self, handle: int) -> dict:
        ino = self._handles.get(handle)
        if ino is None:
            raise _fail(errno.EBADF, f"unknown handle {handle}")
        if self._opens.get(ino, 0) <= 1:
            r = self._db.execute(f"SELECT {_COLS} FROM inodes WHERE ino = ?", (ino,)).fetchone()
            if r is not None and r[_NLINK] == 0:
                self._destroy(r)

        def unregister() -> None:
            del self._handles[handle]
            left = self._opens.get(ino, 0) - 1
            if left > 0:
                self._opens[ino] = left
            else:
                self._opens.pop(ino, None)

        self._hooks.append(unregister)
        return {}

    def touch_atime(self, ino: int, atime_ns: int) -> tuple[int, dict]:
        """A client read the file: set its atime only (ctime stays, as for a read)."""
        return self._run(self._touch_atime, ino, atime_ns)

    def _touch_atime(self, ino: int, atime_ns: int) -> dict:
        r = list(self._row(ino))
        if atime_ns < 0:
            raise _fail(errno.EINVAL, "negative time")
        r[_ATIME] = atime_ns
        self._db.execute("UPDATE inodes SET atime_ns = ? WHERE ino = ?", (atime_ns, ino))
        return _attr(r)

    def write_update(self, ino: int, size: int, mtime_ns: int,
                     kill_priv: bool = True) -> tuple[int, dict]:
        """The client wrote data to the OSTs: grow size, set mtime/ctime, and drop set-id
        bits if a non-root writer wrote (kill_priv; root keeps them, as on Linux)."""
        return self._run(self._write_update, ino, size, mtime_ns, kill_priv)

    def _write_update(self, ino: int, size: int, mtime_ns: int, kill_priv: bool) -> dict:
        r = list(self._row(ino))
        if stat.S_ISDIR(r[_MODE]):
            raise _fail(errno.EISDIR)
        if not stat.S_ISREG(r[_MODE]):
            raise _fail(errno.EINVAL, "write to a non-regular file")
        if size < 0:
            raise _fail(errno.EINVAL, "negative size")
        if size > MAX_FILE_SIZE:
            raise _fail(errno.EFBIG, f"size beyond the maximum file size {MAX_FILE_SIZE}")
        r[_SIZE] = max(size, r[_SIZE])
        r[_MTIME] = r[_CTIME] = mtime_ns
        if kill_priv:
            r[_MODE] = _kill_suid(r[_MODE])
        r[_WRITTEN] = 1
        self._db.execute(
            "UPDATE inodes SET size = ?, mtime_ns = ?, ctime_ns = ?, mode = ?, written = 1"
            " WHERE ino = ?",
            (r[_SIZE], mtime_ns, mtime_ns, r[_MODE], ino),
        )
        return _attr(r)

    def set_layout(self, cred: Cred, ino: int, layout: dict) -> tuple[int, dict]:
        """Set a directory's default layout, or re-stripe a never-written empty file.

        On a directory the given keys replace its default ({} removes it).  On a file,
        missing keys keep the file's stripe count and size, and placement is chosen anew.
        """
        return self._run(self._set_layout, cred, ino, layout)

    def _set_layout(self, cred: Cred, ino: int, layout: dict) -> dict:
        settings = _check_layout(layout, self.ost_count)
        r = list(self._row(ino))
        if cred.uid != 0 and cred.uid != r[_UID]:
            raise _fail(errno.EPERM)
        now = time.time_ns()
        r[_CTIME] = now
        if stat.S_ISDIR(r[_MODE]):
            dir_json = json.dumps(settings, separators=(",", ":")) if settings else None
            self._db.execute(
                "UPDATE inodes SET dir_layout = ?, ctime_ns = ? WHERE ino = ?", (dir_json, now, ino)
            )
            if ino == ROOT_INO:
                new_default = settings or None

                def set_root_default() -> None:
                    self._root_default = new_default

                self._hooks.append(set_root_default)
            return _attr(r)
        if not stat.S_ISREG(r[_MODE]):
            raise _fail(errno.EINVAL, "layouts are for files and directories")
        if r[_SIZE] != 0 or r[_WRITTEN]:
            raise _fail(errno.EBUSY, "file already has data")
        old = json.loads(r[_LAYOUT]) if r[_LAYOUT] else None
        merged = {
            "stripe_count": old["stripe_count"] if old else self.default_stripe_count,
            "stripe_size": old["stripe_size"] if old else self.default_stripe_size,
            "stripe_offset": -1,
        }
        merged.update(settings)
        new = self._new_layout(merged, (old["gen"] if old else 0) + 1)
        self._log_destroy(r[_LAYOUT])
        r[_LAYOUT] = json.dumps(new, separators=(",", ":"))
        self._db.execute(
            "UPDATE inodes SET layout = ?, ctime_ns = ? WHERE ino = ?", (r[_LAYOUT], now, ino)
        )
        return _attr(r)

    # ------------------------------------------------------------------ destroy log

    def pending_destroys(self, limit: int = 256) -> list[tuple[int, int, int]]:
        """Oldest destroy-log rows: (log_id, ost_idx, object_id)."""
        return [
            tuple(r)
            for r in self._db.execute(
                "SELECT id, ost_idx, object_id FROM destroy_log ORDER BY id LIMIT ?", (limit,)
            )
        ]

    def destroys_done(self, log_ids: list[int]) -> None:
        """Forget destroy-log rows whose objects are gone (no transno; the next commit keeps it)."""
        if not log_ids:
            return

        def delete() -> None:
            self._db.executemany(
                "DELETE FROM destroy_log WHERE id = ?", [(int(i),) for i in log_ids]
            )

        self._run(delete, transno=False)

    def cleanup_orphans(self) -> int:
        """Destroy every inode with no links and no opens (after a restart: all of them).

        Runs in the open transaction without a transno; the caller commits.
        """

        def cleanup() -> int:
            rows = self._db.execute(f"SELECT {_COLS} FROM inodes WHERE nlink = 0").fetchall()
            n = 0
            for r in rows:
                if self._opens.get(r[_INO], 0) == 0:
                    self._destroy(r)
                    n += 1
            return n

        n = self._run(cleanup, transno=False)
        if n:
            log.info("destroyed %d orphan inodes", n)
        return n
