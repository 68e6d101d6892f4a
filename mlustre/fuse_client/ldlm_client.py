"""ldlm_client.py - the client's lock table for one target (Lustre's client-side
ldlm namespace): local lock handles, matching, use counts, the LRU of unused
locks, blocking ASTs, cancels, early lock cancel (ELC), lock replay, eviction.

Sans-IO: no trio, no sockets, no clocks. Methods that need the time take `now`.
The client's trio layer drives it: it sends the enqueues and cancels, flushes
and drops cached pages, attributes and names under a lock before cancelling it,
and invalidates the kernel's copies. Every decision about which lock may be
used, kept or must be given back is made here.

Life of a lock (ClientLock.state):

    ENQUEUING --granted()--> GRANTED <--addref/decref--> GRANTED (LRU when unused)
        |                       |  blocking_ast()
        | enqueue_failed()      v
        v                   CBPENDING --start_cancel()--> CANCELLING --cancelled()--> CANCELLED
    CANCELLED               (GRANTED locks may also go straight to CANCELLING:
                             LRU, ELC, cancel before replay)

Rules kept from Lustre:
* Only GRANTED locks are matched: never one with a pending BAST or being cancelled.
* A lock with users (readers + writers) is never cancelled; a BAST on it is
  remembered (CBPENDING) and the cancel happens when the last user leaves.
* The LRU holds GRANTED locks with no users, in the order they became unused;
  NO_LRU locks (e.g. the SIR barrier lock) never enter it.
* The selection of locks to cancel (LRU, ELC, before replay) marks them
  CANCELLING at once, as Lustre's ldlm_cancel_lru_local does, so that nothing
  can match or reference them while the caller flushes and sends the cancel.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from mlustre.protocol.ldlm import (  # noqa: F401  (re-exported to the client modules)
    FL_BL_DONE,
    FL_BLOCK_GRANTED,
    FL_BLOCK_WAIT,
    FL_CBPENDING,
    FL_DISCARD_DATA,
    FL_FAILED,
    FL_REPLAY,
    Extent,
    LockType,
    Mode,
    ResId,
    conflicts,
    covers,
)

# LDLM flags (protocol/ldlm.py) are kept in ClientLock.flags.

READ = "r"
WRITE = "w"


class UnknownLock(KeyError):
    """No lock with this handle in the namespace."""


class LockState(Enum):
    ENQUEUING = "enqueuing"    # enqueue sent (or queued on the server), not granted yet
    GRANTED = "granted"
    CBPENDING = "cbpending"    # a BAST arrived: no new users; cancel when idle
    CANCELLING = "cancelling"  # cancel started: no longer matchable, cancel RPC to send
    CANCELLED = "cancelled"    # gone from the namespace


@dataclass(slots=True, eq=False)
class ClientLock:
    handle: int                      # local cookie, unique within the namespace
    remote_handle: int | None        # the server's cookie, once known
    res: ResId
    type: LockType
    mode: Mode
    policy: object                   # IBits int (IBITS), Extent (EXTENT) or None
    state: LockState = LockState.ENQUEUING
    readers: int = 0
    writers: int = 0
    no_lru: bool = False
    last_used: float = 0.0
    flags: int = 0

    @property
    def users(self) -> int:
        return self.readers + self.writers

    @property
    def discard_data(self) -> bool:
        return bool(self.flags & FL_DISCARD_DATA)

    @property
    def waiting(self) -> bool:
        """Queued on the server (enqueue reply BLOCK_WAIT), not granted yet."""
        return self.state is LockState.ENQUEUING and bool(self.flags & FL_BLOCK_WAIT)


class BastKind(Enum):
    UNKNOWN = "unknown"                    # no such lock: our cancel raced the BAST; reply OK
    ALREADY = "already"                    # BAST already seen or cancel started; nothing new
    CANCEL_NOW = "cancel_now"              # no users: flush/drop caches, then cancel
    CANCEL_WHEN_IDLE = "cancel_when_idle"  # users remain (or not granted yet): cancel later


@dataclass(frozen=True, slots=True)
class BastAction:
    kind: BastKind
    lock: ClientLock | None = None
    discard_data: bool = False   # drop the pages under the lock without writeback

    @property
    def cancel_now(self) -> bool:
        return self.kind is BastKind.CANCEL_NOW


def policy_covers(type_: LockType, held: object, wanted: object) -> bool:
    """Does a held policy include the whole of a wanted one?"""
    if type_ is LockType.IBITS:
        assert isinstance(held, int) and isinstance(wanted, int)
        return held & wanted == wanted
    if type_ is LockType.EXTENT:
        assert isinstance(held, Extent) and isinstance(wanted, Extent)
        return held.contains(wanted)
    return True


def replay_flags(lock: ClientLock) -> int:
    """The flags of the LDLM_ENQUEUE that replays `lock`."""
    if lock.state is LockState.ENQUEUING:
        return FL_REPLAY | FL_BLOCK_WAIT
    return FL_REPLAY | FL_BLOCK_GRANTED


@dataclass(slots=True)
class Reservation:
    """A range of handles [base, base + count) given to one request."""
    base: int
    count: int
    res: ResId
    type: LockType
    mode: Mode
    policy: object
    locks: dict[int, ClientLock] = field(default_factory=dict)


_LIVE_WITH_USERS = (LockState.ENQUEUING, LockState.GRANTED, LockState.CBPENDING)


class ClientNamespace:
    """The locks this client holds (or is enqueueing) on one target."""

    def __init__(self, target: str, *, lru_size: int = 100, lru_max_age: float = 600.0,
                 cancel_unused_before_replay: bool = True) -> None:
        if lru_size < 0 or lru_max_age < 0:
            raise ValueError("lru_size and lru_max_age must not be negative")
        self.target = target
        self.lru_size = lru_size
        self.lru_max_age = lru_max_age
        self.cancel_unused_before_replay = cancel_unused_before_replay
        self._next_handle = 1
        self._locks: dict[int, ClientLock] = {}
        self._by_res: dict[ResId, dict[int, ClientLock]] = {}
        self._by_remote: dict[int, ClientLock] = {}
        self._lru: OrderedDict[int, ClientLock] = OrderedDict()
        # Locks dropped (eviction, failed enqueue) while users still held them: kept
        # only so that those users' decref calls work.
        self._orphans: dict[int, ClientLock] = {}
        # Handle ranges promised to a request that may grant a lock on any of them
        # (readdir with its entries' locks): base -> the reservation.
        self._reserved: dict[int, Reservation] = {}
        self.stats: dict[str, int] = {
            "granted": 0, "cancelled": 0, "basts": 0, "lru_cancels": 0, "elc": 0,
            "invalidated": 0,
        }

    # ---- lookups ---------------------------------------------------------------------

    @property
    def lock_count(self) -> int:
        return len(self._locks)

    @property
    def lru_count(self) -> int:
        return len(self._lru)

    def lock(self, handle: int) -> ClientLock:
        try:
            return self._locks[handle]
        except KeyError:
            raise UnknownLock(handle) from None

    def by_remote(self, remote_handle: int) -> ClientLock | None:
        return self._by_remote.get(remote_handle)

    def locks_on(self, res: ResId) -> list[ClientLock]:
        return list(self._by_res.get(res, {}).values())

    def all_locks(self) -> list[ClientLock]:
        return list(self._locks.values())

    def lru_locks(self) -> list[ClientLock]:
        """The LRU, least recently used first."""
        return list(self._lru.values())

    # ---- enqueue ---------------------------------------------------------------------

    def new_lock(self, res: ResId, type: LockType, mode: Mode, policy: object, *,
                 no_lru: bool = False) -> ClientLock:
        """A lock in state ENQUEUING; the caller sends the enqueue with its handle."""
        _check_policy(type, policy)
        lock = ClientLock(handle=self._next_handle, remote_handle=None, res=res, type=type,
                          mode=mode, policy=policy, no_lru=no_lru)
        self._next_handle += 1
        self._locks[lock.handle] = lock
        self._by_res.setdefault(res, {})[lock.handle] = lock
        return lock

    def reserve(self, count: int, res: ResId, type: LockType, mode: Mode,
                policy: object) -> Reservation:
        """Handles for `count` locks a request may be granted (one per entry of a page
        it asks for), without making the locks: only those the reply grants become
        locks (made()), so a page of 5 entries costs 5 locks, not `count`. A callback
        that overtakes the reply makes its lock on the spot."""
        if count < 1:
            raise ValueError("a reservation needs at least one handle")
        _check_policy(type, policy)
        r = Reservation(self._next_handle, count, res, type, mode, policy)
        self._next_handle += count
        self._reserved[r.base] = r
        return r

    def made(self, r: Reservation, index: int) -> tuple[ClientLock | None, bool]:
        """The ENQUEUING lock of a reserved handle (made now if it was not yet):
        (lock, whether it was made by this call); no lock once the reservation is over
        (unreserved, or dropped by an eviction: what the reply grants is not ours)."""
        if self._reserved.get(r.base) is not r:
            return None, False
        if not 0 <= index < r.count:
            raise ValueError(f"index {index} outside reservation of {r.count}")
        handle = r.base + index
        lock = r.locks.get(handle)
        if lock is not None:
            return lock, False
        lock = ClientLock(handle=handle, remote_handle=None, res=r.res, type=r.type,
                          mode=r.mode, policy=r.policy)
        self._locks[handle] = lock
        self._by_res.setdefault(r.res, {})[handle] = lock
        r.locks[handle] = lock
        return lock, True

    def reserved_index(self, handle: int) -> tuple[Reservation, int] | None:
        """The live reservation a handle belongs to, if any (and its index there)."""
        for r in self._reserved.values():
            if r.base <= handle < r.base + r.count:
                return r, handle - r.base
        return None

    def unreserve(self, r: Reservation) -> None:
        """The reply was handled (or the request failed): no more locks from it."""
        self._reserved.pop(r.base, None)

    def rebind(self, handle: int, res: ResId, policy: object) -> ClientLock:
        """An intent lock's reply named its resource (a lookup learns the inode from the
        reply) and the bits the server chose: move the ENQUEUING lock there."""
        lock = self.lock(handle)
        if lock.state is not LockState.ENQUEUING:
            raise ValueError(f"rebind of {lock.state.value} lock {handle}")
        _check_policy(lock.type, policy)
        on_res = self._by_res[lock.res]
        del on_res[handle]
        if not on_res:
            del self._by_res[lock.res]
        lock.res, lock.policy = res, policy
        self._by_res.setdefault(res, {})[handle] = lock
        return lock

    def enqueue_waiting(self, handle: int, remote_handle: int) -> ClientLock:
        """The enqueue reply said the lock is queued (BLOCK_WAIT): a CP AST will grant it."""
        lock = self.lock(handle)
        if lock.state is not LockState.ENQUEUING:
            raise ValueError(f"lock {handle} is {lock.state.value}, not enqueuing")
        lock.flags |= FL_BLOCK_WAIT
        self._set_remote(lock, remote_handle)
        return lock

    def granted(self, handle: int, remote_handle: int, mode: Mode, policy: object,
                now: float, *, cbpending: bool = False) -> ClientLock:
        """The enqueue reply or a CP AST granted the lock, maybe in a different mode or with
        an expanded extent. `cbpending`: the grant came with a BAST already sent (or one
        arrived before the grant): the lock is granted straight into CBPENDING, and if it
        has no users the caller must cancel it now (check `state` and `users`).

        A grant of a lock that is no longer enqueuing (a resent CP AST) changes nothing."""
        lock = self.lock(handle)
        if lock.state is not LockState.ENQUEUING:
            return lock
        _check_policy(lock.type, policy)
        lock.mode = mode
        lock.policy = policy
        lock.flags &= ~FL_BLOCK_WAIT
        lock.last_used = now
        self._set_remote(lock, remote_handle)
        self.stats["granted"] += 1
        if cbpending or lock.flags & FL_CBPENDING:
            lock.flags |= FL_CBPENDING
            lock.state = LockState.CBPENDING
        else:
            lock.state = LockState.GRANTED
            self._maybe_to_lru(lock)
        return lock

    def enqueue_failed(self, handle: int) -> ClientLock | None:
        """The enqueue failed: drop the lock. None when it is already gone (eviction)."""
        lock = self._locks.get(handle)
        if lock is None:
            return None
        if lock.state is not LockState.ENQUEUING:
            raise ValueError(f"lock {handle} is {lock.state.value}, not enqueuing")
        lock.flags |= FL_FAILED
        self._drop(lock)
        return lock

    # ---- matching and use counts --------------------------------------------------------

    def match(self, res: ResId, type: LockType, mode: Mode, policy: object,
              now: float, *, touch: bool = True) -> ClientLock | None:
        """A GRANTED lock that covers the request, most recently used first. Takes no
        reference: the caller calls addref (with no await in between). A match counts
        as a use (refreshes the lock's LRU age) unless touch is False."""
        if type is LockType.FLOCK:
            return None   # flock locks are never shared between requests
        best: ClientLock | None = None
        for lock in self._by_res.get(res, {}).values():
            if (lock.type is type and lock.state is LockState.GRANTED
                    and covers(lock.mode, mode) and policy_covers(type, lock.policy, policy)
                    and (best is None or lock.last_used >= best.last_used)):
                best = lock
        if best is not None and touch:
            best.last_used = max(best.last_used, now)
            if best.handle in self._lru:
                self._lru.move_to_end(best.handle)
        return best

    def addref(self, handle: int, kind: str) -> ClientLock:
        lock = self.lock(handle)
        if lock.state not in _LIVE_WITH_USERS:
            raise ValueError(f"addref on {lock.state.value} lock {handle}")
        if kind == READ:
            lock.readers += 1
        elif kind == WRITE:
            lock.writers += 1
        else:
            raise ValueError(f"bad reference kind {kind!r}")
        self._lru.pop(handle, None)
        return lock

    def decref(self, handle: int, kind: str, now: float) -> bool:
        """Drop a use. True when the last user left a CBPENDING lock: the caller must now
        flush and cancel it. A GRANTED lock left unused goes to the LRU (unless NO_LRU)."""
        lock = self._locks.get(handle) or self._orphans.get(handle)
        if lock is None:
            raise UnknownLock(handle)
        if kind == READ:
            if lock.readers <= 0:
                raise ValueError(f"decref below zero (readers) on lock {handle}")
            lock.readers -= 1
        elif kind == WRITE:
            if lock.writers <= 0:
                raise ValueError(f"decref below zero (writers) on lock {handle}")
            lock.writers -= 1
        else:
            raise ValueError(f"bad reference kind {kind!r}")
        lock.last_used = now
        if lock.users:
            return False
        if handle in self._orphans:
            del self._orphans[handle]
            return False
        if lock.state is LockState.CBPENDING:
            return True
        self._maybe_to_lru(lock)
        return False

    # ---- blocking ASTs and cancels -------------------------------------------------------

    def blocking_ast(self, remote_handle: int, now: float, *,
                     discard_data: bool = False) -> BastAction:
        """A BAST arrived (the reply is always OK). Says what the caller must do."""
        self.stats["basts"] += 1
        lock = self._by_remote.get(remote_handle)
        if lock is None:
            return BastAction(BastKind.UNKNOWN)
        if discard_data:
            lock.flags |= FL_DISCARD_DATA
        lock.flags |= FL_CBPENDING
        if lock.state in (LockState.CBPENDING, LockState.CANCELLING):
            return BastAction(BastKind.ALREADY, lock, lock.discard_data)
        if lock.state is LockState.ENQUEUING:
            # Not granted yet: granted() puts it straight into CBPENDING.
            return BastAction(BastKind.CANCEL_WHEN_IDLE, lock, lock.discard_data)
        lock.state = LockState.CBPENDING
        self._lru.pop(lock.handle, None)
        kind = BastKind.CANCEL_WHEN_IDLE if lock.users else BastKind.CANCEL_NOW
        return BastAction(kind, lock, lock.discard_data)

    def start_cancel(self, handle: int) -> ClientLock:
        """Begin cancelling an unused lock: it is no longer matchable. Idempotent."""
        lock = self.lock(handle)
        if lock.state is LockState.CANCELLING:
            return lock
        if lock.state not in (LockState.GRANTED, LockState.CBPENDING):
            raise ValueError(f"cannot cancel {lock.state.value} lock {handle}")
        if lock.users:
            raise ValueError(f"cannot cancel lock {handle}: {lock.users} users")
        self._to_cancelling(lock)
        return lock

    def cancelled(self, handle: int) -> ClientLock | None:
        """The cancel is done (sent, or local only): drop the lock. None if already gone."""
        lock = self._locks.get(handle)
        if lock is None:
            return None
        if lock.state is not LockState.CANCELLING:
            raise ValueError(f"lock {handle} is {lock.state.value}, not cancelling")
        self._drop(lock)
        self.stats["cancelled"] += 1
        return lock

    # ---- LRU and early lock cancel ---------------------------------------------------

    def lru_candidates(self, now: float) -> list[ClientLock]:
        """Unused locks beyond lru_size or older than lru_max_age, oldest first. They are
        taken (state CANCELLING): the caller flushes them and sends the cancel (one
        batched LDLM_CANCEL may carry them all), then calls cancelled()."""
        excess = max(0, len(self._lru) - self.lru_size)
        picked = [lock for i, lock in enumerate(self._lru.values())
                  if i < excess or now - lock.last_used >= self.lru_max_age]
        for lock in picked:
            self._to_cancelling(lock)
        self.stats["lru_cancels"] += len(picked)
        return picked

    def take_unused(self, locks: list[ClientLock]) -> list[ClientLock]:
        """Of `locks`, the GRANTED ones nobody uses, taken for a cancel (CANCELLING)."""
        picked = [lk for lk in locks if lk.state is LockState.GRANTED and not lk.users]
        for lock in picked:
            self._to_cancelling(lock)
        return picked

    def clear_lru(self) -> list[ClientLock]:
        """lru_size=clear: take every unused lock of the LRU, oldest first."""
        picked = list(self._lru.values())
        for lock in picked:
            self._to_cancelling(lock)
        self.stats["lru_cancels"] += len(picked)
        return picked

    def elc_candidates(self, res: ResId, type: LockType, mode: Mode,
                       policy: object) -> list[ClientLock]:
        """Early lock cancel: the unused GRANTED locks that would block this request. They
        are taken (CANCELLING); the caller flushes them, packs their remote handles into
        the request and calls cancelled() (the server sends no BAST for them)."""
        picked = [lock for lock in self._by_res.get(res, {}).values()
                  if lock.type is type and lock.state is LockState.GRANTED
                  and not lock.users
                  and conflicts(type, lock.mode, lock.policy, mode, policy)]
        for lock in picked:
            self._to_cancelling(lock)
        self.stats["elc"] += len(picked)
        return picked

    # ---- recovery -----------------------------------------------------------------------

    def unused_for_replay_cancel(self) -> list[ClientLock]:
        """Before replay (cancel_unused_locks_before_replay): take the LRU's locks. The
        server lost them, so the caller cancels them locally: cancelled(), no RPC."""
        if not self.cancel_unused_before_replay:
            return []
        return self.clear_lru()

    def replay_list(self) -> list[ClientLock]:
        """The locks to replay after a server restart, in Lustre's order: granted ones
        (including CBPENDING ones still in use) first, then the ones queued on the server
        (BLOCK_WAIT). Skipped: CANCELLING locks, and enqueues without a reply (the RPC
        layer resends those requests). Each replay carries replay_flags(lock)."""
        granted = [lk for lk in self._locks.values()
                   if lk.state in (LockState.GRANTED, LockState.CBPENDING)]
        waiting = [lk for lk in self._locks.values() if lk.waiting]
        return granted + waiting

    def replayed(self, handle: int, remote_handle: int) -> ClientLock:
        """The replay reply gave the lock a new server handle."""
        lock = self.lock(handle)
        self._set_remote(lock, remote_handle)
        return lock

    def forget(self, locks: list[ClientLock]) -> list[ClientLock]:
        """A restarted server does not have these (waiting enqueues, replays it refused):
        dropped like invalidate_all() drops every lock."""
        dropped = [lk for lk in locks if self._locks.get(lk.handle) is lk]
        for lock in dropped:
            lock.flags |= FL_FAILED
            self._drop(lock)
        self.stats["invalidated"] += len(dropped)
        return dropped

    def invalidate_all(self) -> list[ClientLock]:
        """Eviction: every lock is dropped (state CANCELLED, FL_FAILED). The caller drops
        the caches under them and fails their users with EIO; those users' decref calls
        still work."""
        dropped = list(self._locks.values())
        for lock in dropped:
            lock.flags |= FL_FAILED
            self._drop(lock)
        self._reserved.clear()
        self.stats["invalidated"] += len(dropped)
        return dropped

    # ---- internals ------------------------------------------------------------------------

    def _set_remote(self, lock: ClientLock, remote_handle: int) -> None:
        if lock.remote_handle is not None and self._by_remote.get(lock.remote_handle) is lock:
            del self._by_remote[lock.remote_handle]
        lock.remote_handle = remote_handle
        self._by_remote[remote_handle] = lock

    def _maybe_to_lru(self, lock: ClientLock) -> None:
        if lock.state is LockState.GRANTED and not lock.users and not lock.no_lru:
            self._lru[lock.handle] = lock
            self._lru.move_to_end(lock.handle)

    def _to_cancelling(self, lock: ClientLock) -> None:
        lock.state = LockState.CANCELLING
        lock.flags |= FL_CBPENDING | FL_BL_DONE
        self._lru.pop(lock.handle, None)

    def _drop(self, lock: ClientLock) -> None:
        del self._locks[lock.handle]
        on_res = self._by_res[lock.res]
        del on_res[lock.handle]
        if not on_res:
            del self._by_res[lock.res]
        if lock.remote_handle is not None and self._by_remote.get(lock.remote_handle) is lock:
            del self._by_remote[lock.remote_handle]
        self._lru.pop(lock.handle, None)
        lock.state = LockState.CANCELLED
        if lock.users:
            self._orphans[lock.handle] = lock


def _check_policy(type_: LockType, policy: object) -> None:
    if type_ is LockType.IBITS and not isinstance(policy, int):
        raise TypeError("an IBITS lock needs an int of inode bits")
    if type_ is LockType.EXTENT and not isinstance(policy, Extent):
        raise TypeError("an EXTENT lock needs an Extent")
