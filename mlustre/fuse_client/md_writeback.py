"""md_writeback.py - attribute write-back: chmod, chown and utimes of a file this client
created, applied here and sent to the MDT later, in one request per file.

A create asks the MDT for a write-back lock on the new file (PW on its UPDATE and PERM
bits; nobody else knows the file yet, so nobody waits). While the client holds it, a
setattr by root or the file's owner that does not change the size is decided here, by
the rules the MDT enforces (protocol/setattr_rules.py), and answered at once. `tar -x`
and `cp -a` set owner, mode and times of every file right after writing it: three MDT
round trips become one request nobody waits for. (The size and mtime written data gave
the file still go with its release, before the MDT close that vouches for them: a
client dying after that close but before a flush would otherwise leave the MDT a
stale size it believes. A flush carries them only if they are still unreported.)

What changed goes to the MDT (a setattr carrying the lock's handle, which the MDT applies
without calling the lock back) when:
* anyone else reads or changes the file: the MDT calls the lock back first (a getattr,
  lookup, readdir, access or open of another client waits for it), and the callback
  flushes before the cancel;
* this client sends another update of the file (its early lock cancel flushes first);
* fsync; the SIR barrier's drain; unmount; the lock LRU; or FLUSH_AGE after the change.
FLUSH_AGE after the create (or the oldest unflushed change), the lock goes back, changed
or not: held idle, it would make every other client's first look at the file wait for
a callback (a listing of a directory this client has just filled: one per file).
The flush is an ordinary update: kept until committed, replayed after an MDT crash. The
lock is replayed with the others, so nobody reads the file before the flush. An eviction
loses what was not flushed, as it loses dirty pages.
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from typing import Any

import trio

from ..protocol.errors import RpcError
from ..protocol.ldlm import WB_BITS, LockType, Mode, inode_res
from ..protocol.setattr_rules import Cred, check_times, owner_and_mode
from .imports import ImportClosed
from .inodes import Inode, InodeTable
from .ldlm import LockClient
from .ldlm_client import ClientLock, LockState
from .mdc import Mdc

log = logging.getLogger(__name__)

FLUSH_AGE = 1.0  # seconds a change waits here at most (unless someone asks first)
FLUSH_CONCURRENCY = 8  # flushes in flight at once
MAX_FAILURES = 5  # a change the MDT refuses this many times in a row is dropped (logged)
OWNED = ("mode", "uid", "gid", "atime_ns", "mtime_ns")  # (pending fields a retry keeps)


class WbState:
    """A file's write-back lock and what was changed under it, not yet flushed."""

    __slots__ = ("lock", "cred", "pending", "changed", "since", "flushing", "failures")

    def __init__(self, lock: ClientLock, cred: list[Any]) -> None:
        self.lock = lock
        self.cred = cred  # whose changes `pending` holds (the MDT checks them again)
        self.pending: dict[str, Any] = {}
        self.changed: set[str] = set()  # attributes changed here under the lock, ever
        # When the lock was granted or the oldest unflushed change made (None: neither).
        self.since: float | None = None
        self.flushing = trio.Lock()
        self.failures = 0  # flushes the MDT refused in a row

    def usable(self) -> bool:
        """May a change still be made under the lock (granted, not called back)?"""
        return self.lock.state is LockState.GRANTED


