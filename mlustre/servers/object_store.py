"""object_store.py - OST objects as files on disk, with an fd cache.

Writes go to the object file at once; `dirty_fds` remembers which objects
need an fsync at the next commit. File descriptors are cached (LRU) and pinned
while a worker thread uses them, so an eviction never closes (and the kernel
never reuses) an fd under an in-flight pread/pwrite.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from pathlib import Path

MAX_OID = (1 << 63) - 1


class ObjectStore:
    def __init__(self, root: Path, max_fds: int = 256) -> None:
        self.root = root / "O"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_fds = max_fds
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pins: dict[int, int] = {}
        self._dirty: set[int] = set()

    def path(self, oid: int) -> Path:
        if not 0 <= oid <= MAX_OID:
            raise OSError(errno.EINVAL, f"object id {oid} out of range")
        return self.root / f"{oid & 0xFF:02x}" / f"{oid:x}"

    def fd(self, oid: int, create: bool) -> int | None:
        """The object's fd (cached), or None if it does not exist and create is False."""
        fd = self._fds.get(oid)
        if fd is not None:
            self._fds.move_to_end(oid)
            return fd
        path = self.path(oid)
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if not create:
                return None
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._fds[oid] = fd
        self._evict()
        return fd

    def _evict(self) -> None:
        for oid in list(self._fds):
            if len(self._fds) <= self.max_fds:
                break
            if self._pins.get(oid) or oid in self._dirty:
                continue
            os.close(self._fds.pop(oid))

    def pin(self, oid: int) -> None:
        self._pins[oid] = self._pins.get(oid, 0) + 1

    def unpin(self, oid: int) -> None:
        n = self._pins[oid] - 1
        if n:
            self._pins[oid] = n
        else:
            del self._pins[oid]

    def mark_dirty(self, oid: int) -> None:
        self._dirty.add(oid)

    def take_dirty(self) -> list[int]:
        """The fds to fsync for the next commit (pinned until `unpin_all`)."""
        oids = list(self._dirty)
        self._dirty.clear()
        for oid in oids:
            self.pin(oid)
        return oids

    def size(self, oid: int) -> int:
        fd = self.fd(oid, create=False)
        return 0 if fd is None else os.fstat(fd).st_size

    def punch(self, oid: int, size: int) -> None:
        fd = self.fd(oid, create=size > 0)
        if fd is not None:
            os.ftruncate(fd, size)
            self.mark_dirty(oid)

    def oids_in(self, lo: int, hi: int) -> list[int]:
        """Ids in [lo, hi) of the objects on disk (a scan of the object directories:
        for orphan cleanup, once per MDT start)."""
        found = []
        for sub in range(256):
            try:
                with os.scandir(self.root / f"{sub:02x}") as it:
                    for entry in it:
                        try:
                            oid = int(entry.name, 16)
                        except ValueError:
                            continue  # (not an object: a temporary or foreign file)
                        if lo <= oid < hi:
                            found.append(oid)
            except FileNotFoundError:
                continue
        return sorted(found)

    def destroy(self, oid: int) -> None:
        fd = self._fds.pop(oid, None)
        if fd is not None:
            if self._pins.get(oid):
                self._fds[oid] = fd  # in use: leave the fd, drop the name
            else:
                os.close(fd)
        self._dirty.discard(oid)
        try:
            os.unlink(self.path(oid))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
