"""auth.py - shared-key authentication of connections (sans-IO).

A filesystem has one 32-byte secret key (keyfile.py), as Lustre's shared-secret
keys or cephx's secrets. Before any RPC flows, the connecting side and the server
prove to each other that they hold it, without sending it:

    client -> server  HELLO      MAGIC, client nonce Nc (32 bytes)
    server -> client  CHALLENGE  MAGIC, server nonce Ns (32 bytes)
    client -> server  PROOF      HMAC-SHA256(K, "client" | Nc | Ns)
    server -> client  RESULT     0, HMAC-SHA256(K, "server" | Nc | Ns)  (or a refusal)

The client proves first, so a server never hands its proof to a stranger and can
tell a wrong-key client "wrong key". Both nonces make every connection's proofs
and session keys fresh: a recorded handshake cannot be replayed.

Afterwards every frame (docs/protocol.md "Frames") is followed by a 16-byte tag,
HMAC-SHA256 truncated to 128 bits (as RFC 4868), over the frame's bytes and an
implicit per-direction sequence number, keyed by a per-direction session key
derived from K and both nonces. A frame injected, altered, replayed, reordered or
taken from another connection fails its tag, and the receiver closes the
connection. The data is not encrypted (integrity and authenticity only, like
Lustre's "ski" flavour).

MAGIC read as a frame prefix gives a header length over MAX_HEADER, so a server
that does not authenticate refuses a HELLO with an EMSGSIZE error, and a secure
server recognises a plain frame at once (secure.py drives both ends).
"""

from __future__ import annotations

import hmac
import secrets
import struct
from hashlib import sha256

from .constants import MAX_HEADER
from .errors import AuthError

KEY_BYTES = 32
NONCE_BYTES = 32
PROOF_BYTES = 32
TAG_BYTES = 16
MAGIC = b"\x93MLAUTH\x01"
HELLO_BYTES = CHALLENGE_BYTES = len(MAGIC) + NONCE_BYTES
RESULT_HEAD = struct.Struct(">BH")  # status (0 = accepted), payload length
RESULT_OK = 0
RESULT_REFUSED = 1
_SEQ = struct.Struct(">Q")

assert struct.unpack(">I", MAGIC[:4])[0] > MAX_HEADER  # an insecure peer refuses MAGIC


def _mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, label + b"".join(parts), sha256).digest()


def _check_key(key: bytes) -> bytes:
    if type(key) is not bytes or len(key) != KEY_BYTES:
        raise ValueError(f"a filesystem key is {KEY_BYTES} bytes")
    return key


class FrameMac:
    """Tags for the frames of one authenticated connection, both directions.

    Sequence numbers are implicit (both sides count), so a tag also proves order:
    a replayed or dropped frame makes every later tag fail."""

    __slots__ = ("_send", "_recv", "send_seq", "recv_seq")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        # Keyed once per connection; each frame copies the keyed state (cheaper than
        # re-keying HMAC for every small RPC).
        self._send = hmac.new(send_key, digestmod=sha256)
        self._recv = hmac.new(recv_key, digestmod=sha256)
        self.send_seq = 0
        self.recv_seq = 0

    # A frame's tag is HMAC(K_dir, frame bytes | seq). The sequence number goes last so
    # that the frame's bytes can be hashed ahead (absorb_*, in a worker thread for a
    # large bulk), and the frame's place in the sequence fixed only when it takes the
    # wire (finish_*).
    def absorb_send(self, *parts: bytes | bytearray | memoryview | None) -> hmac.HMAC:
        return self._absorb(self._send, parts)

    def absorb_recv(self, *parts: bytes | bytearray | memoryview | None) -> hmac.HMAC:
        return self._absorb(self._recv, parts)

    @staticmethod
    def _absorb(base: hmac.HMAC, parts: tuple[bytes | bytearray | memoryview | None, ...]
                ) -> hmac.HMAC:
        h = base.copy()
        for part in parts:
            if part:
                h.update(part)
        return h

    def finish_send(self, absorbed: hmac.HMAC) -> bytes:
        """The tag of the next frame sent, whose bytes `absorbed` holds."""
        absorbed.update(_SEQ.pack(self.send_seq))
        self.send_seq += 1
        return absorbed.digest()[:TAG_BYTES]

    def finish_recv(self, absorbed: hmac.HMAC, tag: bytes | bytearray) -> bool:
        """Whether the next frame received carries its tag. A failure is final: the
        caller closes the connection (the sequence cannot be resynchronised)."""
        absorbed.update(_SEQ.pack(self.recv_seq))
        self.recv_seq += 1
        return hmac.compare_digest(absorbed.digest()[:TAG_BYTES], bytes(tag))

    def seal(self, *parts: bytes | bytearray | memoryview | None) -> bytes:
        """The tag of the next frame sent (its bytes in wire order)."""
        return self.finish_send(self.absorb_send(*parts))

    def verify(self, tag: bytes | bytearray,
               *parts: bytes | bytearray | memoryview | None) -> bool:
        """Whether the next frame received (its bytes in wire order) carries tag."""
        return self.finish_recv(self.absorb_recv(*parts), tag)


