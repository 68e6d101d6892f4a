"""soak.py - `scripts/netns-cluster soak`: the failover soak across hosts. Workloads run
on two client hosts (each its own network namespace and mount) while faults of every
kind hit the servers, one every --interval seconds, going round the targets:

  crash      kill -9 of the target's server, started again on the same host
  restart    controlled failover (SIGTERM: the SIR barrier is frozen first), same host
  partner    controlled failover onto the other host of the target's pair
  upgrade    controlled failover onto the other release (2.0 <-> 1.8), same host
  freeze     SIGSTOP of the server for --fault-seconds, then SIGCONT (a hung server)
  partition  the server's host cut off from every other host for --fault-seconds
  cable      the server's host's switch port down for --fault-seconds
  delay      50 ms (±10 ms) each way on the server's host's link for 2 x --fault-seconds
  loss       5% of the server's host's packets lost each way for 2 x --fault-seconds

Link faults stay shorter than the eviction timeout (ping_evict_timeout, 60 s; the
clients notice a dead connection after 15 s), so no client may see an error. Each
client runs mlustre.soak's workers (shell: tar x / verify / cp -a / mv / rm -rf of a
source tree; probe: 4 KiB write + fsync + read back every 0.1 s) in its own directory.
At the end, the shell workload's last tree of each client is verified through both
clients' mounts, and again after client1 was unmounted and mounted afresh (nothing
from its cache). Exit status 1 on any application error, failed fault or mismatch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..soak import make_source, tree_sums
from .driver import NetnsCluster, NetnsError, in_netns

KINDS = ("crash", "freeze", "partition", "delay", "loss", "restart", "partner", "upgrade",
         "cable")
LINK_KINDS = {"partition": ["partition"], "cable": ["link-down"],
              "delay": ["delay", "50ms", "10ms"], "loss": ["loss", "5%"]}


def log(msg: str) -> None:
    print(f"[netns-soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=120.0, help="seconds of workload")
    p.add_argument("--interval", type=float, default=8.0, help="seconds between faults")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"of: {', '.join(KINDS)}")
    p.add_argument("--fault-seconds", type=float, default=3.0,
                   help="how long a freeze, partition or pulled cable lasts (delay and "
                        "loss: twice as long); below the eviction timeout")
    p.add_argument("--source", default="/usr/include", help="tree for the shell workload")
    p.add_argument("--source-files", type=int, default=200)
    p.add_argument("--json", default="netns-soak.json", help="report file")
    p.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    p.add_argument("--base", help="an empty directory for the soak (cluster, logs, report "
                                  "data; default: a new one under $TMPDIR)")


def schedule(kinds: list[str], targets: list[str]) -> list[tuple[str, str]]:
    """One round of (target, fault kind): every kind once per len(kinds) faults (so a
    short soak still sees each kind), each on the next target, shifting target every
    round, until every kind has hit every target (the MGS has no partner: no `partner`
    for it). The soak goes round this list."""
    pairs = [(targets[(i + r) % len(targets)], k)
             for r in range(len(targets)) for i, k in enumerate(kinds)]
    return [(t, k) for t, k in pairs if not (k == "partner" and t == "MGS")]


def hit(c: NetnsCluster, target: str, kind: str, seconds: float,
        release: dict[str, str]) -> str:
    """One fault; returns what it did. Raises NetnsError if it could not be done."""
    host = c.state["servers"][target]["host"]
    if kind in LINK_KINDS:
        words = LINK_KINDS[kind]
        fault = c.add_fault([words[0], host, *words[1:]])
        try:
            time.sleep(seconds * (2 if kind in ("delay", "loss") else 1))
        finally:
            c.clear_fault(fault.id)
        return f"{fault.describe()}, lifted"
    if kind == "freeze":
        c.freeze(target, seconds)
        return f"{target} on {host} frozen {seconds:g} s"
    if kind == "upgrade":
        release[target] = "1.8" if release[target] == "2.0" else "2.0"
        return c.failover(target, "upgrade", release=release[target])
    return c.failover(target, kind)


def cmd_soak(args: argparse.Namespace) -> int:
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        print(f"netns-cluster soak: --kinds takes {', '.join(KINDS)}", file=sys.stderr)
        return 2
    if args.duration <= 0 or args.interval <= 0 or not 0 < args.fault_seconds < 30:
        print("netns-cluster soak: positive --duration/--interval, --fault-seconds below 30",
              file=sys.stderr)
        return 2
    base = (Path(args.base).resolve() if args.base
            else Path(tempfile.mkdtemp(prefix="mlustre-netns-soak-")))
    base.mkdir(parents=True, exist_ok=True)

    def stop(signum: int, frame: Any) -> None:  # SIGTERM: clean up as on any end
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    # (a cluster of its own, in a fresh directory: never one that `up` made in --dir)
    c = NetnsCluster.create(base / "cluster", fsname="soak", clients=2)
    result: dict[str, Any] = {"duration_s": args.duration, "interval_s": args.interval,
                              "workloads": {}, "faults": [], "verification": {}}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        c.up()
        log(f"cluster up: {c.spec}; hosts {', '.join(c.topo.hosts)} (dir {c.base})")
        make_source(base, Path(args.source), args.source_files)
        started = time.monotonic()
        for client in c.topo.client_hosts:
            for work in ("shell", "probe"):
                name = f"{client}-{work}"
                wdir = Path(c.state["mounts"][client]) / name
                wdir.mkdir()
                argv = [sys.executable, "-m", "mlustre.soak", "--worker", work, "--dir",
                        str(wdir), "--out", str(base / f"{name}.json"), "--seconds",
                        str(args.duration), "--source", str(base)]
                procs[name] = subprocess.Popen(in_netns(c.topo.host(client).netns, argv),
                                               start_new_session=True)
        log(f"workloads: {', '.join(procs)}; a fault every {args.interval:g} s")
        targets = c.topo.start_order()[::-1]  # MDT, OSTs, MGS
        plan = itertools.cycle(schedule(kinds, targets))
        release = dict.fromkeys(targets, "2.0")
        next_at = started + args.interval
        while True:
            time.sleep(max(0.0, min(next_at, started + args.duration) - time.monotonic()))
            if time.monotonic() >= started + args.duration:
                break
            target, kind = next(plan)
            t0 = time.monotonic()
            try:
                message, ok = hit(c, target, kind, args.fault_seconds, release), True
            except (NetnsError, subprocess.SubprocessError, OSError) as e:
                message, ok = str(e), False
            entry = {"at_s": round(t0 - started, 2), "target": target, "kind": kind,
                     "ok": ok, "seconds": round(time.monotonic() - t0, 2), "message": message}
            result["faults"].append(entry)
            log(f"{kind} {target}: {message}")
            next_at = max(next_at + args.interval, time.monotonic() + 1)
        for name, proc in procs.items():
            try:
                proc.wait(timeout=args.duration + 600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out = base / f"{name}.json"
            result["workloads"][name] = (json.loads(out.read_text()) if out.exists() else
                                         {"ops": 0, "errors": 1,
                                          "notes": [f"worker died ({proc.returncode})"]})
        result["verification"] = verify(c, base, result["workloads"])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        problems = c.down()
        for p in problems:
            log(f"teardown: {p}")
    return report(result, args, base)


def verify(c: NetnsCluster, base: Path, workloads: dict[str, Any]) -> dict[str, Any]:
    """Every client's last shell tree through every client's mount, then through a fresh
    mount of client1 (its cache gone): all identical to the source."""
    expected = json.loads((base / "source.sums").read_text())
    checks: dict[str, bool] = {}
    trees = {name.split("-")[0]: w.get("final_tree") for name, w in workloads.items()
             if name.endswith("-shell")}

    def check(label: str) -> None:
        for writer, tree in trees.items():
            if not tree:
                checks[f"{writer} (no tree){label}"] = False
                continue
            rel = Path(tree).relative_to(c.state["mounts"][writer])
            for reader, mnt in c.state["mounts"].items():
                checks[f"{writer}'s tree read on {reader}{label}"] = (
                    tree_sums(Path(mnt) / rel) == expected)

    check("")
    first = c.topo.client_hosts[0]
    c.umount(first)
    c.mount(first)
    check(" after a fresh mount")
    return {"files": len(expected), "checks": checks, "identical": all(checks.values())}


def report(result: dict[str, Any], args: argparse.Namespace, base: Path) -> int:
    wl, faults = result["workloads"], result["faults"]
    errors = sum(w.get("errors", 0) for w in wl.values())
    failed = [f for f in faults if not f["ok"]]
    by_kind = {k: sum(1 for f in faults if f["kind"] == k and f["ok"]) for k in KINDS}
    v = result["verification"] or {}
    result["summary"] = {"application_errors": errors, "faults": len(faults),
                         "failed_faults": len(failed), "faults_by_kind": by_kind,
                         "ops": sum(w.get("ops", 0) for w in wl.values()),
                         "data_identical": v.get("identical")}
    print(f"\n{'workload':<16} {'ops':>8} {'errors':>7}  notes")
    for name, w in wl.items():
        note = (f"longest stall {w['longest_stall_s']:.2f} s" if "longest_stall_s" in w
                else f"{w.get('rounds', 0)} rounds")
        if w.get("notes"):
            note += "; " + w["notes"][0]
        print(f"{name:<16} {w.get('ops', 0):>8} {w.get('errors', 0):>7}  {note}")
    print(f"\nfaults: {len(faults)} ({', '.join(f'{n} {k}' for k, n in by_kind.items() if n)})"
          f", failed: {len(failed)}")
    for f in failed:
        print(f"  failed: {f['kind']} {f['target']}: {f['message']}")
    for label, ok in v.get("checks", {}).items():
        print(f"{'identical' if ok else 'MISMATCH':<10} {label} ({v['files']} files)")
    print(f"application errors: {errors}")
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"report: {args.json}")
    bad = bool(errors or failed or not v.get("identical"))
    print("FAIL" if bad else "OK")
    if not bad and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"kept {base}")
    return 1 if bad else 0
