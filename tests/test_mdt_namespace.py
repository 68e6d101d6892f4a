"""Unit tests of the MDT store's namespace (servers/mdt/namespace.py): create, lookup, names,
mkdir/symlink/link, unlink/rmdir, readdir, path_of."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from mdt_helpers import (
    ALICE,
    ATTR_KEYS,
    ROOT,
    destroyed,
    mkdir,
    mkfile,
    objects_of,
    raises,
    shared_dir,
)

from mlustre.servers.mdt.store import (
    ROOT_INO,
    MdtStore,
)

# --------------------------------------------------------------------------- basics


def test_new_store_has_root(mdt_store: MdtStore) -> None:
    a = mdt_store.getattr(ROOT_INO)
    assert set(a) == ATTR_KEYS
    assert a["ino"] == ROOT_INO == 1
    assert a["mode"] == stat.S_IFDIR | 0o755
    assert (a["uid"], a["gid"], a["nlink"], a["gen"]) == (0, 0, 2, 1)
    assert (a["size"], a["blocks"], a["layout"]) == (4096, 8, None)
    assert mdt_store.last_transno == 0 and mdt_store.last_committed == 0


def test_create_lookup_getattr_round_trip(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    transno, res = mdt_store.create(ALICE, pub, b"f", stat.S_IFREG | 0o640)
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
    assert mdt_store.lookup(ALICE, pub, b"f") == a
    assert mdt_store.getattr(a["ino"]) == a


def test_create_mode_zero_type_means_regular(mdt_store: MdtStore) -> None:
    a = mdt_store.create(ROOT, ROOT_INO, b"f", 0o600)[1]["attr"]
    assert a["mode"] == stat.S_IFREG | 0o600
    assert a["layout"] is not None


@pytest.mark.parametrize(
    "fmt,rdev,expect_rdev",
    [(stat.S_IFIFO, 0, 0), (stat.S_IFSOCK, 5, 0), (stat.S_IFCHR, 0x0103, 0x0103),
     (stat.S_IFBLK, 0x0801, 0x0801)],
)  # fmt: skip
def test_create_special_files(mdt_store: MdtStore, fmt: int, rdev: int, expect_rdev: int) -> None:
    a = mdt_store.create(ROOT, ROOT_INO, b"node", fmt | 0o644, rdev)[1]["attr"]
    assert stat.S_IFMT(a["mode"]) == fmt
    assert a["rdev"] == expect_rdev
    assert a["layout"] is None and a["blocks"] == 0
    assert destroyed(mdt_store) == []
    mdt_store.unlink(ROOT, ROOT_INO, b"node")
    assert destroyed(mdt_store) == []  # no objects for non-regular files


def test_create_bad_types(mdt_store: MdtStore) -> None:
    with raises(errno.EPERM):
        mdt_store.create(ROOT, ROOT_INO, b"d", stat.S_IFDIR | 0o755)
    with raises(errno.EINVAL):
        mdt_store.create(ROOT, ROOT_INO, b"l", stat.S_IFLNK | 0o777)


def test_non_root_cannot_make_devices(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    with raises(errno.EPERM):
        mdt_store.create(ALICE, pub, b"dev", stat.S_IFCHR | 0o600, 0x0101)
    mdt_store.create(ALICE, pub, b"fifo", stat.S_IFIFO | 0o600)


def test_create_existing_name(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    mkdir(mdt_store, b"d")
    mdt_store.create(ROOT, ROOT_INO, b"p", stat.S_IFIFO | 0o644)
    with raises(errno.EEXIST):
        mdt_store.create(ROOT, ROOT_INO, b"f", stat.S_IFREG | 0o644)
    with raises(errno.EEXIST):
        mdt_store.create(ROOT, ROOT_INO, b"d", stat.S_IFREG | 0o644)
    # O_CREAT without O_EXCL opens an existing regular file.
    _, res = mdt_store.create(ROOT, ROOT_INO, b"f", 0o644, exclusive=False, open_flags=os.O_RDWR)
    assert res["created"] is False and res["attr"]["ino"] == f["ino"]
    assert isinstance(res["handle"], int) and mdt_store.open_count(f["ino"]) == 1
    _, res = mdt_store.create(ROOT, ROOT_INO, b"f", 0o644, exclusive=False)
    assert res == {"attr": mdt_store.getattr(f["ino"]), "handle": None, "created": False}
    with raises(errno.EISDIR):
        mdt_store.create(ROOT, ROOT_INO, b"d", 0o644, exclusive=False, open_flags=os.O_RDWR)
    with raises(errno.EEXIST):
        mdt_store.create(ROOT, ROOT_INO, b"p", 0o644, exclusive=False)


def test_create_nonexclusive_open_checks_permission(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    mkfile(mdt_store, b"ro", parent=pub, mode=0o444)
    with raises(errno.EACCES):
        mdt_store.create(ALICE, pub, b"ro", 0o644, exclusive=False, open_flags=os.O_WRONLY)


def test_create_with_open_skips_permission_for_creator(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    _, res = mdt_store.create(ALICE, pub, b"f", stat.S_IFREG | 0o444, open_flags=os.O_WRONLY)
    assert res["created"] and res["handle"] is not None
    assert mdt_store.open_count(res["attr"]["ino"]) == 1


BAD_NAMES = [(b"", errno.EINVAL), (b"a/b", errno.EINVAL), (b"a\0b", errno.EINVAL),
             (b".", errno.EINVAL), (b"..", errno.EINVAL), (b"x" * 256, errno.ENAMETOOLONG)]  # fmt: skip


@pytest.mark.parametrize("name,code", BAD_NAMES)
def test_bad_names(mdt_store: MdtStore, name: bytes, code: int) -> None:
    f = mkfile(mdt_store, b"f")
    with raises(code):
        mdt_store.create(ROOT, ROOT_INO, name, 0o644)
    with raises(code):
        mdt_store.mkdir(ROOT, ROOT_INO, name, 0o755)
    with raises(code):
        mdt_store.symlink(ROOT, ROOT_INO, name, b"t")
    with raises(code):
        mdt_store.link(ROOT, f["ino"], ROOT_INO, name)
    with raises(code):
        mdt_store.rename(ROOT, ROOT_INO, b"f", ROOT_INO, name)
    if name not in (b".", b".."):
        with raises(code):
            mdt_store.lookup(ROOT, ROOT_INO, name)
        with raises(code):
            mdt_store.unlink(ROOT, ROOT_INO, name)
    assert mdt_store.last_transno == 1


def test_longest_name_is_fine(mdt_store: MdtStore) -> None:
    name = b"n" * 255
    a = mkfile(mdt_store, name)
    assert mdt_store.lookup(ROOT, ROOT_INO, name)["ino"] == a["ino"]


def test_lookup_errors(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    with raises(errno.ENOENT):
        mdt_store.lookup(ROOT, ROOT_INO, b"missing")
    with raises(errno.ENOTDIR):
        mdt_store.lookup(ROOT, f["ino"], b"x")
    with raises(errno.ENOENT):
        mdt_store.lookup(ROOT, 9999, b"x")
    with raises(errno.ENOENT):
        mdt_store.getattr(9999)


def test_lookup_dot_and_dotdot(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    sub = mkdir(mdt_store, b"sub", parent=d["ino"])
    assert mdt_store.lookup(ROOT, sub["ino"], b".")["ino"] == sub["ino"]
    assert mdt_store.lookup(ROOT, sub["ino"], b"..")["ino"] == d["ino"]
    assert mdt_store.lookup(ROOT, ROOT_INO, b"..")["ino"] == ROOT_INO


def test_inode_numbers_never_reused(mdt_store: MdtStore) -> None:
    a = mkfile(mdt_store, b"a")
    mdt_store.unlink(ROOT, ROOT_INO, b"a")
    b = mkfile(mdt_store, b"a")
    assert b["ino"] > a["ino"]


def test_parent_times_follow_entries(mdt_store: MdtStore) -> None:
    before = mdt_store.getattr(ROOT_INO)
    mkfile(mdt_store, b"f")
    after_create = mdt_store.getattr(ROOT_INO)
    assert after_create["mtime_ns"] > before["mtime_ns"]
    assert after_create["ctime_ns"] == after_create["mtime_ns"]
    mdt_store.unlink(ROOT, ROOT_INO, b"f")
    after_unlink = mdt_store.getattr(ROOT_INO)
    assert after_unlink["mtime_ns"] > after_create["mtime_ns"]


def test_statfs_counts_inodes(mdt_store: MdtStore) -> None:
    assert mdt_store.statfs() == {"files": 1, "ffree": 2**32 - 1, "namemax": 255}
    mkfile(mdt_store, b"a")
    mkdir(mdt_store, b"d")
    assert mdt_store.statfs()["files"] == 3
    mdt_store.unlink(ROOT, ROOT_INO, b"a")
    assert mdt_store.statfs()["files"] == 2


# --------------------------------------------------------------------------- mkdir / symlink / link


def test_mkdir(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d", cred=ROOT, mode=0o6755)
    assert d["mode"] == stat.S_IFDIR | 0o755  # Linux mkdir keeps only rwx and sticky
    assert (d["nlink"], d["size"], d["blocks"], d["layout"]) == (2, 4096, 8, None)
    assert mdt_store.getattr(ROOT_INO)["nlink"] == 3
    mkdir(mdt_store, b"sub", parent=d["ino"])
    assert mdt_store.getattr(d["ino"])["nlink"] == 3
    assert mdt_store.getattr(ROOT_INO)["nlink"] == 3
    with raises(errno.EEXIST):
        mdt_store.mkdir(ROOT, ROOT_INO, b"d", 0o755)
    sticky = mkdir(mdt_store, b"t", mode=0o1777)
    assert sticky["mode"] == stat.S_IFDIR | 0o1777


def test_symlink_and_readlink(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    _, a = mdt_store.symlink(ALICE, pub, b"l", b"some/target")
    assert a["mode"] == stat.S_IFLNK | 0o777
    assert (a["size"], a["blocks"], a["nlink"], a["uid"]) == (11, 1, 1, 1000)
    assert mdt_store.readlink(a["ino"]) == b"some/target"
    f = mkfile(mdt_store, b"f")
    with raises(errno.EINVAL):
        mdt_store.readlink(f["ino"])
    with raises(errno.ENOENT):
        mdt_store.readlink(12345)
    with raises(errno.EEXIST):
        mdt_store.symlink(ROOT, pub, b"l", b"x")


def test_symlink_target_limits(mdt_store: MdtStore) -> None:
    _, a = mdt_store.symlink(ROOT, ROOT_INO, b"long", b"t" * 4095)
    assert mdt_store.readlink(a["ino"]) == b"t" * 4095
    with raises(errno.ENAMETOOLONG):
        mdt_store.symlink(ROOT, ROOT_INO, b"toolong", b"t" * 4096)
    with raises(errno.ENOENT):
        mdt_store.symlink(ROOT, ROOT_INO, b"empty", b"")


def test_hard_links(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    f = mkfile(mdt_store, b"f")
    _, a = mdt_store.link(ROOT, f["ino"], d["ino"], b"g")
    assert a["ino"] == f["ino"] and a["nlink"] == 2
    assert a["ctime_ns"] > f["ctime_ns"]
    assert mdt_store.lookup(ROOT, d["ino"], b"g")["ino"] == f["ino"]
    mdt_store.unlink(ROOT, ROOT_INO, b"f")
    assert mdt_store.getattr(f["ino"])["nlink"] == 1
    assert destroyed(mdt_store) == []
    mdt_store.unlink(ROOT, d["ino"], b"g")
    with raises(errno.ENOENT):
        mdt_store.getattr(f["ino"])
    assert destroyed(mdt_store) == objects_of(f)


def test_link_errors(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    f = mkfile(mdt_store, b"f")
    with raises(errno.EPERM):
        mdt_store.link(ROOT, d["ino"], ROOT_INO, b"d2")
    with raises(errno.EEXIST):
        mdt_store.link(ROOT, f["ino"], ROOT_INO, b"d")
    with raises(errno.ENOENT):
        mdt_store.link(ROOT, 4242, ROOT_INO, b"x")
    with raises(errno.ENOTDIR):
        mdt_store.link(ROOT, f["ino"], f["ino"], b"x")
    with raises(errno.EACCES):
        mdt_store.link(ALICE, f["ino"], d["ino"], b"x")


def test_link_to_orphan_fails(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    _, h = mdt_store.open(ROOT, f["ino"], os.O_RDONLY)
    mdt_store.unlink(ROOT, ROOT_INO, b"f")
    with raises(errno.ENOENT):
        mdt_store.link(ROOT, f["ino"], ROOT_INO, b"again")


# --------------------------------------------------------------------------- unlink / rmdir


def test_unlink_errors(mdt_store: MdtStore) -> None:
    mkdir(mdt_store, b"d")
    with raises(errno.EISDIR):
        mdt_store.unlink(ROOT, ROOT_INO, b"d")
    with raises(errno.ENOENT):
        mdt_store.unlink(ROOT, ROOT_INO, b"nope")
    mdt_store.symlink(ROOT, ROOT_INO, b"l", b"d")
    _, res = mdt_store.unlink(ROOT, ROOT_INO, b"l")
    with raises(errno.ENOENT):
        mdt_store.getattr(res["ino"])


def test_unlink_logs_every_stripe(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f", layout={"stripe_count": 3})
    _, res = mdt_store.unlink(ROOT, ROOT_INO, b"f")
    assert res == {"ino": f["ino"]}
    assert destroyed(mdt_store) == objects_of(f)
    assert len(destroyed(mdt_store)) == 3


def test_rmdir(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    mkfile(mdt_store, b"f", parent=d["ino"])
    mkfile(mdt_store, b"plain")
    with raises(errno.ENOTEMPTY):
        mdt_store.rmdir(ROOT, ROOT_INO, b"d")
    with raises(errno.ENOTDIR):
        mdt_store.rmdir(ROOT, ROOT_INO, b"plain")
    with raises(errno.ENOENT):
        mdt_store.rmdir(ROOT, ROOT_INO, b"nope")
    mdt_store.unlink(ROOT, d["ino"], b"f")
    assert mdt_store.getattr(ROOT_INO)["nlink"] == 3
    _, res = mdt_store.rmdir(ROOT, ROOT_INO, b"d")
    assert res == {"ino": d["ino"]}
    assert mdt_store.getattr(ROOT_INO)["nlink"] == 2
    with raises(errno.ENOENT):
        mdt_store.getattr(d["ino"])


def test_rmdir_dot_names_and_root(mdt_store: MdtStore) -> None:
    with raises(errno.EINVAL):
        mdt_store.rmdir(ROOT, ROOT_INO, b".")
    with raises(errno.ENOTEMPTY):
        mdt_store.rmdir(ROOT, ROOT_INO, b"..")
    assert mdt_store.getattr(ROOT_INO)["nlink"] == 2


def test_removed_open_directory_refuses_new_entries(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    _, h = mdt_store.open(ROOT, d["ino"], os.O_RDONLY)
    mdt_store.rmdir(ROOT, ROOT_INO, b"d")
    assert mdt_store.getattr(d["ino"])["nlink"] == 0
    with raises(errno.ENOENT):
        mdt_store.create(ROOT, d["ino"], b"f", 0o644)
    assert mdt_store.readdir(ROOT, d["ino"], 0, 10) == []
    mdt_store.close(h["handle"])
    with raises(errno.ENOENT):
        mdt_store.getattr(d["ino"])


# --------------------------------------------------------------------------- readdir


def test_readdir_basics(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    names = [b"c", b"a", b"b"]
    inos = [mkfile(mdt_store, n, parent=d["ino"])["ino"] for n in names]
    ents = mdt_store.readdir(ROOT, d["ino"], 0, 100)
    assert [e[0] for e in ents] == names  # creation order, no "." or ".."
    assert [e[1]["ino"] for e in ents] == inos
    assert all(set(e[1]) == ATTR_KEYS for e in ents)
    cookies = [e[2] for e in ents]
    assert cookies == sorted(cookies) and len(set(cookies)) == 3
    assert mdt_store.readdir(ROOT, d["ino"], cookies[0], 1)[0][0] == b"a"
    assert mdt_store.readdir(ROOT, d["ino"], cookies[-1], 100) == []
    assert mdt_store.readdir(ROOT, d["ino"], 0, 0) == []
    with raises(errno.ENOTDIR):
        mdt_store.readdir(ROOT, inos[0], 0, 10)
    with raises(errno.ENOENT):
        mdt_store.readdir(ROOT, 31337, 0, 10)


def test_readdir_cookies_stable_across_changes(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")["ino"]
    for i in range(10):
        mkfile(mdt_store, b"f%d" % i, parent=d)
    first = mdt_store.readdir(ROOT, d, 0, 4)
    assert [e[0] for e in first] == [b"f0", b"f1", b"f2", b"f3"]
    cookie = first[-1][2]
    mdt_store.unlink(ROOT, d, b"f1")  # already returned
    mdt_store.unlink(ROOT, d, b"f3")  # the cookie's own entry
    mdt_store.unlink(ROOT, d, b"f6")  # not yet returned
    mkfile(mdt_store, b"new", parent=d)
    mdt_store.rename(ROOT, d, b"f0", d, b"f0-renamed")  # keeps its id: not seen again
    rest: list[bytes] = []
    while True:
        page = mdt_store.readdir(ROOT, d, cookie, 2)
        if not page:
            break
        rest += [e[0] for e in page]
        cookie = page[-1][2]
    assert rest == [b"f4", b"f5", b"f7", b"f8", b"f9", b"new"]


def test_readdir_large_directory_paged(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"big")["ino"]
    expected = {b"entry-%05d" % i for i in range(10_000)}
    for name in sorted(expected):
        mdt_store.create(ROOT, d, name, stat.S_IFREG | 0o644)
    seen: list[bytes] = []
    cookie = 0
    pages = 0
    while True:
        page = mdt_store.readdir(ROOT, d, cookie, 100)
        if not page:
            break
        assert len(page) <= 100
        pages += 1
        seen += [name for name, _, _ in page]
        cookie = page[-1][2]
    assert pages == 100
    assert len(seen) == len(set(seen)) == 10_000
    assert set(seen) == expected


# --------------------------------------------------------------------------- path_of (fid2path)


def test_path_of_root_and_top_level(mdt_store: MdtStore) -> None:
    assert mdt_store.path_of(ROOT_INO) == b""
    f = mkfile(mdt_store, b"f")["ino"]
    d = mkdir(mdt_store, b"d")["ino"]
    assert mdt_store.path_of(f) == b"f"
    assert mdt_store.path_of(d) == b"d"


def test_path_of_nested_files_dirs_and_symlinks(mdt_store: MdtStore) -> None:
    a = mkdir(mdt_store, b"a")["ino"]
    b = mkdir(mdt_store, b"b", parent=a)["ino"]
    c = mkdir(mdt_store, b"c \xff", parent=b)["ino"]
    f = mkfile(mdt_store, b"file", parent=c)["ino"]
    ln = mdt_store.symlink(ROOT, b, b"sym", b"../x")[1]["ino"]
    assert mdt_store.path_of(b) == b"a/b"
    assert mdt_store.path_of(c) == b"a/b/c \xff"
    assert mdt_store.path_of(f) == b"a/b/c \xff/file"
    assert mdt_store.path_of(ln) == b"a/b/sym"


def test_path_of_follows_renames(mdt_store: MdtStore) -> None:
    a = mkdir(mdt_store, b"a")["ino"]
    b = mkdir(mdt_store, b"b")["ino"]
    sub = mkdir(mdt_store, b"sub", parent=a)["ino"]
    f = mkfile(mdt_store, b"f", parent=sub)["ino"]
    mdt_store.rename(ROOT, a, b"sub", b, b"moved", 0)
    assert mdt_store.path_of(sub) == b"b/moved"
    assert mdt_store.path_of(f) == b"b/moved/f"
    mdt_store.rename(ROOT, sub, b"f", ROOT_INO, b"g", 0)
    assert mdt_store.path_of(f) == b"g"


def test_path_of_hard_link_gives_one_path(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")["ino"]
    f = mkfile(mdt_store, b"f")["ino"]
    mdt_store.link(ROOT, f, d, b"other")
    assert mdt_store.path_of(f) in (b"f", b"d/other")
    mdt_store.unlink(ROOT, ROOT_INO, b"f")
    assert mdt_store.path_of(f) == b"d/other"


def test_path_of_unknown_removed_and_orphan(mdt_store: MdtStore) -> None:
    with raises(errno.ENOENT):
        mdt_store.path_of(999_999)
    f = mkfile(mdt_store, b"f")["ino"]
    mdt_store.unlink(ROOT, ROOT_INO, b"f")
    with raises(errno.ENOENT):
        mdt_store.path_of(f)
    d = mkdir(mdt_store, b"d")["ino"]
    mdt_store.rmdir(ROOT, ROOT_INO, b"d")
    with raises(errno.ENOENT):
        mdt_store.path_of(d)
    # open, then unlinked: the inode lives on as an orphan, with no path
    res = mdt_store.create(ROOT, ROOT_INO, b"o", stat.S_IFREG | 0o644, open_flags=os.O_RDWR)[1]
    mdt_store.unlink(ROOT, ROOT_INO, b"o")
    with raises(errno.ENOENT):
        mdt_store.path_of(res["attr"]["ino"])
    mdt_store.close(res["handle"])
