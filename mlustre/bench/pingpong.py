"""bench/pingpong.py - hand-off latency between two mounts of one filesystem: two
processes (multiprocessing, spawn) pass a 64-byte record back and forth through a
shared file, each reading what the other wrote (see mlustre/bench/io.py).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import statistics
import time
from pathlib import Path

from .common import PP_RECORD, PP_WARMUP, BenchError, log
from .targets import Target


def _pp_now() -> int:
    # CLOCK_MONOTONIC is one clock for every process of the machine.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _pp_record(seq: int) -> bytes:
    return (b"%020d pingpong " % seq).ljust(PP_RECORD - 1, b"#") + b"\n"


def _pp_write(path: str, seq: int) -> None:
    rec = _pp_record(seq)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        w = os.pwrite(fd, rec, 0)
    finally:
        os.close(fd)
    if w != len(rec):
        raise OSError(f"short write: {w} of {len(rec)} bytes")


def _pp_read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, PP_RECORD, 0)
    finally:
        os.close(fd)


def pingpong_worker(role: str, path: str, peer, out, last_seq: int, limit: float) -> None:
    """One side of the ping-pong (runs in its own process).

    A writes the odd records, B the even ones. A message ("turn", seq, t_write_start) on
    the pipe *peer* hands the turn over; the receiver reads the file at once, counting every
    read that does not show record *seq* (and retrying at once) until it does, then writes
    seq + 1 and hands the turn back. The reader of *last_seq* sends ("done",). A dict of
    results goes to *out* (with "error" set if this side gave up or failed).
    """
    deadline = _pp_now() + int(limit * 1e9)
    handoffs: list[tuple[int, int, int, int, int]] = []  # seq, latency, read ns, stale, bad
    writes: list[int] = []
    first_bad = None  # the first hand-off that needed more than one read
    seq = 0
    stale = bad = 0  # of the hand-off in progress

    def handoff(nxt: int) -> None:
        w0 = _pp_now()
        _pp_write(path, nxt)
        writes.append(_pp_now() - w0)
        peer.send(("turn", nxt, w0))

    try:
        if role == "A":
            handoff(1)
        while True:
            remaining = (deadline - _pp_now()) / 1e9
            if remaining <= 0 or not peer.poll(remaining):
                raise TimeoutError(f"{role}: gave up after {limit:.0f} s waiting for the turn "
                                   f"after record {seq} ({len(handoffs)} hand-offs received)")
            msg = peer.recv()
            if msg[0] == "done":
                break
            if msg[0] == "error":
                raise RuntimeError(f"{role}: the other side failed: {msg[1]}")
            _, seq, t_write = msg
            want, old = _pp_record(seq), _pp_record(seq - 1)
            stale = bad = 0
            wrong = b""
            while True:
                r0 = _pp_now()
                got = _pp_read(path)
                r1 = _pp_now()
                if got == want:
                    break
                if got == old:
                    stale += 1
                else:
                    bad += 1
                    wrong = wrong or got
                if r1 > deadline:
                    raise TimeoutError(
                        f"{role}: gave up after {limit:.0f} s: record {seq} still not visible "
                        f"after {stale + bad} reads ({stale} stale, {bad} neither old nor new; "
                        f"last read {got[:40]!r})")
            handoffs.append((seq, r1 - t_write, r1 - r0, stale, bad))
            if (stale or bad) and first_bad is None:
                first_bad = {"record": seq, "reader": role, "stale_reads": stale,
                             "bad_reads": bad, "us_until_fresh": round((r1 - t_write) / 1e3),
                             "bad_content": wrong[:PP_RECORD].decode(errors="replace")
                             if bad else None}
            stale = bad = 0  # counted in handoffs now
            if seq >= last_seq:
                peer.send(("done",))
                break
            handoff(seq + 1)
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}"
        if (stale or bad) and first_bad is None:
            first_bad = {"record": seq, "reader": role, "stale_reads": stale, "bad_reads": bad,
                         "us_until_fresh": None}  # never fresh
        with contextlib.suppress(Exception):
            peer.send(("error", text))
        out.send({"error": text, "handoffs": handoffs, "writes": writes, "first": first_bad,
                  "stale": stale, "bad": bad})
        return
    out.send({"error": None, "handoffs": handoffs, "writes": writes, "first": first_bad,
              "stale": 0, "bad": 0})


def _pct(sorted_vals: list[float], q: float) -> float:
    return sorted_vals[max(0, math.ceil(q * len(sorted_vals)) - 1)]


def phase_pingpong(t: Target, d: Path, rounds: int, limit: float) -> dict:
    """Hand-off latency between two mounts of *t* (see the module docstring)."""
    path_a = d / "pingpong"
    try:
        d2 = t.mount_second()
        path_b = d2 / "pingpong"
        fd = os.open(path_a, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, _pp_record(0))
        finally:
            os.close(fd)
        if _pp_read(str(path_b)) != _pp_record(0):
            raise BenchError(f"{path_b}: the second mount does not show the initial record")
        total = 2 * (rounds + PP_WARMUP)
        ctx = multiprocessing.get_context("spawn")
        ab_a, ab_b = ctx.Pipe()  # the "network": A <-> B turn messages
        out_a_r, out_a_w = ctx.Pipe(duplex=False)
        out_b_r, out_b_w = ctx.Pipe(duplex=False)
        procs = {
            "A": ctx.Process(target=pingpong_worker, name="pingpong-A",
                             args=("A", str(path_a), ab_a, out_a_w, total, limit)),
            "B": ctx.Process(target=pingpong_worker, name="pingpong-B",
                             args=("B", str(path_b), ab_b, out_b_w, total, limit)),
        }
        for p in procs.values():
            p.start()
        for c in (ab_a, ab_b, out_a_w, out_b_w):
            c.close()  # the workers have their copies: a dead worker now reads as EOF
        outs = {}
        try:
            deadline = time.monotonic() + limit + 30  # spawn time, then the workers' limit
            for role, conn in (("A", out_a_r), ("B", out_b_r)):
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    raise BenchError(f"pingpong: process {role} reported nothing within "
                                     f"{limit + 30:.0f} s (blocked in the filesystem?)")
                outs[role] = conn.recv()
        except EOFError as exc:
            raise BenchError("pingpong: a worker process died without a report") from exc
        finally:
            for p in procs.values():
                p.join(timeout=5)
                if p.is_alive():  # only our own worker, by its pid
                    log(f"kill -KILL {p.pid} (pingpong worker {p.name})")
                    p.kill()
                    p.join(timeout=10)
                if p.is_alive():
                    t.notes.append(f"pingpong worker pid {p.pid} did not exit after SIGKILL")
        hand = sorted((h for o in outs.values() for h in o["handoffs"]), key=lambda h: h[0])
        writes = [w for o in outs.values() for w in o["writes"]]
        firsts = [o["first"] for o in outs.values()]
        errs = [f"{r}: {o['error']}" for r, o in outs.items() if o["error"]]
        if errs:
            partial = pingpong_stats(hand, writes, firsts)
            partial["stale_reads"] += sum(o["stale"] for o in outs.values())
            partial["bad_reads"] += sum(o["bad"] for o in outs.values())
            partial["stale_handoffs"] += sum(1 for o in outs.values() if o["stale"] or o["bad"])
            msg = (f"pingpong failed after {len(hand)} of {total} hand-offs "
                   f"({partial['stale_reads']} stale reads in all")
            if partial.get("median_us") is not None:
                msg += (f"; the {partial['handoffs']} timed hand-offs done: median "
                        f"{partial['median_us']:.0f} us, p99 {partial['p99_us']:.0f} us")
            raise BenchError(msg + "): " + "; ".join(errs), partial)
        if [h[0] for h in hand] != list(range(1, total + 1)):
            raise BenchError(f"pingpong: hand-offs {[h[0] for h in hand][:10]}... do not "
                             f"cover 1..{total}")
        res = pingpong_stats(hand, writes, firsts)
        res.update(round_trips=rounds, warmup_round_trips=PP_WARMUP)
        return res
    finally:
        try:
            os.unlink(path_a)
        except FileNotFoundError:
            pass
        except OSError as exc:
            t.notes.append(f"pingpong: unlink of {path_a} failed: {exc}")
        t.unmount_second()


def pingpong_stats(hand: list[tuple], writes: list[int], firsts: list[dict | None]) -> dict:
    """Figures of the hand-offs *hand* (seq, latency ns, read ns, stale, bad), warm-up excluded."""
    timed = [h for h in hand if h[0] > 2 * PP_WARMUP]
    lat = sorted(h[1] / 1e3 for h in timed)
    reads = [h[2] / 1e3 for h in timed]
    out = {
        "handoffs": len(timed),
        "median_us": statistics.median(lat) if lat else None,
        "p99_us": _pct(lat, 0.99) if lat else None,
        "max_us": lat[-1] if lat else None, "min_us": lat[0] if lat else None,
        "read_median_us": statistics.median(reads) if reads else None,
        "write_median_us": statistics.median(writes) / 1e3 if writes else None,
        "stale_reads": sum(h[3] for h in hand),
        "bad_reads": sum(h[4] for h in hand),
        "stale_handoffs": sum(1 for h in hand if h[3] or h[4]),
        "first_stale_handoff": min((f for f in firsts if f is not None),
                                   key=lambda f: f["record"], default=None),
        "seconds": sum(h[1] for h in timed) / 1e9,
    }
    return out
