"""A shell session on a real mlustre mount: coreutils, tar, git, make/gcc,
permissions as an unprivileged user, xattrs, odd names and paths.

Everything that touches the mount goes through a subprocess with a timeout,
except a few tests that need exact syscalls (renameat2, open-unlinked files,
O_APPEND, scandir) and run them in-process.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
from mnthelpers import make_world_dir, remove_tree_if_unmounted, run, sh, sh_ok

# --------------------------------------------------------------------------
# helpers


def put(path: Path, data: bytes | str) -> None:
    """Write a whole file through a subprocess (timeout-protected)."""
    run(["dd", f"of={path}", "status=none"], input=data, timeout=60).check()


def get(path: Path) -> bytes:
    return run(["cat", str(path)], timeout=60).check().raw


def stat_c(fmt: str, *paths: Path | str, cwd: Path | None = None) -> list[str]:
    out = run(["stat", "-c", fmt, *map(str, paths)], cwd=cwd, timeout=60).check().stdout
    return out.splitlines()


def fails_with(res, message: str) -> None:
    assert res.rc not in (0, None), "expected a failure\n" + res.describe()
    assert message in res.stderr, f"expected {message!r} on stderr\n" + res.describe()


# --------------------------------------------------------------------------
# a source tree to copy: part of /usr/include plus a few special files

INCLUDE_PARTS = ["linux", "asm-generic", "arpa", "netinet", "python3.11", "x86_64-linux-gnu"]


@pytest.fixture(scope="module")
def src_tree(base_tmp):
    root = make_world_dir(base_tmp, "src-")
    src = root / "src"
    src.mkdir()
    inc = Path("/usr/include")
    parts = [str(inc / p) for p in INCLUDE_PARTS if (inc / p).is_dir()]
    if parts:
        run(["cp", "-a", *parts, str(src)], timeout=120).check()
    top = sorted(str(p) for p in inc.glob("*.h"))[:150]
    if top:
        run(["cp", "-a", *top, str(src)], timeout=60).check()
    nfiles = sum(len(f) for _, _, f in os.walk(src))
    if nfiles < 300:  # no usable /usr/include: make something of similar shape
        for i in range(40):
            d = src / f"gen{i:02d}"
            d.mkdir()
            for j in range(25):
                (d / f"file{j}.h").write_bytes(os.urandom(37 * (i + j) + 1))
    special = src / "special"
    special.mkdir()
    (special / "empty").write_bytes(b"")
    (special / "empty-dir").mkdir()
    (special / "with space & 'quote'").write_text("odd name\n")
    (special / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (special / "script.sh").chmod(0o755)
    (special / "private").write_text("secret\n")
    (special / "private").chmod(0o600)
    (special / "hard1").write_bytes(os.urandom(5000))
    os.link(special / "hard1", special / "hard2")
    os.symlink("script.sh", special / "link-rel")
    os.symlink("/nonexistent/target", special / "link-dangling")
    os.symlink("../special", special / "link-dir")
    (special / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    os.utime(special / "private", (1_000_000_000, 1_000_000_000))
    yield src
    remove_tree_if_unmounted(root)


@pytest.fixture(scope="module")
def mounted_tree(cluster, src_tree):
    """`cp -a` of src_tree onto the mount (the copy itself is under test)."""
    dest_parent = cluster.mnt / "tree"
    dest_parent.mkdir()
    res = run(["cp", "-a", str(src_tree), str(dest_parent)], timeout=240)
    res.check()
    return dest_parent / src_tree.name


def listing(root: Path) -> list[tuple]:
    """Metadata of a tree as `find -printf` reports it (dir sizes and dir
    link counts depend on the filesystem and are left out)."""
    fmt = r"%P\0%y\0%m\0%s\0%n\0%U\0%G\0%T@\0%l\0\n"
    out = run(["find", str(root), "-printf", fmt], timeout=120).check().stdout
    rows = []
    for line in out.splitlines():
        p, kind, mode, size, nlink, uid, gid, mtime, target, _ = line.split("\0")
        if kind == "d":
            size = nlink = "-"
        rows.append((p, kind, mode, size, nlink, uid, gid, int(float(mtime)), target))
    return sorted(rows)


def assert_same_listing(got_root: Path, want_root: Path) -> None:
    got, want = listing(got_root), listing(want_root)
    if got != want:
        extra = sorted(set(got) - set(want))[:10]
        missing = sorted(set(want) - set(got))[:10]
        raise AssertionError(
            f"{got_root} differs from {want_root} "
            "(path, type, mode, size, nlink, uid, gid, mtime, target)\n"
            f"only in copy:   {extra}\nonly in source: {missing}"
        )


def tree_hashes(root: Path) -> str:
    return sh_ok(
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum",
        cwd=root,
        timeout=240,
    )


# --------------------------------------------------------------------------
# copying, listing, archiving


@pytest.mark.timeout(300)
def test_cp_a_then_diff_r(mounted_tree, src_tree):
    res = run(["diff", "-r", "--no-dereference", str(src_tree), str(mounted_tree)], timeout=240)
    res.check()
    assert_same_listing(mounted_tree, src_tree)


@pytest.mark.timeout(60)
def test_cp_preserves_modes(workdir):
    """cp -a/-p set modes via the system.posix_acl_access xattr when it is
    accepted; the mode must come out right either way."""
    sh_ok(
        """
        mkdir -p src/sub && echo x > src/sub/f && echo y > src/g
        chmod 751 src; chmod 705 src/sub; chmod 640 src/sub/f; chmod 604 src/g
        cp -a src a && cp -rp src p
        """,
        cwd=workdir,
    )
    want = ["751", "705", "640", "604"]
    for copy in ("src", "a", "p"):
        got = stat_c("%a", copy, f"{copy}/sub", f"{copy}/sub/f", f"{copy}/g", cwd=workdir)
        assert got == want, f"modes after copy to {copy}: {got}"


@pytest.mark.timeout(180)
def test_find_counts_match_source(mounted_tree, src_tree):
    queries = [
        "find . | wc -l",
        "find . -type f | wc -l",
        "find . -type d | wc -l",
        "find . -type l | wc -l",
        "find . -name '*.h' | wc -l",
        "find . -type f -size +10k | wc -l",
        "find . -type f -links 2 | wc -l",
        "find . -perm -u+x -type f | wc -l",
        "find . -empty | LC_ALL=C sort",
    ]
    for q in queries:
        want = sh_ok(q, cwd=src_tree)
        got = sh_ok(q, cwd=mounted_tree, timeout=120)
        assert got == want, q


@pytest.mark.timeout(120)
def test_du_and_df(cluster, mounted_tree, src_tree):
    du_k = int(sh_ok(f"du -sk {mounted_tree}").split()[0])
    assert du_k > 0
    total = int(
        sh_ok("find . -type f -printf '%s\\n' | awk '{s+=$1} END {print s+0}'", cwd=src_tree)
    )
    apparent = int(sh_ok(f"du -sb {mounted_tree}").split()[0])
    assert apparent >= total
    # blocks of a non-sparse 3 MiB file cover its size
    big_k = int(sh_ok(f"du -k {mounted_tree}/special/big").split()[0])
    assert big_k >= 3 * 1024, "st_blocks of a written 3 MiB file is too small"

    lines = sh_ok(f"df -P {cluster.mnt}").splitlines()
    assert len(lines) == 2, lines
    fields = lines[1].split()
    assert fields[-1] == str(cluster.mnt), lines
    size_k, used_k, avail_k = (int(x) for x in fields[1:4])
    assert size_k > 0 and 0 <= avail_k <= size_k and used_k >= 0, lines
    bsize, blocks, bfree, bavail = (
        int(x) for x in sh_ok(f"stat -f -c '%S %b %f %a' {cluster.mnt}").split()
    )
    assert bsize > 0 and blocks > 0 and 0 <= bavail <= bfree <= blocks


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tar_roundtrip_then_rm_rf(workdir, mounted_tree, src_tree):
    tarball = workdir / "tree.tar"
    sh_ok(f"tar -C {mounted_tree.parent} -cf {tarball} {mounted_tree.name}", timeout=240)
    out = workdir / "x"
    out.mkdir()
    sh_ok(f"tar -C {out} -xpf {tarball}", timeout=240)
    extracted = out / mounted_tree.name
    # tar --compare checks contents, modes, owners, mtimes and link targets
    sh_ok(f"tar -C {out} -df {tarball}", timeout=240)
    assert tree_hashes(extracted) == tree_hashes(src_tree)
    assert_same_listing(extracted, mounted_tree)

    sh_ok(f"rm -rf {extracted}", timeout=240)
    assert sh_ok("ls -A", cwd=out) == ""
    sh_ok(f"rm {tarball} && rmdir {out}")
    assert sh_ok("ls -A", cwd=workdir) == ""


# --------------------------------------------------------------------------
# namespace operations


@pytest.mark.timeout(60)
def test_mkdir_p_and_rmdir(workdir):
    sh_ok("mkdir -p a/b/c && test -d a/b/c && mkdir -p a/b/c", cwd=workdir)
    assert sh_ok("find . | LC_ALL=C sort", cwd=workdir).split() == [".", "./a", "./a/b", "./a/b/c"]
    fails_with(sh("mkdir a", cwd=workdir), "File exists")
    fails_with(sh("rmdir a", cwd=workdir), "Directory not empty")
    fails_with(sh("mkdir nothere/x", cwd=workdir), "No such file or directory")
    sh_ok("touch file", cwd=workdir)
    fails_with(sh("mkdir file/x", cwd=workdir), "Not a directory")
    fails_with(sh("rmdir file", cwd=workdir), "Not a directory")
    sh_ok("rmdir -p a/b/c && rm file", cwd=workdir)
    assert sh_ok("ls -A", cwd=workdir) == ""


@pytest.mark.timeout(60)
def test_mv(workdir):
    sh_ok(
        """
        echo one > f1; echo two > f2; mkdir d1 d2; echo three > d1/f3
        mv f1 g1                 # rename in place
        mv g1 d2/                # file across directories
        mv d1 d2/d1moved         # directory across directories
        mv -f f2 d2/g1           # over an existing file
        mkdir e && mv -T d2/d1moved e   # directory over an empty directory
        """,
        cwd=workdir,
    )
    assert sh_ok("find . | LC_ALL=C sort", cwd=workdir).split() == [
        ".",
        "./d2",
        "./d2/g1",
        "./e",
        "./e/f3",
    ]
    assert get(workdir / "d2/g1") == b"two\n"
    assert get(workdir / "e/f3") == b"three\n"
    sh_ok("mkdir -p full/sub m && echo x > m/x", cwd=workdir)
    fails_with(sh("mv -T m full", cwd=workdir), "Directory not empty")
    fails_with(sh("mv -T d2/g1 full", cwd=workdir), "cannot overwrite directory")
    fails_with(sh("mv -T full d2/g1", cwd=workdir), "cannot overwrite non-directory")
    fails_with(sh("mv m m/inside", cwd=workdir), "cannot move")
    # the failed moves changed nothing
    assert get(workdir / "m/x") == b"x\n" and get(workdir / "d2/g1") == b"two\n"


@pytest.mark.timeout(60)
def test_hard_links(workdir):
    sh_ok("echo data > a && mkdir sub && ln a b && ln a sub/c", cwd=workdir)
    assert stat_c("%h", "a", "b", "sub/c", cwd=workdir) == ["3"] * 3
    inos = stat_c("%i", "a", "b", "sub/c", cwd=workdir)
    assert len(set(inos)) == 1
    sh_ok("echo more >> b", cwd=workdir)
    assert get(workdir / "sub/c") == b"data\nmore\n"
    sh_ok("rm a", cwd=workdir)
    assert stat_c("%h", "b", "sub/c", cwd=workdir) == ["2", "2"]
    fails_with(sh("ln sub sublink", cwd=workdir), "hard link not allowed for directory")
    fails_with(sh("ln b sub/c", cwd=workdir), "File exists")
    sh_ok("mv b sub/renamed", cwd=workdir)
    assert stat_c("%h %s", "sub/renamed", "sub/c", cwd=workdir) == ["2 10", "2 10"]
    sh_ok("rm sub/c", cwd=workdir)
    assert stat_c("%h", "sub/renamed", cwd=workdir) == ["1"]
    assert get(workdir / "sub/renamed") == b"data\nmore\n"


@pytest.mark.timeout(60)
def test_symlinks(workdir):
    long_target = "/".join(["x" * 200] * 5)
    sh_ok(
        f"""
        echo hi > target; mkdir dir; echo in > dir/f
        ln -s target l; ln -s missing/x dangling; ln -s /nonexistent/x abs; ln -s dir ldir
        ln -s {long_target} long
        """,
        cwd=workdir,
    )
    assert sh_ok("readlink l dangling abs ldir", cwd=workdir).split() == [
        "target",
        "missing/x",
        "/nonexistent/x",
        "dir",
    ]
    assert sh_ok("readlink long", cwd=workdir).strip() == long_target
    assert get(workdir / "l") == b"hi\n"
    assert get(workdir / "ldir/f") == b"in\n"
    assert stat_c("%F|%s", "l", "long", cwd=workdir) == [
        "symbolic link|6",
        f"symbolic link|{len(long_target)}",
    ]
    assert stat_c("%F", "-L", "l", "ldir", cwd=workdir) == ["regular file", "directory"]
    fails_with(sh("cat dangling", cwd=workdir), "No such file or directory")
    sh_ok("test -L dangling && ! test -e dangling", cwd=workdir)
    sh_ok("ln -sfn dir l && test -d l && rm l && test -f target", cwd=workdir)
    assert sh_ok("readlink -f ldir/f", cwd=workdir).strip() == str(workdir / "dir/f")


@pytest.mark.timeout(60)
def test_rename_over_and_mv_T(workdir):
    sh_ok("echo a > a; echo b > b; mkdir d; mkdir e; echo x > e/x", cwd=workdir)
    sh_ok("mv -T a b", cwd=workdir)
    assert get(workdir / "b") == b"a\n"
    assert sh_ok("ls -A", cwd=workdir).split() == ["b", "d", "e"]
    sh_ok("mv -T e d", cwd=workdir)  # over an empty directory
    assert sh_ok("ls -A", cwd=workdir).split() == ["b", "d"]
    assert get(workdir / "d/x") == b"x\n"


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


@pytest.mark.timeout(60)
def test_renameat2_exchange_and_noreplace(workdir):
    sh_ok("echo A > a; echo B > b; mkdir d; echo in > d/f", cwd=workdir)
    renameat2(workdir / "a", workdir / "b", RENAME_EXCHANGE)
    assert get(workdir / "a") == b"B\n" and get(workdir / "b") == b"A\n"
    renameat2(workdir / "a", workdir / "d", RENAME_EXCHANGE)  # file <-> directory
    assert get(workdir / "a/f") == b"in\n" and get(workdir / "d") == b"B\n"
    with pytest.raises(OSError) as exc:
        renameat2(workdir / "b", workdir / "missing", RENAME_EXCHANGE)
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(OSError) as exc:
        renameat2(workdir / "b", workdir / "d", RENAME_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    assert get(workdir / "b") == b"A\n" and get(workdir / "d") == b"B\n"
    renameat2(workdir / "b", workdir / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(workdir)) == ["a", "c", "d"]
    assert get(workdir / "c") == b"A\n"


# --------------------------------------------------------------------------
# permissions, ownership, setgid


@pytest.mark.timeout(120)
def test_permissions_as_nobody(workdir):
    sh_ok(
        """
        echo secret > priv; chmod 600 priv
        echo public > pub; chmod 644 pub
        mkdir rootdir; chmod 755 rootdir
        mkdir closed; chmod 700 closed; echo c > closed/f; chmod 644 closed/f
        mkdir sticky; chmod 1777 sticky; echo r > sticky/rootfile; chmod 666 sticky/rootfile
        """,
        cwd=workdir,
    )
    assert stat_c("%a %U", "priv", "pub", "rootdir", "sticky", cwd=workdir) == [
        "600 root",
        "644 root",
        "755 root",
        "1777 root",
    ]

    def nobody(script: str):
        return sh(script, cwd=workdir, user="nobody")

    fails_with(nobody("cat priv"), "Permission denied")
    assert nobody("cat pub").check().stdout == "public\n"
    fails_with(nobody("echo x >> pub"), "Permission denied")
    fails_with(nobody("touch rootdir/new"), "Permission denied")
    fails_with(nobody("ls closed"), "Permission denied")
    fails_with(nobody("cat closed/f"), "Permission denied")
    fails_with(nobody("chmod 777 pub"), "Operation not permitted")
    fails_with(nobody("rm -f sticky/rootfile"), "Operation not permitted")
    fails_with(nobody("mv sticky/rootfile sticky/other"), "Operation not permitted")
    nobody("echo appended >> sticky/rootfile").check()  # 0666: writable
    nobody("echo mine > sticky/mine && chmod 600 sticky/mine && rm sticky/mine").check()
    nobody("ls rootdir && stat priv >/dev/null").check()
    assert get(workdir / "sticky/rootfile") == b"r\nappended\n"
    assert get(workdir / "priv") == b"secret\n"  # root still may

    sh_ok("chown 65534:65534 priv && chmod 000 pub", cwd=workdir)
    assert stat_c("%u:%g %a", "priv", "pub", cwd=workdir) == ["65534:65534 600", "0:0 0"]
    assert nobody("cat priv && echo more >> priv && cat priv").check().stdout == (
        "secret\nsecret\nmore\n"
    )
    fails_with(nobody("cat pub"), "Permission denied")
    assert get(workdir / "pub") == b"public\n"  # root bypasses mode bits
    fails_with(nobody("chgrp 0 priv"), "Operation not permitted")
    fails_with(nobody("chown 0 priv"), "Operation not permitted")
    nobody("chmod 640 priv").check()
    assert stat_c("%a", "priv", cwd=workdir) == ["640"]
    # a file created by nobody belongs to nobody
    sh_ok("chmod 777 rootdir", cwd=workdir)
    nobody("touch rootdir/byn && mkdir rootdir/dbyn").check()
    assert stat_c("%u:%g", "rootdir/byn", "rootdir/dbyn", cwd=workdir) == ["65534:65534"] * 2


@pytest.mark.timeout(60)
def test_setgid_directory_inheritance(workdir):
    sh_ok("mkdir g && chgrp 4242 g && chmod 2777 g && touch g/f && mkdir g/sub", cwd=workdir)
    assert stat_c("%g %a", "g", "g/f", "g/sub", cwd=workdir) == [
        "4242 2777",
        "4242 644",
        "4242 2755",
    ]
    sh("touch g/byn && mkdir g/dbyn", cwd=workdir, user="nobody").check()
    assert stat_c("%u %g", "g/byn", "g/dbyn", cwd=workdir) == ["65534 4242"] * 2
    assert stat_c("%a", "g/dbyn", cwd=workdir) == ["2755"]
    # without setgid, the creator's group is used
    sh_ok("mkdir plain && chgrp 4242 plain && chmod 777 plain", cwd=workdir)
    sh("touch plain/byn", cwd=workdir, user="nobody").check()
    assert stat_c("%g", "plain/byn", cwd=workdir) == ["65534"]


def modes_over(paths: list[str], cwd: Path, seconds: float = 2.5) -> set[tuple[str, ...]]:
    """Every distinct answer of `stat -c %a` for paths during a few seconds:
    longer than the client's attribute cache timeout, so that a change the
    servers made behind the client's back shows up."""
    seen = set()
    deadline = time.monotonic() + seconds
    while True:
        seen.add(tuple(stat_c("%a", *paths, cwd=cwd)))
        if time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


