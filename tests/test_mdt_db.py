"""Unit tests of the MDT database (servers/mdt/db.py): transnos, atomic operations,
commits, crashes, the boot count."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mdt_helpers import (
    ALICE,
    OST_COUNT,
    ROOT,
    crash,
    destroyed,
    mkdir,
    mkfile,
    objects_of,
    open_store,
    raises,
)

from mlustre.servers.mdt import db as mdt_db
from mlustre.servers.mdt.store import (
    ROOT_INO,
    Cred,
    MdtError,
    MdtStore,
    ReplayedUpdate,
)

# --------------------------------------------------------------------------- transactions


def test_transnos_increase_and_reads_do_not_assign(mdt_store: MdtStore) -> None:
    seen = []
    f = mkfile(mdt_store, b"f")
    seen.append(mdt_store.last_transno)
    seen.append(mdt_store.mkdir(ROOT, ROOT_INO, b"d", 0o755)[0])
    seen.append(mdt_store.symlink(ROOT, ROOT_INO, b"l", b"t")[0])
    seen.append(mdt_store.link(ROOT, f["ino"], ROOT_INO, b"f2")[0])
    seen.append(mdt_store.setattr(ROOT, f["ino"], {"mode": 0o600})[0])
    seen.append(mdt_store.setxattr(ROOT, f["ino"], b"user.a", b"v")[0])
    seen.append(mdt_store.removexattr(ROOT, f["ino"], b"user.a")[0])
    t, o = mdt_store.open(ROOT, f["ino"], os.O_RDONLY)
    seen.append(t)
    seen.append(mdt_store.close(o["handle"])[0])
    seen.append(mdt_store.write_update(f["ino"], 1, 1)[0])
    seen.append(mdt_store.rename(ROOT, ROOT_INO, b"f2", ROOT_INO, b"f3")[0])
    seen.append(mdt_store.unlink(ROOT, ROOT_INO, b"f3")[0])
    seen.append(mdt_store.rmdir(ROOT, ROOT_INO, b"d")[0])
    seen.append(mdt_store.set_layout(ROOT, ROOT_INO, {"stripe_count": 2})[0])
    assert seen == list(range(1, len(seen) + 1))
    mdt_store.getattr(f["ino"])
    mdt_store.lookup(ROOT, ROOT_INO, b"f")
    mdt_store.readdir(ROOT, ROOT_INO, 0, 10)
    mdt_store.listxattr(ROOT, f["ino"])
    mdt_store.statfs()
    mdt_store.access(ROOT, f["ino"], os.R_OK)
    mdt_store.readlink(mdt_store.lookup(ROOT, ROOT_INO, b"l")["ino"])
    mdt_store.get_dir_layout(ROOT_INO)
    assert mdt_store.last_transno == len(seen)


def test_failures_consume_no_transno_and_leave_no_trace(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    mkfile(mdt_store, b"x", parent=d["ino"])
    mkdir(mdt_store, b"e")
    base = mdt_store.last_transno
    snapshot = mdt_store._db.conn.execute("SELECT * FROM inodes ORDER BY ino").fetchall()
    dirents = mdt_store._db.conn.execute("SELECT * FROM dirents ORDER BY id").fetchall()
    with raises(errno.EEXIST):
        mdt_store.create(ROOT, ROOT_INO, b"d", 0o644)
    with raises(errno.ENOTEMPTY):
        mdt_store.rename(ROOT, ROOT_INO, b"e", ROOT_INO, b"d")
    with raises(errno.EACCES):
        mdt_store.create(ALICE, ROOT_INO, b"nope", 0o644, open_flags=os.O_RDWR)
    with raises(errno.EINVAL):
        mdt_store.create(ROOT, ROOT_INO, b"bad", 0o644, layout={"stripe_size": 3})
    with raises(errno.EPERM):
        mdt_store.setattr(ALICE, d["ino"], {"mode": 0o777})
    with raises(errno.EISDIR):
        mdt_store.open(ALICE, d["ino"], os.O_RDONLY | os.O_TRUNC)
    with raises(errno.EACCES):
        mdt_store.open(ALICE, mdt_store.lookup(ROOT, d["ino"], b"x")["ino"], os.O_WRONLY)
    assert mdt_store.last_transno == base
    assert mdt_store._db.conn.execute("SELECT * FROM inodes ORDER BY ino").fetchall() == snapshot
    assert mdt_store._db.conn.execute("SELECT * FROM dirents ORDER BY id").fetchall() == dirents
    assert len(mdt_store._handles) == 0 and mdt_store.open_count(d["ino"]) == 0
    assert mdt_store.create(ROOT, ROOT_INO, b"ok", 0o644)[0] == base + 1


def test_failure_after_partial_writes_is_rolled_back(mdt_store: MdtStore) -> None:
    """An error raised after some rows were changed must undo them (the SAVEPOINT)."""
    f = mkfile(mdt_store, b"f")
    base = mdt_store.last_transno
    before = mdt_store.getattr(f["ino"])
    inodes_before = mdt_store.statfs()["files"]
    orig = mdt_store._inodes.touch_dir

    def boom(*args: object, **kw: object) -> None:
        orig(*args, **kw)
        raise MdtError(errno.EIO, "injected")

    mdt_store._inodes.touch_dir = boom  # type: ignore[method-assign]
    try:
        with raises(errno.EIO):
            mdt_store.create(ROOT, ROOT_INO, b"g", 0o644)
        with raises(errno.EIO):
            mdt_store.unlink(ROOT, ROOT_INO, b"f")
    finally:
        mdt_store._inodes.touch_dir = orig  # type: ignore[method-assign]
    assert mdt_store.last_transno == base
    assert mdt_store.getattr(f["ino"]) == before
    assert mdt_store.statfs()["files"] == inodes_before
    assert destroyed(mdt_store) == []
    with raises(errno.ENOENT):
        mdt_store.lookup(ROOT, ROOT_INO, b"g")
    # Counters staged by the failed create (object ids, round robin) were not consumed.
    g = mkfile(mdt_store, b"g")
    assert objects_of(g)[0][0] == (objects_of(f)[0][0] + 1) % OST_COUNT


def test_commit_advances_last_committed(mdt_store: MdtStore) -> None:
    mkfile(mdt_store, b"a")
    mkfile(mdt_store, b"b")
    assert mdt_store.last_transno == 2 and mdt_store.last_committed == 0
    assert mdt_store.commit() == 2
    assert mdt_store.last_committed == mdt_store.last_transno == 2
    mkfile(mdt_store, b"c")
    assert mdt_store.last_committed == 2
    assert mdt_store.commit() == 3
    assert mdt_store.commit() == 3  # nothing open: still fine


def test_crash_loses_uncommitted_updates(mdt_db_path: Path) -> None:
    s = open_store(mdt_db_path)
    a = mkfile(s, b"a")
    s.setxattr(ROOT, a["ino"], b"user.k", b"v")
    s.commit()
    committed = s.last_transno
    mkfile(s, b"b")
    s.unlink(ROOT, ROOT_INO, b"a")
    s.mkdir(ROOT, ROOT_INO, b"d", 0o755)
    assert s.last_transno == committed + 3
    crash(s)
    s2 = open_store(mdt_db_path)
    try:
        assert s2.last_transno == s2.last_committed == committed
        assert s2.lookup(ROOT, ROOT_INO, b"a")["ino"] == a["ino"]
        assert s2.getxattr(ROOT, a["ino"], b"user.k") == b"v"
        with raises(errno.ENOENT):
            s2.lookup(ROOT, ROOT_INO, b"b")
        with raises(errno.ENOENT):
            s2.lookup(ROOT, ROOT_INO, b"d")
        assert s2.getattr(ROOT_INO)["nlink"] == 2
        assert s2.pending_destroys() == []
        # Replayed updates get the same transnos again.
        assert s2.create(ROOT, ROOT_INO, b"b", 0o644)[0] == committed + 1
    finally:
        s2.close()


def test_clean_close_persists_everything(mdt_db_path: Path) -> None:
    s = open_store(mdt_db_path)
    d = mkdir(s, b"d")
    f = mkfile(s, b"f", parent=d["ino"], layout={"stripe_count": 2})
    s.set_layout(ROOT, d["ino"], {"stripe_count": 3})
    last = s.last_transno
    s.close()
    s.close()  # idempotent
    s2 = open_store(mdt_db_path)
    try:
        assert s2.last_transno == s2.last_committed == last
        assert s2.lookup(ROOT, d["ino"], b"f") == s2.getattr(f["ino"])
        assert s2.getattr(f["ino"])["layout"] == f["layout"]
        assert s2.get_dir_layout(d["ino"]) == {"stripe_count": 3}
        assert s2.statfs()["files"] == 3
        assert mkfile(s2, b"g")["ino"] > f["ino"]
        assert s2.last_transno == last + 1
    finally:
        s2.close()


def test_process_crash_in_subprocess(mdt_db_path: Path) -> None:
    """A real process death (os._exit) with an open transaction loses only that transaction."""
    script = textwrap.dedent(
        f"""
        import os, stat, time
        from mlustre.servers.mdt.store import MdtStore, Cred, ROOT_INO
        s = MdtStore({str(mdt_db_path)!r}, ost_count=2, clock=time.time_ns)
        root = Cred(0, 0)
        s.create(root, ROOT_INO, b"durable", stat.S_IFREG | 0o644)
        s.commit()
        for i in range(200):
            s.create(root, ROOT_INO, b"lost%d" % i, stat.S_IFREG | 0o644)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    s = open_store(mdt_db_path, ost_count=2)
    try:
        assert s.last_transno == 1
        assert [e[0] for e in s.readdir(ROOT, ROOT_INO, 0, 1000)] == [b"durable"]
    finally:
        s.close()


