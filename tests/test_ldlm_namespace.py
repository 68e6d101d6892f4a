"""The server lock namespace: grant rules, FIFO queueing, ASTs, extent expansion,
replay, cancel/evict, callback timers, glimpse - plus a random stateful check."""

from __future__ import annotations

import errno

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mlustre.protocol.ldlm import (
    OBJECT_EOF,
    WHOLE,
    Extent,
    IBits,
    LockType,
    Mode,
    ResId,
    conflicts,
)
from mlustre.servers.ldlm_namespace import (
    FL_LOCK_CHANGED,
    FL_REPLAY,
    LockError,
    Namespace,
    ServerLock,
)

R = ResId(7)
R2 = ResId(8)
T = 100.0  # callback timeout
P, E, IB = LockType.PLAIN, LockType.EXTENT, LockType.IBITS


def ns() -> Namespace:
    return Namespace("test-OST0000", callback_timeout=T)


class Client:
    """Hands out client-side handles so each test reads as a sequence of requests."""

    def __init__(self, ns_: Namespace, owner: str) -> None:
        self.ns, self.owner, self.next = ns_, owner, 1

    def enq(self, mode: Mode, policy: object = None, type_: LockType = P, res: ResId = R,
            now: float = 0.0, **kw: object):
        self.next += 1
        return self.ns.enqueue(self.owner, self.next, res, type_, mode, policy, now, **kw)

    def cancel(self, lock: ServerLock, now: float = 0.0):
        return self.ns.cancel(self.owner, lock.handle, now)


@pytest.fixture
def abc():
    n = ns()
    return n, Client(n, "a"), Client(n, "b"), Client(n, "c")


# ---- grant rules ----

def test_pr_pr_compatible(abc) -> None:
    n, a, b, _ = abc
    assert a.enq(Mode.PR).granted and b.enq(Mode.PR).granted
    assert n.granted_count == 2 and n.waiting_count == 0


def test_pr_blocks_pw_and_basts_holder(abc) -> None:
    n, a, b, _ = abc
    pr = a.enq(Mode.PR).lock
    r = b.enq(Mode.PW, now=5.0)
    assert not r.granted and r.basts == [pr]
    assert pr.bast_sent and pr.deadline == 5.0 + T
    assert n.waiting_count == 1 and n.stats["basts"] == 1


def test_cr_ex_conflict_cr_pw_compatible(abc) -> None:
    _, a, b, c = abc
    a.enq(Mode.CR)
    assert b.enq(Mode.PW).granted
    r = c.enq(Mode.EX)
    assert not r.granted and len(r.basts) == 2


def test_same_owner_locks_do_not_conflict(abc) -> None:
    _, a, b, _ = abc
    a.enq(Mode.PR)
    assert a.enq(Mode.PW).granted  # an upgrade by one client calls nobody back
    r = b.enq(Mode.PR)
    assert not r.granted and len(r.basts) == 1  # another client's PR waits for the PW


def test_waiter_that_waits_for_the_requester_does_not_block_it(abc) -> None:
    _, a, b, c = abc
    pr = a.enq(Mode.PR).lock
    w = b.enq(Mode.PW).lock  # waits for a's PR
    r = a.enq(Mode.PW)  # a's upgrade must not wait behind b, which waits for a
    assert r.granted and r.basts == [r.lock] and r.lock.bast_sent and not w.granted
    assert not c.enq(Mode.PR).granted  # others still queue behind b (FIFO)
    assert pr.bast_sent


def test_ibits_disjoint_bits_do_not_conflict(abc) -> None:
    _, a, b, c = abc
    assert a.enq(Mode.EX, IBits.LOOKUP, IB).granted
    assert b.enq(Mode.EX, IBits.UPDATE | IBits.LAYOUT, IB).granted
    r = c.enq(Mode.PR, IBits.LOOKUP | IBits.UPDATE, IB)
    assert not r.granted and len(r.basts) == 2
    assert r.lock.policy == IBits.LOOKUP | IBits.UPDATE  # IBITS granted as asked