class AttrWriteback:
    """The write-back locks of this client's files and their flushes."""

    def __init__(self, locks: LockClient, mdc: Mdc, inodes: InodeTable,
                 counters: dict[str, int]) -> None:
        self.locks = locks
        self.mdc = mdc
        self.inodes = inodes
        self.counters = counters
        self.dirty: dict[int, Inode] = {}  # something to flush, or a lock to give back
        self.enabled = True  # (llite.*.attr_writeback: new creates ask for the lock)
        self.age = FLUSH_AGE  # (llite.*.attr_writeback_age)

    # ---- the lock, asked for with a create -------------------------------------------

    def intent(self) -> tuple[ClientLock | None, dict[str, Any] | None]:
        """A write-back lock to ask for in a create (end with granted()); none while
        attribute write-back is off."""
        if not self.enabled:
            return None, None
        lock = self.locks.intent_begin(inode_res(0), LockType.IBITS, Mode.PW, WB_BITS)
        return lock, {"handle": lock.handle}

    def granted(self, lock: ClientLock | None, body: dict[str, Any] | None,
                node: Inode | None, cred: list[Any]) -> None:
        """The create's reply: keep the lock if the MDT granted it."""
        if lock is None:
            return
        remote = body.get("wb_lock") if body else None
        if node is None or remote is None or lock.state is not LockState.ENQUEUING:
            self.locks.intent_end(lock, None)
            return
        self.locks.ns.rebind(lock.handle, inode_res(node.ino), WB_BITS)
        if self.locks.intent_end(lock, remote):
            node.md.append(lock)
            node.wb = WbState(lock, cred)
            node.wb.since = trio.current_time()  # (given back after `age` with the rest)
            self.dirty[node.ino] = node
            self.counters["wb_locks"] += 1

    # ---- changes made here -----------------------------------------------------------

    def try_setattr(self, node: Inode, attrs: dict[str, Any], cred: list[Any]) -> bool:
        """Apply a setattr here if the write-back lock allows it (root or the owner, no
        size, the lock held, the changes pending are the same caller's); False: send it.
        A change the MDT would refuse raises SetattrDenied, as the MDT would."""
        wb = node.wb
        if wb is None or not wb.usable() or "size" in attrs or not attrs:
            return False
        uid = cred[0]
        if uid != 0 and uid != node.attr["uid"]:
            return False
        if wb.pending and cred != wb.cred:
            return False  # (the caller flushes the other caller's changes first)
        c = Cred(cred[0], cred[1], tuple(cred[2]))
        a = node.attr
        mode, new_uid, new_gid = owner_and_mode(c, a["mode"], a["uid"], a["gid"], attrs,
                                                False)
        check_times(c, True, a["mode"], new_uid, new_gid, attrs)
        now = time.time_ns()
        change: dict[str, Any] = {}
        if "mode" in attrs or mode != a["mode"]:
            change["mode"] = stat.S_IMODE(mode)
        if "uid" in attrs:
            change["uid"] = new_uid
        if "gid" in attrs:
            change["gid"] = new_gid
        for key in ("atime", "mtime"):
            if key + "_ns" in attrs:
                change[key + "_ns"] = attrs[key + "_ns"]
            elif attrs.get(key + "_now"):
                change[key + "_ns"] = now
        wb.cred = cred
        wb.pending.update(change)
        wb.changed.update(change)
        if wb.since is None:
            wb.since = trio.current_time()
        self.dirty[node.ino] = node
        new = {**a, "uid": new_uid, "gid": new_gid, "mode": mode, "ctime_ns": now}
        for key in ("atime_ns", "mtime_ns"):
            if key in change:
                new[key] = change[key]
        node.attr = new
        if "mtime_ns" in change:
            node.mtime_ns = change["mtime_ns"]
        node.ctime_ns = now
        self.counters["wb_setattrs"] += 1
        return True

    # ---- flushes ---------------------------------------------------------------------

    async def flush(self, node: Inode) -> None:
        """Send what was changed under the lock (nothing to send: nothing sent)."""
        wb = node.wb
        if wb is None:
            return
        async with wb.flushing:
            # (The node stays in `dirty`: its lock goes back `age` after `since`.)
            attrs = dict(wb.pending)
            size = node.meta_dirty and not node.kill_priv
            if not attrs and not size:
                return
            if "mtime_ns" in attrs or (attrs and size):
                attrs["mtime_ns"] = node.mtime_ns  # (ours: a utime's, or a later write's)
            if attrs:
                attrs["ctime_ns"] = node.ctime_ns
            if size:
                attrs["write_size"] = node.size
                if "mtime_ns" not in attrs:
                    attrs["write_mtime_ns"] = node.mtime_ns
            wb.pending = {}
            if size:
                node.meta_dirty = False
            node.meta_inflight += 1
            # (The MDT holds the lock until its cancel, which follows this flush: an
            # early cancel, a callback's or the LRU's. Without its handle the MDT would
            # call the lock back and wait for this very flush.)
            held = wb.lock.state is not LockState.CANCELLED and wb.lock.remote_handle is not None
            try:
                await self.mdc.writeback_setattr(wb.cred, node.ino, attrs,
                                                 wb.lock.handle if held else None)
                self.counters["wb_flushes"] += 1
                wb.failures = 0
            except ImportClosed:
                pass  # evicted or unmounted: lost, as dirty pages are
            except RpcError as e:
                if e.errno in (errno.ENOENT, errno.ESTALE):
                    return  # (the file is gone: removed by someone else)
                wb.failures += 1
                if wb.failures > MAX_FAILURES:
                    log.error("write-back of inode %d's attributes refused %d times (%s):"
                              " dropped", node.ino, wb.failures, e)
                    return
                self._keep(node, wb, attrs, size)
                raise
            except BaseException:
                self._keep(node, wb, attrs, size)
                raise
            finally:
                node.meta_inflight -= 1
                node.reported_at = trio.current_time()
                if node.wb is wb and not wb.usable() and not wb.pending:
                    node.wb = None  # (the lock went without a callback: an MDT restart)
                    self.inodes.maybe_forget(node)  # (kept for what is now sent)

    def _keep(self, node: Inode, wb: WbState, attrs: dict[str, Any], size: bool) -> None:
        """A flush that did not happen: its changes wait again (newer ones win)."""
        if size:
            node.meta_dirty = True
        for k, v in attrs.items():
            if k in OWNED:
                wb.pending.setdefault(k, v)
        if wb.pending or size:
            if wb.since is None:
                wb.since = trio.current_time()
            self.dirty[node.ino] = node

    async def settle(self, ino: int) -> None:
        """Before a request of ours whose answer depends on the file's mode or owner
        (an open's or access's permission check, an xattr read): the MDT must check
        what we changed, not what it has."""
        node = self.inodes.get(ino)
        if node is not None and node.wb is not None and node.wb.pending:
            await self.flush(node)

    async def lock_gone(self, node: Inode, lock: ClientLock) -> None:
        """The write-back lock is being given back: flush, then it is an ordinary file."""
        wb = node.wb
        if wb is None or wb.lock is not lock:
            return
        try:
            await self.flush(node)
        except (RpcError, ImportClosed) as e:
            # The changes wait here; sent later without the lock (the MDT then locks).
            log.warning("write-back of inode %d's attributes failed: %s", node.ino, e)
        if node.wb is wb and not wb.pending:
            node.wb = None

    async def flush_all(self) -> int:
        """Flush every file (barrier drain, unmount); how many had something to send."""
        nodes = [n for n in self.dirty.values()
                 if n.wb is not None and (n.wb.pending or n.meta_dirty)]
        await self._flush_some(nodes)
        return len(nodes)

    async def _flush_some(self, nodes: list[Inode]) -> None:
        limit = trio.CapacityLimiter(FLUSH_CONCURRENCY)

        async def one(node: Inode) -> None:
            async with limit:
                try:
                    await self.flush(node)
                except (RpcError, ImportClosed) as e:  # (kept: sent again later)
                    log.warning("write-back of inode %d's attributes failed: %s",
                                node.ino, e)

        async with trio.open_nursery() as n:
            for node in nodes:
                n.start_soon(one, node)

    def forget_all(self) -> None:
        """Evicted: the MDT holds none of our locks, what was not flushed is lost."""
        for node in self.inodes.all():
            node.wb = None
        self.dirty.clear()

    async def run(self) -> None:
        """Flush changes older than FLUSH_AGE."""
        while True:
            await trio.sleep(min(self.age, 1.0) / 4)
            now = trio.current_time()
            old = [n for n in self.dirty.values()
                   if n.wb is None or n.wb.since is None or now - n.wb.since >= self.age]
            for node in old:
                del self.dirty[node.ino]
            if old:
                await self._flush_some(old)
                await self._give_back(old)

    async def _give_back(self, nodes: list[Inode]) -> None:
        """Write-back locks go back once what was changed under them is sent: a lock
        kept idle would make every other client's first look at the file wait for a
        callback (a listing of a directory this client filled, one per file)."""
        locks = []
        for node in nodes:
            wb = node.wb
            if wb is not None and not wb.pending and wb.usable():
                node.wb = None
                locks.append(wb.lock)
        if locks:
            self.counters["wb_given_back"] += await self.locks.cancel_these(locks)
