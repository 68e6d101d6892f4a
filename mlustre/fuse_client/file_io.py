"""file_io.py - file data: reads through the page cache, writes into it, read-ahead,
write-back, flush/fsync/release, and the periodic flusher.

Every I/O runs under data locks (data_locks.py) over the chunks the cache will hold;
written data makes the file's size and mtime this client's own (meta_dirty) until
they are pushed to the MDT (md_cache.MdCache.push_meta).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time

import pyfuse3
import trio

from ..protocol.errors import ErrnoError, RpcError
from ..protocol.ldlm import Mode
from .boundary import buf_within_max, kill_setid
from .data_locks import EOF, DataLocks
from .imports import ImportClosed
from .inodes import Inode, InodeTable
from .kernel_cache import KernelCache
from .ldlm import LockFailed
from .ldlm_client import ClientLock
from .lov import ObjectRun
from .md_cache import MdCache
from .mdc import Mdc
from .open_cache import OpenCache, cacheable_open, cred_key
from .open_handles import OpenFile, OpenHandles
from .osc import Osc
from .page_cache import CHUNK, PageCache
from .readahead import Readahead, Stream
from .writeback import Writeback

log = logging.getLogger(__name__)

DAY_NS = 86400 * 10**9  # a time this close to "now" was most likely UTIME_NOW


def known_inode(inodes: InodeTable, ino: int) -> Inode:
    """The entry of ino; ESTALE if the client has none (forgotten meanwhile)."""
    inode = inodes.get(ino)
    if inode is None:
        raise pyfuse3.FUSEError(errno.ESTALE)
    return inode


class FileIo:
    """Reads, writes and their write-back, per open file."""

    def __init__(self, inodes: InodeTable, cache: PageCache, writeback: Writeback,
                 data: DataLocks, md: MdCache, mdc: Mdc, oscs: dict[int, Osc],
                 handles: OpenHandles, kernel: KernelCache,
                 open_cache: OpenCache | None = None) -> None:
        self.inodes = inodes
        self.cache = cache
        self.writeback = writeback
        self.data = data
        self.md = md
        self.mdc = mdc
        self.oscs = oscs
        self.handles = handles
        self.kernel = kernel
        self.open_cache = open_cache if open_cache is not None else OpenCache()
        self._nursery: trio.Nursery | None = None
        self.flush_interval = 1.0
        self._closing = 0  # MDT closes in flight
        self.readahead = Readahead()
        self._streams: dict[int, Stream] = {}  # open handle -> its read-ahead state
        self._closed_all = trio.Event()

    # -- lifecycle --
    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.writeback.start(nursery)
        nursery.start_soon(self._flusher)

    async def _flusher(self) -> None:
        """Periodic write-back of dirty data, then of sizes/mtimes to the MDT."""
        while True:
            await trio.sleep(self.flush_interval)
            self.writeback.queue_all()
            for inode in self.inodes.all():
                if inode.meta_dirty and self.inodes.data_settled(inode.ino) \
                        and inode.wb is None:
                    try:
                        await self.md.push_meta(inode)
                    except (RpcError, ImportClosed) as e:
                        log.warning("size update of inode %d failed: %s", inode.ino, e)

    async def shutdown(self) -> None:
        """Write back everything and close every MDT handle before the client goes away."""
        for handle in self.open_cache.forget_all():
            self.close_later(handle)
        while self._closing:
            await self._closed_all.wait()
        await self.writeback.flush_all()
        await self.md.wb.flush_all()
        for inode in self.inodes.all():
            if inode.meta_dirty:
                await self.md.push_meta(inode)

    # -- reads --
    async def _fetch(self, node: Inode, idx: int) -> None:
        """Read chunk idx of a file from its OST objects into the cache."""
        event = node.fetching.get(idx)
        if event is not None:
            await event.wait()
            return
        if self.cache.get(node.ino, idx) is not None:
            return
        event = node.fetching[idx] = trio.Event()
        try:
            start = idx * CHUNK
            length = min(CHUNK, node.size - start)
            buf: bytes | bytearray = bytearray()
            runs = node.layout.object_runs(start, length) if length > 0 and node.layout \
                else []
            if len(runs) == 1:  # the common case: use the received buffer as the chunk
                run = runs[0]
                data = await self.oscs[run.ost_idx].read(run.oid, run.obj_offset, length)
                if len(data) == length:  # (bytes too: the cache copies them before a change)
                    buf = data
                else:  # a hole at the end of the object: zeros up to the file's size
                    buf = bytearray(length)
                    buf[:len(data)] = data
            elif runs:  # striped: one read per object, its pieces put in file order
                buf = bytearray(length)

                async def one(run: ObjectRun) -> None:
                    data = await self.oscs[run.ost_idx].read(run.oid, run.obj_offset,
                                                             run.length)
                    with memoryview(data) as view:
                        pos = 0
                        for file_off, n in run.pieces:
                            got = view[pos:pos + n]
                            a = file_off - start
                            buf[a:a + len(got)] = got
                            pos += n

                async with trio.open_nursery() as n:
                    for run in runs:
                        n.start_soon(one, run)
            else:
                buf = bytearray(max(length, 0))
            if len(buf) > length:  # the object was longer than the file (stale tail)
                buf = buf[:length]
            self.cache.put(node.ino, idx, buf)
            self.cache.evict()
        finally:
            del node.fetching[idx]
            event.set()

    async def _readahead(self, node: Inode, idx: int) -> None:
        """Fetch one chunk ahead of a reader, under a PR lock over it like any read: the
        chunk is cached only while a lock covers it, and a callback drops it."""
        try:
            if self.cache.get(node.ino, idx) is not None or idx in node.fetching:
                return
            async with self.data.data_locks(node, Mode.PR, idx * CHUNK, (idx + 1) * CHUNK):
                if self.data.size_valid(node):  # (else the size may have moved: let it be)
                    await self._fetch(node, idx)
        except Exception as e:  # read-ahead is a hint; the real read reports errors
            log.debug("read-ahead of inode %d chunk %d failed: %s", node.ino, idx, e)
        finally:
            self.readahead.done()

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        of = self.handles.live_file(fh)
        node = known_inode(self.inodes, of.ino)
        if node.layout is None:
            return b""
        # The cache works in whole chunks: lock what it will hold.
        first = off // CHUNK * CHUNK
        last = max(-(-(off + size) // CHUNK), off // CHUNK + 1) * CHUNK
        async with self.data.data_locks(node, Mode.PR, first, last) as borrowed:
            if not self.data.size_known(node) and not borrowed:
                await self.data.refresh_size(node)
            return await self._read_locked(of, node, off, size)

    async def _read_locked(self, of: OpenFile, node: Inode, off: int,
                           size: int) -> bytes | memoryview:
        if not of.atime_done:
            self._relatime(of, node)
        if not of.direct:
            node.kernel_pages = True
        end = min(off + size, node.size)
        if off >= end:
            return b""
        first, last = off // CHUNK, (end - 1) // CHUNK
        if self._nursery is not None:
            stream = self._streams.get(of.fh)
            if stream is None:
                stream = self._streams[of.fh] = Stream()
            for idx in self.readahead.on_read(stream, off, end, CHUNK, (node.size - 1) // CHUNK):
                self._nursery.start_soon(self._readahead, node, idx)
        parts: list[bytes | memoryview] = []
        for idx in range(first, last + 1):
            chunk = self.cache.get(node.ino, idx)
            if chunk is None:
                await self._fetch(node, idx)
                chunk = self.cache.get(node.ino, idx)
                if chunk is None:  # evicted at once under memory pressure: read again
                    await self._fetch(node, idx)
                    chunk = self.cache.get(node.ino, idx)
                    if chunk is None:
                        raise pyfuse3.FUSEError(errno.EIO)
            base = idx * CHUNK
            a = max(off, base) - base
            b = min(end, base + CHUNK) - base
            # A view, not a copy: pyfuse3 copies it into its reply before anything else
            # runs (no await between here and there), so the chunk cannot change under it.
            data: bytes | memoryview = memoryview(chunk.data)[a:b]
            if len(data) < b - a:  # a hole the cache has not materialised
                data = bytes(data) + bytes(b - a - len(data))
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _relatime(self, of: OpenFile, node: Inode) -> None:
        """Update atime on the first read of an open, as Linux's relatime does: when it is
        not newer than mtime/ctime, or a day old. Sent in the background."""
        of.atime_done = True
        a = node.attr
        now = time.time_ns()
        if a["atime_ns"] <= max(node.mtime_ns, a["ctime_ns"]) or now - a["atime_ns"] > DAY_NS:
            node.attr = {**a, "atime_ns": now}
            assert self._nursery is not None
            self._nursery.start_soon(self._send_atime, node.ino, now)

    async def _send_atime(self, ino: int, atime_ns: int) -> None:
        try:
            await self.mdc.touch_atime(ino, atime_ns)
        except (RpcError, ImportClosed) as e:
            log.debug("atime update of inode %d failed: %s", ino, e)

    # -- writes --
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        of = self.handles.live_file(fh)
        node = known_inode(self.inodes, of.ino)
        if node.layout is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        append = bool(of.flags & os.O_APPEND)
        if not append:
            buf = buf_within_max(off, buf)  # (EFBIG before anything is locked or cached)
        await self.writeback.wait_for_space(len(buf))
        first = off // CHUNK * CHUNK
        last = -(-(off + len(buf)) // CHUNK) * CHUNK
        # An append writes where the file ends: nobody else may move that end meanwhile.
        async with self.data.data_locks(node, Mode.PW, 0 if append else first,
                                        EOF if append else last) as borrowed:
            if not self.data.size_known(node) and not borrowed:
                await self.data.refresh_size(node)
            if append:
                # One append at a time on this client: each writes where the last ended
                # (a write may wait for its chunk to be fetched before it moves the end).
                async with node.append_lock:
                    stale_size = off != node.size
                    off = node.size  # where the file really ends, not where the kernel thinks
                    written = await self._write_locked(of, node, off, buf_within_max(off, buf))
            else:
                stale_size = False
                written = await self._write_locked(of, node, off, buf)
        if of.uid != 0 and kill_setid(node.attr["mode"]) != node.attr["mode"]:
            await self._kill_setid_now(of, node)
        if stale_size:
            await self.kernel.invalidate(node.ino, attr_only=True)  # the kernel's i_size is off
        if of.direct and node.kernel_pages:
            # Pages read through another handle of this file are older than this write.
            node.kernel_pages = False
            await self.kernel.invalidate(node.ino, attr_only=False)
        return written

    async def _kill_setid_now(self, of: OpenFile, node: Inode) -> None:
        """A write by a non-root writer drops set-id bits at once (the kernel asks for it
        before buffered writes, as a mode change; not before direct ones, whose handles
        are ours): on the MDT, in our attributes and in the kernel's, so that fstat on the
        writer's own descriptor says so right after the write. Should the MDT not answer,
        the size update that follows the data drops them (kill_priv)."""
        cred = of.cred or [of.uid, 0, []]
        mode = stat.S_IMODE(node.attr["mode"])
        try:
            await self.md.setattr_rpc(cred, node, {"mode": kill_setid(mode)}, of.fh)
        except (ErrnoError, ImportClosed, LockFailed) as e:
            log.info("inode %d: clearing set-id bits failed: %s", node.ino, e)
            return
        await self.kernel.invalidate(node.ino, attr_only=True)

    async def _write_locked(self, of: OpenFile, node: Inode, off: int, buf: bytes) -> int:
        view = memoryview(buf)
        pos = off
        end = off + len(buf)
        while pos < end:
            idx, lo = divmod(pos, CHUNK)
            n = min(CHUNK - lo, end - pos)
            if self.cache.needs_fill(node.ino, idx, lo, lo + n, node.size):
                await self._fetch(node, idx)
                if self.cache.needs_fill(node.ino, idx, lo, lo + n, node.size):
                    # Evicted at once under memory pressure (or dropped by a lock given
                    # back): fetch again, as a read does. Writing into an empty chunk
                    # would take its zeros for the file's data.
                    await self._fetch(node, idx)
                    if self.cache.needs_fill(node.ino, idx, lo, lo + n, node.size):
                        raise pyfuse3.FUSEError(errno.EIO)
            if self.cache.get(node.ino, idx) is None and lo != 0:
                # Nothing of this chunk exists yet (beyond EOF): start it with a hole.
                self.cache.put(node.ino, idx, bytearray(lo))
            self.cache.write(node.ino, idx, lo, view[pos - off:pos - off + n])
            chunk = self.cache.get(node.ino, idx)
            if chunk is not None and chunk.dirty_hi == CHUNK:
                self.writeback.queue(node.ino, idx)
            pos += n
        node.size = max(node.size, end)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        node.meta_dirty = True
        if of.uid != 0 and node.attr["mode"] & (stat.S_ISUID | stat.S_ISGID):
            node.kill_priv = True
        return len(buf)

    async def truncate_data(self, node: Inode, size: int) -> None:
        await self.writeback.wait_idle(node.ino)
        self.cache.truncate(node.ino, size)
        layout = node.layout
        if layout is None:
            return
        # (A failed punch fails the nursery: fuse_errors reports the first one's errno.)
        async with trio.open_nursery() as n:
            for stripe, (ost_idx, oid) in enumerate(layout.objects):
                n.start_soon(self.oscs[ost_idx].punch, oid,
                             layout.object_size_at(stripe, size))

    # -- flush, fsync, release --
    async def _flush_inode(self, node: Inode) -> None:
        await self.writeback.flush_file(node.ino)
        await self.md.wb.flush(node)
        await self.md.push_meta(node)
        if node.write_error:
            err, node.write_error = node.write_error, 0
            raise pyfuse3.FUSEError(err)

    async def flush(self, fh: int) -> None:
        """close(2) returns at once, as Lustre's does: the data stays in our cache under
        its PW locks (any other client's access calls them back, which writes it
        first) and goes to the OSTs with the release, which nobody waits for, then
        the size and mtime it gave the file; the file is open for write on the MDT
        until then (other clients glimpse its size from our locks; we, its only
        writer, know it). close reports a write-back error that is known by now;
        fsync is what makes data durable and reports every error."""
        of = self.handles.live_file(fh)
        node = known_inode(self.inodes, of.ino)
        if node.write_error:
            err, node.write_error = node.write_error, 0
            raise pyfuse3.FUSEError(err)

    async def fsync(self, fh: int, datasync: bool) -> None:
        of = self.handles.live_file(fh)
        node = known_inode(self.inodes, of.ino)
        await self._flush_inode(node)
        async with trio.open_nursery() as n:
            if node.layout is not None:
                for ost_idx in {o for o, _ in node.layout.objects}:
                    n.start_soon(self.oscs[ost_idx].sync)
            n.start_soon(self.mdc.sync)

    async def release(self, fh: int) -> None:
        of = self.handles.remove_file(fh)
        self._streams.pop(fh, None)
        node = self.inodes.get(of.ino)
        reported = False
        try:
            if node is not None:
                if not self.inodes.data_settled(node.ino):
                    await self.writeback.flush_file(node.ino)
                if node.meta_dirty:
                    # (An update the client keeps until it is committed: replayed after
                    # an MDT crash, as the close is not. Not left to a write-back lock's
                    # flush: a client dying before it would leave the MDT a size its
                    # clean close vouched for.)
                    await self.md.push_meta(node)
                reported = not node.write_error
                node.write_error = 0  # (nobody to report it to: the size goes unsure)
        finally:
            # Nobody waits for the release nor the MDT close; the close goes in the
            # background, shutdown waits for every one of them. A writer whose data did
            # not reach the OSTs says its size is unsure (size_on_mdt.py). A read-only
            # open stays open on the MDT while a lock of ours protects it (open_cache.py).
            lock = self.md.open_lock(node) if node is not None and cacheable_open(of.flags) \
                and not of.evicted else None
            if lock is not None and node is not None:
                for handle in self.open_cache.keep(node.ino, cred_key(of.cred), of.handle,
                                                   lock):
                    self.close_later(handle)
            else:
                self.close_later(of.handle, size_unsure=not reported)
            if node is not None:
                node.opens -= 1
                self.inodes.maybe_forget(node)

    def md_lock_gone(self, lock: ClientLock) -> None:
        """An MDT lock is given back: the opens it kept are closed."""
        for handle in self.open_cache.lock_gone(lock):
            self.close_later(handle)

    def forget_kept_opens(self) -> None:
        """Evicted, or a new MDT instance: it holds none of the kept opens."""
        self.open_cache.forget_all()

    def close_later(self, handle: int, size_unsure: bool = False) -> None:
        """Close an MDT open handle in the background (shutdown waits for it)."""
        self._closing += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._close_handle, handle, size_unsure)

    async def _close_handle(self, handle: int, size_unsure: bool) -> None:
        try:
            await self.mdc.close(handle, size_unsure)
        except (RpcError, ImportClosed) as e:
            log.warning("close of MDT handle %d failed: %s", handle, e)
        finally:
            self._closing -= 1
            if not self._closing:
                self._closed_all.set()
                self._closed_all = trio.Event()
