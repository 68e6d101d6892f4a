"""Crash recovery scenarios in the spirit of Lustre's replay-single and recovery-small,
on real mounts: OST writes lost by a crash after `obdfilter.*.replay_barrier=1` and
replayed by the client; a crash of the MDT during its own recovery (double failure)
with one client gone for good; failover to the partner NID while clients replay; a
tar extraction during which the MDT and an OST are each killed twice under replay
barriers. What is checked is what a user sees: no failed call, identical data, read
from a second mount whose cache is fresh."""

from __future__ import annotations

import os
import random
import re
import secrets
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from mnthelpers import cli, sha256_file, sigkill_client, wait_until

TIMEOUT = 300


def fsname() -> str:
    return "rs" + secrets.token_hex(3)


def barrier(mnt: Path, *params: str) -> None:
    for p in params:
        cli("lctl", "-m", mnt, "set_param", f"{p}.replay_barrier=1").check()


def crash(mnt: Path, target: str, *extra: str) -> None:
    cli("failover", mnt, target, "--crash", *extra).check()


def param(mnt: Path, name: str) -> str:
    return cli("lctl", "-m", mnt, "get_param", "-n", name).check().stdout


def stat_sum(mnt: Path, pattern: str, key: str) -> int:
    out = cli("lctl", "-m", mnt, "get_param", pattern).check().stdout
    return sum(int(m.group(1)) for m in re.finditer(rf"^{key}\s+(\d+)\s+samples", out,
                                                     re.MULTILINE))


def tree_sums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.timeout(TIMEOUT)
def test_ost_crashes_lose_writes_after_the_barrier_and_clients_replay_them(
        cluster_factory, tmp_path):  # noqa: F811
    """Both OSTs stop committing; files are written (fsynced or not), striped over both
    OSTs, overwritten, truncated; each OST is killed and comes back without those
    writes (its undo journal plays a lost disk); the client replays them. A second
    mount then reads exactly what was written."""
    c = cluster_factory("--osts", "2", "--fsname", fsname())
    m = c.mnt
    (m / "striped").mkdir()
    cli("lfs", "setstripe", "-c", "2", "-S", "65536", m / "striped").check()
    (m / "before").write_bytes(b"b" * 300_000)
    os.sync()
    barrier(m, "obdfilter.*")
    rnd = random.Random(4)
    want: dict[str, bytes] = {}
    for i in range(6):
        data = rnd.randbytes(rnd.randrange(1, 700_000))
        name = f"striped/f{i}" if i % 2 else f"plain{i}"
        with open(m / name, "wb") as f:
            f.write(data)
            if i % 3 == 0:
                f.flush()
                os.fsync(f.fileno())
        want[name] = data
    with open(m / "before", "r+b") as f:  # an overwrite and a truncate of old data
        f.seek(1000)
        f.write(b"X" * 5000)
        f.truncate(200_000)
    want["before"] = (b"b" * 1000 + b"X" * 5000 + b"b" * 300_000)[:200_000]
    os.sync()  # every write answered by the OSTs, none committed
    crash(m, "OST0000")
    crash(m, "OST0001")
    c.remember_pids(c.status())
    undone = stat_sum(m, "obdfilter.*.stats", "replay_barrier_undone")
    assert undone > 0, "the OSTs lost nothing: the scenario proves nothing"
    m2 = tmp_path / "second"
    m2.mkdir()
    c.mount_client(m2).check()
    for name, data in want.items():
        assert (m2 / name).read_bytes() == data, name
    assert stat_sum(m, "obdfilter.*.stats", "replayed_updates") > 0
    assert (m / "plain0").read_bytes() == want["plain0"]


@pytest.mark.timeout(TIMEOUT)
def test_mdt_crash_during_its_recovery_with_a_client_gone(cluster_factory, tmp_path):  # noqa: F811
    """Double failure: B's client dies; A's updates after the MDT's replay barrier are
    lost by a kill -9; the MDT comes back and waits for B in its recovery window, and
    is killed again before it ends. The third instance still gets every update of A
    (acknowledged or replayed again), evicts B when the window ends, and serves A."""
    c = cluster_factory("--osts", "1", "--fsname", fsname(), "--recovery-window", "6")
    m = c.mnt
    m2 = tmp_path / "b"
    m2.mkdir()
    c.mount_client(m2).check()
    (m2 / "from-b").write_text("b")
    os.sync()
    time.sleep(0.5)  # (the MDT writes down its clients)
    sigkill_client(c, m2)
    barrier(m, "mdt.*")
    (m / "d").mkdir()
    for i in range(20):
        (m / "d" / f"f{i}").write_text(f"file {i}")
    os.rename(m / "from-b", m / "d" / "renamed")
    crash(m, "MDT0000")
    assert wait_until(lambda: "RECOVERING" in param(m, "mdt.*.recovery_status"), 10)
    crash(m, "MDT0000")  # during recovery
    c.remember_pids(c.status())
    assert sorted(os.listdir(m / "d")) == sorted([f"f{i}" for i in range(20)] + ["renamed"])
    assert all((m / "d" / f"f{i}").read_text() == f"file {i}" for i in range(20))
    status = param(m, "mdt.*.recovery_status")
    assert "status: COMPLETE" in status and "evicted_clients: 1" in status, status


