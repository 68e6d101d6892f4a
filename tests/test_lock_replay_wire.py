"""Recovery of a restarted OST/MDT beyond update replay: lock replay (REPLAY_LOCKS),
written-but-uncommitted data replayed after an OST replay barrier, and the import's
pinger. Real servers over TCP, the client's own import, lock client and OSC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from wire_helpers import MDT_NAME, OST_NAME, mdt_server, ost_server
from wire_helpers import run as trio_run

from mlustre.fuse_client.imports import Import, ImportState
from mlustre.fuse_client.ldlm import LockClient
from mlustre.fuse_client.ldlm_client import ClientLock, LockState
from mlustre.fuse_client.osc import Osc
from mlustre.fuse_client.target_link import TargetHooks, TargetLink
from mlustre.protocol import constants as C
from mlustre.protocol.ldlm import Extent, LockType, Mode, ResId
from mlustre.protocol.message import Message
from mlustre.protocol.nid import Nid
from mlustre.protocol.rpc import Endpoint
from mlustre.servers.ost import OstServer

LIMIT = 40
FLAGS = C.OBD_CONNECT_TRANSNO  # as a mount's imports: known to the target, waited for

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


run = partial(trio_run, limit=LIMIT)


async def until(pred: Callable[[], bool]) -> None:
    while not pred():
        await trio.sleep(0.01)


@asynccontextmanager
async def ost_client(nursery: trio.Nursery, nid: Nid, name: str,
                     **kw: Any) -> AsyncIterator[tuple[LockClient, Osc]]:
    link = TargetLink(OST_NAME, "ost", [nid], client_uuid=f"client-{name}", barrier=False,
                      connect_timeout=2.0, request_timeout=10.0, flags=FLAGS, **kw)
    lc, imp, osc = link.locks, link.imp, link.osc
    assert osc is not None
    await nursery.start(lc.run)
    await imp.connect(nursery)
    try:
        yield lc, osc
    finally:
        await imp.close(C.OST_DISCONNECT)
        lc.close()


async def restart(nursery: trio.Nursery, old: OstServer, path: Path, port: int,
                  **kw: Any) -> OstServer:
    old.stop()
    await until(lambda: not old.storage.claimed)
    new = ost_server(path, port=port, recovery_window=kw.pop("recovery_window", 5.0), **kw)
    await nursery.start(new.run)
    return new


def test_granted_locks_are_replayed_and_still_called_back(tmp_path: Path) -> None:
    """A's PW lock survives an OST restart (same local lock, new server handle; the
    import goes REPLAY -> REPLAY_LOCKS -> FULL); the new instance knows it: B's
    conflicting enqueue calls A back through it and is granted once A cancels."""
    async def main() -> None:
        first = ost_server(tmp_path, recovery_window=5.0)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            async with ost_client(outer, nid, "a") as (a, _), \
                    ost_client(outer, nid, "b") as (b, _):
                res = ResId(7, 0, 0, 0)
                held = await a.enqueue(res, LockType.EXTENT, Mode.PW, Extent(0, 4095))
                a.release(held)  # unused, in the LRU: kept across the restart
                old_remote = held.remote_handle
                await trio.sleep(0.5)  # (the OST writes down its clients)
                second = await restart(outer, first, tmp_path, nid.port)
                assert a.imp is not None
                await until(lambda: a.stats["replayed"] == 1)
                await until(lambda: a.imp is not None and a.imp.state is ImportState.FULL)
                states = [s for _, s in a.imp.history]
                assert states[-3:] == ["REPLAY", "REPLAY_LOCKS", "FULL"], states
                assert held.state is LockState.GRANTED and held.remote_handle != old_remote
                assert a.stats["resets"] == 0
                owners = second.ldlm.namespace.locks_of("client-a")
                assert [(lk.res, lk.mode) for lk in owners] == [(res, Mode.PW)]
                assert second.stats["ldlm_replays"] == 1
                with trio.fail_after(10):
                    got = await b.enqueue(res, LockType.EXTENT, Mode.PW, Extent(0, 4095))
                assert a.stats["basts"] == 1 and held.state is LockState.CANCELLED
                b.release(got)
                second.stop()
    run(main)


def test_lock_replay_outside_recovery_is_refused_and_the_lock_dropped(tmp_path: Path) -> None:
    """A client the restarted OST did not wait for (not known: it never asked for
    transnos) finds recovery over: its lock replay is refused (ESTALE) and it drops
    the lock and what it protected, as before lock replay existed."""
    async def main() -> None:
        first = ost_server(tmp_path, recovery_window=5.0)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            resets: list[list[ClientLock]] = []

            async def on_reset(locks: list[ClientLock]) -> None:
                resets.append(locks)

            link = TargetLink(OST_NAME, "ost", [nid], client_uuid="client-t", barrier=False,
                              hooks=TargetHooks(on_reset=on_reset), connect_timeout=2.0)
            lc, imp = link.locks, link.imp
            await outer.start(lc.run)
            await imp.connect(outer)
            held = await lc.enqueue(ResId(9, 0, 0, 0), LockType.EXTENT, Mode.PR,
                                    Extent(0, 10))
            lc.release(held)
            second = await restart(outer, first, tmp_path, nid.port)
            await until(lambda: bool(resets))
            assert resets == [[held]] and held.state is LockState.CANCELLED
            assert second.stats["lock_replays_refused"] == 1
            await imp.close(C.OST_DISCONNECT)
            lc.close()
            second.stop()
    run(main)


def test_unstable_writes_are_replayed_in_transno_order_after_an_ost_replay_barrier(
        tmp_path: Path) -> None:
    """A and B write the same range, A first, then B, after `replay_barrier=1`; the OST
    restarts and undoes both (as a crash of its disk would). Both clients replay what
    the OST had not committed, in global transno order: B's data is what remains.
    Data committed before the barrier is untouched, and a write without the barrier is
    freed from the client's memory once committed."""
    async def main() -> None:
        first = ost_server(tmp_path, recovery_window=5.0)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            async with ost_client(outer, nid, "a") as (_, a), \
                    ost_client(outer, nid, "b") as (_, b):
                await a.write(1, 0, b"committed" * 100)
                await a.sync()
                assert a.unstable == {}  # freed at the commit
                await trio.sleep(0.5)  # (the OST writes down its clients)
                first.params().set(f"obdfilter.{OST_NAME}.replay_barrier", "1")
                await a.write(2, 0, b"A" * 5000)
                await a.punch(1, 10)
                await b.write(2, 1000, b"B" * 2000)
                await a.sync()  # nothing is committed under the barrier
                assert len(a.unstable) == 2 and len(b.unstable) == 1
                second = await restart(outer, first, tmp_path, nid.port)
                assert second.stats["replay_barrier_undone"] == 3
                await until(lambda: a.replayed == 2 and b.replayed == 1)
                data = await a.read(2, 0, 5000)
                assert data == b"A" * 1000 + b"B" * 2000 + b"A" * 2000
                assert await a.read(1, 0, 100) == (b"committed" * 2)[:10]  # (the punch, replayed)
                await b.sync()  # (a commit: every client's kept data is covered)
                await a.sync()
                assert a.unstable == {} and b.unstable == {}
                status = dict(second.params().get(f"obdfilter.{OST_NAME}.recovery_status"))
                lines = status[f"obdfilter.{OST_NAME}.recovery_status"]
                assert lines[:3] == ["status: COMPLETE", "completed_clients: 2/2",
                                     "replayed_requests: 3"], lines
                second.stop()
    run(main)


