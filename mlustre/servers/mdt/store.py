"""store.py - MdtStore: the metadata target's storage and POSIX namespace, on SQLite.

The MDT keeps every inode, directory entry, extended attribute and file layout in one
SQLite database.  MdtStore composes the parts that hold each concern (this package's
modules) and runs every update as one operation of the database (`MdtDb.run`: atomic, with
the next transno).  It does no I/O besides the database; the server calls it from its event
loop, so every method does a handful of indexed queries and never scans.  The server gives
it a clock (``clock``: nanoseconds since the epoch, for the times updates stamp) and, for
an update a client replays after a crash, a `ReplayedUpdate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import overload

from ..reply_log import SavedReply
from .attrs import Attributes
from .db import CommitTicket, MdtDb
from .destroy_log import DestroyLog
from .errors import MdtError
from .handles import OpenHandles
from .inodes import Inodes
from .layouts import STRIPE_SIZE_MAX, STRIPE_SIZE_UNIT, Layouts, check_defaults
from .namespace import SYMLINK_MAX, Namespace
from .object_ids import OBJECT_ID_GAP, ObjectIds
from .permissions import Cred
from .releases import ReleaseRanges
from .rename import RENAME_EXCHANGE, RENAME_NOREPLACE, Renames
from .replayed import ReplayedUpdate
from .saved_replies import SavedReplies
from .schema import NAME_MAX, ROOT_INO, SCHEMA_VERSION
from .size_on_mdt import SizeAuthority
from .xattrs import XATTR_CREATE, XATTR_NAME_MAX, XATTR_REPLACE, XATTR_SIZE_MAX, Xattrs

__all__ = [
    "NAME_MAX", "OBJECT_ID_GAP", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "ROOT_INO",
    "SCHEMA_VERSION", "STRIPE_SIZE_MAX", "STRIPE_SIZE_UNIT", "SYMLINK_MAX", "XATTR_CREATE",
    "XATTR_NAME_MAX", "XATTR_REPLACE", "XATTR_SIZE_MAX", "CommitTicket", "Cred", "MdtError",
    "MdtStore", "ReplayedUpdate",
]

log = logging.getLogger(__name__)


class MdtStore:
    """The MDT's inodes, namespace, xattrs, layouts and destroy log in one SQLite database.

    Updates return (transno, result); reads return their result.  `replayed` is the
    update's first execution as a client replays it (None: a first execution).
    """

    def __init__(
        self,
        path: str,
        *,
        ost_count: int,
        clock: Callable[[], int],
        default_stripe_count: int = 1,
        default_stripe_size: int = 1 << 20,
        release: str = "2.0",
    ) -> None:
        check_defaults(ost_count, default_stripe_size)
        self._clock = clock
        # The startup transaction: each part sets the meta counters it keeps at startup.
        db = self._db = MdtDb(str(path), now=clock())
        self._object_ids = ObjectIds(db, ost_count)
        self._releases = ReleaseRanges(db, release)
        db.finish_startup()
        self._destroy_log = DestroyLog(db)
        self._inodes = Inodes(db, self._destroy_log)
        self._size = SizeAuthority(db)
        self._handles = OpenHandles(db, self._inodes, self._size)
        self._layouts = Layouts(db, self._inodes, self._object_ids, self._destroy_log,
                                default_stripe_count=default_stripe_count,
                                default_stripe_size=default_stripe_size)
        self._namespace = Namespace(db, self._inodes, self._handles, self._layouts)
        self._renames = Renames(db, self._inodes, self._handles, self._namespace)
        self._attrs = Attributes(db, self._inodes, self._size)
        self._xattrs = Xattrs(db, self._inodes)
        self._replies = SavedReplies(db)

    # ------------------------------------------------------------------ settings

    @property
    def path(self) -> str:
        return self._db.path

    @property
    def ost_count(self) -> int:
        return self._object_ids.ost_count

    @property
    def default_stripe_count(self) -> int:
        return self._layouts.default_stripe_count

    @default_stripe_count.setter
    def default_stripe_count(self, count: int) -> None:
        self._layouts.default_stripe_count = count

    @property
    def default_stripe_size(self) -> int:
        return self._layouts.default_stripe_size

    @default_stripe_size.setter
    def default_stripe_size(self, size: int) -> None:
        self._layouts.default_stripe_size = size

    # ------------------------------------------------------------------ transactions

    @property
    def replay_barrier(self) -> bool:
        """Set: nothing is committed any more (see MdtDb.begin_commit)."""
        return self._db.replay_barrier

    @replay_barrier.setter
    def replay_barrier(self, on: bool) -> None:
        self._db.replay_barrier = on

    @property
    def in_transaction(self) -> bool:
        """Are there uncommitted changes (with or without a transno)?"""
        return self._db.in_transaction

    @property
    def last_transno(self) -> int:
        """Highest transno assigned so far (persisted with each update)."""
        return self._db.last_transno

    @property
    def last_committed(self) -> int:
        """Highest transno whose transaction is committed."""
        return self._db.last_committed

    @property
    def unsynced(self) -> bool:
        """Changes settled (safe from a kill) but not yet fsynced?"""
        return self._db.unsynced

    def settle(self) -> None:
        """What the open transaction holds survives a kill -9 (no fsync)."""
        self._db.settle()

    def begin_commit(self) -> CommitTicket:
        """First step of a commit (COMMIT without fsync); the ticket's sync() may then run
        in a worker thread while other calls go on; end_commit() finishes."""
        return self._db.begin_commit()

    def end_commit(self, ticket: CommitTicket) -> int:
        """The ticket is synced: return the new last_committed."""
        return self._db.end_commit(ticket)

    def commit(self) -> int:
        """Make everything durable (fsync), here and now; return last_committed."""
        return self._db.commit()

    @overload
    def close(self) -> None: ...

    @overload
    def close(self, handle: int, *, clean: bool = True,
              replayed: ReplayedUpdate | None = None) -> tuple[int, dict]: ...

    def close(self, handle: int | None = None, *, clean: bool = True,
              replayed: ReplayedUpdate | None = None) -> tuple[int, dict] | None:
        """close(): commit and close the store.  close(handle): drop an open (an update);
        clean=False: its writer did not report its size (size_on_mdt.py).

        The spec names both operations "close"; the argument tells them apart.
        """
        if handle is None:
            self._db.close()
            return None
        return self._db.run(self._handles.close, handle, clean, replayed=replayed)

    def size_grantable(self, ino: int, mine: set[int] | frozenset[int]) -> bool:
        """May a client whose open handles are `mine` take ino's size from the MDT?"""
        return self._size.grantable(ino, mine)

    def created_under_18(self, ino: int) -> bool:
        """Was inode `ino` created by a 1.8 server (so that its FID is IGIF)?"""
        return self._releases.created_under_18(ino)

    # ------------------------------------------------------------------ reply data

    def save_reply(self, uuid: str, xid: int, saved: SavedReply,
                   forgotten: int | None = None) -> None:
        """Keep a reply in the open transaction, with the update it answers."""
        self._replies.save(uuid, xid, saved, forgotten)

    def saved_replies(self) -> list[tuple[str, int, SavedReply]]:
        """Every kept reply, oldest first per client."""
        return self._replies.all()

    # ------------------------------------------------------------------ reads

    def getattr(self, ino: int) -> dict:
        return self._attrs.getattr(ino)

    def lookup(self, cred: Cred, parent: int, name: bytes) -> dict:
        return self._namespace.lookup(cred, parent, name)

    def child_ino(self, parent: int, name: bytes) -> int | None:
        return self._namespace.child_ino(parent, name)

    def readlink(self, ino: int) -> bytes:
        return self._namespace.readlink(ino)

    def readdir(self, cred: Cred, ino: int, cookie: int,
                count: int) -> list[tuple[bytes, dict, int]]:
        return self._namespace.readdir(cred, ino, cookie, count)

    def path_of(self, ino: int) -> bytes:
        return self._namespace.path_of(ino)

    def getxattr(self, cred: Cred, ino: int, name: bytes) -> bytes:
        return self._xattrs.get(cred, ino, name)

    def listxattr(self, cred: Cred, ino: int) -> list[bytes]:
        return self._xattrs.names(cred, ino)

    def with_xattrs(self, inos: list[int]) -> set[int]:
        """Which of `inos` have any extended attribute."""
        return self._xattrs.with_any(inos)

    def statfs(self) -> dict:
        """Inode counts."""
        files = self._inodes.count()
        return {"files": files, "ffree": max(2**32 - files, 0), "namemax": NAME_MAX}

    def access(self, cred: Cred, ino: int, mask: int) -> None:
        self._attrs.access(cred, ino, mask)

    def get_dir_layout(self, ino: int) -> dict | None:
        return self._layouts.get_dir_layout(ino)

    def open_count(self, ino: int) -> int:
        return self._handles.open_count(ino)

    def handle_open(self, handle: int) -> bool:
        return self._handles.is_open(handle)

    # ------------------------------------------------------------------ updates

    def create(self, cred: Cred, parent: int, name: bytes, mode: int, rdev: int = 0, *,
               open_flags: int | None = None, exclusive: bool = True,
               layout: dict | None = None,
               replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        """mknod/creat of any non-directory type, optionally opened (see Namespace.create)."""
        return self._db.run(self._namespace.create, cred, parent, name, mode, rdev,
                            open_flags, exclusive, layout, self._clock(), replayed,
                            replayed=replayed)

    def mkdir(self, cred: Cred, parent: int, name: bytes, mode: int, *,
              replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._namespace.mkdir, cred, parent, name, mode, self._clock(),
                            replayed, replayed=replayed)

    def symlink(self, cred: Cred, parent: int, name: bytes, target: bytes, *,
                replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._namespace.symlink, cred, parent, name, target,
                            self._clock(), replayed, replayed=replayed)

    def link(self, cred: Cred, ino: int, new_parent: int, new_name: bytes, *,
             replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._namespace.link, cred, ino, new_parent, new_name,
                            self._clock(), replayed=replayed)

    def unlink(self, cred: Cred, parent: int, name: bytes, *,
               replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._namespace.unlink, cred, parent, name, self._clock(),
                            replayed=replayed)

    def rmdir(self, cred: Cred, parent: int, name: bytes, *,
              replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._namespace.rmdir, cred, parent, name, self._clock(),
                            replayed=replayed)

    def rename(self, cred: Cred, old_parent: int, old_name: bytes, new_parent: int,
               new_name: bytes, flags: int = 0, *,
               replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._renames.rename, cred, old_parent, old_name, new_parent,
                            new_name, flags, self._clock(), replayed=replayed)

    def setattr(self, cred: Cred, ino: int, attrs: dict, *, via_handle: bool = False,
                replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._attrs.setattr, cred, ino, attrs, via_handle, self._clock(),
                            replayed=replayed)

    def setxattr(self, cred: Cred, ino: int, name: bytes, value: bytes, flags: int = 0, *,
                 replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._xattrs.set, cred, ino, name, value, flags, self._clock(),
                            replayed=replayed)

    def removexattr(self, cred: Cred, ino: int, name: bytes, *,
                    replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._xattrs.remove, cred, ino, name, self._clock(),
                            replayed=replayed)

    def open(self, cred: Cred, ino: int, flags: int, *, reopen: bool = False,
             replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        """Open an inode (an update, so that it is replayable); reopen: a client's open
        replay of a file it held open before a restart (see OpenHandles.open)."""
        return self._db.run(self._handles.open, cred, ino, flags, reopen, self._clock(),
                            replayed=replayed)

    def touch_atime(self, ino: int, atime_ns: int, *,
                    replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._attrs.touch_atime, ino, atime_ns, replayed=replayed)

    def write_update(self, ino: int, size: int, mtime_ns: int, kill_priv: bool = True, *,
                     replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._attrs.write_update, ino, size, mtime_ns, kill_priv,
                            replayed=replayed)

    def set_layout(self, cred: Cred, ino: int, layout: dict, *,
                   replayed: ReplayedUpdate | None = None) -> tuple[int, dict]:
        return self._db.run(self._layouts.set_layout, cred, ino, layout, self._clock(),
                            replayed=replayed)

    # ------------------------------------------------------------------ without transno

    def pending_destroys(self, limit: int = 256) -> list[tuple[int, int, int]]:
        """Oldest destroy-log rows: (log_id, ost_idx, object_id)."""
        return self._destroy_log.pending(limit)

    def destroys_done(self, log_ids: list[int]) -> None:
        """Forget destroy-log rows whose objects are gone (no transno; the next commit keeps it)."""
        if log_ids:
            self._db.run(self._destroy_log.forget, log_ids, transno=False)

    def cleanup_orphans(self) -> int:
        """Destroy every inode with no links and no opens (after a restart: all of them).

        Runs in the open transaction without a transno; the caller commits.
        """
        n = self._db.run(self._handles.cleanup_orphans, transno=False)
        if n:
            log.info("destroyed %d orphan inodes", n)
        return n

    def orphan_ranges(self) -> dict[int, tuple[int, int]]:
        """OST index -> object ids [lo, hi) that may name objects without a file."""
        return self._object_ids.orphan_ranges()

    def objects_in(self, ost: int, lo: int, hi: int) -> list[int]:
        """Object ids in [lo, hi) on OST `ost` that a file's layout names."""
        return self._object_ids.objects_in(ost, lo, hi)

    def orphans_cleaned(self, ost: int) -> None:
        """The OST destroyed the orphans of orphan_ranges()[ost] (kept at the next commit;
        done again after a crash before it, which destroys nothing more)."""
        self._db.run(self._object_ids.forget_orphan_range, ost, transno=False)


