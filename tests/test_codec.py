"""Unit tests for the wire codecs, the frame splitter, NIDs and FIDs (mlustre.protocol)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlustre.protocol.codec import (
    CODECS,
    MAGIC_18,
    PREFIX,
    RELEASES,
    Codec18,
    Codec20,
    FrameDecoder,
    check_prefix,
    codec_for,
    decode_payload,
)
from mlustre.protocol.constants import (
    ERR,
    FID_SEQ_NORMAL,
    FID_SEQ_ROOT,
    MAX_BULK,
    MAX_HEADER,
    OST_WRITE,
    REPLY,
    REQUEST,
)
from mlustre.protocol.errors import ProtocolError
from mlustre.protocol.fid import IGIF_MAX_SEQ, ROOT_FID, Fid, fid_of, ino_of
from mlustre.protocol.message import Message
from mlustre.protocol.nid import Nid, format_spec, parse_spec

U64 = (1 << 64) - 1
HEADER_INTS = ("opc", "xid", "flags", "conn_cnt", "transno", "last_committed", "status")
HEADER_FIELDS = ("type", *HEADER_INTS)  # in wire order, after the 1.8 magic

# -- strategies ---------------------------------------------------------------------------------

u64s = st.integers(min_value=0, max_value=U64)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=U64)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40))
values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=25,
)
bodies = st.dictionaries(st.text(max_size=12), values, max_size=6)
bulks = st.none() | st.binary(min_size=1, max_size=2048)
messages = st.builds(Message, type=st.sampled_from([REQUEST, REPLY, ERR]), opc=u64s, xid=u64s,
                     flags=u64s, conn_cnt=u64s, transno=u64s, last_committed=u64s,
                     status=u64s, body=bodies, bulk=bulks)
codecs = st.sampled_from(sorted(CODECS))


def frame_of(codec_name: str, msg: Message) -> bytes:
    return codec_for(codec_name).encode(msg)


def decode_frame(frame: bytes) -> tuple[Message, str]:
    dec = FrameDecoder()
    dec.feed(frame)
    got = dec.next_frame()
    assert got is not None
    assert dec.next_frame() is None
    msg, codec = decode_payload(got.header, got.bulk)
    return msg, codec.release


def packed_header(**fields: object) -> bytes:
    obj = {"type": REQUEST, "opc": 1, "xid": 7, "flags": 0, "conn_cnt": 0, "transno": 0,
           "last_committed": 0, "status": 0, "body": {}}
    obj.update(fields)
    return msgpack.packb(obj, use_bin_type=True)


def packed_array(**fields: object) -> bytes:
    obj = {"type": REQUEST, "opc": 1, "xid": 7, "flags": 0, "conn_cnt": 0, "transno": 0,
           "last_committed": 0, "status": 0, "body": {}}
    obj.update(fields)
    return msgpack.packb([MAGIC_18, *(obj[f] for f in HEADER_FIELDS), obj["body"]],
                         use_bin_type=True)


# -- round trips --------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(msg=messages, release=codecs)
def test_round_trip_any_message(msg: Message, release: str) -> None:
    back, got_release = decode_frame(frame_of(release, msg))
    assert got_release == release
    assert back == msg


@settings(max_examples=100, deadline=None)
@given(msg=messages)
def test_both_codecs_decode_to_the_same_message(msg: Message) -> None:
    a, ra = decode_frame(frame_of("2.0", msg))
    b, rb = decode_frame(frame_of("1.8", msg))
    assert (ra, rb) == ("2.0", "1.8")
    assert a == b == msg


def test_wire_shapes() -> None:
    msg = Message.request(OST_WRITE, 42, {"oid": 5, "offset": 0}, bulk=b"abc")
    obj20 = msgpack.unpackb(Codec20().encode_header(msg)[PREFIX.size:], raw=False)
    obj18 = msgpack.unpackb(Codec18().encode_header(msg)[PREFIX.size:], raw=False)
    assert type(obj20) is dict and obj20["xid"] == 42 and obj20["body"] == {"oid": 5, "offset": 0}
    assert obj18 == [MAGIC_18, REQUEST, OST_WRITE, 42, 0, 0, 0, 0, 0, {"oid": 5, "offset": 0}]
    # the bulk is outside msgpack: the prefix counts it, the header does not hold it
    h, b = PREFIX.unpack_from(Codec20().encode(msg))
    assert b == 3
    assert Codec20().encode(msg).endswith(b"abc")


def test_decode_payload_detects_release() -> None:
    m20, c20 = decode_payload(packed_header())
    m18, c18 = decode_payload(packed_array())
    assert c20.release == "2.0" and isinstance(c20, Codec20)
    assert c18.release == "1.8" and isinstance(c18, Codec18)
    assert m20 == m18
    assert m20.bulk is None
    m, _ = decode_payload(packed_header(), b"bulk")
    assert m.bulk == b"bulk"


def test_2_0_optional_fields_default() -> None:
    msg, _ = decode_payload(msgpack.packb({"type": REPLY, "opc": 3, "xid": 9}))
    assert msg == Message(REPLY, 3, 9)


def test_reply_helper_keeps_xid_opc_conn_cnt() -> None:
    req = Message.request(OST_WRITE, 17, {"a": 1}, conn_cnt=3)
    rep = req.reply({"b": 2}, status=5, transno=8, last_committed=6, bulk=b"x")
    assert (rep.type, rep.opc, rep.xid, rep.conn_cnt) == (REPLY, OST_WRITE, 17, 3)
    assert (rep.status, rep.transno, rep.last_committed, rep.body, rep.bulk) == (
        5, 8, 6, {"b": 2}, b"x")


def test_codec_for() -> None:
    assert set(RELEASES) == {"2.0", "1.8"}
    assert codec_for("2.0") is CODECS["2.0"]
    with pytest.raises(ValueError):
        codec_for("3.0")


def test_encode_refuses_oversized_messages() -> None:
    with pytest.raises(ProtocolError):
        Codec20().encode(Message.request(1, 1, {"x": b"0" * MAX_HEADER}))
    with pytest.raises(ProtocolError):
        Codec18().encode_header(Message.request(1, 1, bulk=memoryview(bytearray(MAX_BULK + 1))))


# -- malformed input: always ProtocolError ------------------------------------------------------

def expect_protocol_error(payload: bytes | bytearray, bulk: bytes | None = None) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(payload, bulk)


def decode_or_protocol_error(payload: bytes) -> None:
    try:
        msg, codec = decode_payload(payload)
    except ProtocolError:
        return
    # whatever decodes must be a well-formed message
    assert msg.type in (REQUEST, REPLY, ERR) and type(msg.type) is int
    for name in HEADER_INTS:
        v = getattr(msg, name)
        assert type(v) is int and 0 <= v <= U64
    assert type(msg.body) is dict
    assert codec.release in RELEASES


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    decode_or_protocol_error(data)


@settings(max_examples=300, deadline=None)
@given(values)
def test_random_msgpack_objects_never_raise_anything_but_protocol_error(obj: object) -> None:
    decode_or_protocol_error(msgpack.packb(obj, use_bin_type=True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["type", *HEADER_INTS, "body", "x"]), values,
                       max_size=10),
       st.lists(values, min_size=0, max_size=12))
def test_random_header_shapes(mapping: dict, array: list) -> None:
    decode_or_protocol_error(msgpack.packb(mapping, use_bin_type=True))
    decode_or_protocol_error(msgpack.packb([MAGIC_18, *array], use_bin_type=True))


@settings(max_examples=200, deadline=None)
@given(msg=messages, release=codecs, data=st.data())
def test_truncated_or_extended_payloads(msg: Message, release: str, data: st.DataObject) -> None:
    header = codec_for(release).encode_header(msg)[PREFIX.size:]
    cut = data.draw(st.integers(min_value=0, max_value=len(header) - 1))
    expect_protocol_error(header[:cut])
    expect_protocol_error(header + data.draw(st.binary(min_size=1, max_size=8)))


BAD_INTS = ["1", b"1", -1, -(1 << 63), True, False, 1.0, None, [1], {"a": 1}]


@pytest.mark.parametrize("field", HEADER_INTS)
@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
@pytest.mark.parametrize("shape", ["2.0", "1.8"])
def test_bad_header_int_fields(field: str, value: object, shape: str) -> None:
    payload = packed_header(**{field: value}) if shape == "2.0" else packed_array(**{field: value})
    expect_protocol_error(payload)


@pytest.mark.parametrize("field", HEADER_INTS)
def test_header_ints_at_u64_limit_accepted(field: str) -> None:
    msg, _ = decode_payload(packed_header(**{field: U64}))
    assert getattr(msg, field) == U64


def test_header_ints_beyond_u64_rejected() -> None:
    # msgpack cannot encode > u64; a negative int64 is the nearest thing a peer can send
    for field in HEADER_INTS:
        expect_protocol_error(packed_header(**{field: -(1 << 63)}))


@pytest.mark.parametrize("value", [0, 1, 4710, 4714, -4711, "4711", b"4711", None, [4711]],
                         ids=repr)
@pytest.mark.parametrize("shape", ["2.0", "1.8"])
def test_bad_message_type(value: object, shape: str) -> None:
    payload = packed_header(type=value) if shape == "2.0" else packed_array(type=value)
    expect_protocol_error(payload)


@pytest.mark.parametrize("value", [float(REQUEST), float(REPLY), True], ids=repr)
@pytest.mark.parametrize("shape", ["2.0", "1.8"])
def test_message_type_must_be_an_int(value: object, shape: str) -> None:
    """A float type (4711.0 == REQUEST) once passed the `in _TYPES` check."""
    payload = packed_header(type=value) if shape == "2.0" else packed_array(type=value)
    expect_protocol_error(payload)


@pytest.mark.parametrize("body", [[], [1, 2], "body", b"body", 1, None, True, 1.5], ids=repr)
@pytest.mark.parametrize("shape", ["2.0", "1.8"])
def test_body_not_a_map(body: object, shape: str) -> None:
    payload = packed_header(body=body) if shape == "2.0" else packed_array(body=body)
    expect_protocol_error(payload)


@pytest.mark.parametrize("missing", ["type", "opc", "xid"])
def test_2_0_missing_required_field(missing: str) -> None:
    obj = {"type": REQUEST, "opc": 1, "xid": 2}
    del obj[missing]
    expect_protocol_error(msgpack.packb(obj))


def test_2_0_bytes_keys_are_not_field_names() -> None:
    expect_protocol_error(msgpack.packb({b"type": REQUEST, b"opc": 1, b"xid": 2},
                                        use_bin_type=True))


@pytest.mark.parametrize("length", [0, 1, 9, 11, 20])
def test_1_8_array_of_wrong_length(length: int) -> None:
    arr = [MAGIC_18, REQUEST, 1, 2, 0, 0, 0, 0, 0, {}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][:length]
    expect_protocol_error(msgpack.packb(arr))


@pytest.mark.parametrize("magic", [0, MAGIC_18 + 1, str(MAGIC_18), None, -MAGIC_18, [MAGIC_18]],
                         ids=repr)
def test_1_8_wrong_magic(magic: object) -> None:
    expect_protocol_error(msgpack.packb([magic, REQUEST, 1, 2, 0, 0, 0, 0, 0, {}]))


@pytest.mark.parametrize("obj", [None, 1, "x", b"x", 1.5, True, [], {}], ids=repr)
def test_top_level_not_a_message(obj: object) -> None:
    expect_protocol_error(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize("where", ["top", "body", "nested", "1.8-body"])
def test_int_map_keys_rejected(where: str) -> None:
    if where == "top":
        obj: object = {"type": REQUEST, "opc": 1, "xid": 2, 5: 1}
    elif where == "body":
        obj = {"type": REQUEST, "opc": 1, "xid": 2, "body": {1: "x"}}
    elif where == "nested":
        obj = {"type": REQUEST, "opc": 1, "xid": 2, "body": {"a": [{"b": {2: 3}}]}}
    else:
        obj = [MAGIC_18, REQUEST, 1, 2, 0, 0, 0, 0, 0, {7: 1}]
    expect_protocol_error(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize("payload", [
    b"",
    b"\xc1",  # never used
    b"\x91" * 100_000 + b"\xc0",  # absurd nesting
    b"\x81\xa1a" * 5000 + b"\xc0",
    b"\xdf\xff\xff\xff\xff",  # map of 4G entries in 5 bytes
    b"\xdd\xff\xff\xff\xff",  # array of 4G entries
    b"\xc6\xff\xff\xff\xff",  # bin of 4 GiB
    b"\xdb\xff\xff\xff\xff",  # str of 4 GiB
    b"\xa3\xff\xfe\xfd",  # str that is not UTF-8
    packed_header() + b"\x00",  # trailing data
], ids=lambda p: repr(p[:12]))
def test_corrupt_msgpack(payload: bytes) -> None:
    expect_protocol_error(payload)


def test_bytearray_payload_accepted() -> None:
    msg, _ = decode_payload(bytearray(packed_header()), bytearray(b"zz"))
    assert msg.xid == 7 and msg.bulk == b"zz"


# -- frames --------------------------------------------------------------------------------------

def test_frame_decoder_byte_by_byte() -> None:
    msgs = [Message.request(1, i, {"i": i}, bulk=b"x" * i if i % 2 else None) for i in range(5)]
    stream = b"".join(frame_of("2.0" if i % 2 else "1.8", m) for i, m in enumerate(msgs))
    dec = FrameDecoder()
    got = []
    for i in range(len(stream)):
        dec.feed(stream[i:i + 1])
        frame = dec.next_frame()
        if frame is not None:
            got.append(decode_payload(frame.header, frame.bulk)[0])
            assert dec.next_frame() is None
    assert got == msgs


def test_frame_decoder_several_frames_in_one_feed() -> None:
    msgs = [Message.request(2, i, {"n": "x" * i}, bulk=bytes([i]) * 3) for i in range(1, 8)]
    dec = FrameDecoder()
    dec.feed(b"".join(frame_of("2.0", m) for m in msgs) + b"\x00\x00")  # and a partial prefix
    got = []
    while (frame := dec.next_frame()) is not None:
        got.append(decode_payload(frame.header, frame.bulk)[0])
    assert got == msgs
    assert dec.wanted() == PREFIX.size - 2


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_frame_decoder_random_splits(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(frame_of("2.0", m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = FrameDecoder()
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        dec.feed(stream[prev:cut])
        prev = cut
        while (frame := dec.next_frame()) is not None:
            got.append(decode_payload(frame.header, frame.bulk)[0])
    assert got == msgs


def test_frame_decoder_wanted() -> None:
    dec = FrameDecoder()
    assert dec.wanted() == PREFIX.size
    dec.feed(PREFIX.pack(10, 5)[:3])
    assert dec.wanted() == PREFIX.size - 3
    dec.feed(PREFIX.pack(10, 5)[3:])
    assert dec.wanted() == 15
    dec.feed(b"h" * 4)
    assert dec.wanted() == 11
    assert dec.next_frame() is None
    dec.feed(b"h" * 6 + b"b" * 4)
    assert dec.wanted() == 1
    dec.feed(b"b")
    assert dec.wanted() == 1  # a whole frame is waiting: still "at least 1"
    assert dec.next_frame()[:2] == (b"h" * 10, b"b" * 5)
    assert dec.wanted() == PREFIX.size
    dec.feed(PREFIX.pack(0, 0))
    assert dec.next_frame()[:2] == (b"", None)
    assert dec.wanted() == PREFIX.size


def test_frame_decoder_takes_the_tag_after_each_frame() -> None:
    msgs = [Message.request(3, i, {"i": i}, bulk=b"q" * i or None) for i in range(4)]
    frames = [frame_of("2.0", m) for m in msgs]
    tags = [bytes([i]) * 4 for i in range(4)]
    stream = b"".join(f + t for f, t in zip(frames, tags, strict=True))
    dec = FrameDecoder(tag_bytes=4)
    got = []
    for i in range(0, len(stream), 5):
        dec.feed(stream[i:i + 5])
        while (frame := dec.next_frame()) is not None:
            got.append(frame)
    assert [decode_payload(f.header, f.bulk)[0] for f in got] == msgs
    assert [f.tag for f in got] == tags
    assert [f.prefix + f.header + (f.bulk or b"") for f in got] == frames


def test_frame_decoder_whole_frames_with_tags_in_one_feed() -> None:
    """Frames fed whole are taken in one step (the common case): headers, bulks, tags
    and prefixes all as when they come piecemeal; a partial frame after them waits."""
    msgs = [Message.request(3, i, {"i": i}, bulk=b"q" * i or None) for i in range(5)]
    frames = [frame_of("2.0", m) for m in msgs]
    tags = [bytes([i]) * 4 for i in range(5)]
    stream = b"".join(f + t for f, t in zip(frames, tags, strict=True))
    dec = FrameDecoder(tag_bytes=4)
    dec.feed(stream + stream[:7])
    got = []
    while (frame := dec.next_frame()) is not None:
        got.append(frame)
    assert [decode_payload(f.header, f.bulk)[0] for f in got] == msgs
    assert [f.tag for f in got] == tags
    assert [f.prefix + f.header + (f.bulk or b"") for f in got] == frames
    dec.feed(stream[7:len(frames[0]) + 4])
    frame = dec.next_frame()
    assert frame is not None and frame.tag == tags[0] and dec.next_frame() is None


def test_frame_decoder_refuses_an_oversized_frame_fed_whole() -> None:
    dec = FrameDecoder(max_header=100, max_bulk=10)
    dec.feed(PREFIX.pack(3, 11) + b"\x80" * 3 + b"b" * 11)
    with pytest.raises(ProtocolError):
        dec.next_frame()


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 300), st.integers(1, 50), st.integers(0, 4), st.data())
def test_frame_decoder_receives_large_bulks_in_place(bulk_len: int, direct_min: int,
                                                     tag_bytes: int, data: st.DataObject) -> None:
    """A reader that reads into receive_buffer() whenever there is one (as rpc.py does)
    gets the same frames as one that feeds everything, and the bulk it reads in place is
    the frame's own buffer (no copy after the read)."""
    msgs = [Message.request(4, i, {"i": i}, bulk=bytes(range(256)) * (bulk_len // 256)
                            + bytes(bulk_len % 256) or None) for i in range(3)]
    stream = b"".join(frame_of("2.0", m) + b"T" * tag_bytes for m in msgs)
    dec = FrameDecoder(tag_bytes=tag_bytes, direct_min=direct_min)
    pos, got, in_place = 0, [], []
    while pos < len(stream):
        step = data.draw(st.integers(1, 64))
        target = dec.receive_buffer()
        if target is not None:
            n = min(step, len(target), len(stream) - pos)
            target[:n] = stream[pos:pos + n]
            dec.received(n)
            in_place.append(target.obj)
        else:
            n = min(step, len(stream) - pos)
            dec.feed(stream[pos:pos + n])
        pos += n
        while (frame := dec.next_frame()) is not None:
            got.append(frame)
    assert [decode_payload(f.header, f.bulk)[0] for f in got] == msgs
    assert dec.pending == 0 and dec.receive_buffer() is None
    for buf in in_place:
        assert any(f.bulk is buf for f in got)


@settings(max_examples=50, deadline=None)
@given(st.lists(messages, min_size=1, max_size=3))
def test_reading_exactly_wanted_bytes_never_overreads(msgs: list[Message]) -> None:
    stream = b"".join(frame_of("1.8", m) for m in msgs)
    dec = FrameDecoder()
    pos = 0
    got = []
    while pos < len(stream):
        n = dec.wanted()
        dec.feed(stream[pos:pos + n])
        pos += n
        frame = dec.next_frame()
        if frame is not None:
            got.append(decode_payload(frame.header, frame.bulk)[0])
            assert dec.pending == 0  # the frame ended exactly where the read did
    assert got == msgs


def test_frame_decoder_refuses_oversized_prefix_before_buffering() -> None:
    dec = FrameDecoder(max_header=100, max_bulk=1000)
    dec.feed(PREFIX.pack(101, 0))
    with pytest.raises(ProtocolError):
        dec.next_frame()
    dec = FrameDecoder(max_header=100, max_bulk=1000)
    dec.feed(PREFIX.pack(10, 1001))
    with pytest.raises(ProtocolError):
        dec.next_frame()
    dec = FrameDecoder()
    dec.feed(PREFIX.pack(0xFFFFFFFF, 0xFFFFFFFF))
    with pytest.raises(ProtocolError):
        dec.next_frame()
    dec = FrameDecoder(max_header=100, max_bulk=1000)
    dec.feed(PREFIX.pack(100, 1000))  # at the limits: accepted, waits for the body
    assert dec.next_frame() is None


def test_check_prefix() -> None:
    check_prefix(MAX_HEADER, MAX_BULK)
    with pytest.raises(ProtocolError):
        check_prefix(MAX_HEADER + 1, 0)
    with pytest.raises(ProtocolError):
        check_prefix(0, MAX_BULK + 1)
    check_prefix(5, 5, max_header=5, max_bulk=5)


# -- NIDs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,nid", [
    ("localhost:988", Nid("localhost", 988)),
    ("10.0.0.1:1", Nid("10.0.0.1", 1)),
    (" host:65535\n", Nid("host", 65535)),
    ("[::1]:80", Nid("[::1]", 80)),
    ("fe80::1:7000", Nid("fe80::1", 7000)),
    ("h:080", Nid("h", 80)),
])
def test_nid_parse(text: str, nid: Nid) -> None:
    assert Nid.parse(text) == nid


