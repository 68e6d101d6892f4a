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
