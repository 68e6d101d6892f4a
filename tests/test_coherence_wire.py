"""The lock side of coherent caching over the wire, with the client's own lock driver:
MDT intent locks granted with getattr replies, updates that call them back (and wait
off the connection's reader), early lock cancel, OST glimpses answered by the PW
holder, and a client's own locks never making it wait for itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from wire_helpers import MDT_NAME, OST_NAME, mdt_server, ost_server, serving
from wire_helpers import run as trio_run

from mlustre.fuse_client.data_locks import WHOLE
from mlustre.fuse_client.ldlm import LockClient
from mlustre.fuse_client.ldlm_client import ClientLock, LockState
from mlustre.fuse_client.md_cache import DIR_ATTR_BITS, FILE_BITS
from mlustre.fuse_client.mdc import Mdc
from mlustre.fuse_client.target_link import TargetHooks, TargetLink
from mlustre.protocol.ldlm import Extent, IBits, LockType, Mode, ResId, inode_res
from mlustre.protocol.nid import Nid

LIMIT = 30
ROOT = 1
CRED = [0, 0, []]

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


run = partial(trio_run, limit=LIMIT)


@asynccontextmanager
async def client(nursery: trio.Nursery, nid: Nid, name: str, kind: str,
                 **kw: Any) -> AsyncIterator[LockClient]:
    target = MDT_NAME if kind == "mdt" else OST_NAME
    link = TargetLink(target, kind, [nid], client_uuid=f"client-{name}",
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


class Calls:
    """An on_blocking hook recording the locks it was called for."""

    def __init__(self) -> None:
        self.locks: list[ClientLock] = []

    async def __call__(self, lock: ClientLock) -> None:
        self.locks.append(lock)


async def until(pred: Callable[[], bool]) -> None:
    while not pred():
        await trio.sleep(0.01)


async def intent_getattr(lc: LockClient, ino: int) -> tuple[ClientLock, dict[str, Any]]:
    """What llite's md_call does: a getattr carrying an intent lock."""
    assert lc.imp is not None
    lock = lc.intent_begin(inode_res(0), LockType.IBITS, Mode.PR, FILE_BITS)
    body = await Mdc(lc.imp).getattr(ino, intent={"handle": lock.handle, "bits": FILE_BITS,
                                                  "dir_bits": DIR_ATTR_BITS})
    bits = DIR_ATTR_BITS if body["attr"]["ino"] == ROOT else FILE_BITS
    lc.ns.rebind(lock.handle, inode_res(body["attr"]["ino"]), bits)
    lc.intent_end(lock, body.get("lock"))
    return lock, body


