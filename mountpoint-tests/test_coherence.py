"""Coherence between several clients (mounts) of one filesystem: what one client
wrote or changed, another sees at its very next read, stat, lookup or readdir,
with no sleep and no timeout in between. This is what the distributed lock
manager gives: cached data, attributes and names are only valid under a lock,
a conflicting request makes the holder flush and drop them, and a client that
does not give a lock back in time is evicted.

Mount A is the cluster's own mount (`cluster.mnt`), B and C are further client
processes (`mlustre mount SPEC MNT`). Whenever a test checks that B sees a
change, B has looked at the old state first (stat, readdir, read), so that a
stale cache would show. Nothing here waits for a cache to expire.

The eviction tests run clusters of their own with a short lock callback
timeout (`mlustre up --ldlm-timeout N`) and a unique fsname, so that their
servers' `lctl get_param` statistics are not mixed with another cluster's.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import re
import secrets
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from mnthelpers import (
    Cluster,
    cli,
    client_pid,
    fsname_of,
    make_world_dir,
    mount_extra,
    remove_tree_if_unmounted,
    run,
    sh,
    sigkill_client,
)

MiB = 1 << 20
# sizes and offsets around page (4 KiB), stripe (64 KiB in the striped
# directories) and client chunk / default stripe (1 MiB) boundaries
SIZES = [0, 1, 4095, 4096, 65535, 65536, 65537, MiB - 1, MiB, MiB + 1, 3 * MiB + 17]
OFFSETS = SIZES
LAYOUTS = ["plain", "striped"]
TIMEOUT = 120


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def client3(request, base_tmp):
    """An empty mount point for a third client of the test's cluster (like
    conftest's client2); whatever is mounted there is unmounted at the end."""
    cluster = request.getfixturevalue(
        "fresh_cluster" if "fresh_cluster" in request.fixturenames else "cluster"
    )
    mnt3 = make_world_dir(base_tmp, "client3-")
    yield mnt3
    for problem in cluster.cleanup_client(mnt3):
        warnings.warn(f"client3 cleanup: {problem}", stacklevel=1)
    remove_tree_if_unmounted(mnt3)


@pytest.fixture
def mnt_c(cluster, client3) -> Path:
    """Client C: a third client process of the module's cluster."""
    cluster.mount_client(client3).check()
    return client3


@pytest.fixture
def rng(request) -> random.Random:
    return random.Random(request.node.name)


# --------------------------------------------------------------------------
# helpers


def make_dir(a_dir: Path, layout: str) -> str:
    """A subdirectory (created through A) whose new files are plain (default
    layout) or striped over both OSTs with 64 KiB stripes; returns its name."""
    d = a_dir / layout
    d.mkdir()
    if layout == "striped":
        res = cli("lfs", "setstripe", "-c", "2", "-S", "65536", d)
        res.check()
    return layout


def check_layout(path: Path, layout: str) -> None:
    if layout == "striped":
        res = cli("lfs", "getstripe", "-c", path)
        res.check()
        assert res.stdout.split() == ["2"], f"{path} is not striped over 2 OSTs\n{res.describe()}"


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        assert n > 0, f"pwrite returned {n}"
        view, offset = view[n:], offset + n


def write_at(path: Path, offset: int, data: bytes, *, trunc: bool = False) -> None:
    """open (creating), pwrite, close: no fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if trunc else 0), 0o644)
    try:
        pwrite_all(fd, data, offset)
    finally:
        os.close(fd)


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pread_all(fd: int) -> bytes:
    """Everything from offset 0 to EOF through an already open fd."""
    parts, offset = [], 0
    while True:
        chunk = os.pread(fd, 4 * MiB, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def first_difference(got: bytes, want: bytes) -> int:
    n = min(len(got), len(want))
    step = 65536
    for i in range(0, n, step):
        if got[i : i + step] != want[i : i + step]:
            return next(j for j in range(i, min(i + step, n)) if got[j] != want[j])
    return n


def assert_content(got: bytes, want: bytes, what: str) -> None:
    if got == want:
        return
    i = first_difference(got, want)
    raise AssertionError(
        f"{what}: read {len(got)} bytes, expected {len(want)}; first difference at "
        f"offset {i}: got {bytes(got[i : i + 12])!r}, expected {bytes(want[i : i + 12])!r}"
    )


def apply(model: bytearray, offset: int, data: bytes) -> None:
    """What pwrite(data, offset) does to a file's content."""
    if offset > len(model):
        model.extend(bytes(offset - len(model)))
    model[offset : offset + len(data)] = data


def assert_enoent(fn, *args) -> None:
    with pytest.raises(FileNotFoundError):
        fn(*args)


class Worker:
    """`python -c SCRIPT ARGS` in its own process, spoken to by lines on
    stdin/stdout. Always call kill() in a finally: it SIGKILLs this PID."""

    def __init__(self, script: str, *args: str | os.PathLike):
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *map(os.fspath, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            bufsize=0,
            start_new_session=True,
        )
        self.buf = b""

    def describe(self) -> str:
        self.err.seek(0)
        text = self.err.read().decode(errors="replace")[-3000:]
        return f"worker pid {self.proc.pid} rc={self.proc.poll()}\n--- stderr ---\n{text}"

    def expect(self, prefix: str, timeout: float) -> str:
        """The next stdout line, which must start with prefix."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} line within {timeout}s; {self.describe()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise AssertionError(f"worker ended before {prefix!r}; {self.describe()}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        text = line.decode(errors="replace")
        assert text.startswith(prefix), f"expected {prefix!r}, got {text!r}; {self.describe()}"
        return text

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode() + b"\n")
        except BrokenPipeError:
            raise AssertionError(f"worker gone; {self.describe()}") from None

    def finish(self, timeout: float) -> None:
        """Wait for a clean exit."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s") from None
        assert rc == 0, f"worker failed; {self.describe()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass  # stuck in a dead mount's request; the mount's teardown frees it
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.err.close()


