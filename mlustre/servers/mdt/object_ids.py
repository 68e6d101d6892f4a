"""object_ids.py - OST object ids: handed out per OST, never twice, and the ranges a crash
may have left objects in without a file (orphans, for the OSTs' orphan cleanup)."""

from __future__ import annotations

from .db import MdtDb

OBJECT_ID_GAP = 1 << 24  # object ids skipped at each start (more than one run can lose)


class ObjectIds:
    """Meta counters ``obj_next:<ost>`` (the next id), ``rr_next`` (round-robin start)
    and ``orphans_from:<ost>`` (first id an earlier run handed out after its last commit).

    At startup (in the startup transaction): ids handed out after the last commit of an
    earlier run were lost with it but may already name objects on the OSTs, so each
    counter jumps by OBJECT_ID_GAP and the ids skipped are remembered as a possible orphan
    range, kept from the earliest run not cleaned up yet up to this run's first id.
    """

    def __init__(self, db: MdtDb, ost_count: int) -> None:
        self._db = db
        self.ost_count = ost_count
        meta = db.meta
        self._run_start: dict[int, int] = {}
        for key in [k for k in meta if k.startswith("obj_next:")]:
            ost = int(key.split(":", 1)[1])
            meta.setdefault(f"orphans_from:{ost}", meta[key])
            meta[key] += OBJECT_ID_GAP
            self._run_start[ost] = meta[key]

    def allocate(self, count: int, offset: int) -> tuple[int, list[list[int]]]:
        """Pick OSTs for `count` stripes (from `offset`, -1: round robin) and take a fresh
        object id on each; return (first OST, [[ost, id], ...]).  Inside an operation."""
        n = self.ost_count
        if offset == -1:
            start = self._db.meta_add("rr_next", 1) % n
        else:
            start = offset % n
        objects = []
        for i in range(count):
            ost = (start + i) % n
            objects.append([ost, self._db.meta_add(f"obj_next:{ost}", 1, default=1)])
        return start, objects

    def orphan_ranges(self) -> dict[int, tuple[int, int]]:
        """OST index -> object ids [lo, hi) handed out by earlier runs after their last
        commit: objects of creations lost with a crash may exist there."""
        out = {}
        for key, lo in self._db.meta.items():
            if key.startswith("orphans_from:"):
                ost = int(key.split(":", 1)[1])
                hi = self._run_start.get(ost, lo)
                out[ost] = (lo, max(lo, hi))
        return out

    def objects_in(self, ost: int, lo: int, hi: int) -> list[int]:
        """Object ids in [lo, hi) on OST `ost` that a file's layout names (replayed
        creations reuse the ids they had), open-unlinked files included."""
        rows = self._db.conn.execute(
            "SELECT DISTINCT json_extract(o.value, '$[1]') AS oid"
            " FROM inodes, json_each(inodes.layout, '$.objects') AS o"
            " WHERE inodes.layout IS NOT NULL AND json_extract(o.value, '$[0]') = ?"
            " AND oid >= ? AND oid < ? ORDER BY oid", (ost, lo, hi))
        return [r[0] for r in rows]

    def forget_orphan_range(self, ost: int) -> None:
        """The OST destroyed the orphans of orphan_ranges()[ost].  Inside an operation."""
        key = f"orphans_from:{ost}"
        self._db.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        self._db.on_success(lambda: self._db.meta.pop(key, None))
