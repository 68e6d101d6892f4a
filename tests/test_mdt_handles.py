"""Unit tests of the MDT store's open handles and orphans (servers/mdt/handles.py)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mdt_helpers import (
    ALICE,
    BOB,
    ROOT,
    crash,
    destroyed,
    mkfile,
    objects_of,
    open_store,
    raises,
    shared_dir,
)

from mlustre.servers.mdt.store import (
    ROOT_INO,
    MdtStore,
)

# --------------------------------------------------------------------------- open / close / orphans


def test_open_and_trunc(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f", mode=0o6755)
    mdt_store.write_update(f["ino"], 5000, 123)
    mdt_store.setattr(ROOT, f["ino"], {"mode": 0o6755})
    _, res = mdt_store.open(ROOT, f["ino"], os.O_RDONLY)
    assert res["truncated"] is False and res["attr"]["size"] == 5000
    _, res2 = mdt_store.open(ALICE, f["ino"], os.O_RDONLY)
    assert res2["handle"] != res["handle"]
    assert mdt_store.open_count(f["ino"]) == 2
    _, res3 = mdt_store.open(ROOT, f["ino"], os.O_WRONLY | os.O_TRUNC)
    assert res3["truncated"] is True
    a = res3["attr"]
    assert (a["size"], a["blocks"]) == (0, 0)
    assert a["mtime_ns"] == a["ctime_ns"] > 123
    assert a["mode"] == stat.S_IFREG | 0o6755  # root keeps the set-id bits
    assert mdt_store.getattr(f["ino"]) == a
    p = mdt_store.create(ROOT, ROOT_INO, b"p", stat.S_IFIFO | 0o666)[1]["attr"]
    assert mdt_store.open(ROOT, p["ino"], os.O_WRONLY | os.O_TRUNC)[1]["truncated"] is False


def test_open_trunc_by_user_kills_setid(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=ALICE)
    mdt_store.setattr(ALICE, f["ino"], {"mode": 0o6777})
    _, res = mdt_store.open(BOB, f["ino"], os.O_RDWR | os.O_TRUNC)
    assert res["attr"]["mode"] == stat.S_IFREG | 0o777


def test_close_errors_and_counts(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    _, a = mdt_store.open(ROOT, f["ino"], os.O_RDONLY)
    _, b = mdt_store.open(ROOT, f["ino"], os.O_RDONLY)
    transno, res = mdt_store.close(a["handle"])
    assert res == {} and transno == mdt_store.last_transno
    assert mdt_store.open_count(f["ino"]) == 1
    with raises(errno.EBADF):
        mdt_store.close(a["handle"])
    with raises(errno.EBADF):
        mdt_store.close(123456789)
    mdt_store.close(b["handle"])
    assert mdt_store.open_count(f["ino"]) == 0
    assert mdt_store.getattr(f["ino"])["nlink"] == 1  # closing a linked file destroys nothing


def test_open_unlink_close_destroys(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f", layout={"stripe_count": 2})
    _, h1 = mdt_store.open(ROOT, f["ino"], os.O_RDWR)
    _, h2 = mdt_store.open(ROOT, f["ino"], os.O_RDONLY)
    mdt_store.unlink(ROOT, ROOT_INO, b"f")
    orphan = mdt_store.getattr(f["ino"])
    assert orphan["nlink"] == 0
    with raises(errno.ENOENT):
        mdt_store.lookup(ROOT, ROOT_INO, b"f")
    mdt_store.write_update(f["ino"], 100, 5)  # an orphan can still be written
    assert destroyed(mdt_store) == []
    mdt_store.close(h1["handle"])
    assert destroyed(mdt_store) == []
    mdt_store.getattr(f["ino"])
    mdt_store.close(h2["handle"])
    assert destroyed(mdt_store) == objects_of(f)
    with raises(errno.ENOENT):
        mdt_store.getattr(f["ino"])
    assert mdt_store.open_count(f["ino"]) == 0


def test_destroyed_inode_loses_xattrs(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    mdt_store.setxattr(ROOT, f["ino"], b"user.a", b"v")
    mdt_store.unlink(ROOT, ROOT_INO, b"f")
    assert mdt_store._db.conn.execute("SELECT COUNT(*) FROM xattrs").fetchone()[0] == 0


def test_cleanup_orphans_after_restart(mdt_db_path: Path) -> None:
    s = open_store(mdt_db_path)
    keep = mkfile(s, b"keep")
    gone = mkfile(s, b"gone", layout={"stripe_count": 3})
    _, h = s.open(ROOT, gone["ino"], os.O_RDONLY)
    s.unlink(ROOT, ROOT_INO, b"gone")
    s.commit()
    crash(s)  # the open handle dies with the process
    s2 = open_store(mdt_db_path)
    try:
        assert s2.getattr(gone["ino"])["nlink"] == 0
        with raises(errno.EBADF):
            s2.close(h["handle"])
        transno = s2.last_transno
        assert s2.cleanup_orphans() == 1
        assert s2.last_transno == transno
        assert destroyed(s2) == objects_of(gone)
        with raises(errno.ENOENT):
            s2.getattr(gone["ino"])
        assert s2.getattr(keep["ino"])["nlink"] == 1
        assert s2.cleanup_orphans() == 0
    finally:
        s2.close()


def test_cleanup_orphans_skips_open_inodes(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    _, h = mdt_store.open(ROOT, f["ino"], os.O_RDONLY)
    mdt_store.unlink(ROOT, ROOT_INO, b"f")
    assert mdt_store.cleanup_orphans() == 0
    mdt_store.close(h["handle"])
    with raises(errno.ENOENT):
        mdt_store.getattr(f["ino"])


def test_handles_unique_across_restarts(mdt_db_path: Path) -> None:
    s = open_store(mdt_db_path)
    f = mkfile(s, b"f")
    first = {s.open(ROOT, f["ino"], os.O_RDONLY)[1]["handle"] for _ in range(3)}
    s.close()
    s2 = open_store(mdt_db_path)
    try:
        second = {s2.open(ROOT, f["ino"], os.O_RDONLY)[1]["handle"] for _ in range(3)}
        assert len(first) == 3 and len(second) == 3 and not first & second
    finally:
        s2.close()
