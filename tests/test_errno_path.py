"""How an errno travels from a server to the application (docs/architecture.md):
the FUSE boundary (fuse_errors) takes the errno of the first real failure out of a
trio nursery's exception group; the set-id rule a writer may apply (MDT); the maximum
file size, checked by the client, the MDT and the OSTs before anything changes; the
`errno` fail_loc the mount tests use to make one of several parallel RPCs fail."""

from __future__ import annotations

import errno
import logging
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from mlustre.fuse_client.boundary import (
    buf_within_max,
    first_failure,
    fuse_errors,
    kill_setid,
)
from mlustre.fuse_client.imports import ImportClosed
from mlustre.protocol import constants as C
from mlustre.protocol.errors import RpcError
from mlustre.servers import fail_loc
from mlustre.servers.errors import ServiceError
from mlustre.servers.mdt.store import ROOT_INO, Cred, MdtError, MdtStore

MAX = C.MAX_FILE_SIZE
ROOT = Cred(0, 0)
OWNER = Cred(1000, 1000)
OTHER = Cred(65534, 65534)


# --------------------------------------------------------------------------- fuse_errors


def fuse_errno(afn: Any) -> int:
    """The errno a fuse_errors-wrapped handler running afn gives the kernel."""
    handler = fuse_errors(afn)
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(handler)
    return info.value.errno


async def _fail_after(delay: float, exc: BaseException) -> None:
    await trio.sleep(delay)
    raise exc


def test_plain_errno_failures_pass_through() -> None:
    async def rpc() -> None:
        raise RpcError(errno.EFBIG)

    async def svc() -> None:
        raise ServiceError(errno.EDQUOT)

    async def fuse() -> None:
        raise pyfuse3.FUSEError(errno.ENOENT)

    assert fuse_errno(rpc) == errno.EFBIG
    assert fuse_errno(svc) == errno.EDQUOT
    assert fuse_errno(fuse) == errno.ENOENT


def test_nursery_of_rpcs_reports_the_first_failure_not_eio() -> None:
    """One OST answers EFBIG while the other tasks run on: the nursery cancels them and
    raises a group; the application must see EFBIG (issue 13: it saw EIO)."""
    async def punch_all() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(trio.sleep, 10)  # an OST that is slow: cancelled
            n.start_soon(_fail_after, 0.01, RpcError(errno.EFBIG))
            n.start_soon(trio.sleep, 10)

    assert fuse_errno(punch_all) == errno.EFBIG


def test_two_failures_in_one_nursery_give_an_errno_of_theirs() -> None:
    async def both() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(_fail_after, 0, RpcError(errno.ENOSPC))
            n.start_soon(_fail_after, 0, RpcError(errno.ENOSPC))

    assert fuse_errno(both) == errno.ENOSPC


def test_errno_failure_wins_over_a_bug_in_the_same_group(caplog: Any) -> None:
    group = ExceptionGroup("x", [ValueError("bug"),
                                 ExceptionGroup("y", [RpcError(errno.EDQUOT)])])
    assert isinstance(first_failure(group), RpcError)

    async def raise_it() -> None:
        raise group

    assert fuse_errno(raise_it) == errno.EDQUOT


def test_group_without_errno_is_eio_and_logged(caplog: Any) -> None:
    async def bug() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(_fail_after, 0, ValueError("a bug"))

    with caplog.at_level(logging.ERROR, logger="mlustre.fuse_client.boundary"):
        assert fuse_errno(bug) == errno.EIO
    assert "a bug" in caplog.text


def test_unmounting_is_eio() -> None:
    async def closed() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(_fail_after, 0, ImportClosed("closing"))

    assert fuse_errno(closed) == errno.EIO


def test_fuse_error_inside_a_group_keeps_its_errno() -> None:
    async def inner() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(_fail_after, 0, pyfuse3.FUSEError(errno.ESTALE))

    assert fuse_errno(inner) == errno.ESTALE


def test_cancellation_is_not_turned_into_an_errno() -> None:
    """Cancelled is a BaseException: it must leave the handler as it came."""
    async def main() -> None:
        with trio.move_on_after(0.01) as scope:
            await fuse_errors(trio.sleep_forever)()
        assert scope.cancelled_caught

    trio.run(main)


