#!/usr/bin/env python3
"""Benchmark of mlustre against a local tmpfs and a Python passthrough FUSE filesystem.

Targets (all measured in the same run, in this order unless --only says otherwise):
  mlustre      a fresh local cluster (`mlustre up MNT --osts 2`), bench dir striped over
               both OSTs when `setfattr -n lustre.lov` works
  tmpfs        a directory on /dev/shm (or on a tmpfs mounted for the run)
  passthrough  scripts/passthrough.py (pyfuse3) over a tmpfs directory: the Python-FUSE floor

Phases per target:
  write   sequential write of --size-mb MiB in 1 MiB os.write calls from a preallocated
          random buffer; the time covers open, the writes, fsync and close
  read    sequential read after a remount (cold client cache; tmpfs stays warm),
          1 MiB reads; sha256 checked against the written data outside the timed region
  create  --files empty files (os.open O_CREAT|O_WRONLY, close)
  stat    os.stat of every file after a remount (cold)
  unlink  os.unlink of every file
  reread  re-read of a cached file: --reread-mb MiB written and closed, read once
          (untimed, warms the caches), then read --reread-passes times, each pass with a
          fresh open() and 1 MiB reads; the figure is the median pass (data checked
          after every pass, outside the timed region)
  pingpong
          hand-off latency between two mounts of the same filesystem (mlustre: a second
          client `mlustre mount SPEC MNT2`; passthrough: a second passthrough process of
          the same source; tmpfs: the same directory twice). Process A (on the first
          mount) opens a shared file, writes a 64-byte record at offset 0 and closes it,
          then tells process B (on the second mount) over a pipe; B opens, reads and
          closes the file right away and checks the record. A read that does not show
          the new record is a STALE read: counted and retried at once (no sleeps). B then
          writes the next record and A reads it, and so on, --pingpong-rounds round
          trips after 2 warm-up round trips, given up after --pingpong-timeout s. The
          latency of one hand-off runs from the writer's open to the reader's close of
          the read that saw the new record (CLOCK_MONOTONIC, shared by both processes);
          median and p99 are reported, with the number of stale reads.

--only takes targets and/or benchmarks (write, read, create, stat, unlink, reread,
pingpong; seq = write,read; meta = create,stat,unlink), e.g. `--only reread`,
`--only mlustre,pingpong`. A benchmark pulls in what it needs (read: write; stat:
create; create and unlink go together). Default: every target, every benchmark.

Exits non-zero when any phase, setup step or verification fails (stale reads in
pingpong are reported, not a failure).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSTHROUGH = ROOT / "scripts" / "passthrough.py"
MIB = 1 << 20
BLOCK = MIB
TARGETS = ("mlustre", "tmpfs", "passthrough")
PHASES = ("write", "read", "create", "stat", "unlink", "reread", "pingpong")
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


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace(
        "\\012", "\n").replace("\\134", "\\")


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rf = right.split()
            out.append((_unescape(fields[4]), rf[0] if rf else "", rf[1] if len(rf) > 1 else ""))
    return out


def is_mounted(path: str | Path) -> bool:
    # Not os.path.ismount: a dead FUSE mount fails lstat and would look unmounted.
    p = os.path.abspath(path)
    return any(m == p for m, _, _ in mounts())


def fstype_of(path: str | Path) -> str:
    p = os.path.realpath(path)
    best, kind = "", ""
    for m, fstype, _ in mounts():
        if (p == m or p.startswith(m.rstrip("/") + "/")) and len(m) >= len(best):
            best, kind = m, fstype
    return kind


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


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


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


def vm_status(pid: int) -> dict:
    out = {"pid": pid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key + "_kib"] = int(val.split()[0])
    except OSError as exc:
        out["error"] = str(exc)
    return out


def fuse_abort(mnt_dev: int | None) -> bool:
    """Abort a FUSE connection through fusectl, if it is mounted."""
    if mnt_dev is None or os.major(mnt_dev) != 0:
        return False
    p = Path(f"/sys/fs/fuse/connections/{os.minor(mnt_dev)}/abort")
    try:
        p.write_text("1")
        return True
    except OSError:
        return False


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


# ---------------------------------------------------------------------------
# targets


class Target:
    name = "?"
    cold = True  # whether remount() really drops the client cache

    def __init__(self, work: Path, args: argparse.Namespace):
        self.work = work
        self.args = args
        self.notes: list[str] = []
        self.info: dict = {}
        self.memory: list[dict] = []
        self.bench_dir: Path | None = None
        self.mnt: Path | None = None
        self.mnt_dev: int | None = None
        self.phases_since_mount: list[str] = ["setup"]
        self.torn_down = False
        self.problems: list[str] = []  # teardown problems: make the run fail

    def setup(self) -> Path:
        """Make the target ready and return the directory to benchmark in (subclasses)."""
        raise TypeError(f"{type(self).__name__} defines no setup()")

    def remount(self) -> None:
        pass

    def mount_second(self) -> Path:
        """A second mount of the same filesystem (pingpong); returns the bench dir there."""
        raise TypeError(f"{type(self).__name__} defines no mount_second()")

    def unmount_second(self) -> None:
        """Undo mount_second(), whatever state it got to (idempotent)."""

    def abort(self) -> None:
        """Called from the watchdog thread: make blocked syscalls on the target fail."""

    def collect_memory(self, final: bool) -> None:
        pass

    def teardown(self) -> None:
        pass

    def describe_kept(self) -> str:
        return ""

    def _record_dev(self) -> None:
        with contextlib.suppress(OSError):
            self.mnt_dev = os.stat(self.mnt).st_dev


def tmpfs_dir(work: Path, prefix: str, notes: list[str], holder: list[Path]) -> Path:
    """A fresh directory on a tmpfs: /dev/shm when it is one, else a tmpfs we mount."""
    if fstype_of("/dev/shm") == "tmpfs" and os.access("/dev/shm", os.W_OK):
        return Path(tempfile.mkdtemp(prefix=f"mlustre-bench-{prefix}-", dir="/dev/shm"))
    mnt = work / f"tmpfs-{prefix}"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", mnt], timeout=T_SHORT)
    holder.append(mnt)
    notes.append(f"tmpfs mounted at {mnt} (/dev/shm is not a writable tmpfs)")
    return mnt


def release_tmpfs(path: Path | None, holder: list[Path]) -> None:
    if path is None:
        return
    if path in holder:
        with contextlib.suppress(BenchError):
            run(["umount", path], timeout=T_SHORT, check=False)
        holder.remove(path)
    shutil.rmtree(path, ignore_errors=True)


class TmpfsTarget(Target):
    name = "tmpfs"
    cold = False

    def __init__(self, work, args):
        super().__init__(work, args)
        self.dir: Path | None = None
        self.own_mounts: list[Path] = []

    def setup(self) -> Path:
        self.dir = tmpfs_dir(self.work, "tmpfs", self.notes, self.own_mounts)
        self.info["dir"] = str(self.dir)
        self.notes.append("tmpfs page cache cannot be dropped: read and stat are warm")
        self.bench_dir = self.dir
        return self.dir

    def mount_second(self) -> Path:
        return self.dir  # both "mounts" are the same directory

    def teardown(self) -> None:
        release_tmpfs(self.dir, self.own_mounts)

    def describe_kept(self) -> str:
        return f"tmpfs dir {self.dir}"


class PassthroughTarget(Target):
    name = "passthrough"

    def __init__(self, work, args):
        super().__init__(work, args)
        self.src: Path | None = None
        self.own_mounts: list[Path] = []
        self.proc: subprocess.Popen | None = None
        self.logfile = work / "logs" / "passthrough.log"
        self.instance = 0
        self.proc2: subprocess.Popen | None = None  # second mount (pingpong)
        self.mnt2: Path | None = None
        self.mnt2_dev: int | None = None

    def _start(self) -> None:
        self.instance += 1
        self.proc = start_bg([sys.executable, PASSTHROUGH, self.src, self.mnt], self.logfile)
        proc = self.proc
        wait_until(lambda: is_mounted(self.mnt), T_MOUNT, "passthrough mount", proc,
                   self.logfile)
        if proc.poll() is not None:
            raise BenchError(f"passthrough exited {proc.returncode}\n{tail(self.logfile)}")
        os.stat(self.mnt)  # first request answered
        self._record_dev()
        self.info.setdefault("pids", []).append(proc.pid)

    def _stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, "passthrough", grace=15, proc=self.proc)
            if self.proc.returncode not in (0, None):
                self.problems.append(f"passthrough pid {self.proc.pid} exited "
                                     f"{self.proc.returncode}")
        if self.mnt is not None:
            fuse_unmount(self.mnt)

    def setup(self) -> Path:
        self.src = tmpfs_dir(self.work, "passthrough-src", self.notes, self.own_mounts)
        self.mnt = self.work / "passthrough-mnt"
        self.mnt.mkdir()
        self.info.update(src=str(self.src), mnt=str(self.mnt))
        self._start()
        self.bench_dir = self.mnt
        return self.mnt

    def _record_instance_memory(self, final: bool) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        m = vm_status(self.proc.pid)
        m.update(process="passthrough", kind="client",
                 served="+".join(self.phases_since_mount), final=final)
        self.memory.append(m)

    def remount(self) -> None:
        self._record_instance_memory(final=False)
        self._stop()
        if self.proc is not None and self.proc.returncode not in (0, None):
            raise BenchError(f"passthrough exited {self.proc.returncode} on SIGTERM\n"
                             f"{tail(self.logfile)}")
        if is_mounted(self.mnt):
            raise BenchError(f"{self.mnt} still mounted after stopping the passthrough")
        self._start()

    def mount_second(self) -> Path:
        self.mnt2 = self.work / "passthrough-mnt2"
        self.mnt2.mkdir(exist_ok=True)
        logfile = self.work / "logs" / "passthrough-2.log"
        self.proc2 = start_bg([sys.executable, PASSTHROUGH, self.src, self.mnt2], logfile)
        proc = self.proc2
        wait_until(lambda: is_mounted(self.mnt2), T_MOUNT, "second passthrough mount", proc,
                   logfile)
        if proc.poll() is not None:
            raise BenchError(f"second passthrough exited {proc.returncode}\n{tail(logfile)}")
        self.mnt2_dev = os.stat(self.mnt2).st_dev
        self.info.setdefault("pids", []).append(proc.pid)
        return self.mnt2

    def unmount_second(self) -> None:
        if self.proc2 is not None:
            if self.proc2.poll() is None:
                m = vm_status(self.proc2.pid)
                m.update(process="passthrough 2", kind="client", served="pingpong",
                         final=False)
                self.memory.append(m)
            stop_pid(self.proc2.pid, "passthrough", grace=15, proc=self.proc2)
            if self.proc2.returncode not in (0, None):
                self.problems.append(f"second passthrough pid {self.proc2.pid} exited "
                                     f"{self.proc2.returncode}")
            self.proc2 = None
        if self.mnt2 is not None:
            fuse_unmount(self.mnt2)
            if is_mounted(self.mnt2):
                self.problems.append(f"{self.mnt2} still mounted after the passthrough stopped")
            else:
                with contextlib.suppress(OSError):
                    self.mnt2.rmdir()

    def abort(self) -> None:
        fuse_abort(self.mnt_dev)
        fuse_abort(self.mnt2_dev)
        for proc in (self.proc, self.proc2):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)

    def collect_memory(self, final: bool) -> None:
        self._record_instance_memory(final)

    def teardown(self) -> None:
        self.unmount_second()
        self._stop()
        release_tmpfs(self.src, self.own_mounts)

    def describe_kept(self) -> str:
        pid = self.proc.pid if self.proc else "?"
        return (f"passthrough pid {pid} mounted at {self.mnt} (source {self.src}); "
                f"stop with: kill {pid}")


def find_mlustre() -> str:
    env = os.environ.get("MLUSTRE")
    if env:
        return env
    cand = ROOT / ".venv" / "bin" / "mlustre"
    if cand.exists():
        return str(cand)
    found = shutil.which("mlustre")
    if found:
        return found
    raise BenchError("mlustre CLI not found (.venv/bin/mlustre, PATH, or $MLUSTRE)")


class MlustreTarget(Target):
    name = "mlustre"

    def __init__(self, work, args):
        super().__init__(work, args)
        self.cli = ""
        self.spec: str | None = None
        self.data = Path(args.data_base or work) / "mlustre-data"
        self.up_proc: subprocess.Popen | None = None
        self.mount_procs: list[subprocess.Popen] = []
        self.known_pids: dict[int, str] = {}  # pid -> name, for the teardown fallback
        self.client_pid: int | None = None
        self.logdir = work / "logs"
        self.status: dict | None = None
        self.mnt2: Path | None = None  # second client (pingpong)
        self.mnt2_dev: int | None = None
        self.client2_pid: int | None = None

    def mlustre(self, *args, timeout: float, check: bool = True):
        return run([self.cli, *args], timeout=timeout, check=check)

    def get_status(self) -> dict:
        cp = self.mlustre("status", self.mnt, "--json", timeout=T_STATUS)
        try:
            st = json.loads(cp.stdout)
        except json.JSONDecodeError as exc:
            raise BenchError(f"mlustre status --json: not JSON ({exc}): {cp.stdout[:500]!r}"
                             ) from exc
        self.status = st
        for s in st.get("servers", []):
            if isinstance(s.get("pid"), int):
                self.known_pids[s["pid"]] = s.get("name", "server")
        self.client_pid = None
        for c in st.get("clients", []):
            if isinstance(c.get("pid"), int):
                self.known_pids[c["pid"]] = "client"
                where = os.path.realpath(str(c.get("mountpoint", "")))
                if where == os.path.realpath(self.mnt):
                    self.client_pid = c["pid"]
                elif self.mnt2 is not None and where == os.path.realpath(self.mnt2):
                    self.client2_pid = c["pid"]
        return st

    def setup(self) -> Path:
        self.cli = find_mlustre()
        self.mnt = self.work / "mlustre-mnt"
        self.mnt.mkdir()
        logfile = self.logdir / "mlustre-up.log"
        self.up_proc = start_bg(
            [self.cli, "up", self.mnt, "--osts", "2", "--data", self.data,
             *(["--no-auth"] if self.args.no_auth else [])], logfile)
        proc = self.up_proc

        def spec_printed() -> bool:
            for line in tail(logfile, 1000).splitlines():
                if line.strip().startswith("spec:"):
                    self.spec = line.split("spec:", 1)[1].strip()
                    return True
            return False

        wait_until(lambda: spec_printed() and is_mounted(self.mnt), T_UP, "mlustre up",
                   proc, logfile)
        # `up` may return or stay in the foreground: both are fine once the mount is there.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if proc.returncode not in (0, None):
            raise BenchError(f"mlustre up exited {proc.returncode}\n{tail(logfile)}")
        self.info["up_returned"] = proc.returncode is not None
        self.info.update(spec=self.spec, mnt=str(self.mnt), data=str(self.data),
                         auth=not self.args.no_auth,
                         data_fstype=fstype_of(self.data.parent))
        log(f"mlustre spec: {self.spec}")
        self._client_pid_from_log(logfile)
        st = self.get_status()
        self.info["status_after_up"] = st
        if len([s for s in st.get("servers", []) if s.get("kind") in ("ost", "OST")]) < 2:
            self.notes.append(f"status lists fewer than 2 OSTs: {st.get('servers')}")
        if self.client_pid is None:
            self.notes.append("status --json lists no client for the mount point")
        self._record_dev()
        self.bench_dir = self.mnt / f"bench-{os.getpid()}"
        os.mkdir(self.bench_dir)
        cp = run(["setfattr", "-n", "lustre.lov", "-v", "stripe_count=2", self.bench_dir],
                 timeout=T_SHORT, check=False)
        if cp.returncode != 0:
            msg = (f"WARNING: striping not set (setfattr -n lustre.lov -v stripe_count=2 "
                   f"exited {cp.returncode}: {cp.stderr.strip()})")
            log(msg)
            self.notes.append(msg)
            self.info["striped"] = False
        else:
            self.info["striped"] = True
            self.info["dir_layout"] = self.layout(self.bench_dir)
        return self.bench_dir

    def layout(self, path: Path) -> str | None:
        try:
            cp = run(["getfattr", "--absolute-names", "--only-values", "-n", "lustre.lov",
                      path], timeout=T_SHORT, check=False)
        except BenchError:
            return None
        return cp.stdout.strip() if cp.returncode == 0 else f"(getfattr: {cp.stderr.strip()})"

    def _client_pid_from_log(self, logfile: Path) -> None:
        """`up` prints "client pid=N mounted on", `mount` prints "(client pid N)"."""
        m = re.search(r"client\s+pid[= ](\d+)", tail(logfile, 200))
        if m:
            self.client_pid = int(m.group(1))
            self.known_pids[self.client_pid] = "client"

    def _record_client_memory(self, final: bool) -> None:
        with contextlib.suppress(BenchError):
            pid = self.client_pid
            self.get_status()
            if self.client_pid is None:
                self.client_pid = pid
        if self.client_pid is not None:
            m = vm_status(self.client_pid)
            m.update(process="mlustre client", kind="client",
                     served="+".join(self.phases_since_mount), final=final)
            self.memory.append(m)

    def remount(self) -> None:
        self._record_client_memory(final=False)
        old_client = self.client_pid
        self.mlustre("umount", self.mnt, timeout=T_UMOUNT)
        wait_until(lambda: not is_mounted(self.mnt), T_UMOUNT, "mlustre umount")
        if old_client is not None:
            with contextlib.suppress(BenchError):
                wait_until(lambda: not pid_alive(old_client), 15, "old client exit")
            if pid_alive(old_client):
                self.notes.append(f"client pid {old_client} still alive 15 s after umount")
        logfile = self.logdir / f"mlustre-mount-{len(self.mount_procs) + 1}.log"
        proc = start_bg([self.cli, "mount", self.spec, self.mnt], logfile)
        self.mount_procs.append(proc)
        wait_until(lambda: is_mounted(self.mnt), T_MOUNT, "mlustre mount", proc, logfile)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        if proc.returncode not in (0, None):
            raise BenchError(f"mlustre mount exited {proc.returncode}\n{tail(logfile)}")
        os.stat(self.mnt)
        self._record_dev()
        self.client_pid = None
        try:
            self.get_status()
        except BenchError as exc:
            self.notes.append(f"status after remount failed: {str(exc)[:300]}")
        if self.client_pid is None:
            self._client_pid_from_log(logfile)

    def mount_second(self) -> Path:
        """`mlustre mount SPEC MNT2`: a second client of the cluster, its own process."""
        spec = (self.status or {}).get("spec") or self.spec
        self.mnt2 = self.work / "mlustre-mnt2"
        self.mnt2.mkdir(exist_ok=True)
        self.client2_pid = None
        logfile = self.logdir / "mlustre-mount-second.log"
        proc = start_bg([self.cli, "mount", spec, self.mnt2], logfile)
        self.mount_procs.append(proc)
        wait_until(lambda: is_mounted(self.mnt2), T_MOUNT, "mlustre mount (second client)",
                   proc, logfile)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        m = re.search(r"client\s+pid[= ](\d+)", tail(logfile, 200))
        if m:
            self.client2_pid = int(m.group(1))
            self.known_pids[self.client2_pid] = "client"
        if proc.returncode not in (0, None):
            raise BenchError(f"mlustre mount (second client) exited {proc.returncode}\n"
                             f"{tail(logfile)}")
        self.mnt2_dev = os.stat(self.mnt2).st_dev
        if self.client2_pid is None:
            with contextlib.suppress(BenchError):
                self.get_status()
        if self.client2_pid is None:
            self.notes.append("pid of the second client unknown (memory not recorded)")
        self.info["second_client"] = {"mnt": str(self.mnt2), "pid": self.client2_pid,
                                      "spec": spec}
        return self.mnt2 / self.bench_dir.name

    def unmount_second(self) -> None:
        """`mlustre umount MNT2`, falling back to fusermount3 -u, -uz and killing the pid."""
        if self.mnt2 is None:
            return
        pid = self.client2_pid
        if pid is not None and pid_alive(pid):
            m = vm_status(pid)
            m.update(process="mlustre client 2", kind="client", served="pingpong",
                     final=False)
            self.memory.append(m)
        if is_mounted(self.mnt2):
            try:
                self.mlustre("umount", self.mnt2, timeout=T_UMOUNT)
            except BenchError as exc:
                log(f"mlustre umount {self.mnt2} failed: {exc}")
                self.problems.append(f"mlustre umount of the second client failed: "
                                     f"{str(exc)[:300]}")
            if is_mounted(self.mnt2):
                fuse_unmount(self.mnt2)
        if pid is not None:
            with contextlib.suppress(BenchError):
                wait_until(lambda: not pid_alive(pid), 15, "second client exit")
            if pid_alive(pid) and "mlustre" in cmdline(pid):
                self.problems.append(f"second client pid {pid} still alive 15 s after umount")
                stop_pid(pid, "mlustre", grace=15)
        if is_mounted(self.mnt2):
            self.problems.append(f"{self.mnt2} still mounted")
        else:
            with contextlib.suppress(OSError):
                self.mnt2.rmdir()
            self.mnt2 = None
            self.mnt2_dev = None

    def abort(self) -> None:
        fuse_abort(self.mnt_dev)
        fuse_abort(self.mnt2_dev)
        for pid in (self.client_pid, self.client2_pid):
            if pid is not None and pid_alive(pid):
                log(f"watchdog: SIGKILL mlustre client {pid}")
                os.kill(pid, signal.SIGKILL)

    def collect_memory(self, final: bool) -> None:
        self._record_client_memory(final)
        if self.status is None:
            return
        for s in self.status.get("servers", []):
            pid = s.get("pid")
            if not isinstance(pid, int):
                continue
            m = vm_status(pid)
            m.update(process=f"{s.get('kind', '?')} {s.get('name', '?')}",
                     kind="server", served="whole run", final=final, state=s.get("state"))
            self.memory.append(m)

    def teardown(self) -> None:
        self.unmount_second()
        if self.cli and self.mnt is not None:
            try:
                self.mlustre("down", self.mnt, timeout=T_DOWN)
            except BenchError as exc:
                log(f"mlustre down failed: {exc}")
                self.problems.append(f"mlustre down failed: {str(exc)[:500]}")
        # Fallbacks, in a safe order: the client first (unmounted, so that it writes back
        # and exits), then the servers in reverse start order (OSTs, MDT, MGS). Only the
        # pids we were told about, with their command line checked.
        if self.mnt is not None and is_mounted(self.mnt):
            self.problems.append(f"{self.mnt} still mounted after mlustre down")
            try:
                self.mlustre("umount", self.mnt, timeout=T_UMOUNT)
            except BenchError as exc:
                log(f"mlustre umount failed: {exc}")
            fuse_unmount(self.mnt)
        clients = [p for p, n in self.known_pids.items() if n == "client"]
        servers = [p for p, n in self.known_pids.items() if n != "client"]
        for pid in clients + servers[::-1]:
            if pid_alive(pid) and "mlustre" in cmdline(pid):
                self.problems.append(f"{self.known_pids[pid]} pid {pid} still alive after "
                                     "mlustre down")
                stop_pid(pid, "mlustre", grace=30 if pid in clients else 10)
        for proc in [self.up_proc, *self.mount_procs]:
            if proc is not None and proc.poll() is None:
                stop_pid(proc.pid, "mlustre", proc=proc)
        if self.mnt is not None and is_mounted(self.mnt):
            fuse_unmount(self.mnt)

    def describe_kept(self) -> str:
        return f"mlustre cluster {self.spec} mounted at {self.mnt}; stop with: " \
               f"{self.cli} down {self.mnt}"


# ---------------------------------------------------------------------------
# phases


def drop_caches() -> None:
    """Drop the kernel page/dentry/inode caches of the whole machine (--drop-caches)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise BenchError(f"cannot drop caches: {exc}") from exc


