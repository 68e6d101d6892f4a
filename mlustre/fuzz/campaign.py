"""A long fuzzing campaign: hostile clients (mlustre/fuzz/) against real MGS,
MDT and OST servers on loopback, for a given time, round the chosen targets in
batches of fresh hypothesis runs. After every case each server must still serve a
well-behaved client and keep the data it wrote. Prints a summary; exit status 0 if
nothing failed, 1 on the first crash, hang or data change (with the case that did it,
shrunk), 2 for bad arguments. Run by scripts/fuzz (`python -m mlustre.fuzz`).

Needs hypothesis (the test extras: `pip install -e ".[test]"`); without it the
campaign says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .cluster import TARGETS, FuzzCluster, FuzzFailure

if TYPE_CHECKING:
    from .frames import HostileCase


def _campaign(cluster: FuzzCluster, kind: str, examples: int, until: float,
              per_kind: dict[str, int]) -> Callable[[], None]:
    """One hypothesis run of hostile cases against `kind`, ending early at `until`."""
    from hypothesis import HealthCheck, given, settings

    from .cases import hostile_cases

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=hostile_cases(kind))
    def one(case: HostileCase) -> None:
        if time.monotonic() > until:
            return  # time is up: the rest of the batch passes at once
        cluster.hostile(kind, case)
        per_kind[kind] += 1
        cluster.check()

    return one


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    p.add_argument("--batch", type=int, default=200, help="cases per hypothesis run")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default random)")
    p.add_argument("--log", default=None, help="server log file (default: none)")
    args = p.parse_args(argv)
    try:
        from hypothesis import seed
    except ImportError:
        print("scripts/fuzz: the fuzzer needs hypothesis, which only the test extras install "
              '(pip install -e ".[test]", or scripts/bootstrap)', file=sys.stderr)
        return 2
    if args.duration <= 0 or args.batch < 1:
        p.error("--duration and --batch must be positive")
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    else:
        logging.getLogger("mlustre").setLevel(logging.CRITICAL)
    kinds = list(TARGETS) if args.target == "all" else [args.target]
    base = Path(tempfile.mkdtemp(prefix="mlustre-fuzz-"))
    cluster = FuzzCluster(base)
    cluster.start()
    start = time.monotonic()
    per_kind = dict.fromkeys(kinds, 0)
    failure: BaseException | None = None
    batch = 0
    try:
        while time.monotonic() - start < args.duration and failure is None:
            kind = kinds[batch % len(kinds)]
            batch += 1
            left = args.duration - (time.monotonic() - start)

            one = _campaign(cluster, kind, args.batch, start + args.duration, per_kind)
            if args.seed is not None:
                one = seed(args.seed + batch)(one)
            try:
                one()
            except (FuzzFailure, AssertionError) as e:
                failure = e
            print(f"[{time.monotonic() - start:7.1f}s] batch {batch} ({kind}): "
                  f"{sum(per_kind.values())} cases, {left:.0f}s left", flush=True)
        cluster.check()  # the last word: every server serves and the data is intact
    except FuzzFailure as e:
        failure = failure or e
    finally:
        cluster.stop()
    elapsed = time.monotonic() - start
    print("\n== fuzz summary")
    print(f"duration {elapsed:.0f}s, cases {sum(per_kind.values())} "
          f"({', '.join(f'{k} {n}' for k, n in per_kind.items())}), storage {base} (kept on failure)")
    for kind, server in cluster.servers.items():
        s = server.stats
        print(f"{kind}: errors {s.get('errors', 0)}, violations {s.get('violations', 0)}, "
              f"evictions {s.get('misbehaviour_evictions', 0)}, connections refused "
              f"{s.get('connections_refused', 0)}")
    if failure is not None:
        print(f"FAILED: {failure}")
        return 1
    shutil.rmtree(base, ignore_errors=True)
    print("OK: every server served a well-behaved client after every case; data intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
