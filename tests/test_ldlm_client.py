"""The client lock namespace: matching, use counts, LRU, BASTs, ELC, replay, eviction."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from mlustre.fuse_client.ldlm_client import (
    FL_BLOCK_GRANTED,
    FL_BLOCK_WAIT,
    FL_FAILED,
    FL_REPLAY,
    BastKind,
    ClientNamespace,
    LockState,
    UnknownLock,
    replay_flags,
)
from mlustre.protocol.ldlm import WHOLE, Extent, IBits, LockType, Mode, ResId, conflicts

R1 = ResId(0x200000401, 1)
R2 = ResId(0x200000401, 2)
OBJ = ResId(77)
BARRIER = ResId(0x200000003, 0x0BA771E7)



def test_a_reservation_makes_locks_only_where_asked() -> None:
    ns = ClientNamespace("t")
    r = ns.reserve(512, R1, LockType.IBITS, Mode.PR, int(IBits.LOOKUP))
    after = ns.new_lock(R2, LockType.IBITS, Mode.PR, int(IBits.LOOKUP))
    assert after.handle == r.base + 512  # the range is skipped, never reused
    assert ns.lock_count == 1
    lock, new = ns.made(r, 3)
    assert new and lock is not None and lock.handle == r.base + 3
    assert lock.state is LockState.ENQUEUING and ns.lock(r.base + 3) is lock
    assert ns.made(r, 3) == (lock, False)
    assert ns.reserved_index(r.base + 7) == (r, 7)
    assert ns.reserved_index(r.base + 512) is None
    with pytest.raises(ValueError):
        ns.made(r, 512)
    ns.unreserve(r)
    assert ns.made(r, 4) == (None, False) and ns.reserved_index(r.base) is None
    assert ns.lock_count == 2


def test_an_eviction_ends_reservations() -> None:
    ns = ClientNamespace("t")
    r = ns.reserve(8, R1, LockType.IBITS, Mode.PR, int(IBits.LOOKUP))
    lock, _ = ns.made(r, 0)
    ns.invalidate_all()
    assert lock is not None and lock.state is LockState.CANCELLED
    # What the reply of the evicted request grants is not ours.
    assert ns.made(r, 1) == (None, False) and ns.lock_count == 0


def grant(ns: ClientNamespace, res: ResId, type_: LockType, mode: Mode, policy: object,
          now: float = 0.0, **kw: object):
    lock = ns.new_lock(res, type_, mode, policy, **kw)
    ns.granted(lock.handle, 1000 + lock.handle, mode, policy, now)
    return lock


# ---- enqueue and grant -------------------------------------------------------------------

def test_new_lock_then_grant_with_expanded_extent() -> None:
    ns = ClientNamespace("lustre-OST0000")
    lock = ns.new_lock(OBJ, LockType.EXTENT, Mode.PW, Extent(4096, 8191))
    assert lock.state is LockState.ENQUEUING and lock.remote_handle is None
    assert ns.match(OBJ, LockType.EXTENT, Mode.PR, Extent(4096, 4096), 0.0) is None
    ns.granted(lock.handle, 555, Mode.PW, WHOLE, 1.0)
    assert lock.state is LockState.GRANTED and lock.policy == WHOLE
    assert ns.by_remote(555) is lock and ns.lock(lock.handle) is lock
    assert ns.match(OBJ, LockType.EXTENT, Mode.PR, Extent(1 << 30, 1 << 31), 2.0) is lock
    assert ns.stats["granted"] == 1 and ns.lock_count == 1 and ns.lru_count == 1


def test_handles_unique_and_lookups() -> None:
    ns = ClientNamespace("t")
    a = ns.new_lock(R1, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    b = ns.new_lock(R1, LockType.IBITS, Mode.PR, IBits.UPDATE)
    c = ns.new_lock(R2, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    assert len({a.handle, b.handle, c.handle}) == 3
    assert ns.locks_on(R1) == [a, b] and ns.locks_on(R2) == [c] and ns.locks_on(OBJ) == []
    assert ns.all_locks() == [a, b, c]
    with pytest.raises(UnknownLock):
        ns.lock(999)
    assert isinstance(UnknownLock(1), KeyError)


def test_enqueue_waiting_then_cp_ast() -> None:
    ns = ClientNamespace("t")
    lock = ns.new_lock(OBJ, LockType.EXTENT, Mode.PW, Extent(0, 99))
    ns.enqueue_waiting(lock.handle, 42)
    assert lock.waiting and ns.by_remote(42) is lock
    ns.granted(lock.handle, 42, Mode.PW, Extent(0, 4095), 3.0)
    assert lock.state is LockState.GRANTED and not lock.waiting and not lock.flags & FL_BLOCK_WAIT
    # A resent CP AST changes nothing.
    ns.granted(lock.handle, 42, Mode.PR, WHOLE, 4.0)
    assert lock.mode is Mode.PW and lock.policy == Extent(0, 4095)
    assert ns.stats["granted"] == 1


def test_enqueue_failed() -> None:
    ns = ClientNamespace("t")
    lock = ns.new_lock(R1, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    assert ns.enqueue_failed(lock.handle) is lock
    assert lock.state is LockState.CANCELLED and lock.flags & FL_FAILED
    assert ns.lock_count == 0 and ns.locks_on(R1) == []
    assert ns.enqueue_failed(lock.handle) is None
    granted = grant(ns, R1, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    with pytest.raises(ValueError):
        ns.enqueue_failed(granted.handle)


def test_enqueue_failed_with_enqueuer_reference() -> None:
    ns = ClientNamespace("t")
    lock = ns.new_lock(R1, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    ns.addref(lock.handle, "r")
    ns.enqueue_failed(lock.handle)
    assert ns.decref(lock.handle, "r", 1.0) is False
    with pytest.raises(UnknownLock):
        ns.decref(lock.handle, "r", 1.0)


def test_unknown_handles_and_bad_types() -> None:
    ns = ClientNamespace("t")
    for call in (lambda: ns.addref(5, "r"), lambda: ns.decref(5, "r", 0.0),
                 lambda: ns.granted(5, 1, Mode.PR, None, 0.0), lambda: ns.start_cancel(5)):
        with pytest.raises(UnknownLock):
            call()
    assert ns.cancelled(5) is None
    with pytest.raises(TypeError):
        ns.new_lock(OBJ, LockType.EXTENT, Mode.PR, None)
    with pytest.raises(TypeError):
        ns.new_lock(R1, LockType.IBITS, Mode.PR, Extent(0, 1))
    with pytest.raises(ValueError):
        ClientNamespace("t", lru_size=-1)


# ---- matching ----------------------------------------------------------------------------

@pytest.mark.parametrize(("held", "wanted", "ok"), [
    (Mode.EX, Mode.PR, True), (Mode.PW, Mode.PR, True), (Mode.PW, Mode.PW, True),
    (Mode.PR, Mode.PW, False), (Mode.CR, Mode.PR, False), (Mode.PR, Mode.CR, True),
    (Mode.CW, Mode.PR, False), (Mode.NL, Mode.CR, False),
])
def test_match_mode_coverage(held: Mode, wanted: Mode, ok: bool) -> None:
    ns = ClientNamespace("t")
    lock = grant(ns, R1, LockType.PLAIN, held, None)
    assert (ns.match(R1, LockType.PLAIN, wanted, None, 1.0) is lock) == ok


def test_match_ibits_subset() -> None:
    ns = ClientNamespace("t")
    lock = grant(ns, R1, LockType.IBITS, Mode.PR, IBits.LOOKUP | IBits.UPDATE | IBits.PERM)
    assert ns.match(R1, LockType.IBITS, Mode.PR, IBits.LOOKUP, 1.0) is lock
    assert ns.match(R1, LockType.IBITS, Mode.PR, IBits.UPDATE | IBits.PERM, 1.0) is lock
    assert ns.match(R1, LockType.IBITS, Mode.PR, IBits.LOOKUP | IBits.LAYOUT, 1.0) is None
    assert ns.match(R1, LockType.IBITS, Mode.PR, IBits.XATTR, 1.0) is None
    assert ns.match(R2, LockType.IBITS, Mode.PR, IBits.LOOKUP, 1.0) is None


def test_match_extent_containment_and_type() -> None:
    ns = ClientNamespace("t")
    lock = grant(ns, OBJ, LockType.EXTENT, Mode.PR, Extent(100, 199))
    assert ns.match(OBJ, LockType.EXTENT, Mode.PR, Extent(100, 199), 1.0) is lock
    assert ns.match(OBJ, LockType.EXTENT, Mode.PR, Extent(150, 160), 1.0) is lock
    assert ns.match(OBJ, LockType.EXTENT, Mode.PR, Extent(150, 200), 1.0) is None
    assert ns.match(OBJ, LockType.EXTENT, Mode.PR, Extent(99, 150), 1.0) is None
    assert ns.match(OBJ, LockType.PLAIN, Mode.PR, None, 1.0) is None


def test_match_never_cbpending_cancelling_or_enqueuing() -> None:
    ns = ClientNamespace("t")
    a = grant(ns, R1, LockType.PLAIN, Mode.PR, None)
    ns.addref(a.handle, "r")
    ns.blocking_ast(a.remote_handle, 1.0)
    assert a.state is LockState.CBPENDING
    assert ns.match(R1, LockType.PLAIN, Mode.PR, None, 2.0) is None
    b = grant(ns, R1, LockType.PLAIN, Mode.PR, None)
    ns.start_cancel(b.handle)
    assert ns.match(R1, LockType.PLAIN, Mode.PR, None, 2.0) is None
    ns.new_lock(R1, LockType.PLAIN, Mode.PR, None)
    assert ns.match(R1, LockType.PLAIN, Mode.PR, None, 2.0) is None


def test_match_prefers_most_recently_used() -> None:
    ns = ClientNamespace("t")
    old = grant(ns, R1, LockType.IBITS, Mode.PR, IBits.LOOKUP, now=1.0)
    new = grant(ns, R1, LockType.IBITS, Mode.PR, IBits.LOOKUP | IBits.UPDATE, now=5.0)
    assert ns.match(R1, LockType.IBITS, Mode.CR, IBits.LOOKUP, 6.0) is new
    ns.addref(old.handle, "r")
    ns.decref(old.handle, "r", 10.0)
    assert ns.match(R1, LockType.IBITS, Mode.CR, IBits.LOOKUP, 11.0) is old
    # The match refreshed old's age and its LRU position.
    assert old.last_used == 11.0 and ns.lru_locks() == [new, old]


def test_flock_never_matched() -> None:
    ns = ClientNamespace("t")
    grant(ns, R1, LockType.FLOCK, Mode.PW, None)
    assert ns.match(R1, LockType.FLOCK, Mode.PR, None, 1.0) is None


# ---- use counts and the LRU ---------------------------------------------------------------

def test_refcounts_move_lock_in_and_out_of_lru() -> None:
    ns = ClientNamespace("t")
    lock = ns.new_lock(R1, LockType.IBITS, Mode.PR, IBits.UPDATE)
    ns.addref(lock.handle, "r")     # the enqueuer's reference
    ns.granted(lock.handle, 9, Mode.PR, IBits.UPDATE, 1.0)
    assert ns.lru_count == 0
    ns.addref(lock.handle, "w")
    assert (lock.readers, lock.writers, lock.users) == (1, 1, 2)
    assert ns.decref(lock.handle, "r", 2.0) is False and ns.lru_count == 0
    assert ns.decref(lock.handle, "w", 3.0) is False
    assert ns.lru_locks() == [lock] and lock.last_used == 3.0
    ns.addref(lock.handle, "r")
    assert ns.lru_count == 0
    ns.decref(lock.handle, "r", 4.0)
    with pytest.raises(ValueError):
        ns.decref(lock.handle, "r", 5.0)
    with pytest.raises(ValueError):
        ns.decref(lock.handle, "w", 5.0)
    with pytest.raises(ValueError):
        ns.addref(lock.handle, "x")
    assert lock.readers == 0 and lock.writers == 0


def test_no_lru_lock_never_in_lru() -> None:
    ns = ClientNamespace("t", lru_size=0, lru_max_age=1.0)
    lock = grant(ns, BARRIER, LockType.PLAIN, Mode.CR, None, no_lru=True)
    ns.addref(lock.handle, "r")
    ns.decref(lock.handle, "r", 1.0)
    assert ns.lru_count == 0
    assert ns.lru_candidates(1000.0) == [] and ns.clear_lru() == []
    assert ns.unused_for_replay_cancel() == []
    assert lock.state is LockState.GRANTED
    # It goes only by callback.
    assert ns.blocking_ast(lock.remote_handle, 2000.0).kind is BastKind.CANCEL_NOW


def test_lru_size_limit_oldest_first() -> None:
    ns = ClientNamespace("t", lru_size=2, lru_max_age=600.0)
    locks = [grant(ns, ResId(i), LockType.PLAIN, Mode.PR, None, now=float(i)) for i in range(5)]
    assert ns.lru_count == 5
    taken = ns.lru_candidates(10.0)
    assert taken == locks[:3]
    assert all(lk.state is LockState.CANCELLING for lk in taken)
    assert ns.lru_locks() == locks[3:] and ns.stats["lru_cancels"] == 3
    assert ns.lru_candidates(10.0) == []
    for lk in taken:
        assert ns.cancelled(lk.handle) is lk and lk.state is LockState.CANCELLED
    assert ns.lock_count == 2 and ns.stats["cancelled"] == 3


def test_lru_age_limit() -> None:
    ns = ClientNamespace("t", lru_size=100, lru_max_age=600.0)
    a = grant(ns, ResId(1), LockType.PLAIN, Mode.PR, None, now=0.0)
    b = grant(ns, ResId(2), LockType.PLAIN, Mode.PR, None, now=100.0)
    c = grant(ns, ResId(3), LockType.PLAIN, Mode.PR, None, now=200.0)
    assert ns.lru_candidates(599.0) == []
    assert ns.lru_candidates(600.0) == [a]
    assert ns.lru_candidates(750.0) == [b]
    ns.addref(c.handle, "r")         # in use: never a candidate, however old
    assert ns.lru_candidates(5000.0) == []
    ns.decref(c.handle, "r", 5000.0)
    assert ns.lru_candidates(5599.0) == [] and ns.lru_candidates(5600.0) == [c]


def test_lru_order_follows_last_use() -> None:
    ns = ClientNamespace("t", lru_size=1)
    a = grant(ns, ResId(1), LockType.PLAIN, Mode.PR, None, now=0.0)
    b = grant(ns, ResId(2), LockType.PLAIN, Mode.PR, None, now=1.0)
    ns.addref(a.handle, "r")
    ns.decref(a.handle, "r", 2.0)    # a is now the most recently used
    assert ns.lru_candidates(3.0) == [b]


def test_clear_lru() -> None:
    ns = ClientNamespace("t")
    a = grant(ns, ResId(1), LockType.PLAIN, Mode.PR, None)
    b = grant(ns, ResId(2), LockType.PLAIN, Mode.PR, None)
    busy = grant(ns, ResId(3), LockType.PLAIN, Mode.PR, None)
    ns.addref(busy.handle, "w")
    assert ns.clear_lru() == [a, b]
    assert ns.lru_count == 0 and busy.state is LockState.GRANTED


# ---- blocking ASTs -----------------------------------------------------------------------

def test_bast_unknown_remote_handle() -> None:
    ns = ClientNamespace("t")
    lock = grant(ns, R1, LockType.PLAIN, Mode.PR, None)
    ns.start_cancel(lock.handle)
    ns.cancelled(lock.handle)
    action = ns.blocking_ast(lock.remote_handle, 1.0)
    assert action.kind is BastKind.UNKNOWN and action.lock is None and not action.cancel_now
    assert ns.stats["basts"] == 1


def test_bast_cancel_now_on_unused_lock() -> None:
    ns = ClientNamespace("t")
    lock = grant(ns, OBJ, LockType.EXTENT, Mode.PW, WHOLE)
    assert ns.lru_count == 1
    action = ns.blocking_ast(lock.remote_handle, 1.0)
    assert action.kind is BastKind.CANCEL_NOW and action.cancel_now and action.lock is lock
    assert not action.discard_data
    assert lock.state is LockState.CBPENDING and ns.lru_count == 0
    # A re-sent BAST: nothing new to do.
    assert ns.blocking_ast(lock.remote_handle, 2.0).kind is BastKind.ALREADY
    ns.start_cancel(lock.handle)
    assert ns.blocking_ast(lock.remote_handle, 3.0).kind is BastKind.ALREADY
    ns.cancelled(lock.handle)
    assert ns.by_remote(lock.remote_handle) is None and ns.lock_count == 0


def test_bast_cancel_when_idle_then_last_decref() -> None:
    ns = ClientNamespace("t")
    lock = grant(ns, OBJ, LockType.EXTENT, Mode.PW, WHOLE)
    ns.addref(lock.handle, "r")
    ns.addref(lock.handle, "w")
    action = ns.blocking_ast(lock.remote_handle, 1.0)
    assert action.kind is BastKind.CANCEL_WHEN_IDLE
    with pytest.raises(ValueError):
        ns.start_cancel(lock.handle)     # users remain
    assert ns.decref(lock.handle, "w", 2.0) is False
    assert ns.decref(lock.handle, "r", 3.0) is True
    assert ns.lru_count == 0 and lock.state is LockState.CBPENDING
    ns.start_cancel(lock.handle)
    ns.cancelled(lock.handle)
    assert lock.state is LockState.CANCELLED


def test_bast_discard_flag_carried() -> None:
    ns = ClientNamespace("t")
    lock = grant(ns, OBJ, LockType.EXTENT, Mode.PW, WHOLE)
    ns.addref(lock.handle, "w")
    action = ns.blocking_ast(lock.remote_handle, 1.0, discard_data=True)
    assert action.discard_data and lock.discard_data
    ns.decref(lock.handle, "w", 2.0)
    other = grant(ns, ResId(78), LockType.EXTENT, Mode.PW, WHOLE)
    ns.addref(other.handle, "w")
    ns.blocking_ast(other.remote_handle, 1.0)
    # A re-sent BAST with DISCARD_DATA still counts.
    assert ns.blocking_ast(other.remote_handle, 2.0, discard_data=True).discard_data
    assert other.discard_data


def test_bast_before_grant() -> None:
    ns = ClientNamespace("t")
    lock = ns.new_lock(OBJ, LockType.EXTENT, Mode.PR, Extent(0, 10))
    ns.enqueue_waiting(lock.handle, 77)
    assert ns.blocking_ast(77, 1.0).kind is BastKind.CANCEL_WHEN_IDLE
    ns.granted(lock.handle, 77, Mode.PR, Extent(0, 10), 2.0)
    assert lock.state is LockState.CBPENDING and lock.users == 0 and ns.lru_count == 0
    assert ns.match(OBJ, LockType.EXTENT, Mode.PR, Extent(0, 1), 3.0) is None
    # Or the CP AST itself says a BAST was sent.
    other = ns.new_lock(OBJ, LockType.EXTENT, Mode.PR, Extent(20, 30))
    ns.granted(other.handle, 78, Mode.PR, Extent(20, 30), 2.0, cbpending=True)
    assert other.state is LockState.CBPENDING


def test_addref_on_cancelling_is_a_bug() -> None:
    ns = ClientNamespace("t")
    lock = grant(ns, R1, LockType.PLAIN, Mode.PR, None)
    ns.start_cancel(lock.handle)
    assert ns.start_cancel(lock.handle) is lock      # idempotent
    with pytest.raises(ValueError):
        ns.addref(lock.handle, "r")
    enq = ns.new_lock(R1, LockType.PLAIN, Mode.PR, None)
    with pytest.raises(ValueError):
        ns.start_cancel(enq.handle)
    live = grant(ns, R2, LockType.PLAIN, Mode.PR, None)
    with pytest.raises(ValueError):
        ns.cancelled(live.handle)


# ---- early lock cancel -----------------------------------------------------------------

def test_elc_only_unused_and_conflicting() -> None:
    ns = ClientNamespace("t")
    lookup = grant(ns, R1, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    update = grant(ns, R1, LockType.IBITS, Mode.PR, IBits.UPDATE)
    busy = grant(ns, R1, LockType.IBITS, Mode.PR, IBits.UPDATE | IBits.LOOKUP)
    ns.addref(busy.handle, "r")
    other_res = grant(ns, R2, LockType.IBITS, Mode.PR, IBits.UPDATE)
    bl = grant(ns, R1, LockType.IBITS, Mode.PR, IBits.UPDATE)
    ns.blocking_ast(bl.remote_handle, 0.0)
    # An EX UPDATE request (e.g. setattr): conflicts with PR UPDATE, not with CR LOOKUP.
    taken = ns.elc_candidates(R1, LockType.IBITS, Mode.EX, IBits.UPDATE)
    assert taken == [update] and update.state is LockState.CANCELLING
    assert lookup.state is LockState.GRANTED and busy.state is LockState.GRANTED
    assert other_res.state is LockState.GRANTED and bl.state is LockState.CBPENDING
    assert ns.stats["elc"] == 1
    # Compatible request: nothing.
    assert ns.elc_candidates(R1, LockType.IBITS, Mode.PR, IBits.LOOKUP) == []


def test_elc_extents() -> None:
    ns = ClientNamespace("t")
    low = grant(ns, OBJ, LockType.EXTENT, Mode.PR, Extent(0, 4095))
    high = grant(ns, OBJ, LockType.EXTENT, Mode.PR, Extent(8192, 12287))
    assert ns.elc_candidates(OBJ, LockType.EXTENT, Mode.PW, Extent(4096, 8191)) == []
    assert ns.elc_candidates(OBJ, LockType.EXTENT, Mode.PW, Extent(4000, 9000)) == [low, high]


# ---- replay and eviction ----------------------------------------------------------------

def test_replay_order_and_unused_cancel() -> None:
    ns = ClientNamespace("t")
    waiting = ns.new_lock(OBJ, LockType.EXTENT, Mode.PW, Extent(0, 99))
    ns.enqueue_waiting(waiting.handle, 500)
    unused = grant(ns, R1, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    in_use = grant(ns, R2, LockType.IBITS, Mode.PR, IBits.UPDATE)
    ns.addref(in_use.handle, "r")
    barrier = grant(ns, BARRIER, LockType.PLAIN, Mode.CR, None, no_lru=True)
    pending = grant(ns, ResId(9), LockType.PLAIN, Mode.PR, None)
    ns.addref(pending.handle, "r")
    ns.blocking_ast(pending.remote_handle, 0.0)
    cancelling = grant(ns, ResId(10), LockType.PLAIN, Mode.PR, None)
    ns.start_cancel(cancelling.handle)
    no_reply = ns.new_lock(ResId(11), LockType.PLAIN, Mode.PR, None)

    to_cancel = ns.unused_for_replay_cancel()
    assert to_cancel == [unused]
    for lk in to_cancel:
        ns.cancelled(lk.handle)
    order = ns.replay_list()
    assert order == [in_use, barrier, pending, waiting]
    assert cancelling not in order and no_reply not in order
    assert replay_flags(in_use) == FL_REPLAY | FL_BLOCK_GRANTED
    assert replay_flags(waiting) == FL_REPLAY | FL_BLOCK_WAIT
    ns.replayed(in_use.handle, 9000)
    assert ns.by_remote(9000) is in_use and ns.by_remote(1000 + in_use.handle) is None


def test_replay_keeps_unused_when_disabled() -> None:
    ns = ClientNamespace("t", cancel_unused_before_replay=False)
    unused = grant(ns, R1, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    assert ns.unused_for_replay_cancel() == []
    assert ns.replay_list() == [unused]


def test_invalidate_all() -> None:
    ns = ClientNamespace("t")
    idle = grant(ns, R1, LockType.IBITS, Mode.CR, IBits.LOOKUP)
    used = grant(ns, OBJ, LockType.EXTENT, Mode.PW, WHOLE)
    ns.addref(used.handle, "w")
    enq = ns.new_lock(R2, LockType.IBITS, Mode.PR, IBits.UPDATE)
    dropped = ns.invalidate_all()
    assert dropped == [idle, used, enq]
    assert all(lk.state is LockState.CANCELLED and lk.flags & FL_FAILED for lk in dropped)
    assert ns.lock_count == 0 and ns.lru_count == 0 and ns.all_locks() == []
    assert ns.by_remote(used.remote_handle) is None
    assert ns.match(OBJ, LockType.EXTENT, Mode.PR, WHOLE, 1.0) is None
    assert ns.blocking_ast(used.remote_handle, 1.0).kind is BastKind.UNKNOWN
    # The evicted user's decref still works, once.
    assert ns.decref(used.handle, "w", 1.0) is False
    with pytest.raises(UnknownLock):
        ns.decref(used.handle, "w", 1.0)
    with pytest.raises(UnknownLock):
        ns.granted(enq.handle, 1, Mode.PR, IBits.UPDATE, 1.0)
    assert ns.enqueue_failed(enq.handle) is None and ns.stats["invalidated"] == 3


# ---- stateful model ----------------------------------------------------------------------

RESOURCES = [ResId(1), ResId(2)]
MODES = [Mode.EX, Mode.PW, Mode.PR, Mode.CW, Mode.CR]
BITS = st.integers(min_value=1, max_value=int(IBits.LOOKUP | IBits.UPDATE | IBits.PERM))


class NamespaceMachine(RuleBasedStateMachine):
    """Random enqueue/grant/use/BAST/cancel/LRU steps; invariants after each."""

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.ns = ClientNamespace("t", lru_size=3, lru_max_age=50.0)
        self.now = 0.0
        self.next_remote = 1
        self.remotes: list[int] = []
        self.refs: dict[tuple[int, str], int] = {}   # the users' own count of references

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    @rule(target=handles, res=st.sampled_from(RESOURCES), mode=st.sampled_from(MODES),
          bits=BITS, no_lru=st.booleans(), users=st.sampled_from(["", "", "r", "w", "rw"]),
          grant_now=st.sampled_from([True, True, True, False]))
    def new(self, res: ResId, mode: Mode, bits: int, no_lru: bool, users: str,
            grant_now: bool) -> int:
        no_lru = no_lru and bits == 1   # a few NO_LRU locks
        lock = self.ns.new_lock(res, LockType.IBITS, mode, bits, no_lru=no_lru)
        for kind in users:              # the enqueuer's references
            self.ns.addref(lock.handle, kind)
            self.refs[lock.handle, kind] = self.refs.get((lock.handle, kind), 0) + 1
        if grant_now:
            self.grant(lock.handle, 0, False, False)
        return lock.handle

    @rule(h=handles, extra=BITS, wait_first=st.booleans(), cb=st.booleans())
    def grant(self, h: int, extra: int, wait_first: bool, cb: bool) -> None:
        lock = self.ns._locks.get(h)
        if lock is None or lock.state is not LockState.ENQUEUING:
            return
        remote = self.next_remote
        self.next_remote += 1
        self.remotes.append(remote)
        if wait_first:
            self.ns.enqueue_waiting(h, remote)
        self.ns.granted(h, remote, lock.mode, lock.policy | extra, self._tick(),
                        cbpending=cb and wait_first)

    @rule(h=handles)
    def fail(self, h: int) -> None:
        lock = self.ns._locks.get(h)
        if lock is not None and lock.state is LockState.ENQUEUING:
            self.ns.enqueue_failed(h)

    @rule(h=handles, kind=st.sampled_from("rw"))
    def addref(self, h: int, kind: str) -> None:
        lock = self.ns._locks.get(h)
        if lock is None:
            with pytest.raises(UnknownLock):
                self.ns.addref(h, kind)
        elif lock.state is LockState.CANCELLING:
            with pytest.raises(ValueError):
                self.ns.addref(h, kind)
        else:
            self.ns.addref(h, kind)
            self.refs[h, kind] = self.refs.get((h, kind), 0) + 1

    @rule(h=handles, kind=st.sampled_from("rw"), cancel=st.booleans())
    def decref(self, h: int, kind: str, cancel: bool) -> None:
        held = self.refs.get((h, kind), 0)
        if held == 0:
            with pytest.raises((ValueError, UnknownLock)):
                self.ns.decref(h, kind, self.now)
            return
        lock = self.ns._locks.get(h)
        was_cbpending = lock is not None and lock.state is LockState.CBPENDING
        others = sum(n for (hh, _), n in self.refs.items() if hh == h) - 1
        last = self.ns.decref(h, kind, self._tick())   # works even after eviction
        self.refs[h, kind] = held - 1
        assert last == (was_cbpending and others == 0)
        if last and cancel:
            self.ns.start_cancel(h)

    @rule(i=st.integers(min_value=0, max_value=30), discard=st.booleans(), cancel=st.booleans())
    def bast(self, i: int, discard: bool, cancel: bool) -> None:
        remote = self.remotes[i % len(self.remotes)] if self.remotes else 12345
        known = self.ns.by_remote(remote)
        action = self.ns.blocking_ast(remote, self._tick(), discard_data=discard)
        if known is None:
            assert action.kind is BastKind.UNKNOWN
            return
        assert action.lock is known and known.flags
        if discard:
            assert action.discard_data
        if action.kind is BastKind.CANCEL_NOW:
            assert known.users == 0 and known.state is LockState.CBPENDING
            if cancel:
                self.ns.start_cancel(known.handle)
        elif action.kind is BastKind.CANCEL_WHEN_IDLE:
            assert known.users > 0 or known.state is LockState.ENQUEUING

    @rule(h=handles)
    def finish_cancel(self, h: int) -> None:
        lock = self.ns._locks.get(h)
        if lock is not None and lock.state is LockState.CANCELLING:
            self.ns.cancelled(h)

    @rule(h=handles)
    def cancel_idle_cbpending(self, h: int) -> None:
        lock = self.ns._locks.get(h)
        if lock is not None and lock.state is LockState.CBPENDING and lock.users == 0:
            self.ns.start_cancel(h)

    @rule(age=st.floats(min_value=0.0, max_value=100.0))
    def lru(self, age: float) -> None:
        self.now += age
        before = self.ns.lru_locks()
        excess = len(before) - self.ns.lru_size
        expected = [lk for i, lk in enumerate(before)
                    if i < excess or self.now - lk.last_used >= self.ns.lru_max_age]
        assert self.ns.lru_candidates(self.now) == expected
        assert all(lk.state is LockState.CANCELLING for lk in expected)
        assert self.ns.lru_count <= self.ns.lru_size

    @rule()
    def clear(self) -> None:
        for lock in self.ns.clear_lru():
            assert lock.users == 0
        assert self.ns.lru_count == 0

    @rule(res=st.sampled_from(RESOURCES), mode=st.sampled_from(MODES), bits=BITS)
    def elc(self, res: ResId, mode: Mode, bits: int) -> None:
        for lock in self.ns.elc_candidates(res, LockType.IBITS, mode, bits):
            assert lock.users == 0 and lock.res == res
            assert conflicts(LockType.IBITS, lock.mode, lock.policy, mode, bits)

    @rule(res=st.sampled_from(RESOURCES), mode=st.sampled_from(MODES), bits=BITS,
          take=st.booleans())
    def match(self, res: ResId, mode: Mode, bits: int, take: bool) -> None:
        lock = self.ns.match(res, LockType.IBITS, mode, bits, self.now)
        if lock is None:
            return
        assert lock.state is LockState.GRANTED and lock.policy & bits == bits
        if take:
            self.ns.addref(lock.handle, "r")
            self.refs[lock.handle, "r"] = self.refs.get((lock.handle, "r"), 0) + 1

    @precondition(lambda self: self.ns.lock_count > 0)
    @rule()
    def replay(self) -> None:
        order = self.ns.replay_list()
        states = [lk.state for lk in order]
        assert LockState.CANCELLING not in states
        waiting_seen = False
        for lk in order:
            if lk.state is LockState.ENQUEUING:
                waiting_seen = True
                assert lk.waiting
            else:
                assert not waiting_seen   # granted ones first

    @precondition(lambda self: self.ns.lock_count > 0)
    @rule(dice=st.integers(min_value=0, max_value=9))
    def evict(self, dice: int) -> None:
        if dice:
            return   # rare: it empties the namespace
        dropped = self.ns.invalidate_all()
        assert all(lk.state is LockState.CANCELLED for lk in dropped)
        assert self.ns.lock_count == 0

    @invariant()
    def consistent(self) -> None:
        ns = self.ns
        locks = ns.all_locks()
        assert ns.lock_count == len(locks) == len({lk.handle for lk in locks})
        assert sum(len(ns.locks_on(r)) for r in RESOURCES) == ns.lock_count
        lru = ns.lru_locks()
        assert ns.lru_count == len(lru)
        for lk in locks + list(ns._orphans.values()):
            assert lk.readers >= 0 and lk.writers >= 0
        for lk in lru:
            assert lk.users == 0 and lk.state is LockState.GRANTED and not lk.no_lru
            assert ns.lock(lk.handle) is lk
        for lk in locks:
            assert lk.state is not LockState.CANCELLED
            if lk.state is LockState.CANCELLING:
                assert lk.users == 0
            if lk.state is LockState.GRANTED and lk.users == 0 and not lk.no_lru:
                assert lk in lru
            if lk.remote_handle is not None:
                assert ns.by_remote(lk.remote_handle) is lk
        for lk in ns._orphans.values():
            assert lk.state is LockState.CANCELLED and lk.users > 0
        for (h, _kind), n in self.refs.items():
            if n:
                assert h in ns._locks or h in ns._orphans
        for lk in locks + list(ns._orphans.values()):
            assert lk.readers == self.refs.get((lk.handle, "r"), 0)
            assert lk.writers == self.refs.get((lk.handle, "w"), 0)
        # A CBPENDING lock is never returned by match, whatever is asked.
        for r in RESOURCES:
            for m in MODES:
                got = ns.match(r, LockType.IBITS, m, int(IBits.LOOKUP), self.now, touch=False)
                assert got is None or got.state is LockState.GRANTED


NamespaceMachine.TestCase.settings = settings(
    deadline=None, derandomize=True, max_examples=100, stateful_step_count=60,
)
TestNamespaceMachine = NamespaceMachine.TestCase