def phase_write(d: Path, data: bytes) -> dict:
    path = d / "seqfile"
    n = len(data)
    mv = memoryview(data)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        off = 0
        while off < n:
            w = os.write(fd, mv[off:off + BLOCK])
            if w <= 0:
                raise BenchError(f"write returned {w} at offset {off}")
            off += w
        os.fsync(fd)
    finally:
        os.close(fd)
    secs = time.perf_counter() - t0
    size = os.stat(path).st_size
    if size != n:
        raise BenchError(f"after write: st_size {size} != {n}")
    return {"bytes": n, "seconds": secs, "MB_s": n / secs / 1e6}


def phase_read(d: Path, buf: bytearray, data: bytes, expect_sha: str) -> dict:
    path = d / "seqfile"
    n = len(buf)
    mv = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        off = 0
        while off < n:
            r = os.readv(fd, [mv[off:off + BLOCK]])
            if r == 0:
                break
            off += r
    finally:
        os.close(fd)
    secs = time.perf_counter() - t0
    if off != n:
        raise BenchError(f"short read: {off} of {n} bytes")
    size = os.stat(path).st_size
    if size != n:
        raise BenchError(f"st_size {size} != {n} written")
    sha = hashlib.sha256(buf).hexdigest()
    if sha != expect_sha:
        bad = [i // BLOCK for i in range(0, n, BLOCK) if mv[i:i + BLOCK] != data[i:i + BLOCK]]
        raise BenchError(f"data read back differs: sha256 {sha} != written {expect_sha}; "
                         f"{len(bad)} bad 1 MiB blocks, first ones {bad[:8]}")
    return {"bytes": n, "seconds": secs, "MB_s": n / secs / 1e6, "sha256_ok": True}


def file_names(d: Path, count: int) -> list[str]:
    return [str(d / "files" / f"f{i:06d}") for i in range(count)]


def phase_create(d: Path, count: int) -> dict:
    os.mkdir(d / "files")
    names = file_names(d, count)
    flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, flags, 0o644))
    secs = time.perf_counter() - t0
    return {"ops": count, "seconds": secs, "ops_s": count / secs}


