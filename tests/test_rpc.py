"""Unit tests for mlustre.protocol.rpc.Endpoint over in-memory and socket streams."""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from wire_helpers import run as trio_run

from mlustre.protocol.codec import (
    MAGIC_18,
    PREFIX,
    Codec18,
    Codec20,
    FrameDecoder,
    decode_payload,
)
from mlustre.protocol.constants import ERR, MAX_HEADER, REPLY, REQUEST
from mlustre.protocol.errors import ConnectionLost, RpcTimeout
from mlustre.protocol.message import Message
from mlustre.protocol.rpc import Endpoint

LIMIT = 10.0  # wall-clock bound of every test


run = partial(trio_run, limit=LIMIT)


async def echo(ep: Endpoint, msg: Message) -> Message:
    return msg.reply({"echo": msg.body, "by": ep.name}, bulk=msg.bulk)


@asynccontextmanager
async def pair(handler_a: Any = echo, handler_b: Any = echo, **kw_b: Any
               ) -> AsyncIterator[tuple[Endpoint, Endpoint, trio.Nursery]]:
    """Two serving endpoints joined by an in-memory stream."""
    sa, sb = trio.testing.memory_stream_pair()
    a = Endpoint(sa, handler=handler_a, name="a")
    b = Endpoint(sb, handler=handler_b, name="b", **kw_b)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        try:
            yield a, b, nursery
        finally:
            await a.aclose()
            await b.aclose()


