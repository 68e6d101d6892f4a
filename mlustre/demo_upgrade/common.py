"""demo_upgrade/common.py - what the demo's parts share: the plan, record format, log."""

from __future__ import annotations

import struct
import time

PROG = "demo-upgrade"
FSNAME = "demo"
WORKLOADS = ("writer", "held", "extract", "copy")
# (target, release, --partner): the rolling upgrade, then one downgrade.
PLAN = [("MDT0000", "2.0", True), ("OST0000", "2.0", True), ("OST0001", "2.0", True),
        ("MGS", "2.0", False), ("OST0001", "1.8", True)]
FINAL_RELEASES = {"MGS": "2.0", "MDT0000": "2.0", "OST0000": "2.0", "OST0001": "1.8"}
MAGIC = b"MLUR"
HEADER = struct.Struct("<4sQdI32s")  # magic, sequence, wall clock, payload length, sha256
HELD_CHUNK = 16 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def short(name: str) -> str:
    return name.split("-", 1)[-1]
