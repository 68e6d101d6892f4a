"""codec.py - wire encodings of `Message` for each release, and the frame format.

Release "2.0" encodes a message as a msgpack map; release "1.8" as a positional
msgpack array (as 1.8's fixed structs were). A frame is an 8-byte prefix
(header length, bulk length; big-endian u32s), the msgpack header, then the
bulk bytes. Bulk data (BRW payloads) travels outside msgpack, as Lustre's bulk
does outside its message buffers: it is neither packed nor copied by the codec,
and the reader can receive it straight into its final buffer. The prefix lets
an oversized message be refused before it is buffered, and a malformed one
cannot desynchronise the stream.

Decoding trusts nothing: every header field is type- and range-checked, and
msgpack's limits follow from the frame length (msgpack.unpackb).
"""

from __future__ import annotations

import struct
import threading
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import msgpack

from .constants import ERR, MAX_BULK, MAX_HEADER, REPLY, REQUEST
from .errors import ProtocolError
from .message import Message

PREFIX = struct.Struct(">II")
_U64 = (1 << 64) - 1
_TYPES = (REQUEST, REPLY, ERR)
MAGIC_18 = 0x0BD00BD3  # lustre_msg magic, first element of a 1.8 array


class Codec(ABC):
    """Encodes and decodes messages for one release."""

    release = ""

    @abstractmethod
    def to_wire(self, msg: Message) -> Any:
        """The msgpack-able object for msg."""

    @abstractmethod
    def from_wire(self, obj: Any) -> Message:
        """The message an unpacked object holds; ProtocolError if it holds none."""

    def encode_header(self, msg: Message) -> bytes:
        """Prefix and packed header of msg's frame (its bulk follows on the wire)."""
        header = _packer().pack(self.to_wire(msg))
        bulk_len = len(msg.bulk) if msg.bulk is not None else 0
        if len(header) > MAX_HEADER or bulk_len > MAX_BULK:
            raise ProtocolError(f"message too large ({len(header)} + {bulk_len} bytes)")
        return PREFIX.pack(len(header), bulk_len) + header

    def encode(self, msg: Message) -> bytes:
        """One whole frame as bytes."""
        head = self.encode_header(msg)
        return head + bytes(msg.bulk) if msg.bulk else head


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's msgpack packer: msgpack.packb builds (and frees) one per call, which
    is a good part of encoding a small header. (Packers are not thread-safe.)"""
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True)
        return _local.packer


def _check_header(type_: Any, opc: Any, xid: Any, flags: Any, conn_cnt: Any, transno: Any,
                  last_committed: Any, status: Any, body: Any) -> Message:
    for name, value in (("opc", opc), ("xid", xid), ("flags", flags), ("conn_cnt", conn_cnt),
                        ("transno", transno), ("last_committed", last_committed),
                        ("status", status)):
        if type(value) is not int or not 0 <= value <= _U64:
            raise ProtocolError(f"header field {name} is not a u64: {value!r:.40}")
    if type(type_) is not int or type_ not in _TYPES:
        raise ProtocolError(f"bad message type {type_!r:.40}")
    if type(body) is not dict:
        raise ProtocolError("message body is not a map")
    return Message(type_, opc, xid, flags, conn_cnt, transno, last_committed, status, body)


class Codec20(Codec):
    """Release 2.0: a map with named header fields."""

    release = "2.0"

    def to_wire(self, msg: Message) -> Any:
        return {"type": msg.type, "opc": msg.opc, "xid": msg.xid, "flags": msg.flags,
                "conn_cnt": msg.conn_cnt, "transno": msg.transno,
                "last_committed": msg.last_committed, "status": msg.status, "body": msg.body}

    def from_wire(self, obj: Any) -> Message:
        if type(obj) is not dict:
            raise ProtocolError("a 2.0 message is a map")
        try:
            return _check_header(obj["type"], obj["opc"], obj["xid"], obj.get("flags", 0),
                                 obj.get("conn_cnt", 0), obj.get("transno", 0),
                                 obj.get("last_committed", 0), obj.get("status", 0),
                                 obj.get("body", {}))
        except KeyError as e:
            raise ProtocolError(f"2.0 header lacks {e}") from None


class Codec18(Codec):
    """Release 1.8: a positional array, magic first."""

    release = "1.8"

    def to_wire(self, msg: Message) -> Any:
        return [MAGIC_18, msg.type, msg.opc, msg.xid, msg.flags, msg.conn_cnt, msg.transno,
                msg.last_committed, msg.status, msg.body]

    def from_wire(self, obj: Any) -> Message:
        if type(obj) is not list or len(obj) != 10 or obj[0] != MAGIC_18:
            raise ProtocolError("a 1.8 message is a 10-element array starting with the magic")
        return _check_header(*obj[1:])


CODECS: dict[str, Codec] = {"2.0": Codec20(), "1.8": Codec18()}
RELEASES = tuple(CODECS)


def codec_for(release: str) -> Codec:
    try:
        return CODECS[release]
    except KeyError:
        raise ValueError(f"unknown release {release!r}; known: {', '.join(RELEASES)}") from None


def decode_payload(payload: bytes | bytearray, bulk: bytes | bytearray | None = None
                   ) -> tuple[Message, Codec]:
    """Decode one frame's header (and attach its bulk) into a message and its codec."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for corrupt input
        raise ProtocolError(f"undecodable message: {e}") from None
    codec = CODECS["2.0"] if type(obj) is dict else CODECS["1.8"]
    msg = codec.from_wire(obj)
    msg.bulk = bulk
    return msg, codec