class RawPeer:
    """The other end of an endpoint's stream, speaking bytes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def frame(self, header: bytes, bulk: bytes = b"") -> None:
        await self.send(PREFIX.pack(len(header), len(bulk)) + header + bulk)

    async def recv(self) -> tuple[Message, str] | None:
        """The next message and its release, or None at EOF."""
        while True:
            got = self.decoder.next_frame()
            if got is not None:
                msg, codec = decode_payload(got.header, got.bulk)
                return msg, codec.release
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            self.decoder.feed(data)


@asynccontextmanager
async def raw_pair(handler: Any = echo, **kw: Any) -> AsyncIterator[tuple[Endpoint, RawPeer]]:
    sa, sb = trio.testing.memory_stream_pair()
    ep = Endpoint(sa, handler=handler, name="srv", **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.serve)
        try:
            yield ep, RawPeer(sb)
        finally:
            await ep.aclose()
            await sb.aclose()


async def wait_for(cond: Callable[[], bool]) -> None:
    while not cond():
        await trio.sleep(0.005)


# -- requests and replies ------------------------------------------------------------------------

def test_requests_in_both_directions() -> None:
    async def main() -> None:
        async with pair() as (a, b, _):
            r = await a.call(7, {"x": 1}, timeout=2)
            assert (r.type, r.opc, r.status) == (REPLY, 7, 0)
            assert r.body == {"echo": {"x": 1}, "by": "b"}
            r = await b.call(8, {"y": [1, b"2"]}, timeout=2)
            assert r.body == {"echo": {"y": [1, b"2"]}, "by": "a"}
            assert (a.requests_out, a.requests_in, b.requests_out, b.requests_in) == (1, 1, 1, 1)

    run(main)


def test_header_fields_reach_the_handler() -> None:
    seen: list[Message] = []

    async def handler(ep: Endpoint, msg: Message) -> Message:
        seen.append(msg)
        return msg.reply(transno=9, last_committed=4)

    async def main() -> None:
        async with pair(handler_b=handler) as (a, _, _):
            r = await a.call(3, {"k": "v"}, flags=0x6, conn_cnt=5, xid=1234, timeout=2)
            assert (r.xid, r.transno, r.last_committed, r.conn_cnt) == (1234, 9, 4, 5)
            (m,) = seen
            assert (m.type, m.opc, m.xid, m.flags, m.conn_cnt, m.body) == (
                REQUEST, 3, 1234, 0x6, 5, {"k": "v"})

    run(main)


def test_handler_calling_back_does_not_block_the_connection() -> None:
    """A request whose handler waits on a request the other way (an AST) completes."""

    async def b_handler(ep: Endpoint, msg: Message) -> Message:
        inner = await ep.call(2, {"from": "b"}, timeout=2)
        return msg.reply({"inner": inner.body})

    async def main() -> None:
        async with pair(handler_b=b_handler) as (a, _, _):
            r = await a.call(1, {}, timeout=3)
            assert r.body == {"inner": {"echo": {"from": "b"}, "by": "a"}}

    run(main)


def test_many_concurrent_calls_matched_by_xid() -> None:
    n_calls = 40
    finished: list[int] = []

    async def slow_echo(ep: Endpoint, msg: Message) -> Message:
        n = msg.body["n"]
        await trio.sleep((n_calls - n) * 0.003)  # later requests are answered first
        finished.append(n)
        return msg.reply({"n": n, "xid": msg.xid}, bulk=bytes([n]) * n)

    async def main() -> None:
        results: dict[int, Message] = {}

        async def one(a: Endpoint, n: int) -> None:
            results[n] = await a.call(1, {"n": n}, timeout=5)

        async with pair(handler_b=slow_echo) as (a, _, _):
            async with trio.open_nursery() as nursery:
                for n in range(n_calls):
                    nursery.start_soon(one, a, n)
            assert not a._waiters
        assert sorted(results) == list(range(n_calls))
        for n, r in results.items():
            assert r.body["n"] == n and r.body["xid"] == r.xid
            assert (r.bulk or b"") == bytes([n]) * n
        assert finished != sorted(finished)  # the replies really came out of order

    run(main)


def test_bulk_round_trip_memory_stream() -> None:
    async def main() -> None:
        async with pair() as (a, _, _):
            for size in (1, 100, (64 << 10) - 1, 64 << 10, 300_000):
                data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
                r = await a.call(4, {"size": size}, bulk=data, timeout=5)
                assert r.bulk == data
            r = await a.call(4, {}, timeout=2)
            assert r.bulk is None

    run(main)


def test_bulk_round_trip_over_a_socket() -> None:
    """Large bulks are received with recv_into on real sockets."""

    async def main() -> None:
        s1, s2 = trio.socket.socketpair()
        a = Endpoint(trio.SocketStream(s1), handler=echo, name="a")
        b = Endpoint(trio.SocketStream(s2), handler=echo, name="b")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            big = bytes(range(251)) * (5 * (1 << 20) // 251)
            results = {}

            async def one(i: int, data: bytes) -> None:
                results[i] = await a.call(4, {"i": i}, bulk=data, timeout=8)

            async with trio.open_nursery() as inner:
                inner.start_soon(one, 0, big)
                inner.start_soon(one, 1, b"small")
                inner.start_soon(one, 2, big[::-1])
            assert results[0].bulk == big
            assert results[1].bulk == b"small"
            assert results[2].bulk == big[::-1]
            await a.aclose()
            await b.aclose()

    run(main)


def test_no_handler_answers_eopnotsupp() -> None:
    async def main() -> None:
        async with pair(handler_b=None) as (a, _, _):
            r = await a.call(1, {}, timeout=2)
            assert r.status == errno.EOPNOTSUPP

    run(main)


# -- timeouts, lost connections, failing handlers ------------------------------------------------

def test_timeout_then_late_reply_is_dropped() -> None:
    async def handler(ep: Endpoint, msg: Message) -> Message:
        await trio.sleep(msg.body.get("delay", 0))
        return msg.reply({"n": msg.body["n"]})

    async def main() -> None:
        async with pair(handler_b=handler) as (a, _, _):
            with pytest.raises(RpcTimeout):
                await a.call(1, {"n": 1, "delay": 0.3}, timeout=0.05)
            assert not a._waiters
            # a call made while the late reply is on its way gets its own reply
            r = await a.call(1, {"n": 2}, timeout=2)
            assert r.body == {"n": 2}
            await trio.sleep(0.4)  # the late reply arrives and is dropped
            assert not a.closed
            r = await a.call(1, {"n": 3}, timeout=2)
            assert r.body == {"n": 3}
            assert not a._waiters

    run(main)


def test_timeout_none_waits() -> None:
    async def handler(ep: Endpoint, msg: Message) -> Message:
        await trio.sleep(0.1)
        return msg.reply({"ok": True})

    async def main() -> None:
        async with pair(handler_b=handler) as (a, _, _):
            r = await a.call(1, timeout=None)
            assert r.body == {"ok": True}

    run(main)


@pytest.mark.parametrize("closer", ["peer", "self"])
def test_connection_close_fails_pending_calls(closer: str) -> None:
    async def stuck(ep: Endpoint, msg: Message) -> Message:
        await trio.sleep_forever()
        raise AssertionError

    async def main() -> None:
        outcomes: list[BaseException | Message] = []

        async def one(a: Endpoint) -> None:
            try:
                outcomes.append(await a.call(1, {}, timeout=5))
            except Exception as e:
                outcomes.append(e)

        async with pair(handler_b=stuck) as (a, b, nursery):
            async with trio.open_nursery() as inner:
                for _ in range(5):
                    inner.start_soon(one, a)
                await wait_for(lambda: b.requests_in == 5)
                await (b if closer == "peer" else a).aclose()
            assert len(outcomes) == 5
            assert all(isinstance(o, ConnectionLost) for o in outcomes), outcomes
            assert a.closed and not a._waiters
            with pytest.raises(ConnectionLost):
                await a.call(1, {}, timeout=1)
            with trio.fail_after(2):
                await b.wait_closed()

    run(main)


def test_handler_exception_gives_eio_and_serving_goes_on() -> None:
    async def handler(ep: Endpoint, msg: Message) -> Message:
        if msg.body.get("boom"):
            raise RuntimeError("handler bug")
        return msg.reply({"ok": True})

    async def main() -> None:
        async with pair(handler_b=handler) as (a, b, _):
            for _ in range(3):
                r = await a.call(1, {"boom": True}, timeout=2)
                assert (r.type, r.status) == (REPLY, errno.EIO)
                r = await a.call(1, {}, timeout=2)
                assert (r.status, r.body) == (0, {"ok": True})
            assert not b.closed

    logging.disable(logging.CRITICAL)  # the handler's traceback is logged on purpose
    try:
        run(main)
    finally:
        logging.disable(logging.NOTSET)


def test_handler_returning_none_sends_no_reply() -> None:
    async def handler(ep: Endpoint, msg: Message) -> Message | None:
        return None if msg.body.get("silent") else msg.reply({"ok": True})

    async def main() -> None:
        async with pair(handler_b=handler) as (a, _, _):
            with pytest.raises(RpcTimeout):
                await a.call(1, {"silent": True}, timeout=0.1)
            r = await a.call(1, {}, timeout=2)
            assert r.body == {"ok": True}

    run(main)


def test_handler_may_answer_with_err_type() -> None:
    async def handler(ep: Endpoint, msg: Message) -> Message:
        rep = msg.reply(status=errno.EBUSY)
        rep.type = ERR
        return rep

    async def main() -> None:
        async with pair(handler_b=handler) as (a, _, _):
            r = await a.call(1, {}, timeout=2)
            assert (r.type, r.status) == (ERR, errno.EBUSY)

    run(main)


@pytest.mark.parametrize("body", [{"x": b"0" * (MAX_HEADER + 10)}, {"x": {1, 2}}],
                         ids=["too-large", "not-msgpack"])
def test_unencodable_reply_does_not_take_the_connection_down(body: dict) -> None:
    """BUG: a reply the codec cannot encode (larger than MAX_HEADER, or holding a value
    msgpack cannot pack) raises ProtocolError/TypeError out of send_reply, through the
    handler task and out of Endpoint.serve: the connection dies (the caller sees
    ConnectionLost) and the exception escapes into the nursery running serve().
    A handler that raises gets EIO; a handler whose reply cannot be sent should too."""

    async def handler(ep: Endpoint, msg: Message) -> Message:
        return msg.reply(body if msg.body.get("bad") else {"ok": True})

    async def main() -> None:
        async with pair(handler_b=handler) as (a, b, _):
            r = await a.call(1, {"bad": True}, timeout=2)
            assert r.status != 0
            r = await a.call(1, {}, timeout=2)
            assert r.body == {"ok": True}
            assert not b.closed

    run(main)


def test_call_timeout_covers_a_send_the_peer_never_reads() -> None:
    """BUG: Endpoint.call's timeout only covers waiting for the reply, not sending the
    request: when the peer stops reading (a hung server with full socket buffers), call()
    blocks in send_all forever whatever its timeout. Expected: RpcTimeout (or
    ConnectionLost, as a cut frame spoils the stream) within about the timeout."""

    async def main() -> None:
        sa, _sb = trio.testing.lockstep_stream_pair()  # send_all blocks until the peer reads
        a = Endpoint(sa, name="a")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            raised: list[BaseException] = []
            with trio.move_on_after(2):
                try:
                    await a.call(1, {}, timeout=0.2)
                except (RpcTimeout, ConnectionLost) as e:
                    raised.append(e)
            nursery.cancel_scope.cancel()
        assert raised, "call(timeout=0.2) was still blocked in send after 2 s"

    run(main)


# -- hostile bytes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("payload,xid", [
    (b"\xc1garbage", 0),
    (b"", 0),
    (b"\x92\x01", 0),  # truncated msgpack
    (msgpack.packb([1, 2, 3]), 0),  # msgpack, not a message
    (msgpack.packb({"type": REQUEST, "opc": "1", "xid": 41}), 41),
    (msgpack.packb({"type": REQUEST, "opc": 1, "xid": 42, "body": {1: 2}}), 42),
    (msgpack.packb({"type": REQUEST, "opc": 1, "xid": -3}), 0),
    (msgpack.packb({"type": REQUEST, "opc": 1, "xid": "43"}), 0),
    (msgpack.packb([MAGIC_18, REQUEST, "bad", 44, 0, 0, 0, 0, 0, {}]), 44),
    (msgpack.packb([MAGIC_18, REQUEST, 1, 45, 0, 0, 0, 0, 0]), 45),
], ids=["garbage", "empty", "truncated", "array", "str-opc", "int-key", "negative-xid",
        "str-xid", "1.8-str-opc", "1.8-short"])
def test_malformed_payload_gets_eproto_and_connection_goes_on(payload: bytes, xid: int) -> None:
    """The ERR goes under the request's xid when it can be read, else under xid 0."""

    async def main() -> None:
        async with raw_pair() as (ep, peer):
            await peer.frame(payload, b"some bulk")
            got = await peer.recv()
            assert got is not None
            err, _ = got
            assert (err.type, err.xid, err.status) == (ERR, xid, errno.EPROTO)
            assert isinstance(err.body.get("error"), str)
            await peer.send(Codec20().encode(Message.request(5, 77, {"x": 1})))
            got = await peer.recv()
            assert got is not None
            reply, release = got
            assert (reply.type, reply.xid, reply.status, release) == (REPLY, 77, 0, "2.0")
            assert reply.body["echo"] == {"x": 1}
            assert not ep.closed

    run(main)


