"""bench/shell.py - the shell phase of the I/O benchmark: the work a user does with shell
tools on a filesystem, step by step, as ../shared/bench-peers/shellbench.sh does it
(the same steps, so that its figures on other filesystems compare):

  untar      tar -xf of a tarball of /usr/include/linux + /usr/include/c++ (full size;
             small: /usr/include/linux; tiny: ~190 entries of /usr/include)
  cp_a       cp -a of that tree to a second directory
  ls_lR      ls -lR of both trees after drop_caches (a lookup and getattr of every entry)
  tar_c      tar -cf - of the first tree | wc -c after drop_caches (every byte read back)
  git_clone  git clone of a repository (full: of /usr/include, ~8k files; small and
             tiny: of the tarball's trees): a checkout of every file
  git_st     git status in the clone after drop_caches
  rm_rf      rm -rf of everything

Wall-clock seconds per step. The tarball and the repository are made once per scale in
$TMPDIR/mlustre-shellbench/SCALE and kept for later runs. drop_caches needs root; without
it the steps run warm (noted). Checked outside the timed steps: ls -lR lists every
entry, tar -c wrote at least the tree's bytes, git status finds the checkout clean, and
rm -rf left nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import BenchError, log
from .phases import drop_caches

STEPS = ("untar", "cp_a", "ls_lR", "tar_c", "git_clone", "git_st", "rm_rf")
TINY = ("asm-generic", "linux/netfilter", "rdma", "sound")
SCALES = {
    # scale: (trees of /usr/include in the tarball, trees the repository is made of)
    "tiny": (TINY, TINY),
    "small": (("linux",), ("linux",)),
    "full": (("linux", "c++"), (".",)),
}
GIT_ID = ["-c", "user.email=bench@mlustre", "-c", "user.name=bench"]


class ShellInputs:
    """The tarball and bare repository of one scale, made once (they are kept)."""

    def __init__(self, scale: str, base: Path | None = None) -> None:
        self.scale = scale
        self.trees, self.repo_trees = SCALES[scale]
        # what untar makes at the top: cp -a and tar -c take these
        self.tops = sorted({t.split("/")[0] for t in self.trees})
        base = base or Path(tempfile.gettempdir()) / "mlustre-shellbench"
        self.dir = base / scale
        self.tar = self.dir / "tree.tar"
        self.git = self.dir / "repo.git"

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.tar.exists():
            log(f"shell: making {self.tar} of /usr/include/{{{','.join(self.trees)}}}")
            part = self.tar.with_suffix(".part")
            sh(["tar", "-C", "/usr/include", "-cf", part, *self.trees], 600)
            part.rename(self.tar)
        if not (self.git / "HEAD").exists():
            log(f"shell: making {self.git}, a repository of /usr/include/"
                f"{{{','.join(self.repo_trees)}}}")
            src = Path(tempfile.mkdtemp(prefix="src-", dir=self.dir))
            try:
                tree = src / "tree"
                tree.mkdir()
                sh(["sh", "-c", f"tar -C /usr/include -cf - {shlex.join(self.repo_trees)} | "
                    f"tar -C {shlex.quote(str(tree))} -xf -"], 600)
                sh(["git", "-C", tree, "init", "-q"], 600)
                sh(["git", "-C", tree, "add", "-A"], 600)
                sh(["git", "-C", tree, *GIT_ID, "commit", "-qm", "tree"], 600)
                shutil.rmtree(self.git, ignore_errors=True)
                sh(["git", "clone", "-q", "--bare", tree, self.git], 600)
            finally:
                shutil.rmtree(src, ignore_errors=True)

    def tar_members(self) -> int:
        """Entries of the tarball (ls -lR must list every one of them)."""
        return len(sh(["tar", "-tf", self.tar], 600).splitlines())


def sh(cmd: list, timeout: float, cwd: Path | None = None) -> str:
    """Run cmd (no shell), its stdout; BenchError with its stderr if it fails."""
    try:
        cp = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, errors="replace",
                            timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{shlex.join(map(str, cmd))} timed out after {timeout:.0f} s"
                         ) from exc
    if cp.returncode != 0:
        raise BenchError(f"{shlex.join(map(str, cmd))} exited {cp.returncode}: "
                         f"{cp.stderr.strip()[-500:]}")
    return cp.stdout


def phase_shell(d: Path, inputs: ShellInputs, timeout: float,
                cold: bool = True) -> dict:
    """Every step in a fresh directory under d; {"steps": {step: s}, "total": s, ...}.

    cold: drop the kernel's caches before ls_lR, tar_c and git_st (as shellbench.sh)."""
    w = d / f"sb.{os.getpid()}"
    w.mkdir()
    steps: dict[str, float] = {}
    dropped = cold and os.geteuid() == 0

    def step(name: str, cmd: list, drop_first: bool = False) -> str:
        if drop_first and dropped:
            drop_caches()
        t0 = time.perf_counter()
        try:
            out = sh(cmd, timeout)
        except BenchError as exc:
            raise BenchError(f"{name}: {exc}", {"steps": dict(steps)}) from exc
        steps[name] = time.perf_counter() - t0
        log(f"shell {name}: {steps[name]:.2f} s")
        return out

    trees = [str(w / t) for t in inputs.tops]
    step("untar", ["tar", "-C", w, "-xf", inputs.tar])
    step("cp_a", ["sh", "-c", f"mkdir {shlex.quote(str(w / 'copy'))} && cp -a "
                  f"{shlex.join(trees)} {shlex.quote(str(w / 'copy'))}/"])
    listed = step("ls_lR", ["ls", "-lR", w], drop_first=True)
    tar_bytes = int(step("tar_c", ["sh", "-c", f"tar -C {shlex.quote(str(w))} -cf - "
                                   f"{shlex.join(inputs.tops)} | wc -c"],
                         drop_first=True).split()[0])
    step("git_clone", ["git", "clone", "-q", inputs.git, w / "clone"])
    status = step("git_st", ["git", "-C", w / "clone", "status", "--porcelain"],
                  drop_first=True)
    step("rm_rf", ["rm", "-rf", w])
    members = inputs.tar_members()
    # (ls -lR prints a line per entry, and one per directory heading)
    entries = sum(1 for line in listed.splitlines() if line[:1] in "-dlcbps" and " " in line)
    problems = []
    if entries < 2 * members:
        problems.append(f"ls -lR listed {entries} entries, expected at least {2 * members}")
    if tar_bytes < inputs.tar.stat().st_size // 2:
        problems.append(f"tar -c wrote {tar_bytes} bytes, the tarball has "
                        f"{inputs.tar.stat().st_size}")
    if status.strip():
        problems.append(f"git status in the fresh clone is not clean: {status[:300]!r}")
    if w.exists():
        problems.append(f"{w} still exists after rm -rf")
    if problems:
        raise BenchError("; ".join(problems), {"steps": steps})
    return {"scale": inputs.scale, "steps": steps, "seconds": sum(steps.values()),
            "entries": members, "tar_bytes": tar_bytes, "caches_dropped": dropped}