def check_prefix(header_len: int, bulk_len: int, max_header: int = MAX_HEADER,
                 max_bulk: int = MAX_BULK) -> None:
    if header_len > max_header or bulk_len > max_bulk:
        raise ProtocolError(f"frame of {header_len} + {bulk_len} bytes exceeds the limits "
                            f"({max_header} + {max_bulk})")


class Frame(NamedTuple):
    """One whole frame as read: its prefix and header bytes (what a MAC covers), its
    bulk, and the MAC tag that followed it on an authenticated connection (b"" else)."""

    header: bytearray
    bulk: bytearray | None
    prefix: bytes
    tag: bytes


class FrameDecoder:
    """Sans-IO splitter of a byte stream into frames: the caller feeds what it read and
    takes whole frames out; it never blocks and never reads a socket itself.

    A frame is prefix, header, bulk, then `tag_bytes` of MAC tag on an authenticated
    connection. The limits are checked as soon as a prefix is complete, before anything
    of an oversized frame is buffered (ProtocolError; the stream is then unusable).

    Large bulks need not pass through the feed buffer: while the decoder waits for the
    bulk of a frame of at least `direct_min` bytes, `receive_buffer()` hands out the
    rest of that bulk's own buffer for the caller to read into (`recv_into`), and
    `received(n)` says how much arrived. A 4 MiB BRW is then read in place, never
    copied (the reason rpc.py once had its own reader)."""

    def __init__(self, max_header: int = MAX_HEADER, max_bulk: int = MAX_BULK, *,
                 tag_bytes: int = 0, direct_min: int = 64 << 10) -> None:
        self.max_header = max_header
        self.max_bulk = max_bulk
        self.tag_bytes = tag_bytes
        self.direct_min = direct_min
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already taken (dropped lazily: one move per feed)
        # The frame in progress once its prefix and header are in: (prefix, header,
        # header_len, bulk_len); and the bulk being received in place, with its fill.
        self._prefix: bytes | None = None
        self._sizes = (0, 0)
        self._header: bytearray | None = None
        self._direct: bytearray | None = None
        self._direct_fill = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def _avail(self) -> int:
        return len(self._buf) - self._pos

    @property
    def pending(self) -> int:
        """Bytes fed and not yet part of a frame taken out."""
        return self._avail()

    def _take(self, n: int) -> bytearray:
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def wanted(self) -> int:
        """How many more bytes complete the current frame (at least 1 when idle)."""
        if self._prefix is None:
            if self._avail() < PREFIX.size:
                return PREFIX.size - self._avail()
            h, b = PREFIX.unpack_from(self._buf, self._pos)
            return max(1, PREFIX.size + h + b + self.tag_bytes - self._avail())
        h, b = self._sizes
        have = (h if self._header is not None else 0) + self._direct_fill + self._avail()
        return max(1, h + b + self.tag_bytes - have)

    def receive_buffer(self) -> memoryview | None:
        """Where the caller should read next to receive a large bulk in place, or None
        (read into any buffer and `feed` it)."""
        if self._header is None and not self._start_frame():
            return None
        if self._direct is None:
            bulk_len = self._sizes[1]
            if bulk_len < self.direct_min or self._avail() >= bulk_len:
                return None
            self._direct = bytearray(bulk_len)
            have = self._avail()
            self._direct[:have] = memoryview(self._buf)[self._pos:]
            self._pos += have
            self._direct_fill = have
        if self._direct_fill == len(self._direct):
            return None  # the bulk is in; what follows (a tag, the next frame) is fed
        return memoryview(self._direct)[self._direct_fill:]

    def received(self, n: int) -> None:
        """n bytes arrived in the buffer `receive_buffer` handed out."""
        assert self._direct is not None and self._direct_fill + n <= len(self._direct)
        self._direct_fill += n

    def _start_frame(self) -> bool:
        """Take the prefix and header of the next frame once they are in."""
        if self._prefix is None:
            if self._avail() < PREFIX.size:
                return False
            h, b = PREFIX.unpack_from(self._buf, self._pos)
            check_prefix(h, b, self.max_header, self.max_bulk)
            self._prefix = bytes(self._take(PREFIX.size))
            self._sizes = (h, b)
        if self._avail() < self._sizes[0]:
            return False
        self._header = self._take(self._sizes[0])
        return True

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed."""
        buf, pos = self._buf, self._pos
        if self._prefix is None and len(buf) - pos >= PREFIX.size:
            # The common case, a whole frame already fed: taken in one step.
            h, b = PREFIX.unpack_from(buf, pos)
            start = pos + PREFIX.size
            end = start + h + b + self.tag_bytes
            if end <= len(buf) and h <= self.max_header and b <= self.max_bulk:
                self._pos = end
                return Frame(buf[start:start + h], buf[start + h:start + h + b] if b else None,
                             bytes(buf[pos:start]),
                             bytes(buf[end - self.tag_bytes:end]) if self.tag_bytes else b"")
        if self._header is None and not self._start_frame():
            return None
        assert self._prefix is not None and self._header is not None
        bulk_len = self._sizes[1]
        if self._direct is not None:
            if self._direct_fill < bulk_len or self._avail() < self.tag_bytes:
                return None
            bulk: bytearray | None = self._direct
        else:
            if self._avail() < bulk_len + self.tag_bytes:
                return None
            bulk = self._take(bulk_len) if bulk_len else None
        tag = bytes(self._take(self.tag_bytes)) if self.tag_bytes else b""
        frame = Frame(self._header, bulk, self._prefix, tag)
        self._prefix, self._header, self._direct, self._direct_fill = None, None, None, 0
        return frame