def test_unstable_data_is_bounded_by_syncs(tmp_path: Path) -> None:
    """Past unstable_limit the OSC has the OST commit, so a client never keeps more
    than about the limit for replay."""
    async def main() -> None:
        server = ost_server(tmp_path)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(server.run))
            async with ost_client(outer, nid, "a") as (_, osc):
                osc.unstable_limit = 256 << 10
                for i in range(64):
                    await osc.write(3, i * 65536, bytes([i]) * 65536)
                    assert osc.unstable_bytes <= osc.unstable_limit + 65536
                assert osc.unstable_syncs >= 10
            server.stop()
    run(main)


def test_the_pinger_notices_a_hung_server(tmp_path: Path) -> None:
    """An idle import pings its target. A target that answers the connect but then
    hangs (it never answers a ping) is noticed by the pinger: the import drops the
    connection and reconnects, instead of waiting for a request to time out."""
    async def main() -> None:
        async with trio.open_nursery() as outer:
            server = ost_server(tmp_path)
            nid = Nid.parse(await outer.start(server.run))
            imp = Import(OST_NAME, [nid], connect_opc=C.OST_CONNECT,
                         client_uuid="client-p", connect_timeout=1.0, request_timeout=1.0,
                         ping_interval=0.3)
            await imp.connect(outer)
            await until(lambda: imp.pings >= 2)  # idle: pinged, and answered
            assert imp.state is ImportState.FULL and imp.conn_cnt == 1
            await imp.close(C.OST_DISCONNECT)
            server.stop()

            async def hung(endpoint: Endpoint, msg: Message) -> Message | None:
                if msg.opc == C.OST_CONNECT:
                    return msg.reply({"instance": 1, "release": "2.0"})
                await trio.sleep_forever()  # a hung server: no reply, connection open
                return None

            async def serve(stream: trio.SocketStream) -> None:
                await Endpoint(stream, handler=hung, name="hung").serve()

            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            hung_nid = Nid("127.0.0.1", listeners[0].socket.getsockname()[1])
            outer.start_soon(trio.serve_listeners, serve, listeners)
            frozen = Import(OST_NAME, [hung_nid], connect_opc=C.OST_CONNECT,
                            client_uuid="client-q", connect_timeout=1.0, request_timeout=1.0,
                            ping_interval=0.3)
            await frozen.connect(outer)
            with trio.fail_after(5):
                await until(lambda: frozen.conn_cnt >= 2)  # noticed, and reconnected
            assert "DISCONN" in [s for _, s in frozen.history]
            await frozen.close()
            outer.cancel_scope.cancel()
    run(main)


