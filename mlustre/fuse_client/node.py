"""node.py - the composition root of a FUSE mount: the one place that builds and wires
the client.

    Mount
      client: ClientNode (client.py)       per target a TargetLink (target_link.py):
                                            Import, LockClient, Barrier, Mdc/Osc; the
                                            mount's TargetHooks go to their constructors
      counters                              llite.*.stats
      kernel: KernelCache                   the only caller of pyfuse3.invalidate_inode
      cache: PageCache, writeback: Writeback
      inodes: InodeTable                    per-inode state
      md: MdCache                           names/attributes under MDT locks, MDT updates
      data: DataLocks                       OST locks: I/O locks, give-back, glimpse, drains
      io: FileIo                            read/write/fetch/read-ahead/flush/release
      names: Namespace                      lookup/attributes/names/directories/xattrs
      opener: FileOpen                      open/create, open replay
      ops: FuseOps                          the pyfuse3.Operations (convert and delegate)

The lock clients exist before the components that answer their callbacks (those
components use them), so the hooks handed to ClientNode call into components this
root builds right after configuring the client and before it connects: no callback
can come earlier.
"""

from __future__ import annotations

import trio

from ..protocol.errors import ConnectionLost
from .client import ClientNode
from .data_locks import OST_LRU_SIZE, DataLocks
from .dir_listing import Listings
from .file_io import FileIo
from .file_open import FileOpen
from .fuse_ops import FuseOps
from .inodes import Groups, InodeTable
from .kernel_cache import KernelCache
from .ldlm import LockClient
from .ldlm_client import ClientLock
from .md_cache import MD_LRU_SIZE, MdCache
from .md_writeback import AttrWriteback
from .namespace import Namespace
from .open_handles import OpenHandles
from .page_cache import PageCache
from .target_link import TargetHooks
from .writeback import Writeback

COUNTERS = ("md_cache_hits", "md_rpcs", "glimpse_rpcs", "size_refreshes",
            "size_refreshes_no_mdt", "revokes", "revoke_passes", "revoke_borrowed_io",
            "kernel_invalidations", "kernel_invalidations_left_running", "revokes_forced",
            "open_replays", "md_negative_hits", "statahead_pages",
            "xattr_cache_hits", "kernel_entry_invalidations", "open_cache_hits",
            "wb_locks", "wb_setattrs", "wb_flushes", "wb_given_back")


class Mount:
    """A client node and everything a FUSE mount of it is made of."""

    md: MdCache
    data: DataLocks
    inodes: InodeTable
    cache: PageCache
    writeback: Writeback
    wb: AttrWriteback
    io: FileIo
    names: Namespace
    opener: FileOpen
    ops: FuseOps

    def __init__(self, spec: str, *, release: str = "2.0", mount_timeout: float = 20.0,
                 update_lock: bool = True, key: bytes | None = None,
                 max_dirty_mb: int = 256, max_cached_mb: int = 1024) -> None:
        self.max_dirty = max_dirty_mb << 20
        self.max_cached = max_cached_mb << 20
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.kernel = KernelCache(self.counters)
        self.handles = OpenHandles()
        self.groups = Groups()
        self.client = ClientNode(spec, release=release, mount_timeout=mount_timeout,
                                 update_lock=update_lock, key=key, hooks=self._hooks,
                                 identity=self._identity)

    async def connect(self, nursery: trio.Nursery) -> None:
        """Read the configuration, build every component, connect to every target."""
        client = self.client
        client.configure(await client.read_config(nursery))
        self._build()
        await client.start(nursery)

    def _build(self) -> None:
        client = self.client
        if client.mdc is None:
            raise ConnectionLost("no MDT")
        mdc, oscs = client.mdc, client.oscs
        md_locks = client.locks[mdc.imp.target]
        ost_locks: dict[int, LockClient] = {
            idx: client.locks[osc.imp.target] for idx, osc in oscs.items()}
        self.cache = PageCache(self.max_dirty, self.max_cached, held_elsewhere=lambda: sum(
            o.unstable_bytes for o in oscs.values()))
        self.inodes = InodeTable(self.cache, md_locks.ns)
        self.writeback = Writeback(self.cache, oscs, self.inodes.layout_of,
                                   self.inodes.write_failed)
        self.wb = AttrWriteback(md_locks, mdc, self.inodes, self.counters)
        self.md = MdCache(md_locks, mdc, self.inodes, self.kernel, self.handles, Listings(),
                          self.counters, self.wb)
        self.data = DataLocks(ost_locks, self.inodes, self.md, self.cache, self.writeback,
                              self.kernel, self.counters)
        self.io = FileIo(self.inodes, self.cache, self.writeback, self.data, self.md, mdc,
                         oscs, self.handles, self.kernel)
        self.names = Namespace(self.inodes, self.md, self.data, self.io, self.writeback, mdc,
                               oscs, self.handles, self.groups, self.counters)
        self.opener = FileOpen(self.inodes, self.md, self.data, self.io, self.names,
                               self.cache, mdc, self.handles, self.counters)
        self.ops = FuseOps(self.names, self.opener, self.io)

    # -- what ClientNode's constructors get (called only once _build has run) --
    def _hooks(self, kind: str, index: int | None) -> TargetHooks:
        if kind == "mdt":
            return TargetHooks(
                lru_size=MD_LRU_SIZE,
                on_blocking=self._md_blocking,
                on_evicted=self._md_evicted,
                on_reset=lambda locks: self.md.reset(locks),
                drain=self._drain_mdt,
                on_connected=lambda body: self.opener.mdt_connected(body))
        assert index is not None
        idx: int = index

        def glimpse(lock: ClientLock) -> dict[str, int] | None:
            return self.data.glimpse(idx, lock)

        def evicted_now(locks: list[ClientLock]) -> None:
            self.data.evicted_now(idx, locks)

        return TargetHooks(
            lru_size=OST_LRU_SIZE,
            on_blocking=lambda lock: self.data.blocking(idx, lock),
            on_evicted=lambda locks: self.data.evicted(idx, locks),
            on_evicted_now=evicted_now,
            on_glimpse=glimpse,
            on_reset=lambda locks: self.data.reset(idx, locks),
            drain=lambda: self.data.drain_ost(idx))

    async def _md_blocking(self, lock: ClientLock) -> None:
        await self.md.blocking(lock)
        self.io.md_lock_gone(lock)

    async def _drain_mdt(self) -> int:
        """The MDT's barrier was called back: what written data and write-back locks
        changed goes first (SIR: nothing to replay after the failover)."""
        return await self.wb.flush_all() + await self.data.drain_mdt()

    async def _md_evicted(self, locks: list[ClientLock]) -> None:
        self.io.forget_kept_opens()
        await self.md.evicted(locks)

    def _identity(self, ino: int) -> tuple[int | None, list[int] | None]:
        return self.inodes.identity(ino)

    # -- lifecycle --
    def start(self, nursery: trio.Nursery) -> None:
        """Background work once the kernel is connected: write-back, flusher, replay."""
        self.kernel.start(nursery)
        self.io.start(nursery)
        nursery.start_soon(self.wb.run)
        self.opener.start(nursery)

    async def shutdown(self) -> None:
        """Write back everything and close every MDT handle before the client goes away."""
        await self.io.shutdown()
        # Invalidations left running in their threads end with the kernel connection;
        # none may still be inside pyfuse3 when it closes.
        await self.kernel.wait_idle()
