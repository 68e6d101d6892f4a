"""The sans-IO handshake and frame MACs (protocol/auth.py) and key files (keyfile.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mlustre.protocol import auth
from mlustre.protocol.auth import ClientHandshake, FrameMac, ServerHandshake
from mlustre.protocol.errors import AuthError
from mlustre.protocol.keyfile import KeyFileError, create_key_file, format_key, load_key

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def handshake(ckey: bytes, skey: bytes) -> tuple[FrameMac, FrameMac | None, bytes]:
    """Run both sides in memory: (client mac, server mac, the bytes on the wire)."""
    c, s = ClientHandshake(ckey), ServerHandshake(skey)
    hello = c.hello()
    challenge = s.on_hello(hello)
    proof = c.on_challenge(challenge)
    result, smac = s.on_proof(proof)
    status, n = auth.RESULT_HEAD.unpack(result[:auth.RESULT_HEAD.size])
    payload = result[auth.RESULT_HEAD.size:]
    assert len(payload) == n
    cmac = c.on_result(status, payload)
    return cmac, smac, hello + challenge + proof + result


def test_mutual_handshake_and_session_keys() -> None:
    cmac, smac, wire = handshake(KEY, KEY)
    assert smac is not None
    assert KEY not in wire and KEY.hex().encode() not in wire  # the key never crosses
    tag = cmac.seal(b"head", b"bulk")
    assert len(tag) == auth.TAG_BYTES
    assert smac.verify(tag, b"head", b"bulk")
    back = smac.seal(b"reply")
    assert cmac.verify(back, b"reply")


def test_wrong_key_refused_by_server() -> None:
    c, s = ClientHandshake(OTHER), ServerHandshake(KEY)
    proof = c.on_challenge(s.on_hello(c.hello()))
    result, smac = s.on_proof(proof)
    assert smac is None
    status = result[0]
    with pytest.raises(AuthError, match="wrong key"):
        c.on_result(status, result[auth.RESULT_HEAD.size:])


def test_impostor_server_detected() -> None:
    """A server that accepts without knowing the key cannot forge its proof."""
    c = ClientHandshake(KEY)
    c.on_challenge(auth.MAGIC + bytes([auth.MODE_INTEGRITY]) + os.urandom(auth.NONCE_BYTES))
    with pytest.raises(AuthError, match="did not prove"):
        c.on_result(auth.RESULT_OK, os.urandom(auth.PROOF_BYTES))


def test_insecure_server_answer() -> None:
    with pytest.raises(AuthError, match="does not use authentication"):
        ClientHandshake(KEY).on_challenge(b"\x00\x00\x00\x10" + bytes(36))


def test_fresh_nonces_per_connection() -> None:
    """A recorded proof is useless on a new connection: the server's nonce differs."""
    c1, s1 = ClientHandshake(KEY), ServerHandshake(KEY)
    proof = c1.on_challenge(s1.on_hello(c1.hello()))
    s2 = ServerHandshake(KEY)
    s2.on_hello(c1.hello())  # the attacker replays the client's hello...
    assert s2.on_proof(proof)[1] is None  # ...and its proof


def test_tampered_replayed_reordered_frames_fail() -> None:
    cmac, smac, _ = handshake(KEY, KEY)
    assert smac is not None
    t1, t2 = cmac.seal(b"one"), cmac.seal(b"two")
    assert not smac.verify(t2, b"two")  # reordered
    cmac2, smac2, _ = handshake(KEY, KEY)
    assert smac2 is not None
    t = cmac2.seal(b"frame")
    assert not smac2.verify(t, b"frame!")  # altered
    cmac3, smac3, _ = handshake(KEY, KEY)
    assert smac3 is not None
    t = cmac3.seal(b"frame")
    assert smac3.verify(t, b"frame")
    assert not smac3.verify(t, b"frame")  # replayed
    assert not smac3.verify(t1, b"one")  # from another connection


def test_direction_keys_differ() -> None:
    """A client frame reflected back to the client does not verify."""
    cmac, smac, _ = handshake(KEY, KEY)
    tag = cmac.seal(b"x")
    assert not cmac.verify(tag, b"x")


def test_bad_key_length() -> None:
    with pytest.raises(ValueError):
        ClientHandshake(b"short")


# ------------------------------------------------------------------ key files

def test_create_and_load(tmp_path: Path) -> None:
    path = tmp_path / "fs.key"
    old = os.umask(0)
    try:
        key = create_key_file(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["fs.key"]  # no temporary left


def test_no_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "fs.key"
    key = create_key_file(path)
    with pytest.raises(KeyFileError, match="exists"):
        create_key_file(path)
    assert load_key(path) == key
    assert create_key_file(path, force=True) != key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "fs.key"
    create_key_file(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)


@pytest.mark.parametrize("text", ["", "garbage\n", "mlustre-key-v1 abcd\n",
                                  "mlustre-key-v1 " + "zz" * 32 + "\n",
                                  format_key(KEY) + "extra\n"])
def test_malformed_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fs.key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="malformed"):
        load_key(path)


def test_missing_and_not_regular(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "nope")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_key(d)
