"""db.py - the MDT database: the SQLite connection, its schema and meta counters, the
transaction every update runs in, transaction numbers and commits.

Transactions: each update runs inside its own SAVEPOINT of a transaction that the server
ends with ``settle()`` once it has recorded the update's reply (a COMMIT to the WAL without
fsync: the update survives the death of the process, not of the machine), or with a
commit, which also fsyncs (a machine crash loses nothing before it).  Each update gets the
next transaction number ("transno"); ``last_committed`` - the fsynced point - tells clients
which of their requests are durable; updates after it can be lost with the machine, to be
replayed by clients.  A failing operation leaves no partial change and consumes no transno.

A commit comes in three steps so that its fsync can run in a worker thread while the event
loop goes on using the connection: ``begin_commit()`` (on the loop: COMMIT, no fsync),
``CommitTicket.sync()`` (anywhere: fsyncs the WAL through a file descriptor of its own; it
never touches the connection) and ``end_commit()`` (on the loop: last_committed moves to
what the ticket made durable).  ``commit()`` does the three at once.

Checkpoints (copying the WAL back into the database file, with an fsync of it) run in
that worker thread too, through a connection of their own, once ``CHECKPOINT_SETTLES``
COMMITs have grown the WAL since the last one: SQLite's automatic checkpoint would run them inside an update's
COMMIT, on the event loop (a backstop remains, at ``AUTOCHECKPOINT_PAGES``, for a
server whose commits are far apart).  A checkpoint copies only committed frames: what
is durable, and when, does not change.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .replayed import ReplayedUpdate
from .schema import ROOT_INO, SCHEMA, SCHEMA_VERSION

log = logging.getLogger(__name__)

CHECKPOINT_SETTLES = 256  # a commit checkpoints the WAL after this many COMMITs (a few MiB)
AUTOCHECKPOINT_PAGES = 16384  # (64 MiB of 4 KiB pages) SQLite's own, on the event loop


@dataclass(frozen=True, slots=True)
class CommitTicket:
    """What one commit makes durable: every transno up to `transno`, once `sync()` has
    flushed `files` (the WAL, or the database file when there is no WAL; none: nothing
    to flush)."""

    transno: int
    files: tuple[str, ...]
    settles: int  # the database's settle count when the ticket was taken
    checkpoint: str | None = None  # the database to checkpoint after the fsync

    def sync(self) -> None:
        """fsync the first of `files` that exists.  Commits with synchronous=NORMAL write
        the WAL without flushing it; flushing the file through any descriptor makes every
        frame written before durable.  Then the checkpoint, if the ticket has one.  Safe
        in a worker thread: the event loop's SQLite connection is not used."""
        for path in self.files:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            break
        if self.checkpoint is not None:
            checkpoint(self.checkpoint)