# --------------------------------------------------------------------------- client rules


def test_writes_stop_at_the_maximum_size() -> None:
    assert buf_within_max(0, b"abc") == b"abc"
    assert buf_within_max(MAX - 3, b"abc") == b"abc"
    assert buf_within_max(MAX - 1, b"ab") == b"a"  # crossing it: short
    for off in (MAX, MAX + 1, 999_999_999_999_999):  # at or beyond it: EFBIG
        with pytest.raises(pyfuse3.FUSEError) as info:
            buf_within_max(off, b"x")
        assert info.value.errno == errno.EFBIG


def test_max_file_size_is_what_ext4_takes() -> None:
    assert MAX == 17_592_186_040_320 == (2**32 - 1) * 4096
    assert MAX < 999_999_999_999_999 < (1 << 62)


@pytest.mark.parametrize(("mode", "after"), [
    (0o4777, 0o777), (0o2777, 0o777), (0o6777, 0o777), (0o2767, 0o2767), (0o6767, 0o2767),
    (0o4755, 0o755), (0o777, 0o777),
])
def test_kill_setid(mode: int, after: int) -> None:
    assert kill_setid(mode) == after


# --------------------------------------------------------------------------- MDT rules


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MdtStore]:
    s = MdtStore(str(tmp_path / "mdt.db"), ost_count=2, clock=time.time_ns)
    yield s
    s.close()


def _file(s: MdtStore, mode: int, owner: Cred = ROOT) -> dict:
    s.setattr(ROOT, ROOT_INO, {"mode": 0o777})
    a = s.create(owner, ROOT_INO, b"f", stat.S_IFREG | 0o600)[1]["attr"]
    return s.setattr(owner, a["ino"], {"mode": mode})[1]


def _errno_of(fn: Any, *args: Any, **kw: Any) -> int:
    with pytest.raises(MdtError) as info:
        fn(*args, **kw)
    return info.value.errno


@pytest.mark.parametrize("mode", [0o4777, 0o2777, 0o6777])
def test_writer_may_clear_setid_bits(store: MdtStore, mode: int) -> None:
    """The kernel asks for the kill-priv mode change as the writer (not the owner)."""
    a = _file(store, mode)
    new = store.setattr(OTHER, a["ino"], {"mode": kill_setid(mode)})[1]
    assert stat.S_IMODE(new["mode"]) == 0o777


def test_writer_through_a_handle_may_clear_setid_bits(store: MdtStore) -> None:
    a = _file(store, 0o4755)  # not writable by others: only an open handle says so
    assert _errno_of(store.setattr, OTHER, a["ino"], {"mode": 0o755}) == errno.EPERM
    new = store.setattr(OTHER, a["ino"], {"mode": 0o755}, via_handle=True)[1]
    assert stat.S_IMODE(new["mode"]) == 0o755


@pytest.mark.parametrize(("mode", "asked"), [
    (0o4777, 0o4777),  # no change is no kill
    (0o4777, 0o776),  # another bit too
    (0o777, 0o4777),  # adding a set-id bit
    (0o2777, 0o6777),
    (0o4777, 0o2777),  # trading one for the other
])
def test_non_owner_chmod_is_still_refused(store: MdtStore, mode: int, asked: int) -> None:
    a = _file(store, mode)
    assert _errno_of(store.setattr, OTHER, a["ino"], {"mode": asked}) == errno.EPERM
    assert stat.S_IMODE(store.getattr(a["ino"])["mode"]) == mode


def test_reader_may_not_clear_setid_bits(store: MdtStore) -> None:
    a = _file(store, 0o4755)
    assert _errno_of(store.setattr, OTHER, a["ino"], {"mode": 0o755}) == errno.EPERM


@pytest.mark.parametrize("size", [MAX + 1, 999_999_999_999_999])
def test_size_past_the_maximum_changes_nothing(store: MdtStore, size: int) -> None:
    a = _file(store, 0o4777, OWNER)
    before = store.getattr(a["ino"])
    for cred in (ROOT, OWNER, OTHER):
        assert _errno_of(store.setattr, cred, a["ino"], {"size": size}) == errno.EFBIG
        assert _errno_of(store.setattr, cred, a["ino"], {"size": size, "mode": 0o777},
                         via_handle=True) == errno.EFBIG
        assert _errno_of(store.write_update, a["ino"], size, 1) == errno.EFBIG
    assert store.getattr(a["ino"]) == before


