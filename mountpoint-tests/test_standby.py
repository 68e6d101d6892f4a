"""Automatic takeover by a standby (`mlustre up --failover-pairs --standby`; servers/mmp.py,
servers/heartbeat.py): a writer appends a known pattern (and creates small files) on the
mount the whole time and reads each block back; the active MDT or OST is frozen
(SIGSTOP), killed (kill -9) or handed over (`mlustre failover`); its standby takes over
within a bounded time, the writer sees no error, a frozen primary that is thawed fences
itself (exits with its FENCED line, nothing logged after it), and a second client
reads exactly the bytes written: nothing lost, nothing twice (appends would show it)."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import pytest
from appendwriter import Writer, fenced_log_ends, verify
from mnthelpers import Cluster, cli, proc_starttime, wait_until

TIMEOUT = 150
MMP_INTERVAL = "0.5"  # lease 1.5 s, takeover after 3 s unchanged
TAKEOVER_BOUND = 20.0  # seconds from the freeze to the standby serving


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
        line = fenced_log_ends(Path(primary["log"]))[-1]
        assert "lease" in line or "taken over" in line, line
        assert writer.advances(20, 30)
        result = writer.finish()
    finally:
        if frozen is not None and proc_starttime(frozen[0]) == frozen[1]:
            os.kill(frozen[0], signal.SIGCONT)
        writer.kill()
    assert took < TAKEOVER_BOUND
    c.mount_client(client2).check()
    verify(client2 / "w", result)
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
    verify(client2 / "w", result)
