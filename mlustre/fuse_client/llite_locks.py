"""llite_locks.py - the locks behind every cache of the client (Lustre's llite/osc
lock callbacks): what may be answered without asking a server, and what is given
back when a lock is called back.

* MDT IBITS locks, granted with the replies of lookups, getattrs and creates
  (intent locks), protect a cached name (LOOKUP), the attributes permission
  checks use (PERM) and the other attributes (UPDATE, LAYOUT). A regular file
  gets one lock with every bit; a directory gets its name lock (LOOKUP|PERM) and
  its attribute lock (UPDATE|PERM|LAYOUT) apart, so that creating a file in it
  (EX UPDATE on the directory) does not drop the path walk's cached name.
* OST EXTENT locks (PR to read, PW to write, per stripe object) protect cached
  data, the daemon's and the kernel's page cache, and the size and mtime this
  client knows: with a PR/PW lock over [0, EOF] on every object, taken before the
  size was read from the MDT, no other client can change them.
* Without those locks, size and mtime come from a glimpse: the PW holders of each
  object are asked what their caches give the file.
* The kernel caches attributes for LONG_TIMEOUT only while all of an inode's
  attribute locks are held, and never names (entry timeout 0: the kernel asks the
  daemon, which answers from its own lock-protected name cache). Invalidating a
  kernel dentry takes the directory's inode lock, which an operation of this very
  client may hold while its server waits for this cancel; attribute invalidation
  takes no lock.
* A data lock called back: write back its dirty data, push size/mtime to the
  MDT, invalidate the kernel's pages (worker thread), drop the daemon's clean
  pages, then cancel. I/O the kernel sends meanwhile (it may hold the very page
  lock the invalidation waits for) is served under the lock being given back,
  and the flush and invalidation are repeated until a pass sees no such I/O.
  If I/O keeps coming, the lock stops being lent after REVOKE_PASSES, the I/O
  in progress ends, and a last flush and drop follow: nothing written under
  the lock may stay behind once it is cancelled.
* The kernel locks a page before it sends a read or write of it, so an I/O
  waiting for a new lock (a write while this client's PR lock is called back)
  can hold a page the invalidation waits for, while its lock waits for this
  cancel. The invalidation is then left to finish in its thread after the
  cancel (until that I/O gets its lock, pages past the locked one may still be
  stale) instead of waiting for the callback timeout to evict the client.
"""

from __future__ import annotations

import errno
import functools
import logging
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from ..protocol.errors import RpcError
from ..protocol.ldlm import (
    FL_ELC,
    FL_NO_BORROW,
    OBJECT_EOF,
    Extent,
    IBits,
    LockType,
    Mode,
    ResId,
    covers,
    inode_res,
)
from .ldlm import LockClient
from .ldlm_client import ClientLock, LockState
from .lov import Layout

if TYPE_CHECKING:
    from .llite import Inode

log = logging.getLogger(__name__)

LONG_TIMEOUT = 60.0  # kernel attribute cache under locks (dropped at once on callback)
REVOKE_PASSES = 8  # flush+invalidate rounds while the kernel keeps sending I/O
MD_LRU_SIZE = 8192  # MDT locks a client keeps unused (one or two per cached inode)
OST_LRU_SIZE = 2048

LOOKUP, UPDATE, PERM, LAYOUT = (int(IBits.LOOKUP), int(IBits.UPDATE), int(IBits.PERM),
                                int(IBits.LAYOUT))
FILE_BITS = LOOKUP | UPDATE | PERM | LAYOUT
DIR_NAME_BITS = LOOKUP | PERM
DIR_ATTR_BITS = UPDATE | PERM | LAYOUT
ATTR_BITS = UPDATE | PERM  # what the attributes handed to the kernel need
WHOLE = Extent(0, OBJECT_EOF)
EOF = -1  # "to the end of the file" for _data_locks


def object_extents(layout: Layout, start: int, end: int) -> list[tuple[int, int, Extent]]:
    """(ost_idx, oid, object extent) of each object holding bytes of [start, end)
    (end EOF: every object, to its end)."""
    if end == EOF:
        return [(ost, oid, WHOLE) for ost, oid in layout.objects]
    spans: dict[tuple[int, int], list[int]] = {}
    for seg in layout.map_extent(start, max(end - start, 1)):
        span = spans.setdefault((seg.ost_idx, seg.oid), [seg.obj_offset, 0])
        span[0] = min(span[0], seg.obj_offset)
        span[1] = max(span[1], seg.obj_offset + seg.length - 1)
    return [(ost, oid, Extent(lo, hi)) for (ost, oid), (lo, hi) in spans.items()]


