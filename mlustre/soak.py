"""soak.py - run workloads on a fresh local cluster while its servers are
restarted and killed, and report whether any application saw an error.

Started by scripts/failover-soak (which bootstraps first): `python -m mlustre.soak`;
the cluster is a LocalCluster (mlustre/localcluster/). Workloads, each in its own
directory on the mount and its own process:

  shell    extract a tar of a source tree, verify every checksum, cp -a, mv, rm -rf
  probe    every 0.1 s: write 4 KiB, fsync, stat, read back; its slowest round is
           the longest stall an application saw
  fio      random 4 KiB writes with crc32c verification (verify_backlog, fatal)
  dbench   the dbench file-server load, 2 clients
  posix    the project's own mount tests that need only a mount (shell tools: cp, tar,
           git, make, gcc...; a differential test against a local filesystem), once
  --cmd    any command (e.g. an external POSIX test suite), run once in a fresh
           directory; its exit status and output are kept

Meanwhile a failover loop restarts one target every --interval seconds, going round
the targets (MDT, OSTs, MGS) and the kinds (controlled restart through the SIR
barrier, kill -9, move to the failover partner: every MDT and OST is a pair on
127.0.0.2/127.0.0.3; upgrade: a controlled restart on the other release, 1.8 <-> 2.0,
so the targets go back and forth between releases). At the end the
shell workload's last tree is verified once more after a full restart of the cluster.
The report is a table and a JSON file; the exit status is 1 on any application error,
failed failover or mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from .localcluster.cluster import LocalCluster, force_unmount

ROOT = Path(__file__).resolve().parents[1]  # the repository (the posix workload's tests)
ALL_WORKLOADS = ("shell", "probe", "fio", "dbench", "posix")
POSIX_TESTS = ("mountpoint-tests/test_shell.py", "mountpoint-tests/test_differential.py")
KINDS = ("restart", "crash", "partner", "upgrade")
COMMAND_MARGIN = 480  # seconds a command may run past the soak's end before it is killed


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- workers (each runs in a child process: python -m mlustre.soak --worker NAME) ----

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_sums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def running(deadline: float, stop: Path | None) -> bool:
    """A worker goes on until its deadline or the soak's stop file, what comes first."""
    return time.monotonic() < deadline and not (stop is not None and stop.exists())


def worker_shell(workdir: Path, deadline: float, out: Path, base: Path,
                 stop: Path | None = None) -> None:
    """tar x, verify, cp -a, verify, mv, rm -rf: until the deadline (or stop file)."""
    tarball = base / "source.tar"
    expected = json.loads((base / "source.sums").read_text())
    ops = errors = rounds = 0
    notes: list[str] = []
    last = None
    while running(deadline, stop):
        rounds += 1
        d = workdir / f"round{rounds}"
        try:
            d.mkdir()
            with tarfile.open(tarball) as tf:
                tf.extractall(d, filter="tar")
            ops += len(expected)
            got = tree_sums(d)
            if got != expected:
                errors += 1
                bad = sorted(k for k in expected if got.get(k) != expected[k])[:5]
                notes.append(f"round {rounds}: extracted tree differs: {bad}")
            shutil.copytree(d, workdir / f"copy{rounds}", symlinks=True)
            ops += len(expected)
            if tree_sums(workdir / f"copy{rounds}") != expected:
                errors += 1
                notes.append(f"round {rounds}: copied tree differs")
            os.rename(workdir / f"copy{rounds}", workdir / f"moved{rounds}")
            shutil.rmtree(d)
            ops += len(expected) + 2
            if last is not None:
                shutil.rmtree(last)
            last = workdir / f"moved{rounds}"
        except OSError as e:
            errors += 1
            notes.append(f"round {rounds} ({time.strftime('%H:%M:%S')}): "
                         f"{type(e).__name__}: {e}")
    out.write_text(json.dumps({"ops": ops, "errors": errors, "rounds": rounds,
                               "notes": notes[:20],
                               "final_tree": str(last) if last else None}))


def worker_probe(workdir: Path, deadline: float, out: Path, stop: Path | None = None) -> None:
    """A small synchronous round every 0.1 s; the slowest is the longest stall."""
    path = workdir / "probe"
    ops = errors = 0
    worst = 0.0
    notes: list[str] = []
    i = 0
    while running(deadline, stop):
        i += 1
        data = hashlib.sha256(str(i).encode()).digest() * 128  # 4 KiB
        t0 = time.monotonic()
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                os.pwrite(fd, data, 0)
                os.fsync(fd)
                os.fstat(fd)
                if os.pread(fd, len(data), 0) != data:
                    errors += 1
                    notes.append(f"round {i}: read back other data")
            finally:
                os.close(fd)
            ops += 5
        except OSError as e:
            errors += 1
            notes.append(f"round {i}: {type(e).__name__}: {e}")
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.1)
    out.write_text(json.dumps({"ops": ops, "errors": errors, "longest_stall_s": worst,
                               "notes": notes[:20]}))


