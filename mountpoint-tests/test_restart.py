"""An OST restarted under a running writer: the application blocks while the OST is
away and carries on when it is back (on the same NID, or on a new port that the
client learns from the MGS); no call fails and every byte arrives."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mnthelpers import wait_until

WRITER = r"""
import hashlib, os, sys, time
path, total = sys.argv[1], int(sys.argv[2])
h = hashlib.sha256()
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
block = 256 << 10
for i in range(total // block):
    data = hashlib.sha256(str(i).encode()).digest() * (block // 32)
    os.write(fd, data)
    h.update(data)
    if i % 16 == 15:
        os.fsync(fd)  # forces round trips to the OSTs while they restart
    time.sleep(0.005)
os.fsync(fd)
os.close(fd)
print(h.hexdigest(), flush=True)
"""


def ost0(status: dict) -> dict:
    return next(s for s in status["servers"] if s["name"].endswith("-OST0000"))


def start_ost(data: Path, mgs_nid: str, listen: str | None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "mlustre.cli", "server", "ost", "--fsname", "mlustre",
           "--index", "0", "--data", str(data / "mlustre-OST0000"), "--mgs", mgs_nid]
    if listen:
        cmd += ["--listen", listen]
    if (data / "auth.key").exists():  # `mlustre up` made the cluster secure
        cmd += ["--key", str(data / "auth.key")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY"), f"restarted OST did not start: {line!r}"
    return proc


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["same-nid", "new-port", "kill-9"])
def test_writer_survives_ost_restart(fresh_cluster, how):
    status = fresh_cluster.status()
    mgs_nid = next(s["nid"] for s in status["servers"] if s["kind"] == "mgs")
    old = ost0(status)
    target = fresh_cluster.mnt / "f"
    os.setxattr(fresh_cluster.mnt, "lustre.lov", b"stripe_count=2")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(48 << 20)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted = None
    try:
        time.sleep(0.5)  # the writer is under way
        os.kill(old["pid"], signal.SIGKILL if how == "kill-9" else signal.SIGTERM)
        assert wait_until(lambda: not _alive(old["pid"]), 30), "OST did not stop"
        time.sleep(1.0)  # the writer now waits for the OST
        assert writer.poll() is None, "the writer ended while the OST was down"
        restarted = start_ost(fresh_cluster.data, mgs_nid,
                              None if how == "new-port" else old["nid"])
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, f"writer failed: {err}"
        with open(target, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == out.strip()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)
        if restarted is not None:
            restarted.terminate()
            try:
                restarted.wait(timeout=30)
            except subprocess.TimeoutExpired:
                restarted.kill()
                restarted.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