def test_disjoint_extents_do_not_conflict(abc) -> None:
    _, a, b, c = abc
    assert a.enq(Mode.PW, Extent(0, 99), E, no_expand=True).granted
    assert b.enq(Mode.PW, Extent(100, 199), E, no_expand=True).granted
    r = c.enq(Mode.PR, Extent(50, 150), E)
    assert not r.granted and len(r.basts) == 2


def test_resources_are_independent(abc) -> None:
    _, a, b, _ = abc
    a.enq(Mode.EX)
    assert b.enq(Mode.EX, res=R2).granted


def test_bad_requests_refused() -> None:
    n = ns()
    with pytest.raises(LockError) as ei:
        n.enqueue("a", 1, R, IB, Mode.PR, 0, 0.0)  # no bits
    assert ei.value.errno == errno.EINVAL
    for type_, mode, pol in [(E, Mode.PR, Extent(9, 3)), (E, Mode.PR, None), (P, Mode.PR, 1),
                             (P, Mode.PR | Mode.PW, None), (IB, Mode.PR, 0x1000)]:
        with pytest.raises(LockError):
            n.enqueue("a", 1, R, type_, mode, pol, 0.0)
    n.enqueue("a", 1, R, P, Mode.PR, None, 0.0)
    with pytest.raises(LockError) as ei:
        n.enqueue("a", 2, R, IB, Mode.PR, IBits.LOOKUP, 0.0)  # type mismatch on resource
    assert ei.value.errno == errno.EPROTO
    assert len(n) == 1


# ---- FIFO and BASTs ----

def test_waiting_ex_blocks_later_pr(abc) -> None:
    n, a, b, c = abc
    pr = a.enq(Mode.PR).lock
    ex = b.enq(Mode.EX).lock
    r = c.enq(Mode.PR)  # compatible with the granted PR, but queued behind the EX
    assert not r.granted and r.basts == []  # blocked by a waiter only: nothing to call back
    assert n.resource_locks(R) == [pr, ex, r.lock]
    out = a.cancel(pr)
    assert out.granted == [ex] and out.basts == [ex]  # EX granted, at once called back for PR
    out = b.cancel(ex)
    assert out.granted == [r.lock] and out.basts == []


def test_bast_sent_once_per_lock(abc) -> None:
    n, a, b, c = abc
    pr = a.enq(Mode.PR).lock
    assert b.enq(Mode.PW, now=1.0).basts == [pr]
    assert c.enq(Mode.EX, now=2.0).basts == []
    assert pr.deadline == 1.0 + T and n.stats["basts"] == 1


def test_cancel_grants_waiters_in_order(abc) -> None:
    n, a, b, c = abc
    ex = a.enq(Mode.EX).lock
    pr1 = b.enq(Mode.PR).lock
    pr2 = c.enq(Mode.PR).lock
    pw = b.enq(Mode.PW).lock
    pr3 = c.enq(Mode.PR).lock
    out = a.cancel(ex)
    assert out.granted == [pr1, pr2]  # both PRs; the PW still waits, and blocks pr3
    assert out.basts == [pr2]  # b's own PR does not block b's PW
    assert n.resource_locks(R) == [pr1, pr2, pw, pr3]
    assert b.cancel(pr1).granted == []
    out = c.cancel(pr2)
    assert out.granted == [pw] and out.basts == [pw]
    assert c.cancel(pr3).granted == [] and b.cancel(pw).granted == []
    assert len(n) == 0 and n.resources() == []


def test_cancel_of_waiting_lock_unblocks_later_waiters(abc) -> None:
    n, a, b, c = abc
    pr = a.enq(Mode.PR).lock
    ex = b.enq(Mode.EX).lock
    pr2 = c.enq(Mode.PR).lock
    out = b.cancel(ex)
    assert out.granted == [pr2] and pr2.granted and n.waiting_count == 0
    assert pr.bast_sent  # the call-back already sent is not withdrawn