@pytest.mark.parametrize("text", ["", "host", "host:", ":80", " :80", "host:0", "host:65536",
                                  "host:-1", "host:+80", "host:abc", "host:8 0", "host:80x",
                                  "host:1e3", "host:99999999999999999999"])
def test_nid_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        Nid.parse(text)


@given(host=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-:_", min_size=1,
                    max_size=30),
       port=st.integers(1, 65535))
def test_nid_round_trip(host: str, port: int) -> None:
    nid = Nid(host, port)
    assert str(nid) == f"{host}:{port}"
    assert Nid.parse(str(nid)) == nid


def test_parse_spec() -> None:
    assert parse_spec("mgs1:988,mgs2:989:/lustre") == (
        [Nid("mgs1", 988), Nid("mgs2", 989)], "lustre")
    assert parse_spec("127.0.0.1:7000:/fs") == ([Nid("127.0.0.1", 7000)], "fs")


@pytest.mark.parametrize("spec", ["", "mgs:988", "mgs:988:/", "mgs:988:/a/b", ":/fs",
                                  "mgs:/fs", "mgs:988,:/fs", "mgs:988,,b:1:/fs", "mgs:0:/fs",
                                  "mgs:988/fs"])
def test_parse_spec_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_spec(spec)


@given(nids=st.lists(st.builds(Nid, st.text(alphabet="abcxyz0123456789.-", min_size=1,
                                            max_size=12), st.integers(1, 65535)),
                     min_size=1, max_size=4),
       fsname=st.text(alphabet="abcdefghij0123456789_-", min_size=1, max_size=8))
