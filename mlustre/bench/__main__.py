"""`python -m mlustre.bench [barrier|recovery|io|rpc] [ARGS]` (scripts/bench).

No subcommand: the I/O benchmark with ARGS, then the barrier's costs, then the
recovery time (both with their defaults); the exit status is the last one's, and the
first two must succeed (as `set -e` did in the shell script). `barrier ARGS` or
`recovery ARGS` or `io ARGS`: only that one. `rpc ARGS`: the cost of one RPC
(bench/rpc.py), not part of the default run.
"""

from __future__ import annotations

import sys

from . import barrier, io, recovery, rpc


def main(argv: list[str]) -> int:
    if argv[:1] == ["barrier"]:
        return barrier.main(argv[1:])
    if argv[:1] == ["recovery"]:
        return recovery.main(argv[1:])
    if argv[:1] == ["io"]:
        return io.main(argv[1:])
    if argv[:1] == ["rpc"]:
        return rpc.main(argv[1:])
    for step in (lambda: io.main(argv), lambda: barrier.main([])):
        rc = step()
        if rc:
            return rc
    return recovery.main([])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