def test_cancel_unknown_or_foreign_refused(abc) -> None:
    n, a, b, _ = abc
    lk = a.enq(Mode.PR).lock
    w = b.enq(Mode.EX).lock
    before = (n.resource_locks(R), dict(n.stats), n.granted_count, n.waiting_count)
    with pytest.raises(LockError) as ei:
        n.cancel("a", 999_999, 0.0)
    assert ei.value.errno == errno.ESTALE
    with pytest.raises(LockError) as ei:
        n.cancel("b", lk.handle, 0.0)
    assert ei.value.errno == errno.EPERM
    assert (n.resource_locks(R), dict(n.stats), n.granted_count, n.waiting_count) == before
    a.cancel(lk)
    with pytest.raises(LockError):  # a second cancel of the same lock
        a.cancel(lk)
    assert w.granted


# ---- extent expansion ----

def test_extent_alone_expands_to_whole(abc) -> None:
    _, a, _, _ = abc
    lk = a.enq(Mode.PW, Extent(4096, 8191), E).lock
    assert lk.policy == WHOLE and lk.req_policy == Extent(4096, 8191)
    assert lk.flags & FL_LOCK_CHANGED


def test_extent_whole_request_unchanged(abc) -> None:
    _, a, _, _ = abc
    lk = a.enq(Mode.PR, WHOLE, E).lock
    assert lk.policy == WHOLE and not lk.flags & FL_LOCK_CHANGED


def test_extent_expands_between_incompatible_locks(abc) -> None:
    _, a, b, c = abc
    a.enq(Mode.PW, Extent(0, 99), E, no_expand=True)
    b.enq(Mode.PW, Extent(1000, 1999), E, no_expand=True)
    lk = c.enq(Mode.PR, Extent(300, 400), E).lock
    assert lk.granted and lk.policy == Extent(100, 999)


def test_compatible_locks_do_not_limit_growth(abc) -> None:
    _, a, b, c = abc
    a.enq(Mode.PR, Extent(0, 99), E, no_expand=True)
    b.enq(Mode.CR, Extent(1000, 1999), E, no_expand=True)
    lk = c.enq(Mode.PR, Extent(300, 400), E).lock
    assert lk.policy == WHOLE


def test_waiting_locks_limit_growth(abc) -> None:
    n, a, b, c = abc
    a.enq(Mode.PW, Extent(0, 99), E, no_expand=True)
    w = b.enq(Mode.PW, Extent(50, 5000), E).lock  # waits for a's lock
    lk = c.enq(Mode.PR, Extent(6000, 6000), E).lock
    assert lk.granted and lk.policy == Extent(5001, OBJECT_EOF)
    assert not w.granted


def test_no_expand(abc) -> None:
    _, a, _, _ = abc
    lk = a.enq(Mode.PW, Extent(10, 20), E, no_expand=True).lock
    assert lk.policy == Extent(10, 20) and not lk.flags & FL_LOCK_CHANGED


def test_expansion_on_grant_after_cancel(abc) -> None:
    _, a, b, c = abc
    pw = a.enq(Mode.PW, Extent(0, 99), E).lock  # alone: [0, EOF]
    assert pw.policy == WHOLE
    c.enq(Mode.PW, Extent(10_000, 10_000), E, no_expand=True)  # waits behind pw
    w = b.enq(Mode.PW, Extent(0, 9), E).lock  # waits behind pw
    out = a.cancel(pw)
    # the first waiter is granted as asked, the second grows up to it
    assert out.granted[0].policy == Extent(10_000, 10_000)
    assert out.granted[1] is w and w.policy == Extent(0, 9_999)


# ---- replay and resend ----

def test_replay_skips_conflict_check(abc) -> None:
    n, a, b, _ = abc
    lk = n.enqueue("a", 5, R, E, Mode.PW, WHOLE, 0.0, replay=True)
    lk2 = n.enqueue("b", 5, R, E, Mode.PW, Extent(0, 9), 0.0, replay=True)
    assert lk.granted and lk2.granted and lk2.lock.policy == Extent(0, 9)  # not expanded
    assert lk.lock.flags & FL_REPLAY and lk.basts == [] and lk2.basts == []
    w = n.enqueue("c", 5, R, E, Mode.PR, Extent(0, 9), 0.0, replay=True, granted_before=False)
    assert not w.granted and n.waiting_count == 1


