"""`mlustre server` start-up errors: one clear line and exit status 1, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "mlustre.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("server", "mgs", "--fsname", "x", "--data", str(tmp_path / "mgs"),
                "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert "Address already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_storage_claimed_by_another_server(tmp_path: Path) -> None:
    data = tmp_path / "ost"
    first = subprocess.Popen([*CLI, "server", "mgs", "--fsname", "x", "--data", str(data)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("READY")
        r = run("server", "mgs", "--fsname", "x", "--data", str(data))
        assert r.returncode == 1
        assert "served by another server" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert first.returncode == 0


@pytest.mark.parametrize("args, message", [
    (["server", "ost", "--fsname", "x", "--data", "D"], "needs --mgs"),
    (["server", "ost", "--fsname", "x", "--data", "D", "--mgs", "nohost"], "not a NID"),
    (["server", "mgs", "--fsname", "x", "--data", "D", "--listen", "1.2.3.4:99999"],
     "not a NID"),
    (["mount", "not-a-spec", "/tmp"], "not a mount spec"),
    (["server", "mgs", "--fsname", "x", "--data", "D", "--ping-evict-timeout", "5"],
     "MDT's or OST's"),
])
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    r = run(*[str(tmp_path / a) if a == "D" else a for a in args])
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_standby_needs_listen(tmp_path: Path) -> None:
    r = run("server", "ost", "--fsname", "x", "--data", str(tmp_path / "ost"),
            "--mgs", "127.0.0.1:1", "--standby")
    assert r.returncode == 1 and "--standby needs --listen" in r.stderr
    assert "Traceback" not in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_a_standby_takes_over_a_frozen_server_which_then_exits_3(tmp_path: Path) -> None:
    """Two processes on one storage (an MGS pair: no quorum to ask): SIGSTOP of the
    active one, the standby serves after the heartbeat wait; SIGCONT: the old one
    logs FENCED and exits with status 3."""
    import os
    import signal
    import time

    data = str(tmp_path / "mgs")
    a, b = free_port(), free_port()
    common = ["server", "mgs", "--fsname", "x", "--data", data, "--mmp-interval", "0.1"]
    first = subprocess.Popen([*CLI, *common, "--listen", f"127.0.0.1:{a}", "--failover-nid",
                              f"127.0.0.1:{b}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    procs = [first]
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("READY mgs")  # (the standby after it)
        second = subprocess.Popen([*CLI, *common, "--listen", f"127.0.0.1:{b}",
                                   "--failover-nid", f"127.0.0.1:{a}", "--standby"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(second)
        assert second.stdout is not None
        assert second.stdout.readline().startswith(f"READY standby x-MGS nid=127.0.0.1:{b}")
        time.sleep(1.5)  # a live heartbeat: the standby waits
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", b)) != 0
        os.kill(first.pid, signal.SIGSTOP)
        started = time.monotonic()
        deadline = started + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", b)) == 0:
                    break
            time.sleep(0.05)
        took = time.monotonic() - started
        assert 1.0 <= took < 10, took  # waited 5 intervals + 0.5 s, then re-checked
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=10) == 3
        assert first.stderr is not None and "FENCED" in first.stderr.read()
        assert second.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                p.wait(timeout=30)
    assert second.returncode == 0