def test_spec_round_trip(nids: list[Nid], fsname: str) -> None:
    assert parse_spec(format_spec(nids, fsname)) == (nids, fsname)


# -- FIDs -----------------------------------------------------------------------------------------

def test_root_fid() -> None:
    assert fid_of(1, 0) == ROOT_FID == Fid(FID_SEQ_ROOT, 1, 0)
    assert fid_of(1, 7, igif=True) == ROOT_FID
    assert ino_of(ROOT_FID) == 1


@given(ino=st.integers(2, (1 << 63) - 1), gen=st.integers(0, 0xFFFFFFFF))
def test_normal_fid_round_trip(ino: int, gen: int) -> None:
    fid = fid_of(ino, gen)
    assert fid.seq >= FID_SEQ_NORMAL and fid.ver == 0
    assert ino_of(fid) == ino
    assert fid != ROOT_FID


@given(ino=st.integers(12, IGIF_MAX_SEQ), gen=st.integers(0, 0xFFFFFFFF))
def test_igif_round_trip(ino: int, gen: int) -> None:
    fid = fid_of(ino, gen, igif=True)
    assert fid == Fid(ino, gen, 0)
    assert ino_of(fid) == ino


@pytest.mark.parametrize("ino", [2, 11, IGIF_MAX_SEQ + 1, FID_SEQ_NORMAL])
def test_igif_never_names_another_inode(ino: int) -> None:
    """BUG (latent: fid_of has no caller yet): an IGIF FID made for an MDT inode outside
    [12, 0xFFFFFFFF] is not mapped back to it: inodes 2..11 (the first files this MDT
    creates) give a FID ino_of rejects, larger ones one it reads as a normal FID
    (fid_of(0x200000400, 1, igif=True) names inode 1, the root).
    fid_of must either refuse (ValueError) or give a FID ino_of maps back."""
    try:
        fid = fid_of(ino, 1, igif=True)
    except ValueError:
        return
    assert ino_of(fid) == ino


