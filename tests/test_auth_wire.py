"""Authenticated connections over real TCP on 127.0.0.1: secure servers, Sessions,
imports and server-to-server links with the filesystem key, and hostile peers (no
key, a wrong key, injected, altered and replayed frames). After each hostile case a
well-behaved client must still be served."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from wire_helpers import run, serving

from mlustre.fuse_client.imports import Import
from mlustre.protocol import constants as C
from mlustre.protocol.auth import TAG_BYTES
from mlustre.protocol.codec import PREFIX, Codec18, Codec20, FrameDecoder, decode_payload
from mlustre.protocol.errors import AuthError
from mlustre.protocol.message import Message
from mlustre.protocol.nid import Nid
from mlustre.protocol.rpc import Endpoint
from mlustre.protocol.secure import client_handshake
from mlustre.protocol.session import Session
from mlustre.servers.mgs import MgsServer
from mlustre.servers.ost import OstServer

FS = "auth"
OST = f"{FS}-OST0000"
KEY = os.urandom(32)
OTHER = os.urandom(32)

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


def ost_server(path: Path, key: bytes | None = KEY, **kw: Any) -> OstServer:
    return OstServer(FS, 0, str(path), commit_interval=3600.0, auth_key=key, **kw)


async def ost_session(nursery: trio.Nursery, nid: Nid, key: bytes | None = KEY,
                      **kw: Any) -> Session:
    return await Session.open(nursery, [nid], target=OST, connect_opc=C.OST_CONNECT,
                              timeout=5, key=key, **kw)


async def still_serves(nursery: trio.Nursery, nid: Nid, release: str = "2.0",
                       key: bytes = KEY) -> None:
    """A client with the key connects, writes, reads back (small, middle and large
    bulks: in the header's frame, apart, and apart in a worker thread)."""
    s = await ost_session(nursery, nid, release=release, key=key)
    assert s.endpoint.mac is not None
    assert s.endpoint.mac.privacy == getattr(key, "privacy", False)
    for size in (100, 70_000, 3 << 20):
        payload = os.urandom(size)
        w = await s.endpoint.call(C.OST_WRITE, {"oid": 7, "offset": 0}, bulk=payload,
                                  timeout=5)
        assert w.status == 0
        r = await s.endpoint.call(C.OST_READ, {"oid": 7, "offset": 0, "length": size},
                                  timeout=5)
        assert r.status == 0 and r.bulk == payload
    await s.close()


async def until_closed(stream: trio.SocketStream, timeout: float = 5.0) -> bytes:
    """Every byte the server sends until it closes the connection."""
    out = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                return out
            if not data:
                return out
            out += data


async def tagged_reply(stream: trio.SocketStream) -> bytes:
    """One whole frame and its tag."""
    buf = b""
    with trio.fail_after(5):
        while len(buf) < 8 or len(buf) < 8 + sum(PREFIX.unpack(buf[:8])) + TAG_BYTES:
            buf += await stream.receive_some(1 << 16)
    assert len(buf) == 8 + sum(PREFIX.unpack(buf[:8])) + TAG_BYTES
    return buf


@pytest.mark.parametrize("release", ["2.0", "1.8"])
def test_handshake_ok_both_releases(tmp_path: Path, release: str) -> None:
    server = ost_server(tmp_path, release=release)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            await still_serves(nursery, nid, release="1.8" if release == "2.0" else "2.0")
            await still_serves(nursery, nid, release=release)
    run(main)
    assert server.stats["auth_ok"] == 2
    assert "auth_refused" not in server.stats


def test_wrong_key_refused(tmp_path: Path) -> None:
    server = ost_server(tmp_path)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            t0 = trio.current_time()
            with pytest.raises(AuthError, match=f"authentication with {OST} at .* failed: "
                                                "wrong key"):
                await ost_session(nursery, nid, key=OTHER)
            assert trio.current_time() - t0 < 2
            await still_serves(nursery, nid)
    run(main)
    assert server.stats["auth_refused"] == 1


@pytest.mark.parametrize("release", ["2.0", "1.8"])
def test_missing_key_refused(tmp_path: Path, release: str) -> None:
    server = ost_server(tmp_path)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            with pytest.raises(AuthError, match="requires authentication"):
                await ost_session(nursery, nid, key=None, release=release)
            await still_serves(nursery, nid)
    run(main)
    assert server.stats["auth_refused"] == 1
    assert server.stats["req.OST_CONNECT"] == 1  # only the good client's reached a handler


def test_unauthenticated_request_gets_one_error_then_close(tmp_path: Path) -> None:
    """Whatever a plain client sends first (here a ping, which an insecure server answers
    even before connect), it gets one ERR EACCES under its xid, in its release, and the
    connection closes."""
    server = ost_server(tmp_path)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            for codec in (Codec20(), Codec18()):
                stream = await trio.open_tcp_stream(nid.host, nid.port)
                await stream.send_all(codec.encode(Message.request(C.OBD_PING, 77)))
                data = await until_closed(stream)
                dec = FrameDecoder()
                dec.feed(data)
                frame = dec.next_frame()
                assert frame is not None and dec.next_frame() is None
                msg, got = decode_payload(frame.header, frame.bulk)
                assert got.release == codec.release
                assert (msg.type, msg.xid, msg.status) == (C.ERR, 77, errno.EACCES)
                assert "requires authentication" in msg.body["error"]
                await stream.aclose()
            await still_serves(nursery, nid)
    run(main)


def test_secure_client_refuses_insecure_server(tmp_path: Path) -> None:
    server = ost_server(tmp_path, key=None)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            with pytest.raises(AuthError, match="does not use authentication"):
                await ost_session(nursery, nid)
            s = await ost_session(nursery, nid, key=None)  # insecure clusters as before
            await s.close()
    run(main)


def test_silent_peer_times_out_without_harm(tmp_path: Path) -> None:
    server = ost_server(tmp_path)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            stream = await trio.open_tcp_stream(nid.host, nid.port)
            await stream.send_all(b"\x93MLA")  # half a magic, then nothing
            await still_serves(nursery, nid)
            await stream.aclose()
    run(main)


async def _handshaken(nid: Nid) -> tuple[trio.SocketStream, Any]:
    stream = await trio.open_tcp_stream(nid.host, nid.port)
    return stream, await client_handshake(stream, KEY, peer="test")


def _connect_frame(xid: int) -> bytes:
    return Codec20().encode(Message.request(C.OST_CONNECT, xid, {
        "uuid": "raw", "target": OST, "release": "2.0", "flags": 0}))


@pytest.mark.parametrize("attack", ["tampered", "untagged", "replayed", "wrong_key_tag"])
def test_bad_frames_close_the_connection(tmp_path: Path, attack: str) -> None:
    server = ost_server(tmp_path)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            stream, mac = await _handshaken(nid)
            good = _connect_frame(1)
            tag = mac.seal(good)
            await stream.send_all(good + tag)  # a proper request is answered...
            await tagged_reply(stream)
            frame = _connect_frame(2)
            if attack == "tampered":  # one bit of the header flipped
                bad = bytearray(frame + mac.seal(frame))
                bad[-TAG_BYTES - 3] ^= 1
            elif attack == "untagged":  # injected by someone without the session key
                bad = bytearray(frame + bytes(TAG_BYTES))
            elif attack == "replayed":
                bad = bytearray(good + tag)
            else:
                from mlustre.protocol.auth import FrameMac

                bad = bytearray(frame + FrameMac(OTHER, OTHER).seal(frame))
            await stream.send_all(bytes(bad))
            assert await until_closed(stream) == b""  # ...a bad one closes, unanswered
            await still_serves(nursery, nid)
            await stream.aclose()
    run(main)
    assert server.stats["auth_mac_failures"] == 1


def test_tampered_reply_closes_client_side() -> None:
    """Both directions are checked: a client endpoint drops a forged reply and its
    waiting call ends with ConnectionLost (not a wrong answer)."""
    from mlustre.protocol.auth import FrameMac
    from mlustre.protocol.errors import ConnectionLost

    async def main() -> None:
        sa, sb = _socketpair()
        k1, k2 = os.urandom(32), os.urandom(32)
        a = Endpoint(sa, name="a", mac=FrameMac(k1, k2))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)

            async def forge() -> None:
                data = await sb.receive_some(1 << 16)
                msg, _ = decode_payload(data[8:len(data) - TAG_BYTES])
                frame = Codec20().encode(msg.reply({"forged": True}))
                await sb.send_all(frame + FrameMac(k1, k1).seal(frame))
            nursery.start_soon(forge)
            with pytest.raises(ConnectionLost):
                await a.call(C.OBD_PING, {}, timeout=5)
            assert a.mac_failures == 1
            nursery.cancel_scope.cancel()
    run(main)


