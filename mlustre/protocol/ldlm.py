"""ldlm.py - the lock vocabulary shared by clients and servers: modes and their
compatibility, lock types, inode bits, extents and resource ids (Lustre's LDLM).

Pure data and functions; the server namespace (servers/ldlm_namespace.py) and the
client namespace (fuse_client/ldlm_client.py) build on it.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import NamedTuple

from .constants import FID_SEQ_UPDATE_LOCK, UPDATE_LOCK_OID


class Mode(IntFlag):
    """Lock modes: single bits, so a set of modes is a mask (lustre_idl.h)."""

    EX = 1
    PW = 2
    PR = 4
    CW = 8
    CR = 16
    NL = 32


# LCK_COMPAT_*: for a granted mode, the modes that may be granted beside it.
COMPAT: dict[Mode, Mode] = {
    Mode.EX: Mode.NL,
    Mode.PW: Mode.NL | Mode.CR,
    Mode.PR: Mode.NL | Mode.CR | Mode.PR,
    Mode.CW: Mode.NL | Mode.CR | Mode.CW,
    Mode.CR: Mode.NL | Mode.CR | Mode.CW | Mode.PR | Mode.PW,
    Mode.NL: Mode.NL | Mode.CR | Mode.CW | Mode.PR | Mode.PW | Mode.EX,
}


# The same as pairs: a set lookup, without IntFlag arithmetic (the server's grant loop
# asks this for every pair of locks on a busy resource, e.g. the barrier's).
_COMPAT_PAIRS = frozenset((int(h), int(w)) for h in COMPAT for w in Mode if COMPAT[h] & w)


def compatible(held: Mode, wanted: Mode) -> bool:
    """May `wanted` be granted while `held` is (Lustre's lck_compat_array)?"""
    return (held, wanted) in _COMPAT_PAIRS


# A lock in mode M also satisfies requests for these modes (ldlm_lock_match's
# "mode covers"): EX covers everything, PW covers PR and below, etc.
COVERS: dict[Mode, Mode] = {
    Mode.EX: Mode.EX | Mode.PW | Mode.PR | Mode.CW | Mode.CR | Mode.NL,
    Mode.PW: Mode.PW | Mode.PR | Mode.CW | Mode.CR | Mode.NL,
    Mode.PR: Mode.PR | Mode.CR | Mode.NL,
    Mode.CW: Mode.CW | Mode.CR | Mode.NL,
    Mode.CR: Mode.CR | Mode.NL,
    Mode.NL: Mode.NL,
}


def covers(held: Mode, wanted: Mode) -> bool:
    return bool(COVERS[held] & wanted)


class LockType(IntEnum):
    PLAIN = 10
    EXTENT = 11
    FLOCK = 12
    IBITS = 13


class IBits(IntFlag):
    """Inode bits of MDT locks (enum mds_ibits_locks)."""

    LOOKUP = 0x1
    UPDATE = 0x2
    OPEN = 0x4
    LAYOUT = 0x8
    PERM = 0x10
    XATTR = 0x20
    SOM = 0x40  # mlustre's own: the size on the MDT is the file's (size_on_mdt.py)


IBITS_FULL = (IBits.LOOKUP | IBits.UPDATE | IBits.OPEN | IBits.LAYOUT | IBits.PERM | IBits.XATTR
              | IBits.SOM)

OBJECT_EOF = (1 << 64) - 1  # an extent "to the end of the object"

# What an update that removes or renames a name revokes on the MDT: the name's lookup
# bit and the child's attributes (nlink, ctime). Both sides must agree on it.
NAME_BITS = int(IBits.LOOKUP | IBits.UPDATE)
# A write-back lock (PW) covers a file's attributes: the bits of a chmod/chown/utimes.
WB_BITS = int(IBits.UPDATE | IBits.PERM)

# LDLM wire flags (lustre_dlm_flags.h values where Lustre has them). The one list both
# sides use: a value defined twice is a value that can drift apart.
FL_LOCK_CHANGED = 0x1          # the granted extent differs from the requested one
FL_BLOCK_GRANTED = 0x2         # a replayed lock was granted before the restart
FL_BLOCK_WAIT = 0x8            # the lock was queued: a CP AST will grant it
FL_AST_SENT = 0x20             # a blocking AST went out for this lock
FL_REPLAY = 0x100              # the lock comes back by lock replay
FL_DISCARD_DATA = 0x10000      # the BAST asks to drop the pages without writeback
FL_CBPENDING = 1 << 34         # a BAST arrived (also before the grant)
FL_FAILED = 1 << 38            # enqueue failed or the lock was dropped by eviction
FL_NO_EXPANSION = 1 << 40      # never expand this lock's extent (mlustre's own bit)
FL_BL_DONE = 1 << 47           # the cancel has started (blocking callback done)
# Bits a client keeps in its own locks and never sends (above every wire bit).
FL_ELC = 1 << 59               # cancelled early by an update of this client
FL_NO_BORROW = 1 << 60         # this lock's flush is done: I/O may no longer use it


class Extent(NamedTuple):
    """A byte range [start, end], inclusive, as Lustre's ldlm_extent."""

    start: int
    end: int

    def overlaps(self, other: Extent) -> bool:
        return self.start <= other.end and other.start <= self.end

    def contains(self, other: Extent) -> bool:
        return self.start <= other.start and other.end <= self.end


WHOLE = Extent(0, OBJECT_EOF)


class ResId(NamedTuple):
    """A resource id: 4 u64s. MDT: (FID seq, FID oid, FID ver, 0); OST: (object id, 0,
    0, 0); the SIR barrier: (FID_SEQ_UPDATE_LOCK, 0x0ba771e7, 0, 0)."""

    a: int
    b: int = 0
    c: int = 0
    d: int = 0


def inode_res(ino: int) -> ResId:
    """The lock resource of an MDT inode (its object id in the first word)."""
    return ResId(ino, 0, 0, 0)


def policies_conflict(type_: LockType, held_policy: object, wanted_policy: object) -> bool:
    """Do two locks of the same resource and type cover a common part of it?

    PLAIN locks always do; IBITS locks when their bits intersect; EXTENT locks when
    their extents overlap."""
    if type_ is LockType.IBITS:
        assert isinstance(held_policy, int) and isinstance(wanted_policy, int)
        return (int(held_policy) & int(wanted_policy)) != 0  # (no IntFlag arithmetic)
    if type_ is LockType.EXTENT:
        assert isinstance(held_policy, Extent) and isinstance(wanted_policy, Extent)
        return held_policy.overlaps(wanted_policy)
    return True


def conflicts(type_: LockType, held_mode: Mode, held_policy: object, wanted_mode: Mode,
              wanted_policy: object) -> bool:
    """Does a lock (held_mode, held_policy) block a request (wanted_mode, wanted_policy)?"""
    return (not compatible(held_mode, wanted_mode)
            and policies_conflict(type_, held_policy, wanted_policy))


def barrier_lock(kind: str) -> tuple[ResId, LockType, object]:
    """The SIR barrier resource of a target of `kind` ("mdt" or "ost"), its lock type
    and the policy every barrier lock uses: an IBITS lock on the MDT, an EXTENT lock
    over [0, EOF] on OSTs."""
    res = ResId(FID_SEQ_UPDATE_LOCK, UPDATE_LOCK_OID, 0, 0)
    if kind == "mdt":
        return res, LockType.IBITS, int(IBits.UPDATE)
    return res, LockType.EXTENT, WHOLE
