"""md_cache.py - what the client caches under MDT locks, and its updates to the MDT.

* MDT IBITS locks, granted with the replies of lookups, getattrs and creates
  (intent locks), protect a cached name (LOOKUP), the attributes permission
  checks use (PERM) and the other attributes (UPDATE, LAYOUT). A regular file
  gets one lock with every bit; a directory gets its name lock (LOOKUP|PERM) and
  its attribute lock (UPDATE|PERM|LAYOUT) apart, so that creating a file in it
  (EX UPDATE on the directory) does not drop the path walk's cached name.
* The kernel caches attributes for LONG_TIMEOUT only while all of an inode's
  attribute locks are held, and never names (entry timeout 0: the kernel asks the
  daemon, which answers from its own lock-protected name cache). Invalidating a
  kernel dentry takes the directory's inode lock, which an operation of this very
  client may hold while its server waits for this cancel; attribute invalidation
  takes no lock.
* An update sends the handles of our unused locks it would call back with it
  (early lock cancel), and may ask for the directory's attribute lock again.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..protocol.errors import RpcError
from ..protocol.ldlm import FL_CBPENDING, FL_ELC, NAME_BITS, IBits, LockType, Mode, inode_res
from . import xattr_cache
from .dir_listing import Listings
from .inodes import Inode, InodeTable
from .kernel_cache import KernelCache
from .ldlm import LockClient
from .ldlm_client import ClientLock, LockState, Reservation
from .md_writeback import AttrWriteback
from .mdc import Mdc
from .open_handles import OpenHandles

log = logging.getLogger(__name__)

LONG_TIMEOUT = 60.0  # kernel attribute cache under locks (dropped at once on callback)
MD_LRU_SIZE = 32768  # MDT locks a client keeps unused (one or two per cached inode)

LOOKUP, UPDATE, PERM, LAYOUT, SOM = (int(IBits.LOOKUP), int(IBits.UPDATE), int(IBits.PERM),
                                     int(IBits.LAYOUT), int(IBits.SOM))
# SOM: the MDT's size is the file's (or ours, its only writer); granted only then.
FILE_BITS = LOOKUP | UPDATE | PERM | LAYOUT | SOM
DIR_NAME_BITS = LOOKUP | PERM
DIR_ATTR_BITS = UPDATE | PERM | LAYOUT
ATTR_BITS = UPDATE | PERM  # what the attributes handed to the kernel need
OPEN_BITS = LOOKUP | UPDATE | PERM  # what keeps a closed open valid (open_cache.py)


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


def lock_bits(lock: ClientLock) -> int:
    """The inode bits of an IBITS lock."""
    policy = lock.policy
    assert isinstance(policy, int)
    return int(policy)


class MdCache:
    """Names and attributes cached under MDT locks; requests that refresh or change them.

    :dentries: (parent, name) -> ino, cached under the child's LOOKUP lock.
    """

    def __init__(self, locks: LockClient, mdc: Mdc, inodes: InodeTable, kernel: KernelCache,
                 handles: OpenHandles, listings: Listings, counters: dict[str, int],
                 wb: AttrWriteback) -> None:
        self.locks = locks
        self.wb = wb
        self.listings = listings
        self.mdc = mdc
        self.inodes = inodes
        self.kernel = kernel
        self.handles = handles
        self.counters = counters
        self.dentries: dict[tuple[int, bytes], int] = {}  # (parent, name) -> ino
        self._busy_dirs: dict[int, int] = {}  # directory -> updates of ours in it
        # Names of locks given back early, by remote handle, until their update's reply.
        self._elc_names: dict[int, tuple[int, list[tuple[int, bytes]]]] = {}
        self.names_of: dict[int, set[tuple[int, bytes]]] = {}

    def md_bits(self, node: Inode) -> int:
        bits = 0
        live = []
        for lock in node.md:
            if lock.state is LockState.GRANTED:
                bits |= lock_bits(lock)
                live.append(lock)
        if len(live) != len(node.md):
            node.md = live
        return bits

    def _intent(self, dir_bits: int, file_bits: int) -> tuple[ClientLock, dict[str, Any]]:
        lock = self.locks.intent_begin(inode_res(0), LockType.IBITS, Mode.PR, file_bits)
        return lock, {"handle": lock.handle, "bits": file_bits, "dir_bits": dir_bits}

    def _intent_done(self, lock: ClientLock, body: dict[str, Any] | None,
                     dir_bits: int, file_bits: int = FILE_BITS,
                     sent: float | None = None) -> Inode | None:
        """Merge a reply's attributes; keep its lock if it was granted."""
        attr = body.get("attr") if body else None
        remote = body.get("lock") if body else None
        if attr is None or remote is None or lock.state is not LockState.ENQUEUING:
            self.locks.intent_end(lock, None)
            return self.inodes.update(attr, sent) if attr is not None else None
        bits = dir_bits if stat.S_ISDIR(attr["mode"]) else file_bits
        granted_bits = body.get("lock_bits") if body else None
        if type(granted_bits) is int and 0 < granted_bits and not granted_bits & ~bits:
            bits = granted_bits  # (the MDT grants the SOM bit only when it holds)
        self.locks.ns.rebind(lock.handle, inode_res(attr["ino"]), bits)
        granted = self.locks.intent_end(lock, remote)
        node = self.inodes.update(attr, sent)
        if granted and lock not in node.md:
            node.md.append(lock)
        return node

    async def md_call(self, call: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
                      dir_bits: int = DIR_ATTR_BITS,
                      file_bits: int = FILE_BITS) -> tuple[Inode | None, dict[str, Any]]:
        """Send an MDT request that returns attributes, with an intent lock."""
        lock, intent = self._intent(dir_bits, file_bits)
        body: dict[str, Any] | None = None
        self.counters["md_rpcs"] += 1
        sent = trio.current_time()
        try:
            body = await call(intent)
        finally:
            node = self._intent_done(lock, body, dir_bits, file_bits, sent)
        assert body is not None
        if node is not None:
            node.attr_at = sent
        return node, body

    async def md_getattr(self, ino: int) -> Inode:
        node = self.inodes.get(ino)
        bits = self.md_bits(node) if node is not None else 0
        if node is not None and bits & ATTR_BITS == ATTR_BITS and node.layout is not None \
                and not bits & SOM:
            # Protected but for the size (a writer had it open when our lock came): the
            # SOM bit alone, granted if the MDT's size is the file's again.
            node, _ = await self.md_call(lambda intent: self.mdc.getattr(ino, intent=intent),
                                         file_bits=SOM)
            assert node is not None
            return node
        if node is not None and bits & ATTR_BITS == ATTR_BITS:
            # Already protected (a file whose size needed asking): no second lock.
            self.counters["md_rpcs"] += 1
            sent = trio.current_time()
            body = await self.mdc.getattr(ino)
            node = self.inodes.update(body["attr"], sent)
            node.attr_at = sent
            return node
        node, _ = await self.md_call(lambda intent: self.mdc.getattr(ino, intent=intent))
        assert node is not None
        return node

    def update_lock(self, node: Inode) -> ClientLock | None:
        """A granted lock of ours with the UPDATE bit on node (xattrs hold under it)."""
        for lock in node.md:
            if lock.state is LockState.GRANTED and lock_bits(lock) & UPDATE:
                return lock
        return None

    # ---- names ------------------------------------------------------------------------

    def name_held(self, parent: int, name: bytes, ino: int) -> bool:
        """Is parent/name -> ino cached under a lock (the kernel may keep it)?"""
        return self.dentries.get((parent, name)) == ino

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

    def name_locks(self, parent: int, name: bytes) -> list[tuple[int, int]]:
        """What removing a name calls back: the directory's contents, the child's name."""
        wanted = [(parent, UPDATE)]
        child = self.dentries.get((parent, name))
        if child is not None:
            wanted.append((child, NAME_BITS))
        return wanted

    # ---- updates ----------------------------------------------------------------------

    async def update_call(self, wanted: list[tuple[int, int]],
                          call: Callable[[dict[str, Any]], Awaitable[Any]],
                          parent: int | None = None, keeps_names: bool = False,
                          removes: tuple[int, bytes] | None = None) -> Any:
        """An MDT update with early lock cancel of our locks it would call back; `call`
        gets the extra request fields. With `parent`, the directory's attribute lock
        is asked for again with the reply (the update takes it from us). keeps_names:
        the update changes no name (a setattr): names of the inodes whose locks it gave
        back stay ours if its reply's lock continues them."""
        # Directories whose inode lock the kernel holds while this update is out: a
        # callback must not wait for the kernel to drop a name in them (it would wait
        # for this very update, which may wait for that callback's cancel).
        busy = {ino for ino, _ in wanted if self._is_dir(ino)}
        if parent is not None:
            busy.add(parent)
        for ino in busy:
            self._busy_dirs[ino] = self._busy_dirs.get(ino, 0) + 1
        try:
            return await self._update_call(wanted, call, parent, keeps_names, removes)
        finally:
            for ino in busy:
                left = self._busy_dirs[ino] - 1
                if left:
                    self._busy_dirs[ino] = left
                else:
                    del self._busy_dirs[ino]

    def _is_dir(self, ino: int) -> bool:
        node = self.inodes.get(ino)
        return node is not None and stat.S_ISDIR(node.attr["mode"])

    async def _update_call(self, wanted: list[tuple[int, int]],
                           call: Callable[[dict[str, Any]], Awaitable[Any]],
                           parent: int | None, keeps_names: bool,
                           removes: tuple[int, bytes] | None) -> Any:
        listing = self.listings.detach(parent) if parent is not None else None
        cancels = await self.locks.early_cancel(
            [(inode_res(ino), bits) for ino, bits in wanted])
        names = [self._elc_names.pop(h) for h in cancels if h in self._elc_names]
        extra: dict[str, Any] = {"cancels": cancels}
        plock = None
        if parent is not None:
            plock = self.locks.intent_begin(inode_res(parent), LockType.IBITS, Mode.PR,
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
            self.locks.cancels_sent(cancels, delivered=delivered)
            body = result[1] if isinstance(result, tuple) else result
            body = body if isinstance(body, dict) else None
            if names:
                self._names_after_update(names, keeps_names and body is not None
                                         and bool(body.get("lock_continues")),
                                         removes if delivered else None)
            if plock is not None:
                granted = self._parent_intent_done(plock, body)
                if granted and listing is not None and body is not None \
                        and body.get("parent_lock_continues"):
                    # (The caller applies its own change right after, nothing between.)
                    assert parent is not None
                    self.listings.complete(parent, plock, listing)

    def _names_after_update(self, names: list[tuple[int, list[tuple[int, bytes]]]],
                            continued: bool, removed: tuple[int, bytes] | None) -> None:
        """Names our update gave back early: ours again under the reply's lock if it
        continues them (nothing else ran on the MDT in between), else the kernel drops
        them (later: the update's own operation may hold their directories' locks)."""
        for ino, keys in names:
            node = self.inodes.get(ino)
            for parent, name in keys:
                if (parent, name) == removed:
                    continue  # (the kernel drops the name it asked us to remove)
                if continued and node is not None and self.md_bits(node) & LOOKUP:
                    if (parent, name) not in self.dentries:
                        self.remember_name(parent, name, node)
                else:
                    self.kernel.forget_entry_later(parent, name)

    def _parent_intent_done(self, lock: ClientLock, body: dict[str, Any] | None) -> bool:
        remote = body.get("parent_lock") if body else None
        attr = body.get("parent_attr") if body else None
        granted = self.locks.intent_end(lock, remote if attr is not None else None)
        if attr is None:
            return False
        node = self.inodes.update(attr)
        if granted:
            node.md.append(lock)
        return granted

    # ---- directory pages with their locks (statahead) ---------------------------------

    async def readdir_page(self, cred: list[Any], ino: int, cookie: int,
                           count: int) -> tuple[list[tuple[bytes, Inode, int]], bool]:
        """Entries after `cookie` with their attributes and, where granted, their locks
        (names cached under them); a page that is the whole directory, granted with the
        directory's lock, becomes its complete listing (dir_listing.py). Returns
        [(name, inode, next cookie)] and whether the directory ends there."""
        intents = self.locks.intent_range(inode_res(0), LockType.IBITS, Mode.PR, FILE_BITS,
                                          count)
        dlock = self.locks.intent_begin(inode_res(ino), LockType.IBITS, Mode.PR,
                                        DIR_ATTR_BITS)
        want = {"handle_base": intents.base, "bits": FILE_BITS,
                "dir_bits": DIR_NAME_BITS, "dir_handle": dlock.handle,
                "dir_lock_bits": DIR_ATTR_BITS}
        body: dict[str, Any] | None = None
        self.counters["md_rpcs"] += 1
        sent = trio.current_time()
        try:
            body = await self.mdc.readdir(cred, ino, cookie, count, locks=want)
        finally:
            out = self._page_done(ino, intents, dlock, body, sent)
        assert body is not None
        end = bool(body.get("end"))
        if end and cookie == 0 and self._dir_lock_held(ino, dlock):
            self.listings.complete(ino, dlock, {name: n.ino for name, n, _ in out})
        return out, end

    def _page_done(self, ino: int, intents: Reservation, dlock: ClientLock,
                   body: dict[str, Any] | None,
                   sent: float) -> list[tuple[bytes, Inode, int]]:
        try:
            return self._page_entries(ino, intents, dlock, body, sent)
        finally:
            self.locks.range_end(intents)

    def _page_entries(self, ino: int, intents: Reservation, dlock: ClientLock,
                      body: dict[str, Any] | None,
                      sent: float) -> list[tuple[bytes, Inode, int]]:
        entries = body.get("entries", []) if body else []
        out: list[tuple[bytes, Inode, int]] = []
        for i, entry in enumerate(entries[:intents.count]):
            lock = self.locks.range_lock(intents, i) if len(entry) >= 5 else None
            if lock is None:
                out.append((entry[0], self.inodes.update(entry[1], sent), entry[2]))
                continue
            name, attr, next_cookie, remote, bits = entry[:5]
            if lock.state is LockState.ENQUEUING:
                self.locks.ns.rebind(lock.handle, inode_res(attr["ino"]), bits)
            granted = self.locks.intent_end(lock, remote)
            node = self.inodes.update(attr, sent)
            if granted and lock not in node.md:
                node.md.append(lock)
            if granted and len(entry) > 5 and entry[5] is False and bits & UPDATE:
                node.xattrs = xattr_cache.none_at_all(lock)
            self.remember_name(ino, name, node)
            out.append((name, node, next_cookie))
        dattr = body.get("dir_attr") if body else None
        granted = self.locks.intent_end(dlock, body.get("dir_lock") if body and dattr else None)
        if dattr is not None:
            dnode = self.inodes.update(dattr)
            if granted and dlock not in dnode.md:
                dnode.md.append(dlock)
        return out

    @staticmethod
    def _dir_lock_held(ino: int, lock: ClientLock) -> bool:
        return lock.state is LockState.GRANTED and lock.res[0] == ino

    async def setattr_rpc(self, cred: list[Any], node: Inode, attrs: dict[str, Any],
                          fh: int | None) -> dict[str, Any]:
        """Change attributes on the MDT under the inode's attribute locks (given back by
        early cancel); the new attributes. fh: the open handle the change goes through
        (a truncate or a writer's set-id kill), which the MDT takes as the permission."""
        xattrs = node.xattrs if xattr_cache.usable(node.xattrs, node.md) else None
        try:
            _, body = await self.update_call(
            [(node.ino, ATTR_BITS)],
                lambda kw: self.md_call(lambda intent: self.mdc.setattr(
                    cred, node.ino, attrs, via_handle=fh is not None, intent=intent, **kw)),
                keeps_names=True)
        finally:
            node.reported_at = trio.current_time()  # (failed or not: it may have run)
        if xattrs is not None and body.get("lock_continues"):
            node.xattrs = xattr_cache.moved(xattrs, self.update_lock(node))
        return body["attr"]

    async def setattr_with_size(self, cred: list[Any], node: Inode, attrs: dict[str, Any],
                                fh: int | None) -> dict[str, Any]:
        """setattr_rpc carrying the size and written state our data gave the file (one
        request where push_meta and a setattr were two: tar and cp -p set the times of
        every file they have just written). Set-id bits a write must drop still go the
        way of push_meta."""
        async with node.meta_lock:
            if node.meta_dirty and not node.kill_priv:
                node.meta_dirty = False
                node.meta_inflight += 1
                try:
                    return await self.setattr_rpc(cred, node,
                                                  {**attrs, "write_size": node.size}, fh)
                except BaseException:
                    node.meta_dirty = True
                    raise
                finally:
                    node.meta_inflight -= 1
        await self.push_meta(node)
        return await self.setattr_rpc(cred, node, attrs, fh)

    async def push_meta(self, inode: Inode) -> None:
        """Tell the MDT the size and mtime that written data gave the file."""
        async with inode.meta_lock:
            if not inode.meta_dirty:
                return
            inode.meta_dirty = False
            kill_priv, inode.kill_priv = inode.kill_priv, False
            inode.meta_inflight += 1
            try:
                attr = await self.update_call(
                    [(inode.ino, ATTR_BITS)] if kill_priv else [],
                    lambda kw: self.mdc.write_update(inode.ino, inode.size, inode.mtime_ns,
                                                     kill_priv, **kw))
            except BaseException:
                inode.meta_dirty = True
                inode.kill_priv |= kill_priv
                raise
            finally:
                inode.reported_at = trio.current_time()
                inode.meta_inflight -= 1
            inode.attr = self.inodes.ours_kept(inode, attr)

    def open_lock(self, node: Inode) -> ClientLock | None:
        """A granted lock of ours on `node` whose bits every change of what an open checks
        calls back (name, attributes, permissions): the open cache keeps opens under it."""
        for lock in node.md:
            if lock.state is LockState.GRANTED and lock_bits(lock) & OPEN_BITS == OPEN_BITS:
                return lock
        return None

    # ---- lock callbacks (MDT lock client) ----------------------------------------------

    async def blocking(self, lock: ClientLock) -> None:
        ino = lock.res[0]
        bits = lock_bits(lock)
        node = self.inodes.get(ino)
        if node is not None and node.wb is not None:
            await self.wb.lock_gone(node, lock)  # (what we changed under it goes first)
        if node is not None and lock in node.md:
            node.md.remove(lock)
            self.inodes.maybe_forget(node)  # (kept for this lock after the kernel forgot it)
        if bits & UPDATE:
            self.listings.lock_gone(ino, lock)
        if bits & LOOKUP:
            keys = [key for key in self.names_of.pop(ino, set())
                    if self.dentries.get(key) == ino]
            for key in keys:
                del self.dentries[key]
            if lock.flags & FL_ELC:
                # An update of ours gives it back early: it decides after its reply
                # whether the names stay ours or the kernel must drop them.
                if lock.remote_handle is not None:
                    self._elc_names[lock.remote_handle] = (ino, keys)
            else:
                for parent, name in keys:
                    if lock.flags & FL_CBPENDING and not self._busy_dirs.get(parent):
                        # Another client's update waits for this cancel: the kernel
                        # drops the name first (bounded: see kernel_cache.py).
                        await self.kernel.invalidate_entry(parent, name)
                    else:
                        # Our LRU gives it back (nobody waits), or an update of ours in
                        # that directory holds its lock in the kernel: in the background.
                        self.kernel.forget_entry_later(parent, name)
        if bits & (UPDATE | PERM | LAYOUT) and not lock.flags & FL_ELC \
                and not (node is not None and self.md_bits(node) & bits == bits):
            # (An update of ours cancelled it early: the kernel drops the attributes of
            # the inodes that update touches by itself. Another lock of ours covering
            # the same bits still protects them: an idle write-back lock given back.)
            await self.kernel.invalidate(ino, attr_only=True)

    async def evicted(self, locks: list[ClientLock]) -> None:
        """Evicted by the MDT: open files are invalid (their I/O fails with EIO; they
        can be opened again), and nothing the MDT locks protected can be trusted."""
        for of in self.handles.files():
            of.evicted = True
        self.wb.forget_all()
        await self.reset(locks)

    async def reset(self, locks: list[ClientLock]) -> None:
        self.listings = Listings(self.listings.max_names)
        for parent, name in list(self.dentries):
            self.kernel.forget_entry_later(parent, name)
        self.dentries.clear()
        self.names_of.clear()
        for node in self.inodes.all():
            node.md = []
        for ino in list(self.inodes.inodes):
            await self.kernel.invalidate(ino, attr_only=True)