def _socketpair() -> tuple[trio.SocketStream, trio.SocketStream]:
    import socket

    s1, s2 = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(s1), trio.SocketStream(s2)


@pytest.mark.parametrize("privacy", [False, True])
def test_bidirectional_concurrent_calls_keep_sequence(privacy: bool) -> None:
    """Many concurrent calls both ways, small and large bulks (fast path, partial sends
    under the send lock): every tag verifies, so sequence numbers follow wire order;
    in privacy mode every frame also decrypts to what was sent."""
    from mlustre.protocol.auth import FrameMac

    async def echo(ep: Endpoint, msg: Message) -> Message:
        return msg.reply(dict(msg.body), bulk=msg.bulk)

    async def main() -> None:
        sa, sb = _socketpair()
        k1, k2 = os.urandom(32), os.urandom(32)
        a = Endpoint(sa, name="a", handler=echo, mac=FrameMac(k1, k2, privacy=privacy))
        b = Endpoint(sb, name="b", handler=echo, mac=FrameMac(k2, k1, privacy=privacy))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)

            async def one(ep: Endpoint, i: int) -> None:
                payload = os.urandom([10, 70_000, 300_000, 2 << 20][i % 4])
                r = await ep.call(C.OBD_PING, {"i": i}, bulk=payload, timeout=10)
                assert r.body == {"i": i} and r.bulk == payload

            async with trio.open_nursery() as calls:
                for i in range(60):
                    calls.start_soon(one, a if i % 2 else b, i)
            assert a.mac_failures == b.mac_failures == 0
            nursery.cancel_scope.cancel()
    run(main, limit=60)


