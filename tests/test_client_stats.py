"""The client's per-operation counters (lctl get_param llite.*.stats, mdc.*.stats,
osc.*.stats): FUSE requests counted by the wrapper every handler passes (fuse_errors),
RPCs counted by the import per opcode, and how both are printed."""

from __future__ import annotations

import errno
from pathlib import Path

import pyfuse3
import pytest
import trio
from wire_helpers import OST_NAME, ost_server, run

from mlustre.fuse_client.admin import llite_stat_lines, rpc_stat_lines
from mlustre.fuse_client.boundary import OpStats, fuse_errors
from mlustre.fuse_client.imports import Import
from mlustre.protocol import constants as C
from mlustre.protocol.errors import RpcError
from mlustre.protocol.nid import Nid


class Handlers:
    """Handlers named as pyfuse3's, wrapped as FuseOps' are."""

    def __init__(self) -> None:
        self.op_stats = OpStats()

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return b"x" * size

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return len(buf) - 1  # a short write: the bytes written are what counts

    @fuse_errors
    async def release(self, fh: int) -> None:
        pass

    @fuse_errors
    async def getattr(self, inode: int) -> None:
        raise RpcError(errno.ENOENT)


def test_every_wrapped_request_is_counted_by_its_llite_name() -> None:
    h = Handlers()

    async def main() -> None:
        for size in (10, 4096, 100):
            await h.read(1, 0, size)
        await h.write(1, 0, b"abcd")
        await h.release(1)
        with pytest.raises(pyfuse3.FUSEError):
            await h.getattr(5)

    trio.run(main)
    assert h.op_stats.calls == {"read_bytes": 3, "write_bytes": 1, "close": 1, "getattr": 1}
    assert h.op_stats.moved == {"read_bytes": [10, 4096, 4206], "write_bytes": [3, 3, 3]}


def test_a_failed_read_counts_as_a_request_not_as_bytes() -> None:
    stats = OpStats()

    class Failing:
        op_stats = stats

        @fuse_errors
        async def read(self, fh: int, off: int, size: int) -> bytes:
            raise RpcError(errno.EIO)

    with pytest.raises(pyfuse3.FUSEError):
        trio.run(Failing().read, 1, 0, 10)
    assert stats.calls == {"read_bytes": 1} and stats.moved == {}


def test_functions_without_op_stats_are_wrapped_as_before() -> None:
    async def plain(n: int) -> int:
        return n + 1

    assert trio.run(fuse_errors(plain), 1) == 2


def test_llite_stats_lines() -> None:
    stats = OpStats()
    for name in ("lookup", "lookup", "create", "read_bytes"):
        stats.count(name)
    stats.add_bytes("read_bytes", 512)
    stats.count("write_bytes")  # (failed: no bytes)
    lines = llite_stat_lines({"md_rpcs": 7, "md_cache_hits": 0}, stats)
    assert [line.split() for line in lines] == [
        ["create", "1", "samples", "[reqs]"],
        ["lookup", "2", "samples", "[reqs]"],
        ["md_cache_hits", "0", "samples", "[events]"],
        ["md_rpcs", "7", "samples", "[events]"],
        ["read_bytes", "1", "samples", "[bytes]", "512", "512", "512"],
        ["write_bytes", "1", "samples", "[bytes]", "0", "0", "0"],
    ]


def test_rpc_stats_lines_name_opcodes_as_the_servers_do() -> None:
    imp = Import(OST_NAME, [], connect_opc=C.OST_CONNECT, client_uuid="c")
    assert rpc_stat_lines(imp) == []
    imp.sent = {C.OST_WRITE: 3, C.LDLM_ENQUEUE: 2, 9999: 1}
    imp.conn_cnt, imp.pings = 1, 4
    assert [line.split()[:2] for line in rpc_stat_lines(imp)] == [
        ["req.9999", "1"], ["req.LDLM_ENQUEUE", "2"], ["req.OBD_PING", "4"],
        ["req.OST_CONNECT", "1"], ["req.OST_WRITE", "3"]]
    assert all(line.endswith("samples [reqs]") for line in rpc_stat_lines(imp))


def test_the_import_counts_each_request_it_sends(tmp_path: Path) -> None:
    """A real OST: what Import.call sent is counted once per request, failed ones too,
    and matches what the OST counted as received."""

    async def main() -> None:
        async with trio.open_nursery() as outer:
            server = ost_server(tmp_path)
            nid = Nid.parse(await outer.start(server.run))
            imp = Import(OST_NAME, [nid], connect_opc=C.OST_CONNECT, client_uuid="c-stats",
                         ping_interval=3600.0)
            await imp.connect(outer)
            await imp.call(C.OST_WRITE, {"oid": 77, "offset": 0}, bulk=b"hello")
            for _ in range(2):
                await imp.call(C.OST_READ, {"oid": 77, "offset": 0, "length": 5})
            with pytest.raises(RpcError):
                await imp.call(C.OST_READ, {"oid": "bad", "offset": 0, "length": 5})
            assert imp.sent == {C.OST_WRITE: 1, C.OST_READ: 3}
            assert server.stats.get("req.OST_READ") == 3
            assert server.stats.get("req.OST_WRITE") == 1
            await imp.close(C.OST_DISCONNECT)
            server.stop()
            outer.cancel_scope.cancel()

    run(main)
