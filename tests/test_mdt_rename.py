"""Unit tests of the MDT store's rename (servers/mdt/rename.py)."""

from __future__ import annotations

import errno
import os

from mdt_helpers import (
    ALICE,
    ROOT,
    destroyed,
    mkdir,
    mkfile,
    objects_of,
    raises,
    shared_dir,
)

from mlustre.servers.mdt.store import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    MdtStore,
)

# --------------------------------------------------------------------------- rename


def test_rename_simple(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"a")
    root_before = mdt_store.getattr(ROOT_INO)
    _, res = mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert res == {"replaced": None}
    with raises(errno.ENOENT):
        mdt_store.lookup(ROOT, ROOT_INO, b"a")
    moved = mdt_store.lookup(ROOT, ROOT_INO, b"b")
    assert moved["ino"] == f["ino"]
    assert moved["ctime_ns"] > f["ctime_ns"]
    assert mdt_store.getattr(ROOT_INO)["mtime_ns"] > root_before["mtime_ns"]
    with raises(errno.ENOENT):
        mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"c")


def test_rename_replaces_file(mdt_store: MdtStore) -> None:
    a = mkfile(mdt_store, b"a")
    b = mkfile(mdt_store, b"b", layout={"stripe_count": 2})
    _, res = mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert res == {"replaced": b["ino"]}
    assert mdt_store.lookup(ROOT, ROOT_INO, b"b")["ino"] == a["ino"]
    with raises(errno.ENOENT):
        mdt_store.getattr(b["ino"])
    assert destroyed(mdt_store) == objects_of(b)


def test_rename_replacing_hard_linked_file_keeps_it(mdt_store: MdtStore) -> None:
    mkfile(mdt_store, b"a")
    b = mkfile(mdt_store, b"b")
    mdt_store.link(ROOT, b["ino"], ROOT_INO, b"b2")
    mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert mdt_store.getattr(b["ino"])["nlink"] == 1
    assert destroyed(mdt_store) == []


def test_rename_dir_over_dirs(mdt_store: MdtStore) -> None:
    src = mkdir(mdt_store, b"src")
    empty = mkdir(mdt_store, b"empty")
    full = mkdir(mdt_store, b"full")
    mkfile(mdt_store, b"x", parent=full["ino"])
    assert mdt_store.getattr(ROOT_INO)["nlink"] == 5
    with raises(errno.ENOTEMPTY):
        mdt_store.rename(ROOT, ROOT_INO, b"src", ROOT_INO, b"full")
    _, res = mdt_store.rename(ROOT, ROOT_INO, b"src", ROOT_INO, b"empty")
    assert res == {"replaced": empty["ino"]}
    assert mdt_store.lookup(ROOT, ROOT_INO, b"empty")["ino"] == src["ino"]
    assert mdt_store.getattr(ROOT_INO)["nlink"] == 4
    with raises(errno.ENOENT):
        mdt_store.getattr(empty["ino"])


def test_rename_type_mismatch(mdt_store: MdtStore) -> None:
    mkdir(mdt_store, b"d")
    mkfile(mdt_store, b"f")
    with raises(errno.ENOTDIR):
        mdt_store.rename(ROOT, ROOT_INO, b"d", ROOT_INO, b"f")
    with raises(errno.EISDIR):
        mdt_store.rename(ROOT, ROOT_INO, b"f", ROOT_INO, b"d")


def test_rename_into_own_subtree(mdt_store: MdtStore) -> None:
    a = mkdir(mdt_store, b"a")
    b = mkdir(mdt_store, b"b", parent=a["ino"])
    c = mkdir(mdt_store, b"c", parent=b["ino"])
    with raises(errno.EINVAL):
        mdt_store.rename(ROOT, ROOT_INO, b"a", b["ino"], b"x")
    with raises(errno.EINVAL):
        mdt_store.rename(ROOT, ROOT_INO, b"a", c["ino"], b"x")
    with raises(errno.EINVAL):
        mdt_store.rename(ROOT, ROOT_INO, b"a", a["ino"], b"x")
    with raises(errno.ENOTEMPTY):  # target is an ancestor of the source
        mdt_store.rename(ROOT, b["ino"], b"c", ROOT_INO, b"a")
    mdt_store.rename(ROOT, b["ino"], b"c", ROOT_INO, b"c")  # moving up is fine
    assert mdt_store.lookup(ROOT, c["ino"], b"..")["ino"] == ROOT_INO


def test_rename_dir_between_parents_adjusts_nlink(mdt_store: MdtStore) -> None:
    p1 = mkdir(mdt_store, b"p1")
    p2 = mkdir(mdt_store, b"p2")
    d = mkdir(mdt_store, b"d", parent=p1["ino"])
    assert mdt_store.getattr(p1["ino"])["nlink"] == 3
    mdt_store.rename(ROOT, p1["ino"], b"d", p2["ino"], b"d2")
    assert mdt_store.getattr(p1["ino"])["nlink"] == 2
    assert mdt_store.getattr(p2["ino"])["nlink"] == 3
    assert mdt_store.getattr(d["ino"])["nlink"] == 2
    assert mdt_store.lookup(ROOT, d["ino"], b"..")["ino"] == p2["ino"]
    # Replacing an empty directory in another parent: the new parent's count stays put.
    mkdir(mdt_store, b"victim", parent=p1["ino"])
    mdt_store.rename(ROOT, p2["ino"], b"d2", p1["ino"], b"victim")
    assert mdt_store.getattr(p1["ino"])["nlink"] == 3
    assert mdt_store.getattr(p2["ino"])["nlink"] == 2


