"""`mlustre upgrade MNT TARGET --release R`: every server of a 1.8 cluster is
restarted on release 2.0 (an OST back on 1.8, the MDT down to 1.8 and up again)
while a file is held open and written and a copy runs; no system call fails, every
byte is there, the namespace works in each release, the clients follow each server's
release without resending anything, and status shows the release of each server."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess

import pytest
from conftest import _cluster_lifetime
from mnthelpers import cli, sha256_file

TIMEOUT = 180


@pytest.fixture
def old_cluster(base_tmp):
    yield from _cluster_lifetime(base_tmp, ["--osts", "2", "--release", "1.8"])


@pytest.mark.timeout(TIMEOUT)
def test_rolling_upgrade_and_a_downgrade_under_writers(old_cluster, scratch):
    c = old_cluster
    assert {s["release"] for s in c.status()["servers"]} == {"1.8"}
    src = scratch / "src"
    with open(src, "wb") as f:
        for i in range(48):
            f.write(hashlib.sha256(str(i).encode()).digest() * (1 << 15))  # 1 MiB
    held = open(c.mnt / "held", "w+b")  # noqa: SIM115 (open across the upgrades)
    copy = subprocess.Popen(["cp", str(src), str(c.mnt / "copy")])
    expect = b""
    try:
        steps = [("MDT0000", "2.0"), ("OST0000", "2.0"), ("OST0001", "2.0"),
                 ("MGS", "2.0"), ("OST0001", "1.8"), ("MDT0000", "1.8"), ("MDT0000", "2.0")]
        for n, (target, release) in enumerate(steps):
            record = f"record {n} before {target} -> {release}\n".encode() * 100
            held.write(record)
            held.flush()
            expect += record
            res = cli("upgrade", c.mnt, target, "--release", release, "--json")
            res.check()
            done = json.loads(res.stdout)
            assert done["to"] == release and done["kind"] == "controlled", done
            held.seek(0)
            assert held.read() == expect  # read back through the server just restarted
            made = c.mnt / f"made-{n}"  # the namespace works in the release of the moment
            made.mkdir()
            (made / "f").write_text(target)
            os.rename(made / "f", made / "g")
        assert copy.wait(timeout=120) == 0
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
        held.close()
    assert sha256_file(c.mnt / "copy") == sha256_file(src)
    assert (c.mnt / "held").read_bytes() == expect
    releases = {s["name"].split("-")[-1]: s["release"] for s in c.status()["servers"]}
    assert releases == {"MGS": "2.0", "MDT0000": "2.0", "OST0000": "2.0", "OST0001": "1.8"}
    assert all((c.mnt / f"made-{n}" / "g").read_text() == t for n, (t, _) in enumerate(steps))
    # Nothing was resent: every restart went through the barrier.
    res = cli("lctl", "-m", c.mnt, "get_param", "*.*.import").check()
    assert re.findall(r"resent_updates: (\d+)", res.stdout) == ["0", "0", "0"], res.stdout
    c.remember_pids(c.status())


@pytest.mark.timeout(60)
def test_upgrade_needs_a_known_release(cluster):
    res = cli("upgrade", cluster.mnt, "OST0000", "--release", "3.0")
    assert res.rc == 2 and "invalid choice" in res.stderr, res.describe()
    res = cli("upgrade", cluster.mnt, "OST0000")
    assert res.rc == 2 and "--release" in res.stderr, res.describe()
