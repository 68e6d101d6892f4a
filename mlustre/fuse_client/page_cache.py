"""page_cache.py - the client's data cache: per-file chunks, dirty tracking, LRU.

Data is cached in CHUNK-sized pieces (bytearrays), never per 4 KiB page: a
FUSE request already costs ~65 us, so per-page work in Python would dominate.
A cached chunk holds the file's true content from its start up to the end of
the chunk or the end of the file, whichever is first; a chunk that is not
cached is fetched whole before a partial write into it (unless nothing beyond
EOF would be overwritten). Each chunk has one dirty range; a chunk being
written back is "busy" and is not sent again until that RPC is done, so two
writebacks of one chunk can never reach the OST out of order.

A chunk written whole by one write keeps the writer's `bytes` as its data, and
write-back sends (and the OSC keeps for replay) that same object: a streaming
writer's data is copied by nobody here. Such data is never changed in place; the
first change of the chunk copies it (`_mutable`), so what is in flight stays as sent.

No I/O here: the write-back engine and llite drive it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK = 1 << 20


class Chunk:
    __slots__ = ("data", "dirty_lo", "dirty_hi", "busy")

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.dirty_lo = 0
        self.dirty_hi = 0
        self.busy = False

    @property
    def dirty(self) -> bool:
        return self.dirty_hi > self.dirty_lo


@dataclass
class FileCache:
    chunks: dict[int, Chunk] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)  # chunk indexes with a dirty range
    busy: int = 0  # chunks of this file in flight
    inflight: dict[int, Chunk] = field(default_factory=dict)  # idx -> the chunk being sent


class PageCache:
    """All cached chunks of one client, with dirty and total byte limits."""

    def __init__(self, max_dirty: int = 256 << 20, max_cached: int = 512 << 20, *,
                 held_elsewhere: Callable[[], int] | None = None) -> None:
        self.max_dirty = max_dirty
        self.max_cached = max_cached
        self.files: dict[int, FileCache] = {}
        self.dirty_bytes = 0
        self.cached_bytes = 0
        self._lru: OrderedDict[tuple[int, int], None] = OrderedDict()
        # Written data the client keeps outside the cache (the OSCs' unstable data, for
        # replay): counted against max_cached, so the client's memory stays bounded.
        self.held_elsewhere: Callable[[], int] = held_elsewhere or (lambda: 0)

    def file(self, ino: int) -> FileCache:
        fc = self.files.get(ino)
        if fc is None:
            fc = self.files[ino] = FileCache()
        return fc

    def get(self, ino: int, idx: int) -> Chunk | None:
        fc = self.files.get(ino)
        chunk = fc.chunks.get(idx) if fc else None
        if chunk is not None:
            key = (ino, idx)
            if key in self._lru:
                self._lru.move_to_end(key)
        return chunk

    def put(self, ino: int, idx: int, data: bytes | bytearray) -> Chunk:
        """Insert a clean chunk (fetched, or about to be fully written)."""
        fc = self.file(ino)
        old = fc.chunks.get(idx)
        if old is not None:
            if old.dirty or old.busy:
                return old  # never replace data not yet on the OST
            self.cached_bytes -= len(old.data)
        chunk = Chunk(data)
        fc.chunks[idx] = chunk
        self.cached_bytes += len(data)
        self._lru[(ino, idx)] = None
        self._lru.move_to_end((ino, idx))
        return chunk

    def needs_fill(self, ino: int, idx: int, lo: int, hi: int, file_size: int) -> bool:
        """Must chunk idx be fetched before writing [lo, hi) of it?"""
        if self.get(ino, idx) is not None:
            return False
        start = idx * CHUNK
        valid = min(CHUNK, max(file_size - start, 0))  # bytes of file data in this chunk
        return not (lo == 0 and hi >= valid) and valid > 0

    def write(self, ino: int, idx: int, lo: int, data: bytes | memoryview) -> None:
        """Copy data into chunk idx at lo (the chunk must be cached or fetched first)."""
        fc = self.file(ino)
        chunk = fc.chunks.get(idx)
        hi = lo + len(data)
        if chunk is None:
            assert lo == 0
            chunk = self.put(ino, idx, _adopt(data))
        else:
            buf = _mutable(chunk)
            if lo > len(buf):
                self.cached_bytes += lo - len(buf)
                buf.extend(bytes(lo - len(buf)))  # a hole before EOF-extending data
            grow = max(hi - len(buf), 0)
            buf[lo:hi] = data
            self.cached_bytes += grow
        before = chunk.dirty_hi - chunk.dirty_lo
        if chunk.dirty:
            chunk.dirty_lo = min(chunk.dirty_lo, lo)
            chunk.dirty_hi = max(chunk.dirty_hi, hi)
        else:
            chunk.dirty_lo, chunk.dirty_hi = lo, hi
        self.dirty_bytes += (chunk.dirty_hi - chunk.dirty_lo) - before
        fc.dirty.add(idx)
        self._lru.pop((ino, idx), None)  # dirty chunks are not evictable

    def take_dirty(self, ino: int, idx: int) -> tuple[int, bytes] | None:
        """Snapshot chunk idx's dirty range for write-back and mark it busy.

        Returns (offset in chunk, data) or None if it is clean or already busy.
        The bytes stay counted as dirty until `writeback_done`.
        """
        fc = self.files.get(ino)
        chunk = fc.chunks.get(idx) if fc else None
        if chunk is None or chunk.busy or not chunk.dirty or idx in fc.inflight:
            return None  # (an older chunk at idx, since truncated away, may still be in flight)
        lo, hi = chunk.dirty_lo, chunk.dirty_hi
        chunk.busy = True
        chunk.dirty_lo = chunk.dirty_hi = 0
        fc.dirty.discard(idx)
        fc.busy += 1
        fc.inflight[idx] = chunk
        if isinstance(chunk.data, bytes) and lo == 0 and hi == len(chunk.data):
            return lo, chunk.data  # (immutable: later writes copy the chunk first)
        with memoryview(chunk.data) as view:
            return lo, bytes(view[lo:hi])

    def writeback_done(self, ino: int, idx: int, lo: int, length: int, ok: bool) -> None:
        fc = self.file(ino)
        sent = fc.inflight.pop(idx, None)
        fc.busy -= 1
        self.dirty_bytes -= length  # the snapshot's bytes; a failed range is re-added below
        chunk = fc.chunks.get(idx)
        if chunk is None or chunk is not sent:
            # Truncated away meanwhile (and maybe written anew: that chunk is not ours).
            if sent is not None:
                sent.busy = False
            return
        chunk.busy = False
        hi = min(lo + length, len(chunk.data))  # a truncate may have cut the chunk since
        if not ok and hi > lo:  # put the range back, merged with anything written since
            if chunk.dirty:
                old = chunk.dirty_hi - chunk.dirty_lo
                chunk.dirty_lo, chunk.dirty_hi = min(chunk.dirty_lo, lo), max(chunk.dirty_hi, hi)
                self.dirty_bytes += (chunk.dirty_hi - chunk.dirty_lo) - old
            else:
                chunk.dirty_lo, chunk.dirty_hi = lo, hi
                self.dirty_bytes += hi - lo
            fc.dirty.add(idx)
        if not chunk.dirty and not chunk.busy:
            self._lru[(ino, idx)] = None
            # Written data becomes evictable only here: a writer that never reads must
            # not grow the cache past its limit.
            if self.cached_bytes + self.held_elsewhere() > self.max_cached:
                self.evict()

    def truncate(self, ino: int, size: int) -> None:
        """Drop cached data beyond size (dirty data included: it no longer exists)."""
        fc = self.files.get(ino)
        if fc is None:
            return
        for idx in list(fc.chunks):
            start = idx * CHUNK
            chunk = fc.chunks[idx]
            if start >= size:
                self._drop_chunk(ino, fc, idx)
            elif start + len(chunk.data) > size:
                keep = size - start
                self.cached_bytes -= len(chunk.data) - keep
                del _mutable(chunk)[keep:]
                if chunk.dirty:
                    old = chunk.dirty_hi - chunk.dirty_lo
                    chunk.dirty_hi = min(chunk.dirty_hi, keep)
                    if chunk.dirty_hi <= chunk.dirty_lo:
                        chunk.dirty_lo = chunk.dirty_hi = 0
                        fc.dirty.discard(idx)
                    self.dirty_bytes -= old - (chunk.dirty_hi - chunk.dirty_lo)
                    if not chunk.dirty and not chunk.busy:
                        self._lru[(ino, idx)] = None  # clean now: evictable again

    def _drop_chunk(self, ino: int, fc: FileCache, idx: int) -> None:
        chunk = fc.chunks.pop(idx)
        self.cached_bytes -= len(chunk.data)
        if chunk.dirty:
            self.dirty_bytes -= chunk.dirty_hi - chunk.dirty_lo
        fc.dirty.discard(idx)
        self._lru.pop((ino, idx), None)
        # A busy chunk's bytes are released by writeback_done (it finds the chunk gone).

    def drop_clean(self, ino: int) -> None:
        """Forget cached data of ino that is neither dirty nor in flight."""
        fc = self.files.get(ino)
        if fc is None:
            return
        for idx, chunk in list(fc.chunks.items()):
            if not chunk.dirty and not chunk.busy:
                self._drop_chunk(ino, fc, idx)
        if not fc.chunks and not fc.busy:
            del self.files[ino]

    def evict(self) -> int:
        """Drop least recently used clean chunks until under max_cached; bytes freed."""
        freed = 0
        while self.cached_bytes + self.held_elsewhere() > self.max_cached and self._lru:
            (ino, idx), _ = self._lru.popitem(last=False)
            fc = self.files.get(ino)
            chunk = fc.chunks.get(idx) if fc else None
            if fc is None or chunk is None or chunk.dirty or chunk.busy:
                continue
            freed += len(chunk.data)
            self._drop_chunk(ino, fc, idx)
        return freed


def _adopt(data: bytes | memoryview) -> bytes | bytearray:
    """The data of a new chunk written from its start: the writer's own bytes object
    when data is all of one (no copy; bytes never change), else a copy."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, memoryview) and isinstance(data.obj, bytes) \
            and data.nbytes == len(data.obj) and data.contiguous:
        return data.obj
    return bytearray(data)


def _mutable(chunk: Chunk) -> bytearray:
    """The chunk's data, made a bytearray of its own first if it is shared bytes."""
    if not isinstance(chunk.data, bytearray):
        chunk.data = bytearray(chunk.data)
    return chunk.data
