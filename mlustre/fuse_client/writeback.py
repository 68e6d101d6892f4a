"""writeback.py - sends dirty chunks to the OSTs with several RPCs in flight.

Full chunks are queued as soon as they fill (streaming writers), the periodic
flusher queues the rest, and fsync/close wait for one file. Writers that would
pass the dirty limit wait here for space. A chunk is never sent twice at once
(the page cache marks it busy), so its writes reach the OST in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..protocol.errors import RpcError
from .imports import ImportClosed
from .lov import Layout
from .osc import Osc
from .page_cache import CHUNK, PageCache

log = logging.getLogger(__name__)


class Writeback:
    def __init__(self, cache: PageCache, oscs: dict[int, Osc],
                 layout_of: Callable[[int], Layout | None],
                 on_error: Callable[[int, int], None], rpcs_in_flight: int = 8) -> None:
        self.cache = cache
        self.oscs = oscs
        self.layout_of = layout_of
        self.on_error = on_error
        self.rpcs_in_flight = rpcs_in_flight
        self._send, self._recv = trio.open_memory_channel[tuple[int, int]](float("inf"))
        self._queued: set[tuple[int, int]] = set()
        self._changed = trio.Event()
        self.chunks_written = 0

    def start(self, nursery: trio.Nursery) -> None:
        for _ in range(self.rpcs_in_flight):
            nursery.start_soon(self._worker)

    def queue(self, ino: int, idx: int) -> None:
        key = (ino, idx)
        if key not in self._queued:
            self._queued.add(key)
            self._send.send_nowait(key)

    def queue_file(self, ino: int) -> None:
        fc = self.cache.files.get(ino)
        if fc is not None:
            for idx in sorted(fc.dirty):
                self.queue(ino, idx)

    def queue_all(self) -> None:
        for ino in list(self.cache.files):
            self.queue_file(ino)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def flush_file(self, ino: int) -> None:
        """Return once no byte of ino is dirty or in flight."""
        while True:
            fc = self.cache.files.get(ino)
            if fc is None or (not fc.dirty and not fc.busy):
                return
            self.queue_file(ino)
            await self.wait_changed()

    async def wait_idle(self, ino: int) -> None:
        """Return once nothing of ino is in flight (dirty data may remain)."""
        while True:
            fc = self.cache.files.get(ino)
            if fc is None or not fc.busy:
                return
            await self.wait_changed()

    async def flush_all(self) -> None:
        while self.cache.dirty_bytes > 0:
            self.queue_all()
            await self.wait_changed()

    async def wait_for_space(self, nbytes: int) -> None:
        """Block a writer while the dirty limit is reached, pushing write-back."""
        while self.cache.dirty_bytes + nbytes > self.cache.max_dirty and self.cache.dirty_bytes:
            self.queue_all()
            await self.wait_changed()

    async def _worker(self) -> None:
        async for ino, idx in self._recv:
            self._queued.discard((ino, idx))
            snap = self.cache.take_dirty(ino, idx)
            if snap is None:
                continue
            lo, data = snap
            ok = True
            try:
                await self._send_chunk(ino, idx * CHUNK + lo, data)
            except ImportClosed:
                ok = False
            except RpcError as e:
                log.error("write-back of inode %d at %d failed: %s", ino, idx * CHUNK + lo, e)
                self.on_error(ino, e.errno)
            except Exception:
                log.exception("write-back of inode %d failed", ino)
                self.on_error(ino, 5)
            self.cache.writeback_done(ino, idx, lo, len(data), ok)
            self.chunks_written += 1
            fc = self.cache.files.get(ino)
            chunk = fc.chunks.get(idx) if fc else None
            if ok and chunk is not None and chunk.dirty and chunk.dirty_hi == CHUNK:
                self.queue(ino, idx)  # filled again while in flight
            self._notify()

    async def _send_chunk(self, ino: int, offset: int, data: bytes) -> None:
        layout = self.layout_of(ino)
        if layout is None:
            raise RpcError(5, f"inode {ino} has no layout")
        runs = layout.object_runs(offset, len(data))
        if len(runs) == 1:
            run = runs[0]
            await self.oscs[run.ost_idx].write(run.oid, run.obj_offset, data, flush=True)
            return
        # Striped: one write per object, its stripe units gathered (the one copy).
        with memoryview(data) as view:
            for run in runs:
                part = b"".join(view[f - offset:f - offset + n] for f, n in run.pieces)
                await self.oscs[run.ost_idx].write(run.oid, run.obj_offset, part, flush=True)
