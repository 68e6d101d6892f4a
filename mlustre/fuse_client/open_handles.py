"""open_handles.py - the client's table of open files and directories.

A FUSE file handle maps to the MDT open handle it holds, the flags it was
opened with and its read-ahead state. (The open request is what recovery will
replay after an MDT restart; it is kept here with the handle.)
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

import pyfuse3


@dataclass(slots=True)
class OpenFile:
    fh: int
    ino: int
    handle: int
    flags: int
    uid: int = 0  # the opener's: a write through a non-root opener drops set-id bits
    cred: list[Any] | None = None  # the opener's [uid, gid, groups], for open replay
    evicted: bool = False  # the client was evicted by the MDT since: I/O fails with EIO
    next_read: int = -1
    atime_done: bool = False
    ra_window: int = 0

    @property
    def direct(self) -> bool:
        """Opened write-only (or to append): the kernel keeps no pages for this handle.
        A buffered write holds the kernel's page locks while the daemon waits for its
        lock, and a lock called back elsewhere waits for those pages to be invalidated:
        a write that owns no pages can wait for a lock with no such cycle. (Read-write
        opens stay buffered: shared mmap needs the page cache.)"""
        return (self.flags & os.O_ACCMODE) == os.O_WRONLY or bool(self.flags & os.O_APPEND)


class OpenHandles:
    def __init__(self) -> None:
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, tuple[int, list[Any]]] = {}
        self._dir_ends: dict[int, int] = {}  # fh -> the offset its listing ended at
        self._next = 1

    def _fh(self) -> int:
        fh = self._next
        self._next += 1
        return fh

    def add_file(self, ino: int, handle: int, flags: int, uid: int = 0,
                 cred: list[Any] | None = None) -> OpenFile:
        of = OpenFile(self._fh(), ino, handle, flags, uid, cred)
        self._files[of.fh] = of
        return of

    def live_file(self, fh: int) -> OpenFile:
        """An open file that may still be used (EIO once its client was evicted: its
        state on the servers is gone; opening the file again works)."""
        of = self.file(fh)
        if of.evicted:
            raise pyfuse3.FUSEError(errno.EIO)
        return of

    def get_file(self, fh: int) -> OpenFile | None:
        return self._files.get(fh)

    def file(self, fh: int) -> OpenFile:
        try:
            return self._files[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def remove_file(self, fh: int) -> OpenFile:
        of = self.file(fh)
        del self._files[fh]
        return of

    def files(self) -> list[OpenFile]:
        return list(self._files.values())

    def add_dir(self, ino: int, cred: list[Any]) -> int:
        fh = self._fh()
        self._dirs[fh] = (ino, cred)
        return fh

    def dir(self, fh: int) -> tuple[int, list[Any]]:
        try:
            return self._dirs[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def remove_dir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
        self._dir_ends.pop(fh, None)

    def dir_ended(self, fh: int, offset: int) -> None:
        """The listing of handle fh ended at offset (the MDT said so)."""
        if fh in self._dirs:
            self._dir_ends[fh] = offset

    def dir_ends_at(self, fh: int, offset: int) -> bool:
        """Did fh's listing end at offset? Then a readdir there has nothing to give: the
        kernel asks once more after the last entry, and names made since the stream
        passed the end need not show (POSIX leaves it unspecified until a rewind)."""
        return self._dir_ends.get(fh) == offset
