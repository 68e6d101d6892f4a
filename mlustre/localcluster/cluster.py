"""localcluster/cluster.py - a local cluster driven through the `mlustre` CLI.

`mlustre up` starts the servers (MGS, MDT, OSTs), waits for each one's READY line and
mounts a first client; `status`, `failover` (controlled, --crash, --partner),
`upgrade`, `mount`, `umount` and `down` act on it by its first mount point. The
benchmarks, the demos, the soak, the coherence stress and the mount tests all start,
fail over and stop clusters through `LocalCluster`, so there is one way to do it; the
CLI itself (mlustre/cli.py) is what runs underneath.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import mounts

FAILOVER_KINDS = ("restart", "crash", "partner", "upgrade")


class ClusterError(Exception):
    """An mlustre command failed (the message holds its output)."""


def cli_command() -> list[str]:
    """The CLI: $MLUSTRE_CMD (a command line) or $MLUSTRE (a path) if set, else the
    console script next to the interpreter, else `python -m mlustre.cli`."""
    if os.environ.get("MLUSTRE_CMD"):
        return shlex.split(os.environ["MLUSTRE_CMD"])
    if os.environ.get("MLUSTRE"):
        return [os.environ["MLUSTRE"]]
    script = Path(sys.executable).with_name("mlustre")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mlustre.cli"]


def run_cli(args: Sequence[str | os.PathLike[str]], timeout: float = 120,
            cli: Sequence[str] | None = None) -> subprocess.CompletedProcess[str]:
    """One CLI command in its own session, output captured. Never raises for a failing
    or hanging command: a timeout is exit status -1 with "timed out" on stderr."""
    cmd = [*(cli or cli_command()), *map(os.fspath, args)]
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        return subprocess.CompletedProcess(cmd, -1, out, f"timed out after {timeout} s")


def checked(res: subprocess.CompletedProcess[str]) -> str:
    """stdout of a command that must have succeeded, else ClusterError."""
    if res.returncode != 0:
        what = " ".join(map(str, res.args))
        raise ClusterError(f"{what}: exit status {res.returncode}: "
                           f"{(res.stderr or res.stdout).strip()[-2000:]}")
    return res.stdout


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of text that is a JSON object (commands may log before it)."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def force_unmount(path: str | os.PathLike[str], timeout: float = 30) -> list[str]:
    """fusermount3 -u, then -uz, while path is still mounted. Returns what it did."""
    done = []
    for flag in ("-u", "-uz"):
        if not mounts.is_mounted(path):
            break
        try:
            res = subprocess.run(["fusermount3", flag, os.fspath(path)], capture_output=True,
                                 text=True, timeout=timeout, check=False)
            done.append(f"fusermount3 {flag} {path}: rc={res.returncode} "
                        f"{res.stderr.strip()}")
        except subprocess.TimeoutExpired:
            done.append(f"fusermount3 {flag} {path}: timed out")
    return done


class LocalCluster:
    """A cluster on this machine, known by its first mount point and data directory.

    Methods return the command's CompletedProcess (check=False) or its stdout, raising
    ClusterError if it failed (check=True)."""

    def __init__(self, mnt: str | os.PathLike[str], data: str | os.PathLike[str],
                 cli: Sequence[str] | None = None) -> None:
        self.mnt = Path(mnt)
        self.data = Path(data)
        self.cli = list(cli) if cli else cli_command()

    def run(self, *args: str | os.PathLike[str], timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return run_cli(args, timeout=timeout, cli=self.cli)

    def _do(self, args: Sequence[str | os.PathLike[str]], timeout: float, check: bool
            ) -> subprocess.CompletedProcess[str]:
        res = self.run(*args, timeout=timeout)
        if check:
            checked(res)
        return res

    # ---- lifecycle

    def up(self, *options: str, timeout: float = 180, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
        """`mlustre up MNT --data DATA OPTIONS`: servers started and READY, MNT mounted."""
        return self._do(["up", self.mnt, "--data", self.data, *options], timeout, check)

    def down(self, timeout: float = 120, check: bool = False
             ) -> subprocess.CompletedProcess[str]:
        """`mlustre down MNT`: every client of the cluster unmounted, servers stopped."""
        return self._do(["down", self.mnt], timeout, check)

    def stop(self, timeout: float = 120) -> str | None:
        """Stop whatever is left (the end of a run that may have failed): `down`, else
        fusermount3 -u, -uz and `down` again (it stops the servers only once the mount
        is gone). None if all went well, else what went wrong."""
        if not (self.data / "cluster.json").exists() and not mounts.is_mounted(self.mnt):
            return None
        down = self.down(timeout=timeout)
        if down.returncode == 0 and not mounts.is_mounted(self.mnt):
            return None
        problem = f"mlustre down: {(down.stderr or down.stdout).strip()[-500:]}"
        force_unmount(self.mnt)
        if down.returncode != 0:
            again = self.down(timeout=timeout)
            problem += ("; after fusermount3, mlustre down " +
                        ("stopped the servers" if again.returncode == 0 else
                         f"failed again: {(again.stderr or again.stdout).strip()[-300:]}"))
        return problem

    # ---- state

    def status(self, timeout: float = 30) -> dict[str, Any]:
        """`mlustre status MNT --json` (ClusterError if it fails or is not JSON)."""
        out = checked(self.run("status", self.mnt, "--json", timeout=timeout))
        value = last_json(out)
        if value is None:
            raise ClusterError(f"mlustre status --json: not JSON: {out[:500]!r}")
        return value

    def servers(self) -> dict[str, dict[str, Any]]:
        """The servers by target name without the fsname (MGS, MDT0000, OST0001...)."""
        return {s["name"].split("-", 1)[-1]: s for s in self.status().get("servers", [])}

    @property
    def spec(self) -> str:
        """HOST:PORT:/FSNAME of the cluster (from DATA/cluster.json)."""
        return json.loads((self.data / "cluster.json").read_text())["spec"]

    def key(self) -> bytes | None:
        """The key `mlustre up` made for the cluster (library clients must prove it)."""
        from ..protocol.keyfile import load_key

        path = self.data / "auth.key"
        return load_key(str(path)) if path.exists() else None

    # ---- failover

    def failover(self, target: str, kind: str = "restart", *, release: str | None = None,
                 json_out: bool = False, partner: bool = False, timeout: float = 120,
                 check: bool = False) -> subprocess.CompletedProcess[str]:
        """One failover of target: "restart" (controlled, through the SIR barrier),
        "crash" (kill -9), "partner" (onto the other server of its failover pair) or
        "upgrade" (controlled, onto `release`; partner=True: on the partner)."""
        if kind == "upgrade":
            if release is None:
                raise ValueError("an upgrade needs a release")
            args: list[str] = ["upgrade", str(self.mnt), target, "--release", release]
            if json_out:
                args.append("--json")
            if partner:
                args.append("--partner")
        elif kind in FAILOVER_KINDS:
            args = ["failover", str(self.mnt), target,
                    *{"crash": ["--crash"], "partner": ["--partner"]}.get(kind, [])]
            if json_out:
                args.append("--json")
        else:
            raise ValueError(f"failover kind {kind!r}: one of {', '.join(FAILOVER_KINDS)}")
        return self._do(args, timeout, check)

    # ---- more clients and the tools

    def mount(self, mnt2: str | os.PathLike[str], spec: str | None = None,
              timeout: float = 90, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`mlustre mount SPEC MNT2`: one more client (its own process)."""
        return self._do(["mount", spec or self.spec, mnt2], timeout, check)

    def umount(self, mnt2: str | os.PathLike[str], timeout: float = 90, check: bool = True
               ) -> subprocess.CompletedProcess[str]:
        return self._do(["umount", mnt2], timeout, check)

    def lctl(self, *args: str, timeout: float = 180) -> str:
        """`mlustre lctl -m MNT ARGS`; its stdout (ClusterError if it failed)."""
        return checked(self.run("lctl", "-m", self.mnt, *args, timeout=timeout))

    def lfs(self, *args: str, timeout: float = 180) -> str:
        return checked(self.run("lfs", *args, timeout=timeout))