def phase_stat(d: Path, count: int) -> dict:
    names = file_names(d, count)
    t0 = time.perf_counter()
    sts = [os.stat(p) for p in names]
    secs = time.perf_counter() - t0
    bad = [(p, st.st_mode, st.st_size) for p, st in zip(names, sts, strict=True)
           if not stat.S_ISREG(st.st_mode) or st.st_size != 0]
    if bad:
        raise BenchError(f"{len(bad)} files with wrong type/size, first: {bad[0]}")
    inos = {st.st_ino for st in sts}
    if len(inos) != count:
        raise BenchError(f"only {len(inos)} distinct st_ino for {count} files")
    return {"ops": count, "seconds": secs, "ops_s": count / secs}


def phase_unlink(d: Path, count: int) -> dict:
    names = file_names(d, count)
    t0 = time.perf_counter()
    for p in names:
        os.unlink(p)
    secs = time.perf_counter() - t0
    left = os.listdir(d / "files")
    if left:
        raise BenchError(f"{len(left)} entries left after unlink, e.g. {left[:3]}")
    os.rmdir(d / "files")
    return {"ops": count, "seconds": secs, "ops_s": count / secs}


def read_into(path: Path, mv: memoryview) -> int:
    """Read *path* from a fresh open() into *mv* in 1 MiB reads; returns the bytes read."""
    n = len(mv)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        off = 0
        while off < n:
            r = os.readv(fd, [mv[off:off + BLOCK]])
            if r == 0:
                break
            off += r
    finally:
        os.close(fd)
    return off