def _session(key: bytes, nc: bytes, ns: bytes, *, client: bool) -> FrameMac:
    c2s = _mac(key, b"mlustre c2s", nc, ns)
    s2c = _mac(key, b"mlustre s2c", nc, ns)
    return FrameMac(c2s, s2c) if client else FrameMac(s2c, c2s)


def encode_result(status: int, payload: bytes) -> bytes:
    return RESULT_HEAD.pack(status, len(payload)) + payload


class ClientHandshake:
    """The connecting side: hello(), then on_challenge() -> proof, then on_result()."""

    def __init__(self, key: bytes, nonce: bytes | None = None) -> None:
        self.key = _check_key(key)
        self.nonce = nonce or secrets.token_bytes(NONCE_BYTES)
        self.server_nonce = b""

    def hello(self) -> bytes:
        return MAGIC + self.nonce

    def on_challenge(self, data: bytes) -> bytes:
        """The proof to send; AuthError if the peer did not answer as a secure server."""
        if len(data) != CHALLENGE_BYTES or not data.startswith(MAGIC):
            raise AuthError("the server does not use authentication "
                            "(it answered the handshake as an insecure server)")
        self.server_nonce = data[len(MAGIC):]
        return _mac(self.key, b"mlustre client", self.nonce, self.server_nonce)

    def on_result(self, status: int, payload: bytes) -> FrameMac:
        """The connection's MAC state once the server accepted us and proved the key."""
        if status != RESULT_OK:
            raise AuthError(payload.decode(errors="replace") or "refused by the server")
        want = _mac(self.key, b"mlustre server", self.nonce, self.server_nonce)
        if not hmac.compare_digest(payload, want):
            raise AuthError("the server did not prove the filesystem key (not the real server?)")
        return _session(self.key, self.nonce, self.server_nonce, client=True)


class ServerHandshake:
    """The accepting side: on_hello() -> challenge, then on_proof() -> (result, mac)."""

    def __init__(self, key: bytes, nonce: bytes | None = None) -> None:
        self.key = _check_key(key)
        self.nonce = nonce or secrets.token_bytes(NONCE_BYTES)
        self.client_nonce = b""

    @staticmethod
    def is_hello(first: bytes) -> bool:
        """Whether a connection's first bytes (at least len(MAGIC)) begin a handshake."""
        return first[:len(MAGIC)] == MAGIC

    def on_hello(self, data: bytes) -> bytes:
        if len(data) != HELLO_BYTES or not self.is_hello(data):
            raise AuthError("not a handshake")
        self.client_nonce = data[len(MAGIC):]
        return MAGIC + self.nonce

    def on_proof(self, proof: bytes) -> tuple[bytes, FrameMac | None]:
        """The RESULT to send, and the MAC state if the client proved the key (None:
        send the refusal, then close)."""
        want = _mac(self.key, b"mlustre client", self.client_nonce, self.nonce)
        if not hmac.compare_digest(proof, want):
            return encode_result(RESULT_REFUSED, b"wrong key"), None
        mine = _mac(self.key, b"mlustre server", self.client_nonce, self.nonce)
        return (encode_result(RESULT_OK, mine),
                _session(self.key, self.client_nonce, self.nonce, client=False))
