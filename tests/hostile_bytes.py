"""Hostile byte streams sent to a server on a raw connection (not a test module: the
OST tests in test_servers_wire.py send each of them, the MDT tests in
test_mdt_mgs_wire.py some). Each case leaves the connection open or closes it; the
server must go on serving well-behaved clients either way.
"""

from __future__ import annotations

import errno
import random
from typing import Any

import msgpack
import trio
from wire_helpers import OST_NAME, RawConn

from mlustre.protocol import constants as C
from mlustre.protocol.codec import PREFIX, Codec18, Codec20
from mlustre.protocol.message import Message


def frame(header: bytes, bulk: bytes = b"") -> bytes:
    """One frame: the length prefix, then header and bulk as given (valid or not)."""
    return PREFIX.pack(len(header), len(bulk)) + header + bulk


async def case_random_garbage(raw: RawConn) -> None:
    rng = random.Random(1234)
    await raw.send(bytes(rng.getrandbits(8) for _ in range(4096)))
    msgs = await raw.recv_until_closed()  # a huge length prefix: refused, then closed
    assert all(m.type == C.ERR for m in msgs)


async def case_garbage_payload_keeps_connection(raw: RawConn) -> None:
    await raw.send(frame(b"\xc1\xff\x00garbage"))
    got = await raw.recv()
    assert got is not None and got[0].type == C.ERR and got[0].status == errno.EPROTO
    # the same connection still works
    await raw.request(Message.request(C.OST_CONNECT, 1, {"target": OST_NAME}))
    got = await raw.recv()
    assert got is not None and got[0].status == 0 and got[0].xid == 1
    await raw.request(Message.request(C.OST_WRITE, 2, {"oid": 77, "offset": 0}, bulk=b"ok"))
    got = await raw.recv()
    assert got is not None and got[0].status == 0 and got[0].transno > 0


async def case_valid_msgpack_not_a_message(raw: RawConn) -> None:
    for obj in ([1, 2, 3], {"type": C.REQUEST}, {"type": C.REQUEST, "opc": -1, "xid": 1},
                {"type": C.REQUEST, "opc": 1, "xid": 1, "body": []}, "hello", None):
        await raw.send(frame(msgpack.packb(obj)))
        got = await raw.recv()
        assert got is not None and got[0].status == errno.EPROTO


async def case_truncated_frame_then_close(raw: RawConn) -> None:
    frame = Codec20().encode(Message.request(C.OST_CONNECT, 1, {"target": OST_NAME}))
    await raw.send(frame[:len(frame) // 2])


async def case_truncated_frame_left_hanging(raw: RawConn) -> None:
    await raw.send(PREFIX.pack(1000, 1000) + b"\x85" * 10)  # and never the rest
    await trio.sleep(0.05)


async def case_oversized_header(raw: RawConn) -> None:
    await raw.send(PREFIX.pack(C.MAX_HEADER + 1, 0))
    msgs = await raw.recv_until_closed()
    assert [(m.type, m.status) for m in msgs] == [(C.ERR, errno.EMSGSIZE)]


async def case_oversized_bulk(raw: RawConn) -> None:
    await raw.request(Message.request(C.OST_CONNECT, 1, {"target": OST_NAME}))
    assert (await raw.recv()) is not None
    await raw.send(PREFIX.pack(10, C.MAX_BULK + 1) + b"x" * 1000)
    msgs = await raw.recv_until_closed()
    assert [(m.type, m.status) for m in msgs] == [(C.ERR, errno.EMSGSIZE)]


async def case_flood_of_junk_frames(raw: RawConn) -> None:
    # undecodable frames whose replies are never read (see test_junk_flood_is_bounded)
    with trio.move_on_after(5):
        await raw.send(frame(b"\xc1") * 5000)


async def case_flood_of_random_bytes_in_small_frames(raw: RawConn) -> None:
    rng = random.Random(99)
    chunks = []
    for _ in range(3000):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        chunks.append(frame(body))
    await raw.send(b"".join(chunks))
    with trio.move_on_after(0.5):
        await raw.recv_until_closed(timeout=0.5)


async def case_deeply_nested_body(raw: RawConn) -> None:
    await raw.request(Message.request(C.OST_CONNECT, 1, {"target": OST_NAME}))
    assert (await raw.recv()) is not None
    nested: Any = 5
    for _ in range(100):
        nested = [nested]
    await raw.request(Message.request(C.OST_GETATTR, 2, {"oid": nested}))
    got = await raw.recv()
    assert got is not None and got[0].status == errno.EINVAL
    deep = b"\x81\xa4body" + b"\x91" * 5000 + b"\xc0"  # deeper than msgpack allows
    await raw.send(frame(deep))
    got = await raw.recv()
    assert got is not None and got[0].status == errno.EPROTO


async def case_byte_by_byte(raw: RawConn) -> None:
    frame = Codec18().encode(Message.request(C.OST_CONNECT, 5, {"target": OST_NAME}))
    for i in range(len(frame)):
        await raw.send(frame[i:i + 1])
        await trio.sleep(0.001)
    got = await raw.recv()
    assert got is not None and got[0].xid == 5 and got[1] == "1.8"


async def case_replies_and_errs_from_the_client(raw: RawConn) -> None:
    # a peer sending replies nobody asked for, and ERR messages
    await raw.send(Codec20().encode(Message(C.REPLY, 1, 12345, body={"x": 1})))
    await raw.send(Codec20().encode(Message(C.ERR, 0, 0, status=errno.EIO)))
    await raw.request(Message.request(C.OBD_PING, 3))
    got = await raw.recv()
    assert got is not None and got[0].xid == 3 and got[0].status == 0


async def case_abrupt_reset(raw: RawConn) -> None:
    import socket
    import struct

    await raw.request(Message.request(C.OST_CONNECT, 1, {"target": OST_NAME}))
    await raw.send(PREFIX.pack(100, 0) + b"\x00" * 10)
    raw.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


HOSTILE_CASES = [case_random_garbage, case_garbage_payload_keeps_connection,
                 case_valid_msgpack_not_a_message, case_truncated_frame_then_close,
                 case_truncated_frame_left_hanging, case_oversized_header, case_oversized_bulk,
                 case_flood_of_junk_frames, case_flood_of_random_bytes_in_small_frames,
                 case_deeply_nested_body, case_byte_by_byte,
                 case_replies_and_errs_from_the_client, case_abrupt_reset]