def phase_reread(d: Path, buf: bytearray, data: bytes, mb: int, passes: int) -> dict:
    """Write *mb* MiB, close, read once (untimed), then time *passes* reads (new open each)."""
    path = d / "rereadfile"
    n = mb * MIB
    src = memoryview(data)[:n]
    mv = memoryview(buf)[:n]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        off = 0
        while off < n:
            off += os.write(fd, src[off:off + BLOCK])
    finally:
        os.close(fd)

    def check(what: str, got: int) -> None:
        if got != n:
            raise BenchError(f"{what}: short read, {got} of {n} bytes")
        # bytes == bytes is a memcmp; memoryview == memoryview compares item by item.
        bad = [i // BLOCK for i in range(0, n, BLOCK)
               if bytes(mv[i:i + BLOCK]) != bytes(src[i:i + BLOCK])]
        if bad:
            raise BenchError(f"{what}: data read back differs from the data written in "
                             f"{len(bad)} 1 MiB blocks, first ones {bad[:8]}")

    t0 = time.perf_counter()
    got = read_into(path, mv)
    warm_secs = time.perf_counter() - t0
    check("warming read", got)
    secs = []
    for k in range(passes):
        mv[::4096] = bytes(len(range(0, n, 4096)))  # a stale buffer cannot pass the check
        t0 = time.perf_counter()
        got = read_into(path, mv)
        secs.append(time.perf_counter() - t0)
        check(f"pass {k + 1}", got)
    os.unlink(path)
    med = statistics.median(secs)
    return {"bytes": n, "seconds": med, "MB_s": n / med / 1e6, "passes": passes,
            "pass_MB_s": [round(n / x / 1e6, 1) for x in secs],
            "best_MB_s": n / min(secs) / 1e6, "warming_read_MB_s": n / warm_secs / 1e6,
            "data_ok": True}


