"""The OST server over real TCP on 127.0.0.1, in this process (the MDT and the MGS:
test_mdt_mgs_wire.py), and the storage claims and restarts of every server.

Well-behaved clients use `Session`; hostile ones use raw sockets. After every hostile
case a second, well-behaved client must still be served.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import trio
from hostile_bytes import HOSTILE_CASES, frame
from wire_helpers import (
    FS,
    MDT_NAME,
    OST_NAME,
    RawConn,
    mdt_server,
    mdt_session,
    ok,
    ost_server,
    ost_session,
    ost_still_serves,
    raw_call,
    run,
    serving,
    unconnected,
)

from mlustre.protocol import constants as C
from mlustre.protocol.codec import Codec18, Codec20
from mlustre.protocol.errors import RpcError
from mlustre.protocol.message import Message
from mlustre.protocol.session import Session
from mlustre.servers.storage import StorageBusy

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


# -- OST ------------------------------------------------------------------------------------------

def test_ost_round_trip(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            s = await ost_session(nursery, nid)
            assert s.server["target"] == OST_NAME and s.server["kind"] == "ost"
            assert s.server["instance"] == 1 and s.server["reconnect"] is False
            transnos = []

            async def update(opc: int, body: dict, **kw: Any) -> Message:
                r = await ok(s, opc, body, **kw)
                assert r.transno > (transnos[-1] if transnos else 0)
                transnos.append(r.transno)
                return r

            w = await update(C.OST_WRITE, {"oid": 5, "offset": 0}, bulk=b"hello")
            assert w.last_committed < w.transno  # nothing committed yet
            await update(C.OST_WRITE, {"oid": 5, "offset": 10}, bulk=b"world")
            r = await ok(s, C.OST_READ, {"oid": 5, "offset": 0, "length": 100})
            assert r.bulk == b"hello" + bytes(5) + b"world"
            assert r.transno == 0  # reads are not transactions
            assert (await ok(s, C.OST_GETATTR, {"oid": 5})).body == {"size": 15}
            await update(C.OST_PUNCH, {"oid": 5, "size": 3})
            r = await ok(s, C.OST_READ, {"oid": 5, "offset": 0, "length": 100})
            assert r.bulk == b"hel"
            assert (await ok(s, C.OST_GETATTR, {"oid": 5})).body == {"size": 3}
            await update(C.OST_PUNCH, {"oid": 6, "size": 4096})  # punch creates (extends)
            assert (await ok(s, C.OST_GETATTR, {"oid": 6})).body == {"size": 4096}
            # a big write goes through a worker thread
            big = bytes(range(256)) * (C.BRW_MAX // 256)
            await update(C.OST_WRITE, {"oid": 7, "offset": 1000}, bulk=big)
            r = await ok(s, C.OST_READ, {"oid": 7, "offset": 1000, "length": C.BRW_MAX})
            assert r.bulk == big
            st = (await ok(s, C.OST_STATFS)).body
            assert {"bsize", "blocks", "bfree", "bavail", "files", "ffree"} <= set(st)
            assert st["bsize"] > 0
            # OST_SYNC commits everything so far
            before = (await ok(s, C.OBD_PING)).last_committed
            assert before < transnos[-1]
            sync = await ok(s, C.OST_SYNC)
            assert sync.last_committed == transnos[-1]
            assert (await ok(s, C.OBD_PING)).last_committed == transnos[-1]
            # later updates continue the sequence
            await update(C.OST_DESTROY, {"oids": [5, 6, 999]})
            assert (await ok(s, C.OST_GETATTR, {"oid": 5})).body == {"size": 0}
            r = await ok(s, C.OST_READ, {"oid": 5, "offset": 0, "length": 10})
            assert not r.bulk
            assert (await ok(s, C.OST_SYNC)).last_committed == transnos[-1]
            # disconnect: the export is gone
            await ok(s, C.OST_DISCONNECT)
            r = await raw_call(s, C.OST_GETATTR, {"oid": 7})
            assert r.status == errno.ENOTCONN
            await s.close()

    run(main)


def test_ost_concurrent_clients(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            transnos: list[int] = []

            async def client(i: int) -> None:
                s = await ost_session(nursery, nid)
                for k in range(10):
                    data = bytes([i]) * (100 + k)
                    w = await ok(s, C.OST_WRITE, {"oid": 100 + i, "offset": k * 1000},
                                     bulk=data)
                    transnos.append(w.transno)
                    r = await ok(s, C.OST_READ, {"oid": 100 + i, "offset": k * 1000,
                                                  "length": len(data)})
                    assert r.bulk == data
                await s.close()

            async with trio.open_nursery() as inner:
                for i in range(8):
                    inner.start_soon(client, i)
            assert sorted(transnos) == list(range(1, 81))  # unique, no gaps

    run(main)


def test_ost_1_8_client(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            s = await ost_session(nursery, nid, release="1.8")
            await ok(s, C.OST_WRITE, {"oid": 1, "offset": 0}, bulk=b"old client")
            r = await ok(s, C.OST_READ, {"oid": 1, "offset": 0, "length": 100})
            assert r.bulk == b"old client"
            raw = await RawConn.open(nid)
            await raw.request(Message.request(C.OST_CONNECT, 1, {"target": OST_NAME}), Codec18())
            got = await raw.recv()
            assert got is not None and got[1] == "1.8" and got[0].status == 0
            await raw.request(Message.request(C.OST_CONNECT, 2, {"target": OST_NAME}), Codec20())
            got = await raw.recv()
            assert got is not None and got[1] == "2.0" and got[0].status == 0
            await raw.close()

    run(main)


def test_requests_before_connect_get_enotconn(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            ep = await unconnected(nursery, nid)
            for opc, body in [(C.OST_READ, {"oid": 1, "offset": 0, "length": 1}),
                              (C.OST_WRITE, {"oid": 1, "offset": 0}),
                              (C.OST_SYNC, {}), (C.OST_DISCONNECT, {}), (C.OST_STATFS, {})]:
                r = await ep.call(opc, body, timeout=5, bulk=b"x" if opc == C.OST_WRITE else None)
                assert r.status == errno.ENOTCONN, opc
            r = await ep.call(C.OBD_PING, timeout=5)  # a ping needs no connection
            assert r.status == 0
            r = await ep.call(C.MDS_CONNECT, {"target": OST_NAME}, timeout=5)  # not its connect
            assert r.status == errno.ENOTCONN
            await ep.aclose()
            await ost_still_serves(nursery, nid)
            # nothing was written by the unconnected requests
            s = await ost_session(nursery, nid)
            assert (await ok(s, C.OST_GETATTR, {"oid": 1})).body == {"size": 0}
            await s.close()

    run(main)


def test_wrong_target_on_connect(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            with pytest.raises(RpcError) as info:
                await Session.open(nursery, [nid], target=f"{FS}-OST0001",
                                   connect_opc=C.OST_CONNECT, timeout=5)
            assert info.value.errno == errno.ENODEV
            ep = await unconnected(nursery, nid)
            for body, code in [({"target": 5}, errno.EINVAL), ({"target": None}, errno.EINVAL),
                               ({"uuid": 7}, errno.EINVAL), ({"flags": "x"}, errno.EINVAL),
                               ({"release": 2.0}, errno.EINVAL),
                               ({"target": MDT_NAME}, errno.ENODEV)]:
                r = await ep.call(C.OST_CONNECT, body, timeout=5)
                assert r.status == code, body
            # still not connected after the failures
            r = await ep.call(C.OST_GETATTR, {"oid": 1}, timeout=5)
            assert r.status == errno.ENOTCONN
            # an empty body connects to whatever this server is
            r = await ep.call(C.OST_CONNECT, {}, timeout=5)
            assert r.status == 0 and r.body["target"] == OST_NAME
            await ep.aclose()
            await ost_still_serves(nursery, nid)

    run(main)


def test_reconnect_with_the_same_uuid_replaces_the_old_connection(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            a = await ost_session(nursery, nid, client_uuid="client-1")
            b = await ost_session(nursery, nid, client_uuid="client-1")
            assert b.server["reconnect"] is True and a.server["reconnect"] is False
            with trio.fail_after(5):
                await a.endpoint.wait_closed()
            await ok(b, C.OST_WRITE, {"oid": 1, "offset": 0}, bulk=b"b")
            await b.close()

    run(main)


BAD_OST_REQUESTS = [
    (C.OST_WRITE, {"oid": "5", "offset": 0}, errno.EINVAL),
    (C.OST_WRITE, {"oid": -1, "offset": 0}, errno.EINVAL),
    (C.OST_WRITE, {"oid": 1 << 63, "offset": 0}, errno.EINVAL),
    (C.OST_WRITE, {"oid": True, "offset": 0}, errno.EINVAL),
    (C.OST_WRITE, {"oid": 5.0, "offset": 0}, errno.EINVAL),
    (C.OST_WRITE, {"oid": None, "offset": 0}, errno.EINVAL),
    (C.OST_WRITE, {"offset": 0}, errno.EINVAL),
    (C.OST_WRITE, {"oid": 5, "offset": -1}, errno.EINVAL),
    (C.OST_WRITE, {"oid": 5, "offset": "0"}, errno.EINVAL),
    (C.OST_WRITE, {"oid": 5}, errno.EINVAL),
    (C.OST_WRITE, {"oid": 5, "offset": 1 << 62}, errno.EINVAL),
    (C.OST_READ, {"oid": 5, "offset": 0, "length": -1}, errno.EINVAL),
    (C.OST_READ, {"oid": 5, "offset": 0, "length": b"1"}, errno.EINVAL),
    (C.OST_READ, {"oid": 5, "offset": -5, "length": 1}, errno.EINVAL),
    (C.OST_READ, {"oid": 5, "offset": 0}, errno.EINVAL),
    (C.OST_READ, {"oid": 5, "offset": 0, "length": C.BRW_MAX + 1}, errno.EMSGSIZE),
    (C.OST_PUNCH, {"oid": 5, "size": -1}, errno.EINVAL),
    (C.OST_PUNCH, {"oid": 5, "size": [1]}, errno.EINVAL),
    (C.OST_PUNCH, {"oid": 5}, errno.EINVAL),
    (C.OST_GETATTR, {"oid": {"a": 1}}, errno.EINVAL),
    (C.OST_GETATTR, {}, errno.EINVAL),
    (C.OST_DESTROY, {"oids": 5}, errno.EINVAL),
    (C.OST_DESTROY, {"oids": ["5"]}, errno.EINVAL),
    (C.OST_DESTROY, {"oids": [True]}, errno.EINVAL),
    (C.OST_DESTROY, {"oids": [-1]}, errno.EINVAL),
    (C.OST_DESTROY, {"oids": list(range(4097))}, errno.EINVAL),
    (C.OST_DESTROY, {}, errno.EINVAL),
    (C.OST_CREATE, {"delorphan": [0, 1 << 40], "keep": []}, errno.EPERM),  # not the MDT
    (C.MDS_REINT, {"op": 1}, errno.EOPNOTSUPP),  # not an OST opcode
    (9999, {}, errno.EOPNOTSUPP),
]


def test_bad_ost_requests(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            s = await ost_session(nursery, nid)
            await ok(s, C.OST_WRITE, {"oid": 5, "offset": 0}, bulk=b"keep me")
            for opc, body, code in BAD_OST_REQUESTS:
                bulk = b"junk" if opc == C.OST_WRITE else None
                r = await raw_call(s, opc, body, bulk=bulk)
                assert r.status == code, (opc, body, r.status, r.body)
                assert r.transno == 0
                assert isinstance(r.body.get("error", ""), str)
            r = await ok(s, C.OST_READ, {"oid": 5, "offset": 0, "length": 100})
            assert r.bulk == b"keep me"
            await s.close()
            await ost_still_serves(nursery, nid)

    run(main)


def test_ost_orphan_cleanup_from_the_mdt(tmp_path: Path) -> None:
    """OST_CREATE "delorphan" from the MDT's link destroys the objects in [lo, hi) but
    those to keep; malformed requests change nothing."""
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            s = await ost_session(nursery, nid, client_uuid=f"{FS}-MDT0000-osp")
            for oid in range(1, 11):
                await ok(s, C.OST_WRITE, {"oid": oid, "offset": 0}, bulk=b"o%d" % oid)
            for body in ({"delorphan": [8, 3], "keep": []}, {"delorphan": [3], "keep": []},
                         {"delorphan": [3, 8], "keep": ["5"]}, {"delorphan": [3, 8]},
                         {"delorphan": [-1, 8], "keep": []},
                         {"delorphan": [3, 8], "keep": list(range(4097))}):
                r = await raw_call(s, C.OST_CREATE, body)
                assert r.status == errno.EINVAL and r.transno == 0, (body, r.body)
            r = await ok(s, C.OST_CREATE, {"delorphan": [3, 8], "keep": [5, 9]})
            assert r.body == {"destroyed": 4} and r.transno > 0
            sizes = {oid: (await ok(s, C.OST_GETATTR, {"oid": oid})).body["size"]
                     for oid in range(1, 11)}
            assert [oid for oid, size in sizes.items() if size] == [1, 2, 5, 8, 9, 10]
            r = await ok(s, C.OST_CREATE, {"delorphan": [3, 8], "keep": [5]})
            assert r.body == {"destroyed": 0}  # done again after a crash: nothing more
            await s.close()

    run(main)


def test_oversized_ost_write(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            s = await ost_session(nursery, nid)
            r = await raw_call(s, C.OST_WRITE, {"oid": 9, "offset": 0},
                               bulk=bytes(C.BRW_MAX + 1))
            assert r.status == errno.EMSGSIZE and r.transno == 0
            assert (await ok(s, C.OST_GETATTR, {"oid": 9})).body == {"size": 0}
            r = await raw_call(s, C.OST_WRITE, {"oid": 9, "offset": 0}, bulk=bytes(C.MAX_BULK))
            assert r.status == errno.EMSGSIZE
            # exactly BRW_MAX is fine, and the connection is still good
            await ok(s, C.OST_WRITE, {"oid": 9, "offset": 0}, bulk=b"\x01" * C.BRW_MAX)
            assert (await ok(s, C.OST_GETATTR, {"oid": 9})).body == {"size": C.BRW_MAX}
            await s.close()
            await ost_still_serves(nursery, nid)

    run(main)


# -- hostile bytes on the OST (the cases: tests/hostile_bytes.py) ---------------------------------

@pytest.mark.parametrize("case", HOSTILE_CASES, ids=lambda c: c.__name__[5:])
def test_hostile_input_never_stops_the_server(tmp_path: Path, case: Any) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            await ost_still_serves(nursery, nid, oid=1)
            raw = await RawConn.open(nid)
            await case(raw)
            await ost_still_serves(nursery, nid, oid=2)  # while the hostile one is open
            await raw.close()
            await ost_still_serves(nursery, nid, oid=3)

    run(main)


def test_all_hostile_cases_on_one_server(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            conns = []
            for i, case in enumerate(HOSTILE_CASES):
                raw = await RawConn.open(nid)
                conns.append(raw)
                await case(raw)
                await ost_still_serves(nursery, nid, oid=10 + i)
            for raw in conns:
                await raw.close()
            await ost_still_serves(nursery, nid, oid=99)

    run(main, limit=40)


# -- storage claims and restarts -------------------------------------------------------------------

def test_junk_flood_is_bounded(tmp_path: Path) -> None:
    """BUG: every undecodable frame makes the reader start a task to send an EPROTO reply,
    without waiting for it. A peer that sends junk and never reads the replies makes the
    server pile up one blocked task per frame: 50 000 junk frames (450 KB) grow the
    server by ~200 MB (200 000 frames: 41 -> 824 MB) and keep the (single-threaded)
    server busy for seconds, during which other clients wait (2-5 s measured). Expected:
    backpressure (stop reading while replies cannot be sent) or closing a connection that
    keeps sending junk, so a flood costs bounded memory and other clients are served."""

    def rss_mib() -> int:
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) // 1024

    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            await ost_still_serves(nursery, nid, oid=1)
            raw = await RawConn.open(nid)
            before = rss_mib()
            with trio.move_on_after(3):  # a server applying backpressure may block this
                await raw.send(frame(b"\xc1") * 30_000)
            start = trio.current_time()
            with trio.fail_after(15):
                s = await ost_session(nursery, nid)
                await ok(s, C.OBD_PING)
            waited = trio.current_time() - start
            grown = rss_mib() - before
            await s.close()
            await raw.close()
            assert waited < 1.0 and grown < 48, (
                f"a second client waited {waited:.1f} s; the server grew by {grown} MiB")

    run(main, limit=30)


def test_second_server_on_the_same_storage_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        first = ost_server(tmp_path / "ost")
        second = ost_server(tmp_path / "ost")
        async with serving(first) as (nid, nursery):
            with pytest.raises(StorageBusy):
                second.open_storage()
            with pytest.raises(StorageBusy):
                await nursery.start(second.run)
            assert not second.storage.claimed
            await ost_still_serves(nursery, nid)  # the first is unharmed
            s = await ost_session(nursery, nid)
            await ok(s, C.OST_WRITE, {"oid": 3, "offset": 0}, bulk=b"from the first")
            await s.close()
        async with serving(second) as (nid2, nursery):
            s = await ost_session(nursery, nid2)
            assert s.server["instance"] == 2
            r = await ok(s, C.OST_READ, {"oid": 3, "offset": 0, "length": 100})
            assert r.bulk == b"from the first"
            await s.close()
        third = ost_server(tmp_path / "ost")
        third.open_storage()  # free again once the second stopped
        third.close_storage()

    run(main)


def test_mdt_storage_claim(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(mdt_server(tmp_path / "mdt")) as (nid, nursery):
            with pytest.raises(StorageBusy):
                mdt_server(tmp_path / "mdt").open_storage()
            s = await mdt_session(nursery, nid)
            assert (await ok(s, C.MDS_GET_ROOT)).body["attr"]["ino"] == 1
            await s.close()

    run(main)


def test_committed_data_survives_an_ost_restart(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            s = await ost_session(nursery, nid)
            await ok(s, C.OST_WRITE, {"oid": 1, "offset": 0}, bulk=b"committed")
            big = bytes(range(256)) * 4096  # 1 MiB, through the worker-thread path
            w = await ok(s, C.OST_WRITE, {"oid": 2, "offset": 512}, bulk=big)
            synced = await ok(s, C.OST_SYNC)
            assert synced.last_committed == w.transno
            await ok(s, C.OST_PUNCH, {"oid": 1, "size": 4})
            last = await ok(s, C.OST_WRITE, {"oid": 3, "offset": 0},
                                bulk=b"written before a graceful stop")
            await s.close()
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            s = await ost_session(nursery, nid)
            assert s.server["instance"] == 2
            ping = await ok(s, C.OBD_PING)
            assert ping.last_committed == last.transno  # the stop committed the rest
            r = await ok(s, C.OST_READ, {"oid": 1, "offset": 0, "length": 100})
            assert r.bulk == b"comm"
            r = await ok(s, C.OST_READ, {"oid": 2, "offset": 0, "length": len(big) + 512})
            assert r.bulk == bytes(512) + big
            r = await ok(s, C.OST_READ, {"oid": 3, "offset": 0, "length": 100})
            assert r.bulk == b"written before a graceful stop"
            w = await ok(s, C.OST_WRITE, {"oid": 4, "offset": 0}, bulk=b"x")
            assert w.transno == last.transno + 1  # transnos continue after the restart
            await s.close()

    run(main)