def shell_summary(results: dict) -> dict:
    """Seconds per step of each target and the ratios mlustre/tmpfs (the JSON line)."""
    per: dict[str, dict] = {}
    for name, r in results.get("targets", {}).items():
        ph = r.get("phases", {}).get("shell")
        if ph:
            per[name] = {"ok": bool(ph.get("ok")),
                         "steps": {k: round(v, 3) for k, v in
                                   (ph.get("steps") or ph.get("partial", {}).get("steps")
                                    or {}).items()},
                         "total": round(ph["seconds"], 3) if ph.get("ok") else None}
    ratio = {}
    m, t = per.get("mlustre", {}).get("steps", {}), per.get("tmpfs", {}).get("steps", {})
    for k in STEPS:
        if k in m and t.get(k):
            ratio[k] = round(m[k] / t[k], 2)
    tot_m, tot_t = per.get("mlustre", {}).get("total"), per.get("tmpfs", {}).get("total")
    if tot_m is not None and tot_t:
        ratio["total"] = round(tot_m / tot_t, 2)
    return {"phase": "shell", "scale": results.get("args", {}).get("shell_scale"),
            "targets": per, "ratio_mlustre_tmpfs": ratio}


def json_line(summary: dict, ok: bool) -> str:
    return json.dumps({**summary, "ok": ok})