def _pp_now() -> int:
    # CLOCK_MONOTONIC is one clock for every process of the machine.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _pp_record(seq: int) -> bytes:
    return (b"%020d pingpong " % seq).ljust(PP_RECORD - 1, b"#") + b"\n"


def _pp_write(path: str, seq: int) -> None:
    rec = _pp_record(seq)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        w = os.pwrite(fd, rec, 0)
    finally:
        os.close(fd)
    if w != len(rec):
        raise OSError(f"short write: {w} of {len(rec)} bytes")


def _pp_read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, PP_RECORD, 0)
    finally:
        os.close(fd)


def pingpong_worker(role: str, path: str, peer, out, last_seq: int, limit: float) -> None:
    """One side of the ping-pong (runs in its own process).

    A writes the odd records, B the even ones. A message ("turn", seq, t_write_start) on
    the pipe *peer* hands the turn over; the receiver reads the file at once, counting every
    read that does not show record *seq* (and retrying at once) until it does, then writes
    seq + 1 and hands the turn back. The reader of *last_seq* sends ("done",). A dict of
    results goes to *out* (with "error" set if this side gave up or failed).
    """
    deadline = _pp_now() + int(limit * 1e9)
    handoffs: list[tuple[int, int, int, int, int]] = []  # seq, latency, read ns, stale, bad
    writes: list[int] = []
    first_bad = None  # the first hand-off that needed more than one read
    seq = 0
    stale = bad = 0  # of the hand-off in progress

    def handoff(nxt: int) -> None:
        w0 = _pp_now()
        _pp_write(path, nxt)
        writes.append(_pp_now() - w0)
        peer.send(("turn", nxt, w0))

    try:
        if role == "A":
            handoff(1)
        while True:
            remaining = (deadline - _pp_now()) / 1e9
            if remaining <= 0 or not peer.poll(remaining):
                raise TimeoutError(f"{role}: gave up after {limit:.0f} s waiting for the turn "
                                   f"after record {seq} ({len(handoffs)} hand-offs received)")
            msg = peer.recv()
            if msg[0] == "done":
                break
            if msg[0] == "error":
                raise RuntimeError(f"{role}: the other side failed: {msg[1]}")
            _, seq, t_write = msg
            want, old = _pp_record(seq), _pp_record(seq - 1)
            stale = bad = 0
            wrong = b""
            while True:
                r0 = _pp_now()
                got = _pp_read(path)
                r1 = _pp_now()
                if got == want:
                    break
                if got == old:
                    stale += 1
                else:
                    bad += 1
                    wrong = wrong or got
                if r1 > deadline:
                    raise TimeoutError(
                        f"{role}: gave up after {limit:.0f} s: record {seq} still not visible "
                        f"after {stale + bad} reads ({stale} stale, {bad} neither old nor new; "
                        f"last read {got[:40]!r})")
            handoffs.append((seq, r1 - t_write, r1 - r0, stale, bad))
            if (stale or bad) and first_bad is None:
                first_bad = {"record": seq, "reader": role, "stale_reads": stale,
                             "bad_reads": bad, "us_until_fresh": round((r1 - t_write) / 1e3),
                             "bad_content": wrong[:PP_RECORD].decode(errors="replace")
                             if bad else None}
            stale = bad = 0  # counted in handoffs now
            if seq >= last_seq:
                peer.send(("done",))
                break
            handoff(seq + 1)
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}"
        if (stale or bad) and first_bad is None:
            first_bad = {"record": seq, "reader": role, "stale_reads": stale, "bad_reads": bad,
                         "us_until_fresh": None}  # never fresh
        with contextlib.suppress(Exception):
            peer.send(("error", text))
        out.send({"error": text, "handoffs": handoffs, "writes": writes, "first": first_bad,
                  "stale": stale, "bad": bad})
        return
    out.send({"error": None, "handoffs": handoffs, "writes": writes, "first": first_bad,
              "stale": 0, "bad": 0})


def _pct(sorted_vals: list[float], q: float) -> float:
    return sorted_vals[max(0, math.ceil(q * len(sorted_vals)) - 1)]


def phase_pingpong(t: Target, d: Path, rounds: int, limit: float) -> dict:
    """Hand-off latency between two mounts of *t* (see the module docstring)."""
    path_a = d / "pingpong"
    try:
        d2 = t.mount_second()
        path_b = d2 / "pingpong"
        fd = os.open(path_a, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, _pp_record(0))
        finally:
            os.close(fd)
        if _pp_read(str(path_b)) != _pp_record(0):
            raise BenchError(f"{path_b}: the second mount does not show the initial record")
        total = 2 * (rounds + PP_WARMUP)
        ctx = multiprocessing.get_context("spawn")
        ab_a, ab_b = ctx.Pipe()  # the "network": A <-> B turn messages
        out_a_r, out_a_w = ctx.Pipe(duplex=False)
        out_b_r, out_b_w = ctx.Pipe(duplex=False)
        procs = {
            "A": ctx.Process(target=pingpong_worker, name="pingpong-A",
                             args=("A", str(path_a), ab_a, out_a_w, total, limit)),
            "B": ctx.Process(target=pingpong_worker, name="pingpong-B",
                             args=("B", str(path_b), ab_b, out_b_w, total, limit)),
        }
        for p in procs.values():
            p.start()
        for c in (ab_a, ab_b, out_a_w, out_b_w):
            c.close()  # the workers have their copies: a dead worker now reads as EOF
        outs = {}
        try:
            deadline = time.monotonic() + limit + 30  # spawn time, then the workers' limit
            for role, conn in (("A", out_a_r), ("B", out_b_r)):
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    raise BenchError(f"pingpong: process {role} reported nothing within "
                                     f"{limit + 30:.0f} s (blocked in the filesystem?)")
                outs[role] = conn.recv()
        except EOFError as exc:
            raise BenchError("pingpong: a worker process died without a report") from exc
        finally:
            for p in procs.values():
                p.join(timeout=5)
                if p.is_alive():  # only our own worker, by its pid
                    log(f"kill -KILL {p.pid} (pingpong worker {p.name})")
                    p.kill()
                    p.join(timeout=10)
                if p.is_alive():
                    t.notes.append(f"pingpong worker pid {p.pid} did not exit after SIGKILL")
        hand = sorted((h for o in outs.values() for h in o["handoffs"]), key=lambda h: h[0])
        writes = [w for o in outs.values() for w in o["writes"]]
        firsts = [o["first"] for o in outs.values()]
        errs = [f"{r}: {o['error']}" for r, o in outs.items() if o["error"]]
        if errs:
            partial = pingpong_stats(hand, writes, firsts)
            partial["stale_reads"] += sum(o["stale"] for o in outs.values())
            partial["bad_reads"] += sum(o["bad"] for o in outs.values())
            partial["stale_handoffs"] += sum(1 for o in outs.values() if o["stale"] or o["bad"])
            msg = (f"pingpong failed after {len(hand)} of {total} hand-offs "
                   f"({partial['stale_reads']} stale reads in all")
            if partial.get("median_us") is not None:
                msg += (f"; the {partial['handoffs']} timed hand-offs done: median "
                        f"{partial['median_us']:.0f} us, p99 {partial['p99_us']:.0f} us")
            raise BenchError(msg + "): " + "; ".join(errs), partial)
        if [h[0] for h in hand] != list(range(1, total + 1)):
            raise BenchError(f"pingpong: hand-offs {[h[0] for h in hand][:10]}... do not "
                             f"cover 1..{total}")
        res = pingpong_stats(hand, writes, firsts)
        res.update(round_trips=rounds, warmup_round_trips=PP_WARMUP)
        return res
    finally:
        try:
            os.unlink(path_a)
        except FileNotFoundError:
            pass
        except OSError as exc:
            t.notes.append(f"pingpong: unlink of {path_a} failed: {exc}")
        t.unmount_second()


