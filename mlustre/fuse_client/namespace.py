"""namespace.py - names, directories, attributes and extended attributes.

Lookups are answered from the name cache when its MDT locks allow (md_cache.py),
attributes from the inode table when both its MDT and data locks do; everything else
asks the MDT. Creating and removing names are MDT updates with early lock cancel.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from ..protocol import constants as C
from ..protocol.errors import RpcError
from ..protocol.ldlm import IBits, Mode
from ..protocol.setattr_rules import SetattrDenied
from . import xattr_cache
from .data_locks import EOF, DataLocks
from .file_io import FileIo, known_inode
from .inodes import Groups, Inode, InodeTable
from .md_cache import DIR_NAME_BITS, LONG_TIMEOUT, UPDATE, MdCache, may_search
from .mdc import Mdc
from .open_handles import OpenHandles
from .osc import Osc
from .writeback import Writeback

LAYOUT_BITS = int(IBits.UPDATE | IBits.LAYOUT)
READDIR_BATCH = 512
NAME_MAX = 255
BIG_DIRS_MAX = 4096
BLKSIZE = 1 << 20  # tools size their I/O buffers from st_blksize
POSIX_ACL_PREFIX = b"system.posix_acl_"
NOW_SLACK_NS = 100_000_000


class Namespace:
    """The namespace and attribute operations of the mount."""

    def __init__(self, inodes: InodeTable, md: MdCache, data: DataLocks, io: FileIo,
                 writeback: Writeback, mdc: Mdc, oscs: dict[int, Osc], handles: OpenHandles,
                 groups: Groups, counters: dict[str, int]) -> None:
        self.inodes = inodes
        self.md = md
        self.data = data
        self.io = io
        self.writeback = writeback
        self.mdc = mdc
        self.oscs = oscs
        self.handles = handles
        self.groups = groups
        self.counters = counters
        self._listing: dict[int, trio.Event] = {}  # statahead in progress per directory
        self._big_dirs: set[int] = set()  # more than a page: no statahead on misses

    # -- helpers --
    def cred(self, ctx: pyfuse3.RequestContext) -> list[Any]:
        return [ctx.uid, ctx.gid, self.groups.of(ctx.pid)]

    def entry(self, inode: Inode, *, count_lookup: bool = True,
              name: tuple[int, bytes] | None = None) -> pyfuse3.EntryAttributes:
        """The kernel's view of inode; `name` (parent, name): the name it is reached by,
        which the kernel keeps while we hold it under a lock (dropped on its callback)."""
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
        e.attr_timeout = LONG_TIMEOUT if self.data.attrs_valid(inode) else 0
        e.entry_timeout = LONG_TIMEOUT if name is not None and self.md.name_held(
            name[0], name[1], inode.ino) else 0
        if count_lookup:
            inode.lookups += 1
        return e

    # -- names --
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.md.cached_lookup(parent_inode, name, ctx.uid, ctx.gid,
                                     lambda: self.groups.of(ctx.pid))
        if node is None:
            node = await self._listed(parent_inode, name, ctx)
        if node is None:
            cred = self.cred(ctx)
            node, _ = await self.md.md_call(lambda intent: self.mdc.lookup(
                cred, parent_inode, name, intent=intent), DIR_NAME_BITS)
            assert node is not None
            self.md.remember_name(parent_inode, name, node)
        return self.entry(node, name=(parent_inode, name))

    async def _listed(self, parent: int, name: bytes,
                      ctx: pyfuse3.RequestContext) -> Inode | None:
        """A lookup the directory's complete listing answers (dir_listing.py): ENOENT for
        a name it lacks, the child if its name came with a lock. The first lookup that
        misses in a directory lists it (statahead: one request for up to a page of
        names, attributes and locks). None: ask the MDT."""
        if len(name) > NAME_MAX:
            return None  # (ENAMETOOLONG is the MDT's to say)
        names = self.md.listings.names(parent)
        if names is None and parent not in self._big_dirs:
            await self._statahead(parent, ctx)
            names = self.md.listings.names(parent)
        pnode = self.inodes.get(parent)
        if names is None or pnode is None or not may_search(
                pnode.attr, ctx.uid, ctx.gid, self.groups.of(ctx.pid) if ctx.uid else []):
            return None  # (the MDT tells who may not search it)
        if name not in names:
            self.counters["md_negative_hits"] += 1
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.md.cached_lookup(parent, name, ctx.uid, ctx.gid,
                                     lambda: self.groups.of(ctx.pid))

    async def _statahead(self, parent: int, ctx: pyfuse3.RequestContext) -> None:
        running = self._listing.get(parent)
        if running is not None:
            await running.wait()
            return
        done = self._listing[parent] = trio.Event()
        try:
            _, end = await self.md.readdir_page(self.cred(ctx), parent, 0, READDIR_BATCH)
            if not end:
                if len(self._big_dirs) >= BIG_DIRS_MAX:
                    self._big_dirs.clear()
                self._big_dirs.add(parent)
            self.counters["statahead_pages"] += 1
        except RpcError:
            pass  # (no read permission, or gone: the lookup asks the MDT)
        finally:
            del self._listing[parent]
            done.set()

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, nlookup in inode_list:
            inode = self.inodes.get(ino)
            if inode is not None:
                inode.lookups -= nlookup
                self.inodes.maybe_forget(inode)

    # -- attributes --
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        if node is not None and self.data.attrs_valid(node):
            self.counters["md_cache_hits"] += 1
            return self.entry(node, count_lookup=False)
        if node is None or node.layout is None:
            node = await self.md.md_getattr(inode)
        if node.layout is not None and not self.data.size_known(node):
            await self.data.refresh_size(node)
        return self.entry(node, count_lookup=False)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = known_inode(self.inodes, inode) if inode in self.inodes \
            else await self.md.md_getattr(inode)
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
        cred = self.cred(ctx)
        if node.wb is not None and not fields.update_size and attrs:
            # A file we created and hold the write-back lock of (md_writeback.py).
            if node.wb.pending and node.wb.cred != cred:
                await self.md.wb.flush(node)
            try:
                if self.md.wb.try_setattr(node, attrs, cred):
                    return self.entry(node, count_lookup=False)
            except SetattrDenied as e:
                raise pyfuse3.FUSEError(e.errno) from None
        if fields.update_size:
            size = attr.st_size
            if size > C.MAX_FILE_SIZE:  # before anything changes anywhere
                raise pyfuse3.FUSEError(errno.EFBIG)
            # Every other client's cached data and size go first (PW over the whole file).
            async with self.data.data_locks(node, Mode.PW, 0, EOF), node.meta_lock:
                if node.meta_dirty or not self.inodes.data_settled(inode):
                    await self.writeback.wait_idle(inode)
                if size > node.size:
                    # Growing: the objects first. Should the MDT then refuse, nothing
                    # shows: object bytes past the file size are zeros no read returns.
                    await self.io.truncate_data(node, size)
                    new = await self.md.setattr_rpc(cred, node, {**attrs, "size": size}, fh)
                else:
                    # Shrinking: the MDT checks permission and sets the size first; only
                    # then is data dropped (never data lost to a refused truncate).
                    new = await self.md.setattr_rpc(cred, node, {**attrs, "size": size}, fh)
                    await self.io.truncate_data(node, size)
                node.meta_dirty = False
                node.size = size
                node.mtime_ns = new["mtime_ns"]
                node.ctime_ns = new["ctime_ns"]
        elif ("mtime_ns" in attrs or "mtime_now" in attrs) and node.layout is not None:
            # Explicit times must not be overwritten by a later size update, ours or
            # another client's: the other writers write back and report as our PW lock
            # takes theirs; ours rides on the setattr (write_size), after which our data
            # still dirty carries no mtime of its own (no write-back round trip here: tar
            # and cp -p set the times of every file they have just written).
            async with self.data.data_locks(node, Mode.PW, 0, EOF):
                new = await self.md.setattr_with_size(cred, node, attrs, fh)
                node.mtime_ns = new["mtime_ns"]
                node.ctime_ns = new["ctime_ns"]
                # (With our data still dirty, the reply's update kept our older mtime
                # in the attributes: the explicit one replaces it there too.)
                node.attr = {**node.attr, "mtime_ns": new["mtime_ns"]}
        else:
            if fh is None and list(attrs) == ["mode"] and ctx.uid not in (0, node.attr["uid"]):
                # A non-owner's chmod is the kernel clearing set-id bits before a buffered
                # write: the writer's open handle is its right to (the MDT checks the rest).
                fh = self._writer_handle(inode, ctx.uid)
            new = await self.md.setattr_rpc(cred, node, attrs, fh)
            if self.inodes.local_meta_settled(node):
                node.mtime_ns = new["mtime_ns"]
            # else our written data's mtime is newer than the MDT's and stays (a chmod
            # after a write whose size update has not reached the MDT yet).
            node.ctime_ns = max(node.ctime_ns, new["ctime_ns"])
        return self.entry(node, count_lookup=False)

    def _writer_handle(self, ino: int, uid: int) -> int | None:
        """A handle uid opened for writing on ino, if any."""
        for of in self.handles.files():
            if of.ino == ino and of.uid == uid and of.flags & os.O_ACCMODE != os.O_RDONLY:
                return of.fh
        return None

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.mdc.readlink(inode)

    # -- new names --
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        cred = self.cred(ctx)
        node = await self.make(parent_inode, name, lambda kw, intent: self.mdc.create(
            cred, parent_inode, name, mode, rdev, intent=intent, **kw))
        return self.entry(node, name=(parent_inode, name))

    async def make(self, parent: int, name: bytes,
                   call: Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]],
                   extra: list[tuple[int, int]] | None = None) -> Inode:
        """A new name in `parent` (create, mkdir, symlink, link), its reply's intent lock
        kept and the name cached under it."""
        node, _ = await self.md.update_call(
            [(parent, UPDATE), *(extra or [])],
            lambda kw: self.md.md_call(lambda intent: call(kw, intent), DIR_NAME_BITS),
            parent)
        assert node is not None
        self.md.remember_name(parent, name, node)
        self.md.listings.add(parent, name, node.ino)
        return node

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        cred = self.cred(ctx)
        node = await self.make(parent_inode, name, lambda kw, intent: self.mdc.mkdir(
            cred, parent_inode, name, mode, intent=intent, **kw))
        return self.entry(node, name=(parent_inode, name))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        cred = self.cred(ctx)
        node = await self.make(parent_inode, name, lambda kw, intent: self.mdc.symlink(
            cred, parent_inode, name, target, intent=intent, **kw))
        return self.entry(node, name=(parent_inode, name))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        cred = self.cred(ctx)
        node = await self.make(new_parent_inode, new_name, lambda kw, intent: self.mdc.link(
            cred, inode, new_parent_inode, new_name, intent=intent, **kw),
            [(inode, UPDATE)])
        return self.entry(node, name=(new_parent_inode, new_name))

    # -- removing and renaming names --
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        cred = self.cred(ctx)
        result = await self.md.update_call(
            self.md.name_locks(parent_inode, name),
            lambda kw: self.mdc.unlink(cred, parent_inode, name, **kw), parent_inode,
            removes=(parent_inode, name))
        self.md.forget_name(parent_inode, name)
        self.md.listings.remove(parent_inode, name)
        self._after_remove(result.get("ino"))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        cred = self.cred(ctx)
        await self.md.update_call(
            self.md.name_locks(parent_inode, name),
            lambda kw: self.mdc.rmdir(cred, parent_inode, name, **kw), parent_inode,
            removes=(parent_inode, name))
        self.md.forget_name(parent_inode, name)
        self.md.listings.remove(parent_inode, name)

    def _after_remove(self, ino: int | None) -> None:
        inode = self.inodes.get(ino) if ino else None
        if inode is not None:
            inode.attr = {**inode.attr, "nlink": max(inode.attr["nlink"] - 1, 0)}

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        cred = self.cred(ctx)
        result = await self.md.update_call(
            self.md.name_locks(parent_inode_old, name_old)
            + self.md.name_locks(parent_inode_new, name_new),
            lambda kw: self.mdc.rename(cred, parent_inode_old, name_old, parent_inode_new,
                                       name_new, flags, **kw))
        self.md.forget_name(parent_inode_old, name_old)
        self.md.forget_name(parent_inode_new, name_new)
        # The kernel moves its entry to the new name, which no lock of ours covers (the
        # rename took the child's name lock back): it must ask again next time.
        self.md.kernel.forget_entry_later(parent_inode_new, name_new)
        if flags & C.RENAME_EXCHANGE:
            self.md.kernel.forget_entry_later(parent_inode_old, name_old)
        self._after_remove(result.get("replaced"))

    # -- directories --
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.handles.add_dir(inode, self.cred(ctx))

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets: 1 after ".", 2 after "..", then the MDT's stable cookies + 2.
        ino, cred = self.handles.dir(fh)
        if start_id < 2:
            dots = [(b".", ino, 1), (b"..", self._parent_held(ino), 2)][start_id:]
            for name, dot_ino, next_id in dots:
                if dot_ino is not None:
                    # The kernel takes only the number and type of . and .. from a
                    # readdirplus (fs/fuse/readdir.c links no dentry for them): what we
                    # know answers, with no request.
                    e = pyfuse3.EntryAttributes()
                    e.st_ino, e.st_mode = dot_ino, stat.S_IFDIR | 0o755
                else:  # a parent we hold no name of: ask
                    e = self.entry(self.inodes.update(
                        (await self.mdc.lookup(cred, ino, b".."))["attr"]), count_lookup=False)
                # Not counted as lookups: the kernel does not forget . and ..
                if not pyfuse3.readdir_reply(token, name, e, next_id):
                    return
            start_id = 2
        if self.handles.dir_ends_at(fh, start_id):
            return  # (the kernel's call after the last entry: no page to ask for)
        cookie = start_id - 2
        while True:
            entries, end = await self.md.readdir_page(cred, ino, cookie, READDIR_BATCH)
            for name, inode, next_cookie in entries:
                if not pyfuse3.readdir_reply(token, name, self.entry(
                        inode, count_lookup=False, name=(ino, name)), next_cookie + 2):
                    return
                inode.lookups += 1
                cookie = next_cookie
            if end:
                self.handles.dir_ended(fh, cookie + 2)
                return

    def _parent_held(self, ino: int) -> int | None:
        """The directory's parent, if we hold a name of it under a lock (a directory has
        one name; another client's rename takes our lock on it back)."""
        if ino == pyfuse3.ROOT_INODE:
            return ino
        for parent, name in self.md.names_of.get(ino, ()):
            if self.md.name_held(parent, name, ino):
                return parent
        return None

    async def releasedir(self, fh: int) -> None:
        self.handles.remove_dir(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.mdc.sync()

    # -- xattrs, statfs, access --
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name.startswith(POSIX_ACL_PREFIX):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        node = self.inodes.get(inode)
        # (Not "user." names: reading them needs read permission, the MDT's to check;
        # nor "lustre." names: the MDT makes them from the layout, they are no xattrs.)
        cacheable = node is not None and not name.startswith((b"user.", b"lustre."))
        if cacheable:
            assert node is not None
            value = xattr_cache.known(node.xattrs, node.md, name)
            if value is not xattr_cache.UNKNOWN:
                self.counters["xattr_cache_hits"] += 1
                if value is None:
                    raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
                assert isinstance(value, bytes)
                if name.startswith(b"security."):  # (values: only what anyone may read)
                    return value
        lock = self.md.update_lock(node) if cacheable and node is not None else None
        await self.md.wb.settle(inode)  # (the MDT checks read permission on our mode)
        try:
            got = await self.mdc.getxattr(self.cred(ctx), inode, name)
        except RpcError as e:
            if e.errno == errno.ENODATA:
                if lock is not None and node is not None:
                    node.xattrs = xattr_cache.learned(node.xattrs, lock, name, None)
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise
        if lock is not None and node is not None:
            node.xattrs = xattr_cache.learned(node.xattrs, lock, name, got)
        return got

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if name.startswith(POSIX_ACL_PREFIX):
            # No POSIX ACLs: refusing makes cp/tar fall back to chmod, as on a filesystem
            # mounted without ACL support.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        cred = self.cred(ctx)
        result = await self.md.update_call(
            [(inode, LAYOUT_BITS)],
            lambda kw: self.mdc.setxattr(cred, inode, name, value, 0, **kw))
        if "attr" in result:
            self.inodes.update(result["attr"])

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self.inodes.get(inode)
        if node is not None and xattr_cache.has_none(node.xattrs, node.md):
            # (cp -a and tar --xattrs list every file's: most have none, as we know.)
            self.counters["xattr_cache_hits"] += 1
            return []
        await self.md.wb.settle(inode)
        return await self.mdc.listxattr(self.cred(ctx), inode)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        try:
            cred = self.cred(ctx)
            await self.md.update_call([(inode, UPDATE)], lambda kw: self.mdc.removexattr(
                cred, inode, name, **kw))
        except RpcError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        await self.md.wb.settle(inode)  # (the MDT checks what we changed)
        try:
            await self.mdc.imp.call(C.MDS_ACCESS, {"cred": self.cred(ctx), "ino": inode,
                                                   "mask": mode})
        except RpcError as e:
            if e.errno == errno.EACCES:
                return False
            raise
        return True

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        results: dict[int, dict[str, Any]] = {}
        mdt: dict[str, Any] = {}

        async def ost(idx: int) -> None:
            results[idx] = await self.oscs[idx].statfs()

        async def md() -> None:
            mdt.update(await self.mdc.statfs())

        async with trio.open_nursery() as n:
            n.start_soon(md)
            for idx in self.oscs:
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
