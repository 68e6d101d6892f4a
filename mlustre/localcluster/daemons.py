"""localcluster/daemons.py - starting and stopping the daemons of a local cluster.

Daemons print one "READY ..." line on stdout once they serve; everything else
goes to their log file. Waiting for that line (with a deadline, watching for an
early exit) is how `up` and `mount` know a daemon is usable, without sleeps.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from .processes import pid_alive


class DaemonFailed(Exception):
    """A daemon exited or did not become ready in time."""


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `python -m mlustre.cli ARGS` detached, stderr to log, stdout to a pipe."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as logf:
        return subprocess.Popen([sys.executable, "-m", "mlustre.cli", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf,
                                start_new_session=True, close_fds=True)


def wait_ready(proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float) -> str:
    """The daemon's READY line; DaemonFailed (with its log tail) if it never comes."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            stop_pid(proc.pid, timeout=3)
            raise DaemonFailed(f"{what} did not become ready within {timeout:.0f}s\n"
                               f"{log_tail(log)}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:  # stdout closed: the process is exiting
                proc.wait(timeout=10)
                raise DaemonFailed(f"{what} exited with status {proc.returncode}\n"
                                   f"{log_tail(log)}")
            buf += chunk
            complete, _, _ = buf.rpartition(b"\n")  # only whole lines count
            for line in complete.decode(errors="replace").splitlines():
                if line.startswith("READY"):
                    proc.stdout.close()
                    return line
        elif proc.poll() is not None:
            raise DaemonFailed(f"{what} exited with status {proc.returncode}\n{log_tail(log)}")


def stop_pid(pid: int, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
    """Ask a daemon to stop, wait, then kill it. True if it stopped on its own."""
    if not pid_alive(pid):
        return True
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def detach_stdout_to_stderr() -> None:
    """After READY, a daemon's stdout (the pipe its starter reads) goes to its log."""
    sys.stdout.flush()
    os.dup2(2, 1)
