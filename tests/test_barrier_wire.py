"""The SIR barrier over the wire, with library clients (Import + LockClient + Barrier)
and an OST or MDT in this process: freeze drains and holds updates until the thaw,
races (a BAST while a write is being flushed, a second freeze during a thaw, a client
disconnecting during the barrier, a stop racing a freeze), and the gate's rules."""

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

from mlustre.fuse_client.barrier import Barrier, Drainer, GateState, admits
from mlustre.fuse_client.target_link import TargetHooks, TargetLink
from mlustre.protocol import constants as C
from mlustre.protocol.nid import Nid
from mlustre.servers.barrier import BarrierState

LIMIT = 30

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


run = partial(trio_run, limit=LIMIT)


@asynccontextmanager
async def client(nursery: trio.Nursery, nid: Nid, name: str, kind: str = "ost",
                 *, update_lock: bool = True,
                 drain: Drainer | None = None) -> AsyncIterator[Barrier]:
    target = MDT_NAME if kind == "mdt" else OST_NAME
    link = TargetLink(target, kind, [nid], client_uuid=f"client-{name}",
                      hooks=TargetHooks(drain=drain), connect_timeout=2.0, request_timeout=5.0,
                      flags=C.OBD_CONNECT_UPDATE_LOCK if update_lock else 0)
    lc, imp, barrier = link.locks, link.imp, link.barrier
    assert barrier is not None
    await nursery.start(lc.run)
    await nursery.start(barrier.run)
    await imp.connect(nursery)
    try:
        yield barrier
    finally:
        await imp.close()
        lc.close()
        barrier.close()


async def until(pred: Callable[[], bool]) -> None:
    while not pred():
        await trio.sleep(0.01)


async def write(b: Barrier, data: bytes, *, flush: bool = False, oid: int = 7) -> None:
    await b.imp.call(C.OST_WRITE, {"oid": oid, "offset": 0}, bulk=data, flush=flush)


@asynccontextmanager
async def server_of(kind: str, path: Path, **kw: Any) -> AsyncIterator[tuple[Any, Nid,
                                                                              trio.Nursery]]:
    server = ost_server(path, **kw) if kind == "ost" else mdt_server(path, **kw)
    async with trio.open_nursery() as nursery:
        nid = Nid.parse(await nursery.start(server.run))
        try:
            yield server, nid, nursery
        finally:
            server.stop()
            nursery.cancel_scope.cancel()


def test_gate_rules() -> None:
    assert admits(GateState.OFF, flush=False) and admits(GateState.OPEN, flush=False)
    assert not admits(GateState.DRAINING, flush=False)
    assert admits(GateState.DRAINING, flush=True)  # write-back is what the drain waits for
    assert not admits(GateState.ENQUEUING, flush=True)
    assert C.is_update(C.OST_WRITE, {}) and not C.is_update(C.OST_READ, {})
    assert C.is_update(C.MDS_REINT, {"op": C.REINT_MKDIR})
    assert not C.is_update(C.MDS_REINT, {"op": C.REINT_OPEN, "flags": 0})
    assert C.is_update(C.MDS_REINT, {"op": C.REINT_OPEN, "flags": 0o1000})  # O_TRUNC


