"""Unit tests for mlustre.servers.mdt.store: namespace, permissions, layouts, transactions."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlustre.servers.mdt.store import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    Cred,
    MdtError,
    MdtStore,
)

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


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mdt.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[MdtStore]:
    s = open_store(db_path)
    yield s
    s.close()


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


# --------------------------------------------------------------------------- basics


def test_new_store_has_root(store: MdtStore) -> None:
    a = store.getattr(ROOT_INO)
    assert set(a) == ATTR_KEYS
    assert a["ino"] == ROOT_INO == 1
    assert a["mode"] == stat.S_IFDIR | 0o755
    assert (a["uid"], a["gid"], a["nlink"], a["gen"]) == (0, 0, 2, 1)
    assert (a["size"], a["blocks"], a["layout"]) == (4096, 8, None)
    assert store.last_transno == 0 and store.last_committed == 0


def test_create_lookup_getattr_round_trip(store: MdtStore) -> None:
    pub = shared_dir(store)
    transno, res = store.create(ALICE, pub, b"f", stat.S_IFREG | 0o640)
    assert transno == 3
    assert res["created"] is True and res["handle"] is None
    a = res["attr"]
    assert set(a) == ATTR_KEYS
    assert a["ino"] > ROOT_INO and a["gen"] == 1
    assert a["mode"] == stat.S_IFREG | 0o640
    assert (a["uid"], a["gid"], a["nlink"], a["size"], a["blocks"], a["rdev"]) == (
        1000, 1000, 1, 0, 0, 0,
    )  # fmt: skip
    assert a["atime_ns"] == a["mtime_ns"] == a["ctime_ns"] > 0
    assert store.lookup(ALICE, pub, b"f") == a
    assert store.getattr(a["ino"]) == a


def test_create_mode_zero_type_means_regular(store: MdtStore) -> None:
    a = store.create(ROOT, ROOT_INO, b"f", 0o600)[1]["attr"]
    assert a["mode"] == stat.S_IFREG | 0o600
    assert a["layout"] is not None


@pytest.mark.parametrize(
    "fmt,rdev,expect_rdev",
    [(stat.S_IFIFO, 0, 0), (stat.S_IFSOCK, 5, 0), (stat.S_IFCHR, 0x0103, 0x0103),
     (stat.S_IFBLK, 0x0801, 0x0801)],
)  # fmt: skip
def test_create_special_files(store: MdtStore, fmt: int, rdev: int, expect_rdev: int) -> None:
    a = store.create(ROOT, ROOT_INO, b"node", fmt | 0o644, rdev)[1]["attr"]
    assert stat.S_IFMT(a["mode"]) == fmt
    assert a["rdev"] == expect_rdev
    assert a["layout"] is None and a["blocks"] == 0
    assert destroyed(store) == []
    store.unlink(ROOT, ROOT_INO, b"node")
    assert destroyed(store) == []  # no objects for non-regular files


def test_create_bad_types(store: MdtStore) -> None:
    with raises(errno.EPERM):
        store.create(ROOT, ROOT_INO, b"d", stat.S_IFDIR | 0o755)
    with raises(errno.EINVAL):
        store.create(ROOT, ROOT_INO, b"l", stat.S_IFLNK | 0o777)


def test_non_root_cannot_make_devices(store: MdtStore) -> None:
    pub = shared_dir(store)
    with raises(errno.EPERM):
        store.create(ALICE, pub, b"dev", stat.S_IFCHR | 0o600, 0x0101)
    store.create(ALICE, pub, b"fifo", stat.S_IFIFO | 0o600)


def test_create_existing_name(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    mkdir(store, b"d")
    store.create(ROOT, ROOT_INO, b"p", stat.S_IFIFO | 0o644)
    with raises(errno.EEXIST):
        store.create(ROOT, ROOT_INO, b"f", stat.S_IFREG | 0o644)
    with raises(errno.EEXIST):
        store.create(ROOT, ROOT_INO, b"d", stat.S_IFREG | 0o644)
    # O_CREAT without O_EXCL opens an existing regular file.
    _, res = store.create(ROOT, ROOT_INO, b"f", 0o644, exclusive=False, open_flags=os.O_RDWR)
    assert res["created"] is False and res["attr"]["ino"] == f["ino"]
    assert isinstance(res["handle"], int) and store.open_count(f["ino"]) == 1
    _, res = store.create(ROOT, ROOT_INO, b"f", 0o644, exclusive=False)
    assert res == {"attr": store.getattr(f["ino"]), "handle": None, "created": False}
    with raises(errno.EISDIR):
        store.create(ROOT, ROOT_INO, b"d", 0o644, exclusive=False, open_flags=os.O_RDWR)
    with raises(errno.EEXIST):
        store.create(ROOT, ROOT_INO, b"p", 0o644, exclusive=False)


def test_create_nonexclusive_open_checks_permission(store: MdtStore) -> None:
    pub = shared_dir(store)
    mkfile(store, b"ro", parent=pub, mode=0o444)
    with raises(errno.EACCES):
        store.create(ALICE, pub, b"ro", 0o644, exclusive=False, open_flags=os.O_WRONLY)


def test_create_with_open_skips_permission_for_creator(store: MdtStore) -> None:
    pub = shared_dir(store)
    _, res = store.create(ALICE, pub, b"f", stat.S_IFREG | 0o444, open_flags=os.O_WRONLY)
    assert res["created"] and res["handle"] is not None
    assert store.open_count(res["attr"]["ino"]) == 1


BAD_NAMES = [(b"", errno.EINVAL), (b"a/b", errno.EINVAL), (b"a\0b", errno.EINVAL),
             (b".", errno.EINVAL), (b"..", errno.EINVAL), (b"x" * 256, errno.ENAMETOOLONG)]  # fmt: skip


@pytest.mark.parametrize("name,code", BAD_NAMES)
def test_bad_names(store: MdtStore, name: bytes, code: int) -> None:
    f = mkfile(store, b"f")
    with raises(code):
        store.create(ROOT, ROOT_INO, name, 0o644)
    with raises(code):
        store.mkdir(ROOT, ROOT_INO, name, 0o755)
    with raises(code):
        store.symlink(ROOT, ROOT_INO, name, b"t")
    with raises(code):
        store.link(ROOT, f["ino"], ROOT_INO, name)
    with raises(code):
        store.rename(ROOT, ROOT_INO, b"f", ROOT_INO, name)
    if name not in (b".", b".."):
        with raises(code):
            store.lookup(ROOT, ROOT_INO, name)
        with raises(code):
            store.unlink(ROOT, ROOT_INO, name)
    assert store.last_transno == 1


def test_longest_name_is_fine(store: MdtStore) -> None:
    name = b"n" * 255
    a = mkfile(store, name)
    assert store.lookup(ROOT, ROOT_INO, name)["ino"] == a["ino"]


def test_lookup_errors(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    with raises(errno.ENOENT):
        store.lookup(ROOT, ROOT_INO, b"missing")
    with raises(errno.ENOTDIR):
        store.lookup(ROOT, f["ino"], b"x")
    with raises(errno.ENOENT):
        store.lookup(ROOT, 9999, b"x")
    with raises(errno.ENOENT):
        store.getattr(9999)


def test_lookup_dot_and_dotdot(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    sub = mkdir(store, b"sub", parent=d["ino"])
    assert store.lookup(ROOT, sub["ino"], b".")["ino"] == sub["ino"]
    assert store.lookup(ROOT, sub["ino"], b"..")["ino"] == d["ino"]
    assert store.lookup(ROOT, ROOT_INO, b"..")["ino"] == ROOT_INO


def test_inode_numbers_never_reused(store: MdtStore) -> None:
    a = mkfile(store, b"a")
    store.unlink(ROOT, ROOT_INO, b"a")
    b = mkfile(store, b"a")
    assert b["ino"] > a["ino"]


def test_parent_times_follow_entries(store: MdtStore) -> None:
    before = store.getattr(ROOT_INO)
    mkfile(store, b"f")
    after_create = store.getattr(ROOT_INO)
    assert after_create["mtime_ns"] > before["mtime_ns"]
    assert after_create["ctime_ns"] == after_create["mtime_ns"]
    store.unlink(ROOT, ROOT_INO, b"f")
    after_unlink = store.getattr(ROOT_INO)
    assert after_unlink["mtime_ns"] > after_create["mtime_ns"]


def test_statfs_counts_inodes(store: MdtStore) -> None:
    assert store.statfs() == {"files": 1, "ffree": 2**32 - 1, "namemax": 255}
    mkfile(store, b"a")
    mkdir(store, b"d")
    assert store.statfs()["files"] == 3
    store.unlink(ROOT, ROOT_INO, b"a")
    assert store.statfs()["files"] == 2


# --------------------------------------------------------------------------- mkdir / symlink / link


def test_mkdir(store: MdtStore) -> None:
    d = mkdir(store, b"d", cred=ROOT, mode=0o6755)
    assert d["mode"] == stat.S_IFDIR | 0o755  # Linux mkdir keeps only rwx and sticky
    assert (d["nlink"], d["size"], d["blocks"], d["layout"]) == (2, 4096, 8, None)
    assert store.getattr(ROOT_INO)["nlink"] == 3
    mkdir(store, b"sub", parent=d["ino"])
    assert store.getattr(d["ino"])["nlink"] == 3
    assert store.getattr(ROOT_INO)["nlink"] == 3
    with raises(errno.EEXIST):
        store.mkdir(ROOT, ROOT_INO, b"d", 0o755)
    sticky = mkdir(store, b"t", mode=0o1777)
    assert sticky["mode"] == stat.S_IFDIR | 0o1777


def test_symlink_and_readlink(store: MdtStore) -> None:
    pub = shared_dir(store)
    _, a = store.symlink(ALICE, pub, b"l", b"some/target")
    assert a["mode"] == stat.S_IFLNK | 0o777
    assert (a["size"], a["blocks"], a["nlink"], a["uid"]) == (11, 1, 1, 1000)
    assert store.readlink(a["ino"]) == b"some/target"
    f = mkfile(store, b"f")
    with raises(errno.EINVAL):
        store.readlink(f["ino"])
    with raises(errno.ENOENT):
        store.readlink(12345)
    with raises(errno.EEXIST):
        store.symlink(ROOT, pub, b"l", b"x")


def test_symlink_target_limits(store: MdtStore) -> None:
    _, a = store.symlink(ROOT, ROOT_INO, b"long", b"t" * 4095)
    assert store.readlink(a["ino"]) == b"t" * 4095
    with raises(errno.ENAMETOOLONG):
        store.symlink(ROOT, ROOT_INO, b"toolong", b"t" * 4096)
    with raises(errno.ENOENT):
        store.symlink(ROOT, ROOT_INO, b"empty", b"")


def test_hard_links(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    f = mkfile(store, b"f")
    _, a = store.link(ROOT, f["ino"], d["ino"], b"g")
    assert a["ino"] == f["ino"] and a["nlink"] == 2
    assert a["ctime_ns"] > f["ctime_ns"]
    assert store.lookup(ROOT, d["ino"], b"g")["ino"] == f["ino"]
    store.unlink(ROOT, ROOT_INO, b"f")
    assert store.getattr(f["ino"])["nlink"] == 1
    assert destroyed(store) == []
    store.unlink(ROOT, d["ino"], b"g")
    with raises(errno.ENOENT):
        store.getattr(f["ino"])
    assert destroyed(store) == objects_of(f)


def test_link_errors(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    f = mkfile(store, b"f")
    with raises(errno.EPERM):
        store.link(ROOT, d["ino"], ROOT_INO, b"d2")
    with raises(errno.EEXIST):
        store.link(ROOT, f["ino"], ROOT_INO, b"d")
    with raises(errno.ENOENT):
        store.link(ROOT, 4242, ROOT_INO, b"x")
    with raises(errno.ENOTDIR):
        store.link(ROOT, f["ino"], f["ino"], b"x")
    with raises(errno.EACCES):
        store.link(ALICE, f["ino"], d["ino"], b"x")


def test_link_to_orphan_fails(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    _, h = store.open(ROOT, f["ino"], os.O_RDONLY)
    store.unlink(ROOT, ROOT_INO, b"f")
    with raises(errno.ENOENT):
        store.link(ROOT, f["ino"], ROOT_INO, b"again")


# --------------------------------------------------------------------------- unlink / rmdir


def test_unlink_errors(store: MdtStore) -> None:
    mkdir(store, b"d")
    with raises(errno.EISDIR):
        store.unlink(ROOT, ROOT_INO, b"d")
    with raises(errno.ENOENT):
        store.unlink(ROOT, ROOT_INO, b"nope")
    store.symlink(ROOT, ROOT_INO, b"l", b"d")
    _, res = store.unlink(ROOT, ROOT_INO, b"l")
    with raises(errno.ENOENT):
        store.getattr(res["ino"])


def test_unlink_logs_every_stripe(store: MdtStore) -> None:
    f = mkfile(store, b"f", layout={"stripe_count": 3})
    _, res = store.unlink(ROOT, ROOT_INO, b"f")
    assert res == {"ino": f["ino"]}
    assert destroyed(store) == objects_of(f)
    assert len(destroyed(store)) == 3


def test_rmdir(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    mkfile(store, b"f", parent=d["ino"])
    mkfile(store, b"plain")
    with raises(errno.ENOTEMPTY):
        store.rmdir(ROOT, ROOT_INO, b"d")
    with raises(errno.ENOTDIR):
        store.rmdir(ROOT, ROOT_INO, b"plain")
    with raises(errno.ENOENT):
        store.rmdir(ROOT, ROOT_INO, b"nope")
    store.unlink(ROOT, d["ino"], b"f")
    assert store.getattr(ROOT_INO)["nlink"] == 3
    _, res = store.rmdir(ROOT, ROOT_INO, b"d")
    assert res == {"ino": d["ino"]}
    assert store.getattr(ROOT_INO)["nlink"] == 2
    with raises(errno.ENOENT):
        store.getattr(d["ino"])


def test_rmdir_dot_names_and_root(store: MdtStore) -> None:
    with raises(errno.EINVAL):
        store.rmdir(ROOT, ROOT_INO, b".")
    with raises(errno.ENOTEMPTY):
        store.rmdir(ROOT, ROOT_INO, b"..")
    assert store.getattr(ROOT_INO)["nlink"] == 2


def test_removed_open_directory_refuses_new_entries(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    _, h = store.open(ROOT, d["ino"], os.O_RDONLY)
    store.rmdir(ROOT, ROOT_INO, b"d")
    assert store.getattr(d["ino"])["nlink"] == 0
    with raises(errno.ENOENT):
        store.create(ROOT, d["ino"], b"f", 0o644)
    assert store.readdir(ROOT, d["ino"], 0, 10) == []
    store.close(h["handle"])
    with raises(errno.ENOENT):
        store.getattr(d["ino"])


# --------------------------------------------------------------------------- permissions

PERM_CASES = [
    # (cred, owner uid, gid, mode, mask, allowed)
    (ALICE, 1000, 1000, 0o400, os.R_OK, True),
    (ALICE, 1000, 1000, 0o400, os.W_OK, False),
    (ALICE, 1000, 1000, 0o077, os.R_OK, False),  # owner bits win even if group/other allow
    (ALICE, 1000, 1000, 0o700, os.R_OK | os.W_OK | os.X_OK, True),
    (BOB, 1000, 1001, 0o040, os.R_OK, True),  # primary group
    (BOB, 1000, 2000, 0o020, os.W_OK, True),  # supplementary group
    (BOB, 1000, 2000, 0o704, os.R_OK, False),  # group bits win over other
    (BOB, 1000, 3000, 0o004, os.R_OK, True),  # other
    (BOB, 1000, 3000, 0o770, os.R_OK, False),
    (CAROL, 1000, 2000, 0o070, os.R_OK, False),  # not in the group
    (ROOT, 1000, 1000, 0o000, os.R_OK | os.W_OK, True),
    (ROOT, 1000, 1000, 0o000, os.X_OK, False),  # root needs some x bit on a file
    (ROOT, 1000, 1000, 0o001, os.X_OK, True),
]


@pytest.mark.parametrize("cred,uid,gid,mode,mask,allowed", PERM_CASES)
def test_permission_matrix(
    store: MdtStore, cred: Cred, uid: int, gid: int, mode: int, mask: int, allowed: bool
) -> None:
    f = mkfile(store, b"f")
    store.setattr(ROOT, f["ino"], {"uid": uid, "gid": gid, "mode": mode})
    if allowed:
        store.access(cred, f["ino"], mask)
    else:
        with raises(errno.EACCES):
            store.access(cred, f["ino"], mask)


def test_access_misc(store: MdtStore) -> None:
    d = mkdir(store, b"d", mode=0o000)
    store.access(ROOT, d["ino"], os.X_OK)  # root searches any directory
    store.access(ALICE, d["ino"], 0)  # F_OK: exists
    with raises(errno.EINVAL):
        store.access(ALICE, d["ino"], 0o100)
    with raises(errno.ENOENT):
        store.access(ALICE, 777, os.R_OK)


def test_directory_permissions(store: MdtStore) -> None:
    d = mkdir(store, b"d", mode=0o755)
    mkfile(store, b"f", parent=d["ino"])
    store.lookup(ALICE, d["ino"], b"f")
    store.readdir(ALICE, d["ino"], 0, 10)
    with raises(errno.EACCES):
        store.create(ALICE, d["ino"], b"g", 0o644)
    with raises(errno.EACCES):
        store.mkdir(ALICE, d["ino"], b"g", 0o755)
    with raises(errno.EACCES):
        store.symlink(ALICE, d["ino"], b"g", b"t")
    with raises(errno.EACCES):
        store.unlink(ALICE, d["ino"], b"f")
    store.setattr(ROOT, d["ino"], {"mode": 0o733})  # write+search but no read
    with raises(errno.EACCES):
        store.readdir(ALICE, d["ino"], 0, 10)
    store.create(ALICE, d["ino"], b"g", 0o644)
    store.setattr(ROOT, d["ino"], {"mode": 0o766})  # read+write but no search
    with raises(errno.EACCES):
        store.lookup(ALICE, d["ino"], b"f")
    with raises(errno.EACCES):
        store.create(ALICE, d["ino"], b"h", 0o644)
    assert [e[0] for e in store.readdir(ALICE, d["ino"], 0, 10)] == [b"f", b"g"]


def test_open_permissions(store: MdtStore) -> None:
    pub = shared_dir(store)
    ro = mkfile(store, b"ro", parent=pub, mode=0o444)
    wo = mkfile(store, b"wo", parent=pub, mode=0o222)
    d = mkdir(store, b"d", parent=pub)
    store.open(ALICE, ro["ino"], os.O_RDONLY)
    with raises(errno.EACCES):
        store.open(ALICE, ro["ino"], os.O_WRONLY)
    with raises(errno.EACCES):
        store.open(ALICE, ro["ino"], os.O_RDWR)
    with raises(errno.EACCES):
        store.open(ALICE, ro["ino"], os.O_RDONLY | os.O_TRUNC)
    store.open(ALICE, wo["ino"], os.O_WRONLY)
    with raises(errno.EACCES):
        store.open(ALICE, wo["ino"], os.O_RDONLY)
    store.open(ALICE, d["ino"], os.O_RDONLY)
    with raises(errno.EISDIR):
        store.open(ROOT, d["ino"], os.O_WRONLY)
    with raises(errno.EISDIR):
        store.open(ROOT, d["ino"], os.O_RDWR)
    with raises(errno.ENOENT):
        store.open(ROOT, 999, os.O_RDONLY)
    assert store.open_count(ro["ino"]) == 1


def test_sticky_directory(store: MdtStore) -> None:
    tmp = shared_dir(store, b"tmp", 0o1777)
    mkfile(store, b"a1", parent=tmp, cred=ALICE)
    mkfile(store, b"a2", parent=tmp, cred=ALICE)
    mkfile(store, b"a3", parent=tmp, cred=ALICE)
    mkfile(store, b"b1", parent=tmp, cred=BOB)
    mkdir(store, b"adir", parent=tmp, cred=ALICE)
    with raises(errno.EPERM):
        store.unlink(BOB, tmp, b"a1")
    with raises(errno.EPERM):
        store.rmdir(BOB, tmp, b"adir")
    with raises(errno.EPERM):
        store.rename(BOB, tmp, b"a1", tmp, b"mine")
    with raises(errno.EPERM):  # replacing someone else's file in a sticky directory
        store.rename(BOB, tmp, b"b1", tmp, b"a1")
    store.unlink(ALICE, tmp, b"a1")  # the entry's owner
    store.rmdir(ALICE, tmp, b"adir")
    store.setattr(ROOT, tmp, {"uid": CAROL.uid})
    store.unlink(CAROL, tmp, b"a2")  # the directory's owner
    store.unlink(ROOT, tmp, b"a3")  # root
    store.rename(BOB, tmp, b"b1", tmp, b"b2")
    assert [e[0] for e in store.readdir(ROOT, tmp, 0, 10)] == [b"b2"]


def test_setgid_directory_inheritance(store: MdtStore) -> None:
    g = mkdir(store, b"g", mode=0o777)
    store.setattr(ROOT, g["ino"], {"gid": 2000, "mode": 0o2777})
    f = mkfile(store, b"f", parent=g["ino"], cred=ALICE)
    assert (f["uid"], f["gid"]) == (1000, 2000)
    sub = mkdir(store, b"sub", parent=g["ino"], cred=ALICE, mode=0o755)
    assert sub["gid"] == 2000 and sub["mode"] == stat.S_IFDIR | 0o2755
    # A non-member asking for S_ISGID on a new file loses it; a member keeps it.
    f2 = mkfile(store, b"f2", parent=g["ino"], cred=ALICE, mode=0o2755)
    assert f2["mode"] == stat.S_IFREG | 0o755
    f3 = mkfile(store, b"f3", parent=g["ino"], cred=BOB, mode=0o2755)
    assert f3["mode"] == stat.S_IFREG | 0o2755 and f3["gid"] == 2000
    l_attr = store.symlink(ALICE, g["ino"], b"l", b"t")[1]
    assert l_attr["gid"] == 2000
    plain = mkfile(store, b"plain", cred=ROOT)
    assert plain["gid"] == 0


def test_new_file_sgid_kept_for_member_outside_sgid_dir(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=ALICE, mode=0o2755)
    assert f["mode"] & stat.S_ISGID  # ALICE is in her own primary group
    assert f["gid"] == ALICE.gid


# --------------------------------------------------------------------------- setattr


def test_chmod_rules(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=ALICE, mode=0o644)
    _, a = store.setattr(ALICE, f["ino"], {"mode": 0o4700})
    assert a["mode"] == stat.S_IFREG | 0o4700
    assert a["ctime_ns"] > f["ctime_ns"]
    with raises(errno.EPERM):
        store.setattr(BOB, f["ino"], {"mode": 0o777})
    _, a = store.setattr(ROOT, f["ino"], {"mode": stat.S_IFDIR | 0o600})
    assert a["mode"] == stat.S_IFREG | 0o600  # the file type never changes


def test_chmod_sgid_needs_group_membership(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=BOB)
    store.setattr(ROOT, f["ino"], {"gid": 3000})
    _, a = store.setattr(BOB, f["ino"], {"mode": 0o2755})
    assert a["mode"] == stat.S_IFREG | 0o755
    store.setattr(ROOT, f["ino"], {"gid": 2000})  # a supplementary group of BOB
    _, a = store.setattr(BOB, f["ino"], {"mode": 0o2755})
    assert a["mode"] == stat.S_IFREG | 0o2755
    store.setattr(ROOT, f["ino"], {"gid": 3000})
    _, a = store.setattr(ROOT, f["ino"], {"mode": 0o2755})
    assert a["mode"] == stat.S_IFREG | 0o2755


def test_chown_rules(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=BOB)
    with raises(errno.EPERM):
        store.setattr(BOB, f["ino"], {"uid": ALICE.uid})
    store.setattr(BOB, f["ino"], {"uid": BOB.uid})  # a no-op chown is allowed
    _, a = store.setattr(BOB, f["ino"], {"gid": 2000})  # owner, to a group it is in
    assert a["gid"] == 2000
    with raises(errno.EPERM):
        store.setattr(BOB, f["ino"], {"gid": 3000})
    with raises(errno.EPERM):
        store.setattr(ALICE, f["ino"], {"gid": ALICE.gid})  # not the owner
    _, a = store.setattr(ROOT, f["ino"], {"uid": 5, "gid": 6})
    assert (a["uid"], a["gid"]) == (5, 6)


@pytest.mark.parametrize(
    "mode,expect",
    [(0o6755, 0o755), (0o6745, 0o2745), (0o4755, 0o755), (0o2710, 0o710), (0o755, 0o755)],
)
def test_chown_by_non_root_clears_setid(store: MdtStore, mode: int, expect: int) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=BOB)
    store.setattr(ROOT, f["ino"], {"mode": mode})
    _, a = store.setattr(BOB, f["ino"], {"gid": 2000})
    assert a["mode"] == stat.S_IFREG | expect


def test_chown_by_root_and_dirs_keep_setid(store: MdtStore) -> None:
    f = mkfile(store, b"f", mode=0o6755)
    _, a = store.setattr(ROOT, f["ino"], {"uid": 7})
    assert a["mode"] == stat.S_IFREG | 0o6755
    pub = shared_dir(store)
    d = mkdir(store, b"d", parent=pub, cred=BOB)
    store.setattr(BOB, d["ino"], {"mode": 0o2775})
    _, a = store.setattr(BOB, d["ino"], {"gid": 2000})
    assert a["mode"] == stat.S_IFDIR | 0o2775


def test_truncate_via_setattr(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=ALICE, mode=0o644)
    _, a = store.setattr(ALICE, f["ino"], {"size": 1000})
    assert (a["size"], a["blocks"]) == (1000, 2)
    assert a["mtime_ns"] == a["ctime_ns"] > f["mtime_ns"]
    with raises(errno.EACCES):
        store.setattr(BOB, f["ino"], {"size": 0})
    _, a = store.setattr(BOB, f["ino"], {"size": 10}, via_handle=True)
    assert a["size"] == 10
    d = mkdir(store, b"d")
    with raises(errno.EISDIR):
        store.setattr(ROOT, d["ino"], {"size": 0})
    p = store.create(ROOT, ROOT_INO, b"p", stat.S_IFIFO | 0o644)[1]["attr"]
    with raises(errno.EINVAL):
        store.setattr(ROOT, p["ino"], {"size": 0})
    with raises(errno.EINVAL):
        store.setattr(ROOT, f["ino"], {"size": -1})


def test_set_times(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=ALICE, mode=0o666)
    _, a = store.setattr(ALICE, f["ino"], {"atime_ns": 111, "mtime_ns": 222})
    assert (a["atime_ns"], a["mtime_ns"]) == (111, 222)
    assert a["ctime_ns"] > f["ctime_ns"]
    with raises(errno.EPERM):  # explicit times: owner only, even with write permission
        store.setattr(BOB, f["ino"], {"mtime_ns": 5})
    _, a = store.setattr(BOB, f["ino"], {"atime_now": True, "mtime_now": True})
    assert a["atime_ns"] > 111 and a["mtime_ns"] > 222
    store.setattr(ALICE, f["ino"], {"mode": 0o644})
    with raises(errno.EACCES):
        store.setattr(BOB, f["ino"], {"mtime_now": True})
    _, a = store.setattr(ROOT, f["ino"], {"atime_ns": 1})
    assert a["atime_ns"] == 1


def test_setattr_misc(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    with raises(errno.EINVAL):
        store.setattr(ROOT, f["ino"], {"colour": 1})
    with raises(errno.ENOENT):
        store.setattr(ROOT, 4040, {"mode": 0o600})
    _, a = store.setattr(ROOT, f["ino"], {})
    assert a == store.getattr(f["ino"]) == f


# --------------------------------------------------------------------------- xattrs


def test_xattr_round_trip_and_flags(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    assert store.listxattr(ROOT, f["ino"]) == []
    with raises(errno.ENODATA):
        store.getxattr(ROOT, f["ino"], b"user.a")
    transno, res = store.setxattr(ROOT, f["ino"], b"user.a", b"1")
    assert res == {} and transno == store.last_transno
    assert store.getattr(f["ino"])["ctime_ns"] > f["ctime_ns"]
    store.setxattr(ROOT, f["ino"], b"user.b", b"\x00bin")
    assert store.getxattr(ROOT, f["ino"], b"user.b") == b"\x00bin"
    assert store.listxattr(ROOT, f["ino"]) == [b"user.a", b"user.b"]
    with raises(errno.EEXIST):
        store.setxattr(ROOT, f["ino"], b"user.a", b"2", XATTR_CREATE)
    with raises(errno.ENODATA):
        store.setxattr(ROOT, f["ino"], b"user.c", b"2", XATTR_REPLACE)
    store.setxattr(ROOT, f["ino"], b"user.a", b"2", XATTR_REPLACE)
    store.setxattr(ROOT, f["ino"], b"user.c", b"3", XATTR_CREATE)
    assert store.getxattr(ROOT, f["ino"], b"user.a") == b"2"
    with raises(errno.EINVAL):
        store.setxattr(ROOT, f["ino"], b"user.a", b"2", XATTR_CREATE | XATTR_REPLACE)
    store.removexattr(ROOT, f["ino"], b"user.a")
    with raises(errno.ENODATA):
        store.removexattr(ROOT, f["ino"], b"user.a")
    assert store.listxattr(ROOT, f["ino"]) == [b"user.b", b"user.c"]


def test_xattr_permissions(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=ALICE, mode=0o600)
    store.setxattr(ALICE, f["ino"], b"user.x", b"v")
    store.setattr(ALICE, f["ino"], {"mode": 0o400})
    store.setxattr(ALICE, f["ino"], b"user.y", b"v")  # owner without write permission
    with raises(errno.EACCES):
        store.setxattr(BOB, f["ino"], b"user.z", b"v")
    with raises(errno.EACCES):
        store.removexattr(BOB, f["ino"], b"user.x")
    with raises(errno.EACCES):  # user.* values need read permission
        store.getxattr(BOB, f["ino"], b"user.x")
    assert store.listxattr(BOB, f["ino"]) == [b"user.x", b"user.y"]
    store.setattr(ALICE, f["ino"], {"mode": 0o666})
    store.setxattr(BOB, f["ino"], b"user.z", b"v")  # write permission suffices
    assert store.getxattr(BOB, f["ino"], b"user.z") == b"v"
    store.setxattr(ROOT, f["ino"], b"trusted.t", b"v")


def test_xattr_limits(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    with raises(errno.EINVAL):
        store.setxattr(ROOT, f["ino"], b"", b"v")
    with raises(errno.ERANGE):
        store.setxattr(ROOT, f["ino"], b"user." + b"n" * 300, b"v")
    with raises(errno.E2BIG):
        store.setxattr(ROOT, f["ino"], b"user.big", b"v" * 65537)
    with raises(errno.ENOENT):
        store.setxattr(ROOT, 5555, b"user.a", b"v")


# --------------------------------------------------------------------------- rename


def test_rename_simple(store: MdtStore) -> None:
    f = mkfile(store, b"a")
    root_before = store.getattr(ROOT_INO)
    _, res = store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert res == {"replaced": None}
    with raises(errno.ENOENT):
        store.lookup(ROOT, ROOT_INO, b"a")
    moved = store.lookup(ROOT, ROOT_INO, b"b")
    assert moved["ino"] == f["ino"]
    assert moved["ctime_ns"] > f["ctime_ns"]
    assert store.getattr(ROOT_INO)["mtime_ns"] > root_before["mtime_ns"]
    with raises(errno.ENOENT):
        store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"c")


def test_rename_replaces_file(store: MdtStore) -> None:
    a = mkfile(store, b"a")
    b = mkfile(store, b"b", layout={"stripe_count": 2})
    _, res = store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert res == {"replaced": b["ino"]}
    assert store.lookup(ROOT, ROOT_INO, b"b")["ino"] == a["ino"]
    with raises(errno.ENOENT):
        store.getattr(b["ino"])
    assert destroyed(store) == objects_of(b)


def test_rename_replacing_hard_linked_file_keeps_it(store: MdtStore) -> None:
    mkfile(store, b"a")
    b = mkfile(store, b"b")
    store.link(ROOT, b["ino"], ROOT_INO, b"b2")
    store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert store.getattr(b["ino"])["nlink"] == 1
    assert destroyed(store) == []


def test_rename_dir_over_dirs(store: MdtStore) -> None:
    src = mkdir(store, b"src")
    empty = mkdir(store, b"empty")
    full = mkdir(store, b"full")
    mkfile(store, b"x", parent=full["ino"])
    assert store.getattr(ROOT_INO)["nlink"] == 5
    with raises(errno.ENOTEMPTY):
        store.rename(ROOT, ROOT_INO, b"src", ROOT_INO, b"full")
    _, res = store.rename(ROOT, ROOT_INO, b"src", ROOT_INO, b"empty")
    assert res == {"replaced": empty["ino"]}
    assert store.lookup(ROOT, ROOT_INO, b"empty")["ino"] == src["ino"]
    assert store.getattr(ROOT_INO)["nlink"] == 4
    with raises(errno.ENOENT):
        store.getattr(empty["ino"])


def test_rename_type_mismatch(store: MdtStore) -> None:
    mkdir(store, b"d")
    mkfile(store, b"f")
    with raises(errno.ENOTDIR):
        store.rename(ROOT, ROOT_INO, b"d", ROOT_INO, b"f")
    with raises(errno.EISDIR):
        store.rename(ROOT, ROOT_INO, b"f", ROOT_INO, b"d")


def test_rename_into_own_subtree(store: MdtStore) -> None:
    a = mkdir(store, b"a")
    b = mkdir(store, b"b", parent=a["ino"])
    c = mkdir(store, b"c", parent=b["ino"])
    with raises(errno.EINVAL):
        store.rename(ROOT, ROOT_INO, b"a", b["ino"], b"x")
    with raises(errno.EINVAL):
        store.rename(ROOT, ROOT_INO, b"a", c["ino"], b"x")
    with raises(errno.EINVAL):
        store.rename(ROOT, ROOT_INO, b"a", a["ino"], b"x")
    with raises(errno.ENOTEMPTY):  # target is an ancestor of the source
        store.rename(ROOT, b["ino"], b"c", ROOT_INO, b"a")
    store.rename(ROOT, b["ino"], b"c", ROOT_INO, b"c")  # moving up is fine
    assert store.lookup(ROOT, c["ino"], b"..")["ino"] == ROOT_INO


def test_rename_dir_between_parents_adjusts_nlink(store: MdtStore) -> None:
    p1 = mkdir(store, b"p1")
    p2 = mkdir(store, b"p2")
    d = mkdir(store, b"d", parent=p1["ino"])
    assert store.getattr(p1["ino"])["nlink"] == 3
    store.rename(ROOT, p1["ino"], b"d", p2["ino"], b"d2")
    assert store.getattr(p1["ino"])["nlink"] == 2
    assert store.getattr(p2["ino"])["nlink"] == 3
    assert store.getattr(d["ino"])["nlink"] == 2
    assert store.lookup(ROOT, d["ino"], b"..")["ino"] == p2["ino"]
    # Replacing an empty directory in another parent: the new parent's count stays put.
    mkdir(store, b"victim", parent=p1["ino"])
    store.rename(ROOT, p2["ino"], b"d2", p1["ino"], b"victim")
    assert store.getattr(p1["ino"])["nlink"] == 3
    assert store.getattr(p2["ino"])["nlink"] == 2


def test_rename_file_between_parents_keeps_nlink(store: MdtStore) -> None:
    p1 = mkdir(store, b"p1")
    p2 = mkdir(store, b"p2")
    mkfile(store, b"f", parent=p1["ino"])
    store.rename(ROOT, p1["ino"], b"f", p2["ino"], b"f")
    assert store.getattr(p1["ino"])["nlink"] == 2 == store.getattr(p2["ino"])["nlink"]
    assert [e[0] for e in store.readdir(ROOT, p2["ino"], 0, 10)] == [b"f"]
    assert store.readdir(ROOT, p1["ino"], 0, 10) == []


def test_rename_same_inode_is_noop(store: MdtStore) -> None:
    f = mkfile(store, b"a")
    store.link(ROOT, f["ino"], ROOT_INO, b"b")
    transno, res = store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert res == {"replaced": None} and transno == store.last_transno
    assert store.lookup(ROOT, ROOT_INO, b"a")["ino"] == f["ino"]
    assert store.lookup(ROOT, ROOT_INO, b"b")["nlink"] == 2
    store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"a")
    assert store.lookup(ROOT, ROOT_INO, b"a")["ino"] == f["ino"]


def test_rename_noreplace(store: MdtStore) -> None:
    mkfile(store, b"a")
    mkfile(store, b"b")
    with raises(errno.EEXIST):
        store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE)
    store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"c", RENAME_NOREPLACE)
    assert store.lookup(ROOT, ROOT_INO, b"c")


def test_rename_exchange(store: MdtStore) -> None:
    p1 = mkdir(store, b"p1")
    p2 = mkdir(store, b"p2")
    d = mkdir(store, b"d", parent=p1["ino"])
    f = mkfile(store, b"f", parent=p2["ino"])
    _, res = store.rename(ROOT, p1["ino"], b"d", p2["ino"], b"f", RENAME_EXCHANGE)
    assert res == {"replaced": None}
    assert store.lookup(ROOT, p1["ino"], b"d")["ino"] == f["ino"]
    assert store.lookup(ROOT, p2["ino"], b"f")["ino"] == d["ino"]
    assert store.getattr(p1["ino"])["nlink"] == 2
    assert store.getattr(p2["ino"])["nlink"] == 3
    assert store.lookup(ROOT, d["ino"], b"..")["ino"] == p2["ino"]
    assert store.getattr(f["ino"])["ctime_ns"] > f["ctime_ns"]
    with raises(errno.ENOENT):
        store.rename(ROOT, p1["ino"], b"d", p2["ino"], b"missing", RENAME_EXCHANGE)


def test_rename_exchange_same_dir_and_subtree(store: MdtStore) -> None:
    a = mkdir(store, b"a")
    mkfile(store, b"f")
    store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"f", RENAME_EXCHANGE)
    assert store.lookup(ROOT, ROOT_INO, b"f")["ino"] == a["ino"]
    assert store.getattr(ROOT_INO)["nlink"] == 3
    inner = mkdir(store, b"inner", parent=a["ino"])
    with raises(errno.EINVAL):
        store.rename(ROOT, ROOT_INO, b"f", a["ino"], b"inner", RENAME_EXCHANGE)
    with raises(errno.EINVAL):
        store.rename(ROOT, a["ino"], b"inner", ROOT_INO, b"f", RENAME_EXCHANGE)
    assert store.lookup(ROOT, a["ino"], b"inner")["ino"] == inner["ino"]


def test_rename_bad_flags(store: MdtStore) -> None:
    mkfile(store, b"a")
    mkfile(store, b"b")
    with raises(errno.EINVAL):
        store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE | RENAME_EXCHANGE)
    with raises(errno.EINVAL):
        store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b", 8)


def test_rename_permissions(store: MdtStore) -> None:
    pub = shared_dir(store)
    closed = mkdir(store, b"closed", mode=0o755)
    mkfile(store, b"f", parent=pub, cred=ALICE)
    with raises(errno.EACCES):
        store.rename(ALICE, pub, b"f", closed["ino"], b"f")
    mkfile(store, b"g", parent=closed["ino"])
    with raises(errno.EACCES):
        store.rename(ALICE, closed["ino"], b"g", pub, b"g")
    with raises(errno.ENOTDIR):
        store.rename(ROOT, pub, b"f", store.lookup(ROOT, pub, b"f")["ino"], b"x")


def test_rename_over_open_file_makes_orphan(store: MdtStore) -> None:
    mkfile(store, b"a")
    b = mkfile(store, b"b")
    _, o = store.open(ROOT, b["ino"], os.O_RDONLY)
    store.rename(ROOT, ROOT_INO, b"a", ROOT_INO, b"b")
    assert store.getattr(b["ino"])["nlink"] == 0
    assert destroyed(store) == []
    store.close(o["handle"])
    assert destroyed(store) == objects_of(b)


# --------------------------------------------------------------------------- readdir


def test_readdir_basics(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    names = [b"c", b"a", b"b"]
    inos = [mkfile(store, n, parent=d["ino"])["ino"] for n in names]
    ents = store.readdir(ROOT, d["ino"], 0, 100)
    assert [e[0] for e in ents] == names  # creation order, no "." or ".."
    assert [e[1]["ino"] for e in ents] == inos
    assert all(set(e[1]) == ATTR_KEYS for e in ents)
    cookies = [e[2] for e in ents]
    assert cookies == sorted(cookies) and len(set(cookies)) == 3
    assert store.readdir(ROOT, d["ino"], cookies[0], 1)[0][0] == b"a"
    assert store.readdir(ROOT, d["ino"], cookies[-1], 100) == []
    assert store.readdir(ROOT, d["ino"], 0, 0) == []
    with raises(errno.ENOTDIR):
        store.readdir(ROOT, inos[0], 0, 10)
    with raises(errno.ENOENT):
        store.readdir(ROOT, 31337, 0, 10)


def test_readdir_cookies_stable_across_changes(store: MdtStore) -> None:
    d = mkdir(store, b"d")["ino"]
    for i in range(10):
        mkfile(store, b"f%d" % i, parent=d)
    first = store.readdir(ROOT, d, 0, 4)
    assert [e[0] for e in first] == [b"f0", b"f1", b"f2", b"f3"]
    cookie = first[-1][2]
    store.unlink(ROOT, d, b"f1")  # already returned
    store.unlink(ROOT, d, b"f3")  # the cookie's own entry
    store.unlink(ROOT, d, b"f6")  # not yet returned
    mkfile(store, b"new", parent=d)
    store.rename(ROOT, d, b"f0", d, b"f0-renamed")  # keeps its id: not seen again
    rest: list[bytes] = []
    while True:
        page = store.readdir(ROOT, d, cookie, 2)
        if not page:
            break
        rest += [e[0] for e in page]
        cookie = page[-1][2]
    assert rest == [b"f4", b"f5", b"f7", b"f8", b"f9", b"new"]


def test_readdir_large_directory_paged(store: MdtStore) -> None:
    d = mkdir(store, b"big")["ino"]
    expected = {b"entry-%05d" % i for i in range(10_000)}
    for name in sorted(expected):
        store.create(ROOT, d, name, stat.S_IFREG | 0o644)
    seen: list[bytes] = []
    cookie = 0
    pages = 0
    while True:
        page = store.readdir(ROOT, d, cookie, 100)
        if not page:
            break
        assert len(page) <= 100
        pages += 1
        seen += [name for name, _, _ in page]
        cookie = page[-1][2]
    assert pages == 100
    assert len(seen) == len(set(seen)) == 10_000
    assert set(seen) == expected


# --------------------------------------------------------------------------- open / close / orphans


def test_open_and_trunc(store: MdtStore) -> None:
    f = mkfile(store, b"f", mode=0o6755)
    store.write_update(f["ino"], 5000, 123)
    store.setattr(ROOT, f["ino"], {"mode": 0o6755})
    _, res = store.open(ROOT, f["ino"], os.O_RDONLY)
    assert res["truncated"] is False and res["attr"]["size"] == 5000
    _, res2 = store.open(ALICE, f["ino"], os.O_RDONLY)
    assert res2["handle"] != res["handle"]
    assert store.open_count(f["ino"]) == 2
    _, res3 = store.open(ROOT, f["ino"], os.O_WRONLY | os.O_TRUNC)
    assert res3["truncated"] is True
    a = res3["attr"]
    assert (a["size"], a["blocks"]) == (0, 0)
    assert a["mtime_ns"] == a["ctime_ns"] > 123
    assert a["mode"] == stat.S_IFREG | 0o6755  # root keeps the set-id bits
    assert store.getattr(f["ino"]) == a
    p = store.create(ROOT, ROOT_INO, b"p", stat.S_IFIFO | 0o666)[1]["attr"]
    assert store.open(ROOT, p["ino"], os.O_WRONLY | os.O_TRUNC)[1]["truncated"] is False


def test_open_trunc_by_user_kills_setid(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=ALICE)
    store.setattr(ALICE, f["ino"], {"mode": 0o6777})
    _, res = store.open(BOB, f["ino"], os.O_RDWR | os.O_TRUNC)
    assert res["attr"]["mode"] == stat.S_IFREG | 0o777


def test_close_errors_and_counts(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    _, a = store.open(ROOT, f["ino"], os.O_RDONLY)
    _, b = store.open(ROOT, f["ino"], os.O_RDONLY)
    transno, res = store.close(a["handle"])
    assert res == {} and transno == store.last_transno
    assert store.open_count(f["ino"]) == 1
    with raises(errno.EBADF):
        store.close(a["handle"])
    with raises(errno.EBADF):
        store.close(123456789)
    store.close(b["handle"])
    assert store.open_count(f["ino"]) == 0
    assert store.getattr(f["ino"])["nlink"] == 1  # closing a linked file destroys nothing


def test_open_unlink_close_destroys(store: MdtStore) -> None:
    f = mkfile(store, b"f", layout={"stripe_count": 2})
    _, h1 = store.open(ROOT, f["ino"], os.O_RDWR)
    _, h2 = store.open(ROOT, f["ino"], os.O_RDONLY)
    store.unlink(ROOT, ROOT_INO, b"f")
    orphan = store.getattr(f["ino"])
    assert orphan["nlink"] == 0
    with raises(errno.ENOENT):
        store.lookup(ROOT, ROOT_INO, b"f")
    store.write_update(f["ino"], 100, 5)  # an orphan can still be written
    assert destroyed(store) == []
    store.close(h1["handle"])
    assert destroyed(store) == []
    store.getattr(f["ino"])
    store.close(h2["handle"])
    assert destroyed(store) == objects_of(f)
    with raises(errno.ENOENT):
        store.getattr(f["ino"])
    assert store.open_count(f["ino"]) == 0


def test_destroyed_inode_loses_xattrs(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    store.setxattr(ROOT, f["ino"], b"user.a", b"v")
    store.unlink(ROOT, ROOT_INO, b"f")
    assert store._db.conn.execute("SELECT COUNT(*) FROM xattrs").fetchone()[0] == 0


def test_cleanup_orphans_after_restart(db_path: Path) -> None:
    s = open_store(db_path)
    keep = mkfile(s, b"keep")
    gone = mkfile(s, b"gone", layout={"stripe_count": 3})
    _, h = s.open(ROOT, gone["ino"], os.O_RDONLY)
    s.unlink(ROOT, ROOT_INO, b"gone")
    s.commit()
    crash(s)  # the open handle dies with the process
    s2 = open_store(db_path)
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


def test_cleanup_orphans_skips_open_inodes(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    _, h = store.open(ROOT, f["ino"], os.O_RDONLY)
    store.unlink(ROOT, ROOT_INO, b"f")
    assert store.cleanup_orphans() == 0
    store.close(h["handle"])
    with raises(errno.ENOENT):
        store.getattr(f["ino"])


def test_destroy_log_drain(store: MdtStore) -> None:
    for i in range(5):
        mkfile(store, b"f%d" % i)
        store.unlink(ROOT, ROOT_INO, b"f%d" % i)
    pending = store.pending_destroys(3)
    assert len(pending) == 3
    ids = [p[0] for p in pending]
    assert ids == sorted(ids)
    transno = store.last_transno
    store.destroys_done(ids)
    assert store.last_transno == transno  # bookkeeping, not a client update
    rest = store.pending_destroys()
    assert len(rest) == 2 and not set(ids) & {p[0] for p in rest}
    store.destroys_done([p[0] for p in rest])
    assert store.pending_destroys() == []
    store.destroys_done([])


def test_destroy_log_survives_commit(db_path: Path) -> None:
    s = open_store(db_path)
    f = mkfile(s, b"f")
    s.unlink(ROOT, ROOT_INO, b"f")
    s.close()
    s2 = open_store(db_path)
    try:
        assert destroyed(s2) == objects_of(f)
    finally:
        s2.close()


def test_orphan_object_ranges_after_a_crash(db_path: Path) -> None:
    """Ids handed out after the last commit are lost with a crash; the next run starts
    past them and reports [first lost id, its first id) per OST until cleaned, keeping
    the earliest start across runs not cleaned up; objects_in names what layouts use."""
    s = open_store(db_path, ost_count=1)
    assert s.orphan_ranges() == {}  # a new filesystem: nothing can be lost
    kept = mkfile(s, b"kept")
    s.commit()
    lost = mkfile(s, b"lost")  # never committed
    crash(s)
    (_, first_lost), = objects_of(lost)
    (_, kept_oid), = objects_of(kept)
    s2 = open_store(db_path, ost_count=1)
    (lo, hi), = s2.orphan_ranges().values()
    assert lo == first_lost and hi > lo + 1_000_000
    (_, new_oid), = objects_of(mkfile(s2, b"new"))
    assert new_oid == hi  # this run's ids start past every lost one
    assert s2.objects_in(0, lo, hi) == []
    assert s2.objects_in(0, 0, hi + 1) == [kept_oid, new_oid]
    s2.commit()
    crash(s2)  # not cleaned up: the next run's range starts as early
    s3 = open_store(db_path, ost_count=1)
    try:
        (lo3, hi3), = s3.orphan_ranges().values()
        assert lo3 == lo and hi3 > hi
        s3.orphans_cleaned(0)
        assert s3.orphan_ranges() == {}
        s3.commit()
    finally:
        s3.close()
    s4 = open_store(db_path, ost_count=1)
    try:
        (lo4, _), = s4.orphan_ranges().values()
        assert lo4 == hi3  # (cleaned: only ids from the last run on are looked at again)
    finally:
        s4.close()


def test_orphan_requests_name_at_most_so_many_ids_to_keep() -> None:
    from mlustre.servers.mdt.server import _orphan_requests
    from mlustre.servers.ost import ORPHAN_KEEP_MAX

    assert _orphan_requests(10, 20, []) == [(10, 20, [])]
    keep = list(range(100, 100 + 2 * ORPHAN_KEEP_MAX + 5))
    pieces = _orphan_requests(50, 1 << 40, keep)
    assert [len(k) for _, _, k in pieces] == [ORPHAN_KEEP_MAX, ORPHAN_KEEP_MAX, 5]
    assert pieces[0][0] == 50 and pieces[-1][1] == 1 << 40
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))  # contiguous
    assert all(lo <= k < hi for lo, hi, kept in pieces for k in kept)


def test_handles_unique_across_restarts(db_path: Path) -> None:
    s = open_store(db_path)
    f = mkfile(s, b"f")
    first = {s.open(ROOT, f["ino"], os.O_RDONLY)[1]["handle"] for _ in range(3)}
    s.close()
    s2 = open_store(db_path)
    try:
        second = {s2.open(ROOT, f["ino"], os.O_RDONLY)[1]["handle"] for _ in range(3)}
        assert len(first) == 3 and len(second) == 3 and not first & second
    finally:
        s2.close()


# --------------------------------------------------------------------------- write_update


def test_write_update(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    _, a = store.write_update(f["ino"], 1000, 42)
    assert (a["size"], a["blocks"], a["mtime_ns"], a["ctime_ns"]) == (1000, 2, 42, 42)
    _, a = store.write_update(f["ino"], 10, 43)  # never shrinks
    assert a["size"] == 1000 and a["mtime_ns"] == 43
    assert store.getattr(f["ino"]) == a
    d = mkdir(store, b"d")
    with raises(errno.EISDIR):
        store.write_update(d["ino"], 1, 1)
    with raises(errno.ENOENT):
        store.write_update(9090, 1, 1)


@pytest.mark.parametrize(
    "mode,expect", [(0o6755, 0o755), (0o6745, 0o2745), (0o4700, 0o700), (0o644, 0o644)]
)
def test_write_update_clears_setid(store: MdtStore, mode: int, expect: int) -> None:
    f = mkfile(store, b"f", mode=mode)
    _, a = store.write_update(f["ino"], 1, 1)
    assert a["mode"] == stat.S_IFREG | expect


# --------------------------------------------------------------------------- transactions


def test_transnos_increase_and_reads_do_not_assign(store: MdtStore) -> None:
    seen = []
    f = mkfile(store, b"f")
    seen.append(store.last_transno)
    seen.append(store.mkdir(ROOT, ROOT_INO, b"d", 0o755)[0])
    seen.append(store.symlink(ROOT, ROOT_INO, b"l", b"t")[0])
    seen.append(store.link(ROOT, f["ino"], ROOT_INO, b"f2")[0])
    seen.append(store.setattr(ROOT, f["ino"], {"mode": 0o600})[0])
    seen.append(store.setxattr(ROOT, f["ino"], b"user.a", b"v")[0])
    seen.append(store.removexattr(ROOT, f["ino"], b"user.a")[0])
    t, o = store.open(ROOT, f["ino"], os.O_RDONLY)
    seen.append(t)
    seen.append(store.close(o["handle"])[0])
    seen.append(store.write_update(f["ino"], 1, 1)[0])
    seen.append(store.rename(ROOT, ROOT_INO, b"f2", ROOT_INO, b"f3")[0])
    seen.append(store.unlink(ROOT, ROOT_INO, b"f3")[0])
    seen.append(store.rmdir(ROOT, ROOT_INO, b"d")[0])
    seen.append(store.set_layout(ROOT, ROOT_INO, {"stripe_count": 2})[0])
    assert seen == list(range(1, len(seen) + 1))
    store.getattr(f["ino"])
    store.lookup(ROOT, ROOT_INO, b"f")
    store.readdir(ROOT, ROOT_INO, 0, 10)
    store.listxattr(ROOT, f["ino"])
    store.statfs()
    store.access(ROOT, f["ino"], os.R_OK)
    store.readlink(store.lookup(ROOT, ROOT_INO, b"l")["ino"])
    store.get_dir_layout(ROOT_INO)
    assert store.last_transno == len(seen)


def test_failures_consume_no_transno_and_leave_no_trace(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    mkfile(store, b"x", parent=d["ino"])
    mkdir(store, b"e")
    base = store.last_transno
    snapshot = store._db.conn.execute("SELECT * FROM inodes ORDER BY ino").fetchall()
    dirents = store._db.conn.execute("SELECT * FROM dirents ORDER BY id").fetchall()
    with raises(errno.EEXIST):
        store.create(ROOT, ROOT_INO, b"d", 0o644)
    with raises(errno.ENOTEMPTY):
        store.rename(ROOT, ROOT_INO, b"e", ROOT_INO, b"d")
    with raises(errno.EACCES):
        store.create(ALICE, ROOT_INO, b"nope", 0o644, open_flags=os.O_RDWR)
    with raises(errno.EINVAL):
        store.create(ROOT, ROOT_INO, b"bad", 0o644, layout={"stripe_size": 3})
    with raises(errno.EPERM):
        store.setattr(ALICE, d["ino"], {"mode": 0o777})
    with raises(errno.EISDIR):
        store.open(ALICE, d["ino"], os.O_RDONLY | os.O_TRUNC)
    with raises(errno.EACCES):
        store.open(ALICE, store.lookup(ROOT, d["ino"], b"x")["ino"], os.O_WRONLY)
    assert store.last_transno == base
    assert store._db.conn.execute("SELECT * FROM inodes ORDER BY ino").fetchall() == snapshot
    assert store._db.conn.execute("SELECT * FROM dirents ORDER BY id").fetchall() == dirents
    assert len(store._handles) == 0 and store.open_count(d["ino"]) == 0
    assert store.create(ROOT, ROOT_INO, b"ok", 0o644)[0] == base + 1


def test_failure_after_partial_writes_is_rolled_back(store: MdtStore) -> None:
    """An error raised after some rows were changed must undo them (the SAVEPOINT)."""
    f = mkfile(store, b"f")
    base = store.last_transno
    before = store.getattr(f["ino"])
    inodes_before = store.statfs()["files"]
    orig = store._inodes.touch_dir

    def boom(*args: object, **kw: object) -> None:
        orig(*args, **kw)
        raise MdtError(errno.EIO, "injected")

    store._inodes.touch_dir = boom  # type: ignore[method-assign]
    try:
        with raises(errno.EIO):
            store.create(ROOT, ROOT_INO, b"g", 0o644)
        with raises(errno.EIO):
            store.unlink(ROOT, ROOT_INO, b"f")
    finally:
        store._inodes.touch_dir = orig  # type: ignore[method-assign]
    assert store.last_transno == base
    assert store.getattr(f["ino"]) == before
    assert store.statfs()["files"] == inodes_before
    assert destroyed(store) == []
    with raises(errno.ENOENT):
        store.lookup(ROOT, ROOT_INO, b"g")
    # Counters staged by the failed create (object ids, round robin) were not consumed.
    g = mkfile(store, b"g")
    assert objects_of(g)[0][0] == (objects_of(f)[0][0] + 1) % OST_COUNT


def test_commit_advances_last_committed(store: MdtStore) -> None:
    mkfile(store, b"a")
    mkfile(store, b"b")
    assert store.last_transno == 2 and store.last_committed == 0
    assert store.commit() == 2
    assert store.last_committed == store.last_transno == 2
    mkfile(store, b"c")
    assert store.last_committed == 2
    assert store.commit() == 3
    assert store.commit() == 3  # nothing open: still fine


def test_crash_loses_uncommitted_updates(db_path: Path) -> None:
    s = open_store(db_path)
    a = mkfile(s, b"a")
    s.setxattr(ROOT, a["ino"], b"user.k", b"v")
    s.commit()
    committed = s.last_transno
    mkfile(s, b"b")
    s.unlink(ROOT, ROOT_INO, b"a")
    s.mkdir(ROOT, ROOT_INO, b"d", 0o755)
    assert s.last_transno == committed + 3
    crash(s)
    s2 = open_store(db_path)
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


def test_clean_close_persists_everything(db_path: Path) -> None:
    s = open_store(db_path)
    d = mkdir(s, b"d")
    f = mkfile(s, b"f", parent=d["ino"], layout={"stripe_count": 2})
    s.set_layout(ROOT, d["ino"], {"stripe_count": 3})
    last = s.last_transno
    s.close()
    s.close()  # idempotent
    s2 = open_store(db_path)
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


def test_process_crash_in_subprocess(db_path: Path) -> None:
    """A real process death (os._exit) with an open transaction loses only that transaction."""
    script = textwrap.dedent(
        f"""
        import os, stat, time
        from mlustre.servers.mdt.store import MdtStore, Cred, ROOT_INO
        s = MdtStore({str(db_path)!r}, ost_count=2, clock=time.time_ns)
        root = Cred(0, 0)
        s.create(root, ROOT_INO, b"durable", stat.S_IFREG | 0o644)
        s.commit()
        for i in range(200):
            s.create(root, ROOT_INO, b"lost%d" % i, stat.S_IFREG | 0o644)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    s = open_store(db_path, ost_count=2)
    try:
        assert s.last_transno == 1
        assert [e[0] for e in s.readdir(ROOT, ROOT_INO, 0, 1000)] == [b"durable"]
    finally:
        s.close()


