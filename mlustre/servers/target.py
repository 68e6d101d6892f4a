"""target.py - what MGS, MDT and OST servers share: listening, connect and
exports, opcode dispatch, transnos and the commit loop.

A subclass provides `handlers` (opcode -> coroutine taking (export, request)
and returning a reply body) and the storage-specific `do_commit`. Replies to
updates carry the transno given to them and every reply carries the target's
last_committed, so clients can tell which of their requests could still be lost.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import trio

from ..params import ParamError, ParamTree, parse_positive_float, parse_positive_int
from ..procs import detach_stdout_to_stderr
from ..protocol import constants as C
from ..protocol.errors import AuthError, ConnectionLost
from ..protocol.ldlm import LockType
from ..protocol.message import Message
from ..protocol.rpc import Endpoint
from ..protocol.secure import HANDSHAKE_TIMEOUT, server_handshake
from . import fail_loc
from .barrier import DEFAULT_FREEZE_TIMEOUT, ServerBarrier
from .errors import FieldError, ServiceError, body_field  # noqa: F401  (servers import them here)
from .fail_loc import FailLoc
from .ldlm_service import LDLM_OPCODES, LdlmService
from .limits import DEFAULT_MAX_LOCKS, ConnectionLimit, Misbehaviour
from .reply_log import ReplyLog, SavedReply
from .storage import StorageBusy, TargetStorage

log = logging.getLogger(__name__)


def crash(why: str) -> None:
    """Die at once, as kill -9 would (fail_loc crash points): no commit, no cleanup."""
    log.critical("%s", why)
    for h in logging.getLogger().handlers:
        h.flush()
    os.kill(os.getpid(), signal.SIGKILL)


# How long a connection refused for the connection limit may take to send its first
# request (answered EUSERS) before it is closed anyway.
REFUSE_GRACE = 5.0


@dataclass
class Export:
    """The server side of one client's connection to this target."""

    uuid: str
    endpoint: Endpoint
    connected_at: float = field(default_factory=time.time)
    nid: str = ""
    release: str = "2.0"
    flags: int = 0
    handle: int = 0
    requests: int = 0
    last_seen: float = 0.0  # (trio clock) the last request, pings included


# A handler returns a reply body, (transno, body) for updates, or (transno, body, bulk);
# or DEFERRED when a task of its own sends the reply later (an update waiting for locks
# must not hold up the connection's reader, which brings the cancels it waits for).
DEFERRED: Any = object()
Handler = Callable[[Export, Message], Awaitable[Any]]


