"""A resent update whose reply was lost is answered from the target's reply log, not
executed again - over the wire, with fail_loc dropping replies, and across an MDT
restart (the reply is kept in the update's own transaction)."""

from __future__ import annotations

import errno
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from wire_helpers import CRED, ROOT, mdc, mdt_server, serving
from wire_helpers import run as trio_run

from mlustre.protocol import constants as C
from mlustre.protocol.errors import RpcError
from mlustre.protocol.nid import Nid
from mlustre.servers import fail_loc
from mlustre.servers.reply_log import ReplyLog, SavedReply

LIMIT = 40

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


run = partial(trio_run, limit=LIMIT)


def test_lost_reply_of_mkdir_and_unlink_is_reconstructed(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            async with mdc(nursery, nid) as m:
                server.fail = fail_loc.parse("drop_reply:MDS_REINT:once")
                attr = (await m.mkdir(CRED, ROOT, b"d", 0o755))["attr"]  # not EEXIST
                assert server.fail.hits == 1 and server.stats["reconstructed"] == 1
                assert (await m.lookup(CRED, ROOT, b"d"))["attr"]["ino"] == attr["ino"]
                with pytest.raises(RpcError) as e:
                    await m.mkdir(CRED, ROOT, b"d", 0o755)  # a new request does fail
                assert e.value.errno == errno.EEXIST
                server.fail = fail_loc.parse("drop_reply:MDS_REINT:once")
                await m.rmdir(CRED, ROOT, b"d")  # not ENOENT
                assert server.stats["reconstructed"] == 2
                assert m.imp.conn_cnt >= 3  # each dropped reply cost a reconnect

    run(main)


def test_dropped_request_is_simply_resent(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server) as (nid, nursery):
            async with mdc(nursery, nid) as m:
                server.fail = fail_loc.parse("drop_request:MDS_REINT:once")
                await m.mkdir(CRED, ROOT, b"d", 0o700)
                assert server.fail.hits == 1 and server.stats.get("reconstructed", 0) == 0

    run(main)


def test_reply_survives_an_mdt_restart(tmp_path: Path) -> None:
    async def main() -> None:
        first = mdt_server(tmp_path)
        async with trio.open_nursery() as outer:
            srv_scope = trio.CancelScope()
            started = trio.Event()
            nids: list[Nid] = []

            async def serve(server: Any) -> None:
                with srv_scope:
                    nids.append(Nid.parse(await outer.start(server.run)))
                    started.set()

            first.fail = fail_loc.parse("drop_reply:MDS_REINT")  # every time: no reply
            await serve(first)
            nid = nids[0]
            async with mdc(outer, nid) as m:
                result: list[dict[str, Any]] = []

                async def make() -> None:
                    result.append(await m.mkdir(CRED, ROOT, b"kept", 0o750))

                outer.start_soon(make)
                while first.fail.hits == 0:
                    await trio.sleep(0.01)
                await first.commit()  # the mkdir and its reply are durable together
                first.stop()
                while first.storage.claimed:
                    await trio.sleep(0.01)
                second = mdt_server(tmp_path, port=nid.port)
                await outer.start(second.run)
                while not result:
                    await trio.sleep(0.01)
                assert second.stats["reconstructed"] >= 1
                assert (await m.lookup(CRED, ROOT, b"kept"))["attr"]["ino"] == \
                    result[0]["attr"]["ino"]
                second.stop()

    run(main)


def test_reply_log_slots_and_running() -> None:
    log = ReplyLog(slots=2)
    assert log.record("u", 1, SavedReply(5, 0, {})) is None
    assert log.record("u", 2, SavedReply(6, 0, {})) is None
    assert log.record("u", 3, SavedReply(7, 17, {"error": "x"})) == 1
    assert log.lookup("u", 1) is None and log.lookup("u", 3).status == 17
    assert log.lookup("v", 3) is None and len(log) == 2
    assert log.start("u", 9) and not log.start("u", 9) and log.running("u", 9)
    log.done("u", 9)
    assert not log.running("u", 9)


@pytest.mark.parametrize(("text", "want"), [
    ("none", None),
    ("drop_reply:MDS_REINT", ("drop_reply", C.MDS_REINT, False, 0.0)),
    ("drop_request:ost_write:once", ("drop_request", C.OST_WRITE, True, 0.0)),
    ("delay:101:2.5", ("delay", C.LDLM_ENQUEUE, False, 2.5)),
])
def test_fail_loc_parse(text: str, want: Any) -> None:
    got = fail_loc.parse(text)
    assert (got if got is None else (got.action, got.opc, got.once, got.seconds)) == want


@pytest.mark.parametrize("text", ["explode:MDS_REINT", "drop_reply", "drop_reply:NOPE",
                                  "delay:OST_WRITE", "delay:OST_WRITE:0", "drop_reply:1:twice"])
def test_fail_loc_errors(text: str) -> None:
    with pytest.raises(fail_loc.FailLocError):
        fail_loc.parse(text)
