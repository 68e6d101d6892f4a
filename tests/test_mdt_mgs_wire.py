"""The MDT and MGS servers over real TCP on 127.0.0.1, in this process (the OST:
test_servers_wire.py).

Well-behaved clients use `Session`; hostile ones use raw sockets. After every hostile
case a second, well-behaved client must still be served.
"""

from __future__ import annotations

import errno
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from hostile_bytes import (
    case_flood_of_junk_frames,
    case_oversized_header,
    case_random_garbage,
    case_valid_msgpack_not_a_message,
)
from wire_helpers import (
    FILE_MODE,
    FS,
    MDT_NAME,
    MGS_NAME,
    OST_NAME,
    ROOT_CRED,
    RawConn,
    mdt_server,
    mdt_session,
    ok,
    ost_server,
    ost_still_serves,
    raw_call,
    run,
    serving,
)

from mlustre.protocol import constants as C
from mlustre.protocol.nid import Nid
from mlustre.protocol.session import Session
from mlustre.servers.mgs import MgsServer

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


# -- MDT -------------------------------------------------------------------------------------------

def reint(op: int, **fields: Any) -> dict:
    return {"op": op, "cred": ROOT_CRED, **fields}


def test_mdt_namespace_round_trip(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(mdt_server(tmp_path / "mdt")) as (nid, nursery):
            s = await mdt_session(nursery, nid)
            assert s.server["kind"] == "mdt" and s.server["target"] == MDT_NAME
            root = (await ok(s, C.MDS_GET_ROOT)).body["attr"]
            assert root["ino"] == 1 and stat.S_ISDIR(root["mode"])
            transnos = []

            async def update(body: dict) -> dict:
                r = await ok(s, C.MDS_REINT, body)
                assert r.transno > (transnos[-1] if transnos else 0)
                transnos.append(r.transno)
                return r.body

            made = await update(reint(C.REINT_CREATE, parent=1, name=b"file", mode=FILE_MODE))
            assert made["created"] is True and made["handle"] is None
            f = made["attr"]
            assert stat.S_ISREG(f["mode"]) and f["layout"]["stripe_count"] == 1
            d = (await update(reint(C.REINT_MKDIR, parent=1, name=b"dir", mode=0o755)))["attr"]
            assert stat.S_ISDIR(d["mode"])
            opened = await update(reint(C.REINT_CREATE, parent=d["ino"], name=b"inner",
                                        mode=FILE_MODE, open_flags=2))
            assert isinstance(opened["handle"], int)
            link = (await update(reint(C.REINT_SYMLINK, parent=1, name=b"link",
                                       target=b"file")))["attr"]
            assert stat.S_ISLNK(link["mode"])
            looked = (await ok(s, C.MDS_GETATTR_NAME,
                                   {"cred": ROOT_CRED, "parent": 1, "name": b"file"})).body
            assert looked["attr"]["ino"] == f["ino"]
            assert (await ok(s, C.MDS_GETATTR, {"ino": f["ino"]})).body["attr"]["ino"] == f["ino"]
            assert (await ok(s, C.MDS_READLINK, {"ino": link["ino"]})).body["target"] == b"file"
            r = await ok(s, C.MDS_READPAGE, {"cred": ROOT_CRED, "ino": 1})
            assert sorted(e[0] for e in r.body["entries"]) == [b"dir", b"file", b"link"]
            assert r.body["end"] is True
            # paging with cookies
            r1 = await ok(s, C.MDS_READPAGE, {"cred": ROOT_CRED, "ino": 1, "count": 2})
            assert len(r1.body["entries"]) == 2 and r1.body["end"] is False
            r2 = await ok(s, C.MDS_READPAGE, {"cred": ROOT_CRED, "ino": 1, "count": 2,
                                               "cookie": r1.body["entries"][-1][2]})
            names = [e[0] for e in r1.body["entries"] + r2.body["entries"]]
            assert sorted(names) == [b"dir", b"file", b"link"]
            # close the handle, unlink, rmdir
            await ok(s, C.MDS_CLOSE, {"handle": opened["handle"]})
            await update(reint(C.REINT_UNLINK, parent=d["ino"], name=b"inner"))
            await update(reint(C.REINT_UNLINK, parent=1, name=b"file"))
            r = await raw_call(s, C.MDS_GETATTR_NAME,
                               {"cred": ROOT_CRED, "parent": 1, "name": b"file"})
            assert r.status == errno.ENOENT
            r = await raw_call(s, C.MDS_REINT, reint(C.REINT_RMDIR, parent=1, name=b"nope"))
            assert r.status == errno.ENOENT
            await update(reint(C.REINT_RMDIR, parent=1, name=b"dir"))
            r = await ok(s, C.MDS_READPAGE, {"cred": ROOT_CRED, "ino": 1})
            assert [e[0] for e in r.body["entries"]] == [b"link"]
            # errors carry no transno
            r = await raw_call(s, C.MDS_REINT, reint(C.REINT_MKDIR, parent=1, name=b"link",
                                                    mode=0o755))
            assert r.status == errno.EEXIST and r.transno == 0
            # MDS_SYNC commits everything so far
            assert (await ok(s, C.OBD_PING)).last_committed < transnos[-1]
            assert (await ok(s, C.MDS_SYNC)).last_committed == transnos[-1]
            st = (await ok(s, C.MDS_STATFS)).body
            assert st["files"] >= 2
            await s.close()

    run(main)


def test_mdt_permissions_come_from_the_request_cred(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(mdt_server(tmp_path / "mdt")) as (nid, nursery):
            s = await mdt_session(nursery, nid)
            d = (await ok(s, C.MDS_REINT, reint(C.REINT_MKDIR, parent=1, name=b"private",
                                                 mode=0o700))).body["attr"]
            r = await raw_call(s, C.MDS_REINT, {"op": C.REINT_CREATE, "cred": [1000, 1000, []],
                                                "parent": d["ino"], "name": b"x",
                                                "mode": FILE_MODE})
            assert r.status == errno.EACCES
            r = await raw_call(s, C.MDS_ACCESS, {"cred": [1000, 1000, []], "ino": d["ino"],
                                                 "mask": 4})
            assert r.status == errno.EACCES
            r = await raw_call(s, C.MDS_ACCESS, {"cred": ROOT_CRED, "ino": d["ino"], "mask": 4})
            assert r.status == 0
            # fid2path bypasses every directory's permissions: root only.
            r = await raw_call(s, C.MDS_FID2PATH, {"cred": [1000, 1000, []], "ino": d["ino"]})
            assert r.status == errno.EPERM
            r = await raw_call(s, C.MDS_FID2PATH, {"ino": d["ino"]})
            assert r.status == errno.EINVAL  # (no credentials: refused, not trusted)
            r = await raw_call(s, C.MDS_FID2PATH, {"cred": ROOT_CRED, "ino": d["ino"]})
            assert (r.status, r.body.get("path")) == (0, b"private")
            await s.close()

    run(main)


BAD_CREDS = [None, [], [0, 0], [0, 0, [], 0], ["0", 0, []], [0, "0", []], [0, 0, "x"],
             [0, 0, [1, "2"]], [True, 0, []], [0, 0, [False]], [0.0, 0, []], {"uid": 0},
             [0, 0, list(range(65537))]]


def _create_with(**over: Any) -> dict:
    body = {"op": C.REINT_CREATE, "cred": ROOT_CRED, "parent": 1, "name": b"n",
            "mode": FILE_MODE}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


BAD_MDT_REQUESTS: list[tuple[int, dict, int]] = [
    *[(C.MDS_REINT, _create_with(cred=c), errno.EINVAL) for c in BAD_CREDS],
    (C.MDS_REINT, _create_with(cred=...), errno.EINVAL),
    (C.MDS_REINT, _create_with(name=b"x" * 256), errno.ENAMETOOLONG),
    (C.MDS_REINT, _create_with(name="n"), errno.EINVAL),
    (C.MDS_REINT, _create_with(name=None), errno.EINVAL),
    (C.MDS_REINT, _create_with(name=...), errno.EINVAL),
    (C.MDS_REINT, _create_with(name=b""), errno.EINVAL),
    (C.MDS_REINT, _create_with(name=b"a/b"), errno.EINVAL),
    (C.MDS_REINT, _create_with(parent="1"), errno.EINVAL),
    (C.MDS_REINT, _create_with(parent=0), errno.EINVAL),
    (C.MDS_REINT, _create_with(parent=-1), errno.EINVAL),
    (C.MDS_REINT, _create_with(parent=1 << 63), errno.EINVAL),
    (C.MDS_REINT, _create_with(mode="0644"), errno.EINVAL),
    (C.MDS_REINT, _create_with(mode=...), errno.EINVAL),
    (C.MDS_REINT, _create_with(rdev=b"0"), errno.EINVAL),
    (C.MDS_REINT, _create_with(layout=[1]), errno.EINVAL),
    (C.MDS_REINT, _create_with(layout={"stripe_count": "2"}), errno.EINVAL),
    (C.MDS_REINT, _create_with(layout={"bogus": 1}), errno.EINVAL),
    (C.MDS_REINT, _create_with(exclusive=1), errno.EINVAL),
    (C.MDS_REINT, _create_with(open_flags="r"), errno.EINVAL),
    (C.MDS_REINT, _create_with(op="2"), errno.EINVAL),
    (C.MDS_REINT, _create_with(op=...), errno.EINVAL),
    (C.MDS_REINT, _create_with(op=999), errno.EOPNOTSUPP),
    (C.MDS_REINT, {"op": C.REINT_SETATTR, "cred": ROOT_CRED, "ino": 1, "attrs": {"bogus": 1}},
     errno.EINVAL),
    (C.MDS_REINT, {"op": C.REINT_SETATTR, "cred": ROOT_CRED, "ino": 1, "attrs": {"mode": -1}},
     errno.EINVAL),
    (C.MDS_REINT, {"op": C.REINT_SETATTR, "cred": ROOT_CRED, "ino": 1,
                   "attrs": {"mtime_now": 1}}, errno.EINVAL),
    (C.MDS_REINT, {"op": C.REINT_SETATTR, "cred": ROOT_CRED, "ino": 1, "attrs": [1]},
     errno.EINVAL),
    (C.MDS_REINT, {"op": C.REINT_SETXATTR, "cred": ROOT_CRED, "ino": 1, "name": b"user.x",
                   "value": b"v" * (64 * 1024 + 1)}, errno.E2BIG),
    (C.MDS_REINT, {"op": C.REINT_SETXATTR, "cred": ROOT_CRED, "ino": 1, "name": b"user.x",
                   "value": "v"}, errno.EINVAL),
    (C.MDS_REINT, {"op": C.REINT_SETXATTR, "cred": ROOT_CRED, "ino": 1, "name": b"lustre.lov",
                   "value": b"stripe_count=banana"}, errno.EINVAL),
    (C.MDS_GETATTR, {"ino": "1"}, errno.EINVAL),
    (C.MDS_GETATTR, {"ino": 0}, errno.EINVAL),
    (C.MDS_GETATTR, {}, errno.EINVAL),
    (C.MDS_GETATTR, {"ino": 123456}, errno.ENOENT),
    (C.MDS_GETATTR_NAME, {"cred": ROOT_CRED, "parent": 1, "name": b"x" * 300},
     errno.ENAMETOOLONG),
    (C.MDS_GETATTR_NAME, {"cred": [0, 0], "parent": 1, "name": b"x"}, errno.EINVAL),
    (C.MDS_READPAGE, {"cred": ROOT_CRED, "ino": 1, "count": "5"}, errno.EINVAL),
    (C.MDS_READPAGE, {"cred": ROOT_CRED, "ino": 1, "cookie": None}, errno.EINVAL),
    (C.MDS_READPAGE, {"cred": ROOT_CRED}, errno.EINVAL),
    (C.MDS_CLOSE, {"handle": "h"}, errno.EINVAL),
    (C.MDS_CLOSE, {}, errno.EINVAL),
    (C.MDS_ACCESS, {"cred": ROOT_CRED, "ino": 1}, errno.EINVAL),
    (C.MDS_GETXATTR, {"cred": ROOT_CRED, "ino": 1, "name": "user.x"}, errno.EINVAL),
    (C.OST_WRITE, {"oid": 1, "offset": 0}, errno.EOPNOTSUPP),  # not an MDT opcode
]


def test_bad_mdt_requests(tmp_path: Path) -> None:
    async def main() -> None:
        # (evict_threshold=0: so many violations on one connection would get it evicted)
        async with serving(mdt_server(tmp_path / "mdt", evict_threshold=0)) as (nid, nursery):
            s = await mdt_session(nursery, nid)
            for opc, body, code in BAD_MDT_REQUESTS:
                r = await raw_call(s, opc, body)
                assert r.status == code, (opc, body, errno.errorcode.get(r.status, r.status),
                                          r.body)
                assert r.transno == 0
            # nothing was created by any of them, and the MDT still works
            r = await ok(s, C.MDS_READPAGE, {"cred": ROOT_CRED, "ino": 1})
            assert r.body["entries"] == []
            await ok(s, C.MDS_REINT, _create_with())
            await s.close()

    run(main)


OUT_OF_RANGE_MDT_REQUESTS = [
    ("write_update-size-2^63", C.MDS_REINT,
     {"op": C.REINT_WRITE_UPDATE, "ino": "FILE", "size": 1 << 63, "mtime_ns": 0}),
    ("write_update-mtime-2^64-1", C.MDS_REINT,
     {"op": C.REINT_WRITE_UPDATE, "ino": "FILE", "size": 0, "mtime_ns": (1 << 64) - 1}),
    ("create-mode-2^64-1", C.MDS_REINT, _create_with(name=b"m", mode=(1 << 64) - 1)),
    ("mknod-rdev-2^64-1", C.MDS_REINT,
     _create_with(name=b"dev", mode=stat.S_IFCHR | 0o600, rdev=(1 << 64) - 1)),
    ("readpage-cookie-2^64-1", C.MDS_READPAGE,
     {"cred": ROOT_CRED, "ino": 1, "cookie": (1 << 64) - 1}),
]


@pytest.mark.parametrize("name,opc,body", OUT_OF_RANGE_MDT_REQUESTS,
                         ids=[c[0] for c in OUT_OF_RANGE_MDT_REQUESTS])
def test_out_of_range_mdt_fields_are_refused_not_crashes(tmp_path: Path, name: str, opc: int,
                                                         body: dict) -> None:
    """BUG: mdt._int accepts [-2**63, 2**64) but SQLite and the stat module hold signed
    64-bit (or smaller) ints, so these values make the handler raise OverflowError: the
    client gets EIO from the RPC layer's catch-all (with a server-side traceback) where
    a refused field (EINVAL, or EFBIG/EOVERFLOW) is expected."""

    async def main() -> None:
        async with serving(mdt_server(tmp_path / "mdt")) as (nid, nursery):
            s = await mdt_session(nursery, nid)
            f = (await ok(s, C.MDS_REINT, _create_with(name=b"file"))).body["attr"]
            req = {k: (f["ino"] if v == "FILE" else v) for k, v in body.items()}
            r = await raw_call(s, opc, req)
            assert r.status in (errno.EINVAL, errno.EFBIG, errno.EOVERFLOW, errno.ERANGE), (
                f"{name}: got {errno.errorcode.get(r.status, r.status)} {r.body}")
            assert (await ok(s, C.MDS_GETATTR, {"ino": f["ino"]})).body["attr"]["size"] == 0
            await s.close()

    run(main)


def test_mdt_hostile_bytes_then_a_good_client(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(mdt_server(tmp_path / "mdt")) as (nid, nursery):
            for case in (case_random_garbage, case_oversized_header,
                         case_valid_msgpack_not_a_message, case_flood_of_junk_frames):
                raw = await RawConn.open(nid)
                await case(raw)
                s = await mdt_session(nursery, nid)
                assert (await ok(s, C.MDS_GET_ROOT)).body["attr"]["ino"] == 1
                await s.close()
                await raw.close()

    run(main)


def test_mdt_state_survives_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(mdt_server(tmp_path / "mdt")) as (nid, nursery):
            s = await mdt_session(nursery, nid)
            f = (await ok(s, C.MDS_REINT, _create_with(name=b"kept"))).body["attr"]
            await ok(s, C.MDS_REINT, {"op": C.REINT_MKDIR, "cred": ROOT_CRED, "parent": 1,
                                       "name": b"kept-dir", "mode": 0o755})
            await s.close()
        async with serving(mdt_server(tmp_path / "mdt")) as (nid, nursery):
            s = await mdt_session(nursery, nid)
            assert s.server["instance"] == 2
            r = await ok(s, C.MDS_GETATTR_NAME, {"cred": ROOT_CRED, "parent": 1,
                                                  "name": b"kept"})
            assert r.body["attr"]["ino"] == f["ino"]
            assert r.body["attr"]["layout"] == f["layout"]
            r = await ok(s, C.MDS_READPAGE, {"cred": ROOT_CRED, "ino": 1})
            assert sorted(e[0] for e in r.body["entries"]) == [b"kept", b"kept-dir"]
            await s.close()

    run(main)


# -- MGS -------------------------------------------------------------------------------------------

async def mgs_session(nursery: trio.Nursery, nid: Nid) -> Session:
    return await Session.open(nursery, [nid], target=MGS_NAME, connect_opc=C.MGS_CONNECT,
                              timeout=5)


def test_mgs_registration_and_config(tmp_path: Path) -> None:
    async def main() -> None:
        mgs = MgsServer(FS, str(tmp_path / "mgs"), stripe_count=2, stripe_size=2 << 20)
        async with serving(mgs) as (nid, nursery):
            s = await mgs_session(nursery, nid)
            cfg = (await ok(s, C.MGS_CONFIG_READ)).body
            assert cfg == {"fsname": FS, "stripe_count": 2, "stripe_size": 2 << 20,
                           "targets": []}
            r = await ok(s, C.MGS_TARGET_REG, {
                "name": OST_NAME, "kind": "ost", "index": 0, "nid": "127.0.0.1:1234",
                "failover_nids": ["127.0.0.1:1235", "127.0.0.1:1234"], "instance": 3})
            assert r.body == {"fsname": FS}
            await ok(s, C.MGS_TARGET_REG, {"name": MDT_NAME, "kind": "mdt", "index": 0,
                                            "nid": "127.0.0.1:2000"})
            cfg = (await ok(s, C.MGS_CONFIG_READ)).body
            assert cfg["targets"] == [
                {"name": MDT_NAME, "kind": "mdt", "index": 0, "nids": ["127.0.0.1:2000"],
                 "instance": 0},
                {"name": OST_NAME, "kind": "ost", "index": 0,
                 "nids": ["127.0.0.1:1234", "127.0.0.1:1235"], "instance": 3},
            ]
            # a failover partner takes over: its NID goes first
            await ok(s, C.MGS_TARGET_REG, {
                "name": OST_NAME, "kind": "ost", "index": 0, "nid": "127.0.0.1:1235",
                "failover_nids": ["127.0.0.1:1234"], "instance": 4})
            cfg = (await ok(s, C.MGS_CONFIG_READ)).body
            ost = [t for t in cfg["targets"] if t["name"] == OST_NAME][0]
            assert ost["nids"] == ["127.0.0.1:1235", "127.0.0.1:1234"]
            assert ost["instance"] == 4
            cfg = (await ok(s, C.MGS_CONFIG_READ)).body
            assert [t["name"] for t in cfg["targets"]] == [MDT_NAME, OST_NAME]
            await s.close()
        # the configuration survives a restart
        async with serving(MgsServer(FS, str(tmp_path / "mgs"))) as (nid, nursery):
            s = await mgs_session(nursery, nid)
            cfg = (await ok(s, C.MGS_CONFIG_READ)).body
            assert [t["name"] for t in cfg["targets"]] == [MDT_NAME, OST_NAME]
            assert cfg["stripe_count"] == 2
            await s.close()

    run(main)


BAD_REGISTRATIONS = [({"kind": "client"}, errno.EINVAL),
                     ({"index": 2}, errno.EINVAL),  # does not match the name
                     ({"index": 70000}, errno.EINVAL),
                     ({"index": -1}, errno.EINVAL),
                     ({"index": "1"}, errno.EINVAL),
                     ({"name": "other-OST0001"}, errno.EINVAL),
                     ({"name": 5}, errno.EINVAL),
                     ({"nid": None}, errno.EINVAL),
                     ({"nid": "no-port"}, errno.EINVAL),
                     ({"failover_nids": "h:2"}, errno.EINVAL),
                     ({"failover_nids": ["h:2", 5]}, errno.EINVAL),
                     ({"failover_nids": ["h:2", "h:0"]}, errno.EINVAL),
                     ({"instance": "1"}, errno.EINVAL)]


@pytest.mark.parametrize("over,code", BAD_REGISTRATIONS, ids=[str(o) for o, _ in BAD_REGISTRATIONS])
@pytest.mark.parametrize("target", ["new", "registered"])
def test_refused_registration_changes_nothing(tmp_path: Path, over: dict, code: int,
                                              target: str) -> None:
    """BUG (for failover_nids and instance): MgsServer.target_reg creates the target's
    entry (setdefault) and sets its "nids" before it checks "failover_nids" and
    "instance". A refused registration therefore leaves a target with no NIDs in the
    configuration clients read, or replaces a registered target's NIDs with the refused
    request's, and the next successful registration persists it:

        TARGET_REG {"name": "wire-OST0001", "kind": "ost", "index": 1, "nid": "h:9",
                    "failover_nids": "h:2"}          -> EINVAL
        CONFIG_READ -> targets include {"name": "wire-OST0001", ..., "nids": []}
        TARGET_REG {"name": "wire-OST0000", ... "nid": "evil:1", "instance": "x"} -> EINVAL
        CONFIG_READ -> wire-OST0000 now has nids ["evil:1"]"""

    async def main() -> None:
        async with serving(MgsServer(FS, str(tmp_path / "mgs"))) as (nid, nursery):
            s = await mgs_session(nursery, nid)
            await ok(s, C.MGS_TARGET_REG, {"name": f"{FS}-OST0001", "kind": "ost", "index": 1,
                                           "nid": "h:1", "failover_nids": ["h:2"],
                                           "instance": 1})
            before = (await ok(s, C.MGS_CONFIG_READ)).body
            base = {"name": f"{FS}-OST000{2 if target == 'new' else 1}", "kind": "ost",
                    "index": 2 if target == "new" else 1, "nid": "evil:666"}
            body = {**base, **over}
            if over.get("index") == 2 and target == "new":
                body["index"] = 3
            r = await raw_call(s, C.MGS_TARGET_REG, body)
            assert r.status == code
            assert (await ok(s, C.MGS_CONFIG_READ)).body == before
            await s.close()

    run(main)


def test_mgs_refuses_another_filesystems_storage(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(MgsServer(FS, str(tmp_path / "mgs"))) as (nid, nursery):
            s = await mgs_session(nursery, nid)
            await ok(s, C.MGS_TARGET_REG, {"name": OST_NAME, "kind": "ost", "index": 0,
                                            "nid": "h:1"})
            await s.close()
        other = MgsServer("other", str(tmp_path / "mgs"))
        with pytest.raises(OSError):
            other.open_storage()
        other.close_storage()

    run(main)


def test_targets_register_with_the_mgs_on_start(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(MgsServer(FS, str(tmp_path / "mgs"))) as (mgs_nid, nursery):
            ost = ost_server(tmp_path / "ost", mgs=[mgs_nid], failover_nids=["127.0.0.1:9"])
            async with serving(ost) as (ost_nid, _):
                s = await mgs_session(nursery, mgs_nid)
                cfg = (await ok(s, C.MGS_CONFIG_READ)).body
                assert cfg["targets"] == [{"name": OST_NAME, "kind": "ost", "index": 0,
                                           "nids": [str(ost_nid), "127.0.0.1:9"],
                                           "instance": 1}]
                await s.close()
                await ost_still_serves(nursery, ost_nid)

    run(main)
