"""`mlustre failover MNT TARGET [--crash]`: each target of a running cluster is
restarted on its own NID (gracefully, or after kill -9) while a copy runs on the
mount; the copy completes, every byte is there, `status` shows the new PIDs, and bad
targets or options are refused in one line."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest
from conftest import _cluster_lifetime
from mnthelpers import cli, sha256_file

TIMEOUT = 180


@pytest.mark.timeout(TIMEOUT)
def test_failover_of_every_target_under_a_copy(fresh_cluster, scratch):
    c = fresh_cluster
    src = scratch / "src"
    with open(src, "wb") as f:
        for i in range(96):
            f.write(hashlib.sha256(str(i).encode()).digest() * (1 << 15))  # 1 MiB
    before = {s["name"]: s["pid"] for s in c.status()["servers"]}
    copy = subprocess.Popen(["cp", str(src), str(c.mnt / "copy")])
    try:
        for target, crash in (("OST0000", True), ("MDT0000", False), ("MGS", False),
                              ("OST0001", False), ("ost0000", True), ("mdt", True)):
            res = cli("failover", c.mnt, target, *(["--crash"] if crash else []))
            res.check()
            assert re.search(r"serving again on 127\.0\.0\.1:\d+ \(pid \d+\)", res.stdout), \
                res.describe()
        assert copy.wait(timeout=120) == 0
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
    assert sha256_file(c.mnt / "copy") == sha256_file(src)
    status = c.status()
    c.remember_pids(status)
    after = {s["name"]: s["pid"] for s in status["servers"]}
    assert after.keys() == before.keys()
    assert all(after[n] != before[n] for n in after), (before, after)
    assert all(s["state"] == "running" for s in status["servers"]), status
    (c.mnt / "after").write_bytes(b"still works")
    os.sync()
    assert (c.mnt / "after").read_bytes() == b"still works"


@pytest.fixture
def never_syncing_cluster(base_tmp):
    """Servers that fsync only when asked (a commit interval of an hour)."""
    yield from _cluster_lifetime(base_tmp, ["--osts", "2", "--commit-interval", "3600"])


@pytest.mark.timeout(TIMEOUT)
def test_kill_9_of_the_mdt_loses_no_acknowledged_update(never_syncing_cluster):
    """Nothing was fsynced since these updates; the MDT is killed; all of them are
    there when it is back (each update reached the MDT's write-ahead log before its
    reply went out)."""
    c = never_syncing_cluster
    (c.mnt / "d").mkdir()
    (c.mnt / "d" / "f").write_bytes(b"content")
    os.symlink("f", c.mnt / "d" / "l")
    os.rename(c.mnt / "d" / "f", c.mnt / "d" / "g")
    os.chmod(c.mnt / "d" / "g", 0o600)
    os.setxattr(c.mnt / "d" / "g", "user.k", b"v")
    (c.mnt / "gone").write_bytes(b"x")
    os.unlink(c.mnt / "gone")
    cli("failover", c.mnt, "MDT0000", "--crash").check()
    assert sorted(os.listdir(c.mnt / "d")) == ["g", "l"]
    st = os.stat(c.mnt / "d" / "g")
    assert (st.st_mode & 0o777, st.st_size) == (0o600, 7)
    assert os.getxattr(c.mnt / "d" / "g", "user.k") == b"v"
    assert os.readlink(c.mnt / "d" / "l") == "f"
    assert not (c.mnt / "gone").exists()
    assert (c.mnt / "d" / "g").read_bytes() == b"content"


@pytest.fixture
def paired_cluster(base_tmp):
    yield from _cluster_lifetime(base_tmp, ["--osts", "2", "--failover-pairs"])


@pytest.mark.timeout(TIMEOUT)
def test_failover_to_the_partner_and_back(paired_cluster, scratch):
    """Each MDT/OST serves from 127.0.0.2 or, after `failover --partner`, from
    127.0.0.3 (same storage, claimed by one of them at a time); clients follow."""
    c = paired_cluster
    src = scratch / "src"
    src.write_bytes(os.urandom(24 << 20))
    copy = subprocess.Popen(["cp", str(src), str(c.mnt / "copy")])
    try:
        for target, extra in (("OST0000", ["--crash"]), ("MDT0000", []), ("OST0001", []),
                              ("OST0000", []), ("MDT0000", ["--crash"])):
            res = cli("failover", c.mnt, target, "--partner", *extra)
            res.check()
            assert "its partner took over" in res.stdout, res.describe()
        assert copy.wait(timeout=120) == 0
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
    assert sha256_file(c.mnt / "copy") == sha256_file(src)
    status = c.status()
    c.remember_pids(status)
    hosts = {s["name"].split("-")[-1]: s["nid"].rsplit(":", 1)[0] for s in status["servers"]}
    assert hosts == {"MGS": "127.0.0.1", "MDT0000": "127.0.0.2", "OST0000": "127.0.0.2",
                     "OST0001": "127.0.0.3"}, hosts


@pytest.mark.timeout(TIMEOUT)
def test_failover_errors_are_one_line(cluster):
    for args, mentions in ((["OST0042"], "no target 'OST0042'"),
                           (["OST0000", "--partner"], "no failover partner")):
        res = cli("failover", cluster.mnt, *args)
        assert res.rc == 1, res.describe()
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and mentions in lines[0], res.describe()
