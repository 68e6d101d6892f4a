"""demo_upgrade/report.py - analysis of a demo run: the writer's stalls around each
failover, its throughput, the timeline, the summary and the SVG plot.
"""

from __future__ import annotations

import argparse
import json
import math
from array import array
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .common import PLAN, WORKLOADS, human, short


def fmt_barrier(b: Any) -> str:
    if not isinstance(b, dict):
        return "-"
    return (f"freeze {num(b.get('freeze_s'), '{:.3f}')} s, {b.get('clients', '-')} clients, "
            f"{human(b.get('flushed_bytes') or 0)} flushed, {b.get('evicted', '-')} evicted")


def gaps_in(mono: list[float], lo: float, hi: float) -> tuple[float, float]:
    """Longest gap between consecutive record writes overlapping [lo, hi], and where
    it ended."""
    best, at = 0.0, lo
    for a, b in zip(mono, mono[1:], strict=False):
        if b >= lo and a <= hi and b - a > best:
            best, at = b - a, b
    return best, at


def throughput(mono: list[float], record_size: int, bin_s: float, until: float) -> list[float]:
    bins = [0.0] * max(1, math.floor(until / bin_s + 1e-9))  # whole bins only
    for t in mono:
        i = int(t / bin_s)
        if 0 <= i < len(bins):
            bins[i] += record_size
    return [b / bin_s / 1e6 for b in bins]


def analyse(result: dict[str, Any], times: array, args: argparse.Namespace) -> None:
    mono = list(times[0::2])
    wl = result["workloads"]
    rsize = wl.get("writer", {}).get("record_size", args.record_size)
    evs = result["failovers"]
    for i, ev in enumerate(evs):
        lo = ev["at_s"] - 0.5
        hi = ev["end_s"] + 3.0
        if i + 1 < len(evs):
            hi = max(ev["end_s"] + 0.5, min(hi, evs[i + 1]["at_s"] - 0.5))
        ev["window_s"] = [round(lo, 3), round(hi, 3)]
        stall, _ = gaps_in(mono, lo, hi) if mono else (None, None)
        ev["writer_stall_s"] = None if stall is None else round(stall, 4)
    worst, worst_at = 0.0, 0.0
    quiet = 0.0
    for a, b in zip(mono, mono[1:], strict=False):
        if b - a > worst:
            worst, worst_at = b - a, b
        if not any(b >= ev["window_s"][0] and a <= ev["window_s"][1] for ev in evs):
            quiet = max(quiet, b - a)
    end = result.get("workload_s") or max(result["duration_s"], mono[-1] if mono else 0.0)
    result["throughput"] = {
        "bin_s": args.bin, "mb_per_s": [round(x, 3) for x in
                                        throughput(mono, rsize, args.bin, end)],
        "per_second_mb_per_s": [round(x, 3) for x in throughput(mono, rsize, 1.0, end)]}
    errors = [(name, n) for name, w in wl.items() for n in w.get("notes", [])]
    for _name, note in errors:
        note["failover"] = which_failover(evs, note["t"])
    syscall_errors = sum(w.get("errors", 0) for w in wl.values())
    mismatches = sum(w.get("mismatches", 0) for w in wl.values())
    failed_fo = [ev for ev in evs if not ev["ok"]]
    missing = [w for w in WORKLOADS if w not in wl]
    result["summary"] = {
        "failovers": len(evs), "failed_failovers": len(failed_fo),
        "releases": [f"{ev['target']} {ev['from']}->{ev['to']}" for ev in evs],
        "syscall_errors": syscall_errors, "mismatches": mismatches,
        "errors": syscall_errors + mismatches + len(failed_fo) + len(result["problems"])
        + len(missing),
        "ops": {name: w.get("ops_total", 0) for name, w in wl.items()},
        "bytes_written": sum(w.get("bytes_written", 0) for w in wl.values()),
        "bytes_verified": sum(w.get("bytes_verified", 0) for w in wl.values())
        + sum(t["bytes"] for t in result["trees"].values() if t["identical"]),
        "records": wl.get("writer", {}).get("records", 0),
        "longest_stall_s": round(worst, 4), "longest_stall_at_s": round(worst_at, 3),
        "longest_stall_failover": which_failover(evs, worst_at),
        "longest_stall_outside_failovers_s": round(quiet, 4),
    }
    result["summary"]["failed"] = bool(
        result["summary"]["errors"] or len(evs) != len(PLAN)
        or not result["summary"]["bytes_verified"])


def which_failover(evs: list[dict[str, Any]], t: float) -> int | None:
    """The failover whose window holds t, else the last one before t."""
    for ev in evs:
        if ev.get("window_s") and ev["window_s"][0] <= t <= ev["window_s"][1]:
            return ev["n"]
    before = [ev["n"] for ev in evs if ev["at_s"] <= t]
    return before[-1] if before else None