@pytest.mark.timeout(60)
def test_setid_bits_and_writes(workdir):
    """Linux semantics: a write by a process without CAP_FSETID clears the
    set-user-ID bit (and set-group-ID with group-exec); root keeps them."""
    sh_ok("echo x > rootfile && chmod 6755 rootfile && echo more >> rootfile", cwd=workdir)
    sh_ok("echo x > rootfile2 && chmod 4755 rootfile2", cwd=workdir)
    sh_ok(
        f'{shlex.quote(sys.executable)} -c \'import os; fd = os.open("rootfile2", os.O_WRONLY); '
        'os.pwrite(fd, b"y", 0); os.close(fd)\'',
        cwd=workdir,
    )
    assert modes_over(["rootfile", "rootfile2"], workdir) == {("6755", "4755")}, (
        "a write by root cleared set-id bits"
    )
    sh_ok("chmod 777 . && touch own && chown 65534:65534 own && chmod 6777 own", cwd=workdir)
    sh("echo by-nobody >> own", cwd=workdir, user="nobody").check()
    assert modes_over(["own"], workdir) == {("777",)}, "unprivileged write kept set-id bits"


# --------------------------------------------------------------------------
# stat, times, sizes


@pytest.mark.timeout(60)
def test_stat_fields(workdir):
    put(workdir / "f", b"x" * 1234)
    sh_ok("mkdir d && ln -s f l && head -c 1048576 /dev/urandom > big", cwd=workdir)
    assert stat_c("%s|%h|%F|%a|%u|%g", "f", "l", cwd=workdir) == [
        "1234|1|regular file|644|0|0",
        "1|1|symbolic link|777|0|0",
    ]
    assert stat_c("%F|%a|%u|%g", "d", cwd=workdir) == ["directory|755|0|0"]
    blksize, blocks, unit = (int(x) for x in stat_c("%o %b %B", "big", cwd=workdir)[0].split())
    assert blksize > 0
    assert blocks * unit >= 1048576, "st_blocks does not cover a fully written file"
    now = time.time()
    sh_ok("chmod 600 f", cwd=workdir)
    ctime = int(stat_c("%Z", "f", cwd=workdir)[0])
    assert abs(ctime - now) < 60, "ctime not updated by chmod"
    sh_ok("touch -m -d @1000000000 f && echo more >> f", cwd=workdir)
    mtime = int(stat_c("%Y", "f", cwd=workdir)[0])
    assert abs(mtime - time.time()) < 60, "mtime not updated by a write"
    root = stat_c("%F", workdir.parent)
    assert root == ["directory"]