def worker_command(workdir: Path, deadline: float, out: Path, argv: list[str]) -> None:
    """An external program until it ends (or the deadline + a margin); exit status."""
    logf = workdir.parent / f"{workdir.name}.log"
    env = dict(os.environ)
    if len(argv) > 2 and argv[1:3] == ["-m", "pytest"]:
        env["MLUSTRE_TEST_MOUNT"] = str(workdir.parent)  # the mount itself
    with open(logf, "wb") as f:
        proc = subprocess.Popen(argv, cwd=workdir, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        try:
            # (A suite runs once, to its end: on a loaded machine that may be well past
            # the soak's duration; the margin only catches one that hangs.)
            rc = proc.wait(timeout=max(deadline - time.monotonic(), 0) + COMMAND_MARGIN)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = -9
    text = logf.read_text(errors="replace")
    out.write_text(json.dumps({"ops": count_ops(argv, text), "errors": 0 if rc == 0 else 1,
                               "exit_status": rc, "output_tail": text[-4000:],
                               "log": str(logf)}))


def count_ops(argv: list[str], text: str) -> int:
    """Operations a benchmark reports (fio: I/Os issued; dbench: operations), else 1."""
    if argv and argv[0] == "fio":
        total = 0
        for line in text.splitlines():  # "issued rwts: total=0,1234,0,0 short=..."
            if "issued rwts: total=" in line:
                total += sum(int(x) for x in line.split("total=")[1].split()[0].split(","))
        return total or 1
    if len(argv) > 2 and argv[1:3] == ["-m", "pytest"]:
        for line in reversed(text.splitlines()):  # "== 42 passed in 61.2s =="
            words = line.replace("=", " ").replace(",", " ").split()
            if "passed" in words:
                return int(words[words.index("passed") - 1])
        return 1
    if argv and argv[0] == "dbench":
        total = 0
        in_table = False
        for line in text.splitlines():  # " Operation      Count    AvgLat    MaxLat"
            fields = line.split()
            if fields[:2] == ["Operation", "Count"]:
                in_table = True
            elif in_table and len(fields) >= 2 and fields[1].isdigit():
                total += int(fields[1])
            elif in_table and fields and not fields[0].startswith("-"):
                in_table = False
        return total or 1
    return 1


def worker_main(args: argparse.Namespace) -> int:
    workdir, out = Path(args.dir), Path(args.out)
    deadline = time.monotonic() + args.seconds
    stop = Path(args.stop) if args.stop else None
    if args.worker == "shell":
        worker_shell(workdir, deadline, out, Path(args.source), stop)
    elif args.worker == "probe":
        worker_probe(workdir, deadline, out, stop)
    else:
        worker_command(workdir, deadline, out, json.loads(args.argv))
    return 0


# ---- the soak ----------------------------------------------------------------------

def ensure_packages(workloads: list[str]) -> None:
    missing = [w for w in ("fio", "dbench") if w in workloads and not shutil.which(w)]
    if missing:
        log(f"installing {' '.join(missing)} (Debian packages)")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       stdout=subprocess.DEVNULL)


def make_source(base: Path, source: Path, max_files: int) -> None:
    """A tarball of (part of) a real source tree, and its files' checksums."""
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.is_symlink()]
    files = files[:max_files]
    with tarfile.open(base / "source.tar", "w") as tf:
        for p in files:
            tf.add(p, arcname=str(p.relative_to(source)))
    (base / "source.sums").write_text(json.dumps(
        {str(p.relative_to(source)): sha256(p) for p in files}))


def command_for(workload: str, seconds: float, fio_size: str) -> list[str]:
    if workload == "fio":
        return ["fio", "--name=soak", "--directory=.", "--rw=randwrite", "--bs=4k",
                f"--size={fio_size}", "--numjobs=2", "--time_based",
                f"--runtime={int(seconds)}", "--ioengine=psync", "--fsync=64",
                "--verify=crc32c", "--verify_backlog=256", "--verify_fatal=1",
                "--do_verify=1", "--group_reporting"]
    if workload == "dbench":
        return ["dbench", "-D", ".", "-t", str(int(seconds)), "2"]
    if workload == "posix":
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                *(str(ROOT / t) for t in POSIX_TESTS)]
    raise ValueError(workload)