def test_resent_replay_is_idempotent() -> None:
    n = ns()
    first = n.enqueue("a", 5, R, IB, Mode.CR, IBits.LOOKUP, 0.0, replay=True)
    again = n.enqueue("a", 5, R, IB, Mode.CR, IBits.LOOKUP, 1.0, replay=True)
    assert again.lock is first.lock and again.granted and len(n) == 1
    assert n.granted_count == 1 and n.stats["enqueues"] == 1


def test_replayed_waiter_granted_at_end_of_recovery() -> None:
    n = ns()
    n.enqueue("a", 1, R, P, Mode.PR, None, 0.0, replay=True, granted_before=False)
    n.enqueue("b", 1, R, P, Mode.PR, None, 0.0, replay=True)
    out = n.reprocess_all(1.0)
    assert [lk.owner for lk in out.granted] == ["a"] and n.waiting_count == 0


def test_resent_enqueue_returns_existing_lock(abc) -> None:
    n, a, b, _ = abc
    pr = n.enqueue("a", 42, R, P, Mode.PR, None, 0.0).lock
    w = n.enqueue("b", 42, R, P, Mode.EX, None, 0.0)
    assert w.basts == [pr]
    again = n.enqueue("b", 42, R, P, Mode.EX, None, 3.0)
    assert again.lock is w.lock and not again.granted and again.basts == []
    assert len(n) == 2 and n.stats["enqueues"] == 2 and n.stats["resends"] == 1
    assert pr.deadline == T  # not re-armed by the resend


# ---- timers, eviction ----

def test_prolong_pushes_deadline(abc) -> None:
    n, a, b, _ = abc
    lk = a.enq(Mode.PW, Extent(0, 99), E, no_expand=True).lock
    other = a.enq(Mode.PW, Extent(200, 299), E, no_expand=True).lock
    b.enq(Mode.PR, Extent(0, 299), E, now=10.0)
    assert lk.deadline == other.deadline == 10.0 + T
    assert n.prolong("a", R, 50.0, Extent(0, 10)) == 1
    assert lk.deadline == 50.0 + T and other.deadline == 10.0 + T
    assert n.prolong("a", R, 20.0) == 2  # never pulls a deadline earlier
    assert lk.deadline == 50.0 + T and other.deadline == 20.0 + T
    assert n.prolong("b", R, 60.0) == 0  # b's lock got no BAST
    assert n.prolong("a", R2, 60.0) == 0
    assert n.next_deadline() == 20.0 + T


def test_prolong_ignores_locks_without_bast(abc) -> None:
    n, a, _, _ = abc
    lk = a.enq(Mode.PR).lock
    assert n.prolong("a", R, 1.0) == 0 and lk.deadline is None
    assert n.next_deadline() is None and n.expired(1e9) == []


def test_expired_and_evict(abc) -> None:
    n, a, b, c = abc
    pr_a = a.enq(Mode.PR, now=0.0).lock
    pr_c = c.enq(Mode.PR, res=R2, now=0.0).lock
    ex = b.enq(Mode.EX, now=1.0).lock
    ex2 = b.enq(Mode.EX, res=R2, now=2.0).lock  # BAST to c's PR on R2
    assert n.next_deadline() == 1.0 + T
    assert n.expired(1.0 + T - 0.5) == []
    assert n.expired(1.0 + T) == ["a"]
    assert n.expired(1e9) == ["a", "c"]
    aw = a.enq(Mode.PW, res=R2).lock  # a also waits on R2
    out = n.evict("a", 1.0 + T)
    assert out.granted == [ex] and out.basts == []
    assert n.locks_of("a") == [] and n.lock(pr_a.handle) is None and n.lock(aw.handle) is None
    assert n.expired(1e9) == ["c"] and pr_c.bast_sent
    assert n.stats["evictions"] == 1 and n.stats["evicted_locks"] == 2
    out = n.evict("c", 500.0)
    assert out.granted == [ex2] and n.resources() == [R, R2]
    assert n.evict("nobody", 500.0).granted == []


