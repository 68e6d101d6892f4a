"""auth.py - shared-key authentication of connections (sans-IO).

A filesystem has one 32-byte secret key (keyfile.py), as Lustre's shared-secret
keys or cephx's secrets, and a framing mode that goes with it: integrity (frames
authenticated) or privacy (frames also encrypted), see aead.py. Before any RPC
flows, the connecting side and the server prove to each other that they hold the
key, without sending it:

    client -> server  HELLO      MAGIC, client mode M (1 byte), client nonce Nc (32 bytes)
    server -> client  CHALLENGE  MAGIC, server mode, server nonce Ns (32 bytes)
    client -> server  PROOF      HMAC-SHA256(K, "client" | M | Nc | Ns)
    server -> client  RESULT     0, HMAC-SHA256(K, "server" | M | Nc | Ns)  (or a refusal)

The client proves first, so a server never hands its proof to a stranger and can
tell a wrong-key client "wrong key". Both nonces make every connection's proofs
and session keys fresh: a recorded handshake cannot be replayed.

The modes are announced so that a mismatch gets a clear error at once on both
sides; each side only ever uses its own mode (never adopts the peer's: no
downgrade), and the mode is bound into the proofs and the frame keys, so a mode
byte altered on the way fails the handshake.

Afterwards every frame is sealed with AES-GCM under per-direction session keys
derived from K and both nonces (aead.py).

MAGIC read as a frame prefix gives a header length over MAX_HEADER, so a server
that does not authenticate refuses a HELLO with an EMSGSIZE error, and a secure
server recognises a plain frame at once (secure.py drives both ends). Its last
byte is the version of this handshake and framing: 2 since frames are sealed with
AES-GCM (version 1 tagged them with HMAC-SHA256); a peer of another version is
refused with a clear error, never spoken to in a weaker scheme.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from hashlib import sha256

# (TAG_BYTES and FrameMac re-exported: the Endpoint takes them from here)
from .aead import TAG_BYTES as TAG_BYTES
from .aead import FrameMac, session_keys
from .constants import MAX_HEADER
from .errors import AuthError

KEY_BYTES = 32
NONCE_BYTES = 32
PROOF_BYTES = 32
VERSION = 2
MAGIC_STEM = b"\x93MLAUTH"
MAGIC = MAGIC_STEM + bytes([VERSION])
MODE_INTEGRITY, MODE_PRIVACY = 0, 1
MODE_NAMES = {MODE_INTEGRITY: "integrity", MODE_PRIVACY: "privacy"}
HELLO_BYTES = CHALLENGE_BYTES = len(MAGIC) + 1 + NONCE_BYTES
RESULT_HEAD = struct.Struct(">BH")  # status (0 = accepted), payload length
RESULT_OK = 0
RESULT_REFUSED = 1

assert struct.unpack(">I", MAGIC[:4])[0] > MAX_HEADER  # an insecure peer refuses MAGIC


class FsKey(bytes):
    """A filesystem key as its key file gives it: the 32 bytes, and whether the
    filesystem's frames are encrypted (`privacy`). A bytes, so that it travels
    unchanged through every server and client that already passes the key along;
    a plain bytes key means integrity mode (tests, and key files from before the
    mode existed)."""

    privacy: bool

    def __new__(cls, key: bytes, privacy: bool = False) -> FsKey:
        obj = super().__new__(cls, key)
        obj.privacy = privacy
        return obj


def key_mode(key: bytes) -> int:
    return MODE_PRIVACY if getattr(key, "privacy", False) else MODE_INTEGRITY


def _mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, label + b"".join(parts), sha256).digest()


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"a filesystem key is {KEY_BYTES} bytes")
    return key


def _session(key: bytes, mode: int, nc: bytes, ns: bytes, *, client: bool) -> FrameMac:
    privacy = mode == MODE_PRIVACY
    c2s, s2c = session_keys(key, nc, ns, privacy=privacy)
    return (FrameMac(c2s, s2c, privacy=privacy) if client
            else FrameMac(s2c, c2s, privacy=privacy))


def mode_mismatch(mine: int, theirs: int, *, peer: str) -> str:
    """The error for a peer whose key file sets the other mode."""
    name = MODE_NAMES.get(theirs, f"unknown mode {theirs}")
    return (f"the {peer} uses {name} mode and this side {MODE_NAMES[mine]} mode "
            f"(the filesystem's key files differ: every server and client must use "
            f"the same key file, made by `mlustre keygen [--privacy]`)")


def other_version(first: bytes) -> str | None:
    """Why a handshake starting with `first` (len(MAGIC) bytes) is of another version
    of this protocol, or None if it is not a handshake of any version."""
    if first[:len(MAGIC_STEM)] != MAGIC_STEM or first == MAGIC:
        return None
    return (f"the peer speaks authentication version {first[len(MAGIC_STEM)]} "
            f"(this side {VERSION}: frames sealed with AES-GCM); an mlustre from before "
            f"the AEAD framing must be upgraded")


def encode_result(status: int, payload: bytes) -> bytes:
    return RESULT_HEAD.pack(status, len(payload)) + payload


class ClientHandshake:
    """The connecting side: hello(), then on_challenge() -> proof, then on_result()."""

    def __init__(self, key: bytes, nonce: bytes | None = None) -> None:
        self.key = _check_key(key)
        self.mode = key_mode(key)
        self.nonce = nonce or secrets.token_bytes(NONCE_BYTES)
        self.server_nonce = b""

    def hello(self) -> bytes:
        return MAGIC + bytes([self.mode]) + self.nonce

    def _label(self) -> bytes:
        return bytes([self.mode]) + self.nonce + self.server_nonce

    def on_challenge(self, data: bytes) -> bytes:
        """The proof to send; AuthError if the peer did not answer as a secure server
        of this version in this mode."""
        if len(data) != CHALLENGE_BYTES or not data.startswith(MAGIC):
            why = other_version(data[:len(MAGIC)])
            raise AuthError(why or "the server does not use authentication "
                                   "(it answered the handshake as an insecure server)")
        if data[len(MAGIC)] != self.mode:
            raise AuthError(mode_mismatch(self.mode, data[len(MAGIC)], peer="server"))
        self.server_nonce = data[len(MAGIC) + 1:]
        return _mac(self.key, b"mlustre client", self._label())

    def on_result(self, status: int, payload: bytes) -> FrameMac:
        """The connection's frame state once the server accepted us and proved the key."""
        if status != RESULT_OK:
            raise AuthError(payload.decode(errors="replace") or "refused by the server")
        want = _mac(self.key, b"mlustre server", self._label())
        if not hmac.compare_digest(payload, want):
            raise AuthError("the server did not prove the filesystem key (not the real server?)")
        return _session(self.key, self.mode, self.nonce, self.server_nonce, client=True)


