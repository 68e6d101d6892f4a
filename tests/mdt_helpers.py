"""Shared helpers of the MDT store's unit tests (tests/test_mdt_*.py): credentials,
errno checks, store construction, crash simulation and small builders.  The fixtures
(mdt_db_path, mdt_store) are in tests/conftest.py."""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlustre.servers.mdt.store import ROOT_INO, Cred, MdtError, MdtStore

ROOT = Cred(0, 0)
ALICE = Cred(1000, 1000)
BOB = Cred(1001, 1001, (2000,))
CAROL = Cred(1002, 1002)

ATTR_KEYS = {
    "ino", "gen", "mode", "nlink", "uid", "gid", "rdev", "size", "blocks",
    "atime_ns", "mtime_ns", "ctime_ns", "layout",
}  # fmt: skip

OST_COUNT = 4


@contextmanager
def raises(code: int) -> Iterator[None]:
    """Expect an MdtError carrying exactly this errno."""
    with pytest.raises(MdtError) as info:
        yield
    got = info.value.errno
    assert got == code, f"expected {errno.errorcode[code]}, got {errno.errorcode.get(got, got)}"


def open_store(path: Path, **kw: int) -> MdtStore:
    kw.setdefault("ost_count", OST_COUNT)
    return MdtStore(str(path), clock=time.time_ns, **kw)


def crash(store: MdtStore) -> None:
    """Abandon a store like a killed process: its open transaction is never committed."""
    store._db.conn.close()  # closing with a transaction open rolls it back
    store._db.closed = True



def mkfile(s: MdtStore, name: bytes, parent: int = ROOT_INO, cred: Cred = ROOT, mode: int = 0o644,
           **kw) -> dict:  # fmt: skip
    return s.create(cred, parent, name, stat.S_IFREG | mode, **kw)[1]["attr"]


def mkdir(s: MdtStore, name: bytes, parent: int = ROOT_INO, cred: Cred = ROOT, mode: int = 0o755
          ) -> dict:  # fmt: skip
    return s.mkdir(cred, parent, name, mode)[1]


def shared_dir(s: MdtStore, name: bytes = b"pub", mode: int = 0o777) -> int:
    """A root-owned directory everyone can write to (setattr keeps exact mode bits)."""
    ino = mkdir(s, name)["ino"]
    s.setattr(ROOT, ino, {"mode": mode})
    return ino


def objects_of(attr: dict) -> list[tuple[int, int]]:
    return [tuple(o) for o in attr["layout"]["objects"]]


def destroyed(s: MdtStore) -> list[tuple[int, int]]:
    return [(ost, oid) for _, ost, oid in s.pending_destroys(100_000)]

