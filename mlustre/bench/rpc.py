"""bench/rpc.py - the cost of one RPC: loopback round trips between two processes.

`python -m mlustre.bench rpc [ARGS]` (or `python -m mlustre.bench.rpc`). A real MDT runs
in a child process (multiprocessing, spawn) on 127.0.0.1; this process connects to it
as a client does (protocol.session: the CONNECT handshake, the shared-key MAC when
authenticated) and times, for a few seconds each, requests of one kind:

  ping     OBD_PING: the RPC layer and the target's request driver, nothing else
  getattr  MDS_GETATTR of the root: adds the MDT's handler and one SQLite lookup
  create   MDS_REINT create of an empty file: an update (transno, savepoint, reply kept)

with 1 and with 8 concurrent callers on the one connection, authentication on and off.
Each case reports microseconds per round trip as a caller sees it and requests per
second in all. Every metadata operation of the filesystem is a chain of such round
trips, so this is the figure that multiplies them (docs/benchmarks.md "rpc").

Nothing here is specific to the tree it runs from: run it with PYTHONPATH pointing at
an older checkout (with this file copied in) to compare two versions in one sitting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import secrets
import stat
import sys
import tempfile
import time
from typing import Any

import trio

OPS = ("ping", "getattr", "create")
FS = "rpcbench"
_ROOT_CRED = [0, 0, []]


def serve_mdt(data_dir: str, key: bytes | None, conn: Any) -> None:
    """The server process: an MDT until `conn` says stop (or closes)."""
    import logging

    from ..servers.mdt.server import MdtServer

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        server = MdtServer(FS, 0, data_dir, auth_key=key, recovery_window=1.0)
        async with trio.open_nursery() as nursery:
            nid = await nursery.start(server.run)
            conn.send(nid)
            try:
                await trio.to_thread.run_sync(conn.recv)
            except EOFError:
                pass
            server.stop()

    trio.run(main)


def _request(op: str, n: int) -> tuple[int, dict[str, Any]]:
    from ..protocol import constants as C

    if op == "ping":
        return C.OBD_PING, {}
    if op == "getattr":
        return C.MDS_GETATTR, {"ino": 1}
    return C.MDS_REINT, {"op": C.REINT_CREATE, "cred": _ROOT_CRED, "parent": 1,
                         "name": b"f%d" % n, "mode": stat.S_IFREG | 0o644}


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def time_case(session: Any, op: str, callers: int, seconds: float,
                    counter: Any, server_pid: int, warmup: int = 50) -> dict[str, Any]:
    """Round trips of `op` by `callers` tasks for `seconds` (after `warmup` untimed ones
    per caller): microseconds per round trip (mean, as a caller sees it; and the
    median of single calls), requests per second in all, and the CPU time each side
    spent per request (steadier than wall time on a busy machine). `counter` numbers
    the requests of the session (unique file names)."""
    endpoint = session.endpoint
    done = 0
    lat: list[int] = []

    async def one() -> None:
        opc, body = _request(op, next(counter))
        reply = await endpoint.call(opc, body, timeout=30)
        if reply.status:
            raise RuntimeError(f"{op}: status {reply.status}: {reply.body.get('error')}")

    async def caller(deadline: float) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            t0 = time.perf_counter_ns()
            await one()
            lat.append(time.perf_counter_ns() - t0)
            done += 1

    async def warm() -> None:
        for _ in range(warmup):
            await one()

    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(warm)
    cpu, srv_cpu = _cpu_self(), _cpu_of(server_pid)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller, start + seconds)
    elapsed = time.perf_counter() - start
    cpu, srv_cpu = _cpu_self() - cpu, _cpu_of(server_pid) - srv_cpu
    lat.sort()
    timed = max(done, 1)
    return {"op": op, "callers": callers, "calls": done,
            "us_per_rtt": round(sum(lat) / timed / 1e3, 1),
            "median_us": round(lat[len(lat) // 2] / 1e3, 1) if lat else None,
            "req_per_s": round(done / elapsed) if elapsed else None,
            "client_cpu_us": round(cpu / timed * 1e6, 1),
            "server_cpu_us": round(srv_cpu / timed * 1e6, 1)}


async def run_client(nid: str, key: bytes | None, ops: list[str], callers: list[int],
                     seconds: float, server_pid: int) -> list[dict[str, Any]]:
    from ..protocol import constants as C
    from ..protocol.nid import Nid
    from ..protocol.session import Session

    out = []
    counter = iter(range(1 << 62))
    async with trio.open_nursery() as nursery:
        session = await Session.open(nursery, [Nid.parse(nid)], target=f"{FS}-MDT0000",
                                     connect_opc=C.MDS_CONNECT, key=key)
        try:
            for op in ops:
                for n in callers:
                    out.append(await time_case(session, op, n, seconds, counter, server_pid))
        finally:
            await session.close()
            nursery.cancel_scope.cancel()
    return out


def bench(auth: bool, ops: list[str], callers: list[int], seconds: float) -> list[dict]:
    """One MDT process (authenticated or not) and every case against it."""
    key = secrets.token_bytes(32) if auth else None
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mlustre-rpcbench-") as d:
        here, there = ctx.Pipe()
        proc = ctx.Process(target=serve_mdt, args=(d, key, there), name="rpcbench-mdt")
        proc.start()
        there.close()
        try:
            if not here.poll(30):
                raise RuntimeError("the MDT did not start within 30 s")
            nid = here.recv()
            rows = trio.run(run_client, nid, key, ops, callers, seconds, proc.pid)
        finally:
            try:
                here.send("stop")
            except OSError:
                pass
            proc.join(timeout=10)
            if proc.is_alive():  # only our own child, by its pid
                proc.kill()
                proc.join(timeout=10)
    for row in rows:
        row["auth"] = auth
    return rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mlustre.bench rpc", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)}")
    p.add_argument("--callers", default="1,8", help="concurrent callers, comma-separated")
    p.add_argument("--auth", choices=("on", "off", "both"), default="both")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per case")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    args.ops = [o for o in args.ops.split(",") if o]
    if not args.ops or any(o not in OPS for o in args.ops):
        p.error(f"--ops: of {', '.join(OPS)}")
    try:
        args.callers = [int(c) for c in args.callers.split(",")]
    except ValueError:
        p.error("--callers: integers")
    if any(not 1 <= c <= 64 for c in args.callers):
        p.error("--callers: 1 to 64")
    if not 0 < args.seconds <= 60:
        p.error("--seconds: more than 0, at most 60")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.auth]
    rows = [r for auth in modes for r in bench(auth, args.ops, args.callers, args.seconds)]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'op':8} {'auth':4} {'callers':>7} {'us/rtt':>8} {'median':>8} {'req/s':>8} "
          f"{'cli cpu':>8} {'srv cpu':>8}")
    for r in rows:
        print(f"{r['op']:8} {'on' if r['auth'] else 'off':4} {r['callers']:>7} "
              f"{r['us_per_rtt']:>8} {r['median_us']:>8} {r['req_per_s']:>8} "
              f"{r['client_cpu_us']:>8} {r['server_cpu_us']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