def test_mdt_locks_are_replayed_too(tmp_path: Path) -> None:
    """An IBITS lock on the MDT survives its restart the same way."""
    async def main() -> None:
        first = mdt_server(tmp_path, recovery_window=5.0)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            link = TargetLink(MDT_NAME, "mdt", [nid], client_uuid="client-m", barrier=False,
                              connect_timeout=2.0, flags=FLAGS)
            lc, imp = link.locks, link.imp
            await outer.start(lc.run)
            await imp.connect(outer)
            held = await lc.enqueue(ResId(1, 0, 0, 0), LockType.IBITS, Mode.PR, 0x3)
            await trio.sleep(0.5)
            first.stop()
            await until(lambda: not first.storage.claimed)
            second = mdt_server(tmp_path, port=nid.port, recovery_window=5.0)
            await outer.start(second.run)
            await until(lambda: lc.stats["replayed"] == 1 and imp.state is ImportState.FULL)
            assert held.state is LockState.GRANTED
            assert [lk.mode for lk in second.ldlm.namespace.locks_of("client-m")] == [Mode.PR]
            lc.release(held)
            await imp.close(C.MDS_DISCONNECT)
            lc.close()
            second.stop()
    run(main)


def test_the_ping_evictor_drops_silent_and_vanished_clients(tmp_path: Path) -> None:
    """With ping_evict_timeout 1 s: a client that pings stays; one connected but silent
    (no pinger: a hung process) and one whose connection broke for good (a dead one)
    are evicted and their locks released; the dead one is no longer waited for at the
    next restart (recovery.json). (The hung one, alive here, reconnects and learns it
    was evicted.)"""
    async def main() -> None:
        server = ost_server(tmp_path, recovery_window=5.0)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(server.run))
            server.params().set(f"obdfilter.{OST_NAME}.ping_evict_timeout", "1")
            async with ost_client(outer, nid, "alive", ping_interval=0.2) as (alive, _), \
                    ost_client(outer, nid, "hung", ping_interval=0) as (hung, _):
                dead = Import(OST_NAME, [nid], connect_opc=C.OST_CONNECT,
                              client_uuid="client-dead", flags=FLAGS, connect_timeout=1.0)
                await dead.connect(outer)
                held = await hung.enqueue(ResId(5, 0, 0, 0), LockType.EXTENT, Mode.PW,
                                          Extent(0, 99))
                hung.release(held)
                assert dead.endpoint is not None
                dead.nids = [Nid.parse("127.0.0.1:1")]  # (it never comes back)
                await dead.endpoint.aclose("the client dies")
                with trio.fail_after(10):
                    await until(lambda: server.stats.get("ping_evictions", 0) == 2)
                assert server.ldlm.namespace.locks_of("client-hung") == []
                with trio.fail_after(10):  # (told at its reconnect)
                    await until(lambda: held.state is LockState.CANCELLED)
                await trio.sleep(0.5)  # (recovery.json is written within 0.2 s)
                known = server.storage.read_json("recovery.json", [])
                assert "client-dead" not in known and "client-alive" in known, known
                await dead.close()
            try:
                server.params().set(f"obdfilter.{OST_NAME}.ping_evict_timeout", "0")
            except Exception as e:
                assert "0.1 to 86400" in str(e)
            else:
                raise AssertionError("a timeout of 0 was accepted")
            server.stop()
    run(main)