def pingpong_stats(hand: list[tuple], writes: list[int], firsts: list[dict | None]) -> dict:
    """Figures of the hand-offs *hand* (seq, latency ns, read ns, stale, bad), warm-up excluded."""
    timed = [h for h in hand if h[0] > 2 * PP_WARMUP]
    lat = sorted(h[1] / 1e3 for h in timed)
    reads = [h[2] / 1e3 for h in timed]
    out = {
        "handoffs": len(timed),
        "median_us": statistics.median(lat) if lat else None,
        "p99_us": _pct(lat, 0.99) if lat else None,
        "max_us": lat[-1] if lat else None, "min_us": lat[0] if lat else None,
        "read_median_us": statistics.median(reads) if reads else None,
        "write_median_us": statistics.median(writes) / 1e3 if writes else None,
        "stale_reads": sum(h[3] for h in hand),
        "bad_reads": sum(h[4] for h in hand),
        "stale_handoffs": sum(1 for h in hand if h[3] or h[4]),
        "first_stale_handoff": min((f for f in firsts if f is not None),
                                   key=lambda f: f["record"], default=None),
        "seconds": sum(h[1] for h in timed) / 1e9,
    }
    return out


def bench_target(t: Target, data: bytes, sha: str, readbuf: bytearray,
                 args: argparse.Namespace, res: dict) -> dict:
    """Run every phase on *t*, filling *res* as it goes (kept if interrupted)."""
    res.update({"phases": {}, "errors": [], "notes": t.notes, "info": t.info,
                "memory": t.memory, "cold": t.cold})
    phases = res["phases"]
    failed: set[str] = set()
    dead = False

    def guarded(what: str, fn: Callable[[], dict | None]) -> dict | None:
        nonlocal dead
        wd = Watchdog(args.phase_timeout, f"{t.name} {what}", t.abort)
        try:
            with wd:
                return fn()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            msg = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            if wd.fired:
                msg = f"timed out after {args.phase_timeout:.0f} s ({msg})"
                dead = True
            raise BenchError(msg, getattr(exc, "partial", None)) from exc

    def phase(name: str, fn: Callable[[], dict], needs: tuple[str, ...] = (),
              remount_first: bool = False) -> None:
        nonlocal dead
        if name not in args.benches:
            return
        if dead or any(n in failed for n in needs):
            phases[name] = {"ok": False, "error": "skipped: "
                            + ("target aborted" if dead else f"needs {', '.join(needs)}")}
            failed.add(name)
            return
        if remount_first and t.cold:
            try:
                guarded("remount", t.remount)
                if args.drop_caches:
                    drop_caches()
                t.phases_since_mount = []
            except BenchError as exc:
                log(f"[{t.name}] remount before {name} FAILED: {exc}")
                res["errors"].append(f"remount before {name}: {exc}")
                phases[name] = {"ok": False, "error": f"remount failed: {exc}"}
                failed.add(name)
                dead = True
                return
        log(f"[{t.name}] {name} ...")
        try:
            r = guarded(name, fn)
        except KeyboardInterrupt:
            phases[name] = {"ok": False, "error": "interrupted"}
            raise
        except BenchError as exc:
            log(f"[{t.name}] {name} FAILED: {exc}")
            res["errors"].append(f"{name}: {exc}")
            phases[name] = {"ok": False, "error": str(exc)}
            if exc.partial:
                phases[name]["partial"] = exc.partial
            failed.add(name)
            return
        finally:
            t.phases_since_mount.append(name)
        r["ok"] = True
        r["warm"] = remount_first and not t.cold
        phases[name] = r
        if "MB_s" in r:
            log(f"[{t.name}] {name}: {r['bytes'] / MIB:.0f} MiB in {r['seconds']:.3f} s"
                f" = {r['MB_s']:.1f} MB/s")
        elif "median_us" in r:
            log(f"[{t.name}] {name}: {r['handoffs']} hand-offs, median {r['median_us']:.0f} us,"
                f" p99 {r['p99_us']:.0f} us, {r['stale_reads']} stale reads")
            if r["stale_reads"] or r["bad_reads"]:
                t.notes.append(f"pingpong: {r['stale_reads']} STALE reads and {r['bad_reads']}"
                               f" reads of neither record, in {r['stale_handoffs']} hand-offs"
                               f" (first: {r['first_stale_handoff']})")
        else:
            log(f"[{t.name}] {name}: {r['ops']} ops in {r['seconds']:.3f} s"
                f" = {r['ops_s']:.0f} ops/s")

    try:
        d = guarded("setup", t.setup)
    except BenchError as exc:
        log(f"[{t.name}] setup FAILED: {exc}")
        res["errors"].append(f"setup: {exc}")
        for name in PHASES:
            if name in args.benches:
                phases[name] = {"ok": False, "error": "setup failed"}
        return res

    phase("write", lambda: phase_write(d, data))
    phase("read", lambda: phase_read(d, readbuf, data, sha), needs=("write",), remount_first=True)
    wrote = "write" in args.benches and "write" not in failed
    if t.name == "mlustre" and wrote and not dead:
        t.info["file_layout"] = t.layout(d / "seqfile")
    if not dead and wrote:
        try:
            guarded("remove seqfile", lambda: os.unlink(d / "seqfile"))
        except BenchError as exc:
            res["errors"].append(f"unlink of the sequential file: {exc}")
    phase("create", lambda: phase_create(d, args.files))
    phase("stat", lambda: phase_stat(d, args.files), needs=("create",), remount_first=True)
    phase("unlink", lambda: phase_unlink(d, args.files), needs=("create",))
    phase("reread", lambda: phase_reread(d, readbuf, data, args.reread_mb, args.reread_passes))
    phase("pingpong", lambda: phase_pingpong(t, d, args.pingpong_rounds,
                                             args.pingpong_timeout))
    if not dead:
        try:
            guarded("memory", lambda: t.collect_memory(final=True))
        except BenchError as exc:
            res["errors"].append(f"memory collection: {exc}")
        if t.name == "mlustre":
            try:
                guarded("rmdir", lambda: os.rmdir(d))
            except BenchError as exc:
                try:
                    left = sorted(os.listdir(d))
                except OSError as e:
                    left = [f"(listdir: {e})"]
                t.notes.append(f"rmdir of the bench dir failed: {exc}; it lists {left[:10]}")
    return res


