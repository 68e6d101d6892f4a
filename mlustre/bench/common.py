"""bench/common.py - what every part of the I/O benchmark shares: constants,
commands with timeouts, waiting, stopping processes, unmounting, a watchdog.

Mount-table and /proc readers are the package's (mlustre/localcluster/).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..localcluster import mounts
from ..localcluster.mounts import fstype_of, is_mounted  # noqa: F401  (for the others)
from ..localcluster.processes import cmdline, pid_alive, vm_status  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]  # the repository (bench-results/, git)
MIB = 1 << 20
BLOCK = MIB
TARGETS = ("mlustre", "tmpfs", "passthrough")
PHASES = ("write", "read", "create", "stat", "unlink", "reread", "pingpong", "shell")
# --only aliases and what a benchmark needs to run (see parse_args).
ALIASES = {"seq": ("write", "read"), "meta": ("create", "stat", "unlink")}
NEEDS = {"read": ("write",), "stat": ("create", "unlink"), "create": ("unlink",),
         "unlink": ("create",)}
PHASE_LABEL = {
    "write": "seq write 1 MiB, fsync (MB/s)",
    "read": "seq read 1 MiB, cold (MB/s)",
    "create": "create empty files (ops/s)",
    "stat": "stat, cold (ops/s)",
    "unlink": "unlink (ops/s)",
    "reread": "re-read, cached, new open (MB/s)",
    "pingpong": "ping-pong hand-off (us)",
    "shell": "shell tools (s per step)",
}
PP_RECORD = 64  # bytes of the ping-pong record
PP_WARMUP = 2  # untimed ping-pong round trips (their stale reads still count)
# Reference figures ("bar") measured on network filesystems.
BARS = {"write": 290.0, "read": 560.0, "create": 2500.0, "stat": 5000.0, "unlink": 3700.0}

# Timeouts of subprocesses, seconds.
T_UP = 180
T_MOUNT = 90
T_UMOUNT = 90
T_STATUS = 30
T_DOWN = 180
T_SHORT = 30


class BenchError(Exception):
    def __init__(self, msg: str = "", partial: dict | None = None):
        super().__init__(msg)
        self.partial = partial  # figures measured before the failure, kept in the results


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# process and mount helpers


def run(cmd: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """Run *cmd* with a timeout, capturing text output."""
    log("$ " + " ".join(map(str, cmd)))
    try:
        cp = subprocess.run(
            [str(c) for c in cmd], stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=timeout, errors="replace",
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{cmd[0]} timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}"
                         ) from exc
    except OSError as exc:
        raise BenchError(f"cannot run {cmd[0]}: {exc}") from exc
    if check and cp.returncode != 0:
        raise BenchError(
            f"{' '.join(map(str, cmd))} exited {cp.returncode}: "
            f"{(cp.stderr or cp.stdout).strip()[-2000:]}"
        )
    return cp


def start_bg(cmd: list[str], logfile: Path) -> subprocess.Popen:
    log("$ " + " ".join(map(str, cmd)) + f"  (background, log {logfile})")
    with open(logfile, "ab") as out:
        return subprocess.Popen(
            [str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen | None = None, logfile: Path | None = None) -> None:
    """Poll *pred*; fail if *proc* exits with an error or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if proc is not None and proc.poll() is not None and proc.returncode != 0:
            raise BenchError(f"{what}: process exited {proc.returncode}\n"
                             f"{tail(logfile) if logfile else ''}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not done after {timeout:.0f} s\n"
                             f"{tail(logfile) if logfile else ''}")
        time.sleep(0.05)


def stop_pid(pid: int, expect: str, grace: float = 10.0,
             proc: subprocess.Popen | None = None) -> None:
    """SIGTERM then SIGKILL one process we started, checking its command line first."""
    if not pid_alive(pid) or expect not in cmdline(pid):
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        log(f"kill -{sig.name} {pid} ({cmdline(pid)[:80]})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)
                if proc.returncode is not None:
                    return
            elif not pid_alive(pid):
                return
            else:
                time.sleep(0.1)


def fuse_unmount(mnt: str | Path) -> None:
    """fusermount3 -u, then the lazy -uz, until *mnt* is no longer mounted."""
    for args in (["-u"], ["-uz"]):
        if not is_mounted(mnt):
            return
        with contextlib.suppress(BenchError):
            run(["fusermount3", *args, mnt], timeout=T_SHORT, check=False)
        with contextlib.suppress(BenchError):
            wait_until(lambda: not is_mounted(mnt), 5, f"unmount {mnt}")
    if is_mounted(mnt) and os.geteuid() == 0:
        with contextlib.suppress(BenchError):
            run(["umount", "-l", mnt], timeout=T_SHORT, check=False)


def fuse_abort(mnt_dev: int | None) -> bool:
    """Abort a FUSE connection through fusectl, if it is mounted."""
    if mnt_dev is None or os.major(mnt_dev) != 0:
        return False
    return mounts.fuse_abort(os.minor(mnt_dev))


class Watchdog:
    """Runs *on_expire* from a thread if the guarded block lasts longer than *timeout*."""

    def __init__(self, timeout: float, what: str, on_expire: Callable[[], None]):
        self.timeout, self.what, self.on_expire = timeout, what, on_expire
        self.fired = False
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        self.fired = True
        log(f"WATCHDOG: {self.what} still running after {self.timeout:.0f} s: aborting")
        try:
            self.on_expire()
        except Exception as exc:  # a watchdog must not die silently
            log(f"watchdog action failed: {exc!r}")

    def __enter__(self):
        self._timer = threading.Timer(self.timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()
        return False
