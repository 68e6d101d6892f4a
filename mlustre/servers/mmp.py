"""mmp.py - who may serve a shared storage directory, decided without I/O (Lustre's MMP).

A failover pair shares one storage directory. The exclusive flock of `storage.py`
tells a claimant whether the previous holder *process* is gone (the kernel drops the
lock when it dies), but not whether a holder that is still alive can still serve:
a frozen process (SIGSTOP, a hung host) keeps its lock, and so does a server whose
host is cut off from the network while it still reaches the storage. Lustre answers
that with MMP, a heartbeat block whose sequence number the active server keeps
bumping; this is the same thing as a record in `DATA/mmp`.

The rules (every time is the caller's `now`, a monotonic clock):

- The active server renews the record every `interval`. It may serve only while its
  last renewal *started* less than `lease` (3 intervals) ago; past that it fences
  itself (stops at once, writes nothing more), and it checks that before every
  request, so a process thawed after SIGSTOP answers nothing before it notices. It
  also fences when the record it re-reads before each renewal is not its own (someone
  took over), and it skips renewals while it has not reached the MGS (its quorum)
  for `quorum_timeout`: a host that is cut off stops renewing, so it fences, and its
  partner can take over.
- A claimant that gets the flock claims at once when the record is clean (a graceful
  stop), absent, or was written by a holder of the flock (that holder is dead). A
  record written by a holder that took over without the flock (see below) is watched
  like a live one. A standby's claim says whether the dead holder had gone *silent*
  first: its record had not moved for more than an interval before the flock came
  free. That is a holder that fenced itself (cut off from the MGS, or hung) rather
  than one that crashed while renewing: its clients have heard nothing from it for a
  while and learn that it is gone only from their request timeouts, so the new server
  must wait for them as long as after a live takeover (servers/target.py).
- Otherwise (the flock is held: the holder is alive) a plain server refuses at once,
  and a standby (`--standby`) watches: once the sequence number has not changed for
  `takeover_wait` (longer than the lease plus one interval, so the holder has fenced
  by then, whatever its clock did) and it reaches the MGS, it takes over: it writes a
  record of its own (seq + 1), waits `recheck_delay`, and serves only if the record
  is still its own (two standbys claiming at once: the later write wins, the other
  watches again). Such a holder has no flock (the frozen one still holds it); it
  takes the flock as soon as it is free and says so in its next record.

`Mmp` is the state table (watching -> claiming -> active -> released | fenced);
illegal transitions raise. The driver (`heartbeat.py`) reads and writes the record,
tries the flock, pings the MGS and runs the timers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

LEASE_INTERVALS = 3  # the active server serves until 3 intervals without a renewal
WAIT_INTERVALS = 5  # a standby waits 5 unchanged intervals (lease + a poll + margin)
WAIT_MARGIN = 0.5  # seconds added to the wait (scheduling on a loaded host)


class MmpError(Exception):
    """An illegal transition of the state table (a driver bug)."""


@dataclass(frozen=True, slots=True)
class Record:
    """The heartbeat record in `DATA/mmp`.

    seq: bumped by every renewal and claim; holder: who wrote it (name, pid, NID);
    clean: written by a graceful stop (nobody serves); flock: the writer holds the
    storage's flock, so a claimant that gets the flock knows the writer is dead."""

    seq: int
    holder: str
    clean: bool = False
    flock: bool = False
    interval: float = 1.0

    def to_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "holder": self.holder, "clean": self.clean,
                "flock": self.flock, "interval": self.interval}

    @classmethod
    def from_dict(cls, d: object) -> Record | None:
        """A record read back, or None when it is not one (torn, foreign): the
        caller treats that as "changed", the cautious reading."""
        if not isinstance(d, dict):
            return None
        seq, holder = d.get("seq"), d.get("holder")
        interval = d.get("interval", 1.0)
        if not isinstance(seq, int) or not isinstance(holder, str) \
                or not isinstance(interval, (int, float)):
            return None
        return cls(seq, holder, bool(d.get("clean")), bool(d.get("flock")), float(interval))


