"""bench/report.py - the I/O benchmark's table, warm-up and host description.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from .common import BARS, BLOCK, MIB, PHASE_LABEL, PHASES, ROOT, TARGETS, log
from .shell import STEPS, shell_summary
from .targets import release_tmpfs, tmpfs_dir


def fmt_val(phase: str, r: dict | None, key: str | None = None) -> str:
    if not r:
        return "-"
    if not r.get("ok"):
        part = r.get("partial") or {}
        if key == "stale_reads" and part.get("stale_reads"):
            return f"FAIL, STALE {part['stale_reads']}"
        return "FAIL"
    if key is not None:
        v = r.get(key)
        if v is None:
            return "-"
        s = f"{v:,.0f}" if isinstance(v, int) or v >= 100 else f"{v:,.1f}"
        if key == "stale_reads" and (v or r.get("bad_reads")):
            s = f"STALE {v}" + (f" (+{r['bad_reads']} bad)" if r.get("bad_reads") else "")
        return s
    v = r["MB_s"] if "MB_s" in r else r["ops_s"]
    s = f"{v:,.1f}" if "MB_s" in r else f"{v:,.0f}"
    return s + (" (warm)" if r.get("warm") else "")


def value(r: dict | None, key: str | None = None) -> float | None:
    if not r or not r.get("ok"):
        return None
    if key is not None:
        return r.get(key)
    return r.get("MB_s", r.get("ops_s"))


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.3f}" if a / b < 0.1 else f"{a / b:.2f}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append(" | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                              for i, c in enumerate(r)))
        if k == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def shell_table(summary: dict) -> list[str]:
    """The report's lines of the shell phase: seconds per step and target, the ratio
    mlustre/tmpfs (lower is better)."""
    names = list(summary["targets"])
    rows = [["step (s)", *names, "mlustre/tmpfs"]]
    for k in (*STEPS, "total"):
        vals = [summary["targets"][n]["total"] if k == "total"
                else summary["targets"][n]["steps"].get(k) for n in names]
        r = summary["ratio_mlustre_tmpfs"].get(k)
        rows.append([k, *("FAIL" if v is None else f"{v:.2f}" for v in vals),
                     "-" if r is None else f"{r:.2f}"])
    return [f"shell tools ({summary['scale']} scale), wall-clock seconds; ratio "
            "mlustre/tmpfs (lower is better):", table(rows)]


def report(results: dict, args) -> str:
    tg = results["targets"]
    rows = [["op", "mlustre", "tmpfs", "passthrough", "mlustre/tmpfs", "mlustre/passthrough"]]
    lines_of = [(ph, PHASE_LABEL[ph], None) for ph in PHASES
                if ph not in ("pingpong", "shell")]
    lines_of += [("pingpong", "ping-pong hand-off, median (us)", "median_us"),
                 ("pingpong", "ping-pong hand-off, p99 (us)", "p99_us"),
                 ("pingpong", "ping-pong stale reads", "stale_reads")]
    for ph, label, key in lines_of:
        if ph not in args.benches:
            continue
        vals = {n: tg.get(n, {}).get("phases", {}).get(ph) for n in TARGETS}
        ratios = ["-", "-"] if key == "stale_reads" else [
            ratio(value(vals["mlustre"], key), value(vals[ref], key))
            for ref in ("tmpfs", "passthrough")]
        rows.append([label, *(fmt_val(ph, vals[n], key) for n in TARGETS), *ratios])
    sizes = []
    if {"write", "read"} & set(args.benches):
        sizes.append(f"{args.size_mb} MiB sequential")
    if "create" in args.benches:
        sizes.append(f"{args.files} files")
    if "reread" in args.benches:
        sizes.append(f"re-read {args.reread_mb} MiB, median of {args.reread_passes} passes")
    if "pingpong" in args.benches:
        sizes.append(f"ping-pong {args.pingpong_rounds} round trips")
    lines = [""]
    if len(rows) > 1:  # (not only the shell phase)
        lines += [
            f"mlustre benchmark: {', '.join(sizes)}; MB/s = 10^6 bytes/s",
            table(rows),
            "cold = the client was remounted before the phase; "
            + ("kernel caches dropped too (--drop-caches)" if args.drop_caches
               else "server-side page cache stays warm"),
        ]
    if "pingpong" in args.benches:
        lines.append("ping-pong: write+close on mount A, pipe message, open+read+close on "
                     "mount B; ratios of latencies (lower is better)")
    if "shell" in args.benches:
        lines += ["", *shell_table(shell_summary(results)),
                  "steps as shellbench.sh (bench-peers); caches dropped before ls_lR, "
                  "tar_c, git_st" + ("" if os.geteuid() == 0 else " (NOT: not root)")]
    lines.append("")
    ml = tg.get("mlustre", {}).get("phases", {})
    bar = []
    for ph, unit in (("write", "MB/s write"), ("read", "MB/s cold read"),
                     ("create", "creates/s"), ("stat", "cold stats/s"),
                     ("unlink", "unlinks/s")):
        if ph not in args.benches:
            continue
        v = value(ml.get(ph))
        pct = f" (mlustre {v / BARS[ph] * 100:.0f}%)" if v is not None else ""
        bar.append(f"~{BARS[ph]:,.0f} {unit}{pct}")
    if bar:
        lines.append("bar (network filesystems, reference): " + ", ".join(bar[:2])
                     + ("," if bar[2:] else ""))
        if bar[2:]:
            lines.append("    " + ", ".join(bar[2:]))
    mem_rows = [["process", "pid", "served", "VmHWM MiB", "VmRSS MiB"]]
    for n in TARGETS:
        for m in tg.get(n, {}).get("memory", []):
            hwm = m.get("VmHWM_kib")
            rss = m.get("VmRSS_kib")
            mem_rows.append([
                f"{n}: {m.get('process')}", str(m.get("pid")), str(m.get("served", "")),
                f"{hwm / 1024:.1f}" if hwm is not None else m.get("error", "?"),
                f"{rss / 1024:.1f}" if rss is not None else "?",
            ])
    if len(mem_rows) > 1:
        lines += ["", "peak memory (VmHWM from /proc/PID/status; a client is restarted by each "
                  "remount, 'served' = phases it ran)", table(mem_rows)]
    notes = [(n, x) for n in TARGETS for x in tg.get(n, {}).get("notes", [])]
    if notes:
        lines += ["", "notes:"] + [f"  {n}: {x}" for n, x in notes]
    errs = [(n, e) for n in TARGETS for e in tg.get(n, {}).get("errors", [])]
    errs += [("bench", e) for e in results.get("errors", [])]
    if errs:
        lines += ["", "FAILURES:"] + [f"  {n}: {e.splitlines()[0][:300] if e else e}"
                                      for n, e in errs]
    return "\n".join(lines)


def warmup(work: Path, mb: int) -> float:
    """Write then delete *mb* MiB on a tmpfs, untimed.

    On a VM the first touch of guest memory that was never used costs several ms per
    MiB (measured here: ~270 MB/s instead of ~2,300 MB/s for a tmpfs write); whichever
    target ran first would pay it. Freed pages are reused by later page cache/tmpfs use.
    """
    holder: list[Path] = []
    d = tmpfs_dir(work, "warmup", [], holder)
    t0 = time.perf_counter()
    try:
        fd = os.open(d / "warmup", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            chunk = bytes(BLOCK)
            for _ in range(mb):
                os.write(fd, chunk)
        finally:
            os.close(fd)
    finally:
        release_tmpfs(d, holder)
    secs = time.perf_counter() - t0
    log(f"warm-up: {mb} MiB on tmpfs in {secs:.2f} s ({mb * MIB / secs / 1e6:.0f} MB/s)")
    return secs


def host_info() -> dict:
    info = {"hostname": socket.gethostname(), "kernel": platform.release(),
            "nproc": os.cpu_count(), "python": platform.python_version()}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    with contextlib.suppress(Exception):
        cp = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10)
        info["git_head"] = cp.stdout.strip()
        cp = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                            capture_output=True, text=True, timeout=10)
        info["git_dirty_files"] = len(cp.stdout.splitlines())
    return info