def test_getattr_intent_lock_is_called_back_by_an_update(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            calls = Calls()
            async with client(nursery, nid, "a", "mdt", on_blocking=calls) as a, \
                    client(nursery, nid, "b", "mdt") as b:
                lock, body = await intent_getattr(a, ROOT)
                assert "lock" in body and lock.state is LockState.GRANTED
                assert lock.policy == DIR_ATTR_BITS  # a directory's attribute lock
                assert b.imp is not None
                # b's mkdir changes the root: it waits for a to give its lock back.
                attr = (await Mdc(b.imp).mkdir(CRED, ROOT, b"d", 0o755))["attr"]
                assert attr["mode"] & 0o777 == 0o755
                assert calls.locks == [lock] and a.stats["basts"] == 1
                await until(lambda: a.ns.lock_count == 0)
                assert server.stats["reint_waits"] == 1
                # A getattr while nothing conflicts gets a lock again.
                lock2, _ = await intent_getattr(a, ROOT)
                assert lock2.state is LockState.GRANTED
                assert server.ldlm.namespace.granted_count == 1

    run(main)


def test_early_cancel_spares_the_callback(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            calls = Calls()
            async with client(nursery, nid, "a", "mdt", on_blocking=calls) as a:
                assert a.imp is not None
                lock, _ = await intent_getattr(a, ROOT)
                cancels = await a.early_cancel([(inode_res(ROOT), int(IBits.UPDATE))])
                assert cancels == [lock.remote_handle] and calls.locks == [lock]
                await Mdc(a.imp).mkdir(CRED, ROOT, b"d", 0o700, cancels=cancels)
                a.cancels_sent(cancels)
                assert lock.state is LockState.CANCELLED
                assert a.stats["basts"] == 0 and server.stats.get("reint_waits", 0) == 0
                assert len(server.ldlm.namespace) == 0

    run(main)


def test_intent_refused_while_an_update_holds_the_inode(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            async with client(nursery, nid, "a", "mdt") as a:
                locks = await server.ldlm.lock_local([(inode_res(ROOT), int(IBits.UPDATE))])
                lock, body = await intent_getattr(a, ROOT)
                assert "lock" not in body and lock.state is LockState.CANCELLED
                assert body["attr"]["ino"] == ROOT  # the answer comes all the same
                server.ldlm.unlock_local(locks)
                assert a.ns.lock_count == 0

    run(main)


def test_glimpse_asks_the_pw_holder_or_grants(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            async with client(nursery, nid, "a", "ost",
                              on_glimpse=lambda lock: {"size": 12345, "mtime_ns": 77}) as a, \
                    client(nursery, nid, "b", "ost") as b:
                res = ResId(9, 0, 0, 0)
                lw = await a.enqueue(res, LockType.EXTENT, Mode.PW, Extent(0, 4095))
                a.release(lw)
                lock, lvbs, ago = await b.glimpse(res, WHOLE)
                assert lock is None and lvbs == [[12345, 77]] and ago > 0
                assert lw.state is LockState.GRANTED  # a glimpse calls nobody back
                assert a.stats["gl_asts"] == 1 and b.ns.lock_count == 0
                other = ResId(10, 0, 0, 0)
                lock, lvbs, _ = await b.glimpse(other, WHOLE)
                assert lock is not None and lock.state is LockState.GRANTED and lvbs == []
                assert lock.mode == Mode.PR and lock.policy == WHOLE
                again, _, _ = await b.glimpse(other, WHOLE)
                assert again is lock  # held: no RPC
                assert b.stats["glimpses"] == 2
                # Once a writer gives its lock back, glimpses say how long ago.
                a.release(await a.enqueue(other, LockType.EXTENT, Mode.PW, Extent(0, 1)))
                await trio.sleep(0.05)
                await a.cancel_lru(now=trio.current_time() + 10**6)
                _, _, ago = await b.glimpse(ResId(10, 0, 0, 0), WHOLE)
                assert 0 < ago < 5

    run(main)


def test_own_locks_never_wait_for_each_other(tmp_path: Path) -> None:
    async def main() -> None:
        server = ost_server(tmp_path)
        async with serving(server) as (nid, nursery):
            calls = Calls()
            async with client(nursery, nid, "a", "ost", on_blocking=calls) as a, \
                    client(nursery, nid, "b", "ost") as b:
                res = ResId(3, 0, 0, 0)
                pr = await a.enqueue(res, LockType.EXTENT, Mode.PR, Extent(0, 10))
                pw = await a.enqueue(res, LockType.EXTENT, Mode.PW, Extent(0, 10))
                assert pw.state is LockState.GRANTED and pr.state is LockState.GRANTED
                a.release(pr)
                async with trio.open_nursery() as n:
                    n.start_soon(b.enqueue, res, LockType.EXTENT, Mode.PW, Extent(0, 10))
                    await until(lambda: pr.state is not LockState.GRANTED)
                    # b waits for a; a asks for more while its PW is still in use: granted
                    # at once (and called back at once) rather than queued behind b.
                    more = await a.enqueue(res, LockType.EXTENT, Mode.PR, Extent(5, 8))
                    assert more.state in (LockState.GRANTED, LockState.CBPENDING)
                    a.release(more)
                    a.release(pw)
                await until(lambda: a.ns.lock_count == 0)
                assert server.ldlm.namespace.stats["self_blocked_grants"] == 1
                assert server.stats.get("evictions", 0) == 0

    run(main)


def test_enqueue_waiting_across_a_server_restart_asks_the_new_instance(
        tmp_path: Path) -> None:
    """A restart is no eviction: an enqueue queued behind another client's lock when
    the OST restarts is granted by the new instance instead of failing (EIO)."""
    async def main() -> None:
        first = ost_server(tmp_path)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            async with client(outer, nid, "a", "ost") as a, \
                    client(outer, nid, "b", "ost") as b:
                res = ResId(4, 0, 0, 0)
                held = await a.enqueue(res, LockType.EXTENT, Mode.PW, Extent(0, 100))
                got: list[ClientLock] = []

                async def wanted() -> None:
                    got.append(await b.enqueue(res, LockType.EXTENT, Mode.PR,
                                               Extent(0, 100)))

                outer.start_soon(wanted)
                await until(lambda: b.stats["waits"] == 1)
                first.stop()
                await until(lambda: not first.storage.claimed)
                second = ost_server(tmp_path, port=nid.port)
                await outer.start(second.run)
                await until(lambda: bool(got))
                assert got[0].state is LockState.GRANTED and got[0].mode == Mode.PR
                assert b.stats["reenqueues"] == 1 and b.stats["evictions"] == 0
                assert held.state is LockState.CANCELLED  # a's lock died with the old one
                a.release(held)
                b.release(got[0])
                second.stop()

    run(main)


async def readdir_with_locks(lc: LockClient, ino: int, count: int
                             ) -> tuple[Any, dict[str, Any]]:
    """What md_cache.readdir_page sends: a page with one reserved handle per entry."""
    assert lc.imp is not None
    intents = lc.intent_range(inode_res(0), LockType.IBITS, Mode.PR, FILE_BITS, count)
    body = await Mdc(lc.imp).readdir(CRED, ino, 0, count, locks={
        "handle_base": intents.base, "bits": FILE_BITS, "dir_bits": DIR_ATTR_BITS})
    return intents, body


def end_page(lc: LockClient, intents: Any, body: dict[str, Any]) -> list[ClientLock]:
    granted = []
    for i, entry in enumerate(body["entries"]):
        lock = lc.range_lock(intents, i)
        assert lock is not None
        if lock.state is LockState.ENQUEUING:
            lc.ns.rebind(lock.handle, inode_res(entry[1]["ino"]), entry[4])
        if lc.intent_end(lock, entry[3]):
            granted.append(lock)
    lc.range_end(intents)
    return granted


def test_readdir_page_makes_locks_only_for_the_entries_it_returns(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            calls = Calls()
            async with client(nursery, nid, "a", "mdt", on_blocking=calls) as a, \
                    client(nursery, nid, "b", "mdt") as b:
                assert b.imp is not None
                for name in (b"x", b"y", b"z"):
                    await Mdc(b.imp).create(CRED, ROOT, name, 0o100644)
                intents, body = await readdir_with_locks(a, ROOT, 512)
                assert [e[0] for e in body["entries"]] == [b"x", b"y", b"z"]
                locks = end_page(a, intents, body)
                # Three locks, on the handles reserved for entries 0..2; none for the
                # other 509 handles of the page.
                assert [lk.handle - intents.base for lk in locks] == [0, 1, 2]
                assert a.ns.lock_count == 3
                assert a.range_lock(intents, 5) is None  # (the range is over)
                # b's unlink of y calls back a's lock on it, by that handle.
                await Mdc(b.imp).unlink(CRED, ROOT, b"y")
                assert [lk.handle for lk in calls.locks] == [intents.base + 1]

    run(main)


def test_a_callback_that_overtakes_the_readdir_reply_finds_its_lock(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path, ldlm_timeout=10.0)
        async with serving(server) as (nid, nursery):
            calls = Calls()
            async with client(nursery, nid, "a", "mdt", on_blocking=calls) as a, \
                    client(nursery, nid, "b", "mdt") as b:
                assert b.imp is not None
                await Mdc(b.imp).create(CRED, ROOT, b"x", 0o100644)
                intents, body = await readdir_with_locks(a, ROOT, 64)
                # Before a handles the reply, b's unlink calls back the lock it grants:
                # the BAST names a reserved handle that has no lock yet.
                done = trio.Event()

                async def unlink() -> None:
                    assert b.imp is not None
                    await Mdc(b.imp).unlink(CRED, ROOT, b"x")
                    done.set()

                nursery.start_soon(unlink)
                await until(lambda: a.stats["basts"] == 1)
                lock = a.ns.lock(intents.base)
                assert lock.state is LockState.ENQUEUING and lock.users == 1
                assert not done.is_set()
                # The reply now: the lock is granted already called back, and given
                # back as soon as its reference goes; b's unlink then completes.
                assert end_page(a, intents, body) == []
                with trio.fail_after(5):
                    await done.wait()
                assert calls.locks == [lock] and lock.state is LockState.CANCELLED
                assert a.ns.lock_count == 0

    run(main)
