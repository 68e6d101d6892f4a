"""bench/targets.py - what the I/O benchmark measures: a fresh local mlustre cluster,
a tmpfs directory and the pyfuse3 passthrough (mlustre/bench/passthrough.py) over a
tmpfs, each set up, remounted (cold cache), mounted a second time (pingpong), aborted
by the watchdog and torn down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ..localcluster.cluster import cli_command
from .common import (
    T_DOWN,
    T_MOUNT,
    T_SHORT,
    T_STATUS,
    T_UMOUNT,
    T_UP,
    BenchError,
    cmdline,
    fstype_of,
    fuse_abort,
    fuse_unmount,
    is_mounted,
    log,
    pid_alive,
    run,
    start_bg,
    stop_pid,
    tail,
    vm_status,
    wait_until,
)


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
        self.proc = start_bg([sys.executable, "-m", "mlustre.bench.passthrough", self.src, self.mnt], self.logfile)
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
        self.proc2 = start_bg([sys.executable, "-m", "mlustre.bench.passthrough", self.src, self.mnt2], logfile)
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


class MlustreTarget(Target):
    name = "mlustre"

    def __init__(self, work, args):
        super().__init__(work, args)
        self.cli: list[str] = []
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
        return run([*self.cli, *args], timeout=timeout, check=check)

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
        self.cli = cli_command()
        self.mnt = self.work / "mlustre-mnt"
        self.mnt.mkdir()
        logfile = self.logdir / "mlustre-up.log"
        self.up_proc = start_bg(
            [*self.cli, "up", self.mnt, "--osts", "2", "--data", self.data,
             *(["--no-auth"] if self.args.no_auth else []),
             *(["--privacy"] if getattr(self.args, "privacy", False) else [])], logfile)
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
                         privacy=bool(getattr(self.args, "privacy", False)),
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
        proc = start_bg([*self.cli, "mount", self.spec, self.mnt], logfile)
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
        proc = start_bg([*self.cli, "mount", spec, self.mnt2], logfile)
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
               f"{shlex.join(self.cli)} down {self.mnt}"
