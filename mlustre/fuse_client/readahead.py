"""readahead.py - which chunks to read ahead of a sequential reader (no I/O here).

As Lustre's llite read-ahead: a stream is detected per open file (a read that starts
where the previous one ended); from the second such read on, a window of chunks ahead
of the reader is kept requested, doubling on every sequential read up to `max_window`.
A read elsewhere (random access) resets it, so random readers never read ahead.

Memory stays bounded whatever the number of readers: at most `max_inflight` read-ahead
fetches run at once over the whole client (their buffers are not yet in the page
cache, whose own limit covers them once they land). Chunks not granted for lack of
budget are asked for again by the next read, as the window edge has not moved past them.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_WINDOW = 16  # chunks ahead of one reader (16 MiB: llite's per-file default is 64)
MAX_INFLIGHT = 32  # read-ahead fetches in flight for the whole client (32 MiB of buffers)


@dataclass
class Stream:
    """Read-ahead state of one open file."""

    next_off: int = -1  # where a sequential read would start
    window: int = 0  # chunks to keep requested ahead of the reader
    issued_to: int = -1  # highest chunk index already requested for this stream


class Readahead:
    """Read-ahead decisions for every open file of one client, and the shared budget."""

    def __init__(self, max_window: int = MAX_WINDOW, max_inflight: int = MAX_INFLIGHT) -> None:
        self.max_window = max_window
        self.max_inflight = max_inflight
        self.inflight = 0

    def on_read(self, st: Stream, off: int, end: int, chunk: int, max_idx: int) -> list[int]:
        """A read of [off, end) (end > off; `chunk` bytes per chunk, `max_idx` the file's
        last chunk): the chunk indexes to fetch ahead now, each counted in flight until
        `done`. The caller skips those already cached or being fetched (and still calls
        `done` for them)."""
        sequential = off == st.next_off
        st.next_off = end
        last = (end - 1) // chunk
        if not sequential:
            st.window, st.issued_to = 0, last
            return []
        st.window = min(max(st.window * 2, 1), self.max_window)
        lo = max(st.issued_to + 1, last + 1)
        hi = min(last + st.window, max_idx)
        out: list[int] = []
        for idx in range(lo, hi + 1):
            if self.inflight >= self.max_inflight:
                break
            self.inflight += 1
            out.append(idx)
            st.issued_to = idx
        return out

    def done(self) -> None:
        """One read-ahead fetch given by `on_read` has ended (fetched, skipped or failed)."""
        self.inflight -= 1