def test_generation_is_the_boot_count_and_stays_put(tmp_path: Path) -> None:
    """New inodes carry the MDT's boot count as generation (a lost, reused inode number
    is then a different (ino, gen)); create's reply and later getattrs agree."""
    path = str(tmp_path / "mdt.sqlite")
    mdt_store = MdtStore(path, clock=time.time_ns, ost_count=1)
    _, first = mdt_store.create(Cred(0, 0), ROOT_INO, b"a", 0o100644)
    assert mdt_store.getattr(first["attr"]["ino"])["gen"] == first["attr"]["gen"]
    mdt_store.close()
    mdt_store = MdtStore(path, clock=time.time_ns, ost_count=1)
    _, second = mdt_store.create(Cred(0, 0), ROOT_INO, b"b", 0o100644)
    assert second["attr"]["gen"] == first["attr"]["gen"] + 1
    assert mdt_store.getattr(second["attr"]["ino"])["gen"] == second["attr"]["gen"]
    mdt_store.close()


def test_commit_in_steps_covers_only_what_came_before(mdt_store: MdtStore) -> None:
    """begin_commit/sync/end_commit (the server runs sync in a worker thread): an update
    made between the steps is not claimed durable, and stays to be synced."""
    mkfile(mdt_store, b"a")
    mdt_store.settle()
    ticket = mdt_store.begin_commit()
    assert ticket.transno == 1 and ticket.files
    mkfile(mdt_store, b"b")  # while the fsync would run
    mdt_store.settle()
    ticket.sync()
    assert mdt_store.end_commit(ticket) == 1
    assert mdt_store.last_committed == 1 and mdt_store.unsynced
    assert mdt_store.commit() == 2 and not mdt_store.unsynced
    assert not mdt_store.begin_commit().files  # nothing left to flush


