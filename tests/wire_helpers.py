"""Helpers of the unit tests that talk to real servers over TCP in this process (not a
test module: the tests import from it). The trio `run` helper, servers on 127.0.0.1
(`serving`), well-behaved sessions and raw connections, an MDC client. The fixture that
quiets the servers' logs is `quiet_server_logs` in tests/conftest.py.
"""

from __future__ import annotations

import random
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from mlustre.fuse_client.mdc import Mdc
from mlustre.fuse_client.target_link import TargetLink
from mlustre.protocol import constants as C
from mlustre.protocol.codec import Codec20, FrameDecoder, decode_payload
from mlustre.protocol.errors import RpcError
from mlustre.protocol.message import Message
from mlustre.protocol.nid import Nid
from mlustre.protocol.rpc import Endpoint, connect_stream
from mlustre.protocol.session import Session
from mlustre.servers.mdt.server import MdtServer
from mlustre.servers.ost import OstServer
from mlustre.servers.target import TargetServer

LIMIT = 20.0
FS = "wire"
OST_NAME = f"{FS}-OST0000"
MDT_NAME = f"{FS}-MDT0000"
MGS_NAME = f"{FS}-MGS"
ROOT_CRED = [0, 0, []]
FILE_MODE = stat.S_IFREG | 0o644


def run(afn: Callable[[], Awaitable[Any]], limit: float = LIMIT) -> None:
    """Run the async test body afn in a fresh trio loop, failing after `limit` seconds
    (the one such helper of the unit tests: modules with another bound use
    functools.partial(run, limit=...))."""

    async def main() -> None:
        with trio.fail_after(limit):
            await afn()

    trio.run(main)


@asynccontextmanager
async def serving(server: TargetServer) -> AsyncIterator[tuple[Nid, trio.Nursery]]:
    """Run server until the block ends (then stop it gracefully); yields its NID and a
    nursery for client tasks."""
    async with trio.open_nursery() as clients:
        async with trio.open_nursery() as srv:
            nid = await srv.start(server.run)
            try:
                yield Nid.parse(nid), clients
            finally:
                server.stop()
        clients.cancel_scope.cancel()


def ost_server(path: Path, **kw: Any) -> OstServer:
    kw.setdefault("commit_interval", 3600.0)  # commits only when asked (OST_SYNC, stop)
    return OstServer(FS, 0, str(path), **kw)


def mdt_server(path: Path, **kw: Any) -> MdtServer:
    kw.setdefault("commit_interval", 3600.0)
    return MdtServer(FS, 0, str(path), **kw)


async def ost_session(nursery: trio.Nursery, nid: Nid, **kw: Any) -> Session:
    return await Session.open(nursery, [nid], target=OST_NAME, connect_opc=C.OST_CONNECT,
                              timeout=5, **kw)


async def mdt_session(nursery: trio.Nursery, nid: Nid, **kw: Any) -> Session:
    return await Session.open(nursery, [nid], target=MDT_NAME, connect_opc=C.MDS_CONNECT,
                              timeout=5, **kw)


async def ok(s: Session, opc: int, body: dict | None = None, **kw: Any) -> Message:
    """A request that must succeed (Session.call, with bulk)."""
    reply = await s.endpoint.call(opc, body, timeout=5, **kw)
    if reply.status:
        raise RpcError(reply.status, str(reply.body.get("error", "")))
    return reply


async def raw_call(s: Session, opc: int, body: dict | None = None, **kw: Any) -> Message:
    """A request whose reply status is returned, not raised."""
    return await s.endpoint.call(opc, body, timeout=5, **kw)


async def unconnected(nursery: trio.Nursery, nid: Nid, release: str = "2.0") -> Endpoint:
    ep = Endpoint(await connect_stream(nid.host, nid.port), codec=release, name="raw-ep")
    await nursery.start(ep.serve)
    return ep


class RawConn:
    """A TCP connection that speaks bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    @classmethod
    async def open(cls, nid: Nid) -> RawConn:
        return cls(await trio.open_tcp_stream(nid.host, nid.port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, msg: Message, codec: Any = None) -> None:
        await self.send((codec or Codec20()).encode(msg))

    async def recv(self, timeout: float = 5.0) -> tuple[Message, str] | None:
        """The next message and its release; None when the server closed the connection."""
        with trio.fail_after(timeout):
            while True:
                got = self.decoder.next_frame()
                if got is not None:
                    msg, codec = decode_payload(got.header, got.bulk)
                    return msg, codec.release
                try:
                    data = await self.stream.receive_some(1 << 16)
                except trio.BrokenResourceError:  # reset by the server
                    return None
                if not data:
                    return None
                self.decoder.feed(data)

    async def recv_until_closed(self, timeout: float = 5.0) -> list[Message]:
        out = []
        while (got := await self.recv(timeout)) is not None:
            out.append(got[0])
        return out

    async def close(self) -> None:
        await self.stream.aclose()


async def ost_still_serves(nursery: trio.Nursery, nid: Nid, oid: int = 4242) -> None:
    """A well-behaved client connects, writes, reads back and disconnects."""
    with trio.fail_after(5):
        s = await ost_session(nursery, nid)
        payload = f"alive {random.random()}".encode()
        w = await ok(s, C.OST_WRITE, {"oid": oid, "offset": 0}, bulk=payload)
        assert w.transno > 0
        r = await ok(s, C.OST_READ, {"oid": oid, "offset": 0, "length": len(payload)})
        assert r.bulk == payload
        await ok(s, C.OST_DISCONNECT)
        await s.close()


# -- an MDC (the client's metadata requests) --------------------------------------------------

ROOT = 1  # the root directory's inode
CRED = [0, 0, []]


@asynccontextmanager
async def mdc(nursery: trio.Nursery, nid: Nid, name: str = "a") -> AsyncIterator[Mdc]:
    m = TargetLink(MDT_NAME, "mdt", [nid], client_uuid=f"client-{name}", barrier=False,
                   connect_timeout=1.0, request_timeout=5.0).mdc
    assert m is not None
    await m.imp.connect(nursery)
    try:
        yield m
    finally:
        await m.imp.close()