def run_together(jobs: list[tuple], timeout: float) -> None:
    """Start a Worker per (script, *args), let them all go at once, and wait for each
    to print "done" and exit cleanly."""
    workers = []
    try:
        for script, *args in jobs:
            workers.append(Worker(script, *args))
        for w in workers:
            w.expect("ready", 30)
        for w in workers:
            w.send("go")
        for w in workers:
            w.expect("done", timeout)
            w.finish(30)
    finally:
        for w in workers:
            w.kill()


def evictions(c: Cluster) -> int:
    """Sum of the `evictions` counters of the cluster's MDT and OSTs (a counter
    that never counted is not printed: 0)."""
    fs = fsname_of(c)
    res = cli("lctl", "get_param", f"obdfilter.{fs}-*.stats", f"mdt.{fs}-*.stats", timeout=45)
    res.check()
    blocks = [line for line in res.stdout.splitlines() if line.endswith(".stats=")]
    assert len(blocks) == 3, f"expected the stats of 1 MDT and 2 OSTs\n{res.describe()}"
    return sum(
        int(m.group(1))
        for m in re.finditer(r"^evictions\s+(\d+)\s+samples", res.stdout, re.MULTILINE)
    )


# --------------------------------------------------------------------------
# 1. data written on A, read on B at once


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_new_files_of_many_sizes_read_on_b(ab, rng, layout):
    """A creates a file (write + close, no fsync), B reads it; A then rewrites
    the middle of the file B has cached, then extends it past a hole; B sees
    each version at its next read, with the right size."""
    a_dir, b_dir = ab
    sub = make_dir(a_dir, layout)
    for size in SIZES:
        a, b = a_dir / sub / f"f{size}", b_dir / sub / f"f{size}"
        model = bytearray(rng.randbytes(size))
        write_at(a, 0, bytes(model))
        assert_content(read_all(b), model, f"B reading new {a.name} ({layout})")

        if size:
            offset = size // 3
            new = rng.randbytes(max(1, min(size - offset, 70_000)))
            write_at(a, offset, new)
            apply(model, offset, new)
            assert_content(read_all(b), model, f"B after A rewrote {a.name} at {offset}")

        offset = size + 4097
        new = rng.randbytes(5000)
        write_at(a, offset, new)
        apply(model, offset, new)
        assert os.stat(b).st_size == len(model), f"B's size of {a.name} after A extended it"
        assert_content(read_all(b), model, f"B after A extended {a.name} to {len(model)}")
    check_layout(a_dir / sub / f"f{SIZES[-1]}", layout)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_writes_at_offsets_into_file_b_has_cached(ab, rng, layout):
    """B has read a 4 MiB file; A overwrites 3000 bytes at many offsets (one
    write + close each); B's next read of the whole file shows each change."""
    a_dir, b_dir = ab
    sub = make_dir(a_dir, layout)
    a, b = a_dir / sub / "f", b_dir / sub / "f"
    model = bytearray(rng.randbytes(4 * MiB + 123))
    write_at(a, 0, bytes(model))
    assert_content(read_all(b), model, "B reading the new file")
    for offset in OFFSETS:
        new = rng.randbytes(3000)
        assert os.stat(b).st_size == len(model)  # B's attributes cached just before
        before = time.time_ns()
        write_at(a, offset, new)
        apply(model, offset, new)
        assert os.stat(b).st_mtime_ns >= before, f"B's mtime after A wrote at {offset} ({layout})"
        assert_content(read_all(b), model, f"B after A wrote 3000 bytes at {offset} ({layout})")
    # the whole file rewritten, same size: nothing but the content changed
    model = bytearray(rng.randbytes(len(model)))
    write_at(a, 0, bytes(model), trunc=True)
    assert_content(read_all(b), model, f"B after A rewrote the whole file ({layout})")
    check_layout(a, layout)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_b_keeps_file_open_across_a_writes(ab, rng, layout):
    """B reads through an fd it keeps open; A writes (open, write, close);
    B's pread on the same fd and its fstat show A's data and size."""
    a_dir, b_dir = ab
    sub = make_dir(a_dir, layout)
    a, b = a_dir / sub / "f", b_dir / sub / "f"
    model = bytearray(rng.randbytes(2 * MiB + 5))
    write_at(a, 0, bytes(model))
    fd = os.open(b, os.O_RDONLY)
    try:
        assert_content(pread_all(fd), model, "B's first read")
        for offset in [0, 4095, 65536, MiB - 1, 2 * MiB + 5, 3 * MiB + 17]:
            new = rng.randbytes(4096 + 7)
            write_at(a, offset, new)
            apply(model, offset, new)
            assert os.fstat(fd).st_size == len(model), f"B's fstat after A wrote at {offset}"
            assert_content(
                pread_all(fd), model, f"B's pread on its open fd after A wrote at {offset}"
            )
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# 2. O_APPEND writers on two clients at once