@pytest.mark.parametrize("kind", ["ost", "mdt"])
def test_freeze_drains_and_holds_updates_until_thaw(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        async with server_of(kind, tmp_path) as (server, nid, nursery), \
                client(nursery, nid, "a", kind) as a, client(nursery, nid, "b", kind) as b:
            await until(lambda: a.state is GateState.OPEN and b.state is GateState.OPEN)
            assert server.barrier.holders() == 2
            report = await server.barrier.freeze(30)
            assert report.clients == 2 and report.evicted == 0
            assert server.barrier.state is BarrierState.FROZEN
            await until(lambda: a.state is GateState.ENQUEUING
                        and b.state is GateState.ENQUEUING)
            assert a.stats["drains"] == 1 and server.barrier.holders() == 0
            done = trio.Event()

            async def update() -> None:
                if kind == "ost":
                    await write(a, b"after the freeze")
                else:
                    await a.imp.call(C.MDS_REINT, {"op": C.REINT_MKDIR, "cred": [0, 0, []],
                                                   "parent": 1, "name": b"d", "mode": 0o755})
                done.set()

            nursery.start_soon(update)
            await trio.sleep(0.3)
            assert not done.is_set() and a.stats["waiters"] == 1
            assert server.barrier.thaw()
            with trio.fail_after(5):
                await done.wait()
            await until(lambda: b.state is GateState.OPEN)
            assert a.imp.resent_updates == 0 and server.stats.get("resent_updates", 0) == 0

    run(main)


def test_a_bast_while_a_write_is_flushed_waits_for_it(tmp_path: Path) -> None:
    """The drain's own write-back passes the draining gate and the freeze waits for it
    (counted as flushed); an application write arriving meanwhile waits."""
    async def main() -> None:
        data = b"x" * (1 << 20)
        flushed = trio.Event()

        async def drain() -> int:
            await trio.sleep(0.2)  # a slow flush: the freeze must wait for it
            await write(a, data, flush=True)
            flushed.set()
            return 0

        async with server_of("ost", tmp_path) as (server, nid, nursery), \
                client(nursery, nid, "a", drain=drain) as a:
            await until(lambda: a.state is GateState.OPEN)
            app_done = trio.Event()

            async def app_write() -> None:
                await until(lambda: a.state is GateState.DRAINING)
                await write(a, b"app", oid=8)
                app_done.set()

            nursery.start_soon(app_write)
            report = await server.barrier.freeze(30)
            assert flushed.is_set() and not app_done.is_set()
            assert report.flushed_bytes == len(data) and report.flushed_updates == 1
            server.barrier.thaw()
            with trio.fail_after(5):
                await app_done.wait()

    run(main)


def test_second_freeze_during_a_thaw(tmp_path: Path) -> None:
    async def main() -> None:
        async with server_of("ost", tmp_path) as (server, nid, nursery), \
                client(nursery, nid, "a") as a:
            await until(lambda: a.state is GateState.OPEN)
            await server.barrier.freeze(30)
            ns, res = server.ldlm.namespace, server.barrier.res
            await until(lambda: len(ns.waiting_locks(res)) == 1)  # a's CR, asked again
            server.barrier.thaw()  # the client's CR enqueue is being granted ...
            report = await server.barrier.freeze(30)  # ... and called back at once
            assert server.barrier.freezes == 2 and report.evicted == 0
            await until(lambda: a.state is GateState.ENQUEUING)
            again = await server.barrier.freeze(30)  # frozen: renewing changes nothing
            assert again is report and server.barrier.freezes == 2
            server.barrier.thaw()
            await until(lambda: a.state is GateState.OPEN)
            await write(a, b"fine")
            assert a.stats["drains"] == 2

    run(main)


def test_a_client_disconnecting_during_the_barrier(tmp_path: Path) -> None:
    """A client that leaves while its drain runs gives its locks back by leaving:
    the freeze completes without waiting for the callback timeout or evicting."""
    async def main() -> None:
        async with server_of("ost", tmp_path, ldlm_timeout=20.0) as (server, nid, nursery):
            stuck = trio.Event()

            async def never(_: Any = None) -> int:
                stuck.set()
                await trio.sleep_forever()
                return 0

            async with client(nursery, nid, "stays") as stays:
                leaving_ctx = client(nursery, nid, "leaves", drain=never)
                leaves = await leaving_ctx.__aenter__()
                await until(lambda: leaves.state is GateState.OPEN
                            and stays.state is GateState.OPEN)
                freezing = trio.Event()
                result: list[Any] = []

                async def freeze() -> None:
                    freezing.set()
                    result.append(await server.barrier.freeze(30))

                nursery.start_soon(freeze)
                await stuck.wait()
                t0 = trio.current_time()
                await leaves.imp.close(C.OST_DISCONNECT)
                leaves.locks.close()
                await until(lambda: bool(result))
                assert trio.current_time() - t0 < 5
                assert result[0].clients == 2 and result[0].evicted == 0
                await until(lambda: stays.state is GateState.ENQUEUING)
                server.barrier.thaw()
                await until(lambda: stays.state is GateState.OPEN)

    run(main)


def test_a_stop_racing_a_freeze_then_the_next_instance_grants(tmp_path: Path) -> None:
    """The server goes away (as a crash would) while a client drains: the client ends
    up holding the CR lock of the next instance and its held update goes there."""
    async def main() -> None:
        first = ost_server(tmp_path)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            release = trio.Event()

            async def slow(_: Any = None) -> int:
                await release.wait()
                return 0

            async with client(outer, nid, "a", drain=slow) as a:
                await until(lambda: a.state is GateState.OPEN)
                freezing = trio.CancelScope()

                async def freeze() -> None:
                    with freezing:
                        await first.barrier.freeze(30)

                outer.start_soon(freeze)
                await until(lambda: a.state is GateState.DRAINING)
                done = trio.Event()

                async def update() -> None:
                    await write(a, b"held")
                    done.set()

                outer.start_soon(update)
                freezing.cancel()  # the freeze is abandoned: the server goes away at once
                first.barrier = None
                first._stopping.set()
                await until(lambda: not first.storage.claimed)
                release.set()
                second = ost_server(tmp_path, port=nid.port)
                await outer.start(second.run)
                with trio.fail_after(10):
                    await done.wait()
                assert a.state is GateState.OPEN and second.barrier.holders() == 1
                second.stop()

    run(main)


def test_without_update_lock_the_gate_stays_off(tmp_path: Path) -> None:
    async def main() -> None:
        async with server_of("ost", tmp_path, update_lock=False) as (server, nid, nursery), \
                client(nursery, nid, "a") as a, \
                client(nursery, nid, "b", update_lock=False) as b:
            await trio.sleep(0.1)
            assert a.state is GateState.OFF and b.state is GateState.OFF
            assert server.barrier.holders() == 0
            await write(a, b"no barrier")
        async with server_of("ost", tmp_path) as (server, nid, nursery), \
                client(nursery, nid, "b", update_lock=False) as b:
            report = await server.barrier.freeze(5)
            assert report.clients == 0  # b holds nothing: it is not waited for
            await write(b, b"goes through")  # (and recovers by resend)

    run(main)