def checkpoint(path: str) -> None:
    """Copy the committed part of a database's WAL into it (PASSIVE: never waits for,
    nor blocks, the connection writing meanwhile), through a connection of its own."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()
    except sqlite3.Error as e:  # (the next commit tries again; SQLite's backstop remains)
        log.warning("checkpoint of %s failed: %s", path, e)


class MdtDb:
    """The connection and the transaction bookkeeping every part of the store shares.

    The constructor opens the startup transaction (schema, meta counters, a new
    database's root directory, the boot count); the parts composed next may adjust the
    meta counters in it; ``finish_startup()`` commits it.
    """

    def __init__(self, path: str, *, now: int) -> None:
        self.path = str(path)
        self.conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn = self.conn
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: settle()'s commits reach the WAL (safe from a kill) without an fsync;
        # a commit then fsyncs the WAL (safe from a machine crash), see CommitTicket.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        conn.execute("BEGIN IMMEDIATE")
        # Statement by statement: executescript() would commit behind our back.
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        self.meta: dict[str, int] = dict(conn.execute("SELECT key, value FROM meta"))
        if conn.execute("SELECT 1 FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone() is None:
            conn.execute(
                "INSERT INTO inodes (ino, gen, mode, nlink, uid, gid, size, atime_ns, mtime_ns,"
                " ctime_ns, parent) VALUES (?, 1, ?, 2, 0, 0, 4096, ?, ?, ?, ?)",
                (ROOT_INO, stat.S_IFDIR | 0o755, now, now, now, ROOT_INO),
            )
            self.meta.update({"schema_version": SCHEMA_VERSION, "last_transno": 0, "inodes": 1})
            log.info("created new MDT database %s", self.path)
        stored_version = self.meta.get("schema_version", SCHEMA_VERSION)
        if stored_version > SCHEMA_VERSION:
            log.warning(
                "MDT database %s has schema version %d, newer than %d; continuing",
                self.path,
                stored_version,
                SCHEMA_VERSION,
            )
        # A boot counter: in the high bits of open handles (no handle of an earlier run
        # matches ours) and the generation of new inodes.
        self.meta["boots"] = self.meta.get("boots", 0) + 1
        self.replay_barrier = False
        self._last_transno: int = self.meta.get("last_transno", 0)
        self._last_committed: int = self._last_transno
        self._unsynced = False
        self._settles = 0  # COMMITs so far (an fsync covers those before it)
        self._checkpointed = 0  # the settle count at the last checkpoint asked for
        # Per-operation state, valid only inside run().
        self._dirty: dict[str, int] = {}
        self._hooks: list[Callable[[], None]] = []
        self.closed = False

    def finish_startup(self) -> None:
        """Write the meta counters the startup set and commit the startup transaction."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", self.meta.items()
        )
        self.conn.execute("COMMIT")

    @property
    def boots(self) -> int:
        """How many times this database was opened (this run included)."""
        return self.meta["boots"]

    # ------------------------------------------------------------------ meta counters

    def meta_get(self, key: str, default: int = 0) -> int:
        """A meta counter as the running operation sees it (its own changes included)."""
        if key in self._dirty:
            return self._dirty[key]
        return self.meta.get(key, default)

    def meta_add(self, key: str, delta: int, default: int = 0) -> int:
        """Add delta to a meta counter (staged for this op); return the old value."""
        old = self.meta_get(key, default)
        self._dirty[key] = old + delta
        return old

    def on_success(self, hook: Callable[[], None]) -> None:
        """Run `hook` (an in-memory effect) once the running operation has succeeded."""
        self._hooks.append(hook)

    # ------------------------------------------------------------------ transactions

    def run(self, fn: Callable[..., Any], *args: Any, transno: bool = True,
            replayed: ReplayedUpdate | None = None) -> Any:
        """Run one operation atomically inside the long transaction; with transno, return
        (its transno, its result), else its result.

        The SAVEPOINT makes a failed operation vanish entirely; in-memory effects (meta
        counters, open handles) are staged in _dirty/on_success and applied only on
        success.  A replayed update gets its first transno again (the transnos between
        were lost with others' updates).
        """
        db = self.conn
        if not db.in_transaction:
            db.execute("BEGIN IMMEDIATE")
        db.execute("SAVEPOINT op")
        self._dirty = {}
        self._hooks = []
        try:
            result = fn(*args)
            if transno and replayed is not None and replayed.transno > self._last_transno + 1:
                self._last_transno = replayed.transno - 1
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
        self.meta.update(self._dirty)
        hooks = self._hooks
        self._dirty = {}
        self._hooks = []
        for hook in hooks:
            hook()
        if not transno:
            return result
        self._last_transno += 1
        return self._last_transno, result

    def ensure_transaction(self) -> None:
        """Open the long transaction if none is (for writes outside run())."""
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")

    @property
    def in_transaction(self) -> bool:
        """Are there uncommitted changes (with or without a transno)?"""
        return self.conn.in_transaction

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
        if self.conn.in_transaction and not self.replay_barrier:
            self.conn.execute("COMMIT")
            self._unsynced = True
            self._settles += 1

    def begin_commit(self) -> CommitTicket:
        """Settle, and say what an fsync now makes durable.  Under a replay barrier nothing
        is committed any more: the next crash loses it all (clients must replay it), as
        Lustre's replay_barrier makes the device read-only."""
        if self.replay_barrier:
            return CommitTicket(self._last_committed, (), self._settles)
        self.settle()
        files: tuple[str, ...] = ()
        if self._unsynced or self._last_committed < self._last_transno:
            files = (self.path + "-wal", self.path)
        due = self._settles - self._checkpointed >= CHECKPOINT_SETTLES
        if due:
            self._checkpointed = self._settles
        return CommitTicket(self._last_transno, files, self._settles,
                            self.path if due else None)

    def end_commit(self, ticket: CommitTicket) -> int:
        """The ticket's sync is done: its transnos are durable; return last_committed."""
        if ticket.files and ticket.settles == self._settles:
            self._unsynced = False  # (nothing settled since the ticket was taken)
        self._last_committed = max(self._last_committed, ticket.transno)
        return self._last_committed

    def commit(self) -> int:
        """Make everything durable (fsync), here and now; return last_committed."""
        ticket = self.begin_commit()
        ticket.sync()
        return self.end_commit(ticket)

    def close(self) -> None:
        """Commit and close (again: nothing)."""
        if not self.closed:
            self.commit()
            self.conn.close()
            self.closed = True