class State(Enum):
    WATCHING = "watching"  # not serving; looking at the record (and the flock)
    CLAIMING = "claiming"  # our record is written; waiting to re-check it
    ACTIVE = "active"  # serving; renewing the record
    RELEASED = "released"  # stopped gracefully (a clean record written)
    FENCED = "fenced"  # could not prove it still owns the storage: serves nothing more


class Verdict(Enum):
    """What a watching server does now."""

    WAIT = "wait"  # look again after an interval (release the flock if it was taken)
    CLAIM = "claim"  # write `record` and serve now (the flock is ours: holder gone)
    TAKE_OVER = "take_over"  # write `record` (no flock), re-check after recheck_delay
    REFUSE = "refuse"  # give up: `reason`


@dataclass(frozen=True, slots=True)
class Decision:
    """verdict, the record to write (CLAIM, TAKE_OVER), why (WAIT, REFUSE), and for a
    CLAIM whether the dead holder had stopped renewing before it died (see above)."""

    verdict: Verdict
    record: Record | None = None
    reason: str = ""
    holder_silent: bool = False


class Mmp:
    """The heartbeat state of one server for one storage directory."""

    def __init__(self, me: str, interval: float, *, standby: bool = False,
                 quorum_timeout: float | None = None) -> None:
        """me: this server's holder string; standby: watch and take over instead of
        refusing a live holder; quorum_timeout: renew (and take over) only while the
        MGS was reached that recently (None: no quorum needed)."""
        if not interval > 0:
            raise ValueError("the MMP interval must be positive")
        self.me = me
        self.interval = interval
        self.standby = standby
        self.quorum_timeout = quorum_timeout
        self.lease = LEASE_INTERVALS * interval
        self.takeover_wait = WAIT_INTERVALS * interval + WAIT_MARGIN
        self.recheck_delay = 2 * interval
        self.state = State.WATCHING
        self.seq = 0  # of the record we wrote last
        self.has_flock = False
        self.renewed_at: float | None = None  # start of the last successful write
        self._seen: tuple[int, str] | None = None  # the record being watched...
        self._seen_since = 0.0  # ...unchanged since then
        self.fence_reason = ""

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise MmpError(f"MMP: {self.state.value} -> expected {[s.value for s in states]}")

    def quorum_ok(self, now: float, mgs_reached_at: float | None) -> bool:
        if self.quorum_timeout is None:
            return True
        return mgs_reached_at is not None and now - mgs_reached_at <= self.quorum_timeout

    # -- watching --
    def watch(self, now: float, record: Record | None, *, got_flock: bool,
              unreadable: bool = False, mgs_reached_at: float | None = None) -> Decision:
        """One look at the storage: the record (None: no record; unreadable: there is
        a file but not a record) and whether the flock could be taken."""
        self._require(State.WATCHING)
        seq = record.seq if record is not None else 0
        key = (seq, record.holder if record is not None else "?") if not unreadable \
            else (-1, f"unreadable@{now}")
        if got_flock and not unreadable and (record is None or record.clean or record.flock):
            # The kernel says every earlier holder of the flock is gone, and the record
            # was left by one of them (or by nobody): the storage is free. Unchanged for
            # more than an interval before that: the holder had stopped renewing.
            silent = (record is not None and not record.clean and key == self._seen
                      and now - self._seen_since > self.interval)
            return Decision(Verdict.CLAIM, self._mine(seq + 1, flock=True),
                            holder_silent=silent)
        if not self.standby:
            if not got_flock:
                return Decision(Verdict.REFUSE, reason=_live(record))
            # The flock is free but the record's holder took over without it: it may
            # be alive. Watch it like a standby, but refuse once it moves.
            if self._seen is not None and key != self._seen:
                return Decision(Verdict.REFUSE, reason="its heartbeat is live: " +
                                _live(record))
        if key != self._seen:
            self._seen, self._seen_since = key, now
            return Decision(Verdict.WAIT)
        if now - self._seen_since < self.takeover_wait:
            return Decision(Verdict.WAIT)
        if not self.quorum_ok(now, mgs_reached_at):
            return Decision(Verdict.WAIT, reason="the MGS is not reachable")
        return Decision(Verdict.TAKE_OVER, self._mine(seq + 1, flock=got_flock))

    def _mine(self, seq: int, *, flock: bool) -> Record:
        return Record(seq, self.me, clean=False, flock=flock, interval=self.interval)

    def claimed(self, now: float, record: Record, *, started_at: float) -> None:
        """Our CLAIM record is written (the flock is ours): serve."""
        self._require(State.WATCHING)
        self.seq, self.has_flock = record.seq, record.flock
        self.renewed_at = started_at
        self.state = State.ACTIVE

    def taking_over(self, record: Record, *, started_at: float) -> None:
        """Our TAKE_OVER record is written: re-check it after recheck_delay."""
        self._require(State.WATCHING)
        self.seq, self.has_flock = record.seq, record.flock
        self.renewed_at = started_at
        self.state = State.CLAIMING

    def recheck(self, now: float, record: Record | None) -> bool:
        """After recheck_delay: still our record (and our lease not run out while we
        waited) -> active (True); else somebody else claimed too -> watching (False)."""
        self._require(State.CLAIMING)
        if record is not None and record.seq == self.seq and record.holder == self.me \
                and self.renewed_at is not None and now - self.renewed_at < self.lease:
            self.state = State.ACTIVE
            return True
        self.state = State.WATCHING
        self._seen, self.renewed_at = None, None
        return False

    # -- active --
    def may_serve(self, now: float) -> bool:
        """Whether a request may be handled now (also: a commit may be written)."""
        return (self.state is State.ACTIVE and self.renewed_at is not None
                and now - self.renewed_at < self.lease)

    def expired(self, now: float) -> str | None:
        """Why an active server must fence now, or None."""
        self._require(State.ACTIVE, State.CLAIMING)
        if self.renewed_at is None or now - self.renewed_at >= self.lease:
            age = "never" if self.renewed_at is None else f"{now - self.renewed_at:.1f}s ago"
            return (f"heartbeat not renewed within its lease ({self.lease:g}s; last renewal "
                    f"{age})")
        return None

    def check_record(self, record: Record | None) -> str | None:
        """The record re-read before a renewal: None if still ours, else why we fence."""
        self._require(State.ACTIVE, State.CLAIMING)
        if record is None:
            return "heartbeat record missing or unreadable"
        if record.seq != self.seq or record.holder != self.me:
            return f"heartbeat taken over: seq {record.seq} by {record.holder}"
        return None

    def renewal(self, now: float, *, mgs_reached_at: float | None = None,
                flock: bool | None = None) -> Record | None:
        """The record to write now (seq + 1), or None to skip this renewal because the
        quorum is lost (the lease then runs out). flock: whether we hold it now."""
        self._require(State.ACTIVE)
        if flock is not None:
            self.has_flock = flock
        if not self.quorum_ok(now, mgs_reached_at):
            return None
        return self._mine(self.seq + 1, flock=self.has_flock)

    def renewed(self, record: Record, *, started_at: float) -> None:
        self._require(State.ACTIVE)
        self.seq = record.seq
        self.renewed_at = started_at

    def fence(self, reason: str) -> None:
        """Serve nothing more (terminal)."""
        self._require(State.ACTIVE, State.CLAIMING, State.WATCHING)
        self.state = State.FENCED
        self.fence_reason = reason

    def release(self) -> Record | None:
        """A graceful stop: the clean record to write (None: we are not active, so we
        write nothing; a fenced server must not touch the record)."""
        if self.state is not State.ACTIVE:
            return None
        self.state = State.RELEASED
        return Record(self.seq + 1, self.me, clean=True, flock=self.has_flock,
                      interval=self.interval)


def _live(record: Record | None) -> str:
    if record is None:
        return "held by a live server"
    return f"held by {record.holder} (heartbeat seq {record.seq})"
