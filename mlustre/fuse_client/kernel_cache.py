"""kernel_cache.py - the only caller of pyfuse3.invalidate_inode and invalidate_entry: the kernel's caches.

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

* `invalidate_entry()`: a name the kernel keeps (entry timeout > 0 while the child's
  LOOKUP lock is held, md_cache.py). The call takes the directory's inode lock, which
  an operation of this very client in that directory may hold while its server waits
  for the lock whose callback asks for this: it waits at most ENTRY_WAIT, then is left
  running (the kernel drops the name as soon as that operation ends).
* `forget_entry_later()`: the same in the background, for names an update of ours
  gave back early (the update's own operation holds the directory's lock).

Before pyfuse3 is initialised, and after it is done, nothing is sent (`ready`).
"""

from __future__ import annotations

import errno
import logging
import math
from typing import Protocol

import pyfuse3
import trio

log = logging.getLogger(__name__)

INVAL_THREADS = 64
ENTRY_WAIT = 0.2  # s: an entry invalidation waited for before it is left running


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
        self._nursery: trio.Nursery | None = None

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

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def invalidate_entry(self, parent: int, name: bytes,
                               wait: float = ENTRY_WAIT) -> None:
        """Drop the kernel's entry `name` in directory `parent`, from a worker thread;
        wait at most `wait` seconds for it (see the module docstring)."""
        if not self.ready:
            return
        self.counters["kernel_entry_invalidations"] += 1
        with trio.move_on_after(wait) as scope:
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent, name,
                                              abandon_on_cancel=True, limiter=self._threads)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.warning("kernel invalidation of entry %r in %d failed: %s", name,
                                parent, e)
        if scope.cancelled_caught:
            self.counters["kernel_invalidations_left_running"] += 1

    def forget_entry_later(self, parent: int, name: bytes) -> None:
        """invalidate_entry in the background (no waiting at all)."""
        if self.ready and self._nursery is not None:
            self._nursery.start_soon(self.invalidate_entry, parent, name, math.inf)

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
