"""boundary.py - where the client meets the application: how a failure becomes the errno
a system call returns (fuse_errors), what the application asked for (OpStats, counted
by fuse_errors: llite.*.stats), and the POSIX rules checked before any RPC (the
maximum file size of a write, the set-id bits a write drops).

docs/architecture.md, "How an errno travels from a server to the application".
"""

from __future__ import annotations

import errno
import functools
import logging
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from ..protocol import constants as C
from ..protocol.errors import ErrnoError
from .imports import ImportClosed
from .ldlm import LockFailed

log = logging.getLogger(__name__)

T = TypeVar("T")

# llite.*.stats names of the FUSE requests: Lustre's where it has one, else the request's.
LLITE_NAMES = {"release": "close", "read": "read_bytes", "write": "write_bytes",
               "access": "inode_permission"}
BYTES_MOVED = ("read_bytes", "write_bytes")  # also counted in bytes (min, max, sum)


class OpStats:
    """The FUSE requests a mount served, by type (llite.*.stats): what the kernel asked
    of the client, to set beside the RPCs the client sent for it (mdc/osc.*.stats).

    :calls: requests per llite name, failed ones included (a failure is work done too);
    :moved: for read_bytes and write_bytes, [min, max, sum] of the bytes of the requests
        that succeeded, as Lustre prints them.
    """

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.moved: dict[str, list[int]] = {}

    def count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def add_bytes(self, name: str, n: int) -> None:
        m = self.moved.get(name)
        if m is None:
            self.moved[name] = [n, n, n]
        else:
            m[0], m[1], m[2] = min(m[0], n), max(m[1], n), m[2] + n


def first_failure(exc: BaseException) -> BaseException:
    """The failure that explains exc: exc itself, or, for the exception group of a trio
    nursery whose tasks sent several RPCs, its first leaf that carries an errno (a
    FUSEError or an ErrnoError such as RpcError), else its first leaf. The other tasks'
    Cancelled never reach the group (the nursery absorbs them), so every leaf is a real
    failure; the first with an errno is the one an application must see, not EIO."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            leaves.append(e)
    for leaf in leaves:
        if isinstance(leaf, (pyfuse3.FUSEError, ErrnoError)):
            return leaf
    return leaves[0] if leaves else exc


def fuse_errno(exc: BaseException) -> int | None:
    """The errno the application gets for exc (None: not an errno-carrying failure)."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, ErrnoError):
        return exc.errno
    if isinstance(exc, (ImportClosed, LockFailed)):  # unmounting, or evicted meanwhile
        return errno.EIO
    return None


def fuse_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn every failure of a handler into a FUSEError errno: the errno of the first real
    failure, through exception groups (docs/architecture.md, "How an errno travels").
    Every handler passes here, so here it is counted too: in the `op_stats` (OpStats)
    of the object whose method it is, when it has one (FuseOps)."""
    name = LLITE_NAMES.get(fn.__name__, fn.__name__)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kw: Any) -> T:
        stats = getattr(args[0], "op_stats", None) if args else None
        if isinstance(stats, OpStats):
            stats.count(name)
        try:
            result = await fn(*args, **kw)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            failure = first_failure(exc)
            err = fuse_errno(failure)
            if err is None:
                log.error("%s failed", fn.__name__, exc_info=failure)
                err = errno.EIO
            elif isinstance(failure, (ImportClosed, LockFailed)):
                log.info("%s: %s", fn.__name__, failure)
            raise pyfuse3.FUSEError(err) from None
        if isinstance(stats, OpStats) and name in BYTES_MOVED:
            # (read returns the bytes, write how many it wrote)
            stats.add_bytes(name, result if isinstance(result, int) else len(result))  # type: ignore[arg-type]
        return result

    return wrapper


def buf_within_max(off: int, buf: bytes) -> bytes:
    """What of a write at off may be written (POSIX: a write starting at or beyond the
    maximum file size fails with EFBIG, one crossing it is short)."""
    if off >= C.MAX_FILE_SIZE:
        raise pyfuse3.FUSEError(errno.EFBIG)
    room = C.MAX_FILE_SIZE - off
    return buf if len(buf) <= room else buf[:room]


def kill_setid(mode: int) -> int:
    """mode after a write by a writer without CAP_FSETID (Linux should_remove_suid: the
    set-user-ID bit, and set-group-ID when group-execute is set); as the MDT's rule."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode
