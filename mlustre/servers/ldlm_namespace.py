"""ldlm_namespace.py - one target's lock namespace: grants, queues, ASTs to send, timers.

The decision logic of Lustre's server-side LDLM (ldlm_lock_enqueue, the
ldlm_process_*_lock policies, ldlm_extent_policy, the waiting_locks_list of
ldlm_lockd.c), written sans-IO: plain synchronous classes, no sockets, no trio,
no clock. Every method that needs the time takes `now`. The methods return what
the caller must do - blocking ASTs (BAST) to send to holders, completion ASTs
(CP) to send to requesters whose queued lock was granted - and the trio server
that drives a namespace sends them, arms a timer for `next_deadline()` and
evicts the owners `expired()` names.

Rules (lustre-facts.md section 1):

* A lock is granted at once iff no granted lock and no *earlier waiting* lock of
  the resource conflicts with it (FIFO: a stream of PRs cannot starve a queued
  EX) - except that a waiter that itself waits for the requester's own granted
  locks does not hold the requester back (the new lock gets its BAST at once). Otherwise it waits, in arrival order, and every conflicting granted lock
  that has had no BAST yet gets one, with a callback deadline.
* Locks of one client never conflict with each other: a client is one cache, and
  its own PR lock must not call it back when it asks for PW (a FUSE client could
  not give the PR back while the kernel holds a page lock for the write that asks).
  The target's own locks (LOCAL_OWNER, one per update) do conflict with each other.
  (Was: "Locks of one owner conflict with each other like anyone's (the client avoids
  that by early lock cancel); the server does not special-case them.
* On grant an EXTENT lock grows to the largest range that contains the request
  and overlaps no incompatible granted or waiting lock (ldlm_extent_policy,
  simplified), unless it asked for no expansion or for [0, EOF] already.
* A cancel (or an eviction) reprocesses the resource's waiting queue in order
  and grants every lock that has become grantable.
* A replayed lock (client resending its locks after a server restart) is
  granted or queued as the client says, with no conflict check;
  `reprocess_all` is called when recovery ends.
* A resent enqueue (same owner and client handle) gets back the existing lock.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain

from mlustre.protocol.errors import ErrnoError
from mlustre.protocol.ldlm import (
    COMPAT,
    FL_AST_SENT,
    FL_BLOCK_WAIT,
    FL_LOCK_CHANGED,
    FL_NO_EXPANSION,
    FL_REPLAY,
    IBITS_FULL,
    OBJECT_EOF,
    WHOLE,
    Extent,
    IBits,
    LockType,
    Mode,
    ResId,
    compatible,
    conflicts,
)

PW_RELEASED_MAX = 65536  # resources whose last PW release time is remembered


class LockError(ErrnoError):
    """A lock request refused; `errno` is the positive errno for the reply status."""


@dataclass(slots=True, eq=False)
class ServerLock:
    """One lock of the namespace. Identity (not value) equality: two locks are the
    same lock only if they are the same object."""

    handle: int  # the server's cookie, unique in the namespace
    owner: str  # the holder's export uuid
    remote_handle: int  # the client's own handle for this lock
    res: ResId
    type: LockType
    mode: Mode
    policy: object  # IBits for IBITS, Extent for EXTENT (after expansion), None for PLAIN
    req_policy: object  # the policy asked for
    granted: bool = False
    bast_sent: bool = False
    deadline: float | None = None  # callback deadline, once a BAST went out
    flags: int = 0


@dataclass(slots=True)
class Enqueued:
    lock: ServerLock
    granted: bool  # granted in the reply (else a CP AST follows later)
    basts: list[ServerLock] = field(default_factory=list)  # holders to send a BAST


@dataclass(slots=True)
class Reprocessed:
    granted: list[ServerLock] = field(default_factory=list)  # send each a CP AST
    basts: list[ServerLock] = field(default_factory=list)  # send each a BAST


class _Resource:
    __slots__ = ("res", "type", "granted", "waiting")

    def __init__(self, res: ResId, type_: LockType) -> None:
        self.res = res
        self.type = type_
        self.granted: list[ServerLock] = []  # in grant order
        self.waiting: list[ServerLock] = []  # in arrival order


LOCAL_OWNER = "\x00local"  # the target's own locks (an MDT update's EX locks)


def _same_client(a: ServerLock, b: ServerLock) -> bool:
    return a.owner == b.owner and a.owner != LOCAL_OWNER


def _blocks(held: ServerLock, wanted: ServerLock) -> bool:
    if _same_client(held, wanted):
        return False
    return conflicts(held.type, held.mode, held.policy, wanted.mode, wanted.policy)


def _check_request(type_: object, mode: object, policy: object) -> tuple[LockType, Mode, object]:
    try:
        type_ = LockType(type_)
        mode = Mode(mode)
    except ValueError as e:
        raise LockError(errno.EINVAL, f"bad lock type or mode: {e}") from None
    if mode not in COMPAT:
        raise LockError(errno.EINVAL, f"not a single lock mode: {mode!r}")
    if type_ is LockType.PLAIN:
        if policy is not None:
            raise LockError(errno.EINVAL, "a PLAIN lock has no policy")
        return type_, mode, None
    if type_ is LockType.IBITS:
        if (not isinstance(policy, int) or isinstance(policy, bool) or policy <= 0
                or policy & ~int(IBITS_FULL)):
            raise LockError(errno.EINVAL, f"bad inode bits: {policy!r}")
        return type_, mode, IBits(policy)
    if type_ is LockType.EXTENT:
        if not isinstance(policy, tuple) or len(policy) != 2:
            raise LockError(errno.EINVAL, f"bad extent: {policy!r}")
        start, end = policy
        if (not isinstance(start, int) or not isinstance(end, int)
                or not 0 <= start <= end <= OBJECT_EOF):
            raise LockError(errno.EINVAL, f"bad extent: {policy!r}")
        return type_, mode, Extent(start, end)
    raise LockError(errno.EPROTO, f"unsupported lock type {type_.name}")


class Namespace:
    """The locks of one target (an MDT's IBITS locks, an OST's EXTENT locks, the
    MGS's PLAIN locks). `first_handle` lets a restarted server hand out cookies
    that cannot be mistaken for the previous instance's."""

    def __init__(self, name: str, *, callback_timeout: float, first_handle: int = 1) -> None:
        if callback_timeout <= 0:
            raise ValueError("callback_timeout must be positive")
        self.name = name
        self.callback_timeout = callback_timeout
        self._next_handle = first_handle
        self._locks: dict[int, ServerLock] = {}
        self._by_owner: dict[str, dict[int, ServerLock]] = {}  # owner -> remote handle -> lock
        self._resources: dict[ResId, _Resource] = {}
        self._timed: dict[int, ServerLock] = {}  # locks with a callback deadline
        self.granted_count = 0
        self.waiting_count = 0
        # When the last PW/EX EXTENT lock of a resource went (in `now` units), for
        # glimpses: a client that read the size from the MDT before that moment may
        # trust it only if no writer gave its lock back since. Bounded; for resources
        # forgotten, the latest time forgotten stands in (conservative).
        self._pw_released: OrderedDict[ResId, float] = OrderedDict()
        self._pw_released_floor_for_unknown: float | None = None
        self.stats: dict[str, int] = {
            "enqueues": 0, "resends": 0, "replays": 0, "grants": 0, "basts": 0,
            "cancels": 0, "evictions": 0, "evicted_locks": 0, "self_blocked_grants": 0,
        }

    # ---- queries ----

    def lock(self, handle: int) -> ServerLock | None:
        return self._locks.get(handle)

    def lock_by_owner(self, owner: str, remote_handle: int) -> ServerLock | None:
        return self._by_owner.get(owner, {}).get(remote_handle)

    def locks_of(self, owner: str) -> list[ServerLock]:
        return sorted(self._by_owner.get(owner, {}).values(), key=lambda lk: lk.handle)

    def count_of(self, owner: str) -> int:
        """How many locks (granted or waiting) `owner` has."""
        return len(self._by_owner.get(owner, ()))

    def has(self, owner: str, remote_handle: int) -> bool:
        """Does `owner` have a lock it named `remote_handle` (a resent enqueue)?"""
        return remote_handle in self._by_owner.get(owner, {})

    def owners(self) -> list[str]:
        return list(self._by_owner)

    def resources(self) -> list[ResId]:
        return list(self._resources)

    def resource_locks(self, res: ResId) -> list[ServerLock]:
        """Granted locks in grant order, then waiting locks in arrival order."""
        r = self._resources.get(res)
        return [] if r is None else r.granted + r.waiting

    def held_by_other(self, res: ResId, owner: str, mode: Mode) -> bool:
        """Does a client other than `owner` hold a granted lock of `mode` on res? (Asked
        for every entry of every listing: no list is built.)"""
        r = self._resources.get(res)
        return r is not None and any(lk.mode is mode and lk.owner != owner
                                     for lk in r.granted)

    def granted_locks(self, res: ResId) -> list[ServerLock]:
        r = self._resources.get(res)
        return [] if r is None else list(r.granted)

    def waiting_locks(self, res: ResId) -> list[ServerLock]:
        r = self._resources.get(res)
        return [] if r is None else list(r.waiting)

    def __len__(self) -> int:
        return len(self._locks)

    # ---- enqueue ----

    def enqueue(self, owner: str, remote_handle: int, res: ResId, type: LockType, mode: Mode,
                policy: object, now: float, *, replay: bool = False,
                granted_before: bool = True, no_expand: bool = False) -> Enqueued:
        """Take a new lock request (or a resent one, or a replayed one)."""
        existing = self._by_owner.get(owner, {}).get(remote_handle)
        if existing is not None:  # a resent enqueue or a resent replay
            self.stats["resends"] += 1
            return Enqueued(existing, existing.granted, [])
        type_, mode, policy = _check_request(type, mode, policy)
        r = self._resources.get(res)
        if r is not None and r.type is not type_:
            raise LockError(errno.EPROTO, f"resource {res} holds {r.type.name} locks")
        if r is None:
            r = self._resources[res] = _Resource(res, type_)
        lock = ServerLock(self._next_handle, owner, remote_handle, res, type_, mode, policy,
                          policy)
        self._next_handle += 1
        if no_expand:
            lock.flags |= FL_NO_EXPANSION
        self._locks[lock.handle] = lock
        self._by_owner.setdefault(owner, {})[remote_handle] = lock
        self.stats["enqueues"] += 1

        if replay:
            self.stats["replays"] += 1
            lock.flags |= FL_REPLAY
            if granted_before:
                self._grant(r, lock, expand_against=None)
            else:
                self._queue(r, lock)
            return Enqueued(lock, lock.granted, [])

        blockers = [g for g in r.granted if _blocks(g, lock)]
        if not blockers:
            ahead = [w for w in r.waiting if _blocks(w, lock)]
            if not ahead:
                self._grant(r, lock, expand_against=chain(r.granted, r.waiting))
                return Enqueued(lock, True, [])
            if all(any(_same_client(g, lock) and _blocks(g, w) for g in r.granted)
                   for w in ahead):
                # Every waiter ahead waits for this client already: queueing this lock
                # behind them would make the client wait for itself (a FUSE client gives
                # a lock back only after the kernel's I/O waiting for this one is done).
                # Granted, and called back at once like the client's other locks.
                self.stats["self_blocked_grants"] += 1
                self._grant(r, lock, expand_against=chain(r.granted, r.waiting))
                return Enqueued(lock, True, self._send_basts([lock], now))
        self._queue(r, lock)
        return Enqueued(lock, False, self._send_basts(blockers, now))

    def would_block(self, owner: str, res: ResId, type: LockType, mode: Mode,
                    policy: object) -> bool:
        """Would a request for this lock have to wait (a granted or waiting lock of the
        resource conflicts with it)?"""
        r = self._resources.get(res)
        if r is None:
            return False
        type_, mode, policy = _check_request(type, mode, policy)
        return any(conflicts(type_, other.mode, other.policy, mode, policy)
                   and (other.owner != owner or owner == LOCAL_OWNER)
                   for other in chain(r.granted, r.waiting))

    def try_enqueue(self, owner: str, remote_handle: int, res: ResId, type: LockType,
                    mode: Mode, policy: object, now: float) -> ServerLock | None:
        """Grant a lock at once, or take nothing and call nobody back (an intent lock
        attached to a getattr or a glimpse: its requester can do without it)."""
        existing = self._by_owner.get(owner, {}).get(remote_handle)
        if existing is not None:
            self.stats["resends"] += 1
            return existing if existing.granted else None
        if self.would_block(owner, res, type, mode, policy):
            return None
        result = self.enqueue(owner, remote_handle, res, type, mode, policy, now)
        assert result.granted and not result.basts
        return result.lock

    def pw_holders(self, res: ResId, *, exclude: str | None = None) -> list[ServerLock]:
        """Granted PW/EX EXTENT locks on `res` (one per owner, other than `exclude`):
        the clients whose caches may hold data the object does not have yet."""
        r = self._resources.get(res)
        if r is None:
            return []
        out: dict[str, ServerLock] = {}
        for lock in r.granted:
            if (lock.type is LockType.EXTENT and lock.mode in (Mode.PW, Mode.EX)
                    and lock.owner != exclude):
                out.setdefault(lock.owner, lock)
        return list(out.values())

    # ---- cancel, evict, reprocess ----

    def cancel(self, owner: str, handle: int, now: float) -> Reprocessed:
        """Drop a lock of `owner` (granted or waiting) and reprocess its resource.
        A handle that is unknown (ESTALE) or another owner's (EPERM) changes nothing."""
        lock = self._locks.get(handle)
        if lock is None:
            raise LockError(errno.ESTALE, f"no lock with handle {handle:#x}")
        if lock.owner != owner:
            raise LockError(errno.EPERM, f"lock {handle:#x} is not held by {owner}")
        self.note_release(lock, now)
        self._drop(lock)
        self.stats["cancels"] += 1
        out = Reprocessed()
        self._reprocess_res(lock.res, now, out)
        return out

    def evict(self, owner: str, now: float) -> Reprocessed:
        """Drop every lock of `owner` and reprocess the resources they were on."""
        locks = sorted(self._by_owner.get(owner, {}).values(), key=lambda lk: lk.handle)
        touched: dict[ResId, None] = {}
        for lock in locks:
            self.note_release(lock, now)
            self._drop(lock)
            touched[lock.res] = None
        self._by_owner.pop(owner, None)
        self.stats["evictions"] += 1
        self.stats["evicted_locks"] += len(locks)
        out = Reprocessed()
        for res in touched:
            self._reprocess_res(res, now, out)
        return out

    def reprocess_all(self, now: float) -> Reprocessed:
        """Grant whatever has become grantable on every resource (at the end of
        recovery, after replayed waiting locks were queued unchecked)."""
        out = Reprocessed()
        for res in list(self._resources):
            self._reprocess_res(res, now, out, recheck_basts=True)
        return out

    # ---- callback timers ----

    def prolong(self, owner: str, res: ResId, now: float, extent: Extent | None = None) -> int:
        """I/O by `owner` under its lock(s) on `res` that are being called back: push
        their deadlines to at least now + callback_timeout. With `extent`, only the
        EXTENT locks overlapping it. Returns how many locks were prolonged."""
        r = self._resources.get(res)
        if r is None:
            return 0
        n = 0
        for lock in r.granted:
            if lock.owner != owner or lock.deadline is None:
                continue
            if extent is not None and lock.type is LockType.EXTENT:
                assert isinstance(lock.policy, Extent)
                if not lock.policy.overlaps(Extent(*extent)):
                    continue
            lock.deadline = max(lock.deadline, now + self.callback_timeout)
            n += 1
        return n

    def expired(self, now: float) -> list[str]:
        """Owners holding a lock whose callback deadline is reached (to evict),
        earliest deadline first."""
        out: list[str] = []
        for lock in sorted(self._timed.values(), key=lambda lk: (lk.deadline, lk.handle)):
            assert lock.deadline is not None
            if lock.deadline > now:
                break
            if lock.owner not in out:
                out.append(lock.owner)
        return out

    def next_deadline(self) -> float | None:
        return min((lk.deadline for lk in self._timed.values() if lk.deadline is not None),
                   default=None)

    # ---- glimpse ----

    def glimpse_holder(self, res: ResId, *, size: int = 0) -> ServerLock | None:
        """The granted PW/EX EXTENT lock with the highest extent end (among those
        reaching at least offset `size`, the size the OST knows): the one holder
        whose cache may make the object longer. Ties go to the earliest grant."""
        r = self._resources.get(res)
        if r is None:
            return None
        best: ServerLock | None = None
        best_end = size - 1
        for lock in r.granted:
            if lock.type is not LockType.EXTENT or lock.mode not in (Mode.PW, Mode.EX):
                continue
            assert isinstance(lock.policy, Extent)
            if lock.policy.end > best_end:
                best, best_end = lock, lock.policy.end
        return best

    # ---- internals ----

    def _queue(self, r: _Resource, lock: ServerLock) -> None:
        lock.flags |= FL_BLOCK_WAIT
        r.waiting.append(lock)
        self.waiting_count += 1

    def _grant(self, r: _Resource, lock: ServerLock,
               expand_against: Iterable[ServerLock] | None) -> None:
        """Grant `lock` (not on any queue now); with `expand_against`, grow its
        extent around the other locks of the resource."""
        if (expand_against is not None and lock.type is LockType.EXTENT
                and not lock.flags & FL_NO_EXPANSION and lock.req_policy != WHOLE):
            new = self._expanded(lock, expand_against)
            if new != lock.req_policy:
                lock.policy = new
                lock.flags |= FL_LOCK_CHANGED
        lock.granted = True
        r.granted.append(lock)
        self.granted_count += 1
        self.stats["grants"] += 1

    @staticmethod
    def _expanded(lock: ServerLock, others: Iterable[ServerLock]) -> Extent:
        """ldlm_extent_policy, simplified: from [0, EOF], stop just after the nearest
        incompatible lock below the request and just before the nearest one above.
        An incompatible lock overlapping the request (a waiter queued behind it)
        cannot limit it below the request and is ignored, as Lustre does."""
        req = lock.req_policy
        assert isinstance(req, Extent)
        lo, hi = 0, OBJECT_EOF
        for other in others:
            if other is lock or compatible(other.mode, lock.mode) or _same_client(other, lock):
                continue
            ext = other.policy
            assert isinstance(ext, Extent)
            if ext.end < req.start:
                lo = max(lo, ext.end + 1)
            elif ext.start > req.end:
                hi = min(hi, ext.start - 1)
        return Extent(lo, hi)

    def _send_basts(self, holders: Iterable[ServerLock], now: float) -> list[ServerLock]:
        out = []
        for lock in holders:
            if lock.bast_sent:
                continue
            lock.bast_sent = True
            lock.flags |= FL_AST_SENT
            lock.deadline = now + self.callback_timeout
            self._timed[lock.handle] = lock
            self.stats["basts"] += 1
            out.append(lock)
        return out

    def pw_released_at(self, res: ResId) -> float | None:
        """When a PW/EX EXTENT lock on res was last given back (None: never since this
        namespace began, as far as it remembers)."""
        at = self._pw_released.get(res)
        return at if at is not None else self._pw_released_floor_for_unknown

    def note_release(self, lock: ServerLock, now: float) -> None:
        if lock.type is LockType.EXTENT and lock.mode in (Mode.PW, Mode.EX) and lock.granted:
            self._pw_released[lock.res] = now
            self._pw_released.move_to_end(lock.res)
            while len(self._pw_released) > PW_RELEASED_MAX:
                _, at = self._pw_released.popitem(last=False)
                self._pw_released_floor_for_unknown = max(
                    self._pw_released_floor_for_unknown or at, at)

    def _drop(self, lock: ServerLock) -> None:
        """Remove a lock from every index (the resource is reprocessed by the caller)."""
        r = self._resources[lock.res]
        if lock.granted:
            r.granted.remove(lock)
            self.granted_count -= 1
        else:
            r.waiting.remove(lock)
            self.waiting_count -= 1
        del self._locks[lock.handle]
        self._timed.pop(lock.handle, None)
        mine = self._by_owner.get(lock.owner)
        if mine is not None:
            mine.pop(lock.remote_handle, None)
            if not mine:
                del self._by_owner[lock.owner]

    def _reprocess_res(self, res: ResId, now: float, out: Reprocessed, *,
                       recheck_basts: bool = False) -> None:
        """Grant what has become grantable, in order. Waiting locks sent their BASTs
        when they were queued, so BASTs are owed only to locks granted now (or, with
        recheck_basts, after replay queued waiters without any)."""
        r = self._resources.get(res)
        if r is None:
            return
        granted_before = len(out.granted)
        pending, r.waiting = r.waiting, []
        for i, lock in enumerate(pending):
            # (Waiters first: on a busy resource the one queued ahead blocks at once.)
            if (any(_blocks(w, lock) for w in r.waiting)
                    or any(_blocks(g, lock) for g in r.granted)):
                r.waiting.append(lock)  # still blocked: it also blocks later conflicting ones
                continue
            self.waiting_count -= 1
            self._grant(r, lock, expand_against=chain(r.granted, r.waiting, pending[i + 1:]))
            out.granted.append(lock)
        if len(out.granted) == granted_before and not recheck_basts:
            if not r.granted and not r.waiting:
                del self._resources[res]
            return
        granted_modes = {g.mode for g in r.granted}
        for lock in r.waiting:
            if all(compatible(m, lock.mode) for m in granted_modes):
                continue  # waits behind another waiter, for no granted lock
            out.basts.extend(self._send_basts((g for g in r.granted if _blocks(g, lock)), now))
        if not r.granted and not r.waiting:
            del self._resources[res]