@pytest.mark.timeout(TIMEOUT)
def test_failover_to_the_partner_while_clients_replay(cluster_factory, tmp_path):  # noqa: F811
    """With failover pairs, the MDT and an OST are killed after their replay barriers
    and started on their partners' NIDs: the client finds them there and replays its
    updates, its written data and its locks."""
    c = cluster_factory("--osts", "1", "--fsname", fsname(), "--failover-pairs")
    m = c.mnt
    os.sync()
    barrier(m, "mdt.*", "obdfilter.*")
    (m / "dir").mkdir()
    data = os.urandom(1_500_000)
    (m / "dir" / "data").write_bytes(data)
    os.symlink("dir/data", m / "link")
    os.sync()
    crash(m, "MDT0000", "--partner")
    crash(m, "OST0000", "--partner")
    status = c.status()
    c.remember_pids(status)
    hosts = {s["name"].split("-")[-1]: s["nid"].rsplit(":", 1)[0] for s in status["servers"]}
    assert hosts["MDT0000"] == hosts["OST0000"] == "127.0.0.3", hosts
    m2 = tmp_path / "second"
    m2.mkdir()
    c.mount_client(m2).check()
    assert (m2 / "dir" / "data").read_bytes() == data
    assert os.readlink(m2 / "link") == "dir/data"
    assert stat_sum(m, "mdt.*.stats", "replayed_updates") >= 3
    assert stat_sum(m, "obdfilter.*.stats", "replayed_updates") > 0


