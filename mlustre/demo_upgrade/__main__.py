"""demo_upgrade -  a rolling upgrade of a running mlustre cluster, 1.8 -> 2.0, one
server at a time by controlled failover, under a mixed workload that must not see a
single failed system call; then one server back to 1.8.

Started by scripts/demo-upgrade (which bootstraps first): `python -m mlustre.demo_upgrade`.
Modules: common (constants, log), workers (the workloads, each a child process),
run (the cluster, the upgrades, the clean-up), report (analysis, timeline, SVG),
__main__ (arguments). Steps:

  1. a fresh local cluster of release 1.8 whose MDT and OSTs are failover pairs
     (`mlustre up --release 1.8 --failover-pairs`), in a new work directory;
  2. workloads on the mount, each its own process:
       writer   appends checksummed fixed-size records (sequence number, sha256 of the
                payload), fsync every N records, and times every write
       held     one file held open for the whole run: pwrite at growing offsets, each
                chunk read back at once and an older one too
       extract  a tarball of part of a real source tree, extracted again and again,
                every file checksummed against the original
       copy     cp -a / mv / rm -rf of the extracted trees
  3. meanwhile `mlustre upgrade ... --release 2.0` of MDT0000, OST0000, OST0001 (each
     onto its failover partner) and the MGS, a few seconds apart, then OST0001 back
     to 1.8 (onto its first node);
  4. at the end every byte is verified (all records, the held file through its
     descriptor and a fresh open, the trees), the cluster is stopped and the work
     directory removed (kept on failure: logs are in its data/ directory);
  5. a timeline of the failovers (barrier, stop and restart times, the writer's
     stall around each), the writer's throughput over time, a summary, an SVG plot
     (--plot) and, with --json, a machine-readable report.

Exit status 0 only if no system call failed, every byte verified and every upgrade
succeeded; 1 otherwise, 2 for bad arguments, 128+N after signal N (cleaned up).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from ..localcluster.cluster import cli_command
from .common import HEADER, PROG, WORKLOADS
from .run import _on_signal, run_demo
from .workers import worker_main


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def main() -> int:
    p = Parser(
        prog=PROG,
        description="Start a local mlustre cluster of release 1.8 (MDT and OSTs in failover "
                    "pairs), run a mixed workload on it (a checksummed record writer, a file "
                    "held open, tar extraction, cp/mv/rm), upgrade every server to 2.0 one by "
                    "one by controlled failover (MDT0000, OST0000, OST0001 onto their "
                    "partners, then the MGS) and downgrade OST0001 back to 1.8, verify every "
                    "byte, stop the cluster and print a timeline, the writer's throughput "
                    "and a summary. Exit status 1 on any failed system call, mismatch or "
                    "failed upgrade.")
    p.add_argument("--duration", type=float, default=50.0, metavar="S",
                   help="seconds the workload runs; the upgrades are spread over its first "
                        "three quarters (default 50: about a minute in all; at least 10)")
    p.add_argument("--plot", default="demo-upgrade.svg", metavar="PATH",
                   help="SVG plot of the writer's throughput with the failovers "
                        "(default: demo-upgrade.svg in the current directory; '' for none)")
    p.add_argument("--json", metavar="PATH", help="also write a machine-readable report")
    p.add_argument("--source", default="/usr/include", metavar="DIR",
                   help="source tree for the tarball the extract workload uses "
                        "(default /usr/include; e.g. /usr/lib/python3.11)")
    p.add_argument("--source-files", type=int, default=400, metavar="N",
                   help="at most this many of its files (default 400)")
    p.add_argument("--record-size", type=int, default=4096, metavar="BYTES",
                   help="bytes per record of the writer (default 4096)")
    p.add_argument("--fsync-every", type=int, default=64, metavar="N",
                   help="the writer fsyncs after every N records (default 64)")
    p.add_argument("--osts", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--bin", type=float, default=0.5, metavar="S",
                   help="seconds per throughput bin in the plot and the JSON report "
                        "(default 0.5; the printed table is per second)")
    p.add_argument("--verify-timeout", type=float, default=300.0, metavar="S",
                   help="seconds the workloads may take after the end to verify "
                        "(default 300)")
    p.add_argument("--base", metavar="DIR", help="where to make the work directory (default $TMPDIR or /tmp)")
    p.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    p.add_argument("--conf", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker, args.conf)
    checks: list[tuple[bool, str]] = [
        (args.duration >= 10 and math.isfinite(args.duration),
         "--duration must be at least 10 seconds"),
        (args.duration <= 24 * 3600, "--duration must be at most a day"),
        (args.source_files >= 1, "--source-files must be at least 1"),
        (HEADER.size < args.record_size <= 1 << 20,
         f"--record-size must be between {HEADER.size + 1} and 1048576"),
        (args.fsync_every >= 1, "--fsync-every must be at least 1"),
        (0.05 <= args.bin <= 10, "--bin must be between 0.05 and 10 seconds"),
        (args.verify_timeout > 0, "--verify-timeout must be positive"),
        (args.osts == 2, "--osts: the upgrade plan is for 2 OSTs"),
        (Path(args.source).is_dir(), f"--source {args.source} is not a directory"),
        (args.base is None or Path(args.base).is_dir(),
         f"--base {args.base} is not a directory"),
    ]
    for good, message in checks:
        if not good:
            p.error(message)
    if not any(f.is_file() for f in Path(args.source).rglob("*")):
        p.error(f"--source {args.source} holds no files")
    for opt in ("plot", "json"):
        path = getattr(args, opt)
        if path and not Path(path).resolve().parent.is_dir():
            p.error(f"--{opt} {path}: no directory {Path(path).resolve().parent}")
    cli = cli_command()
    if not Path(cli[0]).exists():
        print(f"{PROG}: error: {cli[0]} is missing (run scripts/bootstrap)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