# ---------------------------------------------------------------------------
# report


def fmt_val(phase: str, r: dict | None, key: str | None = None) -> str:
    if not r:
        return "-"
    if not r.get("ok"):
        part = r.get("partial") or {}
        if key == "stale_reads" and part.get("stale_reads"):
            return f"FAIL, STALE {part['stale_reads']}"
        return "FAIL"
    if key is not None:
        v = r.get(key)
        if v is None:
            return "-"
        s = f"{v:,.0f}" if isinstance(v, int) or v >= 100 else f"{v:,.1f}"
        if key == "stale_reads" and (v or r.get("bad_reads")):
            s = f"STALE {v}" + (f" (+{r['bad_reads']} bad)" if r.get("bad_reads") else "")
        return s
    v = r["MB_s"] if "MB_s" in r else r["ops_s"]
    s = f"{v:,.1f}" if "MB_s" in r else f"{v:,.0f}"
    return s + (" (warm)" if r.get("warm") else "")


def value(r: dict | None, key: str | None = None) -> float | None:
    if not r or not r.get("ok"):
        return None
    if key is not None:
        return r.get(key)
    return r.get("MB_s", r.get("ops_s"))


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.3f}" if a / b < 0.1 else f"{a / b:.2f}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append(" | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                              for i, c in enumerate(r)))
        if k == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def report(results: dict, args) -> str:
    tg = results["targets"]
    rows = [["op", "mlustre", "tmpfs", "passthrough", "mlustre/tmpfs", "mlustre/passthrough"]]
    lines_of = [(ph, PHASE_LABEL[ph], None) for ph in PHASES if ph != "pingpong"]
    lines_of += [("pingpong", "ping-pong hand-off, median (us)", "median_us"),
                 ("pingpong", "ping-pong hand-off, p99 (us)", "p99_us"),
                 ("pingpong", "ping-pong stale reads", "stale_reads")]
    for ph, label, key in lines_of:
        if ph not in args.benches:
            continue
        vals = {n: tg.get(n, {}).get("phases", {}).get(ph) for n in TARGETS}
        ratios = ["-", "-"] if key == "stale_reads" else [
            ratio(value(vals["mlustre"], key), value(vals[ref], key))
            for ref in ("tmpfs", "passthrough")]
        rows.append([label, *(fmt_val(ph, vals[n], key) for n in TARGETS), *ratios])
    sizes = []
    if {"write", "read"} & set(args.benches):
        sizes.append(f"{args.size_mb} MiB sequential")
    if "create" in args.benches:
        sizes.append(f"{args.files} files")
    if "reread" in args.benches:
        sizes.append(f"re-read {args.reread_mb} MiB, median of {args.reread_passes} passes")
    if "pingpong" in args.benches:
        sizes.append(f"ping-pong {args.pingpong_rounds} round trips")
    lines = [
        "",
        f"mlustre benchmark: {', '.join(sizes)}; MB/s = 10^6 bytes/s",
        table(rows),
        "cold = the client was remounted before the phase; "
        + ("kernel caches dropped too (--drop-caches)" if args.drop_caches
           else "server-side page cache stays warm"),
    ]
    if "pingpong" in args.benches:
        lines.append("ping-pong: write+close on mount A, pipe message, open+read+close on "
                     "mount B; ratios of latencies (lower is better)")
    lines.append("")
    ml = tg.get("mlustre", {}).get("phases", {})
    bar = []
    for ph, unit in (("write", "MB/s write"), ("read", "MB/s cold read"),
                     ("create", "creates/s"), ("stat", "cold stats/s"),
                     ("unlink", "unlinks/s")):
        if ph not in args.benches:
            continue
        v = value(ml.get(ph))
        pct = f" (mlustre {v / BARS[ph] * 100:.0f}%)" if v is not None else ""
        bar.append(f"~{BARS[ph]:,.0f} {unit}{pct}")
    if bar:
        lines.append("bar (network filesystems, reference): " + ", ".join(bar[:2])
                     + ("," if bar[2:] else ""))
        if bar[2:]:
            lines.append("    " + ", ".join(bar[2:]))
    mem_rows = [["process", "pid", "served", "VmHWM MiB", "VmRSS MiB"]]
    for n in TARGETS:
        for m in tg.get(n, {}).get("memory", []):
            hwm = m.get("VmHWM_kib")
            rss = m.get("VmRSS_kib")
            mem_rows.append([
                f"{n}: {m.get('process')}", str(m.get("pid")), str(m.get("served", "")),
                f"{hwm / 1024:.1f}" if hwm is not None else m.get("error", "?"),
                f"{rss / 1024:.1f}" if rss is not None else "?",
            ])
    if len(mem_rows) > 1:
        lines += ["", "peak memory (VmHWM from /proc/PID/status; a client is restarted by each "
                  "remount, 'served' = phases it ran)", table(mem_rows)]
    notes = [(n, x) for n in TARGETS for x in tg.get(n, {}).get("notes", [])]
    if notes:
        lines += ["", "notes:"] + [f"  {n}: {x}" for n, x in notes]
    errs = [(n, e) for n in TARGETS for e in tg.get(n, {}).get("errors", [])]
    errs += [("bench", e) for e in results.get("errors", [])]
    if errs:
        lines += ["", "FAILURES:"] + [f"  {n}: {e.splitlines()[0][:300] if e else e}"
                                      for n, e in errs]
    return "\n".join(lines)


def warmup(work: Path, mb: int) -> float:
    """Write then delete *mb* MiB on a tmpfs, untimed.

    On a VM the first touch of guest memory that was never used costs several ms per
    MiB (measured here: ~270 MB/s instead of ~2,300 MB/s for a tmpfs write); whichever
    target ran first would pay it. Freed pages are reused by later page cache/tmpfs use.
    """
    holder: list[Path] = []
    d = tmpfs_dir(work, "warmup", [], holder)
    t0 = time.perf_counter()
    try:
        fd = os.open(d / "warmup", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            chunk = bytes(BLOCK)
            for _ in range(mb):
                os.write(fd, chunk)
        finally:
            os.close(fd)
    finally:
        release_tmpfs(d, holder)
    secs = time.perf_counter() - t0
    log(f"warm-up: {mb} MiB on tmpfs in {secs:.2f} s ({mb * MIB / secs / 1e6:.0f} MB/s)")
    return secs


def host_info() -> dict:
    info = {"hostname": socket.gethostname(), "kernel": platform.release(),
            "nproc": os.cpu_count(), "python": platform.python_version()}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    with contextlib.suppress(Exception):
        cp = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10)
        info["git_head"] = cp.stdout.strip()
        cp = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                            capture_output=True, text=True, timeout=10)
        info["git_dirty_files"] = len(cp.stdout.splitlines())
    return info