def soak(args: argparse.Namespace) -> int:
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(workloads) - set(ALL_WORKLOADS)
    if unknown:
        print(f"failover-soak: unknown workload(s) {', '.join(sorted(unknown))} "
              f"(known: {', '.join(ALL_WORKLOADS)})", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        print(f"failover-soak: --kinds takes {', '.join(KINDS)}", file=sys.stderr)
        return 2
    if args.duration <= 0 or args.interval <= 0:
        print("failover-soak: --duration and --interval must be positive", file=sys.stderr)
        return 2
    if args.failovers < 0:
        print("failover-soak: --failovers must not be negative", file=sys.stderr)
        return 2
    # With --failovers, a loaded machine (slower failovers) lengthens the soak rather
    # than thinning it out; up to 3 x --duration.
    cap = args.duration * (3 if args.failovers else 1)
    ensure_packages(workloads)
    base = Path(tempfile.mkdtemp(prefix="mlustre-soak-", dir=args.base))
    os.chmod(base, 0o755)

    def stop(signum: int, frame: Any) -> None:  # SIGTERM: clean up as on any end
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    mnt, data = base / "mnt", base / "data"
    mnt.mkdir()
    cluster = LocalCluster(mnt, data)
    result: dict[str, Any] = {"duration_s": args.duration, "interval_s": args.interval,
                              "workloads": {}, "failovers": [], "verification": None}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ok = False
    try:
        up = cluster.up("--osts", str(args.osts), "--fsname", "soak", "--failover-pairs",
                        timeout=120, check=False)
        if up.returncode != 0:
            print(up.stdout + up.stderr, file=sys.stderr)
            return 1
        log(f"cluster up at {mnt} (data and logs in {data})")
        make_source(base, Path(args.source), args.source_files)
        names = list(workloads) + (["cmd"] if args.cmd else [])
        stop_file = base / "stop"
        started = time.monotonic()
        for name in names:
            wdir = mnt / name
            wdir.mkdir()
            out = base / f"{name}.json"
            if name in ("shell", "probe"):
                extra = ["--source", str(base)]
            else:
                argv = (["bash", "-c", args.cmd] if name == "cmd"
                        else command_for(name, args.duration, args.fio_size))
                extra = ["--argv", json.dumps(argv)]
            worker = "command" if name not in ("shell", "probe") else name
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mlustre.soak", "--worker", worker, "--dir", str(wdir),
                 "--out", str(out), "--seconds", str(cap), "--stop", str(stop_file), *extra],
                start_new_session=True)
        log(f"workloads: {', '.join(names)}; failover every {args.interval:g} s for "
            f"{args.duration:g} s" + (f" (at least {args.failovers} failovers)"
                                     if args.failovers else ""))
        targets = ["MDT0000"] + [f"OST{i:04X}" for i in range(args.osts)] + ["MGS"]
        # (The MGS has no failover partner: the clients' mount spec names one NID.)
        schedule = itertools.cycle([(t, k) for k in kinds for t in targets
                                    if not (k == "partner" and t == "MGS")])
        next_at = started + args.interval
        release = dict.fromkeys(targets, "2.0")

        def more() -> bool:
            elapsed = time.monotonic() - started
            return elapsed < args.duration or (
                len(result["failovers"]) < args.failovers and elapsed < cap)

        while more():
            end = started + (args.duration if len(result["failovers"]) >= args.failovers
                             else cap)
            time.sleep(max(0.0, min(next_at, end) - time.monotonic()))
            if not more():
                break
            target, kind = next(schedule)
            t0 = time.monotonic()
            if kind == "upgrade":  # to the other release, and back the next time round
                release[target] = "2.0" if release[target] == "1.8" else "1.8"
                fo = cluster.failover(target, kind, release=release[target])
            else:
                fo = cluster.failover(target, kind)
            entry = {"at_s": round(t0 - started, 2), "target": target, "kind": kind,
                     "ok": fo.returncode == 0, "seconds": round(time.monotonic() - t0, 3),
                     "message": (fo.stdout or fo.stderr).strip()}
            result["failovers"].append(entry)
            log(f"{kind} {target}: {entry['message']}")
            next_at += args.interval
        stop_file.touch()  # the shell and probe workers end with the failovers
        result["soak_s"] = round(time.monotonic() - started, 1)
        for name, proc in procs.items():
            try:
                proc.wait(timeout=cap + 600)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            path = base / f"{name}.json"
            result["workloads"][name] = (json.loads(path.read_text()) if path.exists()
                                         else {"ops": 0, "errors": 1,
                                               "notes": [f"worker died ({proc.returncode})"]})
        # The shell workload's last tree, once more after a full restart of the cluster.
        final = result["workloads"].get("shell", {}).get("final_tree")
        if final:
            down = cluster.down()
            again = cluster.up("--osts", str(args.osts), "--fsname", "soak", timeout=120,
                               check=False)
            expected = json.loads((base / "source.sums").read_text())
            same = (down.returncode == 0 and again.returncode == 0
                    and tree_sums(Path(final)) == expected)
            result["verification"] = {"tree": final, "files": len(expected),
                                      "identical_after_restart": same}
            if down.returncode or again.returncode:
                result["verification"]["restart_output"] = (
                    down.stdout + down.stderr + again.stdout + again.stderr)[-2000:]
        ok = True
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if cluster.down().returncode != 0:
            force_unmount(mnt)
        clean = ok and not any(w.get("errors") for w in result["workloads"].values())
        if not args.keep and clean:
            shutil.rmtree(base, ignore_errors=True)
        elif ok:
            log(f"kept {base} (logs of the servers and the client are in data/)")
    return report(result, args)