APPENDER = r"""
import os, sys
path, wid, n, reclen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    rec = f"{wid} {i:06d} ".encode().ljust(reclen - 1, b".") + b"\n"
    if os.write(fd, rec) != reclen:
        sys.exit(f"short write of record {i}")
os.close(fd)
print("done", flush=True)
"""
RECORDS = 300
RECLEN = 64


@pytest.mark.timeout(TIMEOUT)
def test_concurrent_o_append_writers_on_two_clients(cluster, workdir, mnt_b, mnt_c):
    """Two processes, one on A and one on B, each append 300 records (one
    write() per record) at the same time: the file holds exactly all 600
    records, none torn or lost, each writer's in its own order, and A, B and a
    third client C read the same content."""
    rel = workdir.relative_to(cluster.mnt) / "log"
    (cluster.mnt / rel).write_bytes(b"")
    run_together([(APPENDER, mnt / rel, wid, str(RECORDS), str(RECLEN))
                  for wid, mnt in (("A", cluster.mnt), ("B", mnt_b))], 90)

    data = read_all(mnt_c / rel)
    seen: dict[str, list[int]] = {"A": [], "B": []}
    bad = []
    for k in range(0, len(data), RECLEN):
        rec = data[k : k + RECLEN]
        m = re.fullmatch(rb"([AB]) (\d{6}) \.+\n", rec)
        if m is None or len(rec) != RECLEN:
            bad.append((k, rec[:20]))
        else:
            seen[m.group(1).decode()].append(int(m.group(2)))
    assert not bad, f"{len(bad)} torn or foreign records, first at offsets {bad[:3]}"
    assert len(data) == 2 * RECORDS * RECLEN, (
        f"file has {len(data)} bytes, expected {2 * RECORDS * RECLEN} "
        f"(A: {len(seen['A'])} records, B: {len(seen['B'])})"
    )
    for wid, seqs in seen.items():
        assert seqs == list(range(RECORDS)), (
            f"writer {wid}: {len(seqs)} records, lost or out of order "
            f"(missing {sorted(set(range(RECORDS)) - set(seqs))[:10]})"
        )
    assert_content(read_all(cluster.mnt / rel), data, "A reading the appended file")
    assert_content(read_all(mnt_b / rel), data, "B reading the appended file")


# --------------------------------------------------------------------------
# 3. namespace and attribute changes on A, seen by B's next lookup/stat/readdir


@pytest.mark.timeout(TIMEOUT)
def test_create_seen_by_b(ab):
    a, b = ab
    (a / "old").write_bytes(b"x")
    assert sorted(os.listdir(b)) == ["old"]
    assert_enoent(os.stat, b / "new")  # B has looked the name up: a negative entry
    assert_enoent(os.stat, b / "newdir")
    (a / "new").write_bytes(b"hello")
    (a / "newdir").mkdir()
    assert sorted(os.listdir(b)) == ["new", "newdir", "old"], "B's readdir after A's create"
    st = os.stat(b / "new")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 5, f"B's stat after A's create: {st}"
    assert read_all(b / "new") == b"hello"
    assert stat.S_ISDIR(os.stat(b / "newdir").st_mode)
    # B can use what A created, and A sees what B created in it at once
    (b / "newdir" / "fromb").write_bytes(b"from B")
    assert os.listdir(a / "newdir") == ["fromb"]
    assert read_all(a / "newdir" / "fromb") == b"from B"


@pytest.mark.timeout(TIMEOUT)
def test_unlink_seen_by_b(ab):
    a, b = ab
    (a / "f").write_bytes(b"doomed")
    (a / "keep").write_bytes(b"kept")
    assert read_all(b / "f") == b"doomed"
    assert os.stat(b / "f").st_nlink == 1
    assert sorted(os.listdir(b)) == ["f", "keep"]
    os.unlink(a / "f")
    assert_enoent(os.stat, b / "f")
    assert_enoent(os.open, b / "f", os.O_RDONLY)
    assert sorted(os.listdir(b)) == ["keep"], "B's readdir after A's unlink"
    # recreated under the same name with other content: B sees the new file
    (a / "f").write_bytes(b"reborn!")
    assert read_all(b / "f") == b"reborn!"


@pytest.mark.timeout(TIMEOUT)
def test_rename_seen_by_b(ab):
    a, b = ab
    (a / "old").write_bytes(b"content of old")
    (a / "target").write_bytes(b"content of target")
    (a / "sub").mkdir()
    (a / "moving").write_bytes(b"moving")
    ino_old = os.stat(b / "old").st_ino
    assert read_all(b / "old") == b"content of old"
    assert read_all(b / "target") == b"content of target"
    assert read_all(b / "moving") == b"moving"
    assert sorted(os.listdir(b)) == ["moving", "old", "sub", "target"]
    assert os.listdir(b / "sub") == []
    assert_enoent(os.stat, b / "sub" / "moved")

    os.rename(a / "old", a / "target")  # replaces target
    os.rename(a / "moving", a / "sub" / "moved")  # across directories

    assert_enoent(os.stat, b / "old")
    assert_enoent(os.open, b / "old", os.O_RDONLY)
    assert_enoent(os.stat, b / "moving")
    assert sorted(os.listdir(b)) == ["sub", "target"], "B's readdir after A's renames"
    assert os.listdir(b / "sub") == ["moved"]
    assert os.stat(b / "target").st_ino == ino_old, "B's target is not the renamed inode"
    assert read_all(b / "target") == b"content of old"
    assert read_all(b / "sub" / "moved") == b"moving"