class _CorruptingCodec(Codec20):
    """Sends messages of one type with a header field the receiver must refuse."""

    def __init__(self, corrupt_type: int) -> None:
        self.corrupt_type = corrupt_type

    def to_wire(self, msg: Message) -> Any:
        obj = super().to_wire(msg)
        if msg.type == self.corrupt_type:
            obj["status"] = "corrupt"
        return obj


def test_malformed_request_fails_its_call_at_once() -> None:
    """The caller of a request the peer cannot decode gets the EPROTO ERR (its xid was
    readable), not a timeout."""

    async def main() -> None:
        sa, sb = trio.testing.memory_stream_pair()
        a = Endpoint(sa, codec=_CorruptingCodec(REQUEST), name="a")
        b = Endpoint(sb, handler=echo, name="b")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            with trio.fail_after(2):
                r = await a.call(1, {"x": 1}, timeout=30)
            assert (r.type, r.status) == (ERR, errno.EPROTO)
            assert b.requests_in == 0 and not b.closed
            await a.aclose()
            await b.aclose()

    run(main)


def test_eproto_for_a_malformed_reply_does_not_answer_the_peers_own_call() -> None:
    """BUG: xids are per direction (each endpoint numbers its own requests), but the ERR
    for an undecodable message reuses the message's xid whatever its type. When B cannot
    decode A's *reply* to B's request xid 1, B sends "ERR xid 1" to A, and A takes it as
    the reply to A's own, unrelated request xid 1 (still being handled by B): A's call
    returns EPROTO although B answers it correctly a moment later. Meanwhile B's own call
    is left to time out. Only an ERR for a request should carry the salvaged xid."""

    async def slow_echo(ep: Endpoint, msg: Message) -> Message:
        await trio.sleep(0.3)
        return msg.reply({"genuine": True})

    async def main() -> None:
        sa, sb = trio.testing.memory_stream_pair()
        a = Endpoint(sa, codec=_CorruptingCodec(REPLY), handler=echo, name="a")
        b = Endpoint(sb, handler=slow_echo, name="b")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            results: dict[str, Any] = {}

            async def a_calls() -> None:
                results["a"] = await a.call(1, {"from": "a"}, timeout=3)  # xid 1 of a

            async def b_calls() -> None:
                try:
                    results["b"] = await b.call(2, {"from": "b"}, timeout=0.6)  # xid 1 of b
                except RpcTimeout as e:
                    results["b"] = e

            async with trio.open_nursery() as inner:
                inner.start_soon(a_calls)
                await wait_for(lambda: b.requests_in == 1)
                inner.start_soon(b_calls)
            ra = results["a"]
            assert (ra.type, ra.status, ra.body) == (REPLY, 0, {"genuine": True}), (
                f"a's call got {ra.type} status {ra.status} {ra.body}")
            await a.aclose()
            await b.aclose()

    run(main)