def make_source(root: Path, seed: int) -> Path:
    """A tree of 300 files (a few large ones) packed as a tarball."""
    rnd = random.Random(seed)
    src = root / "src"
    for i in range(300):
        d = src / f"d{i % 12}"
        d.mkdir(parents=True, exist_ok=True)
        size = rnd.choice([0, 10, 4096, 70_000]) if i % 50 else 3_000_000
        (d / f"f{i}").write_bytes(rnd.randbytes(size))
    tar = root / "src.tar"
    with tarfile.open(tar, "w") as t:
        t.add(src, arcname="src")
    return tar


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_tar_extraction_survives_the_mdt_and_an_ost_each_killed_twice(
        cluster_factory, tmp_path):  # noqa: F811
    """tar runs extraction after extraction while the MDT and OST0000 are each killed
    twice, every time after a replay barrier, so each crash loses what was done since:
    no tar fails, and every extracted tree is identical to the source (read from a
    second mount)."""
    c = cluster_factory("--osts", "2", "--fsname", fsname())
    m = c.mnt
    local = tmp_path / "local"
    local.mkdir()
    tar = make_source(local, 11)
    want = tree_sums(local / "src")
    script = (f"set -e; i=0; while [ ! -e {tmp_path}/stop ] || [ $i -lt 2 ]; do "
              f"i=$((i+1)); mkdir {m}/x$i; tar -xf {tar} -C {m}/x$i; done; echo $i")
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for target in ("MDT0000", "OST0000", "MDT0000", "OST0000"):
            time.sleep(1.5)
            assert proc.poll() is None, f"tar stopped early: {proc.communicate()}"
            barrier(m, "mdt.*" if target.startswith("MDT") else "obdfilter.*")
            time.sleep(1.0)
            crash(m, target)
        (tmp_path / "stop").touch()
        out, err = proc.communicate(timeout=TIMEOUT / 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"tar failed: {err}"
    rounds = int(out.split()[-1])
    c.remember_pids(c.status())
    m2 = tmp_path / "second"
    m2.mkdir()
    c.mount_client(m2).check()
    for i in range(1, rounds + 1):
        assert tree_sums(m2 / f"x{i}" / "src") == want, f"x{i} differs"
    assert stat_sum(m, "mdt.*.stats", "replayed_updates") > 0
    assert stat_sum(m, "obdfilter.*.stats", "replay_barrier_undone") > 0


@pytest.mark.timeout(TIMEOUT)
def test_replayed_opens_leave_one_handle_each(cluster_factory, tmp_path):  # noqa: F811
    """After the MDT's replay barrier: a file created and held open, one truncated by
    an O_TRUNC open and held open, one created, unlinked and held open (open-unlinked),
    and one created and closed. After a kill -9 of the MDT, the update replays open
    them again and the open replays take those handles over: each open file has one
    handle, the closed one none, and the open-unlinked file lives until its close."""
    c = cluster_factory("--osts", "1", "--fsname", fsname())
    m = c.mnt
    (m / "old").write_bytes(b"o" * 10_000)
    os.sync()
    barrier(m, "mdt.*")
    held = [os.open(m / "new", os.O_RDWR | os.O_CREAT, 0o644),
            os.open(m / "old", os.O_RDWR | os.O_TRUNC),
            os.open(m / "gone", os.O_RDWR | os.O_CREAT, 0o644)]
    try:
        os.write(held[2], b"still here")
        os.unlink(m / "gone")
        (m / "closed").write_text("closed before the crash")
        crash(m, "MDT0000")
        assert os.pread(held[2], 100, 0) == b"still here"
        assert os.fstat(held[1]).st_size == 0
        os.write(held[0], b"written after the crash")
        stats = "mdt.*.stats"
        assert wait_until(lambda: stat_sum(m, stats, "replayed_opens_closed") == 1, 30)
        assert stat_sum(m, stats, "replayed_opens_handed_over") == 3
        assert stat_sum(m, stats, "open_replays") == 3
    finally:
        for fd in held:
            os.close(fd)
    assert (m / "new").read_bytes() == b"written after the crash"
    assert (m / "closed").read_text() == "closed before the crash"
    assert not (m / "gone").exists()


def object_files(ost_dir: Path) -> set[str]:
    return {p.name for p in (ost_dir / "O").glob("*/*")}


@pytest.mark.timeout(TIMEOUT)
def test_objects_of_creations_lost_for_good_are_destroyed(cluster_factory, tmp_path):  # noqa: F811
    """Orphan cleanup (Lustre's MDS-OST orphan deletion): B creates and writes files
    after the MDT's replay barrier and dies before the MDT is killed, so those
    creations are never replayed, yet their objects hold data on the OST. Once the
    recovery is over the OST destroys them; the objects of A's files created after the
    barrier (replayed with the same object ids) and of older files stay."""
    fs = fsname()
    c = cluster_factory("--osts", "1", "--fsname", fs, "--recovery-window", "4")
    m = c.mnt
    ost_dir = c.data / f"{fs}-OST0000"
    m2 = tmp_path / "b"
    m2.mkdir()
    c.mount_client(m2).check()
    (m / "old").write_bytes(b"o" * 100_000)
    os.sync()
    time.sleep(0.5)  # (the MDT writes down its clients)
    before = object_files(ost_dir)
    barrier(m, "mdt.*")
    for i in range(5):
        (m2 / f"lost{i}").write_bytes(b"x" * 50_000)
    for i in range(3):
        (m / f"kept{i}").write_bytes(bytes([i]) * 70_000)
    # (close leaves data in the client's cache; its release writes it out right after.)
    assert wait_until(lambda: len(object_files(ost_dir) - before) == 8, 20), \
        "every new file's object is on the OST"
    with_lost = object_files(ost_dir)
    sigkill_client(c, m2)
    crash(m, "MDT0000")
    c.remember_pids(c.status())
    assert sorted(os.listdir(m)) == ["kept0", "kept1", "kept2", "old"]
    assert wait_until(lambda: stat_sum(m, "mdt.*.stats", "orphan_objects_destroyed") == 5, 60)
    after = object_files(ost_dir)
    assert len(after - before) == 3 and after >= before, (before, with_lost, after)
    assert stat_sum(m, "obdfilter.*.stats", "orphan_objects_destroyed") == 5
    for i in range(3):
        assert (m / f"kept{i}").read_bytes() == bytes([i]) * 70_000
    assert (m / "old").read_bytes() == b"o" * 100_000
    (m / "new").write_bytes(b"n" * 1000)  # new creations after the cleanup work
    assert (m / "new").read_bytes() == b"n" * 1000