@pytest.mark.timeout(60)
def test_directory_link_count(workdir):
    sh_ok("mkdir d", cwd=workdir)
    assert stat_c("%h", "d", cwd=workdir) == ["2"]
    sh_ok("mkdir d/x d/y && touch d/f", cwd=workdir)
    assert stat_c("%h", "d", cwd=workdir) == ["4"]
    sh_ok("rmdir d/x", cwd=workdir)
    assert stat_c("%h", "d", cwd=workdir) == ["3"]
    sh_ok("mv d/y y", cwd=workdir)
    assert stat_c("%h", "d", ".", cwd=workdir) == ["2", "4"]


@pytest.mark.timeout(60)
def test_touch_sets_times(workdir):
    sh_ok("touch f && touch -m -d @1000000000 f", cwd=workdir)
    assert stat_c("%Y", "f", cwd=workdir) == ["1000000000"]
    sh_ok("touch -a -d @1100000000 f", cwd=workdir)
    assert stat_c("%X %Y", "f", cwd=workdir) == ["1100000000 1000000000"]
    sh_ok("touch -d @1234567890 g && mkdir d && touch -d @1234567890 d", cwd=workdir)
    assert stat_c("%X %Y", "g", "d", cwd=workdir) == ["1234567890 1234567890"] * 2
    sh_ok("touch -r g f", cwd=workdir)
    assert stat_c("%Y", "f", cwd=workdir) == ["1234567890"]


