"""Unit tests of the MDT store's permission rules (servers/mdt/permissions.py) as the
namespace, opens and attribute updates apply them."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from mdt_helpers import (
    ALICE,
    BOB,
    CAROL,
    ROOT,
    mkdir,
    mkfile,
    raises,
    shared_dir,
)

from mlustre.servers.mdt.store import (
    Cred,
    MdtStore,
)

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
    mdt_store: MdtStore, cred: Cred, uid: int, gid: int, mode: int, mask: int, allowed: bool
) -> None:
    f = mkfile(mdt_store, b"f")
    mdt_store.setattr(ROOT, f["ino"], {"uid": uid, "gid": gid, "mode": mode})
    if allowed:
        mdt_store.access(cred, f["ino"], mask)
    else:
        with raises(errno.EACCES):
            mdt_store.access(cred, f["ino"], mask)


def test_access_misc(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d", mode=0o000)
    mdt_store.access(ROOT, d["ino"], os.X_OK)  # root searches any directory
    mdt_store.access(ALICE, d["ino"], 0)  # F_OK: exists
    with raises(errno.EINVAL):
        mdt_store.access(ALICE, d["ino"], 0o100)
    with raises(errno.ENOENT):
        mdt_store.access(ALICE, 777, os.R_OK)


def test_directory_permissions(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d", mode=0o755)
    mkfile(mdt_store, b"f", parent=d["ino"])
    mdt_store.lookup(ALICE, d["ino"], b"f")
    mdt_store.readdir(ALICE, d["ino"], 0, 10)
    with raises(errno.EACCES):
        mdt_store.create(ALICE, d["ino"], b"g", 0o644)
    with raises(errno.EACCES):
        mdt_store.mkdir(ALICE, d["ino"], b"g", 0o755)
    with raises(errno.EACCES):
        mdt_store.symlink(ALICE, d["ino"], b"g", b"t")
    with raises(errno.EACCES):
        mdt_store.unlink(ALICE, d["ino"], b"f")
    mdt_store.setattr(ROOT, d["ino"], {"mode": 0o733})  # write+search but no read
    with raises(errno.EACCES):
        mdt_store.readdir(ALICE, d["ino"], 0, 10)
    mdt_store.create(ALICE, d["ino"], b"g", 0o644)
    mdt_store.setattr(ROOT, d["ino"], {"mode": 0o766})  # read+write but no search
    with raises(errno.EACCES):
        mdt_store.lookup(ALICE, d["ino"], b"f")
    with raises(errno.EACCES):
        mdt_store.create(ALICE, d["ino"], b"h", 0o644)
    assert [e[0] for e in mdt_store.readdir(ALICE, d["ino"], 0, 10)] == [b"f", b"g"]


def test_open_permissions(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    ro = mkfile(mdt_store, b"ro", parent=pub, mode=0o444)
    wo = mkfile(mdt_store, b"wo", parent=pub, mode=0o222)
    d = mkdir(mdt_store, b"d", parent=pub)
    mdt_store.open(ALICE, ro["ino"], os.O_RDONLY)
    with raises(errno.EACCES):
        mdt_store.open(ALICE, ro["ino"], os.O_WRONLY)
    with raises(errno.EACCES):
        mdt_store.open(ALICE, ro["ino"], os.O_RDWR)
    with raises(errno.EACCES):
        mdt_store.open(ALICE, ro["ino"], os.O_RDONLY | os.O_TRUNC)
    mdt_store.open(ALICE, wo["ino"], os.O_WRONLY)
    with raises(errno.EACCES):
        mdt_store.open(ALICE, wo["ino"], os.O_RDONLY)
    mdt_store.open(ALICE, d["ino"], os.O_RDONLY)
    with raises(errno.EISDIR):
        mdt_store.open(ROOT, d["ino"], os.O_WRONLY)
    with raises(errno.EISDIR):
        mdt_store.open(ROOT, d["ino"], os.O_RDWR)
    with raises(errno.ENOENT):
        mdt_store.open(ROOT, 999, os.O_RDONLY)
    assert mdt_store.open_count(ro["ino"]) == 1


def test_sticky_directory(mdt_store: MdtStore) -> None:
    tmp = shared_dir(mdt_store, b"tmp", 0o1777)
    mkfile(mdt_store, b"a1", parent=tmp, cred=ALICE)
    mkfile(mdt_store, b"a2", parent=tmp, cred=ALICE)
    mkfile(mdt_store, b"a3", parent=tmp, cred=ALICE)
    mkfile(mdt_store, b"b1", parent=tmp, cred=BOB)
    mkdir(mdt_store, b"adir", parent=tmp, cred=ALICE)
    with raises(errno.EPERM):
        mdt_store.unlink(BOB, tmp, b"a1")
    with raises(errno.EPERM):
        mdt_store.rmdir(BOB, tmp, b"adir")
    with raises(errno.EPERM):
        mdt_store.rename(BOB, tmp, b"a1", tmp, b"mine")
    with raises(errno.EPERM):  # replacing someone else's file in a sticky directory
        mdt_store.rename(BOB, tmp, b"b1", tmp, b"a1")
    mdt_store.unlink(ALICE, tmp, b"a1")  # the entry's owner
    mdt_store.rmdir(ALICE, tmp, b"adir")
    mdt_store.setattr(ROOT, tmp, {"uid": CAROL.uid})
    mdt_store.unlink(CAROL, tmp, b"a2")  # the directory's owner
    mdt_store.unlink(ROOT, tmp, b"a3")  # root
    mdt_store.rename(BOB, tmp, b"b1", tmp, b"b2")
    assert [e[0] for e in mdt_store.readdir(ROOT, tmp, 0, 10)] == [b"b2"]


def test_setgid_directory_inheritance(mdt_store: MdtStore) -> None:
    g = mkdir(mdt_store, b"g", mode=0o777)
    mdt_store.setattr(ROOT, g["ino"], {"gid": 2000, "mode": 0o2777})
    f = mkfile(mdt_store, b"f", parent=g["ino"], cred=ALICE)
    assert (f["uid"], f["gid"]) == (1000, 2000)
    sub = mkdir(mdt_store, b"sub", parent=g["ino"], cred=ALICE, mode=0o755)
    assert sub["gid"] == 2000 and sub["mode"] == stat.S_IFDIR | 0o2755
    # A non-member asking for S_ISGID on a new file loses it; a member keeps it.
    f2 = mkfile(mdt_store, b"f2", parent=g["ino"], cred=ALICE, mode=0o2755)
    assert f2["mode"] == stat.S_IFREG | 0o755
    f3 = mkfile(mdt_store, b"f3", parent=g["ino"], cred=BOB, mode=0o2755)
    assert f3["mode"] == stat.S_IFREG | 0o2755 and f3["gid"] == 2000
    l_attr = mdt_store.symlink(ALICE, g["ino"], b"l", b"t")[1]
    assert l_attr["gid"] == 2000
    plain = mkfile(mdt_store, b"plain", cred=ROOT)
    assert plain["gid"] == 0


def test_new_file_sgid_kept_for_member_outside_sgid_dir(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=ALICE, mode=0o2755)
    assert f["mode"] & stat.S_ISGID  # ALICE is in her own primary group
    assert f["gid"] == ALICE.gid
