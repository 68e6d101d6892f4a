"""Unit tests of the MDT store's extended attributes (servers/mdt/xattrs.py)."""

from __future__ import annotations

import errno

from mdt_helpers import (
    ALICE,
    BOB,
    ROOT,
    mkfile,
    raises,
    shared_dir,
)

from mlustre.servers.mdt.store import (
    XATTR_CREATE,
    XATTR_REPLACE,
    MdtStore,
)

# --------------------------------------------------------------------------- xattrs


def test_xattr_round_trip_and_flags(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    assert mdt_store.listxattr(ROOT, f["ino"]) == []
    with raises(errno.ENODATA):
        mdt_store.getxattr(ROOT, f["ino"], b"user.a")
    transno, res = mdt_store.setxattr(ROOT, f["ino"], b"user.a", b"1")
    assert res == {} and transno == mdt_store.last_transno
    assert mdt_store.getattr(f["ino"])["ctime_ns"] > f["ctime_ns"]
    mdt_store.setxattr(ROOT, f["ino"], b"user.b", b"\x00bin")
    assert mdt_store.getxattr(ROOT, f["ino"], b"user.b") == b"\x00bin"
    assert mdt_store.listxattr(ROOT, f["ino"]) == [b"user.a", b"user.b"]
    with raises(errno.EEXIST):
        mdt_store.setxattr(ROOT, f["ino"], b"user.a", b"2", XATTR_CREATE)
    with raises(errno.ENODATA):
        mdt_store.setxattr(ROOT, f["ino"], b"user.c", b"2", XATTR_REPLACE)
    mdt_store.setxattr(ROOT, f["ino"], b"user.a", b"2", XATTR_REPLACE)
    mdt_store.setxattr(ROOT, f["ino"], b"user.c", b"3", XATTR_CREATE)
    assert mdt_store.getxattr(ROOT, f["ino"], b"user.a") == b"2"
    with raises(errno.EINVAL):
        mdt_store.setxattr(ROOT, f["ino"], b"user.a", b"2", XATTR_CREATE | XATTR_REPLACE)
    mdt_store.removexattr(ROOT, f["ino"], b"user.a")
    with raises(errno.ENODATA):
        mdt_store.removexattr(ROOT, f["ino"], b"user.a")
    assert mdt_store.listxattr(ROOT, f["ino"]) == [b"user.b", b"user.c"]


def test_xattr_permissions(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=ALICE, mode=0o600)
    mdt_store.setxattr(ALICE, f["ino"], b"user.x", b"v")
    mdt_store.setattr(ALICE, f["ino"], {"mode": 0o400})
    mdt_store.setxattr(ALICE, f["ino"], b"user.y", b"v")  # owner without write permission
    with raises(errno.EACCES):
        mdt_store.setxattr(BOB, f["ino"], b"user.z", b"v")
    with raises(errno.EACCES):
        mdt_store.removexattr(BOB, f["ino"], b"user.x")
    with raises(errno.EACCES):  # user.* values need read permission
        mdt_store.getxattr(BOB, f["ino"], b"user.x")
    assert mdt_store.listxattr(BOB, f["ino"]) == [b"user.x", b"user.y"]
    mdt_store.setattr(ALICE, f["ino"], {"mode": 0o666})
    mdt_store.setxattr(BOB, f["ino"], b"user.z", b"v")  # write permission suffices
    assert mdt_store.getxattr(BOB, f["ino"], b"user.z") == b"v"
    mdt_store.setxattr(ROOT, f["ino"], b"trusted.t", b"v")


def test_xattr_limits(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    with raises(errno.EINVAL):
        mdt_store.setxattr(ROOT, f["ino"], b"", b"v")
    with raises(errno.ERANGE):
        mdt_store.setxattr(ROOT, f["ino"], b"user." + b"n" * 300, b"v")
    with raises(errno.E2BIG):
        mdt_store.setxattr(ROOT, f["ino"], b"user.big", b"v" * 65537)
    with raises(errno.ENOENT):
        mdt_store.setxattr(ROOT, 5555, b"user.a", b"v")
