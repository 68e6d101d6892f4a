"""file_open.py - opening and creating files, and opening them again on a new MDT.

An open is an MDT request (it hands back a handle the close gives back). What the
kernel may keep of a file's pages at open depends on the data locks. A restarted MDT
knows none of our handles: every open file is opened again (open replay).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pyfuse3
import trio

from ..protocol.errors import RpcError
from ..protocol.ldlm import Mode
from .data_locks import EOF, DataLocks
from .file_io import FileIo
from .imports import ImportClosed
from .inodes import Inode, InodeTable
from .md_cache import UPDATE, MdCache
from .mdc import Mdc
from .namespace import Namespace
from .open_cache import cacheable_open, cred_key
from .open_handles import OpenFile, OpenHandles
from .page_cache import PageCache
from .xattr_cache import none_at_all

log = logging.getLogger(__name__)


class FileOpen:
    """open/create, and open replay after an MDT restart."""

    def __init__(self, inodes: InodeTable, md: MdCache, data: DataLocks, io: FileIo,
                 names: Namespace, cache: PageCache, mdc: Mdc, handles: OpenHandles,
                 counters: dict[str, int]) -> None:
        self.inodes = inodes
        self.md = md
        self.data = data
        self.io = io
        self.names = names
        self.cache = cache
        self.mdc = mdc
        self.handles = handles
        self.counters = counters
        self._nursery: trio.Nursery | None = None
        self._mdt_instance: Any = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def _file_info(self, of: OpenFile, keep_cache: bool) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=of.fh, keep_cache=keep_cache, direct_io=of.direct)

    async def _opened(self, node: Inode, result: dict[str, Any], flags: int,
                      cred: list[Any]) -> OpenFile:
        node.opens += 1
        of = self.handles.add_file(node.ino, result["handle"], flags, cred[0], cred)
        if result.get("truncated"):
            async with node.meta_lock:
                await self.io.truncate_data(node, 0)
                node.size = 0
                node.meta_dirty = False
        return of

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        cred = self.names.cred(ctx)
        node = self.inodes.get(inode)
        if flags & os.O_TRUNC and node is None:
            node = await self.md.md_getattr(inode)  # (its layout, to lock its objects)
        if flags & os.O_TRUNC and node is not None and node.layout is not None:
            # Other clients' cached data and size of this file go before it is truncated.
            async with self.data.data_locks(node, Mode.PW, 0, EOF):
                result = await self._open_rpc(cred, inode, flags)
                of = await self._opened(self.inodes.update(result["attr"]), result, flags,
                                        cred)
            return self._file_info(of, keep_cache=False)
        if node is not None and cacheable_open(flags):
            handle = self.io.open_cache.take(inode, cred_key(cred))
            if handle is not None:
                # Kept since our last close of it, under a lock nothing changed
                # (open_cache.py): no request.
                self.counters["open_cache_hits"] += 1
                keep = self.data.covered(node)
                if not keep:
                    self.cache.drop_clean(inode)
                of = await self._opened(node, {"handle": handle}, flags, cred)
                return self._file_info(of, keep_cache=keep)
        sent = trio.current_time()
        result = await self._open_rpc(cred, inode, flags)
        node = self.inodes.update(result["attr"], sent)
        # The kernel's pages (and ours) are still right if a data lock covered them all
        # along: losing one invalidates them. Without locks, nothing cached is kept.
        keep = self.data.covered(node) and not result.get("truncated")
        if not keep:
            self.cache.drop_clean(inode)
        of = await self._opened(node, result, flags, cred)
        return self._file_info(of, keep_cache=keep)

    async def _open_rpc(self, cred: list[Any], ino: int, flags: int) -> dict[str, Any]:
        await self.md.wb.settle(ino)  # (the MDT checks permission on what we changed)
        node = self.inodes.get(ino)
        if cacheable_open(flags) and (node is None or self.md.open_lock(node) is None):
            # With the file's lock (an intent), under which its close will keep it.
            _, body = await self.md.md_call(
                lambda intent: self.mdc.open(cred, ino, flags, intent=intent))
            return body
        return await self.md.update_call(
            [(ino, UPDATE)] if flags & os.O_TRUNC else [],
            lambda kw: self.mdc.open(cred, ino, flags, **kw))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        cred = self.names.cred(ctx)
        bodies: list[dict[str, Any]] = []
        wb_lock, wb_intent = self.md.wb.intent()  # (md_writeback.py)

        async def call(kw: dict[str, Any], intent: dict[str, Any]) -> dict[str, Any]:
            body = await self.mdc.create(cred, parent_inode, name, mode, open_flags=flags,
                                         exclusive=bool(flags & os.O_EXCL), intent=intent,
                                         **({"wb_lock": wb_intent} if wb_intent else {}),
                                         **kw)
            bodies.append(body)
            return body

        node = None
        try:
            node = await self.names.make(parent_inode, name, call)
        finally:
            self.md.wb.granted(wb_lock, bodies[0] if bodies else None, node, cred)
        lock = self.md.update_lock(node)
        if bodies[0].get("created") and lock is not None:
            node.xattrs = none_at_all(lock)  # (a new file has none)
        of = await self._opened(node, bodies[0], flags, cred)
        return self._file_info(of, keep_cache=False), self.names.entry(
            node, name=(parent_inode, name))

    # -- open replay --
    def mdt_connected(self, reply_body: dict[str, Any]) -> None:
        """A new MDT instance knows none of our open handles: open them again."""
        instance = reply_body.get("instance")
        restarted = self._mdt_instance is not None and instance != self._mdt_instance
        self._mdt_instance = instance
        if restarted:
            self.io.forget_kept_opens()  # (the new instance knows none of them)
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
                self.io.close_later(result["handle"])
        self.counters["open_replays"] += reopened
        log.info("MDT restarted: %d open files re-opened, %d lost", reopened, lost)
