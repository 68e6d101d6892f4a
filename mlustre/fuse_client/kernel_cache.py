"""kernel_cache.py - the only caller of pyfuse3.invalidate_inode: the kernel's caches.

The kernel caches attributes (for the attribute timeout) and pages of every inode the
mount hands it. When a lock protecting them is given back, they must go; the kernel is
told from a worker thread (pyfuse3 requires it: the call waits for the kernel, which
may be sending this very daemon a request).

* `invalidate()`: attributes, or attributes and pages, of one inode; waits for it.
* `drop_pages()`: before a data lock of the inode is given back. Dropping a page waits
  for its lock, which the kernel holds while it sends a read or write of it; that I/O
  may wait for a lock that waits for this cancel. So once I/O of the inode waits for a
  lock, the invalidation is left running in its thread (abandoned, not cancelled).
  Those threads have their own limiter (they must not take the threads of other work).
* `wait_idle()`: invalidations left running end with the kernel connection; none may
  still be inside pyfuse3 when it closes (shutdown waits for them, bounded).

No entry (name) invalidation is used: names have entry timeout 0 (see md_cache.py).
Before pyfuse3 is initialised, and after it is done, nothing is sent (`ready`).
"""

from __future__ import annotations

import errno
import logging
from typing import Protocol

import pyfuse3
import trio

log = logging.getLogger(__name__)

INVAL_THREADS = 64


class PagesOwner(Protocol):
    """What drop_pages watches of an inode (inodes.Inode)."""

    ino: int
    lock_waiters: int  # I/O of the inode waiting for a data lock
    waiter_came: trio.Event  # set (and replaced) when one starts waiting


class KernelCache:
    """The kernel's attribute and page caches, as far as this daemon can drop them.

    :counters: the mount's counters (llite.*.stats): kernel_invalidations and
        kernel_invalidations_left_running are counted here.
    """

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters
        self.ready = False  # pyfuse3 initialised: kernel invalidations possible
        # Invalidations of pages may wait for I/O that waits for a lock: their threads
        # must not take those of other work (the default limiter's).
        self._threads = trio.CapacityLimiter(INVAL_THREADS)

    async def invalidate(self, ino: int, attr_only: bool) -> None:
        """Drop the kernel's attributes (and pages) of ino, from a worker thread."""
        if not self.ready:
            return
        self.counters["kernel_invalidations"] += 1
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, attr_only)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the kernel has forgotten the inode
                log.warning("kernel invalidation of inode %d failed: %s", ino, e)

    async def drop_pages(self, node: PagesOwner) -> None:
        """Invalidate the kernel's pages of node before one of its data locks is
        given back; left running in its thread once I/O of node waits for a lock
        (see the module docstring: it may be waiting for that I/O)."""
        if not self.ready:
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
                                              limiter=self._threads)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    log.warning("kernel invalidation of inode %d failed: %s", node.ino, e)
            nursery.cancel_scope.cancel()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait (up to `timeout` s) for invalidations left running in their threads."""
        with trio.move_on_after(timeout):
            while self._threads.borrowed_tokens:
                await trio.sleep(0.01)