class ServerHandshake:
    """The accepting side: on_hello() -> challenge (then, if `mode_error`, refuse),
    then on_proof() -> (result, frame state)."""

    def __init__(self, key: bytes, nonce: bytes | None = None) -> None:
        self.key = _check_key(key)
        self.mode = key_mode(key)
        self.nonce = nonce or secrets.token_bytes(NONCE_BYTES)
        self.client_nonce = b""
        self.mode_error: str | None = None

    @staticmethod
    def is_hello(first: bytes) -> bool:
        """Whether a connection's first bytes (at least len(MAGIC)) begin a handshake."""
        return first[:len(MAGIC)] == MAGIC

    def on_hello(self, data: bytes) -> bytes:
        """The challenge. It announces our mode even to a client in the other one, so
        that both ends can say what is wrong; `mode_error` is then set and the caller
        sends the challenge and closes."""
        if len(data) != HELLO_BYTES or not self.is_hello(data):
            raise AuthError("not a handshake")
        if data[len(MAGIC)] != self.mode:
            self.mode_error = mode_mismatch(self.mode, data[len(MAGIC)], peer="client")
        self.client_nonce = data[len(MAGIC) + 1:]
        return MAGIC + bytes([self.mode]) + self.nonce

    def _label(self) -> bytes:
        return bytes([self.mode]) + self.client_nonce + self.nonce

    def on_proof(self, proof: bytes) -> tuple[bytes, FrameMac | None]:
        """The RESULT to send, and the frame state if the client proved the key (None:
        send the refusal, then close)."""
        want = _mac(self.key, b"mlustre client", self._label())
        if self.mode_error is not None or not hmac.compare_digest(proof, want):
            return encode_result(RESULT_REFUSED, b"wrong key"), None
        mine = _mac(self.key, b"mlustre server", self._label())
        return (encode_result(RESULT_OK, mine),
                _session(self.key, self.mode, self.client_nonce, self.nonce, client=False))
