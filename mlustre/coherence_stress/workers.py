"""coherence_stress/workers.py - one client's part of a round, run as its own process:

    python -m mlustre.coherence_stress.workers rmw PATH LOG ME N K
    python -m mlustre.coherence_stress.workers blocks PATH ME N K SEED

Each opens its file, prints "ready", waits for a line on stdin (so that every worker
starts together), does its N operations and prints "done PAYLOAD" (blocks: what it
wrote last in each of its blocks, as JSON; rmw: {}).
"""

from __future__ import annotations

import json
import os
import random
import sys

BLOCK = 4096
BLOCKS_SIZE = 4 << 20


def rmw(path: str, log: str, me: int, n: int, k: int) -> None:
    """Overwrite own 16-byte records (interleaved with the other k-1 workers'), reading
    the file around each first; append a line to the shared O_APPEND log every third."""
    fd = os.open(path, os.O_RDWR)
    lf = os.open(log, os.O_WRONLY | os.O_APPEND)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        slot = k * (i % 256) + me
        os.pread(fd, 8192, max(0, slot * 16 - 4096))
        os.pwrite(fd, bytes([65 + me]) * 16, slot * 16)
        if i % 3 == 0:
            os.write(lf, b"%d %06d\n" % (me, i))
    print("done {}", flush=True)


def blocks(path: str, me: int, n: int, k: int, seed: int) -> None:
    """Random pieces of own 4 KiB blocks (every k-th), random reads, sometimes fsync."""
    rnd = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    model: dict[int, bytes] = {}
    mine = [b for b in range(BLOCKS_SIZE // BLOCK) if b % k == me]
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(n):
        r = rnd.random()
        if r < 0.6:
            b = rnd.choice(mine)
            lo = rnd.randrange(BLOCK)
            hi = rnd.randrange(lo + 1, BLOCK + 1)
            data = bytes([rnd.randrange(1, 256)]) * (hi - lo)
            os.pwrite(fd, data, b * BLOCK + lo)
            cur = bytearray(model.get(b, bytes(BLOCK)))
            cur[lo:hi] = data
            model[b] = bytes(cur)
        elif r < 0.97:
            os.pread(fd, rnd.randrange(1, 300000), rnd.randrange(BLOCKS_SIZE))
        else:
            os.fsync(fd)
    print("done " + json.dumps({str(b): v.hex() for b, v in model.items()}), flush=True)


def main(argv: list[str]) -> int:
    kind, args = argv[0], argv[1:]
    if kind == "rmw":
        rmw(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))
    elif kind == "blocks":
        blocks(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
    else:
        print(f"unknown worker {kind!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