@pytest.mark.timeout(60)
def test_read_updates_atime_relatime(workdir):
    """A read updates atime (relatime: when atime is not newer than mtime), not ctime."""
    sh_ok("echo data > f && touch -a -d @1000000000 f", cwd=workdir)
    ctime = stat_c("%Z", "f", cwd=workdir)
    sh_ok("cat f > /dev/null", cwd=workdir)
    deadline = time.monotonic() + 5
    while int(stat_c("%X", "f", cwd=workdir)[0]) == 1000000000:
        assert time.monotonic() < deadline, "atime not updated by a read"
        time.sleep(0.2)
    assert abs(int(stat_c("%X", "f", cwd=workdir)[0]) - time.time()) < 60
    assert stat_c("%Z", "f", cwd=workdir) == ctime


@pytest.mark.timeout(60)
def test_touch_keeps_subsecond_times(workdir):
    sh_ok("touch -m -d @1234567890.123456789 f", cwd=workdir)
    assert stat_c("%.9Y", "f", cwd=workdir) == ["1234567890.123456789"]


@pytest.mark.timeout(120)
def test_truncate_grow_and_shrink(workdir, scratch):
    local, remote = scratch / "f", workdir / "f"
    sh_ok(f"head -c 2621773 /dev/urandom > {local} && cp {local} {remote}")
    for size in ["1572871", "4194304", "+100", "-50", "10", "0", "3000000", "1048576"]:
        sh_ok(f"truncate -s {size} {local} && truncate -s {size} {remote}")
        assert stat_c("%s", remote) == stat_c("%s", local), size
        sh_ok(f"cmp {local} {remote}")
    sh_ok(f"printf abc > {local} && printf abc > {remote}")  # O_TRUNC open
    sh_ok(f"cmp {local} {remote}")
    assert get(remote) == b"abc"