def may_search(attr: dict[str, Any], uid: int, gid: int, groups: list[int]) -> bool:
    """Search (x) permission on a directory, by Linux's rules."""
    if uid == 0:
        return True
    mode = attr["mode"]
    if uid == attr["uid"]:
        return bool(mode & stat.S_IXUSR)
    if gid == attr["gid"] or attr["gid"] in groups:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


class LockedCaches:
    """Mixin of Llite: the lock side of its caches (see the module docstring).

    Expects from Llite: node, mdc, inodes, cache, writeback, _push_meta,
    _local_meta_settled, _update.
    """

    inodes: dict[int, Inode]

    def _init_locks(self) -> None:
        node = self.node  # type: ignore[attr-defined]
        self.kernel_ready = False  # pyfuse3 initialised: kernel invalidations possible
        self.md_locks: LockClient = node.locks[node.mdc.imp.target]
        self.md_locks.ns.lru_size = MD_LRU_SIZE
        self.md_locks.on_blocking = self._md_blocking
        self.md_locks.on_evicted = self._md_evicted
        self.md_locks.on_reset = self._md_reset
        self.ost_locks: dict[int, LockClient] = {}
        for idx, osc in node.oscs.items():
            lc = node.locks[osc.imp.target]
            lc.ns.lru_size = OST_LRU_SIZE
            lc.on_blocking = functools.partial(self._data_blocking, idx)
            lc.on_evicted = functools.partial(self._data_evicted, idx)
            lc.on_evicted_now = functools.partial(self._data_evicted_now, idx)
            lc.on_glimpse = functools.partial(self._glimpse_ast, idx)
            lc.on_reset = functools.partial(self._data_reset, idx)
            self.ost_locks[idx] = lc
            node.barriers[osc.imp.target].drain = functools.partial(self._drain_ost, idx)
        node.barriers[node.mdc.imp.target].drain = self._drain_mdt
        self.dentries: dict[tuple[int, bytes], int] = {}  # (parent, name) -> ino
        self.names_of: dict[int, set[tuple[int, bytes]]] = {}
        self.obj_ino: dict[tuple[int, int], int] = {}  # (ost_idx, oid) -> ino
        self.counters: dict[str, int] = {
            "md_cache_hits": 0, "md_rpcs": 0, "glimpse_rpcs": 0, "size_refreshes": 0,
            "size_refreshes_no_mdt": 0, "revokes": 0, "revoke_passes": 0, "revoke_borrowed_io": 0,
            "kernel_invalidations": 0, "kernel_invalidations_left_running": 0,
            "revokes_forced": 0, "open_replays": 0,
        }
        # Invalidations of pages may wait for I/O that waits for a lock: their threads
        # must not take those of other work (the default limiter's).
        self._inval_threads = trio.CapacityLimiter(64)

    # ---- kernel invalidation ----------------------------------------------------------

    async def _kernel_inval(self, ino: int, attr_only: bool) -> None:
        """Drop the kernel's attributes (and pages) of ino, from a worker thread."""
        if not self.kernel_ready:
            return
        self.counters["kernel_invalidations"] += 1
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, attr_only)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the kernel has forgotten the inode
                log.warning("kernel invalidation of inode %d failed: %s", ino, e)

    async def _kernel_pages_dropped(self, node: Inode) -> None:
        """Invalidate the kernel's pages of node before one of its data locks is
        given back; left running in its thread once I/O of node waits for a lock
        (see the module docstring: it may be waiting for that I/O)."""
        if not self.kernel_ready:
            return
        self.counters["kernel_invalidations"] += 1

        async def watch(scope: trio.CancelScope) -> None:
            while True:
                came = node.waiter_came
                if node.lock_waiters:
                    break
                await came.wait()
            self.counters["kernel_invalidations_left_running"] += 1
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, node.ino, False,
                                              abandon_on_cancel=True,
                                              limiter=self._inval_threads)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    log.warning("kernel invalidation of inode %d failed: %s", node.ino, e)
            nursery.cancel_scope.cancel()

    # ---- MDT locks ------------------------------------------------------------------

    def md_bits(self, node: Inode) -> int:
        bits = 0
        live = []
        for lock in node.md:
            if lock.state is LockState.GRANTED:
                bits |= int(lock.policy)  # type: ignore[call-overload]
                live.append(lock)
        if len(live) != len(node.md):
            node.md = live
        return bits

    def attrs_valid(self, node: Inode) -> bool:
        """May the daemon answer for node's attributes, and the kernel cache them?"""
        if self.md_bits(node) & ATTR_BITS != ATTR_BITS:
            return False
        return node.layout is None or self.size_valid(node)

    def adopt_md_locks(self, node: Inode) -> None:
        """A new inode entry: the granted locks already held on it protect it too."""
        node.md = [lk for lk in self.md_locks.ns.locks_on(inode_res(node.ino))
                   if lk.state is LockState.GRANTED]

    def _intent(self, dir_bits: int) -> tuple[ClientLock, dict[str, Any]]:
        lock = self.md_locks.intent_begin(inode_res(0), LockType.IBITS, Mode.PR, FILE_BITS)
        return lock, {"handle": lock.handle, "bits": FILE_BITS, "dir_bits": dir_bits}

    def _intent_done(self, lock: ClientLock, body: dict[str, Any] | None,
                     dir_bits: int) -> Inode | None:
        """Merge a reply's attributes; keep its lock if it was granted."""
        attr = body.get("attr") if body else None
        remote = body.get("lock") if body else None
        if attr is None or remote is None or lock.state is not LockState.ENQUEUING:
            self.md_locks.intent_end(lock, None)
            return self._update(attr) if attr is not None else None  # type: ignore[attr-defined]
        bits = dir_bits if stat.S_ISDIR(attr["mode"]) else FILE_BITS
        self.md_locks.ns.rebind(lock.handle, inode_res(attr["ino"]), bits)
        granted = self.md_locks.intent_end(lock, remote)
        node = self._update(attr)  # type: ignore[attr-defined]
        if granted and lock not in node.md:
            node.md.append(lock)
        return node

    async def md_call(self, call: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
                      dir_bits: int = DIR_ATTR_BITS) -> tuple[Inode | None, dict[str, Any]]:
        """Send an MDT request that returns attributes, with an intent lock."""
        lock, intent = self._intent(dir_bits)
        body: dict[str, Any] | None = None
        self.counters["md_rpcs"] += 1
        sent = trio.current_time()
        try:
            body = await call(intent)
        finally:
            node = self._intent_done(lock, body, dir_bits)
        assert body is not None
        if node is not None:
            node.attr_at = sent
        return node, body

    async def md_getattr(self, ino: int) -> Inode:
        node = self.inodes.get(ino)
        if node is not None and self.md_bits(node) & ATTR_BITS == ATTR_BITS:
            # Already protected (a file whose size needed asking): no second lock.
            self.counters["md_rpcs"] += 1
            sent = trio.current_time()
            body = await self.mdc.getattr(ino)  # type: ignore[attr-defined]
            node = self._update(body["attr"])  # type: ignore[attr-defined]
            node.attr_at = sent
            return node
        node, _ = await self.md_call(lambda intent: self.mdc.getattr(  # type: ignore
            ino, intent=intent))
        assert node is not None
        return node

    def remember_name(self, parent: int, name: bytes, node: Inode) -> None:
        if self.md_bits(node) & LOOKUP:
            key = (parent, name)
            old = self.dentries.get(key)
            if old is not None and old != node.ino:
                self.names_of.get(old, set()).discard(key)
            self.dentries[key] = node.ino
            self.names_of.setdefault(node.ino, set()).add(key)

    def forget_name(self, parent: int, name: bytes) -> None:
        ino = self.dentries.pop((parent, name), None)
        if ino is not None:
            self.names_of.get(ino, set()).discard((parent, name))

    def cached_lookup(self, parent: int, name: bytes, uid: int, gid: int,
                      groups: Callable[[], list[int]]) -> Inode | None:
        """The child if its name is cached under a LOOKUP lock and the caller may
        search the parent (known under a PERM lock); else None (ask the MDT)."""
        ino = self.dentries.get((parent, name))
        if ino is None:
            return None
        node, pnode = self.inodes.get(ino), self.inodes.get(parent)
        if node is None or pnode is None or not self.md_bits(node) & LOOKUP \
                or not self.md_bits(pnode) & PERM:
            return None
        if not may_search(pnode.attr, uid, gid, groups() if uid else []):
            return None
        self.counters["md_cache_hits"] += 1
        return node

    async def update_call(self, wanted: list[tuple[int, int]],
                          call: Callable[[dict[str, Any]], Awaitable[Any]],
                          parent: int | None = None) -> Any:
        """An MDT update with early lock cancel of our locks it would call back; `call`
        gets the extra request fields. With `parent`, the directory's attribute lock
        is asked for again with the reply (the update takes it from us)."""
        cancels = await self.md_locks.early_cancel(
            [(inode_res(ino), bits) for ino, bits in wanted])
        extra: dict[str, Any] = {"cancels": cancels}
        plock = None
        if parent is not None:
            plock = self.md_locks.intent_begin(inode_res(parent), LockType.IBITS, Mode.PR,
                                               DIR_ATTR_BITS)
            extra["parent_lock"] = {"handle": plock.handle, "bits": DIR_ATTR_BITS}
        delivered = False
        result: Any = None
        try:
            result = await call(extra)
            delivered = True
            return result
        except RpcError:
            delivered = True  # answered: the server has the cancels
            raise
        finally:
            self.md_locks.cancels_sent(cancels, delivered=delivered)
            if plock is not None:
                body = result[1] if isinstance(result, tuple) else result
                self._parent_intent_done(plock, body if isinstance(body, dict) else None)

    def _parent_intent_done(self, lock: ClientLock, body: dict[str, Any] | None) -> None:
        remote = body.get("parent_lock") if body else None
        attr = body.get("parent_attr") if body else None
        granted = self.md_locks.intent_end(lock, remote if attr is not None else None)
        if attr is None:
            return
        node = self._update(attr)  # type: ignore[attr-defined]
        if granted:
            node.md.append(lock)

    async def _md_blocking(self, lock: ClientLock) -> None:
        ino = lock.res[0]
        bits = int(lock.policy)  # type: ignore[call-overload]
        node = self.inodes.get(ino)
        if node is not None and lock in node.md:
            node.md.remove(lock)
        if bits & LOOKUP:
            for key in self.names_of.pop(ino, set()):
                if self.dentries.get(key) == ino:
                    del self.dentries[key]
        if bits & (UPDATE | PERM | LAYOUT) and not lock.flags & FL_ELC:
            # (An update of ours cancelled it early: the kernel drops the attributes of
            # the inodes that update touches by itself.)
            await self._kernel_inval(ino, attr_only=True)

    async def _md_evicted(self, locks: list[ClientLock]) -> None:
        """Evicted by the MDT: open files are invalid (their I/O fails with EIO; they
        can be opened again), and nothing the MDT locks protected can be trusted."""
        for of in self.handles.files():  # type: ignore[attr-defined]
            of.evicted = True
        await self._md_reset(locks)

    async def _md_reset(self, locks: list[ClientLock]) -> None:
        self.dentries.clear()
        self.names_of.clear()
        for node in list(self.inodes.values()):
            node.md = []
        for ino in list(self.inodes):
            await self._kernel_inval(ino, attr_only=True)

    # ---- data locks --------------------------------------------------------------------

    def watch_layout(self, node: Inode) -> None:
        if node.layout is not None:
            for ost, oid in node.layout.objects:
                self.obj_ino[(ost, oid)] = node.ino

    def covered(self, node: Inode) -> bool:
        """Does a PR/PW lock over [0, EOF] cover every object of node?"""
        if node.layout is None:
            return False
        now = trio.current_time()
        for ost, oid in node.layout.objects:
            lc = self.ost_locks.get(ost)
            if lc is None or lc.ns.match(ResId(oid), LockType.EXTENT, Mode.PR, WHOLE, now,
                                         touch=False) is None:
                return False
        return True

    def size_valid(self, node: Inode) -> bool:
        return node.size_gen == node.data_gen and self.covered(node)

    def _borrowable(self, ost: int, oid: int, mode: Mode, ext: Extent) -> bool:
        """Is a lock of ours covering this I/O being given back, its flush not done?
        (Called back, it can no longer be matched; the I/O, which the kernel sends with
        pages locked that the flush's invalidation may wait for, must not wait for its
        cancel. It uses that lock, still ours on the server, and the flush repeats.)"""
        for lock in self.ost_locks[ost].ns.locks_on(ResId(oid)):
            if (lock.state in (LockState.CBPENDING, LockState.CANCELLING)
                    and not lock.flags & FL_NO_BORROW and covers(lock.mode, mode)
                    and isinstance(lock.policy, Extent) and lock.policy.contains(ext)):
                return True
        return False

    @asynccontextmanager
    async def data_locks(self, node: Inode, mode: Mode, start: int,
                         end: int) -> AsyncIterator[bool]:
        """Hold locks in `mode` over file bytes [start, end) (end EOF: the whole file)
        for one I/O. I/O arriving while this client gives back a lock covering it is
        served under that lock (the revocation waits for it and flushes again); the
        context value says so (the size this client knows is then the latest)."""
        held: list[tuple[LockClient, ClientLock]] = []
        borrowed = False
        try:
            if node.layout is not None:
                for ost, oid, ext in object_extents(node.layout, start, end):
                    if self._borrowable(ost, oid, mode, ext):
                        if not borrowed:
                            borrowed = True
                            node.lockless += 1
                            node.revoke_io += 1
                            self.counters["revoke_borrowed_io"] += 1
                        continue
                    lc = self.ost_locks[ost]
                    node.lock_waiters += 1  # (a revocation must not wait for this I/O)
                    node.waiter_came.set()
                    node.waiter_came = trio.Event()
                    try:
                        lock = await lc.enqueue(ResId(oid), LockType.EXTENT, mode, ext)
                    finally:
                        node.lock_waiters -= 1
                    held.append((lc, lock))
            yield borrowed
        finally:
            for lc, lock in held:
                lc.release(lock, mode=mode)
            if borrowed:
                node.lockless -= 1
                if not node.lockless:
                    node.lockless_idle.set()
                    node.lockless_idle = trio.Event()

    async def refresh_size(self, node: Inode) -> None:
        """Size and mtime as the cluster knows them: glimpse every object (a PR lock
        when nothing conflicts, else the PW holders' answers), then the MDT - unless
        the attributes in hand came from the MDT after the last writer of every object
        gave its lock back (then they are current, and now protected)."""
        gen = node.data_gen
        lvbs: list[list[int]] = []
        granted = [True]
        fresh = [node.attr_at is not None]
        self.counters["size_refreshes"] += 1
        if node.layout is not None and not self.covered(node):
            async def one(ost: int, oid: int) -> None:
                self.counters["glimpse_rpcs"] += 1
                lock, found, ago = await self.ost_locks[ost].glimpse(ResId(oid), WHOLE)
                if lock is None:
                    granted[0] = False
                # Released before the attributes were asked for? (Durations of one
                # machine's monotonic clocks; the reply's delay only makes this safer.)
                if node.attr_at is None or ago <= trio.current_time() - node.attr_at:
                    fresh[0] = False
                lvbs.extend(found)

            async with trio.open_nursery() as n:
                for ost, oid in node.layout.objects:
                    n.start_soon(one, ost, oid)
        else:
            fresh[0] = False  # (locks held before: the MDT read must follow them)
        covered = granted[0] and self.covered(node)
        if covered and fresh[0] and self._local_meta_settled(node):  # type: ignore[attr-defined]
            self.counters["size_refreshes_no_mdt"] += 1
            a = node.attr
            node.size, node.mtime_ns = a["size"], a["mtime_ns"]
            node.ctime_ns = max(node.ctime_ns, a["ctime_ns"])
            if gen == node.data_gen:
                node.size_gen = gen
            return
        await self.md_getattr(node.ino)
        a = node.attr
        size, mtime = a["size"], a["mtime_ns"]
        for s, m in lvbs:
            size, mtime = max(size, s), max(mtime, m)
        if not self._local_meta_settled(node):  # type: ignore[attr-defined]
            size, mtime = max(size, node.size), max(mtime, node.mtime_ns)
        node.size, node.mtime_ns = size, mtime
        node.ctime_ns = max(node.ctime_ns, a["ctime_ns"], mtime if lvbs else 0)
        if covered and gen == node.data_gen and self.covered(node):
            node.size_gen = gen

    async def _data_blocking(self, ost: int, lock: ClientLock) -> None:
        ino = self.obj_ino.get((ost, lock.res[0]))
        if ino is None:
            return
        node = self.inodes.get(ino)
        if node is None:  # nothing of it cached by the daemon; the kernel's copy goes
            await self._kernel_inval(ino, attr_only=False)
            return
        self.counters["revokes"] += 1
        node.data_gen += 1
        entry = (ost, lock)
        node.revoking.append(entry)
        try:
            for _ in range(REVOKE_PASSES):
                self.counters["revoke_passes"] += 1
                while node.lockless:
                    await node.lockless_idle.wait()
                mark = node.revoke_io
                await self._give_back_pass(node)
                if node.revoke_io == mark and not node.lockless:
                    break
            else:
                # I/O kept coming: lend the lock no more, let the I/O under it end, and
                # write back and drop what it left (later I/O waits for a new lock).
                self.counters["revokes_forced"] += 1
                log.debug("inode %d: I/O kept coming while giving back a lock", ino)
                lock.flags |= FL_NO_BORROW
                while node.lockless:
                    await node.lockless_idle.wait()
                await self._give_back_pass(node)
        finally:
            lock.flags |= FL_NO_BORROW  # later I/O waits for a new lock
            node.revoking.remove(entry)

    async def _give_back_pass(self, node: Inode) -> None:
        """What a data lock protects, written back and dropped: dirty data, size and
        mtime (also waiting for an update the flusher has in flight: the next holder
        reads the size from the MDT), the kernel's pages, the daemon's clean pages."""
        await self.writeback.flush_file(node.ino)  # type: ignore[attr-defined]
        await self._push_meta(node)  # type: ignore[attr-defined]
        node.kernel_pages = False
        await self._kernel_pages_dropped(node)
        self.cache.drop_clean(node.ino)  # type: ignore[attr-defined]

    # ---- SIR barrier ---------------------------------------------------------------------

    async def _drain_ost(self, ost: int) -> int:
        """The OST's barrier was called back: write back every dirty byte stored on it
        (whole files, as a chunk may span stripes). Returns the bytes written."""
        cache = self.cache  # type: ignore[attr-defined]
        total = 0
        for node in self._striped_on(ost):
            fc = cache.files.get(node.ino)
            if fc is None or not (fc.dirty or fc.busy):
                continue
            total += sum(c.dirty_hi - c.dirty_lo for i, c in fc.chunks.items()
                         if i in fc.dirty) or 1
            await self.writeback.flush_file(node.ino)  # type: ignore[attr-defined]
        return total

    async def _drain_mdt(self) -> int:
        """The MDT's barrier was called back: push the sizes and mtimes written data
        gave files. Returns how many were pushed."""
        pushed = 0
        for node in list(self.inodes.values()):
            if node.meta_dirty:
                try:
                    await self._push_meta(node)  # type: ignore[attr-defined]
                except Exception as e:  # kept dirty: pushed again after the restart
                    log.warning("barrier drain: size of inode %d not pushed: %s", node.ino, e)
                    continue
                pushed += 1
        return pushed

    def _striped_on(self, ost: int) -> list[Inode]:
        return [n for n in self.inodes.values()
                if n.layout is not None and any(o == ost for o, _ in n.layout.objects)]

    def _data_evicted_now(self, ost: int, locks: list[ClientLock]) -> None:
        """Evicted by an OST: data cached under its locks can neither be trusted nor be
        written any more (it would undo what others wrote since). Inline, before any
        write-back task can take it."""
        for node in self._striped_on(ost):
            node.data_gen += 1
            fc = self.cache.files.get(node.ino)  # type: ignore[attr-defined]
            if fc is not None and (fc.dirty or fc.busy):
                node.write_error = errno.EIO
            self.cache.truncate(node.ino, 0)  # type: ignore[attr-defined]
            node.meta_dirty = False
            node.kill_priv = False

    async def _data_evicted(self, ost: int, locks: list[ClientLock]) -> None:
        for node in self._striped_on(ost):
            await self._kernel_inval(node.ino, attr_only=False)

    async def _data_reset(self, ost: int, locks: list[ClientLock]) -> None:
        """The OST restarted and forgot our locks: drop what they protected (clean
        pages here and in the kernel, the size we knew); dirty data stays and is
        written back."""
        for node in list(self.inodes.values()):
            if node.layout is None or all(o != ost for o, _ in node.layout.objects):
                continue
            node.data_gen += 1
            self.cache.drop_clean(node.ino)  # type: ignore[attr-defined]
            await self._kernel_inval(node.ino, attr_only=False)

    def _glimpse_ast(self, ost: int, lock: ClientLock) -> dict[str, int] | None:
        ino = self.obj_ino.get((ost, lock.res[0]))
        node = self.inodes.get(ino) if ino is not None else None
        if node is None:
            return None
        return {"size": node.size, "mtime_ns": node.mtime_ns}
