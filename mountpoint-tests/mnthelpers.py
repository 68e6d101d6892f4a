"""Helpers for the real-mount tests: running commands with hard timeouts, the
`mlustre` CLI, process clean-up by PID and a Cluster object that always tears
down what it started (mount table and /proc readers: mlustre/localcluster/).

Nothing here stats a possibly hung mount point: mount state comes from
/proc/self/mountinfo and process state from /proc/PID/stat.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlustre import registry
from mlustre.localcluster import mounts as mount_table
from mlustre.localcluster.cluster import cli_command
from mlustre.localcluster.cluster import force_unmount as cluster_force_unmount
from mlustre.localcluster.mounts import is_mounted, mounts_under
from mlustre.localcluster.processes import (
    kill_group,
    pids_in_group,
    proc_starttime,
    terminate_pids,
    wait_until,  # noqa: F401  (for the tests)
)

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
CLI_TIMEOUT = 60
SPEC_RE = re.compile(r"^\s*spec:\s*(\S+)\s*$", re.MULTILINE)


# --------------------------------------------------------------------------
# running commands


@dataclass
class Result:
    cmd: list[str]
    rc: int | None  # None: killed after the timeout
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool = False
    pid: int = 0  # also the process group id (own session)
    raw: bytes = b""  # stdout, undecoded

    def describe(self) -> str:
        return (
            f"$ {shlex.join(self.cmd)}\n"
            f"exit status: {'TIMEOUT' if self.timed_out else self.rc} "
            f"after {self.elapsed:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )

    def check(self) -> Result:
        """Assert exit status 0; the assertion message holds the whole story."""
        assert self.rc == 0, self.describe()
        return self


def run(
    cmd: Sequence[str],
    *,
    timeout: float = 60,
    cwd: str | os.PathLike | None = None,
    input: bytes | str | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run cmd in its own session, output to temporary files (not pipes: a
    daemon that inherits a pipe must not make us wait), kill its whole process
    group on timeout. Never raises for a failing or hanging command."""
    cmd = [os.fspath(c) for c in cmd]
    start = time.monotonic()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as inp,
    ):
        if input is not None:
            inp.write(input.encode() if isinstance(input, str) else input)
            inp.seek(0)
        proc = subprocess.Popen(
            cmd,
            stdin=inp if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        timed_out = False
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = None
            kill_group(proc.pid)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass  # stuck in the kernel (a hung mount); leave it
        out.seek(0)
        err.seek(0)
        raw = out.read()
        return Result(
            cmd,
            rc,
            raw.decode(errors="replace"),
            err.read().decode(errors="replace"),
            time.monotonic() - start,
            timed_out,
            proc.pid,
            raw,
        )


def sh(
    script: str,
    *,
    cwd: str | os.PathLike | None = None,
    timeout: float = 120,
    user: str | None = None,
    input: bytes | str | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """bash -c script with errexit/pipefail in the C locale; user="nobody"
    runs it as uid/gid 65534 with no supplementary groups."""
    cmd = ["bash", "-c", "set -eo pipefail\n" + script]
    env = {**os.environ, "LC_ALL": "C", **(env or {})}
    if user == "nobody":
        cmd = NOBODY + cmd
    elif user is not None:
        raise ValueError(user)
    return run(cmd, cwd=cwd, timeout=timeout, input=input, env=env)


def sh_ok(script: str, **kw) -> str:
    """sh() that must succeed; returns stdout."""
    return sh(script, **kw).check().stdout


def mlustre_cmd() -> list[str]:
    """The CLI: $MLUSTRE_CMD if set, else the console script next to the
    interpreter, else `python -m mlustre.cli` (localcluster.cli_command)."""
    return cli_command()


def cli(*args: str | os.PathLike, timeout: float = CLI_TIMEOUT) -> Result:
    return run(mlustre_cmd() + [os.fspath(a) for a in args], timeout=timeout)


# --------------------------------------------------------------------------
# mounts and processes: the package's (mlustre/localcluster/), one parser for all


def fstype(path: str | os.PathLike) -> str | None:
    return mount_table.fstype(path)


def force_unmount(path: str | os.PathLike) -> list[str]:
    """fusermount3 -u, then -uz, if still mounted. Returns what it had to do."""
    return cluster_force_unmount(path)


# --------------------------------------------------------------------------
# logs


def log_tail(data: str | os.PathLike, lines: int = 40, max_bytes: int = 60_000,
             pattern: str = "*.log") -> str:
    files = sorted(glob.glob(os.path.join(os.fspath(data), "**", pattern), recursive=True))
    if not files:
        return f"(no {pattern} files under {data})"
    chunks = []
    for name in files:
        try:
            with open(name, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError as e:
            text = f"(unreadable: {e})"
        tail = "\n".join(text.splitlines()[-lines:])
        chunks.append(f"==> {name} <==\n{tail}")
    out = "\n".join(chunks)
    return out[-max_bytes:]


# --------------------------------------------------------------------------
# the cluster


ACTIVE: list[Cluster] = []
PIDS_FILE = "pids.json"
OWNER_FILE = "owner.json"
BASE_PREFIX = "mlustre-mnt-tests-"


def claim_base(base: Path) -> None:
    me = os.getpid()
    (base / OWNER_FILE).write_text(json.dumps({"pid": me, "start": proc_starttime(me)}))


def reap_stale(parent: str | os.PathLike) -> list[str]:
    """Clean up after an earlier session that died without teardown (e.g. a
    pytest-timeout in thread mode exits at once): for every scratch root of
    ours whose owning pytest is gone, SIGTERM/SIGKILL the PIDs it recorded
    (start time checked), lazily unmount what is mounted under it, delete it."""
    done = []
    for base in sorted(Path(parent).glob(BASE_PREFIX + "*")):
        try:
            owner = json.loads((base / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner.get("start") is not None and proc_starttime(owner["pid"]) == owner["start"]:
            continue  # still running (a concurrent session)
        procs: dict[int, int] = {}
        for record in base.glob(f"*/{PIDS_FILE}"):
            try:
                data = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            procs.update({int(p): t for p, t in data.get("procs", {}).items()})
        killed = terminate_pids(procs, grace=5)
        netns = reap_netns(base)
        for mnt in sorted(mounts_under(base), key=len, reverse=True):
            run(["fusermount3", "-uz", mnt], timeout=30)
        remove_tree_if_unmounted(base)
        done.append(f"reaped {base}: killed {killed}"
                    + (f", took down the namespaces of {netns}" if netns else ""))
    return done


def reap_netns(base: Path) -> list[str]:
    """Multi-host clusters (mlustre/netns/) a dead session left under base: their
    mounts, servers (by pid and start time) and namespaces. Their state file says
    what they started: test_multihost.py's cluster (base/netns-*/) and the soak's
    (base/netns-soak-*/soak/cluster/)."""
    from mlustre.netns.driver import STATE, NetnsCluster, NetnsError

    done = []
    for state in [*base.glob(f"netns-*/{STATE}"), *base.glob(f"netns-soak-*/soak/cluster/{STATE}")]:
        try:
            NetnsCluster.load(state.parent).down()
            done.append(str(state.parent))
        except (NetnsError, OSError, ValueError, subprocess.SubprocessError):
            pass
    return done


def make_world_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A fresh directory that other users can traverse (mount points must be
    reachable by uid 65534 for the permission tests)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.fspath(parent)))
    path.chmod(0o755)
    return path


@dataclass
class Cluster:
    mnt: Path
    data: Path
    args: list[str] = field(default_factory=list)
    spec: str | None = None
    up_result: Result | None = None
    initial_status: dict | None = None
    procs: dict[int, int] = field(default_factory=dict)  # pid -> start time
    clients: list[Path] = field(default_factory=list)  # extra mounts we made
    up_pgid: int | None = None
    group_procs: dict[int, int] = field(default_factory=dict)  # fallback only
    problems: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, base: Path, args: Iterable[str] = ()) -> Cluster:
        root = make_world_dir(base, "cl-")
        mnt = root / "mnt"
        mnt.mkdir()
        mnt.chmod(0o755)
        return cls(mnt=mnt, data=root / "data", args=list(args))

    # ---- lifecycle

    def up(self, mnt: Path | None = None, timeout: float = CLI_TIMEOUT) -> Result:
        """`mlustre up`; raises AssertionError (with output) unless usable."""
        if mnt is not None:
            self.mnt = mnt
        if self not in ACTIVE:
            ACTIVE.append(self)
        cmd = mlustre_cmd() + ["up", str(self.mnt), "--data", str(self.data), *self.args]
        res = run(cmd, timeout=timeout)
        self.up_result = res
        self.up_pgid = res.pid
        self._remember_group()
        assert not res.timed_out, "mlustre up did not return in time\n" + res.describe()
        assert res.rc == 0, "mlustre up failed\n" + res.describe()
        match = SPEC_RE.search(res.stdout)
        assert match, "mlustre up printed no 'spec: HOST:PORT:/FSNAME' line\n" + res.describe()
        self.spec = match.group(1)
        assert is_mounted(self.mnt), f"{self.mnt} not in /proc/self/mountinfo after up"
        self.initial_status = self.status()
        self.remember_pids(self.initial_status)
        return res

    def status(self, mnt: Path | None = None, timeout: float = 30) -> dict:
        res = cli("status", mnt or self.mnt, "--json", timeout=timeout)
        assert res.rc == 0, "mlustre status --json failed\n" + res.describe()
        try:
            return json.loads(res.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"status --json is not JSON ({e})\n{res.describe()}") from e

    def remember_pids(self, status: dict) -> None:
        for entry in list(status.get("servers", [])) + list(status.get("clients", [])):
            pid = entry.get("pid")
            if isinstance(pid, int) and pid > 0 and pid not in self.procs:
                start = proc_starttime(pid)
                if start is not None:
                    self.procs[pid] = start
        self._record()

    def _record(self) -> None:
        """PIDs on disk, for reap_stale() should this pytest be killed."""
        record = {
            "procs": {**self.group_procs, **self.procs},
            "mounts": [str(self.mnt), *map(str, self.clients)],
        }
        try:
            (self.data.parent / PIDS_FILE).write_text(json.dumps(record))
        except OSError:
            pass

    def down(self, timeout: float = CLI_TIMEOUT) -> Result:
        return cli("down", self.mnt, timeout=timeout)

    def restart(self, mnt: Path | None = None) -> Result:
        """down (must succeed), then up with the same --data."""
        self.down().check()
        return self.up(mnt=mnt)

    def mount_client(self, mnt2: Path, spec: str | None = None) -> Result:
        """`mlustre mount SPEC MNT2`; always unmounted in teardown."""
        if mnt2 not in self.clients:
            self.clients.append(mnt2)
        res = cli("mount", spec or self.spec, mnt2)
        if res.rc == 0:
            try:
                self.remember_pids(self.status())
            except AssertionError as e:
                self.problems.append(f"status after mount failed: {e}")
        return res

    def umount_client(self, mnt2: Path) -> Result:
        return cli("umount", mnt2)

    def cleanup_client(self, mnt2: Path) -> list[str]:
        """Make sure an extra client is gone (for per-test fixtures)."""
        problems = []
        if is_mounted(mnt2):
            res = self.umount_client(mnt2)
            if res.rc != 0:
                problems.append(f"mlustre umount {mnt2} failed:\n{res.describe()}")
        problems += force_unmount(mnt2)
        if mnt2 in self.clients and not is_mounted(mnt2):
            self.clients.remove(mnt2)
        return problems

    def _remember_group(self) -> None:
        if self.up_pgid and not self.procs:
            for pid in pids_in_group(self.up_pgid):
                start = proc_starttime(pid)
                if start is not None:
                    self.group_procs[pid] = start
            self._record()

    def alive_pids(self) -> list[int]:
        return [p for p, t in self.procs.items() if proc_starttime(p) == t]

    def logs(self) -> str:
        parts = []
        if self.up_result is not None and self.up_result.rc != 0:
            parts.append(self.up_result.describe())
        parts.append(log_tail(self.data))
        # Extra clients (mount_client) log where `mlustre mount` puts client logs.
        logdir = registry.state_dir() / "logs"
        for mnt2 in self.clients:
            parts.append(log_tail(logdir, pattern=f"client-{mnt2.name}-*.log"))
        return "\n".join(parts)

    def teardown(self) -> list[str]:
        """Never raises. Returns the abnormal things it had to do."""
        problems = list(self.problems)
        for mnt2 in self.clients:
            if is_mounted(mnt2):
                res = self.umount_client(mnt2)
                if res.rc != 0:
                    problems.append(f"mlustre umount {mnt2} failed:\n{res.describe()}")
        if is_mounted(self.mnt) or self.alive_pids() or self.up_result is not None:
            res = self.down()
            if res.rc != 0 and (is_mounted(self.mnt) or self.alive_pids()):
                problems.append(f"mlustre down {self.mnt} failed:\n{res.describe()}")
        for path in [self.mnt, *self.clients]:
            problems += force_unmount(path)
        if not self.procs:
            # status never worked: fall back to what is left of our `up` group
            self._remember_group()
        killed = terminate_pids(self.procs or self.group_procs)
        if killed:
            problems.append(f"had to signal leftover processes {killed}")
        for path in [self.mnt, *self.clients]:
            problems += force_unmount(path)
        if self in ACTIVE:
            ACTIVE.remove(self)
        return problems


# helpers of tests that use clusters of their own (`cluster_factory`) or extra clients


def mount_extra(c: Cluster, mnt: Path, *opts: str):
    """`mlustre mount [OPTS] SPEC MNT` (Cluster.mount_client takes no options);
    registered with the cluster, so its teardown unmounts it."""
    if mnt not in c.clients:
        c.clients.append(mnt)
    res = cli("mount", *opts, c.spec, mnt)
    if res.rc == 0:
        c.remember_pids(c.status())
    return res


def client_pid(c: Cluster, mnt: Path) -> int:
    status = c.status()
    pids = [e["pid"] for e in status["clients"] if e.get("mountpoint") == str(mnt)]
    assert len(pids) == 1, f"no single client listed for {mnt}: {status['clients']}"
    return pids[0]


def fsname_of(c: Cluster) -> str:
    return c.spec.rsplit(":/", 1)[1]


def sigkill_client(c: Cluster, mnt: Path) -> None:
    """SIGKILL the client process of mount mnt (only that PID); its mount
    stays, dead (ENOTCONN), until the cluster's teardown."""
    pid = client_pid(c, mnt)
    start = proc_starttime(pid)
    assert start is not None, f"client pid {pid} of {mnt} is not running"
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: proc_starttime(pid) != start, 15), f"client {pid} survived SIGKILL"


def attempt_up(mnt: Path, data: Path, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
    """`mlustre up` that is expected to fail. Should it succeed (or hang),
    whatever it started is torn down before returning."""
    c = Cluster(mnt=mnt, data=data, args=list(args))
    res = run(mlustre_cmd() + ["up", str(mnt), "--data", str(data), *args], timeout=timeout)
    if res.rc == 0:
        c.up_result, c.up_pgid = res, res.pid
        try:
            c.remember_pids(c.status())
        except AssertionError:
            c._remember_group()
        c.teardown()
    return res


def remove_tree_if_unmounted(path: Path) -> None:
    """rm -rf path, unless a mount is still under it (never recurse into a mount)."""
    if path.exists() and not mounts_under(path) and not is_mounted(path):
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# file trees


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: str | os.PathLike) -> dict[str, tuple]:
    """Everything persistence must keep, per relative path: type, mode, uid,
    gid, size, nlink, mtime (s), content hash or link target, user xattrs."""
    root = os.fspath(root)
    snap: dict[str, tuple] = {}

    def fail(err: OSError) -> None:
        raise err

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                content = "->" + os.readlink(full)
                xattrs: tuple = ()
            else:
                content = sha256_file(full) if stat.S_ISREG(st.st_mode) else ""
                xattrs = tuple(
                    sorted(
                        (k, os.getxattr(full, k))
                        for k in os.listxattr(full)
                        if k.startswith("user.")
                    )
                )
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else None
            snap[rel] = (
                stat.S_IFMT(st.st_mode),
                oct(stat.S_IMODE(st.st_mode)),
                st.st_uid,
                st.st_gid,
                size,
                st.st_nlink,
                int(st.st_mtime),
                content,
                xattrs,
            )
    return snap


def run_script(argv: list[str], base: Path, timeout: float,
               what: str) -> tuple[int, str, list[str]]:
    """Run a script that starts its own cluster under `base` (the soak, the demo):
    (exit status, output, what it left mounted under `base`, which is taken down).
    On timeout it gets SIGTERM (it cleans up), then SIGKILL, and the test fails."""
    leftover: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        raise AssertionError(f"{what} did not end in time\n" + out[-4000:]) from None
    finally:
        leftover = mounts_under(base)
        for mnt in leftover:  # only if it could not clean up
            cli("down", mnt)
            force_unmount(mnt)
    return proc.returncode, out, leftover


def as_user(uid: int | None, fn: Callable[[], object]) -> object:
    """fn() in a forked child running as uid/gid `uid` with no supplementary groups
    (None: as we are); its JSON-able result, or ("raised", repr) if it raised. A child
    of this process, not `setpriv python`: the interpreter may not be reachable by
    uid 65534. The child only makes system calls and exits with os._exit (a hang is
    left to the test's timeout)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(r)
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            try:
                out = fn()
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out = ("raised", repr(e))
            os.write(w, json.dumps(out).encode())
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    try:
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert status == 0, f"as_user({uid}) child failed (status {status})"
    return json.loads(b"".join(chunks))
