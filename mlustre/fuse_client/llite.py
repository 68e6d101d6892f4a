"""llite.py - the POSIX face of the client: pyfuse3 Operations.

FUSE inode numbers are the MDT's inode numbers (the root is 1 on both sides),
so no translation table is needed, only per-inode client state: the last
attributes, the layout, the size as this client knows it (dirty data can make
it larger than the MDT's), lookup and open counts.

Every handler converts failures to FUSEError: any other exception would end
pyfuse3's main loop and leave a dead mount.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from ..protocol import constants as C
from ..protocol.errors import ErrnoError, RpcError
from ..protocol.ldlm import NAME_BITS, IBits, Mode
from .boundary import buf_within_max, fuse_errors, kill_setid
from .client import ClientNode
from .imports import ImportClosed
from .ldlm import LockFailed
from .ldlm_client import ClientLock
from .llite_locks import (
    ATTR_BITS,
    DIR_NAME_BITS,
    EOF,
    LONG_TIMEOUT,
    UPDATE,
    LockedCaches,
)
from .lov import Layout
from .open_handles import OpenFile, OpenHandles
from .page_cache import CHUNK, PageCache
from .writeback import Writeback

log = logging.getLogger(__name__)

LAYOUT_BITS = int(IBits.UPDATE | IBits.LAYOUT)
READDIR_BATCH = 512
READAHEAD_MAX = 8  # chunks ahead of a sequential reader
BLKSIZE = 1 << 20  # tools size their I/O buffers from st_blksize
POSIX_ACL_PREFIX = b"system.posix_acl_"
NOW_SLACK_NS = 100_000_000
DAY_NS = 86400 * 10**9  # a time this close to "now" was most likely UTIME_NOW


def _kills_setid(mode: int) -> bool:
    return kill_setid(mode) != mode


class Inode:
    __slots__ = ("ino", "attr", "layout", "size", "mtime_ns", "ctime_ns", "meta_dirty",
                 "meta_inflight", "kill_priv", "lookups", "opens", "write_error", "meta_lock",
                 "fetching", "md", "data_gen", "size_gen", "revoking", "revoke_io", "lockless",
                 "lockless_idle", "lock_waiters", "waiter_came", "kernel_pages", "attr_at")

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


class Llite(LockedCaches, pyfuse3.Operations):
    """pyfuse3 operations over a ClientNode."""

    enable_writeback_cache = False  # a multi-client fs must own size and mtime itself

    def __init__(self, node: ClientNode, *, max_dirty_mb: int = 256,
                 max_cached_mb: int = 1024) -> None:
        super().__init__()
        assert node.mdc is not None
        self.node = node
        self.mdc = node.mdc
        self.mdc.identity = self._identity
        self.cache = PageCache(max_dirty_mb << 20, max_cached_mb << 20)
        self.cache.held_elsewhere = lambda: sum(o.unstable_bytes for o in node.oscs.values())
        self.inodes: dict[int, Inode] = {}
        self.handles = OpenHandles()
        self.groups = Groups()
        self.writeback = Writeback(self.cache, node.oscs, self._layout_of, self._write_failed)
        self._nursery: trio.Nursery | None = None
        self.flush_interval = 1.0
        self._closing = 0  # MDT closes in flight
        self._closed_all = trio.Event()
        self._init_locks()
        self._mdt_instance: Any = self.mdc.imp.server.get("instance")
        self.mdc.imp.on_connected.append(self._mdt_connected)

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
            for inode in list(self.inodes.values()):
                if inode.meta_dirty and self._data_settled(inode.ino):
                    try:
                        await self._push_meta(inode)
                    except (RpcError, ImportClosed) as e:
                        log.warning("size update of inode %d failed: %s", inode.ino, e)

    async def shutdown(self) -> None:
        """Write back everything and close every MDT handle before the client goes away."""
        while self._closing:
            await self._closed_all.wait()
        await self.writeback.flush_all()
        for inode in list(self.inodes.values()):
            if inode.meta_dirty:
                await self._push_meta(inode)
        # Invalidations left running in their threads end with the kernel connection;
        # none may still be inside pyfuse3 when it closes.
        with trio.move_on_after(10):
            while self._inval_threads.borrowed_tokens:
                await trio.sleep(0.01)

    # -- open replay --
    def _mdt_connected(self, reply_body: dict[str, Any]) -> None:
        """A new MDT instance knows none of our open handles: open them again."""
        instance = reply_body.get("instance")
        restarted = self._mdt_instance is not None and instance != self._mdt_instance
        self._mdt_instance = instance
        if restarted and self._nursery is not None and self.handles.files():
            self._nursery.start_soon(self._reopen_all)

    async def _reopen_all(self) -> None:
        reopened = lost = 0
        for of in list(self.handles.files()):
            flags = of.flags & ~(os.O_TRUNC | os.O_CREAT | os.O_EXCL)
            try:
                result = await self.mdc.open(of.cred or [of.uid, 0, []], of.ino, flags,
                                             replay=True)
            except (RpcError, ImportClosed) as e:
                lost += 1
                log.warning("open replay of inode %d failed: %s", of.ino, e)
                continue
            if self.handles.get_file(of.fh) is of:
                of.handle = result["handle"]
                reopened += 1
            else:  # closed meanwhile: its close went to the old handle
                self._closing += 1
                assert self._nursery is not None
                self._nursery.start_soon(self._close_handle, result["handle"])
        self.counters["open_replays"] += reopened
        log.info("MDT restarted: %d open files re-opened, %d lost", reopened, lost)

    # -- helpers --
    def _identity(self, ino: int) -> tuple[int | None, list[int] | None]:
        """The generation and FID the MDT reported for inode ino (to name it in the
        release the MDT speaks now: 1.8 by [ino, gen], 2.0 by FID)."""
        node = self.inodes.get(ino)
        if node is None:
            return None, None
        gen, fid = node.attr.get("gen"), node.attr.get("fid")
        return (gen if type(gen) is int else None), (fid if isinstance(fid, list) else None)

    def _cred(self, ctx: pyfuse3.RequestContext) -> list[Any]:
        return [ctx.uid, ctx.gid, self.groups.of(ctx.pid)]

    def _layout_of(self, ino: int) -> Layout | None:
        inode = self.inodes.get(ino)
        return inode.layout if inode else None

    def _write_failed(self, ino: int, err: int) -> None:
        inode = self.inodes.get(ino)
        if inode is not None:
            inode.write_error = err

    def _local_meta_settled(self, inode: Inode) -> bool:
        """May the MDT's size and mtime replace ours? Not while ours are newer."""
        return not inode.meta_dirty and not inode.meta_inflight \
            and self._data_settled(inode.ino)

    def _data_settled(self, ino: int) -> bool:
        fc = self.cache.files.get(ino)
        return fc is None or (not fc.dirty and not fc.busy)

    def _update(self, attr: dict[str, Any]) -> Inode:
        """Merge attributes from the MDT into the inode table."""
        ino = attr["ino"]
        inode = self.inodes.get(ino)
        if inode is None:
            inode = self.inodes[ino] = Inode(ino, attr)
            self.adopt_md_locks(inode)
            self.watch_layout(inode)
            return inode
        inode.attr = attr
        inode.attr_at = None  # (md_call sets it when it knows)
        if attr.get("layout"):
            layout = Layout.from_dict(attr["layout"])
            if inode.layout is None or layout != inode.layout:
                inode.layout = layout
                self.watch_layout(inode)
        if self._local_meta_settled(inode):
            # (Not while our own size update is unsent or unanswered: a reply the MDT
            # made before it would carry an older size.)
            inode.size = attr["size"]
            inode.mtime_ns = attr["mtime_ns"]
            inode.ctime_ns = attr["ctime_ns"]
        return inode

    def _entry(self, inode: Inode, *, count_lookup: bool = True) -> pyfuse3.EntryAttributes:
        a = inode.attr
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode.ino
        e.generation = a["gen"]
        e.st_mode = a["mode"]
        e.st_nlink = a["nlink"]
        e.st_uid = a["uid"]
        e.st_gid = a["gid"]
        e.st_rdev = a["rdev"]
        e.st_size = inode.size
        e.st_blocks = max(a["blocks"], (inode.size + 511) // 512) if inode.layout else a["blocks"]
        e.st_blksize = BLKSIZE
        e.st_atime_ns = a["atime_ns"]
        e.st_mtime_ns = inode.mtime_ns
        e.st_ctime_ns = max(inode.ctime_ns, a["ctime_ns"])
        e.attr_timeout = LONG_TIMEOUT if self.attrs_valid(inode) else 0
        e.entry_timeout = 0  # names: the daemon answers from its lock-protected cache
        if count_lookup:
            inode.lookups += 1
        return e

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return inode

    async def _push_meta(self, inode: Inode) -> None:
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
                inode.meta_inflight -= 1
            inode.attr = attr

    def _maybe_forget(self, inode: Inode) -> None:
        if inode.lookups <= 0 and inode.opens <= 0 and inode.ino != pyfuse3.ROOT_INODE \
                and not inode.meta_dirty and self._data_settled(inode.ino):
            self.cache.drop_clean(inode.ino)
            self.inodes.pop(inode.ino, None)

    # -- namespace --
    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.cached_lookup(parent_inode, name, ctx.uid, ctx.gid,
                                  lambda: self.groups.of(ctx.pid))
        if node is None:
            cred = self._cred(ctx)
            node, _ = await self.md_call(lambda intent: self.mdc.lookup(
                cred, parent_inode, name, intent=intent), DIR_NAME_BITS)
            assert node is not None
            self.remember_name(parent_inode, name, node)
        return self._entry(node)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        for ino, nlookup in inode_list:
            inode = self.inodes.get(ino)
            if inode is not None:
                inode.lookups -= nlookup
                self._maybe_forget(inode)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        if node is not None and self.attrs_valid(node):
            self.counters["md_cache_hits"] += 1
            return self._entry(node, count_lookup=False)
        if node is None or node.layout is None:
            node = await self.md_getattr(inode)
        if node.layout is not None and not self.size_valid(node):
            await self.refresh_size(node)
        return self._entry(node, count_lookup=False)

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._inode(inode) if inode in self.inodes else await self.md_getattr(inode)
        attrs: dict[str, Any] = {}
        if fields.update_mode:
            attrs["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            attrs["uid"] = attr.st_uid
        if fields.update_gid:
            attrs["gid"] = attr.st_gid
        now = time.time_ns()
        for which in ("atime", "mtime"):
            if getattr(fields, f"update_{which}"):
                t = getattr(attr, f"st_{which}_ns")
                if abs(t - now) < NOW_SLACK_NS:
                    attrs[f"{which}_now"] = True
                else:
                    attrs[f"{which}_ns"] = max(t, 0)
        cred = self._cred(ctx)
        if fields.update_size:
            size = attr.st_size
            if size > C.MAX_FILE_SIZE:  # before anything changes anywhere
                raise pyfuse3.FUSEError(errno.EFBIG)
            # Every other client's cached data and size go first (PW over the whole file).
            async with self.data_locks(node, Mode.PW, 0, EOF), node.meta_lock:
                if node.meta_dirty or not self._data_settled(inode):
                    await self.writeback.wait_idle(inode)
                if size > node.size:
                    # Growing: the objects first. Should the MDT then refuse, nothing
                    # shows: object bytes past the file size are zeros no read returns.
                    await self._truncate_data(node, size)
                    new = await self._setattr_rpc(cred, node, {**attrs, "size": size}, fh)
                else:
                    # Shrinking: the MDT checks permission and sets the size first; only
                    # then is data dropped (never data lost to a refused truncate).
                    new = await self._setattr_rpc(cred, node, {**attrs, "size": size}, fh)
                    await self._truncate_data(node, size)
                node.meta_dirty = False
                node.size = size
                node.mtime_ns = new["mtime_ns"]
                node.ctime_ns = new["ctime_ns"]
        elif ("mtime_ns" in attrs or "mtime_now" in attrs) and node.layout is not None:
            # Explicit times must not be overwritten by a later size update, ours or
            # another client's: every writer writes back and reports first.
            async with self.data_locks(node, Mode.PW, 0, EOF):
                await self.writeback.flush_file(inode)
                await self._push_meta(node)
                new = await self._setattr_rpc(cred, node, attrs, fh)
                node.mtime_ns = new["mtime_ns"]
                node.ctime_ns = new["ctime_ns"]
        else:
            if fh is None and list(attrs) == ["mode"] and ctx.uid not in (0, node.attr["uid"]):
                # A non-owner's chmod is the kernel clearing set-id bits before a buffered
                # write: the writer's open handle is its right to (the MDT checks the rest).
                fh = self._writer_handle(inode, ctx.uid)
            new = await self._setattr_rpc(cred, node, attrs, fh)
            node.mtime_ns = new["mtime_ns"]
            node.ctime_ns = new["ctime_ns"]
        return self._entry(node, count_lookup=False)

    def _writer_handle(self, ino: int, uid: int) -> int | None:
        """A handle uid opened for writing on ino, if any."""
        for of in self.handles.files():
            if of.ino == ino and of.uid == uid and of.flags & os.O_ACCMODE != os.O_RDONLY:
                return of.fh
        return None

    async def _setattr_rpc(self, cred: list[Any], node: Inode, attrs: dict[str, Any],
                           fh: int | None) -> dict[str, Any]:
        _, body = await self.update_call(
            [(node.ino, ATTR_BITS)],
            lambda kw: self.md_call(lambda intent: self.mdc.setattr(
                cred, node.ino, attrs, via_handle=fh is not None, intent=intent,
                **kw)))
        return body["attr"]

    async def _truncate_data(self, node: Inode, size: int) -> None:
        await self.writeback.wait_idle(node.ino)
        self.cache.truncate(node.ino, size)
        layout = node.layout
        if layout is None:
            return
        # (A failed punch fails the nursery: fuse_errors reports the first one's errno.)
        async with trio.open_nursery() as n:
            for stripe, (ost_idx, oid) in enumerate(layout.objects):
                n.start_soon(self.node.oscs[ost_idx].punch, oid,
                             layout.object_size_at(stripe, size))

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.mdc.readlink(inode)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        cred = self._cred(ctx)
        node = await self._make(parent_inode, name, lambda kw, intent: self.mdc.create(
            cred, parent_inode, name, mode, rdev, intent=intent, **kw))
        return self._entry(node)

    async def _make(self, parent: int, name: bytes,
                    call: Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]],
                    extra: list[tuple[int, int]] | None = None) -> Inode:
        """A new name in `parent` (create, mkdir, symlink, link), its reply's intent lock
        kept and the name cached under it."""
        node, _ = await self.update_call(
            [(parent, UPDATE), *(extra or [])],
            lambda kw: self.md_call(lambda intent: call(kw, intent), DIR_NAME_BITS), parent)
        assert node is not None
        self.remember_name(parent, name, node)
        return node

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        cred = self._cred(ctx)
        node = await self._make(parent_inode, name, lambda kw, intent: self.mdc.mkdir(
            cred, parent_inode, name, mode, intent=intent, **kw))
        return self._entry(node)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        cred = self._cred(ctx)
        node = await self._make(parent_inode, name, lambda kw, intent: self.mdc.symlink(
            cred, parent_inode, name, target, intent=intent, **kw))
        return self._entry(node)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        cred = self._cred(ctx)
        node = await self._make(new_parent_inode, new_name, lambda kw, intent: self.mdc.link(
            cred, inode, new_parent_inode, new_name, intent=intent, **kw),
            [(inode, UPDATE)])
        return self._entry(node)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        cred = self._cred(ctx)
        result = await self.update_call(
            self._name_locks(parent_inode, name),
            lambda kw: self.mdc.unlink(cred, parent_inode, name, **kw), parent_inode)
        self.forget_name(parent_inode, name)
        self._after_remove(result.get("ino"))

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        cred = self._cred(ctx)
        await self.update_call(
            self._name_locks(parent_inode, name),
            lambda kw: self.mdc.rmdir(cred, parent_inode, name, **kw), parent_inode)
        self.forget_name(parent_inode, name)

    def _name_locks(self, parent: int, name: bytes) -> list[tuple[int, int]]:
        """What removing a name calls back: the directory's contents, the child's name."""
        wanted = [(parent, UPDATE)]
        child = self.dentries.get((parent, name))
        if child is not None:
            wanted.append((child, NAME_BITS))
        return wanted

    def _after_remove(self, ino: int | None) -> None:
        inode = self.inodes.get(ino) if ino else None
        if inode is not None:
            inode.attr = {**inode.attr, "nlink": max(inode.attr["nlink"] - 1, 0)}

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        cred = self._cred(ctx)
        result = await self.update_call(
            self._name_locks(parent_inode_old, name_old)
            + self._name_locks(parent_inode_new, name_new),
            lambda kw: self.mdc.rename(cred, parent_inode_old, name_old, parent_inode_new,
                                            name_new, flags, **kw))
        self.forget_name(parent_inode_old, name_old)
        self.forget_name(parent_inode_new, name_new)
        self._after_remove(result.get("replaced"))

    # -- directories --
    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.handles.add_dir(inode, self._cred(ctx))

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets: 1 after ".", 2 after "..", then the MDT's stable cookies + 2.
        ino, cred = self.handles.dir(fh)
        if start_id < 2:
            dots = [(b".", ino, 1), (b"..", None, 2)][start_id:]
            for name, dot_ino, next_id in dots:
                attr = (await self.mdc.getattr(dot_ino) if dot_ino is not None
                        else await self.mdc.lookup(cred, ino, b".."))["attr"]
                # Not counted as lookups: the kernel does not forget . and ..
                if not pyfuse3.readdir_reply(token, name,
                                             self._entry(self._update(attr), count_lookup=False),
                                             next_id):
                    return
            start_id = 2
        cookie = start_id - 2
        while True:
            page = await self.mdc.readdir(cred, ino, cookie, READDIR_BATCH)
            for name, attr, next_cookie in page["entries"]:
                inode = self._update(attr)
                if not pyfuse3.readdir_reply(token, name, self._entry(inode, count_lookup=False),
                                             next_cookie + 2):
                    return
                inode.lookups += 1
                cookie = next_cookie
            if page["end"]:
                return

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.handles.remove_dir(fh)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.mdc.sync()

    # -- files --
    def _file_info(self, of: OpenFile, keep_cache: bool) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=of.fh, keep_cache=keep_cache, direct_io=of.direct)

    async def _opened(self, node: Inode, result: dict[str, Any], flags: int,
                      cred: list[Any]) -> OpenFile:
        node.opens += 1
        of = self.handles.add_file(node.ino, result["handle"], flags, cred[0], cred)
        if result.get("truncated"):
            async with node.meta_lock:
                await self._truncate_data(node, 0)
                node.size = 0
                node.meta_dirty = False
        return of

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        cred = self._cred(ctx)
        node = self.inodes.get(inode)
        if flags & os.O_TRUNC and node is None:
            node = await self.md_getattr(inode)  # (its layout, to lock its objects)
        if flags & os.O_TRUNC and node is not None and node.layout is not None:
            # Other clients' cached data and size of this file go before it is truncated.
            async with self.data_locks(node, Mode.PW, 0, EOF):
                result = await self._open_rpc(cred, inode, flags)
                of = await self._opened(self._update(result["attr"]), result, flags, cred)
            return self._file_info(of, keep_cache=False)
        result = await self._open_rpc(cred, inode, flags)
        node = self._update(result["attr"])
        # The kernel's pages (and ours) are still right if a data lock covered them all
        # along: losing one invalidates them. Without locks, nothing cached is kept.
        keep = self.covered(node) and not result.get("truncated")
        if not keep:
            self.cache.drop_clean(inode)
        of = await self._opened(node, result, flags, cred)
        return self._file_info(of, keep_cache=keep)

    async def _open_rpc(self, cred: list[Any], ino: int, flags: int) -> dict[str, Any]:
        return await self.update_call(
            [(ino, UPDATE)] if flags & os.O_TRUNC else [],
            lambda kw: self.mdc.open(cred, ino, flags, **kw))

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        cred = self._cred(ctx)
        bodies: list[dict[str, Any]] = []

        async def call(kw: dict[str, Any], intent: dict[str, Any]) -> dict[str, Any]:
            body = await self.mdc.create(cred, parent_inode, name, mode, open_flags=flags,
                                         exclusive=bool(flags & os.O_EXCL), intent=intent,
                                         **kw)
            bodies.append(body)
            return body

        node = await self._make(parent_inode, name, call)
        of = await self._opened(node, bodies[0], flags, cred)
        return self._file_info(of, keep_cache=False), self._entry(node)

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
            buf = bytearray(length) if length > 0 else bytearray()
            segments = node.layout.map_extent(start, length) if length > 0 and node.layout \
                else []
            if len(segments) == 1:  # the common case: use the received buffer as the chunk
                seg = segments[0]
                data = await self.node.oscs[seg.ost_idx].read(seg.oid, seg.obj_offset, length)
                if len(data) == length and isinstance(data, bytearray):
                    buf = data
                else:
                    buf[:len(data)] = data
            elif segments:

                async def one(seg: Any) -> None:
                    data = await self.node.oscs[seg.ost_idx].read(seg.oid, seg.obj_offset,
                                                                  seg.length)
                    a = seg.file_offset - start
                    buf[a:a + len(data)] = data

                async with trio.open_nursery() as n:
                    for seg in segments:
                        n.start_soon(one, seg)
            if len(buf) > length:  # the object was longer than the file (stale tail)
                del buf[length:]
            self.cache.put(node.ino, idx, buf)
            self.cache.evict()
        finally:
            del node.fetching[idx]
            event.set()

    async def _readahead(self, node: Inode, idx: int) -> None:
        try:
            async with self.data_locks(node, Mode.PR, idx * CHUNK, (idx + 1) * CHUNK):
                if self.size_valid(node):  # (else the size may have moved: let it be)
                    await self._fetch(node, idx)
        except Exception as e:  # read-ahead is a hint; the real read reports errors
            log.debug("read-ahead of inode %d chunk %d failed: %s", node.ino, idx, e)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        of = self.handles.live_file(fh)
        node = self._inode(of.ino)
        if node.layout is None:
            return b""
        # The cache works in whole chunks: lock what it will hold.
        first = off // CHUNK * CHUNK
        last = max(-(-(off + size) // CHUNK), off // CHUNK + 1) * CHUNK
        async with self.data_locks(node, Mode.PR, first, last) as borrowed:
            if not self.size_valid(node) and not borrowed:
                await self.refresh_size(node)
            return await self._read_locked(of, node, off, size)

    async def _read_locked(self, of: OpenFile, node: Inode, off: int, size: int) -> bytes:
        if not of.atime_done:
            self._relatime(of, node)
        if not of.direct:
            node.kernel_pages = True
        end = min(off + size, node.size)
        if off >= end:
            return b""
        first, last = off // CHUNK, (end - 1) // CHUNK
        # Sequential access: keep up to READAHEAD_MAX chunks in flight ahead of the reader.
        if off == of.next_read and self._nursery is not None:
            of.ra_window = min(max(of.ra_window * 2, 2), READAHEAD_MAX)
            max_idx = (node.size - 1) // CHUNK
            for idx in range(last + 1, min(last + of.ra_window, max_idx) + 1):
                if self.cache.get(node.ino, idx) is None and idx not in node.fetching:
                    self._nursery.start_soon(self._readahead, node, idx)
        else:
            of.ra_window = 0
        of.next_read = end
        parts = []
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
            data = chunk.data[a:b]
            if len(data) < b - a:  # a hole the cache has not materialised
                data = data + bytes(b - a - len(data))
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

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        of = self.handles.live_file(fh)
        node = self._inode(of.ino)
        if node.layout is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        append = bool(of.flags & os.O_APPEND)
        if not append:
            buf = buf_within_max(off, buf)  # (EFBIG before anything is locked or cached)
        await self.writeback.wait_for_space(len(buf))
        first = off // CHUNK * CHUNK
        last = -(-(off + len(buf)) // CHUNK) * CHUNK
        # An append writes where the file ends: nobody else may move that end meanwhile.
        async with self.data_locks(node, Mode.PW, 0 if append else first,
                                   EOF if append else last) as borrowed:
            if not self.size_valid(node) and not borrowed:
                await self.refresh_size(node)
            stale_size = append and off != node.size
            if append:
                off = node.size  # where the file really ends, not where the kernel thinks
            written = await self._write_locked(of, node, off, buf_within_max(off, buf))
        if of.uid != 0 and _kills_setid(node.attr["mode"]):
            await self._kill_setid_now(of, node)
        if stale_size:
            await self._kernel_inval(node.ino, attr_only=True)  # the kernel's i_size is off
        if of.direct and node.kernel_pages:
            # Pages read through another handle of this file are older than this write.
            node.kernel_pages = False
            await self._kernel_inval(node.ino, attr_only=False)
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
            await self._setattr_rpc(cred, node, {"mode": kill_setid(mode)}, of.fh)
        except (ErrnoError, ImportClosed, LockFailed) as e:
            log.info("inode %d: clearing set-id bits failed: %s", node.ino, e)
            return
        await self._kernel_inval(node.ino, attr_only=True)

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

    async def _flush_inode(self, node: Inode) -> None:
        await self.writeback.flush_file(node.ino)
        await self._push_meta(node)
        if node.write_error:
            err, node.write_error = node.write_error, 0
            raise pyfuse3.FUSEError(err)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        of = self.handles.live_file(fh)
        node = self._inode(of.ino)
        if node.meta_dirty or not self._data_settled(node.ino):
            await self._flush_inode(node)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        of = self.handles.live_file(fh)
        node = self._inode(of.ino)
        await self._flush_inode(node)
        async with trio.open_nursery() as n:
            if node.layout is not None:
                for ost_idx in {o for o, _ in node.layout.objects}:
                    n.start_soon(self.node.oscs[ost_idx].sync)
            n.start_soon(self.mdc.sync)

    @fuse_errors
    async def release(self, fh: int) -> None:
        of = self.handles.remove_file(fh)
        node = self.inodes.get(of.ino)
        try:
            if node is not None and (node.meta_dirty or not self._data_settled(node.ino)):
                await self._flush_inode(node)
        finally:
            # Nobody waits for the MDT close (release has no caller to report to), so it
            # goes in the background; shutdown waits for every one of them.
            self._closing += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._close_handle, of.handle)
            if node is not None:
                node.opens -= 1
                self._maybe_forget(node)

    async def _close_handle(self, handle: int) -> None:
        try:
            await self.mdc.close(handle)
        except (RpcError, ImportClosed) as e:
            log.warning("close of MDT handle %d failed: %s", handle, e)
        finally:
            self._closing -= 1
            if not self._closing:
                self._closed_all.set()
                self._closed_all = trio.Event()

    # -- xattrs, statfs, access --
    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name.startswith(POSIX_ACL_PREFIX):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        try:
            return await self.mdc.getxattr(self._cred(ctx), inode, name)
        except RpcError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if name.startswith(POSIX_ACL_PREFIX):
            # No POSIX ACLs: refusing makes cp/tar fall back to chmod, as on a filesystem
            # mounted without ACL support.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        cred = self._cred(ctx)
        result = await self.update_call(
            [(inode, LAYOUT_BITS)],
            lambda kw: self.mdc.setxattr(cred, inode, name, value, 0, **kw))
        if "attr" in result:
            self._update(result["attr"])

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self.mdc.listxattr(self._cred(ctx), inode)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        try:
            cred = self._cred(ctx)
            await self.update_call([(inode, UPDATE)], lambda kw: self.mdc.removexattr(
                cred, inode, name, **kw))
        except RpcError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        try:
            await self.mdc.imp.call(C.MDS_ACCESS, {"cred": self._cred(ctx), "ino": inode,
                                              "mask": mode})
        except RpcError as e:
            if e.errno == errno.EACCES:
                return False
            raise
        return True

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        results: dict[int, dict[str, Any]] = {}
        mdt: dict[str, Any] = {}

        async def ost(idx: int) -> None:
            results[idx] = await self.node.oscs[idx].statfs()

        async def md() -> None:
            mdt.update(await self.mdc.statfs())

        async with trio.open_nursery() as n:
            n.start_soon(md)
            for idx in self.node.oscs:
                n.start_soon(ost, idx)
        frsize = 4096
        st = pyfuse3.StatvfsData()
        st.f_bsize = BLKSIZE
        st.f_frsize = frsize
        st.f_blocks = sum(r["blocks"] * r["bsize"] for r in results.values()) // frsize
        st.f_bfree = sum(r["bfree"] * r["bsize"] for r in results.values()) // frsize
        st.f_bavail = sum(r["bavail"] * r["bsize"] for r in results.values()) // frsize
        st.f_files = mdt.get("files", 0) + mdt.get("ffree", 0)
        st.f_ffree = mdt.get("ffree", 0)
        st.f_favail = st.f_ffree
        st.f_namemax = mdt.get("namemax", 255)
        return st
