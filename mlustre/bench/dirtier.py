"""bench/dirtier.py - leave MB MiB dirty in a mount's cache and keep the file open.

    python -m mlustre.bench.dirtier PATH MB

Writes each MiB but its last 4 KiB (chunks that are not full stay dirty until the
periodic write-back), prints "dirty", then waits for a line on stdin before closing
(a close flushes). The barrier benchmark's stall run (bench/barrier.py) uses it.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    path, mb = argv[0], int(argv[1])
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(mb):
        os.pwrite(fd, block[:-4096], i << 20)
    print("dirty", flush=True)
    sys.stdin.readline()
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
