"""bench/recovery.py - how long a crashed MDT takes to recover its clients.

N library-mode clients (an import, a lock client and an MDC each, no mount) plus the
cluster's own mount each make directories after the MDT's replay barrier and hold a
few locks; the MDT is then killed (`mlustre failover MNT MDT0000 --crash`). Reported
per N (default 1 and 50): the time from the new instance's start to every client
back to FULL (updates replayed in transno order, locks replayed), each client's own
recovery time (connect to FULL), and what the MDT says it replayed.
Run by `scripts/bench` after the barrier benchmark, or alone:
    scripts/bench recovery [--clients 1,50]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from ..fuse_client.imports import Import, ImportState
from ..fuse_client.ldlm import LockClient
from ..fuse_client.mdc import Mdc
from ..fuse_client.target_link import TargetLink
from ..localcluster.cluster import LocalCluster
from ..protocol import constants as C
from ..protocol.ldlm import LockType, Mode, ResId
from ..protocol.nid import Nid
from .barrier import client_counts, sh

ROOT_INO = 1
CRED = [0, 0, []]
UPDATES = 4  # directories each client makes after the barrier
LOCKS = 3  # locks each client holds


PROG = "scripts/bench recovery"


def log(msg: str) -> None:
    print(f"[recovery-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def status_lines(mnt: str) -> dict[str, str]:
    out = sh("lctl", "-m", mnt, "get_param", "-n", "mdt.*.recovery_status")
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


async def run_once(target: str, nid: Nid, n: int, mnt: str, tag: str,
                   key: bytes | None) -> dict[str, Any]:
    clients: list[tuple[Import, LockClient, Mdc]] = []
    async with trio.open_nursery() as nursery:

        async def one(i: int) -> None:
            link = TargetLink(target, "mdt", [nid], client_uuid=f"rbench-{tag}-{i}",
                              barrier=False, flags=C.OBD_CONNECT_TRANSNO, connect_timeout=30,
                              request_timeout=120, key=key)
            lc, imp, mdc = link.locks, link.imp, link.mdc
            assert mdc is not None
            await nursery.start(lc.run)
            await imp.connect(nursery, first_timeout=60)
            clients.append((imp, lc, mdc))

        async with trio.open_nursery() as starting:
            for i in range(n):
                starting.start_soon(one, i)
        await trio.sleep(0.5)  # (the MDT writes down its clients)
        await trio.to_thread.run_sync(
            lambda: sh("lctl", "-m", mnt, "set_param", "mdt.*.replay_barrier=1"))
        for k, (_, lc, mdc) in enumerate(clients):
            for j in range(UPDATES):
                made = await mdc.mkdir(CRED, ROOT_INO, f"{tag}-{k}-{j}".encode(), 0o755)
                if j < LOCKS:
                    await lc.enqueue(ResId(made["attr"]["ino"], 0, 0, 0), LockType.IBITS,
                                     Mode.PR, 0x3)
        before = {id(imp): imp.conn_cnt for imp, _, _ in clients}
        out = await trio.to_thread.run_sync(
            lambda: json.loads(sh("failover", mnt, target.split("-")[-1], "--crash",
                                  "--json")))
        ready = time.monotonic()
        while not all(imp.conn_cnt > before[id(imp)] and imp.state is ImportState.FULL
                      for imp, _, _ in clients):
            await trio.sleep(0.002)
        all_full = time.monotonic() - ready
        times = [imp.recovery_time for imp, _, _ in clients]
        replayed_locks = sum(lc.stats["replayed"] for _, lc, _ in clients)
        status = await trio.to_thread.run_sync(lambda: status_lines(mnt))
        for imp, lc, _ in clients:
            await imp.close(C.MDS_DISCONNECT)
            lc.close()
        nursery.cancel_scope.cancel()
    return {"clients": n, "failover_s": out.get("restart_s", out.get("seconds")),
            "ready_to_all_full_s": round(all_full, 3),
            "client_recovery_median_s": round(statistics.median(times), 3),
            "client_recovery_max_s": round(max(times), 3),
            "updates_replayed": int(status.get("replayed_requests", 0)),
            "locks_replayed_by_clients": replayed_locks,
            "mdt_status": status.get("status"),
            "completed_clients": status.get("completed_clients")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,50",
                    help="numbers of library clients (comma-separated)")
    ap.add_argument("--json", dest="json_path", help="write the results there as well")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's directory (logs)")
    args = ap.parse_args(argv)
    counts = client_counts(ap, args.clients, 1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="mlustre-recovery-bench-"))
    os.chmod(work, 0o755)
    mnt = work / "mnt"
    mnt.mkdir()
    cluster = LocalCluster(mnt, work / "data")
    results: list[dict[str, Any]] = []
    bad = False
    try:
        cluster.up("--fsname", "rbench",
           "--osts", "1", "--recovery-window", "60", timeout=120)
        status = json.loads(sh("status", str(mnt), "--json"))
        mdt = next(s for s in status["servers"] if s["kind"] == "mdt")
        for n in counts:
            log(f"{n} library clients (+ the mount): {UPDATES} updates and {LOCKS} locks "
                "each after the replay barrier, then kill -9 of the MDT")
            status = json.loads(sh("status", str(mnt), "--json"))
            mdt = next(s for s in status["servers"] if s["kind"] == "mdt")
            r = trio.run(run_once, mdt["name"], Nid.parse(mdt["nid"]), n, str(mnt), f"n{n}",
                         cluster.key())
            log(f"  every client FULL {r['ready_to_all_full_s']:.3f}s after the new MDT was "
                f"ready; per client median {r['client_recovery_median_s']:.3f}s, max "
                f"{r['client_recovery_max_s']:.3f}s; {r['updates_replayed']} updates and "
                f"{r['locks_replayed_by_clients']} locks replayed; MDT {r['mdt_status']} "
                f"({r['completed_clients']})")
            bad |= r["mdt_status"] != "COMPLETE"
            results.append(r)
    finally:
        cluster.stop()
        if args.keep:
            log(f"kept {work}")
        elif not os.path.ismount(mnt):
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