class TargetServer:
    """Base of every server process: one target, many client exports."""

    kind = "target"
    connect_opcodes: tuple[int, ...] = ()
    disconnect_opcodes: tuple[int, ...] = ()
    # Handlers of these never wait on anything, so they may run in the connection's reader.
    inline_opcodes: frozenset[int] = frozenset({C.OBD_PING})
    # The lock types this target's namespace serves (none: LDLM opcodes are not served).
    lock_types: frozenset[LockType] = frozenset()
    # Updates whose replies are kept, so that a resend is answered, not executed again.
    reconstructable_opcodes: frozenset[int] = frozenset()

    def __init__(self, name: str, data_dir: str, *, host: str = "127.0.0.1", port: int = 0,
                 release: str = "2.0", commit_interval: float = 1.0,
                 ldlm_timeout: float = 10.0, update_lock: bool = True,
                 max_connections: int | None = None, max_locks: int = DEFAULT_MAX_LOCKS,
                 evict_threshold: int | None = None, auth_key: bytes | None = None) -> None:
        self.name = name
        # Secure mode: every connection proves this filesystem key before its first
        # request, and every frame carries a MAC (protocol/auth.py). The same key
        # authenticates this server's own links to the MGS and the OSTs.
        self.auth_key = auth_key
        self.storage = TargetStorage(data_dir)
        self.host = host
        self.port = port
        self.release = release
        self.commit_interval = commit_interval
        self.exports: dict[str, Export] = {}
        self.handlers: dict[int, Handler] = {}
        self.stats: dict[str, int] = {}
        self.nid = ""
        self._commit_wanted = trio.Event()
        self._commit_lock = trio.Lock()
        self._stopping = trio.Event()
        self._next_handle = 1
        self._params: ParamTree | None = None
        if not ldlm_timeout > 0:
            raise ValueError("ldlm_timeout must be positive")
        self.ldlm_timeout = ldlm_timeout
        self.ldlm = LdlmService(self, self.lock_types, ldlm_timeout)
        # Limits against hostile or broken clients (limits.py, docs/protocol.md "Limits").
        self.connections = ConnectionLimit()
        if max_connections is not None:
            if max_connections < 1:
                raise ValueError("max_connections must be at least 1")
            self.connections.limit = max_connections
        if max_locks < 1:
            raise ValueError("max_locks must be at least 1")
        self.ldlm.max_locks = max_locks
        self.misbehaviour = Misbehaviour()
        if evict_threshold is not None:
            if evict_threshold < 0:
                raise ValueError("evict_threshold must be 0 (never) or more")
            self.misbehaviour.threshold = evict_threshold
        # Connect flags this server grants (a client gets the ones both sides have).
        self.connect_flags = C.OBD_CONNECT_FID | C.OBD_CONNECT_IBITS | C.OBD_CONNECT_TRANSNO
        if update_lock and self.lock_types:
            self.connect_flags |= C.OBD_CONNECT_UPDATE_LOCK
        self.barrier = ServerBarrier(self) if self.lock_types else None
        self._active = 0  # requests being handled (a graceful stop lets them finish)
        self._idle = trio.Event()
        self.reply_log = ReplyLog()
        self._running: dict[tuple[str, int], trio.Event] = {}  # updates being executed
        self._drop_replies: set[tuple[str, int]] = set()
        self._crash_replies: set[tuple[str, int]] = set()
        self.fail: FailLoc | None = None
        self._tasks: trio.Nursery | None = None

    # -- transactions (overridden by targets that have them) --
    @property
    def last_transno(self) -> int:
        return 0

    @property
    def last_committed(self) -> int:
        return 0

    async def do_commit(self) -> None:
        """Make every update so far durable (subclasses)."""

    def needs_commit(self) -> bool:
        return self.last_committed < self.last_transno

    async def commit(self) -> int:
        async with self._commit_lock:
            if self.needs_commit():
                await self.do_commit()
            return self.last_committed

    async def _commit_loop(self) -> None:
        while True:
            with trio.move_on_after(self.commit_interval):
                await self._commit_wanted.wait()
            self._commit_wanted = trio.Event()
            await self.commit()

    # -- lifecycle --
    def open_storage(self) -> None:
        """Claim the storage and load it (subclasses extend)."""
        self.storage.claim(self.name)

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.storage.claimed:
            self.open_storage()
        try:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio.serve_tcp, self._serve_connection, self.port, host=self.host))
                sockname = listeners[0].socket.getsockname()
                self.nid = f"{sockname[0]}:{sockname[1]}"
                self._tasks = nursery
                nursery.start_soon(self._commit_loop)
                if self.lock_types:
                    self.ldlm.start(nursery)
                await self.started(nursery)
                log.info("%s (%s, release %s) serving on %s, instance %d", self.name, self.kind,
                         self.release, self.nid, self.storage.instance)
                task_status.started(self.nid)
                await self._stopping.wait()
                await self.graceful_stop()
                nursery.cancel_scope.cancel()
        finally:
            self.close_storage()

    async def started(self, nursery: trio.Nursery) -> None:
        """Hook run once listening (subclasses: register with the MGS, start tasks)."""

    async def graceful_stop(self) -> None:
        """Freeze the barrier (the clients that hold it flush, wait for the commit and
        stop sending updates, so nothing is left for them to replay), let the requests
        being handled finish, then commit and tear down (`shutdown`)."""
        if self.barrier is not None and self.barrier.holders():
            with trio.move_on_after(self.ldlm_timeout * 1.5) as scope:
                await self.barrier.freeze()
            if scope.cancelled_caught:
                log.warning("%s: barrier not frozen within %gs; stopping anyway",
                            self.name, self.ldlm_timeout * 1.5)
        with trio.move_on_after(5.0):
            while self._active:
                self._idle = trio.Event()
                await self._idle.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Commit everything (subclasses extend)."""
        with trio.CancelScope(shield=True):
            await self.commit()

    def close_storage(self) -> None:
        self.storage.release()

    def stop(self) -> None:
        self._stopping.set()

    # -- connections --
    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            peer_nid = f"{peer[0]}:{peer[1]}"
        except OSError:
            peer_nid = "?"
        if not self.connections.admit():
            # (A secure peer must prove the key first: the refusal is then authenticated.)
            mac = await self._authenticate(stream, peer_nid) if self.auth_key else None
            if self.auth_key is None or mac is not None:
                await self._refuse_connection(stream, peer_nid, mac)
            return
        try:
            await self._serve_admitted(stream, peer_nid)
        finally:
            self.connections.release()

    async def _serve_admitted(self, stream: trio.SocketStream, peer_nid: str) -> None:
        mac = None
        if self.auth_key is not None:
            mac = await self._authenticate(stream, peer_nid)
            if mac is None:
                return
        endpoint = Endpoint(stream, codec=self.release, handler=self._handle,
                            name=f"{self.name}<-{peer_nid}", follow_peer_release=True,
                            inline_opcodes=self.inline_opcodes, mac=mac)
        endpoint.context["nid"] = peer_nid
        endpoint.on_violation = partial(self._endpoint_violation, endpoint)
        try:
            await endpoint.serve()
        except Exception:  # never let one connection take the server down
            log.exception("%s: connection from %s failed", self.name, peer_nid)
        finally:
            if endpoint.mac_failures:
                self.count("auth_mac_failures", endpoint.mac_failures)
            export = endpoint.context.get("export")
            if export is not None and self.exports.get(export.uuid) is export:
                self.exports.pop(export.uuid, None)
                await self.export_disconnected(export)

    async def _refuse_connection(self, stream: trio.SocketStream, peer_nid: str,
                                 mac: Any = None) -> None:
        """A connection over the limit: its first request is answered EUSERS (so its
        caller gets a clear error, not a timeout), then it is closed."""
        self.count("connections_refused")
        log.warning("%s: refusing a connection from %s: %d connections is the limit",
                    self.name, peer_nid, self.connections.limit)
        answered = trio.Event()

        async def refuse(endpoint: Endpoint, req: Message) -> None:
            await endpoint.send_reply(req.reply(
                {"error": f"{self.name}: too many connections (limit "
                          f"{self.connections.limit})"},
                status=errno.EUSERS, last_committed=self.last_committed))
            answered.set()

        endpoint = Endpoint(stream, codec=self.release, handler=refuse,
                            name=f"{self.name}<-{peer_nid} (refused)", follow_peer_release=True,
                            mac=mac)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.serve)
            with trio.move_on_after(REFUSE_GRACE):
                await answered.wait()
            with trio.move_on_after(1.0):  # let the peer read the answer and close first
                await endpoint.wait_closed()
            await endpoint.aclose("too many connections")
            nursery.cancel_scope.cancel()

    def violation(self, uuid: str, kind: str, detail: str = "") -> None:
        """A connected client broke the protocol (limits.VIOLATIONS): counted, and once
        it has done so too often (limits.Misbehaviour) it is evicted through the lock
        service's eviction path: its locks are released and its export forgotten."""
        self.count("violations")
        self.count(f"violation.{kind}")
        if uuid not in self.exports:
            return
        log.info("%s: protocol violation by %s (%s): %s", self.name, uuid, kind, detail)
        if self.misbehaviour.note(uuid, time.monotonic()) and self._tasks is not None:
            self.count("misbehaviour_evictions")
            self._tasks.start_soon(self.ldlm.evict, uuid,
                                   f"repeated protocol violations (last: {kind})")

    def _endpoint_violation(self, endpoint: Endpoint, kind: str, detail: str) -> None:
        export = endpoint.context.get("export")
        if export is None:  # not connected: nothing to evict, the error reply suffices
            self.count(f"violation.{kind}")
            return
        self.violation(export.uuid, kind, detail)

    async def _authenticate(self, stream: trio.SocketStream, peer_nid: str) -> Any:
        """The connection's FrameMac once the peer proved the key; None (counted,
        logged, the stream closed) if it did not."""
        try:
            mac = await server_handshake(stream, self.auth_key or b"", name=self.name,
                                         release=self.release, timeout=HANDSHAKE_TIMEOUT)
        except AuthError as e:
            why = str(e)
        except trio.TooSlowError:
            why = f"no handshake within {HANDSHAKE_TIMEOUT:g}s"
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            why = f"connection lost during the handshake ({e or type(e).__name__})"
        else:
            self.count("auth_ok")
            return mac
        self.count("auth_refused")
        log.warning("%s: refused connection from %s: %s", self.name, peer_nid, why)
        await trio.aclose_forcefully(stream)
        return None

    async def export_disconnected(self, export: Export) -> None:
        """Hook: a client's connection ended (subclasses clean up its state)."""

    async def evict_export(self, uuid: str, reason: str) -> None:
        """Forget a client's export and close its connection (the lock service evicts
        it). Requests still in flight on that connection get ENOTCONN."""
        export = self.exports.pop(uuid, None)
        if export is None:
            return
        log.warning("%s: evicting client %s (%s): %s", self.name, uuid, export.nid, reason)
        self.misbehaviour.forget(uuid)
        export.endpoint.context.pop("export", None)
        await self.export_disconnected(export)
        self.client_left(uuid)
        await export.endpoint.aclose(f"evicted: {reason}")

    async def dispatch(self, handler: Handler, export: Export, req: Message) -> Any:
        """Run a request's handler (the MDT wraps replays)."""
        return await handler(export, req)

    def replay_finished(self, export: Export) -> None:
        """Hook: a client says it has replayed everything (the MDT's recovery)."""

    def lock_replay_finished(self, export: Export) -> None:
        """Hook: a client says it has replayed its locks too (end of its recovery)."""

    def client_joined(self, export: Export) -> None:
        """Hook: a client connected (the MDT remembers the ones that replay, for its
        next recovery)."""

    def client_left(self, uuid: str) -> None:
        """Hook: a client disconnected cleanly or was evicted: not waited for at the
        next restart."""

    def replay_done(self, req: Message) -> Message | None:
        """Hook: the reply to a replayed update whose effect survived the crash (None:
        look it up in the reply log, or run it again)."""
        return None

    def check_request(self, export: Export, req: Message) -> None:
        """Hook: refuse (ServiceError) a request body this server's release does not
        speak, or turn it into the form the handlers read (the MDT: how objects are
        named, 1.8's open layout)."""

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    async def _handle(self, endpoint: Endpoint, req: Message) -> Message | None:
        self._active += 1
        try:
            return await self._handle_one(endpoint, req)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _handle_one(self, endpoint: Endpoint, req: Message) -> Message | None:
        self.count(f"req.{C.OPCODE_NAMES.get(req.opc, req.opc)}")
        seen: Export | None = endpoint.context.get("export")
        if seen is not None:
            seen.last_seen = trio.current_time()
        try:
            if req.opc in self.connect_opcodes:
                body = await self._connect(endpoint, req)
                return req.reply(body, last_committed=self.last_committed)
            if req.opc == C.OBD_PING:
                if req.flags & C.MSG_REQ_REPLAY_DONE and "export" in endpoint.context:
                    self.replay_finished(endpoint.context["export"])
                if req.flags & C.MSG_LOCK_REPLAY_DONE and "export" in endpoint.context:
                    self.lock_replay_finished(endpoint.context["export"])
                return req.reply(last_committed=self.last_committed)
            export: Export | None = endpoint.context.get("export")
            if export is None:
                raise ServiceError(errno.ENOTCONN, "not connected")
            if req.opc in self.disconnect_opcodes:
                await self.commit()
                self.exports.pop(export.uuid, None)
                endpoint.context.pop("export", None)
                self.ldlm.release(export.uuid)
                await self.export_disconnected(export)
                self.client_left(export.uuid)
                return req.reply(last_committed=self.last_committed)
            self.check_request(export, req)
            if C.is_update(req.opc, req.body):
                if req.flags & C.MSG_RESENT:
                    self.count("resent_updates")
                if self.barrier is not None:
                    self.barrier.note_update(export, len(req.bulk or b""))
            fail = self.fail
            drop_reply = False
            if fail is not None and fail.matches(req.opc):
                fail.hits += 1
                self.count("fail_loc_hits")
                log.warning("%s: fail_loc %s on xid %d", self.name, fail, req.xid)
                if fail.action == "errno":
                    raise ServiceError(fail.err, f"fail_loc {fail}")
                if fail.action == "drop_request":
                    await endpoint.aclose("fail_loc: request dropped")
                    return None
                if fail.action == "delay":
                    await trio.sleep(fail.seconds)
                if fail.action == "crash_before":
                    crash(f"{self.name}: fail_loc {fail}: crashing before xid {req.xid}")
                if fail.action == "crash_after":
                    self._crash_replies.add((export.uuid, req.xid))
                drop_reply = fail.action == "drop_reply"
            if req.opc in self.reconstructable_opcodes:
                key = (export.uuid, req.xid)
                if req.flags & (C.MSG_RESENT | C.MSG_REPLAY):
                    saved = self.reply_log.lookup(*key)
                    if saved is not None:
                        self.count("reconstructed")
                        if drop_reply:
                            await endpoint.aclose("fail_loc: reply dropped")
                            return None
                        return self._reconstructed(req, saved)
                    done = self.replay_done(req) if req.flags & C.MSG_REPLAY else None
                    if done is not None:  # it survived the crash: nothing to do again
                        self.count("replays_already_done")
                        return done
                    if key in self._running:  # still executing: answer when it is done
                        assert self._tasks is not None
                        self._tasks.start_soon(self._answer_when_done, endpoint, req, key)
                        return None
                self._running[key] = trio.Event()
                if drop_reply:
                    self._drop_replies.add(key)
            elif drop_reply:
                self._drop_replies.add((export.uuid, req.xid))
            handler = self.handlers.get(req.opc)
            if handler is None and req.opc == C.OBD_ADMIN:
                handler = self._admin
            if handler is None and req.opc in LDLM_OPCODES and self.lock_types:
                handler = (self.ldlm.enqueue if req.opc == C.LDLM_ENQUEUE
                           else self.ldlm.cancel)
            if handler is None:
                raise ServiceError(errno.EOPNOTSUPP, f"opcode {req.opc} not served by {self.kind}")
            export.requests += 1
            result = await self.dispatch(handler, export, req)
        except (ServiceError, OSError) as e:
            export = endpoint.context.get("export")
            if isinstance(e, OSError):  # e.g. EFBIG, ENOSPC from the storage
                log.info("%s: opc %d xid %d: %s", self.name, req.opc, req.xid, e)
                e = ServiceError(e.errno or errno.EIO, str(e))
            elif isinstance(e, FieldError) and export is not None:
                self.violation(export.uuid, "bad_field", str(e))
            reply = self.error_reply(req, e)
            return await self.finish(export, req, reply) if export is not None else reply
        except ConnectionLost:
            export = endpoint.context.get("export")
            if export is not None:  # not answered: a resend executes it again
                event = self._running.pop((export.uuid, req.xid), None)
                if event is not None:
                    event.set()
            return None
        if result is DEFERRED:
            return None  # the handler's own task calls finish() and sends the reply
        return await self.finish(export, req, self.make_reply(req, result))

    async def finish(self, export: Export, req: Message, reply: Message) -> Message | None:
        """The reply to a request is ready: keep it if the request was an update (and
        persist it with the update, see persist_reply), then let it go out, unless a
        fail_loc drops it (the connection is closed instead: the client resends)."""
        key = (export.uuid, req.xid)
        event = self._running.pop(key, None)
        if event is not None:
            body = {k: v for k, v in reply.body.items()
                    if k not in ("lock", "parent_lock", "parent_attr")}  # (locks granted once)
            saved = SavedReply(reply.transno, reply.status, body)
            forgotten = self.reply_log.record(export.uuid, req.xid, saved)
            self.persist_reply(export.uuid, req.xid, saved, forgotten)
            event.set()
        if key in self._crash_replies:  # done and recorded; the reply never goes out
            crash(f"{self.name}: fail_loc: crashing after xid {req.xid}, before its reply")
        if key in self._drop_replies:
            self._drop_replies.discard(key)
            await export.endpoint.aclose("fail_loc: reply dropped")
            return None
        return reply

    def persist_reply(self, uuid: str, xid: int, saved: SavedReply,
                      forgotten: int | None) -> None:
        """Hook: write a kept reply in the update's own transaction (the MDT)."""

    def _reconstructed(self, req: Message, saved: SavedReply) -> Message:
        return req.reply(saved.body, status=saved.status, transno=saved.transno,
                         last_committed=self.last_committed)

    async def _answer_when_done(self, endpoint: Endpoint, req: Message,
                                key: tuple[str, int]) -> None:
        event = self._running.get(key)
        if event is not None:
            await event.wait()
        saved = self.reply_log.lookup(*key)
        if saved is None:
            reply = self.error_reply(req, ServiceError(errno.EAGAIN, "resent request lost"))
        else:
            self.count("reconstructed")
            reply = self._reconstructed(req, saved)
        try:
            await endpoint.send_reply(reply)
        except ConnectionLost:
            pass

    def error_reply(self, req: Message, e: ServiceError) -> Message:
        self.count("errors")
        return req.reply({"error": str(e)}, status=e.errno, last_committed=self.last_committed)

    def make_reply(self, req: Message, result: Any) -> Message:
        """The reply to `req` for a handler's result (see Handler)."""
        bulk = None
        if isinstance(result, tuple):
            transno, body, *rest = result
            bulk = rest[0] if rest else None
        else:
            transno, body = 0, result
        return req.reply(body, transno=transno, last_committed=self.last_committed, bulk=bulk)

    # -- lctl parameters (OBD_ADMIN) --
    PARAM_PREFIX = {"mgs": "mgs", "mdt": "mdt", "ost": "obdfilter"}

    def params(self) -> ParamTree:
        """This target's lctl parameters, e.g. obdfilter.FSNAME-OST0000.commit_interval."""
        if self._params is None:
            tree = ParamTree()
            base = f"{self.PARAM_PREFIX.get(self.kind, self.kind)}.{self.name}."
            tree.add(base + "uuid", lambda: f"{self.name}_UUID")
            tree.add(base + "instance", lambda: self.storage.instance)
            tree.add(base + "last_transno", lambda: self.last_transno)
            tree.add(base + "last_committed", lambda: self.last_committed)
            tree.add(base + "commit_interval", lambda: self.commit_interval,
                     self._set_commit_interval)
            tree.add(base + "num_exports", lambda: len(self.exports))
            tree.add(base + "num_connections", lambda: self.connections.current)
            tree.add(base + "max_connections", lambda: self.connections.limit,
                     self._set_max_connections)
            tree.add(base + "evict_threshold", lambda: self.misbehaviour.threshold,
                     self._set_evict_threshold)
            tree.add(base + "evict_window", lambda: self.misbehaviour.window,
                     self._set_evict_window)
            tree.add(base + "exports", lambda: sorted(self.exports))
            tree.add(base + "stats", self._stats_lines)
            tree.add(base + "fail_loc", lambda: str(self.fail) if self.fail else "none",
                     self._set_fail_loc)
            if self.lock_types:
                ns = f"ldlm.namespaces.{self.name}."
                tree.add(ns + "lock_count", lambda: len(self.ldlm.namespace))
                tree.add(ns + "granted_count", lambda: self.ldlm.namespace.granted_count)
                tree.add(ns + "waiting_count", lambda: self.ldlm.namespace.waiting_count)
                tree.add(ns + "resource_count", lambda: len(self.ldlm.namespace.resources()))
                tree.add(ns + "ldlm_timeout", lambda: self.ldlm_timeout)
                tree.add(ns + "max_locks_per_client", lambda: self.ldlm.max_locks,
                         self._set_max_locks)
                tree.add(ns + "locks", self.ldlm.dump)
            if self.barrier is not None:
                tree.add(base + "barrier_stat", self.barrier.stat_lines)
            self._params = tree
        return self._params

    async def _barrier_admin(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """lctl barrier_freeze / barrier_thaw / barrier_stat on this target."""
        if self.barrier is None:
            raise ServiceError(errno.EOPNOTSUPP, f"{self.name} has no barrier (no lock "
                                                 "namespace)")
        if op == "barrier_freeze":
            timeout = body.get("timeout", DEFAULT_FREEZE_TIMEOUT)
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                    or not 0 < timeout <= 86400:
                raise ServiceError(errno.EINVAL, "barrier timeout must be a number of "
                                                 "seconds in (0, 86400]")
            report = await self.barrier.freeze(float(timeout))
            return {"target": self.name, "frozen": asdict(report), **self.barrier.stat()}
        if op == "barrier_thaw":
            return {"target": self.name, "thawed": self.barrier.thaw(), **self.barrier.stat()}
        return {"target": self.name, **self.barrier.stat()}

    def _set_fail_loc(self, text: str) -> None:
        try:
            self.fail = fail_loc.parse(text)
        except fail_loc.FailLocError as e:
            raise ParamError(errno.EINVAL, str(e)) from None
        log.warning("%s: fail_loc set to %s", self.name, self.fail or "none")

    def _set_max_connections(self, text: str) -> None:
        self.connections.limit = parse_positive_int(text, limit=1 << 20)

    def _set_max_locks(self, text: str) -> None:
        self.ldlm.max_locks = parse_positive_int(text, limit=1 << 30)

    def _set_evict_threshold(self, text: str) -> None:
        value = 0 if text.strip() == "0" else parse_positive_int(text, limit=1 << 20)
        self.misbehaviour.threshold = value

    def _set_evict_window(self, text: str) -> None:
        self.misbehaviour.window = parse_positive_float(text, limit=86400.0)

    def _set_commit_interval(self, text: str) -> None:
        self.commit_interval = parse_positive_float(text, limit=3600.0)
        self._commit_wanted.set()  # restart the commit loop's wait with the new interval

    def _stats_lines(self) -> list[str]:
        lines = [f"snapshot_time             {time.time():.6f} secs.usecs"]
        lines += [f"{k:<25} {v} samples [reqs]" for k, v in sorted(self.stats.items())]
        return lines

    async def _admin(self, export: Export, req: Message) -> dict[str, Any]:
        op = req.body.get("op") if isinstance(req.body, dict) else None
        if op in ("barrier_freeze", "barrier_thaw", "barrier_stat"):
            return await self._barrier_admin(op, req.body)
        try:
            return self.params().handle(req.body)
        except ParamError as e:
            raise ServiceError(e.errno, str(e)) from None

    async def _connect(self, endpoint: Endpoint, req: Message) -> dict[str, Any]:
        body = req.body
        client_uuid = body_field(body, "uuid", str, default="") or str(uuidlib.uuid4())
        target = body_field(body, "target", str, default=self.name)
        if target != self.name:
            raise ServiceError(errno.ENODEV, f"this server serves {self.name}, not {target}")
        old = self.exports.get(client_uuid)
        export = Export(client_uuid, endpoint, nid=endpoint.context.get("nid", ""),
                        release=body_field(body, "release", str, default="2.0"),
                        flags=body_field(body, "flags", int, default=0),
                        handle=self._next_handle)
        self._next_handle += 1
        export.last_seen = trio.current_time()
        if old is not None and old.endpoint is not endpoint:
            # The client reconnected: the old connection is dead to it.
            await old.endpoint.aclose("replaced by a reconnect")
        self.exports[client_uuid] = export
        endpoint.context["export"] = export
        self.client_joined(export)
        export.flags &= self.connect_flags
        evicted = self.ldlm.connected(client_uuid)
        return {"target": self.name, "release": self.release, "instance": self.storage.instance,
                "flags": export.flags, "handle": export.handle, "kind": self.kind,
                "reconnect": old is not None, "evicted": evicted}


def serve_forever(server: TargetServer) -> int:
    """Run a server in this process until SIGTERM/SIGINT; print READY once listening."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                nid = await nursery.start(server.run)
                print(f"READY {server.kind} {server.name} nid={nid} pid={os.getpid()}", flush=True)
                detach_stdout_to_stderr()
                async for _ in signals:
                    log.info("%s: stopping on signal", server.name)
                    server.stop()
                    break

    try:
        server.open_storage()
        trio.run(main)
    except (StorageBusy, OSError, AuthError) as e:  # startup failures print one clear line
        print(f"error: {server.name}: {e}", file=sys.stderr, flush=True)
        return 1
    except BaseExceptionGroup as eg:
        match, _ = eg.split((OSError, AuthError))  # e.g. the port is in use, however deeply nested
        if match is None:
            raise
        leaf: BaseException = match
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        print(f"error: {server.name}: {leaf}", file=sys.stderr, flush=True)
        return 1
    return 0
