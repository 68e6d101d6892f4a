"""`python -m mlustre.bench [barrier|recovery|io|rpc] [ARGS]` (scripts/bench).

No subcommand: the I/O benchmark with ARGS, then the barrier's costs, then the
recovery time (both with their defaults); the exit status is the last one's, and the
first two must succeed (as `set -e` did in the shell script). With `--only`, only what
it names: its I/O targets and benchmarks (io.py; `shell` among them), and `barrier` and
`recovery` if named (`--only shell` runs the shell phase alone). `barrier ARGS` or
`recovery ARGS` or `io ARGS`: only that one. `rpc ARGS`: the cost of one RPC
(bench/rpc.py), not part of the default run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from . import barrier, io, recovery, rpc

SEPARATE = ("barrier", "recovery")  # benchmarks of their own, also names for --only


def split_only(argv: list[str]) -> tuple[list[str] | None, list[str]]:
    """(argv for the I/O benchmark, or None if --only names nothing of it; the separate
    benchmarks to run after it). Without --only: argv and every separate benchmark."""
    for i, a in enumerate(argv):
        if a == "--only" and i + 1 < len(argv):
            value, rest = argv[i + 1], argv[:i] + argv[i + 2:]
            break
        if a.startswith("--only="):
            value, rest = a.split("=", 1)[1], argv[:i] + argv[i + 1:]
            break
    else:
        return argv, list(SEPARATE)
    names = [x.strip() for x in value.split(",") if x.strip()]
    separate = [x for x in SEPARATE if x in names]
    io_names = [x for x in names if x not in SEPARATE]
    if separate and not io_names:
        return None, separate
    return [*rest, "--only", ",".join(io_names)], separate


def main(argv: list[str]) -> int:
    if argv[:1] == ["barrier"]:
        return barrier.main(argv[1:])
    if argv[:1] == ["recovery"]:
        return recovery.main(argv[1:])
    if argv[:1] == ["io"]:
        return io.main(argv[1:])
    if argv[:1] == ["rpc"]:
        return rpc.main(argv[1:])
    io_argv, separate = split_only(argv)
    mains: dict[str, Callable[[list[str]], int]] = {"barrier": barrier.main,
                                                    "recovery": recovery.main}
    steps: list[Callable[[], int]] = []
    if io_argv is not None:
        steps.append(lambda: io.main(io_argv))
    steps += [lambda m=mains[n]: m([]) for n in separate]
    rc = 0
    for k, step in enumerate(steps):
        rc = step()
        if rc and k < len(steps) - 1:
            return rc
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
