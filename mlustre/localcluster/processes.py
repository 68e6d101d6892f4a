"""localcluster/processes.py - the processes of a local cluster, from /proc.

Liveness is read from /proc/PID/stat (a zombie is not alive) and a process is only
signalled while its start time (or command line) is still the one recorded, so a
recycled pid is never hit. Used by the CLI, the mount tests, the benchmarks and the
demos.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def pid_alive(pid: int | None) -> bool:
    """Whether pid runs (exists and is not a zombie); False for 0/None."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def proc_starttime(pid: int) -> int | None:
    """Start time (clock ticks after boot) of a live, non-zombie pid, else None."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def proc_pgid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields is not None else None


def pids_in_group(pgid: int) -> list[int]:
    """The processes of a process group (but this one)."""
    return [int(e) for e in os.listdir("/proc")
            if e.isdigit() and int(e) != os.getpid() and proc_pgid(int(e)) == pgid]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def wchan(pid: int) -> str:
    """Where in the kernel pid waits (e.g. in a FUSE request nobody answers)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def vm_status(pid: int) -> dict:
    """VmHWM and VmRSS (KiB) of pid, as {"pid", "VmHWM_kib", "VmRSS_kib"} (or "error")."""
    out: dict = {"pid": pid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key + "_kib"] = int(val.split()[0])
    except OSError as exc:
        out["error"] = str(exc)
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_pids(procs: dict[int, int], grace: float = 10) -> list[int]:
    """SIGTERM, wait, SIGKILL each pid whose start time still matches (pid -> start time
    as proc_starttime gave it). Returns the pids that had to be signalled."""

    def alive() -> list[int]:
        return [p for p, t in procs.items() if t is not None and proc_starttime(p) == t]

    signalled = alive()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        wait_until(lambda: not alive(), wait)
    return signalled
