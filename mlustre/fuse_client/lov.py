"""lov.py - striping: file offsets <-> (stripe, OST object, object offset).

RAID-0 as Lustre's LOV does it: stripe_size bytes go to object 0, the next
stripe_size to object 1, and so on round the stripe_count objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class Segment(NamedTuple):
    """A piece of a file extent that lives in one object."""

    stripe: int
    ost_idx: int
    oid: int
    obj_offset: int
    file_offset: int
    length: int


@dataclass(slots=True)
class ObjectRun:
    """Contiguous bytes of one object: where they are in it, and the file pieces
    (file offset, length), in file order, that they hold back to back."""

    ost_idx: int
    oid: int
    obj_offset: int
    length: int
    pieces: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Layout:
    stripe_count: int
    stripe_size: int
    objects: tuple[tuple[int, int], ...]  # (ost_idx, oid) per stripe
    gen: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        objects = tuple((int(o), int(i)) for o, i in d["objects"])
        if not objects or d["stripe_size"] <= 0 or len(objects) != d["stripe_count"]:
            raise ValueError(f"inconsistent layout {d!r}")
        return cls(len(objects), int(d["stripe_size"]), objects, int(d.get("gen", 0)))

    def map_extent(self, offset: int, length: int) -> list[Segment]:
        """Split [offset, offset+length) into per-object segments, in file order."""
        out: list[Segment] = []
        ss, count = self.stripe_size, self.stripe_count
        end = offset + length
        pos = offset
        while pos < end:
            stripe_no, within = divmod(pos, ss)
            stripe = stripe_no % count
            n = min(ss - within, end - pos)
            ost_idx, oid = self.objects[stripe]
            out.append(Segment(stripe, ost_idx, oid, (stripe_no // count) * ss + within, pos, n))
            pos += n
        return out

    def object_runs(self, offset: int, length: int) -> list[ObjectRun]:
        """The segments of [offset, offset+length) merged per object where they are
        contiguous in it (with small stripes a chunk's stripe units on one object follow
        each other there): one RPC per run instead of one per stripe unit."""
        runs: dict[tuple[int, int], list[ObjectRun]] = {}
        out: list[ObjectRun] = []
        for seg in self.map_extent(offset, length):
            mine = runs.setdefault((seg.ost_idx, seg.oid), [])
            last = mine[-1] if mine else None
            if last is not None and last.obj_offset + last.length == seg.obj_offset:
                last.pieces.append((seg.file_offset, seg.length))
                last.length += seg.length
                continue
            run = ObjectRun(seg.ost_idx, seg.oid, seg.obj_offset, seg.length,
                            [(seg.file_offset, seg.length)])
            mine.append(run)
            out.append(run)
        return out

    def object_size_at(self, stripe: int, file_size: int) -> int:
        """How long object `stripe` is when the file is file_size bytes (for truncate)."""
        ss, count = self.stripe_size, self.stripe_count
        full_rounds, rest = divmod(file_size, ss * count)
        size = full_rounds * ss
        rest -= stripe * ss
        return size + min(max(rest, 0), ss)