def test_replay_barrier_commits_nothing(mdt_store: MdtStore) -> None:
    mkfile(mdt_store, b"a")
    mdt_store.commit()
    mdt_store.replay_barrier = True
    mkfile(mdt_store, b"b")
    mdt_store.settle()
    assert mdt_store.in_transaction and mdt_store.commit() == 1
    mdt_store.replay_barrier = False
    assert mdt_store.commit() == 2


def test_replayed_create_gets_its_first_transno_and_identity(mdt_db_path: Path) -> None:
    """A create replayed after a crash lost it gets the transno, inode number, generation
    and objects its first reply gave (transnos lost with others' updates are skipped)."""
    s = open_store(mdt_db_path)
    s.commit()
    _, first = s.create(ROOT, ROOT_INO, b"f", stat.S_IFREG | 0o644)
    mkdir(s, b"d")
    crash(s)
    s2 = open_store(mdt_db_path)
    try:
        attr = first["attr"]
        replayed = ReplayedUpdate(5, attr)
        transno, again = s2.create(ROOT, ROOT_INO, b"f", stat.S_IFREG | 0o644,
                                   replayed=replayed)
        assert transno == 5 and s2.last_transno == 5
        assert (again["attr"]["ino"], again["attr"]["gen"]) == (attr["ino"], attr["gen"])
        assert again["attr"]["layout"] == attr["layout"]
        assert mkdir(s2, b"e")["gen"] == attr["gen"] + 1  # a first execution: this boot
        # An inode number taken since: a new one (the objects are still the first ones).
        taken = ReplayedUpdate(7, {**attr, "ino": mkdir(s2, b"x")["ino"]})
        _, other = s2.create(ROOT, ROOT_INO, b"g", stat.S_IFREG | 0o644, replayed=taken)
        assert other["attr"]["ino"] != taken.attr["ino"]
    finally:
        s2.close()