SPARK = " ▁▂▃▄▅▆▇█"


def host(nid: str | None) -> str:
    return (nid or "?").rsplit(":", 1)[0]


def num(v: Any, form: str = "{:.2f}") -> str:
    return "-" if v is None else form.format(v)


def report(result: dict[str, Any], times: array, args: argparse.Namespace) -> None:
    s = result["summary"]
    evs = result["failovers"]
    wl = result["workloads"]
    print("\n== timeline (seconds since the workload started)")
    head = (f"{'#':>2} {'at':>6}  {'target':<8} {'release':<10} {'node':<22} "
            f"{'barrier':>7} {'flushed':>9} {'clients':>7} {'evicted':>7} "
            f"{'stop':>6} {'restart':>7} {'stall':>6}")
    print(head)
    for ev in evs:
        b = ev["barrier"] if isinstance(ev["barrier"], dict) else {}
        node = f"{host(ev['nid_before'])} -> {host(ev['nid_after'])}" if ev["ok"] else "FAILED"
        print(f"{ev['n']:>2} {ev['at_s']:>6.1f}  {ev['target']:<8} "
              f"{ev['from']} -> {ev['to']:<3} {node:<22} "
              f"{num(b.get('freeze_s')):>7} "
              f"{(human(b['flushed_bytes']) if b.get('flushed_bytes') is not None else '-'):>9} "
              f"{num(b.get('clients'), '{}'):>7} {num(b.get('evicted'), '{}'):>7} "
              f"{num(ev['stop_s']):>6} {num(ev['restart_s']):>7} "
              f"{num(ev.get('writer_stall_s')):>6}")
        if not ev["ok"]:
            print(f"     {ev.get('message') or ev.get('json')}")
    print("   (barrier: freeze time in s; stop/restart: seconds the server took to stop "
          "and to serve again;\n    stall: the writer's longest gap between two record "
          "writes around the failover)")
    per_s = result["throughput"]["per_second_mb_per_s"]
    if per_s:
        top = max(per_s) or 1.0
        print(f"\n== writer throughput, MB/s per second (peak {top:.1f}; failovers "
              f"numbered below the second they began in)")
        line = "".join(SPARK[max(1, min(8, round(v / top * 8)))] if v > 0 else "_"
                       for v in per_s)
        marks = [" "] * len(per_s)
        for ev in evs:
            i = int(ev["at_s"])
            if 0 <= i < len(marks):
                marks[i] = str(ev["n"])
        print(f"  |{line}|")
        print(f"   {''.join(marks).rstrip()}")
        for row in range(0, len(per_s), 10):
            vals = " ".join(f"{v:5.1f}" for v in per_s[row:row + 10])
            print(f"  {row:>3}-{min(row + 10, len(per_s)) - 1:<3}s {vals}")
    print("\n== summary")
    print(f"{'workload':<8} {'ops':>8} {'failed calls':>12} {'mismatches':>10} "
          f"{'written':>10} {'verified':>10}  notes")
    for name in WORKLOADS:
        w = wl.get(name)
        if w is None:
            print(f"{name:<8} {'-':>8}  (no report)")
            continue
        note = {"writer": f"{w.get('records', 0)} records of {w.get('record_size')} B, "
                          f"{w.get('records_verified', 0)} verified",
                "held": f"{w.get('chunks', 0)} chunks on one descriptor, slowest round "
                        f"{w.get('slowest_round_s', 0):.2f} s",
                "extract": f"{w.get('rounds', 0)} extractions",
                "copy": f"{w.get('rounds', 0)} cp/mv/rm rounds"}[name]
        print(f"{name:<8} {w.get('ops_total', 0):>8} {w.get('errors', 0):>12} "
              f"{w.get('mismatches', 0):>10} {human(w.get('bytes_written', 0)):>10} "
              f"{human(w.get('bytes_verified', 0)):>10}  {note}")
        for n in w.get("notes", [])[:5]:
            fo = n.get("failover")
            where = (f" (failover {fo}: {evs[fo - 1]['target']} {evs[fo - 1]['from']} -> "
                     f"{evs[fo - 1]['to']})") if fo else ""
            what = (f"{n['call']}: {n['errno']} {n['error']}" if "call" in n
                    else f"mismatch: {n['mismatch']}")
            print(f"    at {n['t']:.2f} s{where}: {what}")
    for tree, t in result["trees"].items():
        print(f"tree {tree}: {t['files']} files, {human(t['bytes'])}, "
              f"{'identical to the source' if t['identical'] else 'DIFFERS'}")
    after = {short(x["name"]): f"{x['release']} on {x['nid']}" for x in result["servers_after"]}
    if after:
        print("servers now: " + ", ".join(f"{k} {v}" for k, v in after.items()))
    fo = s["longest_stall_failover"]
    print(f"failovers: {s['failovers']} ({', '.join(s['releases'])}), failed: "
          f"{s['failed_failovers']}")
    print(f"system calls failed: {s['syscall_errors']}; verification mismatches: "
          f"{s['mismatches']}; bytes verified: {human(s['bytes_verified'])}")
    print(f"longest writer stall: {s['longest_stall_s']:.2f} s (ending at "
          f"{s['longest_stall_at_s']:.1f} s{f', failover {fo}' if fo else ''}); away "
          f"from failovers: {s['longest_stall_outside_failovers_s']:.2f} s")
    for p in result["problems"]:
        print(f"problem: {p}")
    if args.plot:
        try:
            Path(args.plot).write_text(svg(result), encoding="utf-8")
            result["plot"] = str(Path(args.plot).resolve())
            print(f"plot: {result['plot']}")
        except OSError as e:
            print(f"plot: cannot write {args.plot}: {e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"report: {Path(args.json).resolve()}")


def svg(result: dict[str, Any]) -> str:
    """Writer throughput over time, a marker and a label per failover."""
    tp = result["throughput"]
    vals, bin_s = tp["mb_per_s"], tp["bin_s"]
    evs = result["failovers"]
    width, height = 980, 440
    left, right, top, bottom = 64, 24, 96, 52
    pw, ph = width - left - right, height - top - bottom
    tmax = max(len(vals) * bin_s, 1.0)
    peak = max(vals or [0.0]) or 1.0
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 1e9) if peak / s <= 6)
    ymax = step * math.ceil(peak / step)
    tstep = next(s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300, 1e9) if tmax / s <= 12)

    def x(t: float) -> float:
        return left + t / tmax * pw

    def y(v: float) -> float:
        return top + ph - v / ymax * ph

    s = result["summary"]
    title = (f"mlustre rolling upgrade 1.8 → 2.0 under load: writer throughput "
             f"(MB/s per {bin_s:g} s)")
    sub = (f"{s['failovers']} failovers, {s['syscall_errors']} failed system calls, "
           f"{s['mismatches']} mismatches, {human(s['bytes_verified'])} verified, "
           f"longest stall {s['longest_stall_s']:.2f} s")
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text x="{left}" y="40" fill="#444">{escape(sub)}</text>']
    for i in range(int(ymax / step) + 1):
        v = i * step
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    t = 0.0
    while t <= tmax + 1e-9:
        out.append(f'<line x1="{x(t):.1f}" y1="{top + ph}" x2="{x(t):.1f}" '
                   f'y2="{top + ph + 5}" stroke="#333"/>')
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 18}" text-anchor="middle">'
                   f'{t:g}</text>')
        t += tstep
    out.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">'
               f'seconds since the workload started (dashed: an upgrade begins; shaded: '
               f'until the server serves again)</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2})">MB/s</text>')
    pts = [f"{x(0):.1f},{y(0):.1f}"]
    for i, v in enumerate(vals):
        pts += [f"{x(i * bin_s):.1f},{y(v):.1f}", f"{x((i + 1) * bin_s):.1f},{y(v):.1f}"]
    pts.append(f"{x(len(vals) * bin_s):.1f},{y(0):.1f}")
    out.append(f'<polygon points="{" ".join(pts)}" fill="#9cf" stroke="#2a6ebb" '
               f'stroke-width="1.2"/>')
    for ev in evs:  # the time each upgrade command ran, shaded
        out.append(f'<rect x="{x(ev["at_s"]):.1f}" y="{top}" '
                   f'width="{max(x(ev["end_s"]) - x(ev["at_s"]), 1):.1f}" height="{ph}" '
                   f'fill="{"#fbd" if ev["ok"] else "#f66"}" opacity="0.5"/>')
    for ev in evs:
        xe = x(ev["at_s"])
        row = (ev["n"] - 1) % 2
        label = f"{ev['n']}: {ev['target']} {ev['from']}→{ev['to']}"
        stall = ev.get("writer_stall_s")
        detail = ("FAILED" if not ev["ok"] else
                  f"stall {stall:.2f} s" if stall is not None else "")
        ly = top - 34 + row * 18
        out.append(f'<line x1="{xe:.1f}" y1="{ly + 4}" x2="{xe:.1f}" y2="{top + ph}" '
                   f'stroke="#c0392b" stroke-width="1.5" stroke-dasharray="4 3"/>')
        out.append(f'<text class="event" x="{xe + 3:.1f}" y="{ly}" fill="#c0392b">'
                   f'{escape(label)}<tspan dx="5" fill="#666">{escape(detail)}</tspan></text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               f'stroke="#333"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
