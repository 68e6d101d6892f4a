"""aead.py - the AEAD that protects every frame of an authenticated connection (sans-IO).

After the handshake (auth.py) each direction of a connection has its own AES-256-GCM
key, derived with HKDF-SHA256 from the filesystem key and both handshake nonces. Every
frame (docs/protocol.md "Frames") is followed by its 16-byte GCM tag. The GCM nonce is
the frame's sequence number in its direction (32 zero bits, then 64 bits), which both
sides count and nobody sends: a frame injected, altered, replayed, reordered, dropped
or taken from another connection fails its tag, and the receiver closes the connection.

Two modes, chosen per filesystem in its key file (keyfile.py):

- integrity (the default): the frame's bytes (prefix, header, bulk) are GCM's
  associated data and its plaintext is empty, i.e. GMAC. The data crosses in clear,
  authenticated only, like Lustre's "ski" flavour. GHASH runs at several GB/s with
  the CPU's carry-less multiply, against about 1.4 GB/s for the HMAC-SHA256 it replaces.
- privacy: the prefix (the two lengths the receiver needs to cut frames) is the
  associated data; header and bulk are the plaintext, so what crosses is ciphertext
  (Lustre's "skpi"). It costs an AES-CTR pass over the data on each side.

Why AES-GCM from `cryptography` (OpenSSL): AES-NI and PCLMULQDQ make it the fastest
AEAD on the servers we target (ChaCha20-Poly1305 measured no faster here and has no
streaming interface in `cryptography`, which a two-part frame needs), and a
maintained library does the cryptography; this module only says what is sealed with
which nonce.

The sequence number of a sent frame is fixed only when the frame takes the wire
(`finish_send`, called by rpc.Endpoint under its send order), so the sealing happens
there; `absorb_send` only prepares the frame (and, in privacy mode, the buffers the
ciphertext will be written into, which the Endpoint sends instead of the plaintext).
Received frames are opened in order by the connection's single reader, so
`absorb_recv` takes the next sequence number and does the work (in a worker thread
for a large bulk: OpenSSL runs without the GIL) and `finish_recv` checks the tag.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .codec import PREFIX

TAG_BYTES = 16
SESSION_KEY_BYTES = 32
_NONCE = struct.Struct(">4xQ")  # 96 bits: zero, then the frame's sequence number
_SLACK = 15  # cryptography's update_into may want a block less one of room beyond the data
# Received frames are decrypted through a small buffer of the connection, a piece at a
# time, each piece copied back over its ciphertext: a fresh buffer per frame (page
# faults, then a cold copy) made a 1 MiB frame several times slower to open.
_CHUNK = 64 << 10

Buffer = bytes | bytearray | memoryview


def session_keys(key: bytes, client_nonce: bytes, server_nonce: bytes, *,
                 privacy: bool) -> tuple[bytes, bytes]:
    """The (client-to-server, server-to-client) frame keys of one connection: fresh
    per connection (both nonces), and bound to the mode, so that two ends in different
    modes could never read each other's frames even if the handshake let them by."""
    mode = b"privacy" if privacy else b"integrity"
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * SESSION_KEY_BYTES,
               salt=client_nonce + server_nonce,
               info=b"mlustre frame keys v2 " + mode).derive(key)
    return okm[:SESSION_KEY_BYTES], okm[SESSION_KEY_BYTES:]


class Outgoing:
    """A frame prepared for sending: `wire` is what the Endpoint sends (in privacy
    mode, buffers that `finish_send` fills with the ciphertext before they go)."""

    __slots__ = ("head", "bulk", "wire", "_out")

    def __init__(self, head: Buffer, bulk: Buffer | None, privacy: bool) -> None:
        self.head, self.bulk = head, bulk
        self._out: tuple[bytearray, bytearray | None] | None = None
        if not privacy:
            self.wire: tuple[Buffer, Buffer | None] = (head, bulk)
            return
        out_head = bytearray(len(head) + _SLACK)
        out_head[:PREFIX.size] = head[:PREFIX.size]
        out_bulk = bytearray(len(bulk) + _SLACK) if bulk else None
        self._out = (out_head, out_bulk)
        self.wire = (memoryview(out_head)[:len(head)],
                     memoryview(out_bulk)[:len(bulk)] if out_bulk is not None and bulk else None)


