"""Benchmark of mlustre against a local tmpfs and a Python passthrough FUSE filesystem.

Targets (all measured in the same run, in this order unless --only says otherwise):
  mlustre      a fresh local cluster (`mlustre up MNT --osts 2`), bench dir striped over
               both OSTs when `setfattr -n lustre.lov` works
  tmpfs        a directory on /dev/shm (or on a tmpfs mounted for the run)
  passthrough  mlustre/bench/passthrough.py (pyfuse3) over a tmpfs directory: the Python-FUSE floor

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
  shell   the shell-tool steps of shellbench.sh (the lead's peer benchmark), timed each:
          untar, cp -a, ls -lR (cold), tar -c (cold), git clone, git status (cold),
          rm -rf; --shell-scale tiny (~190 entries), small (/usr/include/linux, a
          repository of it) or full (linux + c++, a repository of /usr/include); see
          mlustre/bench/shell.py. Reported in seconds per step with the ratio
          mlustre/tmpfs, and as a JSON last line.

--only takes targets and/or benchmarks (write, read, create, stat, unlink, reread,
pingpong, shell; seq = write,read; meta = create,stat,unlink), e.g. `--only reread`,
`--only mlustre,pingpong`, `--only shell,mlustre,tmpfs --shell-scale small`. A
benchmark pulls in what it needs (read: write; stat: create; create and unlink go
together). Default: every target, every benchmark but shell (run it with --only).

Exits non-zero when any phase, setup step or verification fails (stale reads in
pingpong are reported, not a failure).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..localcluster.mounts import mounts_under
from .common import (
    ALIASES,
    BARS,
    BLOCK,
    MIB,
    NEEDS,
    PHASES,
    PP_RECORD,
    PP_WARMUP,
    ROOT,
    TARGETS,
    BenchError,
    Watchdog,
    fuse_unmount,
    log,
)
from .phases import (
    drop_caches,
    phase_create,
    phase_read,
    phase_reread,
    phase_stat,
    phase_unlink,
    phase_write,
)
from .pingpong import phase_pingpong
from .report import host_info, report, warmup
from .shell import SCALES, ShellInputs, json_line, phase_shell, shell_summary
from .targets import MlustreTarget, PassthroughTarget, Target, TmpfsTarget


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
        elif "steps" in r:
            log(f"[{t.name}] {name}: " + ", ".join(f"{k} {v:.2f} s"
                                                  for k, v in r["steps"].items()))
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
    phase("shell", lambda: phase_shell(d, args.shell_inputs, args.phase_timeout))
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


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
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
    ap.add_argument("--shell-scale", choices=sorted(SCALES), default="full",
                    help="shell phase: tiny (~190 entries), small (/usr/include/linux) or "
                         "full (linux + c++, a repository of /usr/include); default full")
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
    ap.add_argument("--privacy", action="store_true",
                    help="start the mlustre cluster with `up --privacy` (every message "
                         "encrypted with AES-GCM, not only authenticated), to measure what "
                         "privacy costs")
    ap.add_argument("--data-base", default=None,
                    help="directory for mlustre server data (default: the temporary dir "
                         "under $TMPDIR or /tmp)")
    args = ap.parse_args(argv)
    if args.privacy and args.no_auth:
        ap.error("--privacy needs authentication (not with --no-auth)")
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
    args.benches = [b for b in PHASES if b in benches] or [b for b in PHASES if b != "shell"]
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
    args.shell_inputs = ShellInputs(args.shell_scale)
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
                 "block_bytes": BLOCK, "shell_scale": args.shell_scale},
        "units": {"write": "MB/s (1e6 B/s)", "read": "MB/s (1e6 B/s)", "create": "ops/s",
                  "stat": "ops/s", "unlink": "ops/s", "reread": "MB/s (1e6 B/s), median pass",
                  "pingpong": "us per hand-off (median_us, p99_us); stale_reads count",
                  "shell": "seconds per step (steps, seconds = their sum)"},
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
        if "shell" in args.benches:
            args.shell_inputs.prepare()
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
            leftover = mounts_under(work)
            for m in leftover:
                results["errors"].append(f"{m} still mounted at the end")
                fuse_unmount(m)
            if not mounts_under(work):
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
        if "shell" in args.benches:
            print(json_line(shell_summary(results), ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
