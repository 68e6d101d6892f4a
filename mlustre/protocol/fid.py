"""fid.py - File identifiers: Lustre FIDs and 1.8's (ino, generation) pairs.

2.0 names an object by FID (seq, oid, ver). 1.8 names it by (ino, gen). An object
created under 1.8 is seen under 2.0 through its IGIF FID (seq=ino, oid=gen). The
MDT here numbers inodes itself, so a FID is derived from (ino, gen) and back.
"""

from __future__ import annotations

from typing import NamedTuple

from .constants import FID_SEQ_NORMAL, FID_SEQ_ROOT

IGIF_MAX_SEQ = 0xFFFFFFFF


class Fid(NamedTuple):
    seq: int
    oid: int
    ver: int = 0

    def __str__(self) -> str:
        return f"[0x{self.seq:x}:0x{self.oid:x}:0x{self.ver:x}]"

    @classmethod
    def parse(cls, text: str) -> Fid:
        """Parse "[0xSEQ:0xOID:0xVER]" (brackets optional), as lfs prints it."""
        parts = text.strip().strip("[]").split(":")
        if len(parts) != 3:
            raise ValueError(f"not a FID: {text!r}")
        return cls(*(int(p, 16) for p in parts))


ROOT_FID = Fid(FID_SEQ_ROOT, 1, 0)


def fid_of(ino: int, gen: int, *, igif: bool = False) -> Fid:
    """The FID of MDT inode (ino, gen): IGIF for objects created under 1.8."""
    if ino == 1:
        return ROOT_FID
    if igif:
        if not 12 <= ino <= IGIF_MAX_SEQ:
            raise ValueError(f"inode {ino} has no IGIF FID (IGIF covers 12..{IGIF_MAX_SEQ})")
        return Fid(ino, gen, 0)
    return Fid(FID_SEQ_NORMAL + (ino >> 32), ino & 0xFFFFFFFF, 0)


def ino_of(fid: Fid) -> int:
    """The MDT inode number a FID names."""
    if fid == ROOT_FID:
        return 1
    if 12 <= fid.seq <= IGIF_MAX_SEQ:
        return fid.seq
    if fid.seq < FID_SEQ_NORMAL:
        raise ValueError(f"FID {fid} names no inode")
    return ((fid.seq - FID_SEQ_NORMAL) << 32) | fid.oid
