"""Replay over the wire: an MDT under a replay barrier loses, when it stops, every
update made since; its client replays them to the next instance (same transnos, same
inode numbers, same OST objects); a replay of an update that survived is answered
without running again, whether its reply is still in the reply log or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from wire_helpers import CRED, MDT_NAME, ROOT, mdc, mdt_server, run

from mlustre.fuse_client.imports import Import, ImportState
from mlustre.fuse_client.mdc import Mdc
from mlustre.fuse_client.target_link import TargetLink
from mlustre.protocol import constants as C
from mlustre.protocol.nid import Nid

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


def test_lost_updates_are_replayed_with_their_identity(tmp_path: Path) -> None:
    async def main() -> None:
        first = mdt_server(tmp_path)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            async with mdc(outer, nid) as m:
                kept_before = (await m.mkdir(CRED, ROOT, b"kept", 0o755))["attr"]
                await m.sync()  # committed: nothing of it is left to replay
                assert m.kept == []
                first.params().set(f"{first.name}.replay_barrier".join(["mdt.", ""]), "1")
                a = (await m.mkdir(CRED, ROOT, b"a", 0o700))["attr"]
                b = (await m.create(CRED, a["ino"], b"b", 0o100600))["attr"]
                await m.rename(CRED, a["ino"], b"b", ROOT, b"c", 0)
                assert [k.transno for k in m.kept] == sorted(k.transno for k in m.kept)
                assert len(m.kept) == 3
                first.stop()  # its store rolls back everything after the barrier
                while first.storage.claimed:
                    await trio.sleep(0.01)
                second = mdt_server(tmp_path, port=nid.port)
                await outer.start(second.run)
                while m.imp.state is not ImportState.FULL or m.imp.replays == 0:
                    await trio.sleep(0.01)
                assert m.replayed == 3 and second.stats["replayed_updates"] == 3
                got: dict[str, Any] = (await m.lookup(CRED, ROOT, b"a"))["attr"]
                assert (got["ino"], got["gen"]) == (a["ino"], a["gen"])
                c = (await m.lookup(CRED, ROOT, b"c"))["attr"]
                assert c["ino"] == b["ino"] and c["layout"]["objects"] == b["layout"]["objects"]
                assert (await m.lookup(CRED, ROOT, b"kept"))["attr"]["ino"] == \
                    kept_before["ino"]
                # New inodes come after the replayed ones.
                d = (await m.mkdir(CRED, ROOT, b"d", 0o755))["attr"]
                assert d["ino"] > max(a["ino"], b["ino"])
                second.stop()
    run(main)

def test_a_replay_of_what_survived_is_not_run_again(tmp_path: Path) -> None:
    """A replay numbered at or below the MDT's last transno survived the crash: it is
    answered (from the reply log, or as already done) and not run again (a second
    mkdir would say EEXIST)."""
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(server.run))
            async with mdc(outer, nid) as m:
                made = await m.mkdir(CRED, ROOT, b"once", 0o755)
                k = m.kept[-1]
                body = {"op": C.REINT_MKDIR, "cred": CRED, "parent": ROOT, "name": b"once",
                        "mode": 0o755}
                for xid in (k.xid, k.xid + 1000):  # in the reply log; beyond it
                    reply = await m.imp.endpoint.call(
                        C.MDS_REINT, body, flags=C.MSG_REPLAY, xid=xid,
                        transno=k.transno, conn_cnt=m.imp.conn_cnt)
                    assert reply.status == 0, reply.body
                assert server.stats["reconstructed"] == 1
                assert server.stats["replays_already_done"] == 1
                assert server.stats.get("replayed_updates", 0) == 0
                assert (await m.lookup(CRED, ROOT, b"once"))["attr"]["ino"] == \
                    made["attr"]["ino"]
                server.stop()
    run(main)


@asynccontextmanager
async def mount_like(nursery: trio.Nursery, nid: Nid, name: str) -> AsyncIterator[Mdc]:
    """An MDC whose import keeps transnos for replay, as a mount's does (the MDT
    waits for such clients after a restart)."""
    m = TargetLink(MDT_NAME, "mdt", [nid], client_uuid=f"client-{name}", barrier=False,
                   flags=C.OBD_CONNECT_TRANSNO, connect_timeout=1.0, request_timeout=20.0).mdc
    assert m is not None
    await m.imp.connect(nursery)
    try:
        yield m
    finally:
        await m.imp.close(C.MDS_DISCONNECT)


def test_replays_of_two_clients_run_in_transno_order(tmp_path: Path) -> None:
    """A makes x, B renames it to y, A makes x again: replayed in arrival order A's
    second mkdir would find x still there (EEXIST) and lose the rename's effect; in
    global transno order, the MDT ends with x and y as before the crash. A third client
    known to the MDT never comes back: evicted when the window ends, and told so."""
    async def main() -> None:
        first = mdt_server(tmp_path, recovery_window=3.0)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            async with mount_like(outer, nid, "a") as a, mount_like(outer, nid, "b") as b:
                gone = Import(MDT_NAME, [nid], connect_opc=C.MDS_CONNECT,
                              client_uuid="client-gone", flags=C.OBD_CONNECT_TRANSNO,
                              connect_timeout=1.0)
                await gone.connect(outer)
                await trio.sleep(0.5)  # (the MDT writes down its clients)
                first.params().set(f"mdt.{MDT_NAME}.replay_barrier", "1")
                x1 = (await a.mkdir(CRED, ROOT, b"x", 0o755))["attr"]
                await b.rename(CRED, ROOT, b"x", ROOT, b"y", 0)
                x2 = (await a.mkdir(CRED, ROOT, b"x", 0o700))["attr"]
                assert gone.endpoint is not None
                gone.nids = [Nid.parse("127.0.0.1:1")]  # (nothing listens there)
                await gone.endpoint.aclose("this client dies")  # (no disconnect)
                first.stop()
                while first.storage.claimed:
                    await trio.sleep(0.01)
                second = mdt_server(tmp_path, port=nid.port, recovery_window=3.0)
                await outer.start(second.run)
                t0 = trio.current_time()
                y = (await a.lookup(CRED, ROOT, b"y"))["attr"]  # waits for the recovery
                x = (await b.lookup(CRED, ROOT, b"x"))["attr"]
                assert (y["ino"], x["ino"]) == (x1["ino"], x2["ino"])
                assert x["mode"] & 0o777 == 0o700
                assert second.stats["replayed_updates"] == 3
                assert second.stats["recovery_evictions"] == 1  # the one that never came
                status = dict(second.params().get(f"mdt.{MDT_NAME}.recovery_status"))
                assert status[f"mdt.{MDT_NAME}.recovery_status"][:5] == [
                    "status: COMPLETE", "completed_clients: 2/3", "replayed_requests: 3",
                    "replayed_locks: 0", "evicted_clients: 1"]
                assert trio.current_time() - t0 >= 2.0  # (it was waited for)
                gone.nids = [nid]
                with trio.fail_after(10):
                    while gone.evictions == 0 or gone.state.value != "FULL":
                        await trio.sleep(0.05)
                states = [st for _, st in gone.history]
                assert states[-2:] == ["EVICTED", "FULL"], states
                await gone.close()
                second.stop()
    run(main)
