"""bench/passthrough.py - a minimal pyfuse3 passthrough filesystem: the "Python-FUSE
floor" the I/O benchmark compares mlustre with (mlustre/bench/targets.py).

    python -m mlustre.bench.passthrough SRC MNT [--debug]

Mounts SRC at MNT in the foreground until SIGTERM/SIGINT (or an external
unmount). Same mount options as the mlustre client: allow_other,
default_permissions, no writeback cache, entry/attr timeouts of 1 s.

Design: one trio task per request (pyfuse3 default), every os call made
synchronously on the event loop thread (this is a floor, not a tuned server).
FUSE inode numbers are our own (ROOT_INODE for SRC, then 2, 3, ...), mapped
from the source (st_dev, st_ino) and to one path each (no hard links are
created through this filesystem). Open files use fds and pread/pwrite.
Every handler converts any exception into FUSEError: an uncaught exception
would end pyfuse3.main() and kill the mount.
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import signal
import stat
import sys

import pyfuse3
import trio

log = logging.getLogger("passthrough")

TIMEOUT = 1.0  # entry and attribute timeout, seconds


def fuse_errors(func):
    """Turn every exception of a handler into FUSEError (EIO if not an OSError)."""

    @functools.wraps(func)
    async def wrapper(self, *args, **kwargs):
        try:
            return await func(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s%r failed", func.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Inode:
    __slots__ = ("path", "key", "nlookup", "fds")

    def __init__(self, path: bytes, key: tuple[int, int] | None):
        self.path = path
        self.key = key
        self.nlookup = 0
        self.fds: set[int] = set()


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(self, source: str):
        super().__init__()
        src = os.fsencode(os.path.abspath(source))
        st = os.lstat(src)
        root = Inode(src, (st.st_dev, st.st_ino))
        root.nlookup = 1  # never forgotten
        self.inodes: dict[int, Inode] = {pyfuse3.ROOT_INODE: root}
        self.by_key: dict[tuple[int, int], int] = {root.key: pyfuse3.ROOT_INODE}
        self.next_inode = pyfuse3.ROOT_INODE + 1
        self.fd_inode: dict[int, int] = {}
        self.dirs: dict[int, tuple[bytes, list[bytes]]] = {}  # handle -> (path, names)
        self.next_dir = 1

    # -- inode table -------------------------------------------------------

    def _inode(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _path(self, parent: int, name: bytes) -> bytes:
        if b"/" in name or name in (b"", b".", b".."):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.path.join(self._inode(parent).path, name)

    def _register(self, path: bytes, st: os.stat_result) -> int:
        """FUSE inode for the source object (st_dev, st_ino) now at *path*."""
        key = (st.st_dev, st.st_ino)
        ino = self.by_key.get(key)
        if ino is not None:
            self.inodes[ino].path = path
            return ino
        ino = self.next_inode
        self.next_inode += 1
        self.inodes[ino] = Inode(path, key)
        self.by_key[key] = ino
        return ino

    def _drop_key(self, ino: int) -> None:
        node = self.inodes.get(ino)
        if node is not None and node.key is not None:
            if self.by_key.get(node.key) == ino:
                del self.by_key[node.key]
            node.key = None

    def _maybe_free(self, ino: int) -> None:
        node = self.inodes.get(ino)
        if ino == pyfuse3.ROOT_INODE or node is None:
            return
        if node.nlookup <= 0 and not node.fds:
            self._drop_key(ino)
            del self.inodes[ino]

    def _entry(self, ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _stat(self, ino: int) -> os.stat_result:
        node = self._inode(ino)
        fd = next(iter(node.fds), None)  # works even after unlink
        return os.fstat(fd) if fd is not None else os.lstat(node.path)

    def _lookup_path(self, path: bytes) -> pyfuse3.EntryAttributes:
        st = os.lstat(path)
        ino = self._register(path, st)
        self.inodes[ino].nlookup += 1
        return self._entry(ino, st)

    def _chown_to_caller(self, path: bytes, fd: int | None, ctx) -> None:
        if os.geteuid() != 0:
            return
        if fd is not None:
            os.fchown(fd, ctx.uid, ctx.gid)
        else:
            os.lchown(path, ctx.uid, ctx.gid)

    # -- metadata ----------------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        node = self._inode(parent_inode)
        if name == b".":
            path = node.path
        elif name == b"..":
            if parent_inode == pyfuse3.ROOT_INODE:
                path = node.path
            else:
                path = os.path.dirname(node.path)
        else:
            path = self._path(parent_inode, name)
        return self._lookup_path(path)

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        return self._entry(inode, self._stat(inode))

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._inode(inode)
        fd = fh if fh is not None and fh in self.fd_inode else None
        if fd is None:
            fd = next(iter(node.fds), None)
        target = fd if fd is not None else node.path
        if fields.update_size:
            if fd is not None:
                os.ftruncate(fd, attr.st_size)
            else:
                os.truncate(node.path, attr.st_size)
        if fields.update_mode:
            if fd is not None:
                os.fchmod(fd, stat.S_IMODE(attr.st_mode))
            elif not stat.S_ISLNK(os.lstat(node.path).st_mode):
                os.chmod(node.path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            if fd is not None:
                os.fchown(fd, uid, gid)
            else:
                os.lchown(node.path, uid, gid)
        if fields.update_atime or fields.update_mtime:
            cur = self._stat(inode)
            atime = attr.st_atime_ns if fields.update_atime else cur.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else cur.st_mtime_ns
            if fd is not None:
                os.utime(target, ns=(atime, mtime))
            else:
                os.utime(target, ns=(atime, mtime), follow_symlinks=False)
        return self._entry(inode, self._stat(inode))

    @fuse_errors
    async def statfs(self, ctx):
        sv = os.statvfs(self.inodes[pyfuse3.ROOT_INODE].path)
        out = pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                  "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, f, getattr(sv, f))
        return out

    async def forget(self, inode_list):
        # Must never raise.
        for ino, nlookup in inode_list:
            try:
                node = self.inodes.get(ino)
                if node is None:
                    continue
                node.nlookup -= nlookup
                self._maybe_free(ino)
            except Exception:
                log.exception("forget(%d, %d)", ino, nlookup)

    # -- namespace ---------------------------------------------------------

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._path(parent_inode, name)
        os.mkdir(path, mode & ~ctx.umask)
        try:
            self._chown_to_caller(path, None, ctx)
        except OSError:
            os.rmdir(path)
            raise
        return self._lookup_path(path)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        path = self._path(parent_inode, name)
        st = os.lstat(path)
        os.rmdir(path)
        ino = self.by_key.get((st.st_dev, st.st_ino))
        if ino is not None:
            self._drop_key(ino)

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        path = self._path(parent_inode, name)
        st = os.lstat(path)
        os.unlink(path)
        ino = self.by_key.get((st.st_dev, st.st_ino))
        if ino is not None and st.st_nlink <= 1:
            # The source may reuse the inode number: forget the mapping now,
            # keep the table entry until the kernel forgets it.
            self._drop_key(ino)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old = self._path(parent_inode_old, name_old)
        new = self._path(parent_inode_new, name_new)
        try:
            replaced = os.lstat(new)
        except FileNotFoundError:
            replaced = None
        os.rename(old, new)
        if replaced is not None:
            ino = self.by_key.get((replaced.st_dev, replaced.st_ino))
            if ino is not None:
                self._drop_key(ino)
        st = os.lstat(new)
        ino = self.by_key.get((st.st_dev, st.st_ino))
        if ino is not None:
            self.inodes[ino].path = new
        if stat.S_ISDIR(st.st_mode):
            prefix = old + b"/"
            for node in self.inodes.values():
                if node.path.startswith(prefix):
                    node.path = new + node.path[len(old):]

    # -- directories -------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode, ctx):
        path = self._inode(inode).path
        names = sorted(os.listdir(path))
        dh = self.next_dir
        self.next_dir += 1
        self.dirs[dh] = (path, names)  # snapshot: no skips or duplicates on change
        return dh

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        try:
            dirpath, names = self.dirs[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None
        for i in range(start_id, len(names)):
            path = os.path.join(dirpath, names[i])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            existed = (st.st_dev, st.st_ino) in self.by_key
            ino = self._register(path, st)
            if not pyfuse3.readdir_reply(token, names[i], self._entry(ino, st), i + 1):
                if not existed:
                    self._maybe_free(ino)
                return
            self.inodes[ino].nlookup += 1

    @fuse_errors
    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    # -- files -------------------------------------------------------------

    def _track(self, fd: int, ino: int) -> None:
        self.fd_inode[fd] = ino
        self.inodes[ino].fds.add(fd)

    @fuse_errors
    async def open(self, inode, flags, ctx):
        node = self._inode(inode)
        fd = os.open(node.path, (flags & ~os.O_CREAT) | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._track(fd, inode)
        return pyfuse3.FileInfo(fh=fd)

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._path(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode & ~ctx.umask)
        try:
            self._chown_to_caller(path, fd, ctx)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        ino = self._register(path, st)
        self.inodes[ino].nlookup += 1
        self._track(fd, ino)
        return pyfuse3.FileInfo(fh=fd), self._entry(ino, st)

    def _fd(self, fh: int) -> int:
        if fh not in self.fd_inode:
            raise pyfuse3.FUSEError(errno.EBADF)
        return fh

    @fuse_errors
    async def read(self, fh, off, size):
        return os.pread(self._fd(fh), size, off)

    @fuse_errors
    async def write(self, fh, off, buf):
        fd = self._fd(fh)
        view = memoryview(buf)
        done = 0
        while done < len(view):
            n = os.pwrite(fd, view[done:], off + done)
            if n <= 0:
                raise pyfuse3.FUSEError(errno.EIO)
            done += n
        return done

    @fuse_errors
    async def flush(self, fh):
        self._fd(fh)

    @fuse_errors
    async def fsync(self, fh, datasync):
        fd = self._fd(fh)
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    @fuse_errors
    async def release(self, fh):
        ino = self.fd_inode.pop(fh, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        node = self.inodes.get(ino)
        if node is not None:
            node.fds.discard(fh)
        os.close(fh)
        if node is not None:
            self._maybe_free(ino)


async def _serve() -> None:
    async with trio.open_nursery() as nursery:

        async def on_signal():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %d: unmounting", signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("--debug", action="store_true", help="log every FUSE request")
    ap.add_argument("--fsname", default="passthrough")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="passthrough[%(process)d] %(levelname)s %(message)s")
    if not os.path.isdir(args.source):
        ap.error(f"{args.source}: not a directory")

    ops = Passthrough(args.source)
    options = set(pyfuse3.default_options)
    options |= {"allow_other", "default_permissions", f"fsname={args.fsname}",
                "subtype=passthrough"}
    if args.debug:
        options.add("debug")
    pyfuse3.init(ops, args.mountpoint, options)
    ok = False
    try:
        trio.run(_serve)
        ok = True
    except BaseException:
        log.exception("main loop failed")
    finally:
        pyfuse3.close(unmount=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
