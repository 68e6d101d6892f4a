"""The per-frame AEAD (protocol/aead.py), the framing modes in the handshake
(auth.py) and in key files (keyfile.py): sans-IO."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mlustre.protocol import auth
from mlustre.protocol.aead import TAG_BYTES, FrameMac
from mlustre.protocol.auth import ClientHandshake, FsKey, ServerHandshake
from mlustre.protocol.codec import Codec20
from mlustre.protocol.errors import AuthError
from mlustre.protocol.keyfile import KeyFileError, create_key_file, format_key, load_key
from mlustre.protocol.message import Message

KEY = bytes(range(32))
PRIVATE = FsKey(KEY, privacy=True)


def frame(bulk: bytes | None = None, xid: int = 1) -> bytes:
    return Codec20().encode(Message.request(7, xid, {"oid": 5, "secret": "plain-text-marker"},
                                            bulk=bulk))


def handshake(ckey: bytes, skey: bytes) -> tuple[FrameMac, FrameMac]:
    c, s = ClientHandshake(ckey), ServerHandshake(skey)
    proof = c.on_challenge(s.on_hello(c.hello()))
    result, smac = s.on_proof(proof)
    assert smac is not None
    cmac = c.on_result(result[0], result[auth.RESULT_HEAD.size:])
    return cmac, smac


def test_integrity_tag_is_standard_gmac() -> None:
    """The tag is AES-GCM's with the frame as associated data and an empty plaintext,
    the nonce the sequence number: whether sealed in one part or as head and bulk."""
    k1, k2 = os.urandom(32), os.urandom(32)
    mac = FrameMac(k1, k2)
    small, big = frame(), frame(os.urandom(100_000))
    assert mac.seal(small) == AESGCM(k1).encrypt(struct.pack(">4xQ", 0), b"", small)
    head, bulk = big[:-100_000], big[-100_000:]
    out = mac.absorb_send(head, bulk)
    assert out.wire == (head, bulk)  # integrity: the data goes in clear
    assert mac.finish_send(out) == AESGCM(k1).encrypt(struct.pack(">4xQ", 1), b"", big)


@pytest.mark.parametrize("privacy", [False, True])
def test_two_part_and_one_part_frames_agree(privacy: bool) -> None:
    """The sender seals head and bulk apart (the Endpoint), the receiver opens prefix,
    header and bulk apart: same bytes on the wire as the one-buffer helpers."""
    k1, k2 = os.urandom(32), os.urandom(32)
    a, b = FrameMac(k1, k2, privacy=privacy), FrameMac(k2, k1, privacy=privacy)
    payload = os.urandom(3 << 20)
    whole = frame(payload)
    head, bulk = whole[:-len(payload)], whole[-len(payload):]
    out = a.absorb_send(head, bulk)
    tag = a.finish_send(out)
    wire = bytes(out.wire[0]) + bytes(out.wire[1]) + tag
    assert (b"plain-text-marker" in wire) is not privacy
    assert (wire[len(head):len(whole)] == payload) is not privacy
    header, rbulk = bytearray(wire[8:len(head)]), bytearray(wire[len(head):len(whole)])
    assert b.finish_recv(b.absorb_recv(wire[:8], header, rbulk), tag)
    assert bytes(header) == head[8:] and rbulk == payload
    again = a.seal_frame(whole)  # the next frame, in one buffer
    assert b.open_frame(again) == whole


def test_privacy_frames_hostile() -> None:
    cmac, smac = handshake(PRIVATE, PRIVATE)
    assert cmac.privacy and smac.privacy
    f1, f2 = frame(xid=1), frame(xid=2)
    w1, w2 = cmac.seal_frame(f1), cmac.seal_frame(f2)
    assert b"plain-text-marker" not in w1 and len(w1) == len(f1) + TAG_BYTES
    assert w1[:8] == f1[:8]  # the lengths stay in clear: the receiver cuts frames by them
    assert smac.open_frame(w2) is None  # reordered
    c2, s2 = handshake(PRIVATE, PRIVATE)
    w = bytearray(c2.seal_frame(f1))
    w[20] ^= 1
    assert s2.open_frame(bytes(w)) is None  # altered ciphertext
    c3, s3 = handshake(PRIVATE, PRIVATE)
    w = c3.seal_frame(f1)
    assert s3.open_frame(w) == f1
    assert s3.open_frame(w) is None  # replayed
    assert s3.open_frame(w1) is None  # from another connection
    assert c3.open_frame(s3.seal_frame(f2)) == f2
    assert c3.open_frame(c3.seal_frame(f2)) is None  # reflected


def test_mode_mismatch_is_refused_with_a_clear_error() -> None:
    for ckey, skey, theirs in ((PRIVATE, KEY, "integrity"), (KEY, PRIVATE, "privacy")):
        c, s = ClientHandshake(ckey), ServerHandshake(skey)
        challenge = s.on_hello(c.hello())
        assert s.mode_error is not None and "client uses" in s.mode_error
        with pytest.raises(AuthError, match=f"server uses {theirs} mode"):
            c.on_challenge(challenge)
        assert s.on_proof(os.urandom(auth.PROOF_BYTES))[1] is None


@pytest.mark.parametrize("where", ["hello", "challenge", "both"])
def test_altered_mode_byte_cannot_downgrade(where: str) -> None:
    """Someone on the path rewrites the announced modes so both ends look alike: each
    side still uses its own mode, which the proofs bind, so no session is made."""
    c, s = ClientHandshake(PRIVATE), ServerHandshake(KEY)
    hello = bytearray(c.hello())
    if where in ("hello", "both"):
        hello[len(auth.MAGIC)] = auth.MODE_INTEGRITY
    challenge = bytearray(s.on_hello(bytes(hello)))
    if where in ("challenge", "both"):
        challenge[len(auth.MAGIC)] = auth.MODE_PRIVACY
    with pytest.raises(AuthError):
        proof = c.on_challenge(bytes(challenge))
        result, smac = s.on_proof(proof)
        assert smac is None
        c.on_result(result[0], result[auth.RESULT_HEAD.size:])


def test_other_version_named() -> None:
    old = b"\x93MLAUTH\x01"
    assert "version 1" in (auth.other_version(old) or "")
    assert auth.other_version(auth.MAGIC) is None
    assert auth.other_version(b"\x00\x00\x00\x10abcde") is None
    with pytest.raises(AuthError, match="version 1"):
        ClientHandshake(KEY).on_challenge(old + bytes(auth.CHALLENGE_BYTES - len(old)))


def test_session_keys_fresh_and_bound_to_mode() -> None:
    c1, _ = handshake(KEY, KEY)
    c2, _ = handshake(KEY, KEY)
    assert c1.seal(b"x") != c2.seal(b"x")
    nc, ns = os.urandom(32), os.urandom(32)
    from mlustre.protocol.aead import session_keys

    assert session_keys(KEY, nc, ns, privacy=True) != session_keys(KEY, nc, ns, privacy=False)


# ------------------------------------------------------------------ key files

def test_key_file_modes(tmp_path: Path) -> None:
    p = tmp_path / "p.key"
    key = create_key_file(p, privacy=True)
    assert p.read_text().split()[2] == "privacy"
    loaded = load_key(p)
    assert loaded == key and loaded.privacy
    i = tmp_path / "i.key"
    create_key_file(i)
    assert i.read_text().split()[2] == "integrity" and not load_key(i).privacy


def test_old_key_file_means_integrity(tmp_path: Path) -> None:
    """Key files from before the modes (two words) stay valid, in integrity mode."""
    p = tmp_path / "old.key"
    p.write_text(f"mlustre-key-v1 {KEY.hex()}\n")
    p.chmod(0o600)
    loaded = load_key(p)
    assert loaded == KEY and not loaded.privacy
    assert format_key(KEY) == f"mlustre-key-v1 {KEY.hex()}\n"


@pytest.mark.parametrize("word", ["Privacy", "none", "encrypt"])
def test_unknown_mode_word_refused(tmp_path: Path, word: str) -> None:
    p = tmp_path / "k.key"
    p.write_text(f"mlustre-key-v1 {KEY.hex()} {word}\n")
    p.chmod(0o600)
    with pytest.raises(KeyFileError, match="malformed"):
        load_key(p)