@pytest.mark.timeout(180)
def test_dd_notrunc_patches(workdir, scratch):
    local, remote, patch = scratch / "f", workdir / "f", scratch / "patch"
    sh_ok(f"dd if=/dev/urandom of={local} bs=1M count=8 status=none")
    sh_ok(f"dd if={local} of={remote} bs=1M status=none", timeout=120)
    sh_ok(f"cmp {local} {remote}")
    sh_ok(f"head -c 102400 /dev/urandom > {patch}")
    for offset in [3 * 1048576 - 10000, 12345, 8 * 1048576 - 100, 8 * 1048576 + 5000]:
        for target in (local, remote):
            sh_ok(
                f"dd if={patch} of={target} bs=4096 conv=notrunc oflag=seek_bytes "
                f"seek={offset} status=none"
            )
        assert stat_c("%s", remote) == stat_c("%s", local)
        sh_ok(f"cmp {local} {remote}", timeout=60)
    assert sh_ok(f"sha256sum < {remote}") == sh_ok(f"sha256sum < {local}")


@pytest.mark.timeout(120)
def test_o_append(workdir):
    path = workdir / "log"
    fds = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for _ in range(2)]
    try:
        for i in range(100):
            os.write(fds[i % 2], f"line {i:03d} from fd {i % 2}\n".encode())
    finally:
        for fd in fds:
            os.close(fd)
    expected = "".join(f"line {i:03d} from fd {i % 2}\n" for i in range(100))
    assert get(path).decode() == expected
    # two processes appending at the same time: nothing lost or overwritten
    sh_ok(
        """
        : > par
        (for i in $(seq 200); do echo "A$i" >> par; done) &
        (for i in $(seq 200); do echo "B$i" >> par; done) &
        wait
        """,
        cwd=workdir,
    )
    lines = get(workdir / "par").decode().splitlines()
    want = [f"{who}{i}" for who in "AB" for i in range(1, 201)]
    lost = sorted(set(want) - set(lines), key=want.index)
    assert sorted(lines) == sorted(want), (
        f"{len(lost)} of {len(want)} appended lines lost (e.g. {lost[:8]}), "
        f"{len(lines)} lines in the file"
    )


