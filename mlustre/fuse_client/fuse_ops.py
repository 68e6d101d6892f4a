"""fuse_ops.py - the POSIX face of the client: pyfuse3 Operations.

Each handler only turns failures into FUSEError and hands the request to the component
that does it (namespace.py, file_open.py, file_io.py): any exception other than
FUSEError would end pyfuse3's main loop and leave a dead mount. The same wrapper
(boundary.fuse_errors) counts each request in op_stats (llite.*.stats).
"""

from __future__ import annotations

import logging

import pyfuse3

from .boundary import OpStats, fuse_errors
from .file_io import FileIo
from .file_open import FileOpen
from .namespace import Namespace

log = logging.getLogger(__name__)

class FuseOps(pyfuse3.Operations):
    """pyfuse3 operations over the mount's components (node.py builds them)."""

    enable_writeback_cache = False  # a multi-client fs must own size and mtime itself

    def __init__(self, names: Namespace, opener: FileOpen, io: FileIo) -> None:
        super().__init__()
        self.names = names
        self.opener = opener
        self.io = io
        self.op_stats = OpStats()  # every request, by type: llite.*.stats

    # -- namespace --
    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.names.lookup(parent_inode, name, ctx)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        # (pyfuse3 declares forget async; it is called without awaiting its result.)
        self.op_stats.count("forget")
        self.names.forget(inode_list)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.names.getattr(inode, ctx)

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.names.setattr(inode, attr, fields, fh, ctx)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.names.readlink(inode, ctx)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.names.mknod(parent_inode, name, mode, rdev, ctx)

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.names.mkdir(parent_inode, name, mode, ctx)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.names.symlink(parent_inode, name, target, ctx)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.names.link(inode, new_parent_inode, new_name, ctx)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.names.unlink(parent_inode, name, ctx)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.names.rmdir(parent_inode, name, ctx)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        await self.names.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags,
                                ctx)

    # -- directories --
    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.names.opendir(inode, ctx)

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        await self.names.readdir(fh, start_id, token)

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        await self.names.releasedir(fh)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.names.fsyncdir(fh, datasync)

    # -- files --
    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return await self.opener.open(inode, flags, ctx)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        return await self.opener.create(parent_inode, name, mode, flags, ctx)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.io.read(fh, off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.io.write(fh, off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        await self.io.flush(fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.io.fsync(fh, datasync)

    @fuse_errors
    async def release(self, fh: int) -> None:
        await self.io.release(fh)

    # -- xattrs, statfs, access --
    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.names.getxattr(inode, name, ctx)

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        await self.names.setxattr(inode, name, value, ctx)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self.names.listxattr(inode, ctx)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.names.removexattr(inode, name, ctx)

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return await self.names.access(inode, mode, ctx)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return await self.names.statfs(ctx)
