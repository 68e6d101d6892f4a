"""What keeps one RPC cheap (protocol/rpc.py, protocol/waiters.py): the frames of one
read handled in one go, calls timed out by the connection's reaper instead of a cancel
scope each, and waiters parked directly."""

from __future__ import annotations

import math
from functools import partial

import pytest
import trio
from wire_helpers import run as trio_run

from mlustre.protocol import constants as C
from mlustre.protocol.codec import Codec20, FrameDecoder, decode_payload
from mlustre.protocol.errors import RpcTimeout
from mlustre.protocol.message import Message
from mlustre.protocol.rpc import Endpoint
from mlustre.protocol.waiters import Deadlines, ReplyWaiter

run = partial(trio_run, limit=10.0)


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


def test_several_frames_of_one_read_are_handled_without_yielding() -> None:
    """Ten requests that arrive in one read are all answered before any other task of
    the process runs: no scheduler pass per message."""
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async def handler(ep: Endpoint, msg: Message) -> Message:
        seen.append(ticks)
        return msg.reply({"n": msg.body["n"]})

    async def main() -> None:
        sa, sb = socket_pair()
        server = Endpoint(sa, handler=handler, name="server",
                          inline_opcodes=frozenset({C.OBD_PING}))
        codec = Codec20()
        burst = b"".join(codec.encode(Message.request(C.OBD_PING, xid, {"n": xid}))
                         for xid in range(1, 11))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            nursery.start_soon(ticker)
            await sb.send_all(burst)  # one write: one read on the server side
            decoder, replies = FrameDecoder(), []
            while len(replies) < 10:
                decoder.feed(await sb.receive_some(1 << 16))
                while (frame := decoder.next_frame()) is not None:
                    replies.append(decode_payload(frame.header)[0])
            assert [r.body["n"] for r in replies] == list(range(1, 11))
            assert len(seen) == 10 and len(set(seen)) == 1, seen
            await server.aclose()
            nursery.cancel_scope.cancel()

    run(main)


def test_an_earlier_deadline_wakes_the_reaper() -> None:
    """A short timeout after a long one still fires on time (the reaper, asleep until
    the long one's deadline, is woken), and the long call is not disturbed."""

    async def silent(ep: Endpoint, msg: Message) -> None:
        await trio.sleep_forever()

    async def main() -> None:
        sa, sb = socket_pair()
        a = Endpoint(sa, name="a")
        b = Endpoint(sb, handler=silent, name="b")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            long_call = trio.Event()

            async def long() -> None:
                with pytest.raises(RpcTimeout):
                    await a.call(C.OBD_PING, {}, timeout=1.5)
                long_call.set()

            nursery.start_soon(long)
            await trio.sleep(0.05)
            t0 = trio.current_time()
            with pytest.raises(RpcTimeout):
                await a.call(C.OBD_PING, {}, timeout=0.2)
            assert 0.15 <= trio.current_time() - t0 < 1.0
            assert not long_call.is_set()
            with trio.fail_after(5):
                await long_call.wait()
            assert not a._waiters
            await a.aclose()
            await b.aclose()
            nursery.cancel_scope.cancel()

    run(main)


def test_a_call_before_serving_still_times_out() -> None:
    """Without the reader (and its reaper) a call falls back to its own cancel scope."""

    async def main() -> None:
        sa, _sb = socket_pair()
        a = Endpoint(sa, name="a")
        with pytest.raises(RpcTimeout):
            await a.call(C.OBD_PING, {}, timeout=0.1)
        await a.aclose()

    run(main)


def test_deadlines_expire_in_order_and_skip_ended_calls() -> None:
    d = Deadlines()
    w1, w2, w3 = ReplyWaiter(), ReplyWaiter(), ReplyWaiter()
    assert d.next_deadline() == math.inf
    assert d.add(10.0, w1) is True  # the first is the earliest
    assert d.add(20.0, w2) is False
    assert d.add(5.0, w3) is True  # an earlier one: the reaper must wake
    w3.wake()  # its call ended (a reply came)
    assert d.next_deadline() == 5.0
    assert d.expire(4.0) == []
    assert d.expire(10.0) == [w1]  # w3 was due too, but had ended
    assert d.next_deadline() == 20.0 and len(d) == 1


def test_deadlines_compact_drops_ended_calls() -> None:
    d = Deadlines()
    live = ReplyWaiter()
    d.add(1.0, live)
    for i in range(200):
        w = ReplyWaiter()
        d.add(2.0 + i, w)
        w.wake()
    d.compact(1)
    assert len(d) == 1 and d.expire(math.inf) == [live]


def test_waiter_woken_before_it_waits_returns_at_once() -> None:
    async def main() -> None:
        w = ReplyWaiter()
        w.reply = "r"
        w.wake()
        w.wake()  # (twice: harmless)
        with trio.fail_after(1):
            await w.wait()

    run(main)


def test_a_cancelled_waiter_may_be_woken_later() -> None:
    async def main() -> None:
        w = ReplyWaiter()
        with trio.move_on_after(0.05) as scope:
            await w.wait()
        assert scope.cancelled_caught
        w.wake()  # the task is gone: nothing is rescheduled
        assert w.done
        await trio.sleep(0.01)

    run(main)