@pytest.mark.timeout(TIMEOUT)
def test_chmod_and_chown_seen_by_b(ab):
    a, b = ab
    (a / "f").write_bytes(b"secret\n")
    os.chmod(a / "f", 0o644)
    (a / "d").mkdir()
    os.chmod(a / "d", 0o755)
    assert stat.S_IMODE(os.stat(b / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(b / "d").st_mode) == 0o755
    # uid 65534 reads it through B (B's kernel checks with B's attributes)
    res = sh(f"cat {b / 'f'}", user="nobody", timeout=30)
    assert res.rc == 0 and res.stdout == "secret\n", res.describe()

    os.chmod(a / "f", 0o600)
    os.chmod(a / "d", 0o700)
    assert stat.S_IMODE(os.stat(b / "f").st_mode) == 0o600, "B's mode after A's chmod"
    assert stat.S_IMODE(os.stat(b / "d").st_mode) == 0o700, "B's dir mode after A's chmod"
    res = sh(f"cat {b / 'f'}", user="nobody", timeout=30)
    assert res.rc != 0 and "Permission denied" in res.stderr, (
        "uid 65534 could still read through B after A's chmod 600\n" + res.describe()
    )

    if os.geteuid() == 0:
        assert (os.stat(b / "f").st_uid, os.stat(b / "f").st_gid) == (0, 0)
        os.chown(a / "f", 65534, 65534)
        st = os.stat(b / "f")
        assert (st.st_uid, st.st_gid) == (65534, 65534), "B's owner after A's chown"
        res = sh(f"cat {b / 'f'}", user="nobody", timeout=30)
        assert res.rc == 0 and res.stdout == "secret\n", (
            "uid 65534 cannot read its own file through B after A's chown\n" + res.describe()
        )


@pytest.mark.timeout(TIMEOUT)
def test_mkdir_and_rmdir_seen_by_b(ab):
    a, b = ab
    (a / "gone").mkdir()
    nlink = os.stat(b).st_nlink
    assert nlink == 3, f"B: a directory with one subdirectory has nlink {nlink}"
    assert os.listdir(b / "gone") == []
    assert_enoent(os.stat, b / "sub")

    (a / "sub").mkdir()
    assert stat.S_ISDIR(os.stat(b / "sub").st_mode), "B's stat after A's mkdir"
    assert sorted(os.listdir(b)) == ["gone", "sub"], "B's readdir after A's mkdir"
    assert os.stat(b).st_nlink == nlink + 1, "B's parent nlink after A's mkdir"

    os.rmdir(a / "gone")
    assert_enoent(os.stat, b / "gone")
    assert_enoent(os.listdir, b / "gone")
    assert os.listdir(b) == ["sub"], "B's readdir after A's rmdir"
    assert os.stat(b).st_nlink == nlink, "B's parent nlink after A's rmdir"

    # B listed sub empty; A fills it: B lists the new entry, cannot rmdir it
    assert os.listdir(b / "sub") == []
    (a / "sub" / "x").write_bytes(b"x")
    assert os.listdir(b / "sub") == ["x"], "B's readdir of a directory A filled"
    with pytest.raises(OSError) as exc:
        os.rmdir(b / "sub")
    assert exc.value.errno == errno.ENOTEMPTY


@pytest.mark.timeout(TIMEOUT)
def test_symlink_and_hard_link_seen_by_b(ab):
    a, b = ab
    (a / "f").write_bytes(b"data of f")
    (a / "g").write_bytes(b"data of g")
    assert os.stat(b / "f").st_nlink == 1
    assert read_all(b / "f") == b"data of f"
    assert_enoent(os.lstat, b / "lnk")
    assert_enoent(os.stat, b / "hard")
    assert sorted(os.listdir(b)) == ["f", "g"]

    os.symlink("f", a / "lnk")
    os.link(a / "f", a / "hard")
    assert stat.S_ISLNK(os.lstat(b / "lnk").st_mode), "B's lstat after A's symlink"
    assert os.readlink(b / "lnk") == "f"
    assert read_all(b / "lnk") == b"data of f"
    assert os.stat(b / "f").st_nlink == 2, "B's nlink after A's link"
    assert os.stat(b / "hard").st_ino == os.stat(b / "f").st_ino
    assert read_all(b / "hard") == b"data of f"
    assert sorted(os.listdir(b)) == ["f", "g", "hard", "lnk"]

    # the symlink replaced by one to another target, the hard link removed
    os.unlink(a / "lnk")
    os.symlink("g", a / "lnk")
    os.unlink(a / "hard")
    assert os.readlink(b / "lnk") == "g", "B's readlink after A replaced the symlink"
    assert read_all(b / "lnk") == b"data of g"
    assert os.stat(b / "f").st_nlink == 1, "B's nlink after A's unlink of the hard link"
    assert_enoent(os.stat, b / "hard")


@pytest.mark.timeout(TIMEOUT)
def test_utime_seen_by_b(ab):
    a, b = ab
    (a / "f").write_bytes(b"x")
    (a / "d").mkdir()
    os.stat(b / "f")
    os.stat(b / "d")
    atime, mtime = 1_234_567_890_123_456_789, 1_300_000_000_987_654_321
    os.utime(a / "f", ns=(atime, mtime))
    os.utime(a / "d", ns=(atime, mtime))
    for name in ("f", "d"):
        st = os.stat(b / name)
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime), (
            f"B's times of {name} after A's utime: {(st.st_atime_ns, st.st_mtime_ns)}"
        )
    before = time.time_ns()
    os.utime(a / "f")  # touch: now
    assert os.stat(b / "f").st_mtime_ns >= before, "B's mtime after A's touch"


