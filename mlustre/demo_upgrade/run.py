"""demo_upgrade/run.py - the demo itself: a 1.8 cluster (mlustre.localcluster), its
workloads, the upgrades at their times, the stop and the verification, the clean-up
(signals are held while an mlustre command runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..localcluster import mounts
from ..localcluster.cluster import LocalCluster, last_json, run_cli
from ..localcluster.processes import wchan
from .common import FINAL_RELEASES, FSNAME, PLAN, PROG, WORKLOADS, human, log, short
from .report import analyse, fmt_barrier, num, report
from .workers import sha256_file, tree_sums


class Failed(Exception):
    """The demo cannot go on (the message says why)."""


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_SIG: dict[str, Any] = {"critical": 0, "pending": None}


def _on_signal(signum: int, frame: Any) -> None:
    if _SIG["critical"] or _SIG.get("cleaning"):  # let an mlustre command finish first
        _SIG["pending"] = _SIG["pending"] or signum
        return
    raise Interrupted(signum)


@contextmanager
def critical() -> Iterator[None]:
    """Signals are held while an mlustre command runs (each is bounded by a timeout):
    a half-done `up` or `upgrade` could leave a server nobody knows of. A held signal
    takes effect at the next check_signal(), once what was done is recorded."""
    _SIG["critical"] += 1
    try:
        yield
    finally:
        _SIG["critical"] -= 1


def check_signal() -> None:
    if not _SIG["critical"] and _SIG["pending"] and not _SIG.get("cleaning"):
        raise Interrupted(_SIG["pending"])


def mlustre(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """An mlustre command (exit status -1 after a timeout), signals held meanwhile."""
    with critical():
        return run_cli(args, timeout=timeout)


def make_source(base: Path, source: Path, max_files: int) -> tuple[int, int]:
    """A tarball of (part of) a real source tree, and its files' checksums."""
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.is_symlink()]
    files = files[:max_files]
    sums = {}
    with tarfile.open(base / "source.tar", "w") as tf:
        for p in files:
            tf.add(p, arcname=str(p.relative_to(source)))
            sums[str(p.relative_to(source))] = sha256_file(p)[0]
    (base / "source.sums").write_text(json.dumps(sums))
    return len(files), sum(p.stat().st_size for p in files)


def schedule(duration: float) -> list[float]:
    """When each step of PLAN starts (seconds after the workload started)."""
    first, last = 0.12 * duration, 0.72 * duration
    step = (last - first) / (len(PLAN) - 1)
    return [first + i * step for i in range(len(PLAN))]


