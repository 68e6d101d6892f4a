"""Limits against hostile clients: the sans-IO decisions (servers/limits.py) and, over
TCP on in-process servers, the connection limit and eviction after repeated violations."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from mlustre.protocol import constants as C
from mlustre.protocol.codec import PREFIX
from mlustre.protocol.errors import RpcError
from mlustre.protocol.ldlm import LockType, Mode
from mlustre.protocol.message import Message
from mlustre.protocol.nid import Nid
from mlustre.protocol.rpc import Endpoint, connect_stream
from mlustre.protocol.session import Session
from mlustre.servers.limits import ConnectionLimit, Misbehaviour
from mlustre.servers.ost import OstServer

NAME = "lim-OST0000"


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("mlustre")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(old)


def test_misbehaviour_evicts_at_the_threshold_within_the_window() -> None:
    m = Misbehaviour(threshold=3, window=10.0)
    assert not m.note("a", 0.0) and not m.note("a", 1.0)
    assert not m.note("b", 1.5)  # another client's count is its own
    assert m.note("a", 2.0)  # the third within 10 s
    assert m.count("a", 2.0) == 0  # evicted once: its record starts again
    assert not m.note("a", 3.0) and not m.note("a", 20.0)  # spread out: never 3 in 10 s
    assert not m.note("a", 40.0)
    assert m.count("a", 40.0) == 1


def test_misbehaviour_threshold_zero_never_evicts() -> None:
    m = Misbehaviour(threshold=0)
    assert not any(m.note("a", float(t)) for t in range(100))


def test_connection_limit_admits_up_to_the_limit() -> None:
    c = ConnectionLimit(limit=2)
    assert c.admit() and c.admit() and not c.admit()
    c.release()
    assert c.admit() and c.current == 2


def _run(afn: Any) -> None:
    async def main() -> None:
        with trio.fail_after(30):
            await afn()

    trio.run(main)


async def _session(nursery: trio.Nursery, nid: Nid, uuid: str | None = None,
                   handler: Any = None) -> Session:
    return await Session.open(nursery, [nid], target=NAME, connect_opc=C.OST_CONNECT,
                              client_uuid=uuid, handler=handler, timeout=5)


def test_connections_over_the_limit_get_eusers_then_close(tmp_path: Path) -> None:
    async def main() -> None:
        server = OstServer("lim", 0, str(tmp_path / "ost"), max_connections=2)
        async with trio.open_nursery() as nursery:
            nid = Nid.parse(await nursery.start(server.run))
            a = await _session(nursery, nid)
            b = await _session(nursery, nid)
            with pytest.raises(RpcError) as refused:
                await _session(nursery, nid)
            assert refused.value.errno == errno.EUSERS
            assert "too many connections" in str(refused.value)
            assert server.stats["connections_refused"] == 1
            assert server.params().get("obdfilter.*.num_connections") == [
                [f"obdfilter.{NAME}.num_connections", 2]]
            await a.call(C.OST_STATFS)  # those admitted are served as before
            await b.close()
            while server.connections.current > 1:  # (the server sees the close)
                await trio.sleep(0.01)
            c = await _session(nursery, nid)  # a freed slot is taken again
            await c.call(C.OST_STATFS)
            server.params().set(f"obdfilter.{NAME}.max_connections", "3")
            d = await _session(nursery, nid)
            await d.call(C.OST_STATFS)
            server.stop()

    _run(main)


def test_a_misbehaving_client_is_evicted_and_others_see_only_its_locks_go(
        tmp_path: Path) -> None:
    """A holds a lock B waits for; A then sends junk on its connection: after
    evict_threshold violations it is evicted through the lock service, B is granted
    (CP AST), and C, which has nothing to do with it, is served throughout."""
    async def main() -> None:
        server = OstServer("lim", 0, str(tmp_path / "ost"), evict_threshold=3,
                           ldlm_timeout=30.0)
        granted = trio.Event()

        async def b_handler(ep: Endpoint, req: Message) -> Message:
            if req.opc == C.LDLM_CP_CALLBACK:
                granted.set()
            return req.reply({})

        async def ignore(ep: Endpoint, req: Message) -> Message:
            return req.reply({})

        enqueue = {"res": [77, 0, 0, 0], "type": int(LockType.EXTENT), "policy": [0, 4095],
                   "handle": 1}
        async with trio.open_nursery() as nursery:
            nid = Nid.parse(await nursery.start(server.run))
            a = await _session(nursery, nid, "client-a", ignore)
            b = await _session(nursery, nid, "client-b", b_handler)
            c = await _session(nursery, nid, "client-c")
            await c.endpoint.call(C.OST_WRITE, {"oid": 5, "offset": 0}, bulk=b"c" * 10)
            r = await a.call(C.LDLM_ENQUEUE, {**enqueue, "mode": int(Mode.PW)})
            assert r.body["granted"]
            r = await b.call(C.LDLM_ENQUEUE, {**enqueue, "mode": int(Mode.PW)})
            assert not r.body["granted"]  # waits for A, which ignores the callback
            stream = a.endpoint.stream
            junk = b"\x93\xc1\xc1\xc1"  # a msgpack array of reserved bytes: undecodable
            for _ in range(2):
                await stream.send_all(PREFIX.pack(len(junk), 0) + junk)
            bad = Message.request(C.OST_GETATTR, 999, {"oid": "five"})  # type-confused
            r = await a.endpoint.call(bad.opc, bad.body, timeout=5)
            assert r.status == errno.EINVAL
            with trio.fail_after(5):
                await granted.wait()
            assert server.stats["misbehaviour_evictions"] == 1
            assert server.stats["violation.malformed"] == 2
            assert server.stats["violation.bad_field"] == 1
            assert "client-a" not in server.exports
            assert "client-b" in server.exports and "client-c" in server.exports
            r = await c.call(C.OST_GETATTR, {"oid": 5})
            assert r.body["size"] == 10
            # A's next connect is told it was evicted, as after a callback timeout
            again = await _session(nursery, nid, "client-a")
            assert again.server["evicted"] is True
            server.stop()

    _run(main)


def test_a_connection_that_never_connects_is_not_evicted_for_junk(tmp_path: Path) -> None:
    """Without an export there is nothing to evict: junk gets EPROTO and is counted."""
    async def main() -> None:
        server = OstServer("lim", 0, str(tmp_path / "ost"), evict_threshold=1)
        async with trio.open_nursery() as nursery:
            nid = Nid.parse(await nursery.start(server.run))
            stream = await connect_stream(nid.host, nid.port)
            junk = b"\xc1"
            await stream.send_all(PREFIX.pack(1, 0) + junk)
            good = await _session(nursery, nid)
            await good.call(C.OST_STATFS)
            while not server.stats.get("violation.malformed"):
                await trio.sleep(0.01)
            assert "misbehaviour_evictions" not in server.stats
            await stream.aclose()
            server.stop()

    _run(main)
