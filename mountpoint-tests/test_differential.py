"""Differential test: the same random sequence of file operations on a
directory of the mount and on a local directory (tmpfs at /dev/shm when
present); every result and every errno must match, and after every step
the two trees must be identical (types, modes, sizes, link counts, contents,
symlink targets, user xattrs; not inode numbers or times).

Besides root's operations, a non-owner (uid 65534) writes to and truncates set-id files
(the bits must go, as seen by fstat on its descriptor and in the trees), and truncates
and writes go past the maximum file size (EFBIG, nothing changed). For those the local
directory is one whose filesystem has the mount's maximum file size (ext4's), found by
probing /dev/shm and the temporary directory; without one, the huge cases are left out.

test_differential_catches_* prove the comparison can fail: they run the
same machine on two local directories with one side deliberately wrong.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from mnthelpers import as_user

from mlustre.protocol.constants import MAX_FILE_SIZE

COMPARE_DIR_NLINK = True

TOP = ["a", "b", "c", "d"]
NESTED = ["a/a", "a/b", "b/c", "d/a", "a/b/c"]
paths = st.one_of(st.sampled_from(TOP), st.sampled_from(NESTED))
offsets = st.sampled_from([0, 1, 100, 4095, 4096, 65536, 1048575, 1048576, 2097150])
sizes = st.sampled_from([0, 1, 5, 4096, 65537, 1048576, 1048580, 2500000])
# set-id bits are left to test_shell.py::test_setid_bits_and_writes (a divergence there
# would be found first on every run and hide everything else)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o1777, 0o711])
datas = st.one_of(
    st.binary(min_size=0, max_size=300),
    st.builds(lambda n, b: b * n, st.integers(1, 200_000), st.binary(min_size=1, max_size=3)),
)
xnames = st.sampled_from(["user.x", "user.y"])
xvalues = st.binary(max_size=64)
xflags = st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE])
setid_modes = st.sampled_from([0o2777, 0o4777, 0o6777])
huge_sizes = st.sampled_from([MAX_FILE_SIZE + 1, 999_999_999_999_999, 1 << 62])
huge_offsets = st.sampled_from([MAX_FILE_SIZE, MAX_FILE_SIZE + 4096, 999_999_999_999_999])
link_targets = st.sampled_from(["a", "b", "../a", "a/b", "/nonexistent", "d", ".", "c/../a"])
open_flags = st.sampled_from(
    [
        ("rdonly", os.O_RDONLY),
        ("rdwr", os.O_RDWR),
        ("rdwr|creat", os.O_RDWR | os.O_CREAT),
        ("wronly|append|creat", os.O_WRONLY | os.O_APPEND | os.O_CREAT),
        ("rdwr|creat|excl", os.O_RDWR | os.O_CREAT | os.O_EXCL),
        ("rdwr|trunc", os.O_RDWR | os.O_TRUNC),
    ]
)

# POSIX lets rename/rmdir of a non-empty directory fail with either errno
EQUIVALENT_ERRNOS = {
    ("rename", errno.EEXIST): errno.ENOTEMPTY,
    ("rmdir", errno.EEXIST): errno.ENOTEMPTY,
}


def digest(data: bytes) -> str:
    return f"{len(data)} bytes sha256={hashlib.sha256(data).hexdigest()[:16]}"


class Side:
    """One directory tree plus at most one held-open file descriptor."""

    def __init__(self, root: Path, label: str, sabotage: str | None = None):
        self.root = root
        self.label = label
        self.sabotage = sabotage
        self.fd: int | None = None

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    # ---- operations; each returns a comparable value or raises OSError

    def create(self, path, mode, excl):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if excl else 0)
        os.close(os.open(self.p(path), flags, mode))

    def corrupt(self, data: bytes) -> bytes:
        if self.sabotage == "data" and data:
            return data[:-1] + bytes([data[-1] ^ 1])
        return data

    def write(self, path, how, offset, data):
        data = self.corrupt(data)
        flags = {
            "pwrite": os.O_WRONLY,
            "pwrite+creat": os.O_WRONLY | os.O_CREAT,
            "append": os.O_WRONLY | os.O_APPEND,
        }[how]
        fd = os.open(self.p(path), flags, 0o644)
        try:
            return os.write(fd, data) if how == "append" else os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def read(self, path, offset, size):
        """size -1: the whole file with read() until EOF."""
        fd = os.open(self.p(path), os.O_RDONLY)
        try:
            if size < 0:
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                return digest(b"".join(chunks))
            return digest(os.pread(fd, size, offset))
        finally:
            os.close(fd)

    def truncate(self, path, size):
        os.truncate(self.p(path), size)

    def unlink(self, path):
        os.unlink(self.p(path))

    def mkdir(self, path, mode):
        try:
            os.mkdir(self.p(path), mode)
        except FileExistsError:
            if self.sabotage != "errno":
                raise

    def rmdir(self, path):
        os.rmdir(self.p(path))

    def rename(self, src, dst):
        os.rename(self.p(src), self.p(dst))

    def link(self, src, dst):
        os.link(self.p(src), self.p(dst), follow_symlinks=False)

    def symlink(self, target, path):
        os.symlink(target, self.p(path))

    def readlink(self, path):
        return os.readlink(self.p(path))

    def nobody_write(self, path, mode, flags, op):
        """root makes path set-id and world-writable; uid 65534 writes or truncates it
        through a descriptor: the call's result, then fstat's mode on that descriptor."""
        os.chmod(self.p(path), mode)
        return as_user(65534, lambda: _write_as_other(self.p(path), flags, op))

    def huge(self, path, how, size):
        """Past the maximum file size: truncate, or pwrite/ftruncate by a descriptor."""
        if how == "truncate":
            return os.truncate(self.p(path), size)
        fd = os.open(self.p(path), os.O_WRONLY)
        try:
            if how == "ftruncate":
                return os.ftruncate(fd, size)
            return os.pwrite(fd, b"xy", size)
        finally:
            os.close(fd)

    def chmod(self, path, mode):
        os.chmod(self.p(path), mode)

    def stat(self, path, follow):
        st_ = os.stat(self.p(path), follow_symlinks=follow)
        return describe_stat(st_)

    def listdir(self, path):
        return sorted(os.listdir(self.p(path)))

    def xattr(self, op, path, name, value, flags):
        p = self.p(path)
        if op == "set":
            return os.setxattr(p, name, value, flags)
        if op == "get":
            return os.getxattr(p, name)
        if op == "list":
            return sorted(a for a in os.listxattr(p) if a.startswith("user."))
        return os.removexattr(p, name)

    # ---- the held-open descriptor

    def open_hold(self, path, flags, mode):
        self.close_hold()
        self.fd = os.open(self.p(path), flags, mode)

    def close_hold(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def fd_op(self, op, offset, data, size):
        if op == "close":
            return self.close_hold()
        fd = self._fd()
        data = self.corrupt(data)
        if op == "pwrite":
            return os.pwrite(fd, data, offset)
        if op == "write":
            return os.write(fd, data)
        if op == "pread":
            return digest(os.pread(fd, size, offset))
        if op == "fstat":
            return describe_stat(os.fstat(fd))
        return os.ftruncate(fd, size)

    def _fd(self) -> int:
        if self.fd is None:
            raise OSError(errno.EBADF, "no descriptor held")
        return self.fd

    # ---- whole-tree state

    def tree(self) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        self._walk("", out)
        return out

    def _walk(self, rel: str, out: dict) -> None:
        with os.scandir(self.p(rel) if rel else self.root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            sub = os.path.join(rel, e.name)
            st_ = os.lstat(e.path)
            desc = describe_stat(st_)
            if stat.S_ISREG(st_.st_mode):
                with open(e.path, "rb") as f:
                    desc += (digest(f.read()),)
            elif stat.S_ISLNK(st_.st_mode):
                desc += (os.readlink(e.path),)
            if not stat.S_ISLNK(st_.st_mode):
                desc += (
                    tuple(
                        sorted(
                            (a, os.getxattr(e.path, a))
                            for a in os.listxattr(e.path)
                            if a.startswith("user.")
                        )
                    ),
                )
            out[sub] = desc
            if stat.S_ISDIR(st_.st_mode):
                self._walk(sub, out)


def _write_as_other(path: str, flags: int, op: str) -> list:
    """(In the child running as uid 65534.)"""
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return ["err", errno.errorcode.get(e.errno, e.errno)]
    try:
        try:
            if op == "write":
                result = os.write(fd, b"by nobody")
            elif op == "pwrite":
                result = os.pwrite(fd, b"by nobody", 3)
            else:
                result = os.ftruncate(fd, 2)
        except OSError as e:
            result = errno.errorcode.get(e.errno, e.errno)
        return [result, oct(os.fstat(fd).st_mode)]
    finally:
        os.close(fd)


def describe_stat(st_: os.stat_result) -> tuple:
    kind = stat.S_IFMT(st_.st_mode)
    is_dir = stat.S_ISDIR(st_.st_mode)
    nlink = st_.st_nlink if (COMPARE_DIR_NLINK or not is_dir) else None
    return (
        stat.filemode(st_.st_mode),
        oct(stat.S_IMODE(st_.st_mode)),
        kind,
        None if is_dir else st_.st_size,
        nlink,
    )


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


_counter = itertools.count()


class FsDiff(RuleBasedStateMachine):
    """A is the system under test (the mount), B the reference (local)."""

    A_BASE: Path
    B_BASE: Path
    SABOTAGE: str | None = None
    HUGE: bool = True  # B's filesystem has the mount's maximum file size

    @initialize()
    def make_roots(self):
        n = next(_counter)
        roots = []
        for base in (self.A_BASE, self.B_BASE):
            root = Path(base) / f"ex{os.getpid()}-{n:04d}"
            root.mkdir()
            roots.append(root)
        self.a = Side(roots[0], "mount", self.SABOTAGE)
        self.b = Side(roots[1], "local")
        # a starting tree, so that most operations have something to act on
        self.both("mkdir", "a", 0o755)
        self.both("mkdir", "d", 0o755)
        self.both("write", "b", "pwrite+creat", 0, b"hello\n")
        self.both("write", "d/a", "pwrite+creat", 1048570, b"across a stripe boundary")
        self.both("symlink", "../b", "a/b")

    def teardown(self):
        for side in (getattr(self, "a", None), getattr(self, "b", None)):
            if side is not None:
                side.close_hold()
                shutil.rmtree(side.root)

    def both(self, op: str, *args):
        ra = outcome(getattr(self.a, op), *args)
        rb = outcome(getattr(self.b, op), *args)
        if ra != rb and ra[0] == rb[0] == "err":
            na = EQUIVALENT_ERRNOS.get((op, getattr(errno, ra[1], None)))
            nb = EQUIVALENT_ERRNOS.get((op, getattr(errno, rb[1], None)))
            if (na or getattr(errno, ra[1], None)) == (nb or getattr(errno, rb[1], None)):
                return
        assert ra == rb, f"{op}{args!r}: {self.a.label}={ra!r} {self.b.label}={rb!r}"

    # ---- path operations

    @rule(path=paths, mode=st.sampled_from([0o644, 0o600, 0o755]), excl=st.booleans())
    def create(self, path, mode, excl):
        self.both("create", path, mode, excl)

    @rule(
        path=paths,
        how=st.sampled_from(["pwrite", "pwrite+creat", "append"]),
        offset=offsets,
        data=datas,
    )
    def write(self, path, how, offset, data):
        self.both("write", path, how, offset, data)

    @rule(path=paths, offset=offsets, size=st.sampled_from([-1, 1, 100, 4096, 70000]))
    def read(self, path, offset, size):
        self.both("read", path, offset, size)

    @rule(path=paths, size=sizes)
    def truncate(self, path, size):
        self.both("truncate", path, size)

    @rule(path=paths)
    def unlink(self, path):
        self.both("unlink", path)

    @rule(path=paths, mode=st.sampled_from([0o755, 0o700, 0o1777]))
    def mkdir(self, path, mode):
        self.both("mkdir", path, mode)

    @rule(path=paths)
    def rmdir(self, path):
        self.both("rmdir", path)

    @rule(src=paths, dst=paths)
    def rename(self, src, dst):
        self.both("rename", src, dst)

    @rule(src=paths, dst=paths)
    def link(self, src, dst):
        self.both("link", src, dst)

    @rule(dest=link_targets, path=paths)
    def symlink(self, dest, path):
        self.both("symlink", dest, path)

    @rule(path=paths)
    def readlink(self, path):
        self.both("readlink", path)

    @rule(path=paths, mode=modes)
    def chmod(self, path, mode):
        self.both("chmod", path, mode)

    @rule(
        path=paths,
        mode=setid_modes,
        flags=st.sampled_from([os.O_WRONLY, os.O_RDWR, os.O_RDONLY]),
        op=st.sampled_from(["write", "pwrite", "ftruncate"]),
    )
    def nobody_write(self, path, mode, flags, op):
        self.both("nobody_write", path, mode, flags, op)

    @precondition(lambda self: self.HUGE)
    @rule(path=paths, how=st.sampled_from(["truncate", "ftruncate"]), size=huge_sizes)
    def huge_truncate(self, path, how, size):
        self.both("huge", path, how, size)

    @precondition(lambda self: self.HUGE)
    @rule(path=paths, offset=huge_offsets)
    def huge_pwrite(self, path, offset):
        self.both("huge", path, "pwrite", offset)

    @rule(path=paths, follow=st.booleans())
    def stat(self, path, follow):
        self.both("stat", path, follow)

    @rule(path=st.sampled_from(["", "a", "b", "d", "a/b"]))
    def listdir(self, path):
        self.both("listdir", path)

    @rule(
        op=st.sampled_from(["set", "get", "list", "remove"]),
        path=paths,
        name=xnames,
        value=xvalues,
        flags=xflags,
    )
    def xattr(self, op, path, name, value, flags):
        self.both("xattr", op, path, name, value, flags)

    # ---- a descriptor kept open across other operations (unlink, rename...)

    @rule(path=paths, flags=open_flags, mode=st.sampled_from([0o644, 0o600]))
    def open_hold(self, path, flags, mode):
        self.both("open_hold", path, flags[1], mode)

    @rule(
        op=st.sampled_from(["close", "pwrite", "write", "pread", "fstat", "ftruncate"]),
        offset=offsets,
        data=datas,
        size=sizes,
    )
    def fd_op(self, op, offset, data, size):
        self.both("fd_op", op, offset, data, size)

    # ---- after every step

    @invariant()
    def trees_match(self):
        if not hasattr(self, "a"):
            return
        ta, tb = self.a.tree(), self.b.tree()
        if ta != tb:
            diff = {
                k: (ta.get(k), tb.get(k))
                for k in sorted(set(ta) | set(tb))
                if ta.get(k) != tb.get(k)
            }
            raise AssertionError(f"trees differ (path: (mount, local)): {diff!r}")


def run_machine(
    a_base: Path, b_base: Path, sabotage: str | None = None, max_examples: int = 40, steps: int = 40
) -> None:
    machine = type(
        "FsDiffRun",
        (FsDiff,),
        {"A_BASE": a_base, "B_BASE": b_base, "SABOTAGE": sabotage,
         "HUGE": has_mount_max_size(b_base)},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            derandomize=True,
            database=None,
            print_blob=False,
            suppress_health_check=list(HealthCheck),
        ),
    )


def has_mount_max_size(directory: Path) -> bool:
    """Does directory's filesystem take files of exactly the mount's maximum size, and
    refuse one byte more (EFBIG)? (ext4 with 4 KiB blocks does; tmpfs takes more.)"""
    probe = directory / ".max-size-probe"
    try:
        with open(probe, "wb") as f:
            os.truncate(f.fileno(), MAX_FILE_SIZE)
            try:
                os.truncate(f.fileno(), MAX_FILE_SIZE + 1)
            except OSError as e:
                return e.errno == errno.EFBIG
            return False
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


@pytest.fixture
def local_base():
    """Reachable by uid 65534; on /dev/shm or the temporary directory, preferring the
    one with the mount's maximum file size."""
    candidates = [None]
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        candidates.insert(0, "/dev/shm")
    paths = [Path(tempfile.mkdtemp(prefix="mlustre-diff-", dir=c)) for c in candidates]
    path = next((p for p in paths if has_mount_max_size(p)), paths[0])
    for p in paths:
        if p != path:
            shutil.rmtree(p, ignore_errors=True)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_differential_against_local_fs(cluster, local_base):
    mount_base = cluster.mnt / "differential"
    mount_base.mkdir()
    run_machine(mount_base, local_base)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sabotage", ["data", "errno"])
def test_differential_catches_mismatches(local_base, sabotage):
    a, b = local_base / "a", local_base / "b"
    a.mkdir()
    b.mkdir()
    with pytest.raises(AssertionError):
        run_machine(a, b, sabotage=sabotage, max_examples=40, steps=40)


@pytest.mark.timeout(120)
def test_differential_local_vs_local_passes(local_base):
    """The machine itself is sound: two correct local trees never differ."""
    a, b = local_base / "a", local_base / "b"
    a.mkdir()
    b.mkdir()
    run_machine(a, b, max_examples=15, steps=40)