def test_many_malformed_frames_then_a_good_one() -> None:
    async def main() -> None:
        async with raw_pair() as (ep, peer):
            junk = b"".join(PREFIX.pack(3, 0) + b"\xc1\xc1\xc1" for _ in range(200))
            await peer.send(junk + Codec18().encode(Message.request(5, 9, {"last": True})))
            errs = replies = 0
            while errs < 200 or not replies:
                got = await peer.recv()
                assert got is not None
                msg, _ = got
                if msg.type == ERR:
                    assert msg.status == errno.EPROTO
                    errs += 1
                else:
                    assert (msg.xid, msg.body["echo"]) == (9, {"last": True})
                    replies += 1
            assert (errs, replies) == (200, 1)
            assert not ep.closed

    run(main)


def test_unknown_reply_xids_are_dropped() -> None:
    async def main() -> None:
        async with raw_pair() as (ep, peer):
            await peer.send(Codec20().encode(Message(REPLY, 1, 999, body={"stray": 1})))
            await peer.send(Codec20().encode(Message(ERR, 0, 0, status=errno.EPROTO)))
            await peer.send(Codec20().encode(Message.request(5, 10, {})))
            got = await peer.recv()
            assert got is not None and got[0].xid == 10 and got[0].type == REPLY
            assert not ep.closed

    run(main)


