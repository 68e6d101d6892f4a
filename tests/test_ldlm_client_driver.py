"""The client's lock driver (fuse_client/ldlm.py) against in-process OST servers: two
library clients (an Import and a LockClient each) taking conflicting locks, blocking
callbacks with flush hooks, reference-delayed cancels, matching, the LRU, eviction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from wire_helpers import OST_NAME, ost_server, serving
from wire_helpers import run as trio_run

from mlustre.fuse_client.ldlm import LockClient
from mlustre.fuse_client.ldlm_client import ClientLock, LockState
from mlustre.fuse_client.target_link import TargetHooks, TargetLink
from mlustre.protocol import constants as C
from mlustre.protocol.ldlm import OBJECT_EOF, Extent, LockType, Mode, ResId
from mlustre.protocol.nid import Nid

RES = ResId(7)
EXT = LockType.EXTENT
LIMIT = 15.0

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


run = partial(trio_run, limit=LIMIT)


@asynccontextmanager
async def lock_client(nursery: trio.Nursery, nid: Nid, name: str,
                      **kw: Any) -> AsyncIterator[LockClient]:
    link = TargetLink(OST_NAME, "ost", [nid], client_uuid=f"client-{name}",
                      hooks=TargetHooks(**kw), barrier=False, connect_timeout=2.0,
                      request_timeout=5.0)
    lc, imp = link.locks, link.imp
    await nursery.start(lc.run)
    await imp.connect(nursery)
    try:
        yield lc
    finally:
        await imp.close()
        lc.close()


async def until(pred: Callable[[], bool]) -> None:
    while not pred():
        await trio.sleep(0.01)


class Flushes:
    """An on_blocking hook that records the locks it was called for."""

    def __init__(self) -> None:
        self.locks: list[ClientLock] = []
        self.release = trio.Event()
        self.hang = False

    async def __call__(self, lock: ClientLock) -> None:
        self.locks.append(lock)
        if self.hang:
            await self.release.wait()


def test_conflict_calls_back_flushes_cancels_and_grants(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            fa = Flushes()
            async with lock_client(nursery, nid, "a", on_blocking=fa) as a, \
                    lock_client(nursery, nid, "b") as b:
                la = await a.enqueue(RES, EXT, Mode.PW, Extent(0, 4095))
                assert la.state is LockState.GRANTED and la.writers == 1
                assert la.policy == Extent(0, OBJECT_EOF)  # expanded by the server
                a.release(la)
                assert a.ns.lru_count == 1
                lb = await b.enqueue(RES, EXT, Mode.PR, Extent(0, 4095))
                assert lb.state is LockState.GRANTED and lb.readers == 1
                assert b.stats["waits"] == 1 and b.stats["cps"] == 1
                assert fa.locks == [la]
                await until(lambda: a.ns.lock_count == 0)
                assert la.state is LockState.CANCELLED
                assert a.stats["basts"] == 1 and a.stats["cancel_rpcs"] == 1
                assert server.stats["ldlm_cancels"] >= 1
                assert server.stats.get("evictions", 0) == 0
                b.release(lb)

    run(main)


def test_a_reference_delays_the_cancel_until_release(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            fa = Flushes()
            async with lock_client(nursery, nid, "a", on_blocking=fa) as a, \
                    lock_client(nursery, nid, "b") as b:
                la = await a.enqueue(RES, EXT, Mode.PW, Extent(0, 4095))
                got: list[ClientLock] = []

                async def take_b() -> None:
                    got.append(await b.enqueue(RES, EXT, Mode.PW, Extent(0, 4095)))

                nursery.start_soon(take_b)
                await until(lambda: a.stats["basts"] == 1)
                await trio.sleep(0.2)
                assert la.state is LockState.CBPENDING and not fa.locks and not got
                # A called-back lock is not matched: a new enqueue waits behind b.
                assert a.ns.match(RES, EXT, Mode.PW, Extent(0, 10), trio.current_time()) is None
                a.release(la)
                await until(lambda: bool(got))
                assert fa.locks == [la] and la.state is LockState.CANCELLED
                assert got[0].state is LockState.GRANTED
                b.release(got[0])

    run(main)


def test_match_reuses_a_held_lock(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            async with lock_client(nursery, nid, "a") as a:
                l1 = await a.enqueue(RES, EXT, Mode.PW, Extent(0, 4095))
                before = server.stats["ldlm_enqueues"]
                l2 = await a.enqueue(RES, EXT, Mode.PR, Extent(8192, 9000))  # PW covers PR
                assert l2 is l1 and l1.writers == 1 and l1.readers == 1
                a.release(l1, mode=Mode.PR)
                a.release(l1)
                l3 = await a.enqueue(RES, EXT, Mode.PW, Extent(100, 200))  # from the LRU
                assert l3 is l1 and a.ns.lru_count == 0
                assert server.stats["ldlm_enqueues"] == before
                assert a.stats == {**a.stats, "enqueue_rpcs": 1, "matches": 2}
                # Another resource needs its own enqueue.
                other = await a.enqueue(ResId(8), EXT, Mode.PR, Extent(0, 1))
                assert other is not l1 and server.stats["ldlm_enqueues"] == before + 1
                a.release(l3)
                a.release(other)

    run(main)


def test_lru_cancels_unused_locks_after_max_age(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            flushes = Flushes()
            async with lock_client(nursery, nid, "a", lru_max_age=0.3, lru_interval=0.1,
                                   on_blocking=flushes) as a:
                held = await a.enqueue(ResId(1), EXT, Mode.PR, Extent(0, 1))
                unused = [await a.enqueue(ResId(i), EXT, Mode.PR, Extent(0, 1))
                          for i in (2, 3, 4)]
                for lock in unused:
                    a.release(lock)
                assert a.ns.lru_count == 3 and server.stats["ldlm_granted"] == 4
                await until(lambda: a.ns.lock_count == 1)
                await trio.sleep(0.5)
                assert a.ns.all_locks() == [held]  # a lock in use is never in the LRU
                assert sorted(lk.res.a for lk in flushes.locks) == [2, 3, 4]
                assert server.stats["ldlm_granted"] == 1
                assert a.stats["cancel_rpcs"] <= 2  # batched
                a.release(held)
                await until(lambda: a.ns.lock_count == 0)
                assert server.stats["ldlm_granted"] == 0

    run(main)


def test_client_that_hangs_in_on_blocking_is_evicted_and_invalidated(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path, ldlm_timeout=0.5)
        async with serving(server) as (nid, nursery):
            fa = Flushes()
            fa.hang = True
            evicted: list[list[ClientLock]] = []

            async def on_evicted(locks: list[ClientLock]) -> None:
                evicted.append(locks)

            async with lock_client(nursery, nid, "a", on_blocking=fa,
                                   on_evicted=on_evicted) as a, \
                    lock_client(nursery, nid, "b") as b:
                la = await a.enqueue(RES, EXT, Mode.PW, Extent(0, 4095))
                other = await a.enqueue(ResId(9), EXT, Mode.PR, Extent(0, 1))
                a.release(la)
                lb = await b.enqueue(RES, EXT, Mode.PW, Extent(0, 4095))  # after the eviction
                assert lb.state is LockState.GRANTED
                assert server.stats["evictions"] == 1 and fa.locks == [la]
                await until(lambda: bool(evicted))  # a reconnected and was told
                assert a.stats["evictions"] == 1 and a.ns.lock_count == 0
                assert {lk.handle for lk in evicted[0]} == {la.handle, other.handle}
                assert other.state is LockState.CANCELLED
                a.release(other)  # a user of a dropped lock can still release it
                fa.release.set()  # the flush ends: nothing left to cancel
                await trio.sleep(0.1)
                # The namespace works again after the eviction.
                again = await a.enqueue(ResId(9), EXT, Mode.PR, Extent(0, 1))
                assert again.state is LockState.GRANTED
                a.release(again)
                b.release(lb)

    run(main)


def test_eviction_drops_a_lock_granted_past_a_waiter(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path, ldlm_timeout=0.5)
        async with serving(server) as (nid, nursery):
            fa = Flushes()
            fa.hang = True
            async with lock_client(nursery, nid, "a", on_blocking=fa) as a, \
                    lock_client(nursery, nid, "b") as b:
                la = await a.enqueue(RES, EXT, Mode.PW, Extent(0, 4095))
                a.release(la)
                got: list[ClientLock] = []

                async def b_wants() -> None:
                    got.append(await b.enqueue(RES, EXT, Mode.PW, Extent(0, 4095)))

                nursery.start_soon(b_wants)
                await until(lambda: bool(fa.locks))  # a hangs flushing la
                # b waits for a: a's new request is not queued behind b (a would wait
                # for itself), it is granted and called back at once.
                again = await a.enqueue(RES, EXT, Mode.PW, Extent(0, 4095))
                assert again.state in (LockState.GRANTED, LockState.CBPENDING)
                # a never gives la back: evicted (and told so when it reconnects)
                await until(lambda: bool(got) and a.stats["evictions"] == 1)
                assert server.stats["evictions"] == 1
                assert a.stats["evictions"] == 1 and a.ns.lock_count == 0
                assert again.state is LockState.CANCELLED  # its user sees it gone
                assert a.stats["enqueue_rpcs"] == 2 and a.stats["waits"] == 0
                a.release(again)
                b.release(got[0])
                fa.release.set()

    run(main)


def test_unknown_ast_opcode_is_eopnotsupp(tmp_path: Path) -> None:
    import errno

    from mlustre.protocol.message import REQUEST, Message

    async def main() -> None:
        lc = LockClient(OST_NAME)
        msg = Message(REQUEST, C.LDLM_CONVERT, 1, 0, 0, 0, 0, 0, {}, None)
        reply = await lc.handle_request(None, msg)  # type: ignore[arg-type]
        assert reply.status == errno.EOPNOTSUPP
        gl = Message(REQUEST, C.LDLM_GL_CALLBACK, 4, 0, 0, 0, 0, 0, {"handle": 77}, None)
        assert (await lc.handle_request(None, gl)).status == errno.ENOENT  # no such lock
        bad = Message(REQUEST, C.LDLM_CP_CALLBACK, 2, 0, 0, 0, 0, 0, {}, None)
        assert (await lc.handle_request(None, bad)).status == errno.EINVAL  # type: ignore
        bast = Message(REQUEST, C.LDLM_BL_CALLBACK, 3, 0, 0, 0, 0, 0,
                       {"handle": 5, "remote": 1, "flags": 0}, None)
        assert (await lc.handle_request(None, bast)).status == 0  # type: ignore[arg-type]

    run(main)