@given(st.builds(Fid, st.integers(0, U64), st.integers(0, U64), st.integers(0, U64)))
def test_fid_str_parse_round_trip(fid: Fid) -> None:
    text = str(fid)
    assert text.startswith("[0x") and text.endswith("]")
    assert Fid.parse(text) == fid
    assert Fid.parse(text.strip("[]")) == fid


def test_fid_parse_forms() -> None:
    assert str(Fid(0x200000400, 0x1A, 0)) == "[0x200000400:0x1a:0x0]"
    assert Fid.parse(" [0x200000400:0x1a:0x0] ") == Fid(0x200000400, 0x1A, 0)
    assert Fid.parse("200000400:1a:0") == Fid(0x200000400, 0x1A, 0)


@pytest.mark.parametrize("text", ["", "[]", "[0x1:0x2]", "[0x1:0x2:0x3:0x4]", "[0x1:0xg:0x3]",
                                  "[0x1::0x3]", "fid"])
def test_fid_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        Fid.parse(text)


@pytest.mark.parametrize("fid", [Fid(0, 0), Fid(5, 1), Fid(11, 1), Fid(FID_SEQ_ROOT, 2),
                                 Fid(FID_SEQ_NORMAL - 1, 1), Fid(IGIF_MAX_SEQ + 1, 1)])
def test_ino_of_rejects_fids_naming_no_inode(fid: Fid) -> None:
    with pytest.raises(ValueError):
        ino_of(fid)