# --------------------------------------------------------------------------- layouts


def test_default_layout(store: MdtStore) -> None:
    lay = mkfile(store, b"f")["layout"]
    assert set(lay) == {"stripe_count", "stripe_size", "stripe_offset", "objects", "gen"}
    assert (lay["stripe_count"], lay["stripe_size"], lay["gen"]) == (1, 1 << 20, 1)
    assert len(lay["objects"]) == 1
    assert lay["objects"][0][0] == lay["stripe_offset"]


def test_store_default_striping(db_path: Path) -> None:
    s = open_store(db_path, default_stripe_count=2, default_stripe_size=1 << 16)
    try:
        lay = mkfile(s, b"f")["layout"]
        assert (lay["stripe_count"], lay["stripe_size"]) == (2, 1 << 16)
    finally:
        s.close()
    with pytest.raises(ValueError):
        MdtStore(str(db_path), clock=time.time_ns, ost_count=0)
    with pytest.raises(ValueError):
        MdtStore(str(db_path), clock=time.time_ns, ost_count=2, default_stripe_size=1000)


def test_explicit_striping(store: MdtStore) -> None:
    lay = mkfile(store, b"f", layout={"stripe_count": 3, "stripe_offset": 2,
                                      "stripe_size": 1 << 17})["layout"]  # fmt: skip
    assert (lay["stripe_count"], lay["stripe_size"], lay["stripe_offset"]) == (3, 1 << 17, 2)
    assert [o[0] for o in lay["objects"]] == [2, 3, 0]
    lay2 = mkfile(store, b"g", layout={"stripe_count": 2, "stripe_offset": 2})["layout"]
    assert [o[0] for o in lay2["objects"]] == [2, 3]
    # Object ids are unique per OST.
    assert lay2["objects"][0][1] == lay["objects"][0][1] + 1
    assert lay2["objects"][1][1] == lay["objects"][1][1] + 1


