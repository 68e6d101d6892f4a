"""Automatic takeover by a standby (`mlustre up --failover-pairs --standby`; servers/mmp.py,
servers/heartbeat.py): a writer appends a known pattern (and creates small files) on the
mount the whole time and reads each block back; the active MDT or OST is frozen
(SIGSTOP), killed (kill -9) or handed over (`mlustre failover`); its standby takes over
within a bounded time, the writer sees no error, a frozen primary that is thawed fences
itself (exits with its FENCED line, nothing logged after it), and a second client
reads exactly the bytes written: nothing lost, nothing twice (appends would show it)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mnthelpers import Cluster, cli, proc_starttime, wait_until

TIMEOUT = 150
BLOCK = 16384
MMP_INTERVAL = "0.5"  # lease 1.5 s, takeover after 3 s unchanged
TAKEOVER_BOUND = 20.0  # seconds from the freeze to the standby serving

WRITER = r"""
import json, os, sys, time
path, stop, progress, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
rd = os.open(path, os.O_RDONLY)
n = files = 0
while not os.path.exists(stop):
    data = (b"%010d|" % n) * (block // 11) + b"#" * (block % 11)
    assert os.write(fd, data) == block
    if n % 8 == 0:
        os.fsync(fd)
    back = os.pread(rd, block, n * block)
    assert back == data, f"block {n} reads back wrong"
    n += 1
    if n % 16 == 0:  # metadata too: a small file each 16 blocks
        with open(os.path.join(os.path.dirname(path), f"meta-{files}"), "w") as f:
            f.write(f"file {files}")
        files += 1
    with open(progress + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(progress + ".tmp", progress)
    time.sleep(0.005)
os.fsync(fd)
os.close(fd)
os.close(rd)
print(json.dumps({"blocks": n, "files": files}))
"""


def expected_block(n: int) -> bytes:
    return (b"%010d|" % n) * (BLOCK // 11) + b"#" * (BLOCK % 11)


class Writer:
    """The writer process on the cluster's mount (stopped through a file)."""

    def __init__(self, mnt: Path, scratch: Path) -> None:
        self.dir = mnt / "w"
        self.dir.mkdir()
        self.stop_file = scratch / "stop"
        self.progress_file = scratch / "progress"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(self.dir / "data"), str(self.stop_file),
             str(self.progress_file), str(BLOCK)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def blocks(self) -> int:
        try:
            return int(self.progress_file.read_text())
        except (OSError, ValueError):
            return 0

    def advances(self, by: int, timeout: float) -> bool:
        start = self.blocks()
        return wait_until(lambda: self.blocks() >= start + by or self.proc.poll() is not None,
                          timeout) and self.proc.poll() is None

    def finish(self) -> dict:
        self.stop_file.write_text("")
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, f"the writer failed:\n{err}"
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.stop_file.write_text("")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def standby_cluster(cluster_factory) -> Cluster:
    c = cluster_factory("--osts", "1", "--fsname", "sb" + secrets.token_hex(3),
                        "--failover-pairs", "--standby", "--mmp-interval", MMP_INTERVAL)
    remember_standbys(c)
    return c


def remember_standbys(c: Cluster) -> dict:
    """status, with the standbys' PIDs remembered for the teardown too."""
    status = c.status()
    c.remember_pids(status)
    c.remember_pids({"servers": [s["standby"] for s in status["servers"] if s["standby"]]})
    return status


def server(status: dict, target: str) -> dict:
    [s] = [s for s in status["servers"] if s["name"].endswith(target)]
    return s


def wait_takeover(c: Cluster, target: str, standby_pid: int, since: float) -> float:
    """Seconds from `since` until status names the standby as the serving server."""
    ok = wait_until(lambda: server(remember_standbys(c), target)["pid"] == standby_pid,
                    TAKEOVER_BOUND)
    took = time.monotonic() - since
    assert ok, f"{target}'s standby (pid {standby_pid}) did not take over in {took:.1f}s"
    return took


def verify(mnt: Path, result: dict) -> None:
    """What a second client reads: the writer's blocks exactly (appends: a block written
    twice or lost would shift or cut the file) and every small file."""
    data = (mnt / "w" / "data").read_bytes()
    n = result["blocks"]
    assert len(data) == n * BLOCK, (len(data), n * BLOCK)
    bad = [i for i in range(n) if data[i * BLOCK:(i + 1) * BLOCK] != expected_block(i)]
    assert not bad, f"blocks {bad[:10]} differ"
    for i in range(result["files"]):
        assert (mnt / "w" / f"meta-{i}").read_text() == f"file {i}"
    assert not (mnt / "w" / f"meta-{result['files']}").exists()


def fenced_log_ends(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    fenced = [i for i, line in enumerate(lines) if "FENCED" in line]
    assert fenced, f"no FENCED line in {log}:\n" + "\n".join(lines[-10:])
    after = lines[fenced[0] + 1:]
    assert not after, f"{log} has lines after its FENCED line: {after}"
    return lines[fenced[0]]


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("target", ["OST0000", "MDT0000"])
def test_a_frozen_primary_is_taken_over_and_fences_when_thawed(cluster_factory, client2,
                                                              scratch, target):
    c = standby_cluster(cluster_factory)
    status = remember_standbys(c)
    primary = server(status, target)
    standby_pid = primary["standby"]["pid"]
    assert primary["nid"].startswith("127.0.0.2:") and primary["standby"]["state"] == \
        "standing by"
    writer = Writer(c.mnt, scratch)
    frozen = None
    try:
        assert writer.advances(40, 30), "the writer does not write"
        frozen = (primary["pid"], proc_starttime(primary["pid"]))
        os.kill(primary["pid"], signal.SIGSTOP)
        took = wait_takeover(c, target, standby_pid, time.monotonic())
        assert writer.advances(40, 40), "the writer did not continue after the takeover"
        now = server(remember_standbys(c), target)
        assert now["nid"].startswith("127.0.0.3:") and now["state"] == "running"
        os.kill(primary["pid"], signal.SIGCONT)
        frozen = None
        assert wait_until(lambda: proc_starttime(primary["pid"]) is None, 15), \
            "the thawed primary did not exit"
        line = fenced_log_ends(Path(primary["log"]))
        assert "lease" in line or "taken over" in line, line
        assert writer.advances(20, 30)
        result = writer.finish()
    finally:
        if frozen is not None and proc_starttime(frozen[0]) == frozen[1]:
            os.kill(frozen[0], signal.SIGCONT)
        writer.kill()
    assert took < TAKEOVER_BOUND
    c.mount_client(client2).check()
    verify(client2, result)
    status = remember_standbys(c)
    assert server(status, target)["standby"]["state"] == "stopped"


@pytest.mark.timeout(TIMEOUT)
def test_handover_kill_9_and_a_refused_second_server(cluster_factory, client2, scratch):
    """`mlustre failover OST0000` hands the OST over to its standby (the old server
    becomes the standby); kill -9 of the MDT: its standby takes over; a server started
    by hand on a storage whose heartbeat is live is refused in one line."""
    c = standby_cluster(cluster_factory)
    writer = Writer(c.mnt, scratch)
    try:
        assert writer.advances(30, 30), "the writer does not write"
        res = cli("failover", c.mnt, "OST0000")
        res.check()
        assert "its standby took over" in res.stdout and "127.0.0.3:" in res.stdout, \
            res.describe()
        ost = server(remember_standbys(c), "OST0000")
        assert ost["nid"].startswith("127.0.0.3:")
        assert ost["standby"]["nid"].startswith("127.0.0.2:")
        assert ost["standby"]["state"] == "standing by"
        assert writer.advances(30, 40), "the writer did not continue after the handover"

        mdt = server(remember_standbys(c), "MDT0000")
        os.kill(mdt["pid"], signal.SIGKILL)
        wait_takeover(c, "MDT0000", mdt["standby"]["pid"], time.monotonic())
        assert writer.advances(30, 40), "the writer did not continue after the kill"

        mgs = server(c.status(), "MGS")["nid"]
        fs = c.spec.rsplit(":/", 1)[1]
        data = c.data / f"{fs}-OST0000"
        refused = cli("server", "ost", "--fsname", fs, "--index", "0", "--data", data,
                      "--mgs", mgs, "--listen", "127.0.0.2:1", "--failover-nid",
                      ost["nid"], "--mmp-interval", MMP_INTERVAL,
                      "--key", c.data / "auth.key", timeout=30)
        assert refused.rc == 1, refused.describe()
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "is served by another server" in lines[0] \
            and f"pid={ost['pid']}" in lines[0] and "heartbeat seq" in lines[0], \
            refused.describe()
        result = writer.finish()
    finally:
        writer.kill()
    c.mount_client(client2).check()
    verify(client2, result)
