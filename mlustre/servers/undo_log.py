"""undo_log.py - an OST's replay barrier: what it writes after the barrier is undone at
its next start, as if the disk had lost it.

Lustre's replay barrier makes the device read-only underneath the target, so that a
crash loses every update after it and the clients must replay them. Objects here are
plain files whose writes survive a kill -9 in the kernel's page cache; to lose them
on purpose, the OST journals the old contents of each range before changing it
(write, punch, destroy) while the barrier is set, and its next start puts them back
in reverse order. Used by tests and fault injection only: the journal holds a copy
of everything overwritten, destroyed objects whole.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgpack

from .object_store import ObjectStore

log = logging.getLogger(__name__)

JOURNAL = "undo.journal"


class UndoLog:
    def __init__(self, root: Path) -> None:
        self.path = root / JOURNAL
        self._fd: int | None = None
        self.records = 0

    @property
    def active(self) -> bool:
        return self._fd is not None

    def start(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def stop(self) -> None:
        """Lift the barrier: what was written since stays (the caller commits)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)
            self.records = 0

    def _append(self, record: dict[str, Any]) -> None:
        assert self._fd is not None
        os.write(self._fd, msgpack.packb(record, use_bin_type=True))
        self.records += 1

    def _old(self, objects: ObjectStore, oid: int) -> tuple[int | None, int]:
        fd = objects.fd(oid, create=False)
        return fd, (-1 if fd is None else os.fstat(fd).st_size)

    def before_write(self, objects: ObjectStore, oid: int, offset: int, length: int) -> None:
        fd, size = self._old(objects, oid)
        data = b""
        if fd is not None and offset < size:
            data = os.pread(fd, min(length, size - offset), offset)
        self._append({"oid": oid, "size": size, "offset": offset, "data": data})

    def before_punch(self, objects: ObjectStore, oid: int, new_size: int) -> None:
        fd, size = self._old(objects, oid)
        data = b""
        if fd is not None and new_size < size:
            data = os.pread(fd, size - new_size, new_size)
        self._append({"oid": oid, "size": size, "offset": new_size, "data": data})

    def before_destroy(self, objects: ObjectStore, oid: int) -> None:
        fd, size = self._old(objects, oid)
        data = os.pread(fd, size, 0) if fd is not None and size > 0 else b""
        self._append({"oid": oid, "size": size, "offset": 0, "data": data})

    def rollback(self, objects: ObjectStore) -> int:
        """At start: undo every journalled change, newest first; how many."""
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            records = [r for r in msgpack.Unpacker(f, raw=False) if isinstance(r, dict)]
        for r in reversed(records):
            oid, size = r["oid"], r["size"]
            if size < 0:
                objects.destroy(oid)
                continue
            fd = objects.fd(oid, create=True)
            assert fd is not None
            if r["data"]:
                os.pwrite(fd, r["data"], r["offset"])
            os.ftruncate(fd, size)
            os.fsync(fd)
        self.path.unlink()
        log.warning("replay barrier: %d updates made after it were undone", len(records))
        return len(records)
