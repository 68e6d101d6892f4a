"""Privacy mode (encrypted frames) over real TCP on 127.0.0.1 and over socket pairs:
servers and Sessions in both releases, a mode mismatch refused with a clear error
on both sides, ciphertext on the wire, and hostile frames closing the connection."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio
from test_auth_wire import (
    _connect_frame,
    ost_server,
    ost_session,
    still_serves,
    tagged_reply,
    until_closed,
)
from wire_helpers import run, serving

from mlustre.protocol import constants as C
from mlustre.protocol.aead import TAG_BYTES, FrameMac
from mlustre.protocol.auth import FsKey
from mlustre.protocol.errors import AuthError
from mlustre.protocol.rpc import Endpoint
from mlustre.protocol.secure import client_handshake

PRIVATE = FsKey(os.urandom(32), privacy=True)
INTEGRITY = FsKey(bytes(PRIVATE))  # the same secret in the other mode

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


@pytest.mark.parametrize("release", ["2.0", "1.8"])
def test_privacy_both_releases(tmp_path: Path, release: str) -> None:
    """The security layer is below the release: a 2.0 and a 1.8 client both talk to
    a privacy server of either release."""
    server = ost_server(tmp_path, key=PRIVATE, release=release)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            await still_serves(nursery, nid, release="1.8", key=PRIVATE)
            await still_serves(nursery, nid, release="2.0", key=PRIVATE)
    run(main)
    assert server.stats["auth_ok"] == 2 and "auth_mac_failures" not in server.stats


@pytest.mark.parametrize("server_key,client_key,says", [
    (PRIVATE, INTEGRITY, "server uses privacy mode and this side integrity mode"),
    (INTEGRITY, PRIVATE, "server uses integrity mode and this side privacy mode")],
    ids=["privacy-server", "integrity-server"])  # (random keys: ids the same in every worker)
def test_mode_mismatch_refused(tmp_path: Path, server_key: bytes, client_key: bytes,
                               says: str) -> None:
    server = ost_server(tmp_path, key=server_key)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            t0 = trio.current_time()
            with pytest.raises(AuthError, match=says):
                await ost_session(nursery, nid, key=client_key)
            assert trio.current_time() - t0 < 2
    run(main)
    assert server.stats["auth_refused"] == 1 and "auth_ok" not in server.stats


@pytest.mark.parametrize("attack", ["tampered", "untagged", "replayed", "integrity"])
def test_bad_privacy_frames_close_the_connection(tmp_path: Path, attack: str) -> None:
    server = ost_server(tmp_path, key=PRIVATE)

    async def main() -> None:
        async with serving(server) as (nid, nursery):
            stream = await trio.open_tcp_stream(nid.host, nid.port)
            mac = await client_handshake(stream, PRIVATE, peer="test")
            good = mac.seal_frame(_connect_frame(1))
            await stream.send_all(good)  # a proper request is answered...
            reply = mac.open_frame(await tagged_reply(stream))
            assert reply is not None and b"OST" in reply
            frame = _connect_frame(2)
            if attack == "tampered":
                bad = bytearray(mac.seal_frame(frame))
                bad[-TAG_BYTES - 3] ^= 1
            elif attack == "untagged":
                bad = bytearray(frame + bytes(TAG_BYTES))
            elif attack == "replayed":
                bad = bytearray(good)
            else:  # the frame in clear, tagged as integrity mode would
                bad = bytearray(frame + FrameMac(os.urandom(32), os.urandom(32)).seal(frame))
            await stream.send_all(bytes(bad))
            assert await until_closed(stream) == b""  # ...a bad one closes, unanswered
            await still_serves(nursery, nid, key=PRIVATE)
            await stream.aclose()
    run(main)
    assert server.stats["auth_mac_failures"] == 1


def _socketpair() -> tuple[trio.SocketStream, trio.SocketStream]:
    s1, s2 = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(s1), trio.SocketStream(s2)


def test_wire_carries_ciphertext() -> None:
    """What an Endpoint in privacy mode writes holds neither header nor bulk in clear,
    and is exactly the frame sealed in order."""
    marker = b"bulk-in-clear!" * 10_000

    async def main() -> None:
        sa, sb = _socketpair()
        k1, k2 = os.urandom(32), os.urandom(32)
        a = Endpoint(sa, name="a", mac=FrameMac(k1, k2, privacy=True))
        peer = FrameMac(k2, k1, privacy=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            async def send() -> None:
                await a.call(C.OST_WRITE, {"secret": "header-in-clear"}, bulk=marker)
            nursery.start_soon(send)
            data = b""
            with trio.fail_after(5):
                while len(data) < 8 or len(data) < 8 + sum(
                        int.from_bytes(data[i:i + 4], "big") for i in (0, 4)) + TAG_BYTES:
                    data += await sb.receive_some(1 << 20)
            assert b"header-in-clear" not in data and b"bulk-in-clear!" not in data
            plain = peer.open_frame(data)
            assert plain is not None and plain.endswith(marker) and b"header-in-clear" in plain
            nursery.cancel_scope.cancel()
    run(main)
