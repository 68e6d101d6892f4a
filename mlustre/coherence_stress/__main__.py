"""coherence_stress - many rounds of clients writing one file at once, then a check.

Starts a local cluster and mounts it --clients times (each mount its own client
process), in a directory striped over every OST (64 KiB stripes). Each round,
one process per mount works on a fresh shared file, all starting together:

* rmw:    each overwrites its own 16-byte records, interleaved with the others',
          reading the file before every write (PR then PW on one file, through a
          buffered read-write handle), and appends a line to a shared O_APPEND log
          every third record;
* blocks: each owns every --clients-th 4 KiB block of a 4 MiB file and writes
          random pieces inside its blocks (partial chunks), reads random ranges and
          sometimes fsyncs.

After each round every mount reads the file back: every record or block must be
what its owner wrote last, and the log must hold every line once. Reports wrong
rounds, failed workers (EIO after an eviction) and the clients' lock counters.
    scripts/coherence-stress [--clients 3] [--rounds 20] [--workload rmw|blocks|both]
Exit status 1 if anything was lost, wrong or failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..localcluster.cluster import LocalCluster
from .workers import BLOCK, BLOCKS_SIZE


def run_round(kind: str, argv_of: list[list[str]], timeout: float) -> list[str | None]:
    """Start one worker per argv, let them go together; each one's "done" payload, or
    None for a worker that failed (its stderr is printed)."""
    procs = [subprocess.Popen([sys.executable, "-m", "mlustre.coherence_stress.workers", kind,
                               *argv], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in argv_of]
    out: list[str | None] = []
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None and p.stderr is not None
            line = p.stdout.readline().strip()
            rc = p.wait(timeout)
            if rc or not line.startswith("done "):
                print(f"  worker failed (exit {rc}): {p.stderr.read().strip()[-500:]}")
                out.append(None)
            else:
                out.append(line[5:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def rmw_round(dirs: list[Path], r: int, records: int) -> int:
    k = len(dirs)
    name, log = f"rmw{r}", f"log{r}"
    want = b"".join(bytes([65 + me]) * 16 for me in range(k)) * 256
    (dirs[0] / name).write_bytes(bytes(len(want)))
    (dirs[0] / log).write_bytes(b"")
    done = run_round("rmw", [[str(d / name), str(d / log), str(me), str(records), str(k)]
                           for me, d in enumerate(dirs)], 600)
    bad = sum(1 for d in done if d is None)
    lines = sorted(b"%d %06d\n" % (me, i) for me in range(k) for i in range(0, records, 3))
    for d in dirs:
        got = (d / name).read_bytes()
        wrong = [i // 16 for i in range(0, len(want), 16) if got[i:i + 16] != want[i:i + 16]]
        if wrong or len(got) != len(want):
            bad += 1
            print(f"  {d}: {len(wrong)} wrong records (first {wrong[:5]}), {len(got)} bytes")
        if sorted((d / log).read_bytes().splitlines(keepends=True)) != lines:
            bad += 1
            print(f"  {d}: the O_APPEND log lost or doubled lines")
    return bad


def blocks_round(dirs: list[Path], r: int, ops: int) -> int:
    k = len(dirs)
    name = f"blocks{r}"
    (dirs[0] / name).write_bytes(bytes(BLOCKS_SIZE))
    done = run_round("blocks", [[str(d / name), str(me), str(ops), str(k), str(r * 100 + me)]
                              for me, d in enumerate(dirs)], 1200)
    bad = sum(1 for d in done if d is None)
    want = bytearray(BLOCKS_SIZE)
    for payload in done:
        for b, v in json.loads(payload or "{}").items():
            want[int(b) * BLOCK:(int(b) + 1) * BLOCK] = bytes.fromhex(v)
    for d in dirs:
        got = (d / name).read_bytes()
        wrong = [i // BLOCK for i in range(0, BLOCKS_SIZE, BLOCK)
                 if got[i:i + BLOCK] != want[i:i + BLOCK]]
        if wrong or len(got) != BLOCKS_SIZE:
            bad += 1
            print(f"  {d}: {len(wrong)} wrong blocks (first {wrong[:5]}), {len(got)} bytes")
    return bad


def lock_counters(cluster: LocalCluster) -> dict[str, int]:
    """Lock give-back counters summed over every client of the cluster's filesystem."""
    out = cluster.lctl("get_param", "llite.*.stats")
    keys = ("revokes", "revokes_forced", "revoke_borrowed_io",
            "kernel_invalidations_left_running")
    totals = dict.fromkeys(keys, 0)
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in totals and parts[1].isdigit():
            totals[parts[0]] += int(parts[1])
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(prog="coherence-stress", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=3, help="mounts (client processes)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workload", choices=("rmw", "blocks", "both"), default="both")
    ap.add_argument("--records", type=int, default=300, help="rmw: records per worker")
    ap.add_argument("--ops", type=int, default=1000, help="blocks: operations per worker")
    ap.add_argument("--osts", type=int, default=2)
    args = ap.parse_args()
    if not 2 <= args.clients <= 16 or args.rounds < 1 or args.osts < 1:
        ap.error("--clients is 2-16, --rounds and --osts at least 1")
    work = Path(tempfile.mkdtemp(prefix="mlustre-stress-"))
    mnts = [work / f"m{i}" for i in range(args.clients)]
    for m in mnts:
        m.mkdir()
    cluster = LocalCluster(mnts[0], work / "data")
    bad = 0
    try:
        cluster.up("--osts", str(args.osts), "--fsname", "stress", timeout=180)
        for m in mnts[1:]:
            cluster.mount(m, timeout=180)
        (mnts[0] / "d").mkdir()
        cluster.lfs("setstripe", "-c", "-1", "-S", "65536", str(mnts[0] / "d"))
        dirs = [m / "d" for m in mnts]
        kinds = ["rmw", "blocks"] if args.workload == "both" else [args.workload]
        start = time.monotonic()
        for r in range(args.rounds):
            for kind in kinds:
                t = time.monotonic()
                n = (rmw_round(dirs, r, args.records) if kind == "rmw"
                     else blocks_round(dirs, r, args.ops))
                bad += n
                print(f"round {r} {kind}: {'WRONG' if n else 'ok'} in "
                      f"{time.monotonic() - t:.1f}s", flush=True)
        print(f"\n{args.rounds} rounds of {'+'.join(kinds)} with {args.clients} clients "
              f"in {time.monotonic() - start:.0f}s: {bad} wrong or failed")
        print(f"lock counters of the clients together: {lock_counters(cluster)}")
        evicted = sum(text.count(": evicting client ")
                      for text in (p.read_text(errors="replace")
                                   for p in (work / "data").glob("*.log")))
        print(f"clients evicted (server logs): {evicted}")
        bad += evicted
    finally:
        cluster.down()
        if bad:
            print(f"logs kept in {work / 'data'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("OK" if not bad else "FAILED")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