def test_store_stamps_times_from_its_clock(tmp_path: Path) -> None:
    ticks = iter(range(1000, 2000))
    s = MdtStore(str(tmp_path / "mdt.sqlite"), ost_count=1, clock=lambda: next(ticks))
    try:
        assert s.getattr(ROOT_INO)["mtime_ns"] == 1000  # the new root
        a = mkfile(s, b"f")
        assert a["ctime_ns"] == a["mtime_ns"] == 1001
        assert s.getattr(ROOT_INO)["mtime_ns"] == 1001
        _, a = s.setattr(ROOT, a["ino"], {"mode": 0o600})
        assert a["ctime_ns"] == 1002
    finally:
        s.close()


def test_commits_checkpoint_the_wal_in_their_worker_part(mdt_store: MdtStore,
                                                          mdt_db_path: Path) -> None:
    """Settles never checkpoint (SQLite's own checkpoint would run inside an update's
    COMMIT, on the event loop); every CHECKPOINT_SETTLES of them a commit's ticket
    carries one, done by sync() (the worker thread's part) through its own connection."""
    ticket = mdt_store.begin_commit()
    ticket.sync()
    mdt_store.end_commit(ticket)
    assert ticket.checkpoint is None
    for i in range(mdt_db.CHECKPOINT_SETTLES):
        mkfile(mdt_store, b"f%d" % i)
        mdt_store.settle()
    size = os.path.getsize(mdt_db_path)
    ticket = mdt_store.begin_commit()
    assert ticket.checkpoint == str(mdt_db_path)
    assert os.path.getsize(mdt_db_path) == size  # nothing copied back yet
    ticket.sync()
    mdt_store.end_commit(ticket)
    assert os.path.getsize(mdt_db_path) > size  # the WAL's pages are in the database now
    assert mdt_store.last_committed == mdt_store.last_transno
    later = mdt_store.begin_commit()
    assert later.checkpoint is None  # (not again until as many more settles)
    mkfile(mdt_store, b"after")
    mdt_store.settle()
    crash(mdt_store)
    s = open_store(mdt_db_path)  # everything settled survives the kill, checkpoint or not
    try:
        assert s.lookup(ROOT, ROOT_INO, b"after")["ino"]
        assert s.lookup(ROOT, ROOT_INO, b"f0")["ino"]
    finally:
        s.close()