def test_cancel_clears_deadline(abc) -> None:
    n, a, b, _ = abc
    pr = a.enq(Mode.PR).lock
    b.enq(Mode.PW, now=3.0)
    assert n.next_deadline() == 3.0 + T
    a.cancel(pr, now=4.0)
    assert n.next_deadline() is None and n.expired(1e9) == []


# ---- glimpse ----

def test_glimpse_holder(abc) -> None:
    n, a, b, c = abc
    assert n.glimpse_holder(R) is None
    c.enq(Mode.PR, Extent(0, OBJECT_EOF), E, res=R2)
    assert n.glimpse_holder(R2) is None  # readers cannot grow the object
    pa = a.enq(Mode.PW, Extent(0, 4095), E, no_expand=True).lock
    pb = b.enq(Mode.PW, Extent(4096, 1 << 20), E, no_expand=True).lock
    assert n.glimpse_holder(R) is pb
    assert n.glimpse_holder(R, size=(1 << 20) + 1) is None  # nobody reaches past the size
    b.cancel(pb)
    assert n.glimpse_holder(R) is pa


# ---- random stateful check ----

OWNERS = ["a", "b", "c"]
RES_TYPES = {ResId(1): LockType.IBITS, ResId(2): LockType.EXTENT}
MODES = [Mode.EX, Mode.PW, Mode.PR, Mode.CW, Mode.CR, Mode.NL]


def clash(a, b) -> bool:
    """Two locks conflict: different clients, incompatible modes, overlapping policies."""
    return a.owner != b.owner and conflicts(a.type, a.mode, a.policy, b.mode, b.policy)


class NamespaceMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.ns = Namespace("fuzz", callback_timeout=10.0)
        self.now = 0.0
        self.next_remote = 1
        self.seen_handles: set[int] = set()
        self.granted_ever = 0
        self.dropped_granted = 0

    @rule(owner=st.sampled_from(OWNERS), mode=st.sampled_from(MODES), bits=st.integers(1, 7))
    def enqueue_ibits(self, owner, mode, bits) -> None:
        self._enqueue(owner, ResId(1), mode, IBits(bits), False)

    @rule(owner=st.sampled_from(OWNERS), mode=st.sampled_from(MODES),
          start=st.integers(0, 40), length=st.integers(0, 30), whole=st.booleans(),
          no_expand=st.booleans())
    def enqueue_extent(self, owner, mode, start, length, whole, no_expand) -> None:
        self._enqueue(owner, ResId(2), mode, WHOLE if whole else Extent(start, start + length),
                      no_expand)

    def _enqueue(self, owner, res, mode, policy, no_expand) -> None:
        if len(self.ns) >= 10:  # keep queues short so that cancels often grant something
            return
        type_ = RES_TYPES[res]
        self.next_remote += 1
        out = self.ns.enqueue(owner, self.next_remote, res, type_, mode, policy, self.now,
                              no_expand=no_expand)
        lk = out.lock
        assert lk.handle not in self.seen_handles
        self.seen_handles.add(lk.handle)
        assert out.granted == lk.granted
        if lk.granted:
            self.granted_ever += 1
            assert out.basts in ([], [lk])  # [lk]: granted past waiters that wait for us
            if type_ is LockType.EXTENT:
                assert lk.policy.contains(lk.req_policy)
        for h in out.basts:
            assert h.granted and h.bast_sent and h.deadline == self.now + 10.0
            assert h is lk or clash(h, lk)

    def _check_reprocessed(self, out) -> None:
        self.granted_ever += len(out.granted)
        for g in out.granted:  # FIFO: no earlier waiter that is still waiting conflicts
            assert g.granted
            for w in self.ns.waiting_locks(g.res):
                assert w.handle > g.handle or w.owner == g.owner or not conflicts(
                    w.type, w.mode, w.policy, g.mode, g.req_policy)
        assert all(lk.granted and lk.deadline == self.now + 10.0 for lk in out.basts)
        assert len({id(lk) for lk in out.basts}) == len(out.basts)

    @rule(data=st.data(), granted_only=st.booleans())
    def cancel(self, data, granted_only) -> None:
        handles = sorted(h for h in self.seen_handles if self.ns.lock(h) is not None
                         and (self.ns.lock(h).granted or not granted_only))
        if not handles:
            return
        lk = self.ns.lock(data.draw(st.sampled_from(handles)))
        self.dropped_granted += lk.granted
        self._check_reprocessed(self.ns.cancel(lk.owner, lk.handle, self.now))
        assert self.ns.lock(lk.handle) is None

    @rule(data=st.data(), owner=st.sampled_from(OWNERS))
    def cancel_refused(self, data, owner) -> None:
        handles = sorted(self.seen_handles)
        h = data.draw(st.sampled_from(handles)) if handles else 12345
        lk = self.ns.lock(h)
        if lk is not None and lk.owner == owner:
            return
        snap = ([(r, list(self.ns.resource_locks(r))) for r in self.ns.resources()],
                dict(self.ns.stats))
        with pytest.raises(LockError):
            self.ns.cancel(owner, h, self.now)
        assert snap == ([(r, list(self.ns.resource_locks(r))) for r in self.ns.resources()],
                        dict(self.ns.stats))

    @rule(owner=st.sampled_from(OWNERS))
    def evict(self, owner) -> None:
        self.dropped_granted += sum(lk.granted for lk in self.ns.locks_of(owner))
        self._check_reprocessed(self.ns.evict(owner, self.now))
        assert self.ns.locks_of(owner) == []

    @rule(dt=st.floats(0.5, 4.0))
    def tick(self, dt) -> None:
        self.now += dt
        for owner in self.ns.expired(self.now):
            self.evict(owner)
        assert self.ns.expired(self.now) == []

    @rule(owner=st.sampled_from(OWNERS), res=st.sampled_from(sorted(RES_TYPES)))
    def prolong(self, owner, res) -> None:
        n = self.ns.prolong(owner, res, self.now)
        timed = [lk for lk in self.ns.resource_locks(res) if lk.owner == owner and lk.bast_sent]
        assert n == len(timed)
        assert all(lk.deadline >= self.now + 10.0 for lk in timed)

    @invariant()
    def consistent(self) -> None:
        ns_ = self.ns
        all_locks = []
        for res in ns_.resources():
            granted, waiting = ns_.granted_locks(res), ns_.waiting_locks(res)
            assert granted or waiting  # empty resources are freed
            assert ns_.resource_locks(res) == granted + waiting
            for i, g in enumerate(granted):
                assert g.granted and g.res == res
                for h in granted[i + 1:]:  # no two granted locks conflict
                    assert not clash(g, h)
            for j, w in enumerate(waiting):
                assert not w.granted and w.policy == w.req_policy
                blockers = [g for g in granted if clash(g, w)]
                earlier = [e for e in waiting[:j] if clash(e, w)]
                assert blockers or earlier  # nothing grantable is left waiting
                assert all(g.bast_sent and g.deadline is not None for g in blockers)
            all_locks += granted + waiting
        handles = [lk.handle for lk in all_locks]
        assert len(handles) == len(set(handles)) == len(ns_)
        assert ns_.granted_count == sum(lk.granted for lk in all_locks)
        assert ns_.waiting_count == len(all_locks) - ns_.granted_count
        assert sorted(handles) == sorted(lk.handle for o in OWNERS for lk in ns_.locks_of(o))
        st_ = ns_.stats
        assert st_["enqueues"] == len(all_locks) + st_["cancels"] + st_["evicted_locks"]
        assert st_["grants"] == self.granted_ever == ns_.granted_count + self.dropped_granted
        deadlines = [lk.deadline for lk in all_locks if lk.deadline is not None]
        assert ns_.next_deadline() == (min(deadlines) if deadlines else None)
        assert all(lk.deadline is None or lk.bast_sent for lk in all_locks)


NamespaceMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                              deadline=None, derandomize=True)
test_namespace_machine = NamespaceMachine.TestCase