class FrameMac:
    """The AEAD state of one authenticated connection, both directions (the name is
    the Endpoint's: each frame's GCM tag is its MAC).

    :privacy: encrypt header and bulk (else they are only authenticated).
    """

    __slots__ = ("privacy", "_send_key", "_recv_key", "_send", "_recv", "send_seq", "recv_seq",
                 "_scratch")

    def __init__(self, send_key: bytes, recv_key: bytes, *, privacy: bool = False) -> None:
        self.privacy = privacy
        self._send_key, self._recv_key = send_key, recv_key
        self._send, self._recv = AESGCM(send_key), AESGCM(recv_key)
        self.send_seq = 0
        self.recv_seq = 0
        self._scratch: bytearray | None = None  # (privacy: see _CHUNK)

    # ---------------------------------------------------------------- sending

    def absorb_send(self, head: Buffer, bulk: Buffer | None = None) -> Outgoing:
        """Prepare a frame (head: its prefix and header; bulk: None or its bulk)."""
        return Outgoing(head, bulk, self.privacy)

    def finish_send(self, out: Outgoing) -> bytes:
        """Seal the next frame sent, whose wire buffers then hold what to send; its tag."""
        nonce = _NONCE.pack(self.send_seq)
        self.send_seq += 1
        head, bulk = out.head, out.bulk
        if not self.privacy:
            if not bulk:
                return self._send.encrypt(nonce, b"", bytes(head))
            enc = Cipher(algorithms.AES(self._send_key), modes.GCM(nonce)).encryptor()
            enc.authenticate_additional_data(head)
            enc.authenticate_additional_data(bulk)
            enc.finalize()
            return enc.tag
        assert out._out is not None
        out_head, out_bulk = out._out
        with memoryview(head) as h:
            if not bulk:
                sealed = self._send.encrypt(nonce, h[PREFIX.size:], h[:PREFIX.size])
                out_head[PREFIX.size:len(head)] = sealed[:-TAG_BYTES]
                return sealed[-TAG_BYTES:]
            enc = Cipher(algorithms.AES(self._send_key), modes.GCM(nonce)).encryptor()
            enc.authenticate_additional_data(h[:PREFIX.size])
            enc.update_into(h[PREFIX.size:], memoryview(out_head)[PREFIX.size:])
        assert out_bulk is not None
        enc.update_into(bulk, out_bulk)
        enc.finalize()
        return enc.tag

    def seal_frame(self, frame: Buffer) -> bytes:
        """What goes on the wire for one whole frame (prefix and header and any bulk in
        one buffer): the frame, encrypted in privacy mode, then its tag."""
        out = self.absorb_send(frame)
        tag = self.finish_send(out)
        return bytes(out.wire[0]) + tag

    def seal(self, *parts: Buffer | None) -> bytes:
        """The tag of the next frame sent, whose bytes (in wire order) are the parts
        (integrity mode; tests and tools)."""
        assert not self.privacy, "seal_frame encrypts"
        return self.finish_send(self.absorb_send(b"".join(p for p in parts if p)))

    # ---------------------------------------------------------------- receiving

    def absorb_recv(self, prefix: Buffer, header: Buffer | None = None,
                    bulk: Buffer | None = None) -> object:
        """Open the next frame received. In privacy mode header and bulk (bytearrays,
        as read) are decrypted in place; nothing of them may be used before
        finish_recv has accepted the tag."""
        nonce = _NONCE.pack(self.recv_seq)
        self.recv_seq += 1
        if not self.privacy:
            if not bulk or len(bulk) < _CHUNK:  # (one call: cheaper than a streaming context)
                return self._recv.encrypt(nonce, b"", b"".join((prefix, header or b"",
                                                                 bulk or b"")))
            enc = Cipher(algorithms.AES(self._recv_key), modes.GCM(nonce)).encryptor()
            for part in (prefix, header, bulk):
                if part:
                    enc.authenticate_additional_data(part)
            enc.finalize()
            return enc.tag
        dec = Cipher(algorithms.AES(self._recv_key), modes.GCM(nonce)).decryptor()
        dec.authenticate_additional_data(prefix)
        if self._scratch is None:
            self._scratch = bytearray(_CHUNK + _SLACK)
        with memoryview(self._scratch) as plain:
            for part in (header, bulk):
                if not part:
                    continue
                assert isinstance(part, bytearray)
                with memoryview(part) as view:
                    for at in range(0, len(part), _CHUNK):
                        piece = view[at:at + _CHUNK]
                        n = dec.update_into(piece, plain)
                        piece[:] = plain[:n]
        return dec

    def finish_recv(self, absorbed: object, tag: Buffer) -> bool:
        """Whether the frame opened by absorb_recv carries its tag. A failure is final:
        the caller closes the connection (the sequence cannot be resynchronised)."""
        if isinstance(absorbed, bytes):
            return hmac.compare_digest(absorbed, bytes(tag))
        try:
            absorbed.finalize_with_tag(bytes(tag))  # type: ignore[attr-defined]
        except (InvalidTag, ValueError):
            return False
        return True

    def verify(self, tag: Buffer, *parts: Buffer | None) -> bool:
        """Whether the next frame received, whose bytes (in wire order) are the parts,
        carries tag (integrity mode; tests and tools)."""
        assert not self.privacy, "open_frame decrypts"
        return self.finish_recv(self.absorb_recv(b"".join(p for p in parts if p)), tag)

    def open_frame(self, wire: Buffer) -> bytes | None:
        """The frame in one whole frame's wire bytes (tag included), or None if it
        fails its tag (tests and tools)."""
        body = bytearray(wire[PREFIX.size:len(wire) - TAG_BYTES])
        prefix = bytes(wire[:PREFIX.size])
        absorbed = self.absorb_recv(prefix, body)
        if not self.finish_recv(absorbed, wire[len(wire) - TAG_BYTES:]):
            return None
        return prefix + bytes(body)
