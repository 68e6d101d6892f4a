"""rpc.py - one bidirectional RPC endpoint over a trio stream.

Either side may send requests; replies are matched to waiting callers by xid
by the single reader task. Incoming requests are each handled in their own
task, so a slow request (or an AST the other side must answer first) never
blocks the connection. One send lock per connection keeps frames whole.

A malformed message gets an EPROTO reply (when its frame was intact) and the
connection goes on; a broken frame (oversized) gets an ERR message and the
connection is closed. Nothing a peer sends can raise out of `serve`.

On an authenticated connection (`mac`, see auth.py) every frame is followed by a
MAC tag; a frame whose tag fails closes the connection unanswered.

Framing is decided by codec.FrameDecoder (sans-IO: prefix, limits, header, bulk,
tag); this module only moves bytes between the socket and it, reading large bulks
straight into their buffer.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .auth import TAG_BYTES, FrameMac
from .codec import Codec, Frame, FrameDecoder, codec_for, decode_payload
from .constants import ERR, MAX_BULK, MAX_HEADER, REPLY, REQUEST
from .errors import ConnectionLost, ProtocolError, RpcTimeout
from .message import Message
from .waiters import Deadlines, ReplyWaiter

log = logging.getLogger(__name__)

Handler = Callable[["Endpoint", Message], Awaitable["Message | None"]]

_RECV_CHUNK = 64 << 10  # (per connection: a server with 1000 clients keeps 1000)
MAX_INFLIGHT = 64  # requests of one peer handled at once; the reader waits beyond that
_SMALL_BULK = 64 << 10  # below this, header and bulk go out in one send
SOCKET_BUFFER = 4 << 20
# A bulk this large is MAC'd in a worker thread (hashlib releases the GIL): the
# hashing of a 1 MiB BRW then overlaps the process's other work on another core.
_THREAD_MAC = 256 << 10


def tune_socket(stream: trio.abc.Stream) -> None:
    """Large socket buffers: a 4 MiB BRW should not need dozens of wakeups."""
    import socket

    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass


def _consume(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first n bytes from a list of buffers."""
    while views and n >= len(views[0]):
        n -= len(views[0])
        views = views[1:]
    if views and n:
        views = [views[0][n:], *views[1:]]
    return views


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a trio SocketStream (None for other streams)."""
    raw = getattr(getattr(stream, "socket", None), "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


class _Receiver:
    """Feeds a connection's bytes to its sans-IO FrameDecoder and hands out whole frames.

    On a socket it calls recv directly and waits for readability only when nothing
    is there: trio's receive_some costs several scheduler passes per message, which is
    most of a metadata RPC's round trip on loopback. Frames already buffered come out
    without any await, so one read that brought many messages is handled in one go.
    A read that did not fill its buffer emptied the socket (almost always): the next
    one waits for readability first instead of a recv that would fail with EAGAIN.
    """

    YIELD_EVERY = 64  # reads and frames without waiting before giving other tasks a turn

    def __init__(self, stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        self.stream = stream
        self.decoder = decoder
        self.raw = _raw_socket(stream)
        self.scratch = bytearray(_RECV_CHUNK) if self.raw is not None else bytearray()
        self.unyielded = 0
        self.drained = False  # the last read left the socket empty (it was short)

    async def _recv_into(self, view: memoryview) -> int:
        assert self.raw is not None
        if self.drained:
            self.drained = False
            self.unyielded = 0
            await trio.lowlevel.wait_readable(self.raw)
        while True:
            try:
                k = self.raw.recv_into(view)
            except BlockingIOError:
                self.unyielded = 0
                await trio.lowlevel.wait_readable(self.raw)
                continue
            if not k:
                raise EOFError
            self.unyielded += 1
            if self.unyielded >= self.YIELD_EVERY:
                self.unyielded = 0
                await trio.lowlevel.checkpoint()
            return k

    async def next_frame(self) -> Frame:
        decoder = self.decoder
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                self.unyielded += 1
                if self.unyielded >= self.YIELD_EVERY:  # a read brought many frames
                    self.unyielded = 0
                    await trio.lowlevel.checkpoint()
                return frame
            if self.raw is None:
                data = await self.stream.receive_some(_RECV_CHUNK)
                if not data:
                    raise EOFError
                decoder.feed(data)
                continue
            target = decoder.receive_buffer()
            if target is not None:  # a large bulk, read in place
                with target:
                    decoder.received(await self._recv_into(target))
                continue
            with memoryview(self.scratch) as view:
                k = await self._recv_into(view)
                decoder.feed(view[:k])
                self.drained = k < len(view)


def salvage_xid(header: bytes | bytearray) -> int:
    """The xid of a *request* whose header is invalid, if it can be read at all.

    Never that of a reply: its xid belongs to our own numbering, and an ERR under it
    would answer one of the peer's own calls."""
    import msgpack

    try:
        obj = msgpack.unpackb(header, raw=False, strict_map_key=False)
    except Exception:  # undecodable: no xid to find
        return 0
    if isinstance(obj, dict):
        type_, xid = obj.get("type"), obj.get("xid")
    elif isinstance(obj, list) and len(obj) > 3:
        type_, xid = obj[1], obj[3]
    else:
        return 0
    if type_ != REQUEST or type(type_) is not int:
        return 0
    return xid if type(xid) is int and 0 < xid < (1 << 64) else 0


