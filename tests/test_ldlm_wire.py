"""The lock service over the wire: LDLM_ENQUEUE/CANCEL served by in-process OST and
MDT servers, blocking and completion ASTs sent to Sessions acting as clients,
callback timeouts, eviction, prolonging by I/O, release on disconnect."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from wire_helpers import MDT_NAME, OST_NAME, mdt_server, ok, ost_server, raw_call, run, serving

from mlustre.protocol import constants as C
from mlustre.protocol.errors import ConnectionLost
from mlustre.protocol.ldlm import FL_NO_EXPANSION, OBJECT_EOF, IBits, LockType, Mode
from mlustre.protocol.message import Message
from mlustre.protocol.nid import Nid
from mlustre.protocol.rpc import Endpoint
from mlustre.protocol.session import Session
from mlustre.servers.target import TargetServer

RES = [7, 0, 0, 0]
EXT = int(LockType.EXTENT)
IBITS = int(LockType.IBITS)

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


@pytest.fixture(autouse=True)
def _quiet_server_logs() -> Any:
    logger = logging.getLogger("mlustre")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(old)


class Client:
    """A Session with an AST handler that records BASTs and CP ASTs (in `events`, in
    arrival order) and, if `auto_cancel`, answers a BAST by cancelling the lock."""

    def __init__(self, name: str, events: list[tuple[str, str, int]] | None = None, *,
                 auto_cancel: bool = True) -> None:
        self.name = name
        self.uuid = f"client-{name}"
        self.auto_cancel = auto_cancel
        self.events = events if events is not None else []
        self.basts: list[dict[str, Any]] = []
        self.cps: list[dict[str, Any]] = []
        self.session: Session | None = None
        self.nursery: trio.Nursery | None = None
        self._next = 1

    async def connect(self, nursery: trio.Nursery, nid: Nid, kind: str = "ost") -> dict:
        self.nursery = nursery
        target, opc = (OST_NAME, C.OST_CONNECT) if kind == "ost" else (MDT_NAME, C.MDS_CONNECT)
        self.session = await Session.open(nursery, [nid], target=target, connect_opc=opc,
                                          client_uuid=self.uuid, handler=self.handler,
                                          timeout=5)
        return self.session.server

    async def handler(self, ep: Endpoint, msg: Message) -> Message:
        if msg.opc == C.LDLM_BL_CALLBACK:
            self.basts.append(msg.body)
            self.events.append(("bast", self.name, msg.body["remote"]))
            if self.auto_cancel:
                assert self.nursery is not None
                self.nursery.start_soon(self.cancel, [msg.body["handle"]])
            return msg.reply({})
        if msg.opc == C.LDLM_CP_CALLBACK:
            self.cps.append(msg.body)
            self.events.append(("cp", self.name, msg.body["remote"]))
            return msg.reply({})
        return msg.reply(status=errno.EOPNOTSUPP)

    async def enqueue(self, type_: int, mode: Mode, policy: Any, *, res: list[int] = RES,
                      flags: int = 0) -> dict[str, Any]:
        """Enqueue with a fresh client handle; the reply body plus that handle as 'remote'."""
        assert self.session is not None
        handle, self._next = self._next, self._next + 1
        reply = await ok(self.session, C.LDLM_ENQUEUE, {
            "res": res, "type": type_, "mode": int(mode), "policy": policy, "handle": handle,
            "flags": flags})
        return {**reply.body, "remote": handle}

    async def cancel(self, handles: list[int]) -> None:
        assert self.session is not None
        try:
            await ok(self.session, C.LDLM_CANCEL, {"handles": handles})
        except ConnectionLost:
            pass


async def until(pred: Callable[[], bool]) -> None:
    while not pred():
        await trio.sleep(0.01)


def cp_for(client: Client, lock: dict[str, Any]) -> dict[str, Any] | None:
    return next((cp for cp in client.cps if cp["remote"] == lock["remote"]), None)


async def clients(nursery: trio.Nursery, nid: Nid, *names: str, kind: str = "ost",
                  **kw: Any) -> list[Client]:
    events: list[tuple[str, str, int]] = []
    out = []
    for name in names:
        c = Client(name, events, **kw)
        await c.connect(nursery, nid, kind)
        out.append(c)
    return out


def test_grant_in_reply_with_extent_expansion(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            a, b = await clients(nursery, nid, "a", "b")
            la = await a.enqueue(EXT, Mode.PW, [0, 4095], flags=FL_NO_EXPANSION)
            assert la["granted"] and la["policy"] == [0, 4095] and la["mode"] == Mode.PW
            lb = await b.enqueue(EXT, Mode.PW, [8192, 12287])
            assert lb["granted"]
            assert lb["policy"] == [4096, OBJECT_EOF]  # grown around a's lock
            lc = await b.enqueue(EXT, Mode.PR, [0, 0], res=[8, 0, 0, 0])
            assert lc["granted"] and lc["policy"] == [0, OBJECT_EOF]
            assert la["handle"] != lb["handle"]
            assert not a.basts and not b.basts
            assert server.stats["ldlm_granted"] == 3 and server.stats["ldlm_waiting"] == 0
            # A resent enqueue (same client handle) gets the same lock back.
            assert b.session is not None
            again = await ok(b.session, C.LDLM_ENQUEUE, {
                "res": RES, "type": EXT, "mode": int(Mode.PW), "policy": [8192, 12287],
                "handle": lb["remote"], "flags": 0})
            assert again.body["handle"] == lb["handle"]
            params = server.params().get("ldlm.namespaces.*.lock_count")
            assert params == [[f"ldlm.namespaces.{OST_NAME}.lock_count", 3]]

    run(main)


def test_conflict_bast_cancel_then_cp(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            a, b = await clients(nursery, nid, "a", "b")
            la = await a.enqueue(EXT, Mode.PW, [0, 4095])
            assert la["granted"] and la["policy"] == [0, OBJECT_EOF]
            lb = await b.enqueue(EXT, Mode.PR, [0, 4095])
            assert not lb["granted"]
            await until(lambda: cp_for(b, lb) is not None)
            assert a.basts == [{"handle": la["handle"], "remote": la["remote"], "flags": 0}]
            cp = cp_for(b, lb)
            assert cp == {"handle": lb["handle"], "remote": lb["remote"], "mode": int(Mode.PR),
                          "policy": [0, OBJECT_EOF]}
            assert server.stats["ldlm_basts"] == 1 and server.stats["ldlm_cps"] == 1
            assert server.stats["ldlm_granted"] == 1 and server.stats["ldlm_waiting"] == 0
            assert server.stats.get("evictions", 0) == 0

    run(main)


def test_waiters_are_granted_in_fifo_order(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            a, b, c = await clients(nursery, nid, "a", "b", "c", kind="mdt", auto_cancel=False)
            la = await a.enqueue(IBITS, Mode.PR, int(IBits.UPDATE))
            assert la["granted"] and la["policy"] == int(IBits.UPDATE)
            lb = await b.enqueue(IBITS, Mode.EX, int(IBits.UPDATE | IBits.LOOKUP))
            assert not lb["granted"]
            # Compatible with a's PR, but queued behind b's earlier EX.
            lc = await c.enqueue(IBITS, Mode.PR, int(IBits.UPDATE))
            assert not lc["granted"]
            await until(lambda: len(a.basts) == 1)
            await a.cancel([la["handle"]])
            await until(lambda: cp_for(b, lb) is not None)
            await until(lambda: len(b.basts) == 1)  # c waits on b now
            assert cp_for(c, lc) is None
            await b.cancel([lb["handle"]])
            await until(lambda: cp_for(c, lc) is not None)
            assert [e for e in a.events if e[0] == "cp"] == [
                ("cp", "b", lb["remote"]), ("cp", "c", lc["remote"])]

    run(main)


def test_holder_that_never_cancels_is_evicted(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path, ldlm_timeout=0.5)
        async with serving(server) as (nid, nursery):
            a, b = await clients(nursery, nid, "a", "b", auto_cancel=False)
            la = await a.enqueue(EXT, Mode.PW, [0, 4095])
            lb = await b.enqueue(EXT, Mode.PW, [0, 4095])
            assert la["granted"] and not lb["granted"]
            start = trio.current_time()
            await until(lambda: cp_for(b, lb) is not None)
            assert trio.current_time() - start >= 0.4
            assert server.stats["evictions"] == 1
            assert a.uuid not in server.exports and b.uuid in server.exports
            assert a.session is not None
            with trio.fail_after(5):
                await a.session.endpoint.wait_closed()
            with pytest.raises(ConnectionLost):
                await a.session.call(C.OST_STATFS, {})
            # Its reconnect is told it was evicted, once.
            assert (await a.connect(nursery, nid))["evicted"] is True
            assert (await a.connect(nursery, nid))["evicted"] is False
            assert server.ldlm.namespace.locks_of(a.uuid) == []

    run(main)


def test_holder_writing_under_the_lock_is_prolonged(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path, ldlm_timeout=0.5)
        async with serving(server) as (nid, nursery):
            a, b = await clients(nursery, nid, "a", "b", auto_cancel=False)
            assert a.session is not None
            la = await a.enqueue(EXT, Mode.PW, [0, 4095])
            lb = await b.enqueue(EXT, Mode.PR, [0, 4095])
            await until(lambda: len(a.basts) == 1)
            end = trio.current_time() + 1.5  # three callback timeouts
            while trio.current_time() < end:  # flushing dirty pages under the lock
                await ok(a.session, C.OST_WRITE, {"oid": RES[0], "offset": 0}, bulk=b"x" * 100)
                await trio.sleep(0.1)
            assert server.stats.get("evictions", 0) == 0
            assert server.stats["ldlm_prolongs"] > 0
            assert cp_for(b, lb) is None
            await a.cancel([la["handle"]])
            await until(lambda: cp_for(b, lb) is not None)
            assert server.stats.get("evictions", 0) == 0

    run(main)


def test_cancel_of_unknown_or_foreign_handles_is_harmless(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            a, b = await clients(nursery, nid, "a", "b")
            lb = await b.enqueue(EXT, Mode.PW, [0, 4095])
            await a.cancel([123456789, lb["handle"], 0])
            assert server.stats["ldlm_cancel_unknown"] == 3
            assert server.ldlm.namespace.lock(lb["handle"]) is not None
            await b.cancel([lb["handle"], lb["handle"]])  # the second one is unknown now
            assert server.stats["ldlm_cancel_unknown"] == 4
            assert len(server.ldlm.namespace) == 0
            assert a.session is not None
            for body in ({}, {"handles": 5}, {"handles": ["x"]}, {"handles": [1] * 513},
                         {"handles": [True]}):
                r = await raw_call(a.session, C.LDLM_CANCEL, body)
                assert r.status == errno.EINVAL, body

    run(main)


BAD_OST_ENQUEUES: list[dict[str, Any]] = [
    {},
    {"res": [7, 0, 0], "type": EXT, "mode": 2, "policy": [0, 1], "handle": 1},
    {"res": "7", "type": EXT, "mode": 2, "policy": [0, 1], "handle": 1},
    {"res": [7, 0, 0, -1], "type": EXT, "mode": 2, "policy": [0, 1], "handle": 1},
    {"res": [7, 0, 0, True], "type": EXT, "mode": 2, "policy": [0, 1], "handle": 1},
    {"res": RES, "type": IBITS, "mode": 2, "policy": 1, "handle": 1},  # not an OST's type
    {"res": RES, "type": int(LockType.PLAIN), "mode": 2, "policy": None, "handle": 1},
    {"res": RES, "type": "extent", "mode": 2, "policy": [0, 1], "handle": 1},
    {"res": RES, "type": EXT, "mode": 3, "policy": [0, 1], "handle": 1},
    {"res": RES, "type": EXT, "mode": 0, "policy": [0, 1], "handle": 1},
    {"res": RES, "type": EXT, "mode": -2, "policy": [0, 1], "handle": 1},
    {"res": RES, "type": EXT, "mode": 64, "policy": [0, 1], "handle": 1},
    {"res": RES, "type": EXT, "mode": "PW", "policy": [0, 1], "handle": 1},
    {"res": RES, "type": EXT, "mode": 2, "policy": [5, 1], "handle": 1},
    {"res": RES, "type": EXT, "mode": 2, "policy": [0], "handle": 1},
    {"res": RES, "type": EXT, "mode": 2, "policy": None, "handle": 1},
    {"res": RES, "type": EXT, "mode": 2, "policy": 3, "handle": 1},
    {"res": RES, "type": EXT, "mode": 2, "handle": 1},
    {"res": RES, "type": EXT, "mode": 2, "policy": [0, 1]},
    {"res": RES, "type": EXT, "mode": 2, "policy": [0, 1], "handle": -1},
    {"res": RES, "type": EXT, "mode": 2, "policy": [0, 1], "handle": 1, "flags": -1},
    {"res": RES, "type": EXT, "mode": 2, "policy": [0, 1], "handle": 1, "flags": "0"},
]

BAD_MDT_ENQUEUES: list[dict[str, Any]] = [
    {"res": RES, "type": EXT, "mode": 2, "policy": [0, 1], "handle": 1},  # not an MDT's
    {"res": RES, "type": IBITS, "mode": 2, "policy": 0, "handle": 1},
    {"res": RES, "type": IBITS, "mode": 2, "policy": 0x1000, "handle": 1},
    {"res": RES, "type": IBITS, "mode": 2, "policy": True, "handle": 1},
    {"res": RES, "type": IBITS, "mode": 2, "policy": [0, 1], "handle": 1},
    {"res": RES, "type": IBITS, "mode": 2, "policy": None, "handle": 1},
]


@pytest.mark.parametrize("kind", ["ost", "mdt"])
def test_malformed_enqueues_are_einval(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        server: TargetServer = ost_server(tmp_path) if kind == "ost" else mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            (a,) = await clients(nursery, nid, "a", kind=kind)
            assert a.session is not None
            for body in BAD_OST_ENQUEUES if kind == "ost" else BAD_MDT_ENQUEUES:
                r = await raw_call(a.session, C.LDLM_ENQUEUE, body)
                assert r.status == errno.EINVAL, (body, r.status, r.body)
            assert len(server.ldlm.namespace) == 0
            good = (EXT, [0, 1]) if kind == "ost" else (IBITS, int(IBits.LOOKUP))
            assert (await a.enqueue(good[0], Mode.PR, good[1]))["granted"]

    run(main)


def test_mgs_serves_no_locks(tmp_path: Path) -> None:
    from mlustre.servers.mgs import MgsServer

    async def main() -> None:
        server = MgsServer("wire", str(tmp_path))
        async with serving(server) as (nid, nursery):
            s = await Session.open(nursery, [nid], target="wire-MGS", connect_opc=C.MGS_CONNECT,
                                   timeout=5)
            r = await raw_call(s, C.LDLM_ENQUEUE, {"res": RES, "type": 10, "mode": 1,
                                                   "policy": None, "handle": 1})
            assert r.status == errno.EOPNOTSUPP

    run(main)


def test_disconnect_releases_locks_without_eviction(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            a, b = await clients(nursery, nid, "a", "b", kind="mdt", auto_cancel=False)
            assert a.session is not None
            await a.enqueue(IBITS, Mode.EX, int(IBits.UPDATE))
            await a.enqueue(IBITS, Mode.PR, int(IBits.LOOKUP), res=[9, 0, 0, 0])
            lb = await b.enqueue(IBITS, Mode.PR, int(IBits.UPDATE))
            assert not lb["granted"]
            await until(lambda: len(a.basts) == 1)
            await ok(a.session, C.MDS_DISCONNECT)
            await until(lambda: cp_for(b, lb) is not None)
            assert server.ldlm.namespace.locks_of(a.uuid) == []
            assert server.stats.get("evictions", 0) == 0
            assert (await a.connect(nursery, nid, "mdt"))["evicted"] is False

    run(main)


def test_lost_connection_keeps_locks_until_a_bast_fails(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            a, b = await clients(nursery, nid, "a", "b")
            assert a.session is not None
            la = await a.enqueue(EXT, Mode.PW, [0, 4095])
            await a.session.close()
            await until(lambda: a.uuid not in server.exports)
            await trio.sleep(0.1)
            assert server.ldlm.namespace.lock(la["handle"]) is not None  # may reconnect
            lb = await b.enqueue(EXT, Mode.PW, [0, 4095])
            assert not lb["granted"]
            await until(lambda: cp_for(b, lb) is not None)  # the BAST cannot be sent
            assert server.stats["evictions"] == 1
            assert (await a.connect(nursery, nid))["evicted"] is True

    run(main)