@pytest.mark.timeout(60)
def test_mmap_shared_write_and_read(workdir):
    path = workdir / "mapped"
    put(path, b"\0" * (3 * 1048576 + 100))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        for off in (0, 4095, 1048575, 2 * 1048576 + 7, 3 * 1048576 + 90):
            m[off : off + 10] = b"0123456789"
        m.flush()
    data = get(path)
    assert len(data) == 3 * 1048576 + 100
    for off in (0, 4095, 1048575, 2 * 1048576 + 7, 3 * 1048576 + 90):
        assert data[off : off + 10] == b"0123456789", off
    assert data.count(b"0123456789") == 5
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[1048575:1048585] == b"0123456789"


@pytest.mark.timeout(60)
def test_umask_applies(workdir):
    sh_ok("umask 027 && touch f && mkdir d && umask 077 && echo x > g", cwd=workdir)
    assert stat_c("%a", "f", "d", "g", cwd=workdir) == ["640", "750", "600"]


@pytest.mark.timeout(60)
def test_open_unlinked_file_keeps_working(workdir):
    path = workdir / "tmpfile"
    with open(path, "w+b") as f:
        f.write(b"hello world\n" * 1000)
        f.flush()
        os.unlink(path)
        assert not os.path.lexists(path)
        assert "tmpfile" not in os.listdir(workdir)
        f.seek(0)
        assert f.read() == b"hello world\n" * 1000
        f.write(b"after unlink\n")
        f.flush()
        st = os.fstat(f.fileno())
        assert st.st_nlink == 0
        assert st.st_size == 12 * 1000 + 13
        f.seek(-13, os.SEEK_END)
        assert f.read() == b"after unlink\n"
        os.ftruncate(f.fileno(), 5)
        f.seek(0)
        assert f.read() == b"hello"
    assert os.listdir(workdir) == []
    # same name can be reused at once, and is a new, empty file
    put(path, b"new")
    assert get(path) == b"new"


# --------------------------------------------------------------------------
# names and paths


