"""inodes.py - the client's inode table: per-inode state and what merges into it.

FUSE inode numbers are the MDT's inode numbers (the root is 1 on both sides), so no
translation table is needed, only per-inode client state: the last attributes, the
layout, the size as this client knows it (dirty data can make it larger than the
MDT's), lookup and open counts, and what the lock components note on it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import trio

from ..protocol.ldlm import inode_res
from .ldlm_client import ClientLock, ClientNamespace, LockState
from .lov import Layout
from .page_cache import PageCache
from .xattr_cache import XattrKnowledge

ROOT_INODE = 1  # (pyfuse3.ROOT_INODE)


class Inode:
    __slots__ = ("ino", "attr", "layout", "size", "mtime_ns", "ctime_ns", "meta_dirty",
                 "meta_inflight", "kill_priv", "lookups", "opens", "write_error", "meta_lock",
                 "fetching", "md", "data_gen", "size_gen", "revoking", "revoke_io", "lockless",
                 "lockless_idle", "lock_waiters", "waiter_came", "kernel_pages", "attr_at",
                 "xattrs", "append_lock", "reported_at", "wb")

    def __init__(self, ino: int, attr: dict[str, Any]) -> None:
        self.ino = ino
        self.attr = attr
        self.layout = Layout.from_dict(attr["layout"]) if attr.get("layout") else None
        self.size = attr["size"]
        self.mtime_ns = attr["mtime_ns"]
        self.ctime_ns = attr["ctime_ns"]
        self.meta_dirty = False  # size/mtime changed here, not yet told to the MDT
        self.meta_inflight = 0  # size/mtime updates sent, not yet answered
        self.kill_priv = False  # a non-root writer wrote: set-id bits must go
        self.lookups = 0
        self.opens = 0
        self.write_error = 0
        self.meta_lock = trio.Lock()
        self.fetching: dict[int, trio.Event] = {}
        self.md: list[ClientLock] = []  # granted MDT locks protecting attr (and names)
        self.data_gen = 0  # bumped whenever a data lock of this file is given back
        self.size_gen = -1  # data_gen when size/mtime were last read under full locks
        self.revoking: list[tuple[int, ClientLock]] = []  # data locks being given back
        self.revoke_io = 0  # I/O served under a lock being given back (a count)
        self.lockless = 0  # such I/O in progress
        self.lockless_idle = trio.Event()
        self.lock_waiters = 0  # I/O of this file waiting for a data lock to be granted
        self.waiter_came = trio.Event()  # set (and replaced) when one starts waiting
        self.kernel_pages = False  # read through a buffered handle since last invalidated
        self.attr_at: float | None = None  # when the MDT request that gave attr was sent
        self.xattrs: XattrKnowledge | None = None  # (xattr_cache.py)
        self.append_lock = trio.Lock()  # O_APPEND writes of this client, one at a time
        # When an update of ours that set size/mtime last completed (trio clock): an MDT
        # reply to a request sent before it may carry the older ones.
        self.reported_at = -math.inf
        self.wb: Any = None  # md_writeback.WbState while we hold a write-back lock


class Groups:
    """Supplementary groups of callers, read from /proc (FUSE passes only uid/gid)."""

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self._cache: dict[int, tuple[float, list[int]]] = {}

    def of(self, pid: int) -> list[int]:
        now = time.monotonic()
        hit = self._cache.get(pid)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        groups: list[int] = []
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Groups:"):
                        groups = [int(g) for g in line.split()[1:]]
                        break
        except OSError:
            pass
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[pid] = (now, groups)
        return groups


# States of a lock whose callback has not run to its end yet (md_cache.blocking takes
# the lock out of Inode.md when it has).
LIVE = frozenset((LockState.GRANTED, LockState.CBPENDING, LockState.CANCELLING))


class InodeTable:
    """Every inode the kernel or an open file knows, by number.

    :obj_ino: (ost_idx, oid) -> inode, for the OST lock callbacks.
    :md_ns: the MDT lock namespace (a new entry adopts the locks already held on it).
    """

    def __init__(self, cache: PageCache, md_ns: ClientNamespace) -> None:
        self.cache = cache
        self.md_ns = md_ns
        self.inodes: dict[int, Inode] = {}
        self.obj_ino: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self.inodes)

    def get(self, ino: int) -> Inode | None:
        return self.inodes.get(ino)

    def __contains__(self, ino: int) -> bool:
        return ino in self.inodes

    def all(self) -> list[Inode]:
        return list(self.inodes.values())

    def identity(self, ino: int) -> tuple[int | None, list[int] | None]:
        """The generation and FID the MDT reported for inode ino (to name it in the
        release the MDT speaks now: 1.8 by [ino, gen], 2.0 by FID)."""
        node = self.inodes.get(ino)
        if node is None:
            return None, None
        gen, fid = node.attr.get("gen"), node.attr.get("fid")
        return (gen if type(gen) is int else None), (fid if isinstance(fid, list) else None)

    def layout_of(self, ino: int) -> Layout | None:
        inode = self.inodes.get(ino)
        return inode.layout if inode else None

    def write_failed(self, ino: int, err: int) -> None:
        inode = self.inodes.get(ino)
        if inode is not None:
            inode.write_error = err

    def local_meta_settled(self, inode: Inode) -> bool:
        """May the MDT's size and mtime replace ours? Not while ours are newer."""
        return not inode.meta_dirty and not inode.meta_inflight \
            and self.data_settled(inode.ino)

    def data_settled(self, ino: int) -> bool:
        fc = self.cache.files.get(ino)
        return fc is None or (not fc.dirty and not fc.busy)

    @staticmethod
    def ours_kept(inode: Inode, attr: dict[str, Any]) -> dict[str, Any]:
        """attr from an MDT reply, but for what we changed under our write-back lock
        (md_writeback.py): ours are newer than any reply made before our flush (the
        mtime: ours, a utime's or a later write's)."""
        if inode.wb is None or not inode.wb.changed:
            return attr
        out = {**attr, **{k: inode.attr[k] for k in inode.wb.changed}}
        if "mtime_ns" in inode.wb.changed:
            out["mtime_ns"] = inode.mtime_ns
        out["ctime_ns"] = max(attr["ctime_ns"], inode.attr["ctime_ns"])
        return out

    def update(self, attr: dict[str, Any], sent_at: float | None = None) -> Inode:
        """Merge attributes from the MDT into the inode table. sent_at: when the request
        they answer was sent (its size and mtime are older than ours if one of our size
        updates completed after that)."""
        ino = attr["ino"]
        inode = self.inodes.get(ino)
        if inode is None:
            inode = self.inodes[ino] = Inode(ino, attr)
            self.adopt_md_locks(inode)
            self.watch_layout(inode)
            return inode
        attr = self.ours_kept(inode, attr)
        inode.attr = attr
        inode.attr_at = None  # (md_call sets it when it knows)
        if attr.get("layout"):
            layout = Layout.from_dict(attr["layout"])
            if inode.layout is None or layout != inode.layout:
                inode.layout = layout
                self.watch_layout(inode)
        if self.local_meta_settled(inode) and (sent_at is None or sent_at > inode.reported_at):
            # (Not while our own size update is unsent or unanswered: a reply the MDT
            # made before it would carry an older size.)
            inode.size = attr["size"]
            inode.mtime_ns = attr["mtime_ns"]
            inode.ctime_ns = attr["ctime_ns"]
        else:
            # Ours are newer: so are they for whoever reads the MDT's size from attr (a
            # getattr answered before our size update ran may come back after it).
            inode.attr = {**attr, "size": inode.size, "mtime_ns": inode.mtime_ns}
            inode.ctime_ns = max(inode.ctime_ns, attr["ctime_ns"])
        return inode

    def adopt_md_locks(self, node: Inode) -> None:
        """A new inode entry: the granted locks already held on it protect it too."""
        node.md = [lk for lk in self.md_ns.locks_on(inode_res(node.ino))
                   if lk.state is LockState.GRANTED]

    def watch_layout(self, node: Inode) -> None:
        if node.layout is not None:
            for ost, oid in node.layout.objects:
                self.obj_ino[(ost, oid)] = node.ino

    def by_object(self, ost: int, oid: int) -> tuple[int | None, Inode | None]:
        """The inode number a stripe object belongs to, and its entry if it has one."""
        ino = self.obj_ino.get((ost, oid))
        return ino, (self.inodes.get(ino) if ino is not None else None)

    def striped_on(self, ost: int) -> list[Inode]:
        return [n for n in self.inodes.values()
                if n.layout is not None and any(o == ost for o, _ in n.layout.objects)]

    def maybe_forget(self, inode: Inode) -> None:
        """Drop an inode nobody uses any more: the kernel forgot it, no file has it open,
        nothing of it is left to write. While an MDT lock of ours still protects it, its
        entry stays (its clean pages go): the kernel forgets everything at drop_caches,
        and what the lock protects (attributes, names) answers the lookups after it
        without a round trip. The MDT lock LRU bounds them; the lock's end drops it.
        A lock called back but not yet given back keeps it too: its callback still has
        to find it (a write-back lock's flushes what was changed under it; dropped
        before, those changes were lost: one callback's kernel invalidation makes the
        kernel forget the inode while another lock's callback waits its turn). So do
        write-back changes a failed flush left pending."""
        if inode.lookups <= 0 and inode.opens <= 0 and inode.ino != ROOT_INODE \
                and not inode.meta_dirty and not inode.meta_inflight \
                and not inode.meta_lock.locked() and self.data_settled(inode.ino):
            self.cache.drop_clean(inode.ino)
            if not any(lk.state in LIVE for lk in inode.md) \
                    and not (inode.wb is not None and inode.wb.pending):
                self.inodes.pop(inode.ino, None)
