"""bench/barrier.py - what the SIR barrier costs, on a local cluster.

1. Scale: N library-mode clients (an import, a lock client and a writer gate each,
   no mount) hold the barrier's CR lock on the MDT (or an OST); `barrier_freeze`
   calls every one back and waits until each has drained, committed and given the
   lock back. Reported: the freeze time per N (default 200 and 1000), and the thaw
   until every client's gate is open again.
2. Stall: a mount with 64 MiB dirty in its cache and a writer appending 4 KiB
   records (fsync every 16); one controlled failover of the OST holding both. Reported: the
   barrier's freeze time and flushed bytes, the whole failover time (freeze, stop,
   start), and the writer's longest pause, against the writer's median gap.

Peak RSS of this process (the clients), and of each server, is reported as well.
Run by `scripts/bench` after the I/O benchmarks, or alone:
    scripts/bench barrier [--clients 200,1000] [--dirty-mb 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

from ..fuse_client.barrier import Barrier, GateState
from ..fuse_client.target_link import TargetLink
from ..localcluster.cluster import LocalCluster, checked, run_cli
from ..protocol import constants as C
from ..protocol.nid import Nid

PROG = "scripts/bench barrier"


def log(msg: str) -> None:
    print(f"[barrier-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*args: str, timeout: float = 180) -> str:
    """`mlustre ARGS`, its stdout (ClusterError if it failed)."""
    return checked(run_cli(args, timeout=timeout))


def rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of a process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---- 1. the barrier across N library clients ----------------------------------------

async def scale_run(target: str, kind: str, nid: Nid, n: int, mnt: str,
                    key: bytes | None) -> dict[str, Any]:
    barriers: list[Barrier] = []
    async with trio.open_nursery() as nursery:
        t0 = time.monotonic()

        async def one(i: int) -> None:
            link = TargetLink(target, kind, [nid], client_uuid=f"bench-{n}-{i}",
                              flags=C.OBD_CONNECT_UPDATE_LOCK, connect_timeout=30,
                              request_timeout=60, key=key)
            lc, imp, b = link.locks, link.imp, link.barrier
            assert b is not None
            await nursery.start(lc.run)
            await nursery.start(b.run)
            await imp.connect(nursery, first_timeout=60)
            barriers.append(b)

        async with trio.open_nursery() as starting:
            for i in range(n):
                starting.start_soon(one, i)
        while not all(b.state is GateState.OPEN for b in barriers):
            await trio.sleep(0.05)
        connected = time.monotonic() - t0
        freeze = await trio.to_thread.run_sync(
            lambda: json.loads(sh("lctl", "-m", mnt, "barrier_freeze", target, "60",
                                  "--json"))[0]["frozen"])
        t1 = time.monotonic()
        await trio.to_thread.run_sync(lambda: sh("lctl", "-m", mnt, "barrier_thaw", target))
        while not all(b.state is GateState.OPEN for b in barriers):
            await trio.sleep(0.005)
        reopened = time.monotonic() - t1
        for b in barriers:
            await b.imp.close(C.MDS_DISCONNECT if kind == "mdt" else C.OST_DISCONNECT)
            b.locks.close()
            b.close()
    return {"clients": n, "mount_clients": freeze["clients"] - n, "connect_s": round(connected, 3),
            "freeze_s": round(freeze["freeze_s"], 4), "evicted": freeze["evicted"],
            "thaw_to_all_open_s": round(reopened, 4)}


# ---- 2. the writer stall of one controlled failover with dirty data -------------------

def stall_run(mnt: Path, dirty_mb: int) -> dict[str, Any]:
    stop = threading.Event()
    stamps: list[float] = []
    errors: list[str] = []
    d = mnt / "stall"
    d.mkdir()
    sh("lfs", "setstripe", "-c", "1", "-i", "0", str(d))  # its files go to OST0000

    def writer() -> None:
        try:
            with open(d / "records", "wb", buffering=0) as f:
                rec = b"r" * 4096
                n = 0
                while not stop.is_set():
                    f.write(rec)
                    n += 1
                    if n % 16 == 0:  # durable every 64 KiB: it waits for the OST
                        os.fsync(f.fileno())
                    stamps.append(time.monotonic())
                    time.sleep(0.001)
        except OSError as e:
            errors.append(str(e))

    # Dirty data waits for the periodic write-back (1 s by default): make it wait
    # longer, so that the failover finds the 64 MiB still in the cache.
    sh("lctl", "-m", str(mnt), "set_param", "llite.*.flush_interval=60")
    time.sleep(1.1)
    w = threading.Thread(target=writer, daemon=True)
    w.start()
    time.sleep(1.0)
    # The dirty data comes from a process of its own that keeps the file open: a
    # close, even of a copy of the descriptor in a child that execs, flushes it.
    holder = subprocess.Popen([sys.executable, "-m", "mlustre.bench.dirtier", str(d / "dirty.bin"),
                               str(dirty_mb)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        t_dirty = time.monotonic()
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline().strip() != "dirty":
            raise RuntimeError("the dirtying process failed")
        dirtied = time.monotonic() - t_dirty
        dirty = int(sh("lctl", "-m", str(mnt), "get_param", "-n",
                       "osc.*OST0000*.cur_dirty_bytes"))
        t0 = time.monotonic()
        out = json.loads(sh("failover", str(mnt), "OST0000", "--json"))
        t1 = time.monotonic()
        holder.stdin.write("close\n")
        holder.stdin.flush()
        if holder.wait(timeout=60):
            errors.append(f"the dirtying process failed ({holder.returncode})")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        sh("lctl", "-m", str(mnt), "set_param", "llite.*.flush_interval=1")
    time.sleep(1.0)
    stop.set()
    w.join(10)
    gaps = [y - x for x, y in zip(stamps, stamps[1:], strict=False)]
    around = [y - x for x, y in zip(stamps, stamps[1:], strict=False) if y >= t0 - 0.5]
    return {"dirty_mb": dirty_mb, "dirtied_s": round(dirtied, 3), "dirty_at_failover": dirty,
            "failover_s": round(t1 - t0, 3), "barrier": out.get("barrier"),
            "writer_longest_stall_s": round(max(around, default=0.0), 3),
            "writer_median_gap_ms": round(statistics.median(gaps) * 1000, 3) if gaps else None,
            "writer_records": len(stamps), "writer_errors": errors}


# ---- main -----------------------------------------------------------------------------


def client_counts(ap: argparse.ArgumentParser, text: str, most: int) -> list[int]:
    """The numbers of library clients of a scale run (`--clients 200,1000`), each in
    [1, most]; a usage error (exit 2) otherwise."""
    try:
        counts = [int(x) for x in text.split(",") if x]
    except ValueError:
        ap.error("--clients takes integers separated by commas, e.g. 1,50")
    if not counts or any(n <= 0 or n > most for n in counts):
        ap.error(f"--clients between 1 and {most} each")
    return counts

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="200,1000",
                    help="numbers of library clients for the scale runs (comma-separated)")
    ap.add_argument("--target", default="MDT0000", help="target frozen in the scale runs")
    ap.add_argument("--dirty-mb", type=int, default=64, help="dirty data at the failover")
    ap.add_argument("--json", dest="json_path", help="write the results there as well")
    args = ap.parse_args(argv)
    counts = client_counts(ap, args.clients, 5000)
    if args.dirty_mb <= 0:
        ap.error("--dirty-mb must be positive")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = max(counts, default=0) + 64
    if hard < need:
        ap.error(f"{max(counts)} clients need {need} open files; the limit is {hard}")
    work = Path(tempfile.mkdtemp(prefix="mlustre-barrier-bench-"))
    os.chmod(work, 0o755)
    mnt = work / "mnt"
    mnt.mkdir()
    cluster = LocalCluster(mnt, work / "data")
    results: dict[str, Any] = {"scale": [], "stall": None}
    try:
        cluster.up("--fsname", "bbench",
           "--osts", "2", timeout=120)
        status = json.loads(sh("status", str(mnt), "--json"))
        servers = {s["name"].split("-", 1)[1]: s for s in status["servers"]}
        tgt = servers[args.target.upper()]
        for n in counts:
            log(f"scale: {n} library clients on {tgt['name']}")
            r = trio.run(scale_run, tgt["name"], tgt["kind"], Nid.parse(tgt["nid"]), n,
                         str(mnt), cluster.key())
            log(f"  freeze {r['freeze_s']:.3f}s across {r['clients']} clients (+ the mount), "
                f"{r['evicted']} evicted; every gate open {r['thaw_to_all_open_s']:.3f}s "
                f"after the thaw")
            results["scale"].append(r)
        log(f"stall: controlled failover of OST0000 with {args.dirty_mb} MiB dirty")
        results["stall"] = s = stall_run(mnt, args.dirty_mb)
        b = s["barrier"] or {}
        log(f"  {s['dirty_at_failover'] / 2**20:.1f} MiB dirty for OST0000 when the failover "
            f"began; failover {s['failover_s']:.3f}s (barrier {b.get('freeze_s', 0):.3f}s, "
            f"{b.get('flushed_bytes', 0) / 2**20:.1f} MiB flushed); writer's longest stall "
            f"{s['writer_longest_stall_s']:.3f}s (median gap {s['writer_median_gap_ms']} ms); "
            f"errors {len(s['writer_errors'])}")
        status = json.loads(sh("status", str(mnt), "--json"))
        results["peak_rss_mib"] = {"bench clients": round(rss_mib(os.getpid()), 1),
                                   **{s["name"]: round(rss_mib(s["pid"]), 1)
                                      for s in status["servers"]},
                                   **{f"client {c['mountpoint']}": round(rss_mib(c["pid"]), 1)
                                      for c in status["clients"]}}
        log("peak RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in
                                          results["peak_rss_mib"].items()))
    finally:
        cluster.stop()
        if not os.path.ismount(mnt):  # (logs are in the JSON report, if asked for)
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=1))
    bad = (results["stall"] and results["stall"]["writer_errors"]) or \
        any(r["evicted"] for r in results["scale"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