@pytest.mark.timeout(60)
def test_name_length_limits(workdir):
    n255, n256 = "n" * 255, "n" * 256
    utf255 = "\u20ac" * 85  # 85 x 3 bytes
    assert len(utf255.encode()) == 255
    sh_ok(f"touch {n255} && mkdir d{n255[1:]} && touch {utf255}", cwd=workdir)
    assert sorted(os.listdir(workdir)) == sorted([n255, "d" + n255[1:], utf255])
    assert stat_c("%s", n255, cwd=workdir) == ["0"]
    for cmd in (
        f"touch {n256}",
        f"mkdir {n256}",
        f"mv {n255} {n256}",
        f"ln -s x {n256}",
        f"ln {n255} {n256}",
    ):
        fails_with(sh(cmd, cwd=workdir), "File name too long")
    fails_with(sh(f"touch x{utf255}", cwd=workdir), "File name too long")
    fails_with(sh(f"stat {n256}", cwd=workdir), "File name too long")
    assert sorted(os.listdir(workdir)) == sorted([n255, "d" + n255[1:], utf255])


@pytest.mark.timeout(120)
def test_deep_path_near_path_max(workdir):
    component = "d" * 200
    prefix = len(str(workdir)) + 1
    depth = (4000 - prefix) // (len(component) + 1)
    rel = "/".join([component] * depth)
    sh_ok(f"mkdir -p {rel}", cwd=workdir)
    deep_file = workdir / rel / "f.txt"
    assert 3800 < len(str(deep_file)) < 4095
    put(deep_file, b"deep\n")
    assert get(deep_file) == b"deep\n"
    assert sh_ok("find . -name f.txt | wc -l", cwd=workdir).strip() == "1"
    sh_ok(f"mv {deep_file} {deep_file}.moved && test -f {deep_file}.moved")
    sh_ok(f"rm -rf {component}", cwd=workdir)
    assert os.listdir(workdir) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_large_directory(workdir):
    count = 5000
    sh_ok(f"seq -f 'entry%05g' 1 {count} | xargs touch", cwd=workdir, timeout=240)
    assert sh_ok("ls | wc -l", cwd=workdir).strip() == str(count)
    # "." and ".." may or may not be listed (POSIX allows both), nothing else may repeat
    assert sh_ok("ls -f | wc -l", cwd=workdir).strip() in (str(count), str(count + 2))
    assert sh_ok("ls -f | LC_ALL=C sort | uniq -d", cwd=workdir) == ""
    with os.scandir(workdir) as it:
        entries = [(e.name, e.is_file(follow_symlinks=False)) for e in it]
    names = [n for n, _ in entries]
    assert len(names) == len(set(names)), "readdir returned duplicates"
    assert set(names) == {f"entry{i:05d}" for i in range(1, count + 1)}
    assert all(is_file for _, is_file in entries)
    sh_ok("rm -f entry*", cwd=workdir, timeout=240)
    assert sh_ok("ls -A", cwd=workdir) == ""


# --------------------------------------------------------------------------
# xattrs


@pytest.mark.timeout(60)
def test_user_xattrs(workdir):
    sh_ok("touch f && mkdir d && chmod 644 f", cwd=workdir)
    sh_ok("setfattr -n user.foo -v bar f && setfattr -n user.dirattr -v yes d", cwd=workdir)
    assert sh_ok("getfattr --only-values -n user.foo f", cwd=workdir) == "bar"
    assert sh_ok("getfattr --only-values -n user.dirattr d", cwd=workdir) == "yes"
    sh_ok("setfattr -n user.foo -v baz f", cwd=workdir)
    sh_ok("setfattr -n user.bin -v 0x00ff10 f && setfattr -n user.empty f", cwd=workdir)
    big = "v" * 4000
    sh_ok(f"setfattr -n user.big -v {big} f", cwd=workdir)
    dump = sh_ok("getfattr -d -m '^user\\.' -e hex f", cwd=workdir)
    attrs = dict(re.findall(r"^(user\.\w+)=?(.*)$", dump, re.MULTILINE))
    assert attrs["user.foo"] == "0x62617a"
    assert attrs["user.bin"] == "0x00ff10"
    assert attrs["user.empty"] in ("", '""', "0x")
    assert attrs["user.big"] == "0x" + big.encode().hex()
    user_attrs = {a for a in os.listxattr(workdir / "f") if a.startswith("user.")}
    assert user_attrs == {"user.foo", "user.bin", "user.empty", "user.big"}
    sh_ok("setfattr -x user.foo f", cwd=workdir)
    fails_with(sh("getfattr -n user.foo f", cwd=workdir), "No such attribute")
    fails_with(sh("setfattr -x user.foo f", cwd=workdir), "No such attribute")
    # writing user.* xattrs needs write permission on the file
    fails_with(sh("setfattr -n user.x -v 1 f", cwd=workdir, user="nobody"), "Permission denied")
    reader = sh("getfattr -n user.bin -e hex f", cwd=workdir, user="nobody").check()
    assert "user.bin=0x00ff10" in reader.stdout