# ---------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--size-mb", type=int, default=512, help="sequential file size, MiB")
    ap.add_argument("--files", type=int, default=5000, help="number of files to create")
    ap.add_argument("--only", default=",".join(TARGETS),
                    help="comma-separated targets among " + ",".join(TARGETS)
                    + " and/or benchmarks among " + ",".join((*PHASES, *ALIASES))
                    + " (default: all of both)")
    ap.add_argument("--reread-mb", type=int, default=None,
                    help="re-read file size, MiB (default: --size-mb, at most 256)")
    ap.add_argument("--reread-passes", type=int, default=5,
                    help="timed re-read passes (the median is reported)")
    ap.add_argument("--pingpong-rounds", type=int, default=200,
                    help="ping-pong round trips (2 hand-offs each)")
    ap.add_argument("--pingpong-timeout", type=float, default=60,
                    help="give the ping-pong up after this many seconds")
    ap.add_argument("--json", dest="json_path", default=None,
                    help="result file (default bench-results/bench-<timestamp>.json)")
    ap.add_argument("--keep", action="store_true",
                    help="leave mounts, servers and temporary directories in place")
    ap.add_argument("--phase-timeout", type=float, default=900,
                    help="abort a target whose phase (or remount) takes longer, s")
    ap.add_argument("--warmup-mb", type=int, default=None,
                    help="untimed tmpfs write+delete at start so that the first target does "
                         "not pay the VM's first-touch cost of fresh memory (default 3 x "
                         "--size-mb; 0 disables)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="also drop the kernel caches of the machine (root) after each "
                         "remount, so that the servers' backing files are cold too; by default "
                         "only the client is cold")
    ap.add_argument("--no-auth", action="store_true",
                    help="start the mlustre cluster with `up --no-auth` (no shared key, no "
                         "per-message MACs), to measure what authentication costs")
    ap.add_argument("--data-base", default=None,
                    help="directory for mlustre server data (default: the temporary dir "
                         "under $TMPDIR or /tmp)")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in (*TARGETS, *PHASES, *ALIASES)]
    if bad or not only:
        ap.error(f"--only: unknown name(s) {bad}; choose targets among {', '.join(TARGETS)} "
                 f"and/or benchmarks among {', '.join((*PHASES, *ALIASES))}")
    benches = set()
    for x in only:
        benches.update(ALIASES.get(x, (x,)) if x not in TARGETS else ())
    for b in list(benches):
        benches.update(NEEDS.get(b, ()))
    args.only = [t for t in TARGETS if t in only] or list(TARGETS)
    args.benches = [b for b in PHASES if b in benches] or list(PHASES)
    if args.size_mb < 1 or args.files < 1:
        ap.error("--size-mb and --files must be positive")
    if args.reread_mb is None:
        args.reread_mb = min(args.size_mb, 256)
    if args.reread_mb < 1 or args.reread_passes < 1 or args.pingpong_rounds < 1 \
            or args.pingpong_timeout <= 0:
        ap.error("--reread-mb, --reread-passes, --pingpong-rounds and --pingpong-timeout "
                 "must be positive")
    if args.warmup_mb is None:
        args.warmup_mb = 3 * data_mb(args)
    return args


def data_mb(args) -> int:
    """MiB of random data the selected benchmarks write."""
    return max(args.size_mb if {"write", "read"} & set(args.benches) else 0,
               args.reread_mb if "reread" in args.benches else 0, 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = Path(args.json_path) if args.json_path else \
        ROOT / "bench-results" / f"bench-{stamp}.json"

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    work = Path(tempfile.mkdtemp(prefix="mlustre-bench-"))
    (work / "logs").mkdir()
    log(f"work dir {work}")
    results: dict = {
        "timestamp": stamp, "host": host_info(),
        "args": {"size_mb": args.size_mb, "files": args.files, "only": args.only,
                 "benches": args.benches, "reread_mb": args.reread_mb,
                 "reread_passes": args.reread_passes,
                 "pingpong_rounds": args.pingpong_rounds,
                 "pingpong_timeout": args.pingpong_timeout,
                 "pingpong_record_bytes": PP_RECORD, "pingpong_warmup_round_trips": PP_WARMUP,
                 "warmup_mb": args.warmup_mb, "data_base": args.data_base,
                 "drop_caches": args.drop_caches,
                 "keep": args.keep, "phase_timeout": args.phase_timeout,
                 "block_bytes": BLOCK},
        "units": {"write": "MB/s (1e6 B/s)", "read": "MB/s (1e6 B/s)", "create": "ops/s",
                  "stat": "ops/s", "unlink": "ops/s", "reread": "MB/s (1e6 B/s), median pass",
                  "pingpong": "us per hand-off (median_us, p99_us); stale_reads count"},
        "bars": BARS, "targets": {}, "errors": [], "work_dir": str(work),
    }
    classes = {"mlustre": MlustreTarget, "tmpfs": TmpfsTarget, "passthrough": PassthroughTarget}
    targets: list[Target] = []
    interrupted = False
    try:
        log(f"benchmarks: {', '.join(args.benches)}; targets: {', '.join(args.only)}")
        n = data_mb(args) * MIB
        log(f"generating {n // MIB} MiB of random data")
        data = os.urandom(n)
        sha = hashlib.sha256(data).hexdigest()
        readbuf = bytearray(n)
        readbuf[::4096] = bytes(len(range(0, n, 4096)))  # fault the pages in now
        if args.warmup_mb > 0:
            results["warmup_seconds"] = warmup(work, args.warmup_mb)
        for name in args.only:
            t = classes[name](work, args)
            targets.append(t)
            log(f"=== {name} ===")
            results["targets"][name] = {}
            bench_target(t, data, sha, readbuf, args, results["targets"][name])
            if not args.keep:
                log(f"[{name}] teardown")
                t.torn_down = True
                try:
                    t.teardown()
                except Exception as exc:
                    t.problems.append(f"teardown: {exc!r}")
                results["targets"][name]["errors"] += [f"teardown: {x}" for x in t.problems]
    except KeyboardInterrupt as exc:
        interrupted = True
        results["errors"].append(f"interrupted ({exc})")
        log("interrupted: tearing down")
    except Exception as exc:
        results["errors"].append(f"bench error: {exc!r}")
        log(f"bench error: {exc!r}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the teardown finish
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if args.keep:
            for t in targets:
                if t.describe_kept():
                    log("kept: " + t.describe_kept())
            log(f"kept: work dir {work}")
        else:
            for t in targets:
                if t.torn_down:
                    continue
                t.torn_down = True
                try:
                    t.teardown()
                except Exception as exc:
                    t.problems.append(f"{exc!r}")
                results["targets"].setdefault(t.name, {}).setdefault("errors", []).extend(
                    f"teardown: {x}" for x in t.problems)
            leftover = [m for m, _, _ in mounts() if m.startswith(str(work) + "/")]
            for m in leftover:
                results["errors"].append(f"{m} still mounted at the end")
                fuse_unmount(m)
            if not [m for m, _, _ in mounts() if m.startswith(str(work) + "/")]:
                shutil.rmtree(work, ignore_errors=True)
            else:
                results["errors"].append(f"left {work} in place: mounts remain")
        ok = not interrupted and not results["errors"] and all(
            not r.get("errors") and all(p.get("ok") for p in r.get("phases", {}).values())
            for r in results["targets"].values())
        results["ok"] = ok
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(report(results, args))
        print(f"\nresults: {json_path}")
        print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