def test_round_robin_offsets(store: MdtStore) -> None:
    starts = [mkfile(store, b"f%d" % i)["layout"]["stripe_offset"] for i in range(8)]
    assert starts == [(starts[0] + i) % OST_COUNT for i in range(8)]


@pytest.mark.parametrize("count,expect", [(-1, 4), (4, 4), (9, 4), (0, 1), (2, 2)])
def test_stripe_count_clamped(store: MdtStore, count: int, expect: int) -> None:
    lay = mkfile(store, b"f", layout={"stripe_count": count})["layout"]
    assert lay["stripe_count"] == expect == len(lay["objects"])
    assert len({o[0] for o in lay["objects"]}) == expect


def test_object_ids_never_reused(store: MdtStore) -> None:
    seen: set[tuple[int, int]] = set()
    for i in range(20):
        f = mkfile(store, b"f", layout={"stripe_count": -1})
        objs = set(objects_of(f))
        assert not objs & seen
        seen |= objs
        store.unlink(ROOT, ROOT_INO, b"f")
        if i == 10:
            store.commit()
    assert len(seen) == 20 * OST_COUNT


@pytest.mark.parametrize(
    "layout",
    [{"stripe_size": 1000}, {"stripe_size": 0}, {"stripe_size": -65536},
     {"stripe_offset": OST_COUNT}, {"stripe_offset": -2}, {"stripe_count": -2},
     {"stripe_pattern": 1}, {"stripe_count": "2"}],
)  # fmt: skip
def test_layout_validation(store: MdtStore, layout: dict) -> None:
    with raises(errno.EINVAL):
        store.create(ROOT, ROOT_INO, b"f", 0o644, layout=layout)
    with raises(errno.EINVAL):
        store.set_layout(ROOT, ROOT_INO, layout)
    assert store.last_transno == 0