@pytest.mark.timeout(120)
def test_lustre_lov_default_striping(workdir):
    sh_ok(
        "mkdir striped && setfattr -n lustre.lov -v 'stripe_count=2 stripe_size=1048576' striped",
        cwd=workdir,
    )
    dir_lov = sh_ok("getfattr --only-values -n lustre.lov striped", cwd=workdir)
    assert "stripe_count=2" in dir_lov and "stripe_size=1048576" in dir_lov, dir_lov
    sh_ok("head -c 3145735 /dev/urandom > local && cp local striped/f", cwd=workdir)
    file_lov = sh_ok("getfattr --only-values -n lustre.lov striped/f", cwd=workdir)
    assert "stripe_count=2" in file_lov and "stripe_size=1048576" in file_lov, file_lov
    objects = re.search(r"objects=(\S+)", file_lov)
    if objects:
        objs = objects.group(1).split(",")
        assert len(objs) == 2, file_lov
        if all(":" in o for o in objs):
            assert len({o.split(":")[0] for o in objs}) == 2, f"stripes on one OST: {file_lov}"
    sh_ok("cmp local striped/f", cwd=workdir)
    plain_lov = sh_ok("getfattr --only-values -n lustre.lov local", cwd=workdir)
    assert "stripe_count=" in plain_lov, plain_lov


# --------------------------------------------------------------------------
# real programs


GIT_ENV_SCRIPT = """
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
g() { git -c user.name=Tester -c user.email=t@example.com -c init.defaultBranch=main "$@"; }
"""


@pytest.mark.timeout(240)
def test_git_repository(workdir, scratch):
    env = {"HOME": str(scratch)}
    sh_ok(
        GIT_ENV_SCRIPT
        + """
        g init -q repo && cd repo
        for i in $(seq 1 30); do echo "file $i" > f$i; done
        mkdir sub && head -c 300000 /dev/urandom > sub/blob && echo x > sub/x
        g add -A && g commit -q -m first
        echo change >> f1 && g rm -q f2 && g mv f3 sub/f3
        g commit -q -am second
        """,
        cwd=workdir,
        env=env,
        timeout=180,
    )
    repo = workdir / "repo"
    assert sh_ok(GIT_ENV_SCRIPT + "g log --oneline | wc -l", cwd=repo, env=env).strip() == "2"
    assert sh_ok(GIT_ENV_SCRIPT + "g status --porcelain", cwd=repo, env=env) == ""
    sh_ok(GIT_ENV_SCRIPT + "g fsck --full --strict", cwd=repo, env=env, timeout=120)
    sh_ok(GIT_ENV_SCRIPT + "g gc -q && g fsck --full --strict", cwd=repo, env=env, timeout=120)
    sh_ok(
        GIT_ENV_SCRIPT + "g clone -q repo clone && cd clone && g fsck --full && "
        'test $(g log --oneline | wc -l) = 2 && test "$(cat f1)" = "$(printf \'file 1\\nchange\')"',
        cwd=workdir,
        env=env,
        timeout=120,
    )


C_MAIN = r"""#include <stdio.h>
#include "util.h"
int main(void) {
    printf("fib(30)=%ld %s\n", fib(30), greeting());
    return 0;
}
"""
C_UTIL = r"""#include "util.h"
long fib(int n) { long a = 0, b = 1; while (n-- > 0) { long t = a + b; a = b; b = t; } return a; }
const char *greeting(void) { return "hello from mlustre"; }
"""
C_HEADER = "long fib(int n);\nconst char *greeting(void);\n"
MAKEFILE = """CC ?= gcc
prog: main.o util.o
\t$(CC) -o $@ main.o util.o
%.o: %.c util.h
\t$(CC) -O2 -Wall -Werror -c $<
clean:
\trm -f prog *.o
"""


@pytest.mark.timeout(180)
def test_make_and_gcc(workdir):
    for name, text in [
        ("main.c", C_MAIN),
        ("util.c", C_UTIL),
        ("util.h", C_HEADER),
        ("Makefile", MAKEFILE),
    ]:
        put(workdir / name, text)
    sh_ok("make", cwd=workdir, timeout=120)
    expected = "fib(30)=832040 hello from mlustre\n"
    assert sh_ok("./prog", cwd=workdir) == expected
    sh_ok("make -q prog", cwd=workdir)  # up to date: relies on mtimes
    sh_ok("touch -d @1000000000 util.o", cwd=workdir)
    assert sh("make -q prog", cwd=workdir).rc == 1, "make does not see util.o as stale"
    out = sh_ok("make", cwd=workdir, timeout=120)
    assert "util.c" in out and "main.c" not in out, out
    assert sh_ok("./prog && make -q prog", cwd=workdir) == expected
    sh_ok("gcc -o prog2 main.c util.c && ./prog2 > out.txt", cwd=workdir, timeout=120)
    assert get(workdir / "out.txt").decode() == expected
    put(workdir / "script.sh", "#!/bin/sh\necho script ran\n")
    sh_ok("chmod +x script.sh", cwd=workdir)
    assert sh_ok("./script.sh", cwd=workdir) == "script ran\n"
    sh_ok("make clean && test ! -e prog", cwd=workdir)