def run_demo(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="mlustre-demo-upgrade-", dir=args.base))
    os.chmod(base, 0o755)
    mnt, data = base / "mnt", base / "data"
    mnt.mkdir()
    cluster = LocalCluster(mnt, data)
    result: dict[str, Any] = {
        "duration_s": args.duration, "work_dir": str(base), "fsname": FSNAME,
        "started_wall": time.time(), "servers_before": [], "servers_after": [],
        "failovers": [], "workloads": {}, "trees": {}, "problems": [], "plot": None}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ok = False
    interrupted: Interrupted | None = None
    times = array("d")
    t0 = time.monotonic()
    try:
        log(f"work directory {base} (mount {mnt}, data and logs {data})")
        with critical():
            up = cluster.up("--fsname", FSNAME, "--osts", str(args.osts), "--release", "1.8",
                            "--failover-pairs", timeout=180, check=False)
        if up.returncode != 0:
            raise Failed("mlustre up failed: " + (up.stderr or up.stdout).strip()[-2000:])
        check_signal()
        result["fuse_connection"] = mounts.fuse_connection(mnt)
        st = mlustre("status", str(mnt), "--json")
        servers = (last_json(st.stdout) or {}).get("servers", [])
        result["servers_before"] = servers
        log(f"cluster {FSNAME} up, release 1.8, MDT and OSTs in failover pairs:")
        for s in servers:
            print(f"    {s['name']:<14} {s['kind']:<4} {s['nid']:<20} pid {s['pid']:<7} "
                  f"release {s['release']}  {s['state']}")
        nfiles, nbytes = make_source(base, Path(args.source), args.source_files)
        log(f"source tree: {nfiles} files, {human(nbytes)} of {args.source} in a tarball")

        t0 = time.monotonic()
        result["t0_wall"] = time.time()
        conf: dict[str, Any] = {}
        for name in WORKLOADS:
            (mnt / name).mkdir()
            # The workers run until the stop file appears (or, should this process be
            # gone, until a bound).
            conf[name] = {"t0": t0, "deadline": t0 + args.duration + 900,
                          "stop": str(base / "stop"), "dir": str(mnt / name),
                          "out": str(base / f"{name}.json")}
        conf["writer"].update(record_size=args.record_size, fsync_every=args.fsync_every,
                              times=str(base / "writer.times"))
        for name in ("extract", "copy"):
            conf[name].update(tarball=str(base / "source.tar"), sums=str(base / "source.sums"),
                              extract_dir=str(mnt / "extract"))
        (base / "workers.json").write_text(json.dumps(conf))
        with critical():  # every worker started is in procs (to be killed on an abort)
            for name in WORKLOADS:
                with open(base / f"{name}.log", "wb") as logf:
                    procs[name] = subprocess.Popen(
                        [sys.executable, "-m", "mlustre.demo_upgrade", "--worker", name, "--conf",
                         str(base / "workers.json")],
                        stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        check_signal()
        log(f"workloads running for {args.duration:g} s: {', '.join(WORKLOADS)} "
            f"(pids {', '.join(str(p.pid) for p in procs.values())})")

        nids = {short(s["name"]): s["nid"] for s in servers}
        releases = {short(s["name"]): s["release"] for s in servers}
        for n, ((target, release, partner), at) in enumerate(
                zip(PLAN, schedule(args.duration), strict=True), 1):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            check_early_ends(procs, result)
            start, start_wall = time.monotonic(), time.time()
            with critical():
                res = cluster.failover(target, "upgrade", release=release, json_out=True,
                                       partner=partner)
            end = time.monotonic()
            info = last_json(res.stdout) if res.returncode == 0 else None
            ev: dict[str, Any] = {
                "n": n, "target": target, "from": releases.get(target), "to": release,
                "partner": partner, "at_s": round(start - t0, 3), "end_s": round(end - t0, 3),
                "at_wall": round(start_wall, 3),
                "ok": res.returncode == 0 and info is not None, "exit_status": res.returncode,
                "nid_before": nids.get(target), "nid_after": None, "stop_s": None,
                "restart_s": None, "total_s": None, "barrier": None, "json": info}
            if info is not None:
                ev["from"] = info.get("from", ev["from"])
                ev["nid_after"] = info.get("nid")
                ev["stop_s"] = info.get("stop_s")
                ev["total_s"] = info.get("total_s")
                if ev["stop_s"] is not None and ev["total_s"] is not None:
                    ev["restart_s"] = round(ev["total_s"] - ev["stop_s"], 4)
                ev["barrier"] = info.get("barrier")
                if info.get("to") != release:
                    ev["ok"] = False
                nids[target] = info.get("nid") or nids.get(target)
                releases[target] = info.get("to", release)
            else:
                ev["message"] = (res.stderr or res.stdout).strip()[-2000:]
            if res.returncode == 0 and res.stderr.strip():  # e.g. "barrier not frozen"
                ev["warnings"] = res.stderr.strip().splitlines()[-5:]
            result["failovers"].append(ev)
            log(f"failover {n} at {start - t0:.1f} s: {target} {ev['from']} -> {release}"
                f"{' on its partner' if partner else ''}: " + (
                    f"{ev['nid_before']} -> {ev['nid_after']}, stop {num(ev['stop_s'])} s, "
                    f"serving again after {num(ev['total_s'])} s, barrier "
                    f"{fmt_barrier(ev['barrier'])}" if ev["ok"]
                    else f"FAILED (exit status {res.returncode}): {ev.get('message')}"))
            for line in ev.get("warnings", []):
                log(f"  upgrade said: {line}")
            check_signal()
            if not ev["ok"]:
                log("an upgrade failed: no further upgrades")
                break
        check_signal()

        # The workloads go on until the end of --duration, and at least a few seconds
        # after the last failover (so the writer's recovery shows).
        last_end = max((ev["end_s"] for ev in result["failovers"]), default=0.0)
        stop_at = t0 + max(args.duration, last_end + max(5.0, 0.1 * args.duration))
        if stop_at > time.monotonic():
            log(f"last failover done; workloads go on for "
                f"{stop_at - time.monotonic():.0f} s more")
            while time.monotonic() < stop_at:
                time.sleep(min(0.5, max(0.0, stop_at - time.monotonic())))
                check_early_ends(procs, result)
        # On a loaded machine the tree workloads may not have gone round once yet (the
        # copy starts on a tree the extraction published): give them some more time.
        late = time.monotonic() + max(30.0, 0.5 * args.duration)
        if not copy_started(mnt) and time.monotonic() < late:
            log("the copy workload has not started a round yet: waiting for it")
            while not copy_started(mnt) and time.monotonic() < late:
                time.sleep(0.5)
                check_early_ends(procs, result)
        check_early_ends(procs, result)
        (base / "stop").touch()
        result["workload_s"] = round(time.monotonic() - t0, 3)
        log(f"workloads told to stop at {result['workload_s']:.1f} s; they verify what "
            f"they wrote")
        # (After a failed upgrade a server may be away for good: the workloads would
        # wait for it, so they get less time to end.)
        margin = args.verify_timeout if all(ev["ok"] for ev in result["failovers"]) else 60
        wait_until = time.monotonic() + margin
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(0.0, wait_until - time.monotonic()))
            except subprocess.TimeoutExpired:
                result["problems"].append(
                    f"workload {name} (pid {proc.pid}) did not end within {margin:.0f} s "
                    f"of the stop; stuck in {wchan(proc.pid)}: killed")
                stop_worker(proc, result)
            out = base / f"{name}.json"
            if out.exists():
                result["workloads"][name] = json.loads(out.read_text())
            if proc.returncode or not out.exists():  # a traceback is in its log
                tail = (base / f"{name}.log").read_text(errors="replace")[-1500:]
                result["problems"].append(f"workload {name} ended with exit status "
                                          f"{proc.returncode}{'' if out.exists() else ', no report'}"
                                          f": {tail.strip()}")
        idle = {"writer": "records", "held": "chunks", "extract": "rounds", "copy": "rounds"}
        for name, key in idle.items():
            if name in result["workloads"] and not result["workloads"][name].get(key):
                result["problems"].append(f"workload {name} did no work ({key}: 0)")
        if result.get("stuck_workers"):
            raise Failed("workers stuck in the mount: the trees are not checked")
        log("workloads stopped and verified by themselves; checking the trees left on "
            "the mount")
        expected = json.loads((base / "source.sums").read_text())
        for tree in sorted([*(mnt / "extract").glob("ready*"), *(mnt / "copy").glob("moved*")]):
            got, size = tree_sums(tree)
            same = got == expected
            result["trees"][str(tree.relative_to(mnt))] = {"files": len(got), "bytes": size,
                                                           "identical": same}
            if not same:
                result["problems"].append(f"tree {tree.relative_to(mnt)} differs from the "
                                          f"source")
        st = mlustre("status", str(mnt), "--json")
        result["servers_after"] = (last_json(st.stdout) or {}).get("servers", [])
        check_signal()
        got_rel = {short(s["name"]): s["release"] for s in result["servers_after"]}
        if got_rel != FINAL_RELEASES:
            result["problems"].append(f"releases after the upgrades: {got_rel}, expected "
                                      f"{FINAL_RELEASES}")
        ok = True
    except Failed as e:
        result["problems"].append(str(e))
        log(f"error: {e}")
    except Interrupted as e:
        interrupted = e
        result["problems"].append(f"interrupted by {e}")
        print(f"\n{PROG}: interrupted by {e}; cleaning up", file=sys.stderr, flush=True)
    except Exception as e:  # report it, clean up, keep the work directory
        result["problems"].append(f"{type(e).__name__}: {e}")
        log(f"error: {type(e).__name__}: {e}")
    finally:
        _SIG["cleaning"] = True
        with critical():
            for proc in procs.values():  # only the workers this run started
                stop_worker(proc, result)
        if procs and "workload_s" not in result:
            result["workload_s"] = round(time.monotonic() - t0, 3)
    if result.get("stuck_workers"):
        abort_fuse_connection(result)
    if (base / "writer.times").exists():  # (also what a killed writer had written)
        raw = (base / "writer.times").read_bytes()
        times.frombytes(raw[:len(raw) // 16 * 16])
    result["writer_times"] = times
    code = finish(result, args, base, mnt, ok=ok)
    return 128 + interrupted.signum if interrupted else code


def copy_started(mnt: Path) -> bool:
    """Has the copy workload taken a tree the extraction published (then both did
    work)? Its directory holds workN/copyN/movedN from its first round on."""
    try:
        with os.scandir(mnt / "copy") as entries:
            return any(entries)
    except OSError:
        return False


def check_early_ends(procs: dict[str, subprocess.Popen[bytes]],
                     result: dict[str, Any]) -> None:
    """A workload that ends before it is told to stop is a problem (said once)."""
    for name, proc in procs.items():
        said = f"workload {name} ended early"
        if proc.poll() is not None and not any(p.startswith(said) for p in result["problems"]):
            result["problems"].append(f"{said} (exit status {proc.returncode})")
            log(result["problems"][-1])


def stop_worker(proc: subprocess.Popen[bytes], result: dict[str, Any]) -> None:
    """SIGKILL one worker this run started (its own process group). A worker stuck in a
    call the file system never answers cannot die: it is noted, not waited for."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        result.setdefault("stuck_workers", []).append(proc.pid)
        result["problems"].append(f"worker pid {proc.pid} stuck in {wchan(proc.pid)} after "
                                  f"SIGKILL (a file system call that is never answered)")


def abort_fuse_connection(result: dict[str, Any]) -> None:
    """Workers stuck in the mount hold it: abort this mount's FUSE connection (fusectl,
    if mounted) so that their calls fail and they die, and the unmount can go on."""
    conn = result.get("fuse_connection")
    abort = Path(f"/sys/fs/fuse/connections/{conn}/abort")
    if conn is None or not abort.exists():
        result["problems"].append("cannot abort the FUSE connection (fusectl is not mounted "
                                  "on /sys/fs/fuse/connections): stuck workers "
                                  f"{result['stuck_workers']} remain")
        return
    abort.write_text("1")
    result["problems"].append(f"aborted FUSE connection {conn} to free stuck workers "
                              f"{result['stuck_workers']}")
    time.sleep(1)


def stop_cluster(mnt: Path) -> str | None:
    """mlustre down, else fusermount3 -u, then -uz. None if all went well."""
    with critical():
        return LocalCluster(mnt, mnt.parent / "data").stop()


def finish(result: dict[str, Any], args: argparse.Namespace, base: Path, mnt: Path, *,
           ok: bool) -> int:
    _SIG["cleaning"] = True
    problem = stop_cluster(mnt)
    if problem:
        result["problems"].append(problem)
    log(f"cluster stopped{' (with problems)' if problem else ''}")
    times = result.pop("writer_times", array("d"))
    analyse(result, times, args)
    clean = ok and not result["summary"]["failed"]
    if clean:
        shutil.rmtree(base, ignore_errors=True)
    else:
        result["kept"] = str(base)
    report(result, times, args)
    if not clean:
        print(f"\nwork directory kept: {base} (server and client logs in {base / 'data'}, "
              f"workload logs and reports in {base})")
    print("OK" if clean else "FAIL", flush=True)
    return 0 if clean else 1


# ---- analysis and report ---------------------------------------------------------------