def test_err_with_a_pending_xid_completes_the_call() -> None:
    async def main() -> None:
        async with raw_pair() as (ep, peer):
            async with trio.open_nursery() as nursery:
                results: list[Message] = []

                async def call() -> None:
                    results.append(await ep.call(3, {"q": 1}, timeout=2))

                nursery.start_soon(call)
                got = await peer.recv()
                assert got is not None
                req, _ = got
                assert (req.type, req.opc, req.body) == (REQUEST, 3, {"q": 1})
                await peer.send(Codec20().encode(Message(ERR, 3, req.xid, status=errno.EIO)))
            assert results[0].type == ERR and results[0].status == errno.EIO

    run(main)


@pytest.mark.parametrize("which", ["header", "bulk", "both-max"])
def test_oversized_frame_gets_emsgsize_and_closes(which: str) -> None:
    async def main() -> None:
        async with raw_pair(max_header=1024, max_bulk=4096) as (ep, peer):
            outcome: list[BaseException | Message] = []

            async def pending_call() -> None:
                try:
                    outcome.append(await ep.call(3, {}, timeout=5))
                except Exception as e:
                    outcome.append(e)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending_call)
                got = await peer.recv()  # the endpoint's request, never answered
                assert got is not None and got[0].type == REQUEST
                prefix = {"header": PREFIX.pack(1025, 0), "bulk": PREFIX.pack(10, 4097),
                          "both-max": PREFIX.pack(0xFFFFFFFF, 0xFFFFFFFF)}[which]
                await peer.send(prefix)  # no body follows: refused on the prefix alone
                got = await peer.recv()
                assert got is not None
                err, _ = got
                assert (err.type, err.status) == (ERR, errno.EMSGSIZE)
                assert await peer.recv() is None  # then the connection is closed
            assert ep.closed
            assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost)

    run(main)


