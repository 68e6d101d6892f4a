"""Release dialects of MDT bodies: 1.8 names objects by [ino, gen], 2.0 by FID (IGIF
for inodes created under 1.8); clients encode their neutral requests for the server's
release at send time; each server refuses the other release's form; a client's
inodes keep working across an upgrade and a downgrade of the MDT."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from wire_helpers import CRED, MDT_NAME, ROOT, mdc, mdt_server, run

from mlustre.fuse_client.target_link import TargetLink
from mlustre.protocol import constants as C
from mlustre.protocol import dialect
from mlustre.protocol.errors import RpcError
from mlustre.protocol.fid import FID_SEQ_NORMAL, fid_of
from mlustre.protocol.nid import Nid

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


def test_wire_ids() -> None:
    assert dialect.wire_id("1.8", 20, 3, None) == [20, 3]
    assert dialect.wire_id("1.8", 20, None, None) == 20  # unknown gen: the neutral number
    assert dialect.wire_id("2.0", 20, 3, [FID_SEQ_NORMAL, 20, 0]) == [FID_SEQ_NORMAL, 20, 0]
    assert dialect.wire_id("2.0", 20, 3, None) == [20, 3, 0]  # IGIF from what 1.8 said
    assert dialect.wire_id("2.0", 1, 0, None) == list(fid_of(1, 0))
    body = {"op": C.REINT_RENAME, "parent": 20, "new_parent": 21, "name": b"a"}
    known = {20: (3, None), 21: (4, [FID_SEQ_NORMAL, 21, 0])}
    assert dialect.encode_request("1.8", body, lambda i: known[i]) == {
        **body, "parent": [20, 3], "new_parent": [21, 4]}
    assert dialect.encode_request("2.0", body, lambda i: known[i]) == {
        **body, "parent": [20, 3, 0], "new_parent": [FID_SEQ_NORMAL, 21, 0]}
    assert body["parent"] == 20  # the kept request stays neutral
    for value, ino in ((20, 20), ([20, 3], 20), ([20, 3, 0], 20),
                       ([FID_SEQ_NORMAL, 5, 0], 5), (list(fid_of(1, 0)), 1)):
        assert dialect.parse_id(value) == ino
    for bad in ([1], "x", [1, 2, 3, 4], [True, 1]):
        with pytest.raises(dialect.DialectError):
            dialect.parse_id(bad)
    # 1.8's open request has its own layout; servers unpack it for their handlers.
    opened = {"op": C.REINT_OPEN, "cred": CRED, "ino": 20, "flags": 2, "replay": True}
    wire = dialect.encode_request("1.8", opened, lambda i: known[i], C.MDS_REINT)
    assert wire == {"op": C.REINT_OPEN, "replay": True, "open": [[20, 3], 2, CRED]}
    assert dialect.normalize_request("1.8", C.MDS_REINT, wire) == {**opened, "ino": [20, 3]}
    wire20 = dialect.encode_request("2.0", opened, lambda i: known[i], C.MDS_REINT)
    assert wire20 == {**opened, "ino": [20, 3, 0]}
    assert dialect.normalize_request("2.0", C.MDS_REINT, wire20) == wire20
    for release, bad in (("2.0", wire), ("1.8", wire20),
                         ("1.8", {"op": C.REINT_OPEN, "open": [[20, 3], 2]})):
        with pytest.raises(dialect.DialectError):
            dialect.normalize_request(release, C.MDS_REINT, bad)
    dialect.check_request("1.8", {"ino": [20, 3]})
    with pytest.raises(dialect.DialectError):
        dialect.check_request("1.8", {"ino": [20, 3, 0]})
    with pytest.raises(dialect.DialectError):
        dialect.check_request("2.0", {"parent": [20, 3]})

def test_fids_added_to_attribute_maps() -> None:
    body: dict[str, Any] = {"attr": {"ino": 30, "gen": 2}, "entries": [{"ino": 31, "gen": 1}],
                            "other": {"x": 1}}
    dialect.add_fids(body, igif=lambda ino: ino == 30)
    assert body["attr"]["fid"] == [30, 2, 0]  # created under 1.8: IGIF
    assert body["entries"][0]["fid"] == list(fid_of(31, 1))
    assert "fid" not in body["other"]


def test_mdt_speaks_its_release_and_clients_follow_it(tmp_path: Path) -> None:
    """Files made under a 1.8 MDT, then the MDT on 2.0 (IGIF FIDs for those, normal
    FIDs for new ones), then on 1.8 again: the client names each by what it was told,
    in the release of the server of the moment."""
    async def main() -> None:
        known: dict[int, tuple[int | None, list[int] | None]] = {}

        def remember(reply: dict[str, Any]) -> dict[str, Any]:
            attr = reply["attr"]
            known[attr["ino"]] = (attr["gen"], attr.get("fid"))
            return attr

        async def serve(release: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            server = mdt_server(tmp_path, release=release, port=port[0])
            with trio.CancelScope() as scope:
                scopes.append((scope, server))
                await server.run(task_status=task_status)

        port = [0]
        scopes: list[Any] = []
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(serve, "1.8"))
            port[0] = nid.port
            async with mdc(outer, nid) as m:
                m.identity = lambda ino: known.get(ino, (None, None))
                for i in range(12):  # (IGIF FIDs start at inode 12, as in Lustre)
                    await m.mkdir(CRED, ROOT, b"filler%d" % i, 0o755)
                old = remember(await m.mkdir(CRED, ROOT, b"old", 0o755))
                assert old["ino"] >= 12
                made = await m.create(CRED, old["ino"], b"file", 0o100644)
                file = remember(made)
                assert (await m.open(CRED, file["ino"], os.O_RDWR))["handle"]
                assert "fid" not in old  # 1.8 reports ino and gen only
                with pytest.raises(RpcError) as e:  # a FID is not 1.8's language
                    await m.imp.call(C.MDS_GETATTR, {"ino": [old["ino"], old["gen"], 0]})
                assert "names objects by [ino, generation]" in str(e.value)
                for release in ("2.0", "1.8"):
                    scope, server = scopes[-1]
                    server.stop()
                    while server.storage.claimed:
                        await trio.sleep(0.01)
                    await outer.start(serve, release)
                    while m.imp.server.get("release") != release:
                        await trio.sleep(0.01)
                    attr = (await m.getattr(old["ino"]))["attr"]
                    assert attr["ino"] == old["ino"]
                    if release == "2.0":
                        assert attr["fid"] == [old["ino"], old["gen"], 0]  # IGIF
                        new = remember(await m.mkdir(CRED, old["ino"], b"new", 0o700))
                        assert new["fid"] == list(fid_of(new["ino"], new["gen"]))
                        with pytest.raises(RpcError):  # [ino, gen] is not 2.0's
                            await m.imp.call(C.MDS_GETATTR, {"ino": [old["ino"], 1]})
                    else:
                        assert "fid" not in attr
                    opened = await m.open(CRED, file["ino"], os.O_RDONLY)  # in its layout
                    assert opened["handle"] and opened["attr"]["ino"] == file["ino"]
                    looked = (await m.lookup(CRED, old["ino"], b"new"))["attr"]
                    assert looked["ino"] == new["ino"] and looked["mode"] & 0o777 == 0o700
                scopes[-1][1].stop()

    run(main)


@pytest.mark.parametrize("server_lock", [True, False], ids=["srv-lock", "srv-nolock"])
@pytest.mark.parametrize("client_lock", [True, False], ids=["cli-lock", "cli-nolock"])
@pytest.mark.parametrize("releases", [("1.8", "2.0"), ("2.0", "1.8")], ids=["up", "down"])
def test_interop_matrix(tmp_path: Path, releases: tuple[str, str], server_lock: bool,
                        client_lock: bool) -> None:
    """Every combination of an upgrade or a downgrade of the MDT, a server with or
    without UPDATE_LOCK and a client with or without it: a stream of updates goes on
    across the controlled restart with no error and nothing lost; when both sides
    have the barrier, nothing is resent either."""
    async def main() -> None:
        known: dict[int, tuple[int | None, list[int] | None]] = {}
        old_release, new_release = releases
        first = mdt_server(tmp_path, release=old_release, update_lock=server_lock)
        async with trio.open_nursery() as outer:
            nid = Nid.parse(await outer.start(first.run))
            link = TargetLink(MDT_NAME, "mdt", [nid], client_uuid="matrix",
                              identity=lambda ino: known.get(ino, (None, None)),
                              connect_timeout=1.0, request_timeout=5.0,
                              flags=C.OBD_CONNECT_UPDATE_LOCK if client_lock else 0)
            lc, imp, barrier, m = link.locks, link.imp, link.barrier, link.mdc
            assert barrier is not None and m is not None
            await outer.start(lc.run)
            await outer.start(barrier.run)
            await imp.connect(outer)
            top = (await m.mkdir(CRED, ROOT, b"top", 0o755))["attr"]
            known[top["ino"]] = (top["gen"], top.get("fid"))
            made: list[bytes] = []
            errors: list[BaseException] = []
            stop = trio.Event()

            async def stream() -> None:
                i = 0
                while not stop.is_set():
                    name = b"d%d" % i
                    try:
                        await m.mkdir(CRED, top["ino"], name, 0o700)
                        made.append(name)
                    except RpcError as e:
                        errors.append(e)
                    i += 1

            outer.start_soon(stream)
            while len(made) < 5:
                await trio.sleep(0.01)
            first.stop()  # graceful: freezes the barrier first where both sides have it
            while first.storage.claimed:
                await trio.sleep(0.01)
            second = mdt_server(tmp_path, release=new_release, update_lock=server_lock,
                                port=nid.port)
            await outer.start(second.run)
            before = len(made)
            while len(made) < before + 5:
                await trio.sleep(0.01)
            stop.set()
            await trio.sleep(0.2)
            assert not errors, errors
            assert imp.server["release"] == new_release
            names = {e[0] if isinstance(e, list) else e.get("name")
                     for e in (await m.readdir(CRED, top["ino"], 0, 10_000))["entries"]}
            assert set(made) <= {n.encode() if isinstance(n, str) else n for n in names}
            if server_lock and client_lock:
                assert imp.resent_updates == 0 and barrier.stats["drains"] == 1
            await imp.close(C.MDS_DISCONNECT)
            lc.close()
            barrier.close()
            second.stop()

    run(main)