def test_dir_default_layout_inheritance(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    assert store.get_dir_layout(d["ino"]) is None
    _, a = store.set_layout(ROOT, d["ino"], {"stripe_count": 2, "stripe_offset": 1})
    assert a["ino"] == d["ino"] and a["layout"] is None
    assert store.get_dir_layout(d["ino"]) == {"stripe_count": 2, "stripe_offset": 1}
    lay = mkfile(store, b"f", parent=d["ino"])["layout"]
    assert [o[0] for o in lay["objects"]] == [1, 2]
    # The explicit layout beats the directory default, key by key.
    lay = mkfile(store, b"g", parent=d["ino"], layout={"stripe_count": 1})["layout"]
    assert (lay["stripe_count"], lay["stripe_offset"]) == (1, 1)
    # Subdirectories do not inherit their parent's default; files outside are unaffected.
    sub = mkdir(store, b"sub", parent=d["ino"])
    assert mkfile(store, b"h", parent=sub["ino"])["layout"]["stripe_count"] == 1
    assert mkfile(store, b"top")["layout"]["stripe_count"] == 1


def test_root_default_is_filesystem_default(store: MdtStore) -> None:
    d = mkdir(store, b"d")
    store.set_layout(ROOT, ROOT_INO, {"stripe_count": 3, "stripe_size": 1 << 18})
    assert store.get_dir_layout(ROOT_INO) == {"stripe_count": 3, "stripe_size": 1 << 18}
    lay = mkfile(store, b"f", parent=d["ino"])["layout"]
    assert (lay["stripe_count"], lay["stripe_size"]) == (3, 1 << 18)
    store.set_layout(ROOT, d["ino"], {"stripe_count": 1})
    lay = mkfile(store, b"g", parent=d["ino"])["layout"]
    assert (lay["stripe_count"], lay["stripe_size"]) == (1, 1 << 18)  # per-key fallback
    store.set_layout(ROOT, ROOT_INO, {})  # {} removes a default
    assert store.get_dir_layout(ROOT_INO) is None
    lay = mkfile(store, b"h", parent=d["ino"])["layout"]
    assert (lay["stripe_count"], lay["stripe_size"]) == (1, 1 << 20)


def test_root_default_survives_reopen(db_path: Path) -> None:
    s = open_store(db_path)
    s.set_layout(ROOT, ROOT_INO, {"stripe_count": 2})
    s.close()
    s2 = open_store(db_path)
    try:
        assert mkfile(s2, b"f")["layout"]["stripe_count"] == 2
    finally:
        s2.close()


def test_set_layout_on_file(store: MdtStore) -> None:
    pub = shared_dir(store)
    f = mkfile(store, b"f", parent=pub, cred=ALICE, layout={"stripe_size": 1 << 17})
    old = objects_of(f)
    with raises(errno.EPERM):
        store.set_layout(BOB, f["ino"], {"stripe_count": 2})
    _, a = store.set_layout(ALICE, f["ino"], {"stripe_count": 3})
    lay = a["layout"]
    assert (lay["stripe_count"], lay["stripe_size"], lay["gen"]) == (3, 1 << 17, 2)
    assert not set(objects_of(a)) & set(old)
    assert destroyed(store) == old
    assert store.getattr(f["ino"])["layout"] == lay
    store.write_update(f["ino"], 10, 1)
    with raises(errno.EBUSY):
        store.set_layout(ALICE, f["ino"], {"stripe_count": 1})
    g = mkfile(store, b"g")
    store.setattr(ROOT, g["ino"], {"size": 5})
    with raises(errno.EBUSY):
        store.set_layout(ROOT, g["ino"], {"stripe_count": 2})
    store.symlink(ROOT, ROOT_INO, b"l", b"t")
    with raises(errno.EINVAL):
        store.set_layout(ROOT, store.lookup(ROOT, ROOT_INO, b"l")["ino"], {"stripe_count": 2})
    d = mkdir(store, b"d")
    with raises(errno.EPERM):
        store.set_layout(ALICE, d["ino"], {"stripe_count": 2})


def test_get_dir_layout_on_non_directory(store: MdtStore) -> None:
    f = mkfile(store, b"f")
    assert store.get_dir_layout(f["ino"]) is None
    with raises(errno.ENOENT):
        store.get_dir_layout(8888)


def test_touch_atime_changes_atime_only(tmp_path: Path) -> None:
    store = MdtStore(str(tmp_path / "mdt.sqlite"), clock=time.time_ns, ost_count=1)
    root = Cred(0, 0)
    _, res = store.create(root, ROOT_INO, b"f", 0o100644)
    before = res["attr"]
    transno, attr = store.touch_atime(before["ino"], before["atime_ns"] + 10**9)
    assert transno > 0
    assert attr["atime_ns"] == before["atime_ns"] + 10**9
    assert (attr["ctime_ns"], attr["mtime_ns"]) == (before["ctime_ns"], before["mtime_ns"])
    assert store.getattr(before["ino"])["atime_ns"] == attr["atime_ns"]


def test_generation_is_the_boot_count_and_stays_put(tmp_path: Path) -> None:
    """New inodes carry the MDT's boot count as generation (a lost, reused inode number
    is then a different (ino, gen)); create's reply and later getattrs agree."""
    path = str(tmp_path / "mdt.sqlite")
    store = MdtStore(path, clock=time.time_ns, ost_count=1)
    _, first = store.create(Cred(0, 0), ROOT_INO, b"a", 0o100644)
    assert store.getattr(first["attr"]["ino"])["gen"] == first["attr"]["gen"]
    store.close()
    store = MdtStore(path, clock=time.time_ns, ost_count=1)
    _, second = store.create(Cred(0, 0), ROOT_INO, b"b", 0o100644)
    assert second["attr"]["gen"] == first["attr"]["gen"] + 1
    assert store.getattr(second["attr"]["ino"])["gen"] == second["attr"]["gen"]
    store.close()


# --------------------------------------------------------------------------- path_of (fid2path)


def test_path_of_root_and_top_level(store: MdtStore) -> None:
    assert store.path_of(ROOT_INO) == b""
    f = mkfile(store, b"f")["ino"]
    d = mkdir(store, b"d")["ino"]
    assert store.path_of(f) == b"f"
    assert store.path_of(d) == b"d"


def test_path_of_nested_files_dirs_and_symlinks(store: MdtStore) -> None:
    a = mkdir(store, b"a")["ino"]
    b = mkdir(store, b"b", parent=a)["ino"]
    c = mkdir(store, b"c \xff", parent=b)["ino"]
    f = mkfile(store, b"file", parent=c)["ino"]
    ln = store.symlink(ROOT, b, b"sym", b"../x")[1]["ino"]
    assert store.path_of(b) == b"a/b"
    assert store.path_of(c) == b"a/b/c \xff"
    assert store.path_of(f) == b"a/b/c \xff/file"
    assert store.path_of(ln) == b"a/b/sym"


def test_path_of_follows_renames(store: MdtStore) -> None:
    a = mkdir(store, b"a")["ino"]
    b = mkdir(store, b"b")["ino"]
    sub = mkdir(store, b"sub", parent=a)["ino"]
    f = mkfile(store, b"f", parent=sub)["ino"]
    store.rename(ROOT, a, b"sub", b, b"moved", 0)
    assert store.path_of(sub) == b"b/moved"
    assert store.path_of(f) == b"b/moved/f"
    store.rename(ROOT, sub, b"f", ROOT_INO, b"g", 0)
    assert store.path_of(f) == b"g"


def test_path_of_hard_link_gives_one_path(store: MdtStore) -> None:
    d = mkdir(store, b"d")["ino"]
    f = mkfile(store, b"f")["ino"]
    store.link(ROOT, f, d, b"other")
    assert store.path_of(f) in (b"f", b"d/other")
    store.unlink(ROOT, ROOT_INO, b"f")
    assert store.path_of(f) == b"d/other"


def test_path_of_unknown_removed_and_orphan(store: MdtStore) -> None:
    with raises(errno.ENOENT):
        store.path_of(999_999)
    f = mkfile(store, b"f")["ino"]
    store.unlink(ROOT, ROOT_INO, b"f")
    with raises(errno.ENOENT):
        store.path_of(f)
    d = mkdir(store, b"d")["ino"]
    store.rmdir(ROOT, ROOT_INO, b"d")
    with raises(errno.ENOENT):
        store.path_of(d)
    # open, then unlinked: the inode lives on as an orphan, with no path
    res = store.create(ROOT, ROOT_INO, b"o", stat.S_IFREG | 0o644, open_flags=os.O_RDWR)[1]
    store.unlink(ROOT, ROOT_INO, b"o")
    with raises(errno.ENOENT):
        store.path_of(res["attr"]["ino"])
    store.close(res["handle"])
