"""releases.py - which release created which inodes, by ranges of inode numbers, so that a
2.0 server names those a 1.8 server created by their IGIF FIDs."""

from __future__ import annotations

import bisect

from .db import MdtDb


class ReleaseRanges:
    """Meta keys ``release_from:<first ino>`` -> release code (18 or 20).  A new range
    starts at the next inode number when the server's release changes (at startup)."""

    def __init__(self, db: MdtDb, release: str) -> None:
        meta = db.meta
        code = 18 if release == "1.8" else 20
        ranges = {int(k.split(":", 1)[1]): v for k, v in meta.items()
                  if k.startswith("release_from:")}
        if not ranges or ranges[max(ranges)] != code:
            start = 1 if not ranges else \
                (db.conn.execute("SELECT max(ino) FROM inodes").fetchone()[0] or 0) + 1
            meta[f"release_from:{start}"] = code
            ranges[start] = code
        self._starts = sorted(ranges)
        self._codes = [ranges[k] for k in self._starts]

    def created_under_18(self, ino: int) -> bool:
        """Was inode `ino` created by a 1.8 server (so that its FID is IGIF)?"""
        i = bisect.bisect_right(self._starts, ino) - 1
        return i >= 0 and self._codes[i] == 18