def test_size_at_the_maximum_is_accepted(store: MdtStore) -> None:
    a = _file(store, 0o644)
    assert store.setattr(ROOT, a["ino"], {"size": MAX})[1]["size"] == MAX
    assert store.write_update(a["ino"], MAX, 5)[1]["size"] == MAX


def test_mdt_statfs_reports_the_maximum(tmp_path: Path) -> None:
    from test_servers_wire import mdt_server, mdt_session, ok, run, serving

    async def main() -> None:
        async with serving(mdt_server(tmp_path / "mdt")) as (nid, nursery):
            s = await mdt_session(nursery, nid)
            assert (await ok(s, C.MDS_STATFS, {})).body["maxbytes"] == MAX
            await s.close()

    run(main)


# --------------------------------------------------------------------------- OST rules


def test_ost_refuses_objects_past_the_maximum(tmp_path: Path) -> None:
    from test_servers_wire import ok, ost_server, ost_session, raw_call, run, serving

    async def main() -> None:
        async with serving(ost_server(tmp_path / "ost")) as (nid, nursery):
            s = await ost_session(nursery, nid)
            await ok(s, C.OST_WRITE, {"oid": 7, "offset": 0}, bulk=b"keep")
            for opc, body, bulk in [
                (C.OST_PUNCH, {"oid": 7, "size": MAX + 1}, None),
                (C.OST_PUNCH, {"oid": 7, "size": 999_999_999_999_999}, None),
                (C.OST_WRITE, {"oid": 7, "offset": MAX}, b"x"),
                (C.OST_WRITE, {"oid": 7, "offset": MAX - 1}, b"xy"),
            ]:
                r = await raw_call(s, opc, body, bulk=bulk)
                assert r.status == errno.EFBIG and r.transno == 0, (opc, body)
            assert (await ok(s, C.OST_GETATTR, {"oid": 7})).body == {"size": 4}
            st = (await ok(s, C.OST_STATFS, {})).body
            assert st["maxbytes"] == MAX
            await s.close()

    run(main)


# --------------------------------------------------------------------------- fail_loc errno


def test_fail_loc_errno_parses() -> None:
    f = fail_loc.parse("errno:OST_PUNCH:ENOSPC:once")
    assert f is not None and (f.action, f.opc, f.err, f.once) == (
        "errno", C.OST_PUNCH, errno.ENOSPC, True)
    assert str(f).startswith("errno:OST_PUNCH:ENOSPC:once")
    f = fail_loc.parse("errno:MDS_REINT:28")
    assert f is not None and f.err == errno.ENOSPC and not f.once
    for bad in ("errno:OST_PUNCH", "errno:OST_PUNCH:ENOTANERRNO", "errno:OST_PUNCH:0"):
        with pytest.raises(fail_loc.FailLocError):
            fail_loc.parse(bad)


def test_fail_loc_errno_fails_the_request_and_changes_nothing(tmp_path: Path) -> None:
    from test_servers_wire import ok, ost_server, ost_session, raw_call, run, serving

    async def main() -> None:
        server = ost_server(tmp_path / "ost")
        async with serving(server) as (nid, nursery):
            s = await ost_session(nursery, nid)
            await ok(s, C.OST_WRITE, {"oid": 3, "offset": 0}, bulk=b"12345")
            server.fail = fail_loc.parse("errno:OST_PUNCH:EDQUOT:once")
            r = await raw_call(s, C.OST_PUNCH, {"oid": 3, "size": 1})
            assert r.status == errno.EDQUOT
            assert (await ok(s, C.OST_GETATTR, {"oid": 3})).body == {"size": 5}
            await ok(s, C.OST_PUNCH, {"oid": 3, "size": 1})  # once: served again
            assert (await ok(s, C.OST_GETATTR, {"oid": 3})).body == {"size": 1}
            await s.close()

    run(main)
