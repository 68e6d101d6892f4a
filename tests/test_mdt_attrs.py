"""Unit tests of the MDT store's attribute updates (servers/mdt/attrs.py): setattr,
write_update, touch_atime."""

from __future__ import annotations

import errno
import stat
import time
from pathlib import Path

import pytest
from mdt_helpers import (
    ALICE,
    BOB,
    ROOT,
    mkdir,
    mkfile,
    raises,
    shared_dir,
)

from mlustre.servers.mdt.store import (
    ROOT_INO,
    Cred,
    MdtStore,
)

# --------------------------------------------------------------------------- setattr


def test_chmod_rules(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=ALICE, mode=0o644)
    _, a = mdt_store.setattr(ALICE, f["ino"], {"mode": 0o4700})
    assert a["mode"] == stat.S_IFREG | 0o4700
    assert a["ctime_ns"] > f["ctime_ns"]
    with raises(errno.EPERM):
        mdt_store.setattr(BOB, f["ino"], {"mode": 0o777})
    _, a = mdt_store.setattr(ROOT, f["ino"], {"mode": stat.S_IFDIR | 0o600})
    assert a["mode"] == stat.S_IFREG | 0o600  # the file type never changes


def test_chmod_sgid_needs_group_membership(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=BOB)
    mdt_store.setattr(ROOT, f["ino"], {"gid": 3000})
    _, a = mdt_store.setattr(BOB, f["ino"], {"mode": 0o2755})
    assert a["mode"] == stat.S_IFREG | 0o755
    mdt_store.setattr(ROOT, f["ino"], {"gid": 2000})  # a supplementary group of BOB
    _, a = mdt_store.setattr(BOB, f["ino"], {"mode": 0o2755})
    assert a["mode"] == stat.S_IFREG | 0o2755
    mdt_store.setattr(ROOT, f["ino"], {"gid": 3000})
    _, a = mdt_store.setattr(ROOT, f["ino"], {"mode": 0o2755})
    assert a["mode"] == stat.S_IFREG | 0o2755


def test_chown_rules(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=BOB)
    with raises(errno.EPERM):
        mdt_store.setattr(BOB, f["ino"], {"uid": ALICE.uid})
    mdt_store.setattr(BOB, f["ino"], {"uid": BOB.uid})  # a no-op chown is allowed
    _, a = mdt_store.setattr(BOB, f["ino"], {"gid": 2000})  # owner, to a group it is in
    assert a["gid"] == 2000
    with raises(errno.EPERM):
        mdt_store.setattr(BOB, f["ino"], {"gid": 3000})
    with raises(errno.EPERM):
        mdt_store.setattr(ALICE, f["ino"], {"gid": ALICE.gid})  # not the owner
    _, a = mdt_store.setattr(ROOT, f["ino"], {"uid": 5, "gid": 6})
    assert (a["uid"], a["gid"]) == (5, 6)


@pytest.mark.parametrize(
    "mode,expect",
    [(0o6755, 0o755), (0o6745, 0o2745), (0o4755, 0o755), (0o2710, 0o710), (0o755, 0o755)],
)
def test_chown_by_non_root_clears_setid(mdt_store: MdtStore, mode: int, expect: int) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=BOB)
    mdt_store.setattr(ROOT, f["ino"], {"mode": mode})
    _, a = mdt_store.setattr(BOB, f["ino"], {"gid": 2000})
    assert a["mode"] == stat.S_IFREG | expect