def report(result: dict[str, Any], args: argparse.Namespace) -> int:
    wl = result["workloads"]
    fos = result["failovers"]
    errors = sum(w.get("errors", 0) for w in wl.values())
    failed_fo = [f for f in fos if not f["ok"]]
    by_kind = {k: sum(1 for f in fos if f["kind"] == k and f["ok"]) for k in KINDS}
    stall = wl.get("probe", {}).get("longest_stall_s")
    verified = result["verification"]
    result["summary"] = {
        "application_errors": errors, "failovers": len(fos), "failed_failovers":
        len(failed_fo), "failovers_by_kind": by_kind, "longest_stall_s": stall,
        "ops": sum(w.get("ops", 0) for w in wl.values()),
        "data_verified": None if verified is None else verified["identical_after_restart"]}
    print()
    print(f"{'workload':<10} {'ops':>8} {'errors':>7}  notes")
    for name, w in wl.items():
        extra = ""
        if "exit_status" in w:
            extra = f"exit status {w['exit_status']}"
        if "longest_stall_s" in w:
            extra = f"longest stall {w['longest_stall_s']:.2f} s"
        if w.get("notes"):
            extra += ("; " if extra else "") + w["notes"][0]
        print(f"{name:<10} {w.get('ops', 0):>8} {w.get('errors', 0):>7}  {extra}")
    print(f"\nfailovers: {len(fos)} ({', '.join(f'{v} {k}' for k, v in by_kind.items())}),"
          f" failed: {len(failed_fo)}")
    if verified is not None:
        print(f"data verification after a full restart: "
              f"{'identical' if verified['identical_after_restart'] else 'MISMATCH'} "
              f"({verified['files']} files)")
    print(f"application errors: {errors}")
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"report: {args.json}")
    bad = errors or failed_fo or (verified is not None
                                  and not verified["identical_after_restart"])
    print("FAIL" if bad else "OK")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(prog="failover-soak", description="Workloads on a local cluster while its "
                                            "servers fail over.")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of soak")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between failovers")
    p.add_argument("--failovers", type=int, default=0,
                   help="at least this many failovers: go on past --duration until they "
                        "are done (at most 3 x --duration; fio and dbench keep their "
                        "--duration run time)")
    p.add_argument("--workloads", default="shell,probe,fio,dbench",
                   help=f"comma-separated, of: {', '.join(ALL_WORKLOADS)}")
    p.add_argument("--cmd", help="also run this shell command once, in a fresh directory on "
                                 "the mount (e.g. a POSIX test suite)")
    p.add_argument("--kinds", default="restart,crash,partner,upgrade",
                   help="failover kinds to go round: restart (controlled, through the "
                        "barrier), crash (kill -9), partner (the other server of the "
                        "target's failover pair), upgrade (controlled, onto the other "
                        "release: 2.0 -> 1.8 -> 2.0 ...)")
    p.add_argument("--osts", type=int, default=2)
    p.add_argument("--source", default="/usr/include", help="tree for the shell workload")
    p.add_argument("--source-files", type=int, default=400)
    p.add_argument("--fio-size", default="16m", help="fio file size per job")
    p.add_argument("--json", default="failover-soak.json", help="report file")
    p.add_argument("--keep", action="store_true", help="keep the cluster's data and logs")
    p.add_argument("--base", help="directory for the cluster's mount, data and logs "
                                  "(default: a new one under $TMPDIR)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--stop", help=argparse.SUPPRESS)
    p.add_argument("--argv", help=argparse.SUPPRESS)
    # (for a worker, --source is the soak's directory with source.tar and source.sums)
    args = p.parse_args()
    if args.worker:
        return worker_main(args)
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