class Endpoint:
    """An RPC connection: `call` sends requests, `serve` reads and dispatches.

    :codec: the release encoding used for what this side sends.
    :handler: coroutine answering the peer's requests (None: answer EOPNOTSUPP).
    :context: free-form per-connection state of the layer above (e.g. the export).
    """

    def __init__(self, stream: trio.abc.Stream, *, codec: Codec | str = "2.0",
                 handler: Handler | None = None, name: str = "",
                 max_header: int = MAX_HEADER, max_bulk: int = MAX_BULK,
                 follow_peer_release: bool = False,
                 inline_opcodes: frozenset[int] = frozenset(),
                 mac: FrameMac | None = None,
                 on_violation: Callable[[str, str], None] | None = None) -> None:
        self.stream = stream
        # Set on an authenticated connection (secure.py): every frame carries a tag.
        self.mac = mac
        self._raw = _raw_socket(stream)
        # Requests whose handlers never wait (pure computation, e.g. SQLite lookups) are
        # handled by the reader itself: a task spawn per request costs more than they do.
        self.inline_opcodes = inline_opcodes
        tune_socket(stream)
        self.codec = codec_for(codec) if isinstance(codec, str) else codec
        self.handler = handler
        self.name = name
        self.max_header = max_header
        self.max_bulk = max_bulk
        self.follow_peer_release = follow_peer_release
        self.context: dict[str, Any] = {}
        self._next_xid = 1
        self._waiters: dict[int, ReplyWaiter] = {}
        # The calls' timeouts (waiters.py), served by the reaper task while serving.
        self._deadlines = Deadlines()
        self._reaping = False
        self._reap_at = math.inf
        self._reap_wake = trio.Event()
        self._send_lock = trio.Lock()
        self._closed = trio.Event()
        self.close_reason: str | None = None
        self.requests_in = 0
        self.requests_out = 0
        self.malformed = 0
        # Told (kind, detail) of each protocol violation by the peer: "malformed" (an
        # undecodable message in an intact frame) or "oversized" (a frame over the limits).
        self.on_violation = on_violation
        self.mac_failures = 0
        # Backpressure: a peer that floods requests (or junk) and never reads the replies
        # stalls its own connection, not the server's memory or its other clients.
        self._slots = trio.Semaphore(MAX_INFLIGHT)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def new_xid(self) -> int:
        xid = self._next_xid
        self._next_xid += 1
        return xid

    async def call(self, opc: int, body: dict[str, Any] | None = None, *,
                   timeout: float | None = 30.0, flags: int = 0, conn_cnt: int = 0,
                   xid: int | None = None,
                   bulk: bytes | bytearray | memoryview | None = None,
                   transno: int = 0) -> Message:
        """Send a request and wait for its reply (status is not checked here)."""
        if self.closed:
            raise ConnectionLost(self.close_reason or "connection closed")
        msg = Message.request(opc, self.new_xid() if xid is None else xid, body, flags, conn_cnt,
                              bulk, transno)
        waiter = ReplyWaiter()
        self._waiters[msg.xid] = waiter
        self.requests_out += 1
        # The timeout covers the send too: a peer that stops reading must not hang us.
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        try:
            if self._reaping:  # the reaper times the wait out (waiters.py)
                if deadline != math.inf:
                    self._deadlines.compact(len(self._waiters))
                    if self._deadlines.add(deadline, waiter) and deadline < self._reap_at:
                        self._reap_wake.set()
                await self._send(msg, deadline)
                await waiter.wait()
            else:  # (not serving: no reader, no reaper)
                with trio.move_on_at(deadline):
                    await self._send(msg)
                    await waiter.wait()
        finally:
            self._waiters.pop(msg.xid, None)
        if waiter.reply is None and waiter.error is not None:  # (a reply read before the
            raise waiter.error  # connection closed is still the answer)
        if waiter.reply is None:
            raise RpcTimeout(f"{self.name}: no reply to opc {opc} xid {msg.xid} in {timeout}s")
        return waiter.reply

    async def _reap(self) -> None:
        """Time out the calls whose deadline has passed (one task per connection)."""
        deadlines = self._deadlines
        while True:
            for waiter in deadlines.expire(trio.current_time()):
                waiter.timed_out = True
                waiter.wake()
            self._reap_at = deadlines.next_deadline()
            self._reap_wake = wake = trio.Event()
            with trio.move_on_at(self._reap_at):
                await wake.wait()

    async def _send(self, msg: Message, deadline: float = math.inf) -> None:
        """Send one frame. A send that must wait (the socket full, another frame going
        out, a large bulk MAC'd in a thread) gives up at `deadline`: ConnectionLost,
        and the connection is closed (a frame may have been cut)."""
        head = self.codec.encode_header(msg)
        bulk = msg.bulk
        if bulk is not None and len(bulk) < _SMALL_BULK:
            head, bulk = head + bytes(bulk), None
        rest = None
        if self._raw is not None and not self._send_lock.locked() and (
                self.mac is None or bulk is None or len(bulk) < _THREAD_MAC):
            # The common case needs no await at all: the frame (and its tag: it takes
            # the wire now) goes to the kernel at once; no cancel scope is set up.
            tag = b""
            if self.mac is not None:
                absorbed = self.mac.absorb_send(head, bulk)
                tag = self.mac.finish_send(absorbed)  # (privacy: fills absorbed.wire)
                head, bulk = absorbed.wire
            views = [memoryview(head)] + ([memoryview(bulk)] if bulk else []) \
                + ([memoryview(tag)] if tag else [])
            try:
                n = self._raw.sendmsg(views)
            except BlockingIOError:
                n = 0
            except OSError as e:
                self._mark_closed(f"send failed: {e}")
                raise ConnectionLost(self.close_reason) from None
            rest = _consume(views, n)
            if not rest:
                return
            # The socket is full: the rest under the lock, taken before any yield so
            # no other frame can come between.
            self._send_lock.acquire_nowait()
        with trio.CancelScope(deadline=deadline) as scope:
            await self._send_waiting(head, bulk, rest)
        if scope.cancelled_caught:
            raise ConnectionLost(self.close_reason or "send timed out")

    async def _send_waiting(self, head: bytes, bulk: bytes | bytearray | memoryview | None,
                            rest: list[memoryview] | None) -> None:
        """The send of a frame that must wait: `rest` is what the kernel did not take
        of a frame already started (the send lock held), or None: the whole frame."""
        try:
            if rest is not None:
                try:
                    await self._send_views(rest)
                finally:
                    self._send_lock.release()
                return
            absorbed = None
            if self.mac is not None:
                if bulk is not None and len(bulk) >= _THREAD_MAC:
                    absorbed = await trio.to_thread.run_sync(self.mac.absorb_send, head, bulk)
                else:
                    absorbed = self.mac.absorb_send(head, bulk)
                head, bulk = absorbed.wire  # (privacy: the buffers finish_send encrypts into)
            async with self._send_lock:
                # A frame's tag (its bytes already absorbed) is finished when the frame
                # takes the wire, so sequence numbers follow wire order.
                tag = self.mac.finish_send(absorbed) if self.mac is not None else b""
                if self._raw is not None:
                    views = [memoryview(head)] + ([memoryview(bulk)] if bulk else [])
                    await self._send_views(views + ([memoryview(tag)] if tag else []))
                    return
                await self.stream.send_all(head)
                if bulk:
                    await self.stream.send_all(bulk)
                if tag:
                    await self.stream.send_all(tag)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._mark_closed(f"send failed: {e}")
            raise ConnectionLost(self.close_reason) from None
        except trio.Cancelled:
            # A frame may have been cut: the stream cannot be trusted any more.
            self._mark_closed("send cancelled mid-frame")
            raise

    async def _send_views(self, views: list[memoryview]) -> None:
        """Hand `views` to the socket, waiting while it is full (the send lock held)."""
        raw = self._raw
        assert raw is not None
        while views:
            try:
                n = raw.sendmsg(views)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(raw)
                continue
            views = _consume(views, n)

    async def send_reply(self, reply: Message) -> None:
        try:
            try:
                await self._send(reply)
            except (ProtocolError, TypeError, ValueError, OverflowError) as e:
                # The handler built a reply that cannot be encoded: answer EIO instead.
                log.error("%s: reply to xid %d cannot be encoded: %s", self.name, reply.xid, e)
                await self._send(Message(reply.type if reply.type == ERR else REPLY, reply.opc,
                                         reply.xid, conn_cnt=reply.conn_cnt, status=errno.EIO,
                                         body={"error": "reply could not be encoded"}))
        except ConnectionLost:
            log.debug("%s: reply to xid %d lost: connection closed", self.name, reply.xid)

    def _mark_closed(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        for waiter in self._waiters.values():
            if waiter.reply is None:  # (a reply read just before the close still counts)
                waiter.error = ConnectionLost(reason)
                waiter.wake()

    async def aclose(self, reason: str = "closed locally") -> None:
        self._mark_closed(reason)
        with trio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read frames until the connection ends; dispatch replies and requests."""
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reap)
                self._reaping = True
                try:
                    decoder = FrameDecoder(self.max_header, self.max_bulk,
                                           tag_bytes=TAG_BYTES if self.mac is not None else 0,
                                           direct_min=_SMALL_BULK)
                    await self._read_loop(_Receiver(self.stream, decoder), nursery)
                finally:
                    self._reaping = False
                    nursery.cancel_scope.cancel()
        finally:
            await self.aclose(self.close_reason or "connection ended")

    async def _read_loop(self, receiver: _Receiver, nursery: trio.Nursery) -> None:
        while True:
            try:
                frame = await receiver.next_frame()
                if self.mac is not None and not await self._verify(frame):
                    # Injected, altered or replayed: nothing more from this stream is
                    # trusted, and no reply is owed to a frame nobody proved to send.
                    self.mac_failures += 1
                    log.warning("%s: a message failed authentication (bad MAC); closing",
                                self.name)
                    self._mark_closed("a message failed authentication")
                    return
            except ProtocolError as e:
                log.warning("%s: %s; closing", self.name, e)
                if self.on_violation is not None:
                    self.on_violation("oversized", str(e))
                if self.mac is None:  # (authenticated: unproved bytes get no answer)
                    await self.send_reply(Message(ERR, 0, 0, status=errno.EMSGSIZE,
                                                  body={"error": str(e)}))
                self._mark_closed(str(e))
                return
            except EOFError:
                self._mark_closed("peer closed the connection")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self._mark_closed(f"receive failed: {e}")
                return
            header, bulk = frame.header, frame.bulk
            # (Semaphore.acquire would yield to the scheduler for every message, a whole
            # scheduler pass per request and per reply; the receiver yields on its own.)
            slots = self._slots
            if slots.value:
                slots.acquire_nowait()
            else:
                await slots.acquire()
            routed = self._dispatch(header, bulk, nursery)
            if isinstance(routed, Message):
                await self._handle(routed)  # inline: no task to spawn (releases the slot)
            elif not routed:
                self._slots.release()

    async def _verify(self, frame: Frame) -> bool:
        assert self.mac is not None
        parts = (frame.prefix, frame.header, frame.bulk)
        if frame.bulk is not None and len(frame.bulk) >= _THREAD_MAC:
            absorbed = await trio.to_thread.run_sync(self.mac.absorb_recv, *parts)
        else:
            absorbed = self.mac.absorb_recv(*parts)
        return self.mac.finish_recv(absorbed, frame.tag)

    def _dispatch(self, header: bytes | bytearray, bulk: bytearray | None,
                  nursery: trio.Nursery) -> bool | Message:
        """Route one message: True if a task now holds a slot (and will release it),
        a request to handle inline, or False."""
        try:
            msg, codec = decode_payload(header, bulk)
        except ProtocolError as e:
            self.malformed += 1
            log.warning("%s: malformed message: %s", self.name, e)
            if self.on_violation is not None:
                self.on_violation("malformed", str(e))
            # Answer under the request's xid when it can be found, so its caller is not left
            # waiting for a timeout; else under xid 0.
            nursery.start_soon(self._reply_and_release,
                               Message(ERR, 0, salvage_xid(header), status=errno.EPROTO,
                                       body={"error": str(e)}))
            return True
        if msg.type == REQUEST:
            if self.follow_peer_release:
                self.codec = codec
            self.requests_in += 1
            if msg.opc in self.inline_opcodes:
                return msg
            nursery.start_soon(self._handle, msg)
            return True
        waiter = self._waiters.get(msg.xid)
        if waiter is None:
            if msg.type == ERR:
                log.warning("%s: peer reports error %d: %s", self.name, msg.status,
                            msg.body.get("error"))
            else:
                log.debug("%s: reply to unknown xid %d dropped", self.name, msg.xid)
            return False
        waiter.reply = msg
        waiter.wake()
        return False

    async def _reply_and_release(self, reply: Message) -> None:
        try:
            await self.send_reply(reply)
        finally:
            self._slots.release()

    async def _handle(self, msg: Message) -> None:
        try:
            await self._handle_request(msg)
        finally:
            self._slots.release()

    async def _handle_request(self, msg: Message) -> None:
        try:
            if self.handler is None:
                reply: Message | None = msg.reply(status=errno.EOPNOTSUPP)
            else:
                reply = await self.handler(self, msg)
        except ConnectionLost:
            return
        except Exception:
            log.exception("%s: handler failed on opc %d xid %d", self.name, msg.opc, msg.xid)
            reply = msg.reply(status=errno.EIO)
        if reply is not None:
            reply.type = REPLY if reply.type != ERR else ERR
            await self.send_reply(reply)


async def connect_stream(host: str, port: int, timeout: float = 5.0) -> trio.SocketStream:
    """Open a TCP stream within a timeout (trio sets TCP_NODELAY by default)."""
    with trio.fail_after(timeout):
        return await trio.open_tcp_stream(host, port)
