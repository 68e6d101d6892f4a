"""The heartbeat state table of a failover pair's storage (servers/mmp.py) as tables and
one property (a standby never takes over while the holder may still serve), and its
driver (servers/heartbeat.py) on a real directory: claims, refusals, a takeover of a
holder that stopped renewing, and the fence of that holder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlustre.servers.heartbeat import Heartbeat, MmpConfig
from mlustre.servers.mmp import Mmp, MmpError, Record, State, Verdict
from mlustre.servers.storage import StorageBusy, TargetStorage

pytestmark = pytest.mark.timeout(60)

IVL = 1.0  # interval of the tables: lease 3 s, takeover wait 5.5 s, recheck 2 s
OTHER = Record(7, "other pid=1", flock=True)


def active(now: float = 0.0, **kw: object) -> Mmp:
    m = Mmp("me", IVL, **kw)  # type: ignore[arg-type]
    d = m.watch(now, None, got_flock=True)
    assert d.verdict is Verdict.CLAIM and d.record is not None
    m.claimed(now, d.record, started_at=now)
    return m


def test_timings_lease_shorter_than_the_wait() -> None:
    m = Mmp("me", 0.3)
    assert m.lease + m.interval < m.takeover_wait
    assert m.recheck_delay < m.lease
    with pytest.raises(ValueError):
        Mmp("me", 0)


@pytest.mark.parametrize("record", [None, Record(4, "old", clean=True),
                                    Record(4, "dead pid=9", flock=True)])
@pytest.mark.parametrize("standby", [False, True])
def test_the_flock_and_a_record_of_a_gone_holder_claim_at_once(record: Record | None,
                                                               standby: bool) -> None:
    m = Mmp("me", IVL, standby=standby)
    d = m.watch(0.0, record, got_flock=True)
    assert d.verdict is Verdict.CLAIM and d.record is not None
    assert (d.record.seq, d.record.holder, d.record.flock) == \
        ((record.seq if record else 0) + 1, "me", True)
    m.claimed(0.0, d.record, started_at=0.0)
    assert m.state is State.ACTIVE and m.may_serve(0.1)


def test_a_plain_server_refuses_a_live_holder_at_once() -> None:
    m = Mmp("me", IVL)
    d = m.watch(0.0, OTHER, got_flock=False)
    assert d.verdict is Verdict.REFUSE and "other pid=1" in d.reason and "seq 7" in d.reason


def test_a_plain_server_watches_a_holder_without_the_flock() -> None:
    """The record's writer took over without the flock (a frozen holder kept it, then
    died): maybe alive. Refused once its seq moves; claimed if it stays still."""
    mmp_taken = Record(7, "taker", flock=False)
    m = Mmp("me", IVL)
    assert m.watch(0.0, mmp_taken, got_flock=True).verdict is Verdict.WAIT
    d = m.watch(1.0, Record(8, "taker"), got_flock=True)
    assert d.verdict is Verdict.REFUSE and "live" in d.reason
    m = Mmp("me", IVL)
    assert m.watch(0.0, mmp_taken, got_flock=True).verdict is Verdict.WAIT
    assert m.watch(5.0, mmp_taken, got_flock=True).verdict is Verdict.WAIT
    d = m.watch(5.6, mmp_taken, got_flock=True)
    assert d.verdict is Verdict.TAKE_OVER and d.record == Record(8, "me", flock=True)


def test_a_standby_takes_over_after_the_wait_without_a_change() -> None:
    m = Mmp("me", IVL, standby=True, quorum_timeout=10.0)
    table = [  # (now, seq seen, verdict)
        (0.0, 7, Verdict.WAIT), (1.0, 8, Verdict.WAIT), (2.0, 9, Verdict.WAIT),
        (3.0, 9, Verdict.WAIT), (7.4, 9, Verdict.WAIT), (7.6, 9, Verdict.TAKE_OVER)]
    for now, seq, verdict in table:
        d = m.watch(now, Record(seq, "other", flock=True), got_flock=False,
                    mgs_reached_at=now)
        assert d.verdict is verdict, (now, d)
    assert d.record == Record(10, "me", flock=False, interval=IVL)


@pytest.mark.parametrize(("looks", "clean", "silent"), [
    # (now, seq seen, flock free) of each look: the holder renews every interval...
    ([(0.0, 7, False), (1.0, 8, False), (2.0, 9, False), (2.9, 9, True)], False, False),
    ([(0.0, 7, False), (1.0, 8, False), (1.9, 8, True)], False, False),  # (kill -9)
    # ...or stops renewing (cut off from the MGS) and exits a lease later (it fenced)
    ([(0.0, 7, False), (1.0, 8, False), (2.0, 8, False), (3.0, 8, False), (4.1, 8, True)],
     False, True),
    # a graceful stop leaves a clean record, however long the standby watched it
    ([(0.0, 7, False), (5.0, 7, True)], True, False),
    ([(0.0, 7, True)], False, False),  # the first look: nothing is known of the holder
])
def test_a_claim_says_whether_the_dead_holder_had_gone_silent(
        looks: list[tuple[float, int, bool]], clean: bool, silent: bool) -> None:
    """A fenced holder's clients heard nothing from it for a while before it exited
    (they come back late: the new server waits for them as after a live takeover); a
    holder that crashed while renewing, or stopped cleanly, leaves no such clients."""
    m = Mmp("me", IVL, standby=True)
    for now, seq, free in looks:
        d = m.watch(now, Record(seq, "other pid=1", flock=True, clean=clean and free),
                    got_flock=free)
        assert d.verdict is (Verdict.CLAIM if free else Verdict.WAIT), (now, d)
    assert d.holder_silent is silent


def test_a_standby_that_does_not_reach_the_mgs_does_not_take_over() -> None:
    m = Mmp("me", IVL, standby=True, quorum_timeout=2.0)
    m.watch(0.0, OTHER, got_flock=False, mgs_reached_at=0.0)
    d = m.watch(9.0, OTHER, got_flock=False, mgs_reached_at=6.0)
    assert d.verdict is Verdict.WAIT and "MGS" in d.reason
    d = m.watch(9.5, OTHER, got_flock=False, mgs_reached_at=9.4)
    assert d.verdict is Verdict.TAKE_OVER


def test_an_unreadable_record_counts_as_a_change() -> None:
    m = Mmp("me", IVL, standby=True)
    m.watch(0.0, OTHER, got_flock=False)
    assert m.watch(6.0, None, got_flock=False, unreadable=True).verdict is Verdict.WAIT
    assert m.watch(7.0, OTHER, got_flock=False).verdict is Verdict.WAIT  # changed again
    assert m.watch(12.6, OTHER, got_flock=False).verdict is Verdict.TAKE_OVER


def take_over(m: Mmp, now: float) -> Record:
    m.watch(now, OTHER, got_flock=False)
    d = m.watch(now + 6, OTHER, got_flock=False)
    assert d.verdict is Verdict.TAKE_OVER and d.record is not None
    m.taking_over(d.record, started_at=now + 6)
    assert m.state is State.CLAIMING and not m.may_serve(now + 6)
    return d.record


def test_recheck_keeps_the_claim_only_if_the_record_is_still_ours() -> None:
    m = Mmp("me", IVL, standby=True)
    mine = take_over(m, 0.0)
    assert m.recheck(8.0, mine) is True and m.state is State.ACTIVE and m.may_serve(8.0)
    m = Mmp("me", IVL, standby=True)
    mine = take_over(m, 0.0)
    assert m.recheck(8.0, Record(mine.seq, "another standby")) is False
    assert m.state is State.WATCHING
    m = Mmp("me", IVL, standby=True)
    mine = take_over(m, 0.0)
    assert m.recheck(9.5, mine) is False  # the recheck came after our own lease


def test_the_lease_and_the_fence() -> None:
    m = active(0.0)
    assert m.may_serve(2.9) and not m.may_serve(3.0)
    assert m.expired(2.9) is None and "lease" in (m.expired(3.0) or "")
    new = m.renewal(1.0)
    assert new == Record(2, "me", flock=True, interval=IVL)
    m.renewed(new, started_at=1.0)
    assert m.may_serve(3.9) and m.check_record(new) is None
    assert "taken over: seq 3 by other" in (m.check_record(Record(3, "other")) or "")
    assert m.check_record(None) is not None
    m.fence("test")
    assert m.state is State.FENCED and not m.may_serve(1.1)
    assert m.release() is None  # a fenced server writes nothing


def test_no_quorum_no_renewal() -> None:
    m = active(0.0, quorum_timeout=2.0)
    assert m.renewal(1.0, mgs_reached_at=0.5) is not None
    assert m.renewal(3.0, mgs_reached_at=0.5) is None


def test_release_writes_a_clean_record() -> None:
    m = active(0.0)
    rec = m.release()
    assert rec is not None and rec.clean and rec.seq == 2 and m.state is State.RELEASED


def test_illegal_transitions_raise() -> None:
    m = Mmp("me", IVL)
    with pytest.raises(MmpError):
        m.renewal(0.0)
    with pytest.raises(MmpError):
        m.recheck(0.0, None)
    a = active()
    with pytest.raises(MmpError):
        a.watch(0.0, None, got_flock=True)
    with pytest.raises(MmpError):
        a.claimed(0.0, Record(1, "me"), started_at=0.0)


def test_record_round_trip_and_junk() -> None:
    r = Record(5, "h", clean=True, flock=True, interval=0.5)
    assert Record.from_dict(r.to_dict()) == r
    for junk in (None, [], {"seq": "1", "holder": "h"}, {"seq": 1}, {"seq": 1, "holder": 2}):
        assert Record.from_dict(junk) is None


@settings(max_examples=300, deadline=None)
@given(interval=st.sampled_from([0.2, 0.5, 1.0]),
       renew_gaps=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=20),
       poll_gaps=st.lists(st.floats(0.01, 1.5), min_size=1, max_size=80),
       stop_after=st.integers(0, 20))
def test_a_standby_never_takes_over_while_the_holder_may_serve(
        interval: float, renew_gaps: list[float], poll_gaps: list[float],
        stop_after: int) -> None:
    """The holder renews (each gap a fraction of its interval) and then stops (frozen);
    the standby polls at any times. At the moment it takes over, the holder may not
    serve, then or later, unless it renews, which it cannot (check_record)."""
    holder = Mmp("holder", interval)
    d = holder.watch(0.0, None, got_flock=True)
    assert d.record is not None
    holder.claimed(0.0, d.record, started_at=0.0)
    shared = d.record
    renew_times, t = [], 0.0
    for gap in renew_gaps[:stop_after]:
        t += gap * interval
        renew_times.append(t)
    standby = Mmp("standby", interval, standby=True)
    now = 0.0
    for gap in poll_gaps:
        now += gap * interval
        while renew_times and renew_times[0] <= now:  # renewals that happened before
            at = renew_times.pop(0)
            if not holder.may_serve(at):
                break  # it fenced (its lease ran out between renewals)
            new = holder.renewal(at)
            assert new is not None
            holder.renewed(new, started_at=at)
            shared = new
        d = standby.watch(now, shared, got_flock=False)
        if d.verdict is Verdict.TAKE_OVER:
            assert not holder.may_serve(now)
            assert holder.renewed_at is not None and now - holder.renewed_at > holder.lease
            return


# -- the driver on a real directory -----------------------------------------------------

def heartbeat(path: Path, me: str, interval: float = 0.1, standby: bool = False
              ) -> tuple[Heartbeat, list[str]]:
    fences: list[str] = []
    hb = Heartbeat("T", "fs", TargetStorage(path), MmpConfig(interval=interval,
                                                             standby=standby),
                   holder=me, key=None, on_fence=fences.append)
    return hb, fences


def test_driver_claims_refuses_and_releases(tmp_path: Path) -> None:
    first, _ = heartbeat(tmp_path, "first")
    first.claim()
    assert first.storage.claimed and first.storage.has_flock
    second, _ = heartbeat(tmp_path, "second")
    with pytest.raises(StorageBusy, match="first.*--standby"):
        second.claim()
    assert first.renew() is None
    first.release()
    first.storage.release()
    record, _ = first.storage.read_mmp()
    assert record is not None and record.clean and record.holder == "first"
    second.claim()  # clean: at once
    assert second.core.seq == record.seq + 1


def test_driver_takes_over_from_a_holder_that_stopped_renewing(tmp_path: Path) -> None:
    """The holder keeps its flock (as a frozen process does) but renews nothing; a plain
    server started with the flock's help cannot tell, a standby can: it takes over, and
    the holder, back, fences on its lease and on the record."""
    import trio

    holder, fences = heartbeat(tmp_path, "holder")
    holder.claim()
    standby, _ = heartbeat(tmp_path, "standby", standby=True)
    started = time.monotonic()
    trio.run(standby.stand_by)
    waited = time.monotonic() - started
    assert standby.core.state is State.ACTIVE and not standby.core.has_flock
    assert waited >= standby.core.takeover_wait
    assert not holder.may_serve() and fences and "lease" in fences[0]
    record, _ = standby.storage.read_mmp()
    assert record is not None and record.holder == "standby"
    holder.storage.release()  # the frozen holder exits: its flock is free
    assert standby.renew() is None and standby.core.has_flock


def test_driver_fences_a_holder_that_cannot_reach_the_mgs(tmp_path: Path) -> None:
    """A host cut off from the network (here: an MGS address nobody listens on) stops
    renewing once its quorum timeout passed, and fences when its lease runs out; a
    standby then sees the heartbeat stop."""
    import socket

    import trio

    from mlustre.protocol.nid import Nid

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once this block ends: nothing listens
    fences: list[str] = []
    hb = Heartbeat("T", "fs", TargetStorage(tmp_path),
                   MmpConfig(interval=0.1, quorum_timeout=0.5, mgs=[Nid("127.0.0.1", port)]),
                   holder="cut off", key=None, on_fence=fences.append)
    hb.claim()
    seq_at_claim = hb.core.seq

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hb.ping_mgs)
                nursery.start_soon(hb.keep)
                while not fences:
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()

    started = time.monotonic()
    trio.run(main)
    assert fences and "lease" in fences[0], fences
    assert 0.5 + hb.core.lease - 0.2 <= time.monotonic() - started < 5
    record, _ = hb.storage.read_mmp()
    assert record is not None and record.holder == "cut off" and record.seq > seq_at_claim
    assert not hb.may_serve()


def test_an_ost_past_its_lease_answers_nothing_and_stops(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The request path checks the lease: a server whose renewals stopped (as in a
    stopped process, which then gets CPU again) answers no request once its lease has
    run out, fences, stops, and leaves the record as it was (no clean record)."""
    import trio
    from wire_helpers import ok, ost_server, ost_session

    from mlustre.protocol import constants as C
    from mlustre.protocol.errors import ConnectionLost, RpcTimeout
    from mlustre.protocol.nid import Nid

    server = ost_server(tmp_path / "ost", mmp=MmpConfig(interval=0.1))

    async def main() -> None:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nid = await nursery.start(server.run)
                s = await ost_session(nursery, Nid.parse(nid))
                await ok(s, C.OBD_PING)
                assert server.heartbeat is not None
                monkeypatch.setattr(server.heartbeat, "renew", lambda: None)
                await trio.sleep(server.heartbeat.core.lease + 0.2)
                with pytest.raises((ConnectionLost, RpcTimeout)):
                    await s.endpoint.call(C.OBD_PING, {}, timeout=2)
                assert server.fenced
                nursery.cancel_scope.cancel()

    trio.run(main)
    record, _ = TargetStorage(tmp_path / "ost").read_mmp()
    assert record is not None and not record.clean