@pytest.mark.timeout(TIMEOUT)
def test_utime_wins_over_cached_data_and_dirty_writes(ab):
    """A file B has read (its data cached under a lock) and one B has written without
    closing: A's explicit times are what both clients see afterwards, also after B's
    close reports its size."""
    a, b = ab
    (a / "r").write_bytes(b"r" * 5000)
    assert (b / "r").read_bytes() == b"r" * 5000
    os.stat(b / "r")
    fd = os.open(b / "w", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"w" * 7000)
        atime, mtime = 1_111_111_111_000_000_001, 1_222_222_222_000_000_002
        for name in ("r", "w"):
            os.utime(a / name, ns=(atime, mtime))
            for side, root in (("A", a), ("B", b)):
                st = os.stat(root / name)
                assert st.st_mtime_ns == mtime, f"{side}'s mtime of {name} after A's utime"
        assert os.stat(a / "w").st_size == 7000  # B's data was written back first
    finally:
        os.close(fd)
    for side, root in (("A", a), ("B", b)):
        assert os.stat(root / "w").st_mtime_ns == mtime, f"{side}'s mtime after B's close"
        assert (root / "w").read_bytes() == b"w" * 7000


def dot_inodes(path: Path) -> dict[str, int]:
    """The inode numbers readdir gives . and .. (os.listdir hides them: ls -ia)."""
    out = subprocess.run(["ls", "-ia", str(path)], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    pairs = dict(zip(out[1::2], (int(x) for x in out[0::2]), strict=True))
    return {".": pairs["."], "..": pairs[".."]}


@pytest.mark.timeout(TIMEOUT)
def test_dot_and_dotdot_name_the_directory_and_its_parent_after_a_rename_elsewhere(ab):
    """readdir's . and .. (answered from what we hold, no request): the directory's own
    number and its parent's, also after B moved it to another parent."""
    a, b = ab
    (a / "d1" / "sub").mkdir(parents=True)
    (a / "d2").mkdir()
    assert dot_inodes(a / "d1" / "sub") == {".": os.stat(a / "d1" / "sub").st_ino,
                                            "..": os.stat(a / "d1").st_ino}
    os.rename(b / "d1" / "sub", b / "d2" / "sub")
    assert dot_inodes(a / "d2" / "sub") == {".": os.stat(a / "d2" / "sub").st_ino,
                                            "..": os.stat(a / "d2").st_ino}
    assert dot_inodes(a)[".."] == os.stat(a.parent).st_ino  # (the mount's root)


@pytest.mark.timeout(TIMEOUT)
def test_utime_of_a_file_with_our_own_dirty_data(ab):
    """tar's way: write, then set an old mtime while the data is still dirty here (not
    yet written back). The explicit mtime is what both clients see, before and after the
    data goes out (close, then B's read), and the data is all there."""
    a, b = ab
    mtime = 1_000_000_000_123_456_789
    fd = os.open(a / "t", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"t" * 70_000)
        os.utime(a / "t", ns=(mtime, mtime))
        for side, root in (("A", a), ("B", b)):
            st = os.stat(root / "t")
            assert (st.st_mtime_ns, st.st_size) == (mtime, 70_000), f"{side} before close"
        os.write(fd, b"u" * 10)  # a later write: the mtime is now again
    finally:
        os.close(fd)
    assert os.stat(b / "t").st_mtime_ns > mtime
    (a / "p").write_bytes(b"p" * 5000)
    os.utime(a / "p", ns=(mtime, mtime))
    assert (b / "p").read_bytes() == b"p" * 5000
    assert (b / "t").read_bytes() == b"t" * 70_000 + b"u" * 10
    for side, root in (("A", a), ("B", b)):
        st = os.stat(root / "p")
        assert (st.st_mtime_ns, st.st_size) == (mtime, 5000), f"{side} after the write-back"


@pytest.mark.timeout(TIMEOUT)
def test_chmod_keeps_the_mtime_of_data_not_yet_reported(ab):
    """A chmod while written data's size and mtime are still this client's own (not yet
    told to the MDT) must not take the MDT's older mtime: the mtime seen before and
    after the data reaches the MDT is the last write's, on both clients."""
    a, b = ab
    fd = os.open(a / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        time.sleep(0.05)  # the write's mtime is clearly later than the create's
        before = time.time_ns()
        os.write(fd, b"d" * 10000)
        os.chmod(a / "f", 0o600)
        st = os.stat(a / "f")
        assert st.st_mode & 0o777 == 0o600
        assert st.st_mtime_ns >= before, "the chmod took the MDT's mtime (the create's)"
        os.fsync(fd)
    finally:
        os.close(fd)
    for side, root in (("A", a), ("B", b)):
        got = os.stat(root / "f")
        assert got.st_mtime_ns == st.st_mtime_ns, f"{side}'s mtime after the data reached the MDT"
        assert got.st_ctime_ns >= got.st_mtime_ns, f"{side}'s ctime went back before the mtime"
        assert got.st_size == 10000


RMW_WRITER = r"""
import os, sys
path, me, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_RDWR)  # buffered: reads fill the kernel's page cache
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    data = os.pread(fd, 8192, 0)  # a read (PR), then a write (PW) on the same file
    slot = k * (i % 256) + me
    os.pwrite(fd, bytes([65 + me]) * 16, slot * 16)
print("done", flush=True)
"""


def rmw_rounds(roots: list[Path], rounds: int) -> None:
    """Each client overwrites its own 16-byte records, interleaved with the others',
    reading the file before each write; every record must end up written."""
    k = len(roots)
    want = b"".join(bytes([65 + me]) * 16 for me in range(k)) * 256
    for r in range(rounds):
        name = f"rmw{r}"
        (roots[0] / name).write_bytes(bytes(len(want)))
        run_together([(RMW_WRITER, root / name, str(me), "300", str(k))
                      for me, root in enumerate(roots)], 60)
        # (Had they waited for each other, the callback timeout would have evicted one,
        # and its worker would have failed with EIO.)
        for root in roots:
            assert_content((root / name).read_bytes(), want, f"round {r} via {root}")


@pytest.mark.timeout(TIMEOUT)
def test_read_write_handles_on_two_clients_at_once(ab):
    """Two clients read and write one file through read-write (buffered) handles at
    the same time: each read takes PR, each write asks for PW while the other side's
    PR is being called back. Neither may wait for the other until the callback
    timeout evicts one of them."""
    rmw_rounds(list(ab), 1)


@pytest.mark.timeout(TIMEOUT)
def test_read_write_handles_on_three_clients_at_once(cluster, workdir, mnt_b, mnt_c):
    """The same with three clients, several times: I/O then keeps coming while a lock
    is given back. Writes lent a lock being given back must all be written back before
    it is cancelled, and a write waiting for its lock while holding a kernel page must
    not keep the invalidation of the PR lock it conflicts with waiting (once, 2-3 of 20
    rounds lost records this way, or a client was evicted)."""
    rel = workdir.relative_to(cluster.mnt)
    rmw_rounds([workdir, mnt_b / rel, mnt_c / rel], 6)


@pytest.mark.timeout(TIMEOUT)
def test_truncate_seen_by_b(ab, rng):
    a, b = ab
    model = rng.randbytes(3 * MiB + 17)
    write_at(a / "f", 0, model)
    assert_content(read_all(b / "f"), model, "B's first read")
    fd = os.open(b / "f", os.O_RDONLY)
    try:
        assert_content(pread_all(fd), model, "B's first read through its fd")
        assert os.stat(b / "f").st_size == len(model)  # B's attributes cached just before

        os.truncate(a / "f", 100_000)
        assert os.stat(b / "f").st_size == 100_000, "B's size after A's truncate"
        assert_content(read_all(b / "f"), model[:100_000], "B after A's truncate")
        assert_content(pread_all(fd), model[:100_000], "B's open fd after A's truncate")

        os.truncate(a / "f", 2 * MiB)  # extend: zeros
        want = model[:100_000] + bytes(2 * MiB - 100_000)
        assert_content(read_all(b / "f"), want, "B after A extended by truncate")
        assert_content(pread_all(fd), want, "B's open fd after A extended by truncate")

        write_at(a / "f", 0, b"short", trunc=True)  # open(O_TRUNC)
        assert_content(read_all(b / "f"), b"short", "B after A's O_TRUNC rewrite")
        assert_content(pread_all(fd), b"short", "B's open fd after A's O_TRUNC rewrite")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# 4. size and mtime while A holds dirty data (glimpse)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_stat_on_b_while_a_holds_dirty_data(ab, rng, layout):
    """A keeps the file open and writes more and more (no fsync, no close);
    after each write B's stat shows the size A's write gave the file and an
    mtime no older than the write; B also reads all of it while A holds it."""
    a_dir, b_dir = ab
    sub = make_dir(a_dir, layout)
    a, b = a_dir / sub / "g", b_dir / sub / "g"
    a.write_bytes(b"")
    assert os.stat(b).st_size == 0
    model = bytearray()
    fd = os.open(a, os.O_WRONLY)
    try:
        for n in [1, 4095, 70_000, MiB + 3, 2 * MiB, 17]:
            data = rng.randbytes(n)
            before = time.time_ns()
            assert os.write(fd, data) == n
            model += data
            st = os.stat(b)
            assert st.st_size == len(model), (
                f"B's size {st.st_size} while A holds {len(model)} bytes written ({layout})"
            )
            assert st.st_mtime_ns >= before, (
                f"B's mtime {st.st_mtime_ns} is older than A's write at {before} ({layout})"
            )
        assert_content(read_all(b), model, f"B reading while A holds the file open ({layout})")
        # and a rewrite of data B has just read, through A's still open fd
        new = rng.randbytes(10_000)
        assert os.pwrite(fd, new, 5000) == len(new)
        apply(model, 5000, new)
        assert_content(read_all(b), model, f"B after A's rewrite through its open fd ({layout})")
    finally:
        os.close(fd)
    assert_content(read_all(b), model, f"B after A's close ({layout})")


# --------------------------------------------------------------------------
# 5. shared writable mappings


@pytest.mark.timeout(TIMEOUT)
def test_mmap_msync_on_a_seen_by_b(ab, rng):
    """A's MAP_SHARED writable mapping, changed and msync'ed, is seen by B's
    read() (B had read the file before) and by a new mapping on B."""
    a, b = ab
    size = 2 * MiB + 100
    model = bytearray(rng.randbytes(size))
    write_at(a / "m", 0, bytes(model))
    assert_content(read_all(b / "m"), model, "B's first read")

    fd = os.open(a / "m", os.O_RDWR)
    try:
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            for offset in [0, 4095, MiB - 2, 2 * MiB + 60]:
                new = rng.randbytes(40)
                mm[offset : offset + 40] = new
                apply(model, offset, new)
            mm.flush()  # msync(MS_SYNC)
            assert_content(read_all(b / "m"), model, "B's read() after A's msync")
            with open(b / "m", "rb") as f:
                with mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as mb:
                    assert_content(mb[:], model, "B's new mapping after A's msync")

            # a second round on the same mapping, after B has read the first
            new = rng.randbytes(5000)
            mm[MiB : MiB + 5000] = new
            apply(model, MiB, new)
            mm.flush()
            assert_content(read_all(b / "m"), model, "B's read() after A's second msync")
        finally:
            mm.close()
    finally:
        os.close(fd)


@pytest.mark.timeout(TIMEOUT)
def test_mmap_msync_on_b_and_write_on_a_seen_by_new_mappings(ab, rng):
    """The other direction: B's msync'ed mapping is seen by A's read() and a new
    mapping on A; then A's write() + close is seen by a new mapping on B."""
    a, b = ab
    size = MiB + 4096
    model = bytearray(rng.randbytes(size))
    write_at(a / "m", 0, bytes(model))
    assert_content(read_all(a / "m"), model, "A's read of its own file")
    assert_content(read_all(b / "m"), model, "B's first read")

    fd = os.open(b / "m", os.O_RDWR)
    try:
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            new = rng.randbytes(8192)
            mm[4000 : 4000 + 8192] = new
            apply(model, 4000, new)
            mm.flush()
            assert_content(read_all(a / "m"), model, "A's read() after B's msync")
            with open(a / "m", "rb") as f:
                with mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as ma:
                    assert_content(ma[:], model, "A's new mapping after B's msync")
    finally:
        os.close(fd)

    new = rng.randbytes(3000)
    write_at(a / "m", MiB, new)
    apply(model, MiB, new)
    with open(b / "m", "rb") as f:
        with mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as mb:
            assert_content(mb[:], model, "B's new mapping after A's write")


# --------------------------------------------------------------------------
# 7. close on one client, append on another, read on the first


@pytest.mark.timeout(TIMEOUT)
def test_write_close_then_append_on_other_client(ab, rng):
    """A writes X and closes; B appends to X; A (whose cache holds the first
    part) reads both parts; A appends again; B reads all three."""
    a, b = ab
    part1, part2, part3 = rng.randbytes(100_000), rng.randbytes(70_001), rng.randbytes(13)
    write_at(a / "x", 0, part1)
    assert_content(read_all(a / "x"), part1, "A's own read")
    with open(b / "x", "ab") as f:
        f.write(part2)
    assert os.stat(a / "x").st_size == len(part1) + len(part2), "A's size after B's append"
    assert_content(read_all(a / "x"), part1 + part2, "A after B's append")
    with open(a / "x", "ab") as f:
        f.write(part3)
    assert_content(read_all(b / "x"), part1 + part2 + part3, "B after A's append")


# --------------------------------------------------------------------------
# 6. eviction (clusters of their own, short lock callback timeout)

HOLDER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"B" * (1 << 20), 0)
print("ready", flush=True)
sys.stdin.readline()
os.close(fd)
print("closed", flush=True)
"""

AFTER_EVICTION = r"""
import os, sys
p = sys.argv[1]
st = os.stat(p)
with open(p, "rb") as f:
    data = f.read()
fd = os.open(p, os.O_RDWR)
os.pwrite(fd, b"after eviction", 0)
os.fsync(fd)
os.close(fd)
with open(p, "rb") as f:
    head = f.read(14)
assert head == b"after eviction", head
print(st.st_size, len(data))
"""


@pytest.mark.timeout(180)
def test_killed_client_is_evicted_and_others_proceed(cluster_factory):
    """B writes into a file and keeps it open (dirty data, a write lock), then
    B's client process is SIGKILLed. A's stat, read and write of that file
    complete within the callback timeout plus a margin, and the servers count
    an eviction."""
    c = cluster_factory(
        "--osts", "2", "--fsname", "ev" + secrets.token_hex(3), "--ldlm-timeout", "2"
    )
    mnt_b = c.data.parent / "client-b"
    mnt_b.mkdir()
    mnt_b.chmod(0o755)
    mount_extra(c, mnt_b).check()
    (c.mnt / "f").write_bytes(b"A" * 300_000)
    assert read_all(mnt_b / "f") == b"A" * 300_000

    holder = Worker(HOLDER, mnt_b / "f")
    try:
        holder.expect("ready", 30)
        before = evictions(c)
        sigkill_client(c, mnt_b)  # the client first: B's fd must not be closed cleanly
    finally:
        holder.kill()

    res = run([sys.executable, "-c", AFTER_EVICTION, c.mnt / "f"], timeout=30)
    assert not res.timed_out, "A's access to the dead client's file hung\n" + res.describe()
    assert res.rc == 0, "A's access to the dead client's file failed\n" + res.describe()
    after = evictions(c)
    assert after > before, f"no eviction counted by the servers ({before} before, {after} after)"


EVICTED_HOLDER = r"""
import errno, os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
os.pwrite(fd, b"B was here", 0)
print("ready", flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 20
while True:  # the client learns of its eviction when it reconnects
    try:
        os.pwrite(fd, b"again", 0)
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        break
    if time.monotonic() > deadline:
        sys.exit("no EIO on the evicted client's open file")
    time.sleep(0.1)
try:
    os.close(fd)  # (the descriptor goes; its close may report the EIO too)
except OSError as e:
    assert e.errno == errno.EIO, e
with open(path, "rb") as f:  # opening again works
    print("reopened", f.read(9).decode(), flush=True)
"""


@pytest.mark.timeout(180)
def test_evicted_client_gets_eio_on_open_files_and_can_open_again(cluster_factory):
    """B holds a file open with locks and is frozen (SIGSTOP) while A changes that file:
    the servers evict B after the callback timeout and A proceeds. When B runs again,
    I/O on its open file fails with EIO; opening the file again works."""
    c = cluster_factory(
        "--osts", "2", "--fsname", "ev" + secrets.token_hex(3), "--ldlm-timeout", "2"
    )
    mnt_b = c.data.parent / "client-b"
    mnt_b.mkdir()
    mnt_b.chmod(0o755)
    mount_extra(c, mnt_b).check()
    (c.mnt / "f").write_bytes(b"0123456789")
    holder = Worker(EVICTED_HOLDER, mnt_b / "f")
    pid_b = client_pid(c, mnt_b)
    try:
        holder.expect("ready", 30)
        before = evictions(c)
        os.kill(pid_b, signal.SIGSTOP)
        try:
            res = run([sys.executable, "-c",
                       "import os,sys; os.chmod(sys.argv[1], 0o640);"
                       "open(sys.argv[1], 'r+b').write(b'A wrote it')", c.mnt / "f"],
                      timeout=60)
        finally:
            os.kill(pid_b, signal.SIGCONT)
        assert res.rc == 0 and not res.timed_out, res.describe()
        assert evictions(c) > before
        holder.send("go")
        assert holder.expect("reopened", 60) == "reopened A wrote i"
        holder.finish(30)
    finally:
        holder.kill()
    assert (mnt_b / "f").read_bytes() == b"A wrote it"


FLUSHER = r"""
import hashlib, os, sys
path, n = sys.argv[1], int(sys.argv[2])
C = 1 << 20
seed = os.urandom(C)
h = hashlib.sha256()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
# every 1 MiB chunk but its last byte, which stays a hole: chunks that are not
# full are not queued for write-back at once, so this leaves a big dirty backlog
for i in range(n):
    piece = i.to_bytes(8, "little") + seed[8 : C - 1]
    os.pwrite(fd, piece, i * C)
    h.update(piece if i == n - 1 else piece + bytes(1))
print("ready", n * C - 1, h.hexdigest(), flush=True)
sys.stdin.readline()
os.close(fd)
print("closed", flush=True)
"""

STAT_AND_HASH = r"""
import hashlib, os, sys
p = sys.argv[1]
size = os.stat(p).st_size
h = hashlib.sha256()
n = 0
with open(p, "rb") as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
print(size, n, h.hexdigest())
"""

WRITE_FSYNC = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
data = b"still alive\n" * 100_000
assert os.write(fd, data) == len(data)
os.fsync(fd)
os.close(fd)
"""

FLUSH_MIB = 200


@pytest.mark.timeout(240)
def test_slow_but_flushing_client_is_not_evicted(cluster_factory):
    """With a 1 s callback timeout, B holds ~200 MiB of dirty data (no fsync,
    file open) in a file striped with 64 KiB stripes; giving its lock back
    means flushing all of it. A's stat and read see B's full size and content,
    nobody is evicted, and B's mount still works afterwards."""
    c = cluster_factory(
        "--osts", "2", "--fsname", "ev" + secrets.token_hex(3), "--ldlm-timeout", "1"
    )
    mnt_b = c.data.parent / "client-b"
    mnt_b.mkdir()
    mnt_b.chmod(0o755)
    mount_extra(c, mnt_b, "--max-dirty-mb", "512", "--max-cached-mb", "1024").check()
    (c.mnt / "d").mkdir()
    cli("lfs", "setstripe", "-c", "2", "-S", "65536", c.mnt / "d").check()
    before = evictions(c)

    writer = Worker(FLUSHER, mnt_b / "d" / "big", str(FLUSH_MIB))
    try:
        _, size, digest = writer.expect("ready", 120).split()
        res = run([sys.executable, "-c", STAT_AND_HASH, c.mnt / "d" / "big"], timeout=90)
        assert not res.timed_out, "A's stat/read of B's dirty file hung\n" + res.describe()
        assert res.rc == 0, "A's stat/read of B's dirty file failed\n" + res.describe()
        a_size, a_read, a_digest = res.stdout.split()
        assert int(a_size) == int(size), f"A's stat: size {a_size}, B wrote {size}"
        assert int(a_read) == int(size), f"A read {a_read} bytes, B wrote {size}"
        assert a_digest == digest, "A read other content than B wrote"
        assert evictions(c) == before, "a client that was flushing its data was evicted"
        writer.send("close")
        writer.expect("closed", 60)
        writer.finish(30)
    finally:
        writer.kill()

    res = run([sys.executable, "-c", WRITE_FSYNC, mnt_b / "after"], timeout=60)
    assert res.rc == 0, "B's mount no longer works\n" + res.describe()
    assert read_all(c.mnt / "after") == b"still alive\n" * 100_000
    assert evictions(c) == before, "an eviction was counted"