def test_chown_by_root_and_dirs_keep_setid(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f", mode=0o6755)
    _, a = mdt_store.setattr(ROOT, f["ino"], {"uid": 7})
    assert a["mode"] == stat.S_IFREG | 0o6755
    pub = shared_dir(mdt_store)
    d = mkdir(mdt_store, b"d", parent=pub, cred=BOB)
    mdt_store.setattr(BOB, d["ino"], {"mode": 0o2775})
    _, a = mdt_store.setattr(BOB, d["ino"], {"gid": 2000})
    assert a["mode"] == stat.S_IFDIR | 0o2775


def test_truncate_via_setattr(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=ALICE, mode=0o644)
    _, a = mdt_store.setattr(ALICE, f["ino"], {"size": 1000})
    assert (a["size"], a["blocks"]) == (1000, 2)
    assert a["mtime_ns"] == a["ctime_ns"] > f["mtime_ns"]
    with raises(errno.EACCES):
        mdt_store.setattr(BOB, f["ino"], {"size": 0})
    _, a = mdt_store.setattr(BOB, f["ino"], {"size": 10}, via_handle=True)
    assert a["size"] == 10
    d = mkdir(mdt_store, b"d")
    with raises(errno.EISDIR):
        mdt_store.setattr(ROOT, d["ino"], {"size": 0})
    p = mdt_store.create(ROOT, ROOT_INO, b"p", stat.S_IFIFO | 0o644)[1]["attr"]
    with raises(errno.EINVAL):
        mdt_store.setattr(ROOT, p["ino"], {"size": 0})
    with raises(errno.EINVAL):
        mdt_store.setattr(ROOT, f["ino"], {"size": -1})


def test_set_times(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=ALICE, mode=0o666)
    _, a = mdt_store.setattr(ALICE, f["ino"], {"atime_ns": 111, "mtime_ns": 222})
    assert (a["atime_ns"], a["mtime_ns"]) == (111, 222)
    assert a["ctime_ns"] > f["ctime_ns"]
    with raises(errno.EPERM):  # explicit times: owner only, even with write permission
        mdt_store.setattr(BOB, f["ino"], {"mtime_ns": 5})
    _, a = mdt_store.setattr(BOB, f["ino"], {"atime_now": True, "mtime_now": True})
    assert a["atime_ns"] > 111 and a["mtime_ns"] > 222
    mdt_store.setattr(ALICE, f["ino"], {"mode": 0o644})
    with raises(errno.EACCES):
        mdt_store.setattr(BOB, f["ino"], {"mtime_now": True})
    _, a = mdt_store.setattr(ROOT, f["ino"], {"atime_ns": 1})
    assert a["atime_ns"] == 1


def test_setattr_misc(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    with raises(errno.EINVAL):
        mdt_store.setattr(ROOT, f["ino"], {"colour": 1})
    with raises(errno.ENOENT):
        mdt_store.setattr(ROOT, 4040, {"mode": 0o600})
    _, a = mdt_store.setattr(ROOT, f["ino"], {})
    assert a == mdt_store.getattr(f["ino"]) == f


# --------------------------------------------------------------------------- write_update


def test_write_update(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    _, a = mdt_store.write_update(f["ino"], 1000, 42)
    # (ctime never goes back: the create's is later than this write's mtime of 42)
    assert (a["size"], a["blocks"], a["mtime_ns"], a["ctime_ns"]) == (
        1000, 2, 42, f["ctime_ns"])
    later = a["ctime_ns"] + 5
    _, a = mdt_store.write_update(f["ino"], 10, later)  # never shrinks
    assert a["size"] == 1000 and a["mtime_ns"] == a["ctime_ns"] == later
    assert mdt_store.getattr(f["ino"]) == a
    d = mkdir(mdt_store, b"d")
    with raises(errno.EISDIR):
        mdt_store.write_update(d["ino"], 1, 1)
    with raises(errno.ENOENT):
        mdt_store.write_update(9090, 1, 1)


@pytest.mark.parametrize(
    "mode,expect", [(0o6755, 0o755), (0o6745, 0o2745), (0o4700, 0o700), (0o644, 0o644)]
)
def test_write_update_clears_setid(mdt_store: MdtStore, mode: int, expect: int) -> None:
    f = mkfile(mdt_store, b"f", mode=mode)
    _, a = mdt_store.write_update(f["ino"], 1, 1)
    assert a["mode"] == stat.S_IFREG | expect


def test_touch_atime_changes_atime_only(tmp_path: Path) -> None:
    mdt_store = MdtStore(str(tmp_path / "mdt.sqlite"), clock=time.time_ns, ost_count=1)
    root = Cred(0, 0)
    _, res = mdt_store.create(root, ROOT_INO, b"f", 0o100644)
    before = res["attr"]
    transno, attr = mdt_store.touch_atime(before["ino"], before["atime_ns"] + 10**9)
    assert transno > 0
    assert attr["atime_ns"] == before["atime_ns"] + 10**9
    assert (attr["ctime_ns"], attr["mtime_ns"]) == (before["ctime_ns"], before["mtime_ns"])
    assert mdt_store.getattr(before["ino"])["atime_ns"] == attr["atime_ns"]


def test_setattr_write_size_grows_only_and_explicit_mtime_wins(mdt_store: MdtStore) -> None:
    """A writer's utimes carries the size its data gave the file (write_size): the
    size grows (never shrinks: a truncate is "size"), the explicit mtime stays."""
    f = mkfile(mdt_store, b"ws")
    _, a = mdt_store.setattr(ROOT, f["ino"], {"write_size": 5000, "mtime_ns": 7})
    assert (a["size"], a["mtime_ns"]) == (5000, 7)
    _, a = mdt_store.setattr(ROOT, f["ino"], {"write_size": 10, "mtime_ns": 9})
    assert (a["size"], a["mtime_ns"]) == (5000, 9)
    d = mdt_store.mkdir(ROOT, ROOT_INO, b"wsd", 0o755)[1]
    with raises(errno.EINVAL):
        mdt_store.setattr(ROOT, d["ino"], {"write_size": 1})