def test_import_wrong_key_fails_fast(tmp_path: Path) -> None:
    """A mount must not wait out its timeout for a key that will never be right."""
    server = ost_server(tmp_path)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            for key in (OTHER, None):
                imp = Import(OST, [nid], connect_opc=C.OST_CONNECT, client_uuid="c1", key=key)
                t0 = trio.current_time()
                with pytest.raises(AuthError, match="authentication with"):
                    await imp.connect(nursery, first_timeout=15)
                assert trio.current_time() - t0 < 3
            imp = Import(OST, [nid], connect_opc=C.OST_CONNECT, client_uuid="c2", key=KEY)
            await imp.connect(nursery, first_timeout=5)
            await imp.close(C.OST_DISCONNECT)
    run(main)


def test_server_links_use_the_key(tmp_path: Path) -> None:
    """A secure OST registers with a secure MGS; one with another key does not start."""
    mgs = MgsServer(FS, str(tmp_path / "mgs"), auth_key=KEY)

    async def main() -> None:
        async with serving(mgs) as (nid, _nursery):
            ost = ost_server(tmp_path / "ost", mgs=[nid])
            async with serving(ost):
                assert OST in mgs.config["targets"]
            bad = OstServer(FS, 1, str(tmp_path / "ost1"), auth_key=OTHER, mgs=[nid])
            with pytest.raises(BaseException) as info:
                async with serving(bad):
                    pass
            assert "wrong key" in repr(info.value)
    run(main)
