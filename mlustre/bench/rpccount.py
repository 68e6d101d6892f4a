"""bench/rpccount.py - what one shell command costs a mount, counted: the deltas of the
client's and the servers' per-operation counters around it (scripts/rpc-count).

    scripts/rpc-count [--per N] MOUNTPOINT COMMAND

runs `sh -c COMMAND` in MOUNTPOINT (relative paths are on the mount), and reads
`mlustre lctl -m MOUNTPOINT get_param` of llite.*.stats (FUSE requests the kernel sent
the client), mdc.*.stats and osc.*.stats (RPCs the client sent, per opcode),
mdt.*.stats and obdfilter.*.stats (requests the servers received) before and after.
Counters of the same kind are summed over their devices (the OSCs, the OSTs); only
those that changed are printed, and with --per N divided by N as well (the command did
N operations: `--per 1000` for a loop of 1000 creates gives round trips per create).
The last line is JSON. What reading the counters costs the servers (lctl connects to
each target: req.MDS_CONNECT, req.OST_DISCONNECT, ...) is measured between two
readings before the command and subtracted. Other clients of the cluster, and the
idle pings of this one (every few seconds), count too: use a cluster of your own and
short commands, or a loop and --per.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..localcluster.cluster import checked, run_cli

KINDS = ("llite", "mdc", "osc", "mdt", "obdfilter")
PATTERNS = tuple(f"{k}.*.stats" for k in KINDS)
IGNORED = frozenset({"req.OBD_ADMIN", "snapshot_time"})
_PARAM = re.compile(r"^([A-Za-z0-9_]+)\.(\S+)\.stats=(.*)$")

Counts = dict[str, dict[str, int]]  # kind -> counter -> samples (or "NAME.bytes": sum)


def parse_stats(text: str) -> Counts:
    """`lctl get_param *.stats` output -> {kind: {counter: samples}}, summed over the
    devices of a kind. A `[bytes]` counter also gives "NAME.bytes", its sum."""
    out: Counts = {}
    kind: str | None = None
    for line in text.splitlines():
        m = _PARAM.match(line)
        if m:
            kind = m.group(1)
            out.setdefault(kind, {})
            continue
        f = line.split()
        if kind is None or len(f) < 3 or f[2] != "samples" or f[0] in IGNORED:
            continue
        try:
            n = int(f[1])
        except ValueError:
            continue
        table = out[kind]
        table[f[0]] = table.get(f[0], 0) + n
        if len(f) >= 7 and f[3] == "[bytes]" and f[6].isdigit():
            key = f"{f[0]}.bytes"
            table[key] = table.get(key, 0) + int(f[6])
    return out


def deltas(before: Counts, after: Counts) -> Counts:
    """What changed, per kind (counters that did not change are left out)."""
    out: Counts = {}
    for kind in sorted(set(before) | set(after)):
        b, a = before.get(kind, {}), after.get(kind, {})
        changed = {k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b))
                   if a.get(k, 0) != b.get(k, 0)}
        if changed:
            out[kind] = changed
    return out


def minus(d: Counts, own: Counts) -> Counts:
    """d without what the tool's own reading of the counters added (own)."""
    out: Counts = {}
    for kind in d:
        left = {k: v - own.get(kind, {}).get(k, 0) for k, v in d[kind].items()}
        left = {k: v for k, v in left.items() if v}
        if left:
            out[kind] = left
    return out


def report(d: Counts, per: int | None) -> str:
    """The deltas as a table: kind, counter, delta (and delta/N with --per N)."""
    rows = [["kind", "counter", "delta", *([f"per op (/{per})"] if per else [])]]
    for kind in [k for k in KINDS if k in d] + [k for k in d if k not in KINDS]:
        for name, v in d[kind].items():
            rows.append([kind, name, str(v), *([f"{v / per:.2f}"] if per else [])])
    if len(rows) == 1:
        return "(no counter changed)"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)


def snapshot(mnt: str) -> Counts:
    """Every counter of the mount's client and its cluster's targets, now."""
    return parse_stats(checked(run_cli(["lctl", "-m", mnt, "get_param", *PATTERNS],
                                       timeout=60)))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/rpc-count", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mountpoint", help="an mlustre mount point")
    ap.add_argument("command", help="shell command, run with sh -c in MOUNTPOINT")
    ap.add_argument("--per", type=int, default=None, metavar="N",
                    help="also print each delta divided by N (operations the command did)")
    args = ap.parse_args(argv)
    if args.per is not None and args.per < 1:
        ap.error("--per must be positive")
    mnt = os.path.abspath(args.mountpoint)
    first = snapshot(mnt)
    before = snapshot(mnt)
    own = deltas(first, before)  # what one reading costs, as the next one sees it
    t0 = time.perf_counter()
    proc = subprocess.run(["sh", "-c", args.command], cwd=mnt, stdin=subprocess.DEVNULL,
                          check=False)
    secs = time.perf_counter() - t0
    d = minus(deltas(before, snapshot(mnt)), own)
    print(f"{args.command!r} on {mnt}: exit status {proc.returncode}, {secs:.3f} s")
    print(report(d, args.per))
    result: dict[str, Any] = {"command": args.command, "mountpoint": mnt,
                              "rc": proc.returncode, "seconds": round(secs, 4),
                              "per": args.per, "deltas": d, "subtracted": own}
    print(json.dumps(result))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