def test_frame_at_the_limits_is_accepted() -> None:
    async def main() -> None:
        async with raw_pair(max_header=1024, max_bulk=4096) as (ep, peer):
            msg = Message.request(5, 1, {"pad": "x" * 900}, bulk=b"b" * 4096)
            await peer.send(Codec20().encode(msg))
            got = await peer.recv()
            assert got is not None and got[0].type == REPLY and got[0].bulk == b"b" * 4096

    run(main)


def test_eof_mid_frame_ends_serve_cleanly() -> None:
    async def main() -> None:
        sa, sb = trio.testing.memory_stream_pair()
        ep = Endpoint(sa, handler=echo, name="srv")
        async with trio.open_nursery() as nursery:
            await nursery.start(ep.serve)
            frame = Codec20().encode(Message.request(1, 1, {"x": 1}))
            await sb.send_all(frame[:-3])
            await sb.aclose()
            await ep.wait_closed()
        assert ep.closed and ep.close_reason

    run(main)


def test_byte_by_byte_delivery() -> None:
    async def main() -> None:
        async with raw_pair() as (_, peer):
            frame = Codec18().encode(Message.request(5, 3, {"slow": "drip"}, bulk=b"xyz"))
            for i in range(len(frame)):
                await peer.send(frame[i:i + 1])
                await trio.sleep(0)
            got = await peer.recv()
            assert got is not None
            assert (got[0].xid, got[0].body["echo"], got[0].bulk) == (3, {"slow": "drip"}, b"xyz")

    run(main)


# -- releases ------------------------------------------------------------------------------------

def test_follow_peer_release_answers_in_the_request_codec() -> None:
    async def main() -> None:
        async with raw_pair(codec="2.0", follow_peer_release=True) as (ep, peer):
            await peer.send(Codec18().encode(Message.request(5, 1, {"r": "1.8"})))
            got = await peer.recv()
            assert got is not None
            assert (got[0].xid, got[1]) == (1, "1.8")
            await peer.send(Codec18().encode(Message.request(5, 2, {})))
            got = await peer.recv()
            assert got is not None and got[1] == "1.8"
            await peer.send(Codec20().encode(Message.request(5, 3, {"r": "2.0"})))
            got = await peer.recv()
            assert got is not None
            assert (got[0].xid, got[1]) == (3, "2.0")

    run(main)


def test_1_8_reply_is_an_array_on_the_wire() -> None:
    async def main() -> None:
        async with raw_pair(codec="2.0", follow_peer_release=True) as (_, peer):
            await peer.send(Codec18().encode(Message.request(5, 4, {})))
            data = b""
            while len(data) < PREFIX.size:
                data += await peer.stream.receive_some(1 << 16)
            h, _ = PREFIX.unpack_from(data)
            while len(data) < PREFIX.size + h:
                data += await peer.stream.receive_some(1 << 16)
            obj = msgpack.unpackb(data[PREFIX.size:PREFIX.size + h], raw=False)
            assert type(obj) is list and len(obj) == 10 and obj[3] == 4

    run(main)


@pytest.mark.parametrize("own", ["2.0", "1.8"])
def test_without_follow_replies_use_the_endpoint_codec(own: str) -> None:
    async def main() -> None:
        async with raw_pair(codec=own) as (_, peer):
            for codec in (Codec18(), Codec20()):
                await peer.send(codec.encode(Message.request(5, 6, {})))
                got = await peer.recv()
                assert got is not None and got[1] == own

    run(main)


def test_two_endpoints_of_different_releases_interoperate() -> None:
    async def main() -> None:
        sa, sb = trio.testing.memory_stream_pair()
        a = Endpoint(sa, codec="1.8", handler=echo, name="a")
        b = Endpoint(sb, codec="2.0", handler=echo, name="b", follow_peer_release=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            r = await a.call(1, {"v": 18}, timeout=2)
            assert r.body["echo"] == {"v": 18}
            assert b.codec.release == "1.8"
            r = await b.call(2, {"v": 20}, timeout=2)
            assert r.body["echo"] == {"v": 20}
            await a.aclose()
            await b.aclose()

    run(main)
