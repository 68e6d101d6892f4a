"""secure.py - the shared-key handshake (auth.py) driven over a trio stream.

Runs on a fresh connection before its Endpoint exists, reading exactly the bytes
of each handshake message, so nothing of the first RPC frame is consumed here.
The FrameMac it returns goes to the Endpoint, which then seals every frame
(aead.py: authenticated, and encrypted when the filesystem's key file says privacy).
"""

from __future__ import annotations

import errno

import trio

from .auth import (
    CHALLENGE_BYTES,
    HELLO_BYTES,
    MAGIC,
    PROOF_BYTES,
    RESULT_HEAD,
    ClientHandshake,
    FrameMac,
    ServerHandshake,
    other_version,
)
from .codec import PREFIX, codec_for, decode_payload
from .constants import ERR, MAX_HEADER
from .errors import AuthError, ConnectionLost, ProtocolError
from .message import Message
from .rpc import connect_stream, salvage_xid

HANDSHAKE_TIMEOUT = 10.0
_BROKEN = (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


async def _exactly(stream: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            raise EOFError
        buf += data
    return bytes(buf)


async def client_handshake(stream: trio.abc.Stream, key: bytes, *, peer: str,
                           timeout: float = HANDSHAKE_TIMEOUT) -> FrameMac:
    """Prove the key to the server and check its proof. AuthError ("authentication
    with PEER failed: why") if either side lacks the key; ConnectionLost if the
    connection breaks or the server does not answer in time."""
    hs = ClientHandshake(key)
    try:
        with trio.fail_after(timeout):
            await stream.send_all(hs.hello())
            first = await _exactly(stream, len(MAGIC))
            if first != MAGIC:  # an insecure (or older) server's EMSGSIZE/EACCES error frame
                raise AuthError(other_version(first) or
                                "the server does not use authentication (or is an mlustre "
                                "from before the AEAD framing)")
            proof = hs.on_challenge(first + await _exactly(stream, CHALLENGE_BYTES - len(MAGIC)))
            await stream.send_all(proof)
            status, n = RESULT_HEAD.unpack(await _exactly(stream, RESULT_HEAD.size))
            return hs.on_result(status, await _exactly(stream, n))
    except AuthError as e:
        raise AuthError(f"authentication with {peer} failed: {e}") from None
    except trio.TooSlowError:
        raise ConnectionLost(f"{peer}: no answer to the authentication handshake "
                             f"within {timeout:g}s") from None
    except _BROKEN as e:
        raise ConnectionLost(f"{peer}: connection lost during the authentication "
                             f"handshake ({e or type(e).__name__})") from None


async def open_connection(host: str, port: int, key: bytes | None, *, peer: str,
                          timeout: float = 5.0) -> tuple[trio.SocketStream, FrameMac | None]:
    """A TCP stream to host:port, authenticated when there is a key (the MAC state for
    its Endpoint). OSError or trio.TooSlowError if it cannot be opened; AuthError or
    ConnectionLost from the handshake."""
    stream = await connect_stream(host, port, timeout)
    if key is None:
        return stream, None
    try:
        return stream, await client_handshake(stream, key, peer=peer, timeout=timeout)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def server_handshake(stream: trio.abc.Stream, key: bytes, *, name: str, release: str,
                           timeout: float = HANDSHAKE_TIMEOUT) -> FrameMac:
    """Check a connecting peer's proof and prove the key to it. A peer that fails is
    told why (a wrong key; or, when it sent a request without a handshake, an ERR
    reply EACCES to that request), then AuthError says why; the caller closes.
    trio.TooSlowError and broken-connection errors pass through."""
    hs = ServerHandshake(key)
    with trio.fail_after(timeout):
        first = await _exactly(stream, len(MAGIC))
        if not hs.is_hello(first):
            why = other_version(first)
            if why is not None:  # (its client reads our MAGIC and says the version differs)
                await stream.send_all(MAGIC)
                raise AuthError(why)
            await _refuse_plain(stream, first, name=name, release=release)
            raise AuthError("a request came without authentication (client has no key)")
        await stream.send_all(hs.on_hello(first + await _exactly(stream, HELLO_BYTES - len(MAGIC))))
        if hs.mode_error is not None:  # (the client reads our mode and says so too)
            raise AuthError(hs.mode_error)
        result, mac = hs.on_proof(await _exactly(stream, PROOF_BYTES))
        await stream.send_all(result)
        if mac is None:
            raise AuthError("the client's proof is wrong (it has another key)")
        return mac


async def _refuse_plain(stream: trio.abc.Stream, prefix: bytes, *, name: str,
                        release: str) -> None:
    """Answer a plain frame: an ERR with EACCES under its xid, in its release, so the
    client's connect call ends at once with a clear reason, not by a timeout."""
    header_len, _bulk_len = PREFIX.unpack(prefix)
    xid, codec = 0, codec_for(release)
    if header_len <= MAX_HEADER:
        header = await _exactly(stream, header_len)
        xid = salvage_xid(header)
        try:
            codec = decode_payload(header)[1]
        except ProtocolError:
            pass
    msg = Message(ERR, 0, xid, status=errno.EACCES,
                  body={"error": f"{name} requires authentication: the client has no key "
                                 f"for this filesystem (--key FILE)"})
    await stream.send_all(codec.encode(msg))