def test_rename_file_between_parents_keeps_nlink(mdt_store: MdtStore) -> None:
    p1 = mkdir(mdt_store, b"p1")
    p2 = mkdir(mdt_store, b"p2")
    mkfile(mdt_store, b"f", parent=p1["ino"])
    mdt_store.rename(ROOT, p1["ino"], b"f", p2["ino"], b"f")
    assert mdt_store.getattr(p1["ino"])["nlink"] == 2 == mdt_store.getattr(p2["ino"])["nlink"]
    assert [e[0] for e in mdt_store.readdir(ROOT, p2["ino"], 0, 10)] == [b"f"]
    assert mdt_store.readdir(ROOT, p1["ino"], 0, 10) == []


def test_rename_same_inode_is_noop(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"a")
    mdt_store.link(ROOT, f["ino"], ROOT_INO, b"b")
    transno, res = mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert res == {"replaced": None} and transno == mdt_store.last_transno
    assert mdt_store.lookup(ROOT, ROOT_INO, b"a")["ino"] == f["ino"]
    assert mdt_store.lookup(ROOT, ROOT_INO, b"b")["nlink"] == 2
    mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"a")
    assert mdt_store.lookup(ROOT, ROOT_INO, b"a")["ino"] == f["ino"]


def test_rename_noreplace(mdt_store: MdtStore) -> None:
    mkfile(mdt_store, b"a")
    mkfile(mdt_store, b"b")
    with raises(errno.EEXIST):
        mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE)
    mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"c", RENAME_NOREPLACE)
    assert mdt_store.lookup(ROOT, ROOT_INO, b"c")


def test_rename_exchange(mdt_store: MdtStore) -> None:
    p1 = mkdir(mdt_store, b"p1")
    p2 = mkdir(mdt_store, b"p2")
    d = mkdir(mdt_store, b"d", parent=p1["ino"])
    f = mkfile(mdt_store, b"f", parent=p2["ino"])
    _, res = mdt_store.rename(ROOT, p1["ino"], b"d", p2["ino"], b"f", RENAME_EXCHANGE)
    assert res == {"replaced": None}
    assert mdt_store.lookup(ROOT, p1["ino"], b"d")["ino"] == f["ino"]
    assert mdt_store.lookup(ROOT, p2["ino"], b"f")["ino"] == d["ino"]
    assert mdt_store.getattr(p1["ino"])["nlink"] == 2
    assert mdt_store.getattr(p2["ino"])["nlink"] == 3
    assert mdt_store.lookup(ROOT, d["ino"], b"..")["ino"] == p2["ino"]
    assert mdt_store.getattr(f["ino"])["ctime_ns"] > f["ctime_ns"]
    with raises(errno.ENOENT):
        mdt_store.rename(ROOT, p1["ino"], b"d", p2["ino"], b"missing", RENAME_EXCHANGE)


def test_rename_exchange_same_dir_and_subtree(mdt_store: MdtStore) -> None:
    a = mkdir(mdt_store, b"a")
    mkfile(mdt_store, b"f")
    mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"f", RENAME_EXCHANGE)
    assert mdt_store.lookup(ROOT, ROOT_INO, b"f")["ino"] == a["ino"]
    assert mdt_store.getattr(ROOT_INO)["nlink"] == 3
    inner = mkdir(mdt_store, b"inner", parent=a["ino"])
    with raises(errno.EINVAL):
        mdt_store.rename(ROOT, ROOT_INO, b"f", a["ino"], b"inner", RENAME_EXCHANGE)
    with raises(errno.EINVAL):
        mdt_store.rename(ROOT, a["ino"], b"inner", ROOT_INO, b"f", RENAME_EXCHANGE)
    assert mdt_store.lookup(ROOT, a["ino"], b"inner")["ino"] == inner["ino"]


def test_rename_bad_flags(mdt_store: MdtStore) -> None:
    mkfile(mdt_store, b"a")
    mkfile(mdt_store, b"b")
    with raises(errno.EINVAL):
        mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE | RENAME_EXCHANGE)
    with raises(errno.EINVAL):
        mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b", 8)


def test_rename_permissions(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    closed = mkdir(mdt_store, b"closed", mode=0o755)
    mkfile(mdt_store, b"f", parent=pub, cred=ALICE)
    with raises(errno.EACCES):
        mdt_store.rename(ALICE, pub, b"f", closed["ino"], b"f")
    mkfile(mdt_store, b"g", parent=closed["ino"])
    with raises(errno.EACCES):
        mdt_store.rename(ALICE, closed["ino"], b"g", pub, b"g")
    with raises(errno.ENOTDIR):
        mdt_store.rename(ROOT, pub, b"f", mdt_store.lookup(ROOT, pub, b"f")["ino"], b"x")


def test_rename_over_open_file_makes_orphan(mdt_store: MdtStore) -> None:
    mkfile(mdt_store, b"a")
    b = mkfile(mdt_store, b"b")
    _, o = mdt_store.open(ROOT, b["ino"], os.O_RDONLY)
    mdt_store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert mdt_store.getattr(b["ino"])["nlink"] == 0
    assert destroyed(mdt_store) == []
    mdt_store.close(o["handle"])
    assert destroyed(mdt_store) == objects_of(b)
