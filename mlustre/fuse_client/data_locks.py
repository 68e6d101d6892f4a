"""data_locks.py - the locks behind cached file data (Lustre's osc lock callbacks):
what they protect, and what is given back when one is called back.

* OST EXTENT locks (PR to read, PW to write, per stripe object) protect cached
  data, the daemon's and the kernel's page cache, and the size and mtime this
  client knows: with a PR/PW lock over [0, EOF] on every object, taken before the
  size was read from the MDT, no other client can change them.
* Without those locks, size and mtime come from a glimpse: the PW holders of each
  object are asked what their caches give the file.
* A data lock called back: write back its dirty data, push size/mtime to the
  MDT, invalidate the kernel's pages (worker thread), drop the daemon's clean
  pages, then cancel. I/O the kernel sends meanwhile (it may hold the very page
  lock the invalidation waits for) is served under the lock being given back,
  and the flush and invalidation are repeated until a pass sees no such I/O.
  If I/O keeps coming, the lock stops being lent after REVOKE_PASSES, the I/O
  in progress ends, and a last flush and drop follow: nothing written under
  the lock may stay behind once it is cancelled. (The rule: give_back.py.)
* The kernel locks a page before it sends a read or write of it, so an I/O
  waiting for a new lock (a write while this client's PR lock is called back)
  can hold a page the invalidation waits for, while its lock waits for this
  cancel. The invalidation is then left to finish in its thread after the
  cancel (kernel_cache.py) instead of waiting for the callback timeout to evict
  the client.
* The SIR barrier's drains: what must reach a target before its barrier lock goes.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..protocol.ldlm import (
    FL_NO_BORROW,
    OBJECT_EOF,
    Extent,
    LockType,
    Mode,
    ResId,
    covers,
)
from .give_back import GiveBack, Step
from .inodes import Inode, InodeTable
from .kernel_cache import KernelCache
from .ldlm import LockClient
from .ldlm_client import ClientLock, LockState
from .lov import Layout
from .md_cache import ATTR_BITS, SOM, MdCache
from .page_cache import PageCache
from .writeback import Writeback

log = logging.getLogger(__name__)

# Unused OST locks a client keeps per OST (as many as MDT locks: one per file written or
# read lately). With 2048, a git checkout of 14,000 files gave back an older file's lock
# for every new one (a flush pass, a kernel invalidation and a cancel each) and read the
# objects it had just written back from the OSTs: 207 s, 177 s with this (2026-12-03).
OST_LRU_SIZE = 32768
WHOLE = Extent(0, OBJECT_EOF)
EOF = -1  # "to the end of the file" for data_locks


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


class DataLocks:
    """The OST locks of the mount's files: taking them for I/O, giving them back."""

    def __init__(self, ost_locks: dict[int, LockClient], inodes: InodeTable, md: MdCache,
                 cache: PageCache, writeback: Writeback, kernel: KernelCache,
                 counters: dict[str, int]) -> None:
        self.ost_locks = ost_locks
        self.inodes = inodes
        self.md = md
        self.cache = cache
        self.writeback = writeback
        self.kernel = kernel
        self.counters = counters

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

    def size_known(self, node: Inode) -> bool:
        """Is the size this client knows node's size? Under data locks over every object,
        or under an MDT lock with the SOM bit: the MDT's size is the file's then, or ours if
        we are its only writer (servers/mdt/size_on_mdt.py): no glimpse needed."""
        return bool(self.md.md_bits(node) & SOM) or self.size_valid(node)

    def attrs_valid(self, node: Inode) -> bool:
        """May the daemon answer for node's attributes, and the kernel cache them?"""
        if self.md.md_bits(node) & ATTR_BITS != ATTR_BITS:
            return False
        return node.layout is None or self.size_known(node)

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
        if covered and fresh[0] and self.inodes.local_meta_settled(node):
            self.counters["size_refreshes_no_mdt"] += 1
            a = node.attr
            node.size, node.mtime_ns = a["size"], a["mtime_ns"]
            node.ctime_ns = max(node.ctime_ns, a["ctime_ns"])
            if gen == node.data_gen:
                node.size_gen = gen
            return
        await self.md.md_getattr(node.ino)
        a = node.attr
        size, mtime = a["size"], a["mtime_ns"]
        for s, m in lvbs:
            size, mtime = max(size, s), max(mtime, m)
        if not self.inodes.local_meta_settled(node):
            size, mtime = max(size, node.size), max(mtime, node.mtime_ns)
        node.size, node.mtime_ns = size, mtime
        node.ctime_ns = max(node.ctime_ns, a["ctime_ns"], mtime if lvbs else 0)
        if covered and gen == node.data_gen and self.covered(node):
            node.size_gen = gen

    # ---- lock callbacks (OST lock clients) ------------------------------------------------

    async def blocking(self, ost: int, lock: ClientLock) -> None:
        ino, node = self.inodes.by_object(ost, lock.res[0])
        if ino is None:
            return
        if node is None:  # nothing of it cached by the daemon; the kernel's copy goes
            await self.kernel.invalidate(ino, attr_only=False)
            return
        self.counters["revokes"] += 1
        node.data_gen += 1
        entry = (ost, lock)
        node.revoking.append(entry)
        plan = GiveBack()
        try:
            while (step := plan.next_step(node.revoke_io, node.lockless)) is not Step.DONE:
                if step is Step.FORCE:
                    # I/O kept coming: lend the lock no more, let the I/O under it end, and
                    # write back and drop what it left (later I/O waits for a new lock).
                    self.counters["revokes_forced"] += 1
                    log.debug("inode %d: I/O kept coming while giving back a lock", ino)
                    lock.flags |= FL_NO_BORROW
                else:
                    self.counters["revoke_passes"] += 1
                while node.lockless:
                    await node.lockless_idle.wait()
                plan.started(node.revoke_io)
                await self._give_back_pass(node)
        finally:
            lock.flags |= FL_NO_BORROW  # later I/O waits for a new lock
            node.revoking.remove(entry)

    async def _give_back_pass(self, node: Inode) -> None:
        """What a data lock protects, written back and dropped: dirty data, size and
        mtime (also waiting for an update the flusher has in flight: the next holder
        reads the size from the MDT), the kernel's pages, the daemon's clean pages."""
        await self.writeback.flush_file(node.ino)
        await self.md.push_meta(node)
        node.kernel_pages = False
        await self.kernel.drop_pages(node)
        self.cache.drop_clean(node.ino)

    def evicted_now(self, ost: int, locks: list[ClientLock]) -> None:
        """Evicted by an OST: data cached under its locks can neither be trusted nor be
        written any more (it would undo what others wrote since). Inline, before any
        write-back task can take it."""
        for node in self.inodes.striped_on(ost):
            node.data_gen += 1
            fc = self.cache.files.get(node.ino)
            if fc is not None and (fc.dirty or fc.busy):
                node.write_error = errno.EIO
            self.cache.truncate(node.ino, 0)
            node.meta_dirty = False
            node.kill_priv = False

    async def evicted(self, ost: int, locks: list[ClientLock]) -> None:
        for node in self.inodes.striped_on(ost):
            await self.kernel.invalidate(node.ino, attr_only=False)

    async def reset(self, ost: int, locks: list[ClientLock]) -> None:
        """The OST restarted and forgot our locks: drop what they protected (clean
        pages here and in the kernel, the size we knew); dirty data stays and is
        written back."""
        for node in self.inodes.all():
            if node.layout is None or all(o != ost for o, _ in node.layout.objects):
                continue
            node.data_gen += 1
            self.cache.drop_clean(node.ino)
            await self.kernel.invalidate(node.ino, attr_only=False)

    def glimpse(self, ost: int, lock: ClientLock) -> dict[str, int] | None:
        _, node = self.inodes.by_object(ost, lock.res[0])
        if node is None:
            return None
        return {"size": node.size, "mtime_ns": node.mtime_ns}

    # ---- SIR barrier drains ---------------------------------------------------------------

    async def drain_ost(self, ost: int) -> int:
        """The OST's barrier was called back: write back every dirty byte stored on it
        (whole files, as a chunk may span stripes). Returns the bytes written."""
        cache = self.cache
        total = 0
        for node in self.inodes.striped_on(ost):
            fc = cache.files.get(node.ino)
            if fc is None or not (fc.dirty or fc.busy):
                continue
            total += sum(c.dirty_hi - c.dirty_lo for i, c in fc.chunks.items()
                         if i in fc.dirty) or 1
            await self.writeback.flush_file(node.ino)
        return total

    async def drain_mdt(self) -> int:
        """The MDT's barrier was called back: push the sizes and mtimes written data
        gave files. Returns how many were pushed."""
        pushed = 0
        for node in self.inodes.all():
            if node.meta_dirty:
                try:
                    await self.md.push_meta(node)
                except Exception as e:  # kept dirty: pushed again after the restart
                    log.warning("barrier drain: size of inode %d not pushed: %s", node.ino, e)
                    continue
                pushed += 1
        return pushed


__all__ = ["EOF", "OST_LRU_SIZE", "WHOLE", "DataLocks", "object_extents"]
