"""target.py - what MGS, MDT and OST servers share: listening, connect and
exports, the request driver, transnos and the commit loop.

A subclass provides `handlers` (opcode -> coroutine taking (export, request)
and returning a reply body) and the storage-specific `do_commit`. Replies to
updates carry the transno given to them and every reply carries the target's
last_committed, so clients can tell which of their requests could still be lost.

A target is composed here, in its constructor: its lock service (ldlm_service.py)
and barrier (barrier.py) when it serves locks, its recovery window
(recovery_window.py) when clients replay to it (MDT, OST), and the request gate
(request_gate.py) that decides what each request gets; `_handle_one` only acts on
the gate's decisions. Its lctl parameters are in target_admin.py.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..params import ParamTree
from ..protocol import constants as C
from ..protocol.errors import AuthError, ConnectionLost, ErrnoError
from ..protocol.ldlm import LockType
from ..protocol.message import Message
from ..protocol.rpc import Endpoint
from ..protocol.secure import HANDSHAKE_TIMEOUT, server_handshake
from . import target_admin
from .barrier import ServerBarrier
from .errors import FieldError, ServiceError, body_field  # noqa: F401  (servers import them here)
from .export import Export, Handler, Stats
from .fail_loc import FailLoc
from .heartbeat import FENCED_EXIT, Heartbeat, MmpConfig
from .ldlm_service import LDLM_OPCODES, LdlmService
from .limits import DEFAULT_MAX_LOCKS, ConnectionLimit, Misbehaviour
from .recovery_window import RecoveryWindow, ReplayRunner, run_handler
from .reply_log import ReplyLog, SavedReply
from .request_gate import Action, Fault, RequestGate, Route
from .storage import TargetStorage
from .target_process import crash, serve_forever  # noqa: F401  (cli.py imports it here)

log = logging.getLogger(__name__)


# The stats key of each request's opcode, made once (not formatted per request).
_REQ_KEYS = {opc: f"req.{name}" for opc, name in C.OPCODE_NAMES.items()}

# How long a connection refused for the connection limit may take to send its first
# request (answered EUSERS) before it is closed anyway.
REFUSE_GRACE = 5.0


# A handler returns a reply body, (transno, body) for updates, or (transno, body, bulk);
# or DEFERRED when a task of its own sends the reply later (an update waiting for locks
# must not hold up the connection's reader, which brings the cancels it waits for).
DEFERRED: Any = object()


@dataclass(slots=True)
class Answered:
    """A request answered without running its handler (None: no reply goes out)."""

    reply: Message | None


# The least recovery window of a standby that took over from a live (frozen, cut off)
# server, or from one that went silent before it exited (it fenced itself); the window
# ends early once every known client has come back.
LIVE_TAKEOVER_WINDOW = 60.0


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
                 evict_threshold: int | None = None, auth_key: bytes | None = None,
                 recovery_window: float | None = None,
                 run_replay: ReplayRunner = run_handler, fsname: str = "",
                 mmp: MmpConfig | None = None) -> None:
        """recovery_window: the target keeps its clients for replay after a restart
        (MDT, OST) and waits that long for them; run_replay: how it runs a replayed
        update (the MDT's reuses the first execution's identities); mmp: a server of a
        failover pair guards its storage with a heartbeat (heartbeat.py), and may be a
        standby that takes it over when the heartbeat stops."""
        self.name = name
        # Secure mode: every connection proves this filesystem key before its first
        # request, and every frame carries a MAC (protocol/auth.py). The same key
        # authenticates this server's own links to the MGS and the OSTs.
        self.auth_key = auth_key
        self.storage = TargetStorage(data_dir)
        # A server of a failover pair proves it still owns its storage by renewing a
        # heartbeat; when it cannot, it fences itself (`_fenced`) before its partner
        # may take over (mmp.py).
        self.heartbeat = (Heartbeat(name, fsname, self.storage, mmp,
                                    holder=f"{name} pid={os.getpid()} nid={host}:{port}",
                                    key=auth_key, on_fence=self._fenced)
                          if mmp is not None else None)
        self.exit_on_fence = mmp is not None and mmp.exit_on_fence
        self.fenced = False
        self.host = host
        self.port = port
        self.release = release
        self.commit_interval = commit_interval
        self.exports: dict[str, Export] = {}
        self.handlers: dict[int, Handler] = {}
        self.stats = Stats()
        self.nid = ""
        self._commit_wanted = trio.Event()
        self._commit_lock = trio.Lock()
        self._stopping = trio.Event()
        self._next_handle = 1
        self._params: ParamTree | None = None
        if not ldlm_timeout > 0:
            raise ValueError("ldlm_timeout must be positive")
        self.ldlm_timeout = ldlm_timeout
        if max_locks < 1:
            raise ValueError("max_locks must be at least 1")
        self.ldlm = LdlmService(self, self.stats, kind=self.kind, lock_types=self.lock_types,
                                callback_timeout=ldlm_timeout, max_locks=max_locks)
        # Limits against hostile or broken clients (limits.py, docs/protocol.md "Limits").
        self.connections = ConnectionLimit()
        if max_connections is not None:
            if max_connections < 1:
                raise ValueError("max_connections must be at least 1")
            self.connections.limit = max_connections
        self.misbehaviour = Misbehaviour()
        if evict_threshold is not None:
            if evict_threshold < 0:
                raise ValueError("evict_threshold must be 0 (never) or more")
            self.misbehaviour.threshold = evict_threshold
        # Connect flags this server grants (a client gets the ones both sides have).
        self.connect_flags = C.OBD_CONNECT_FID | C.OBD_CONNECT_IBITS | C.OBD_CONNECT_TRANSNO
        if update_lock and self.lock_types:
            self.connect_flags |= C.OBD_CONNECT_UPDATE_LOCK
        self.barrier = (ServerBarrier(name, self.kind, self.ldlm, self, self.stats)
                        if self.lock_types else None)
        self.recovery = (RecoveryWindow(self, self.storage, self.stats, window=recovery_window,
                                        run_replay=run_replay)
                         if recovery_window is not None else None)
        self.gate = RequestGate(connect_opcodes=self.connect_opcodes,
                                disconnect_opcodes=self.disconnect_opcodes,
                                reconstructable_opcodes=self.reconstructable_opcodes,
                                recovers=self.recovery is not None)
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
            if self.needs_commit() and self.may_write():
                await self.do_commit()
            return self.last_committed

    def want_commit(self) -> None:
        """Commit soon (the commit loop wakes up), not only at the next interval."""
        self._commit_wanted.set()

    async def _commit_loop(self) -> None:
        while True:
            with trio.move_on_after(self.commit_interval):
                await self._commit_wanted.wait()
            self._commit_wanted = trio.Event()
            await self.commit()

    # -- the storage claim (heartbeat.py) --
    @property
    def standby(self) -> bool:
        return self.heartbeat is not None and self.heartbeat.config.standby

    def may_write(self) -> bool:
        """Whether this server still owns its storage (a server without a heartbeat
        always does: its flock says so). False fences it."""
        return not self.fenced and (self.heartbeat is None or self.heartbeat.may_serve())

    def _fenced(self, reason: str) -> None:
        """Stop serving at once: nothing more is answered or written (no commit, no
        clean heartbeat record). A server process exits; an in-process one stops."""
        self.fenced = True
        log.critical("%s: FENCED, serving nothing more: %s", self.name, reason)
        if self.exit_on_fence:
            for h in logging.getLogger().handlers:
                h.flush()
            os._exit(FENCED_EXIT)
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    async def stand_by(self) -> None:
        """A standby: wait until the storage is ours (the active server's heartbeat
        stopped), then load it."""
        assert self.heartbeat is not None
        await self.heartbeat.stand_by()
        if self.heartbeat.took_over_live and self.recovery is not None:
            # The old server is frozen or cut off (or it was, and fenced itself): its
            # clients notice only when a request or ping times out (15 to 30 s), and
            # their first reconnect may wait on its address, which accepts connections
            # into the kernel's backlog or is silent (5 s). A restart's window would
            # evict them before they come back.
            self.recovery.window = max(self.recovery.window, LIVE_TAKEOVER_WINDOW)
        self.open_storage()

    # -- lifecycle --
    def open_storage(self) -> None:
        """Claim the storage and load it (subclasses extend)."""
        if not self.storage.claimed:
            if self.heartbeat is not None:
                self.heartbeat.claim()
            else:
                self.storage.claim(self.name)
        if self.recovery is not None:
            self.recovery.load_known()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.storage.claimed:
            self.open_storage()
        if self.heartbeat is not None:
            reason = self.heartbeat.renew()  # loading the storage took part of the lease
            if reason is not None:
                self.heartbeat.fence(reason)
                self.storage.release()
                return
        try:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio.serve_tcp, self._serve_connection, self.port, host=self.host))
                sockname = listeners[0].socket.getsockname()
                self.nid = f"{sockname[0]}:{sockname[1]}"
                self._tasks = nursery
                if self.heartbeat is not None:
                    nursery.start_soon(self.heartbeat.keep)
                    if self.heartbeat.config.mgs:
                        nursery.start_soon(self.heartbeat.ping_mgs)
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

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Start a background task of this target; False if it is not running."""
        if self._tasks is None:
            return False
        self._tasks.start_soon(fn, *args)
        return True

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
        if self.heartbeat is not None and not self.fenced:
            self.heartbeat.release()  # a clean record: the partner may claim at once
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
        endpoint: Endpoint

        def on_violation(kind: str, detail: str) -> None:
            self._endpoint_violation(endpoint, kind, detail)

        endpoint = Endpoint(stream, codec=self.release, handler=self._handle,
                            name=f"{self.name}<-{peer_nid}", follow_peer_release=True,
                            inline_opcodes=self.inline_opcodes, mac=mac,
                            on_violation=on_violation)
        endpoint.context["nid"] = peer_nid
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
            self.spawn(self.ldlm.evict, uuid, f"repeated protocol violations (last: {kind})")

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
        """A client's connection ended (the recovery window notes when, for the ping
        evictor)."""
        if self.recovery is not None:
            self.recovery.export_disconnected(export)

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

    async def evict(self, uuid: str, reason: str) -> None:
        """Evict a client through the lock service: its locks go, then its export."""
        await self.ldlm.evict(uuid, reason)

    async def evict_unrecovered(self, uuid: str, reason: str) -> None:
        """A known client that did not finish recovery: its export goes, and its next
        connect is told it was evicted."""
        self.ldlm.mark_evicted(uuid)
        await self.evict_export(uuid, reason)

    @property
    def recovering(self) -> bool:
        return self.recovery is not None and self.recovery.recovering

    async def wait_recovered(self) -> None:
        if self.recovery is not None:
            await self.recovery.wait_recovered()

    def client_joined(self, export: Export) -> None:
        """A client connected (the recovery window remembers the ones that replay, for
        the next restart)."""
        if self.recovery is not None:
            self.recovery.client_joined(export)

    def client_left(self, uuid: str) -> None:
        """A client disconnected cleanly or was evicted: not waited for at the next
        restart (subclasses extend: the MDT closes its opens)."""
        if self.recovery is not None:
            self.recovery.client_left(uuid)

    def after_update_replay(self, req: Message) -> bool:
        """Hook: a request that is part of recovery but must not run while updates are
        being replayed in transno order (it takes a transno of its own): the MDT's open
        replays. It waits for the lock phase, then runs."""
        return False

    def replay_done(self, req: Message) -> Message | None:
        """Hook: the reply to a replayed update whose effect survived the crash (None:
        look it up in the reply log, or run it again)."""
        return None

    def check_request(self, export: Export, req: Message) -> None:
        """Hook: refuse (ServiceError) a request body this server's release does not
        speak, or turn it into the form the handlers read (the MDT: how objects are
        named, 1.8's open layout)."""

    def count(self, what: str, n: int = 1) -> None:
        self.stats.count(what, n)

    async def _handle(self, endpoint: Endpoint, req: Message) -> Message | None:
        if not self.may_write():
            # The lease ran out (this process was frozen, or cut off): the partner may
            # serve the storage already. Not one more request is answered.
            await endpoint.aclose("fenced")
            return None
        self._active += 1
        try:
            return await self._handle_one(endpoint, req)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _handle_one(self, endpoint: Endpoint, req: Message) -> Message | None:
        """The driver of one request: asks the gate (request_gate.py) and acts."""
        self.count(_REQ_KEYS.get(req.opc) or f"req.{req.opc}")
        export: Export | None = endpoint.context.get("export")
        if export is not None:
            export.last_seen = trio.current_time()
        try:
            decision = self.gate.admit(req, connected=export is not None)
            if decision.action is Action.CONNECT:
                body = await self._connect(endpoint, req)
                return req.reply(body, last_committed=self.last_committed)
            if decision.action is Action.PING:
                if decision.replay_done and self.recovery is not None:
                    self.recovery.replay_finished(endpoint.context["export"])
                if decision.lock_replay_done and self.recovery is not None:
                    self.recovery.lock_replay_finished(endpoint.context["export"])
                return req.reply(last_committed=self.last_committed)
            if decision.action is Action.REJECT:
                raise ServiceError(decision.errno, decision.message)
            assert export is not None
            if decision.action is Action.DISCONNECT:
                await self._disconnect(endpoint, export)
                return req.reply(last_committed=self.last_committed)
            result = await self._handle_admitted(endpoint, export, req)
        except (ErrnoError, OSError) as e:
            # The one place a failure becomes a reply's status: every errno-carrying
            # failure (ServiceError, the MDT store's MdtError, the lock namespace's
            # LockError) and the storage's OSErrors.
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
        if isinstance(result, Answered):
            return result.reply
        if result is DEFERRED:
            return None  # the handler's own task calls finish() and sends the reply
        assert export is not None
        return await self.finish(export, req, self.make_reply(req, result))

    async def _disconnect(self, endpoint: Endpoint, export: Export) -> None:
        await self.commit()
        self.exports.pop(export.uuid, None)
        endpoint.context.pop("export", None)
        self.ldlm.release(export.uuid)
        await self.export_disconnected(export)
        self.client_left(export.uuid)

    async def _handle_admitted(self, endpoint: Endpoint, export: Export, req: Message) -> Any:
        """A connected client's request: Answered (or dropped: Answered(None)) without
        its handler, or the handler's result."""
        self.check_request(export, req)
        if C.is_update(req.opc, req.body):
            if req.flags & C.MSG_RESENT:
                self.count("resent_updates")
            if self.barrier is not None:
                self.barrier.note_update(export, len(req.bulk or b""))
        fault = self.gate.fault(self.fail, req.opc)
        key = (export.uuid, req.xid)
        if fault is not Fault.NONE:
            fail = self.fail
            assert fail is not None
            fail.hits += 1
            self.count("fail_loc_hits")
            log.warning("%s: fail_loc %s on xid %d", self.name, fail, req.xid)
            if fault is Fault.ERRNO:
                raise ServiceError(fail.err, f"fail_loc {fail}")
            if fault is Fault.DROP_REQUEST:
                await endpoint.aclose("fail_loc: request dropped")
                return Answered(None)
            if fault is Fault.DELAY:
                await trio.sleep(fail.seconds)
            if fault is Fault.CRASH_BEFORE:
                crash(f"{self.name}: fail_loc {fail}: crashing before xid {req.xid}")
            if fault is Fault.CRASH_AFTER:
                self._crash_replies.add(key)
        kept = self.gate.reconstructable(req)
        done = self.replay_done(req) if kept and req.flags & C.MSG_REPLAY else None
        decision = self.gate.route(
            req, fault=fault, saved=self.reply_log.lookup(*key) if kept else None,
            survived=done is not None, running=key in self._running,
            recovering=self.recovering,
            open_replay=self.recovery is not None and self.after_update_replay(req))
        if decision.action is Action.RECONSTRUCT:
            self.count("reconstructed")
            if decision.drop_reply:
                await endpoint.aclose("fail_loc: reply dropped")
                return Answered(None)
            saved = self.reply_log.lookup(*key)
            assert saved is not None
            return Answered(self._reconstructed(req, saved))
        if decision.action is Action.ACK_SURVIVED:  # it survived the crash: not run again
            self.count("replays_already_done")
            return Answered(done)
        if decision.action is Action.AWAIT_RUNNING:  # still executing: answer when done
            self.spawn(self._answer_when_done, endpoint, req, key)
            return Answered(None)
        if decision.track:
            self._running[key] = trio.Event()
        if decision.drop_reply:
            self._drop_replies.add(key)
        handler = self._handler_for(req.opc)
        export.requests += 1
        return await self.dispatch(decision.route, handler, export, req)

    def _handler_for(self, opc: int) -> Handler:
        handler = self.handlers.get(opc)
        if handler is None and opc == C.OBD_ADMIN:
            handler = self._admin
        if handler is None and opc in LDLM_OPCODES and self.lock_types:
            handler = self.ldlm.enqueue if opc == C.LDLM_ENQUEUE else self.ldlm.cancel
        if handler is None:
            raise ServiceError(errno.EOPNOTSUPP, f"opcode {opc} not served by {self.kind}")
        return handler

    async def dispatch(self, route: Route, handler: Handler, export: Export,
                       req: Message) -> Any:
        """Run a request's handler on its path through recovery (if the target has one).
        A request held (recovery, locks) while this process was frozen checks the
        lease again right before it runs."""
        if self.heartbeat is not None:
            handler = partial(self._guarded, handler)
        if self.recovery is None:
            return await handler(export, req)
        return await self.recovery.dispatch(route, handler, export, req)

    async def _guarded(self, handler: Handler, export: Export, req: Message) -> Any:
        if not self.may_write():
            raise ServiceError(errno.ESHUTDOWN, f"{self.name} is fenced")
        return await handler(export, req)

    async def finish(self, export: Export, req: Message, reply: Message) -> Message | None:
        """The reply to a request is ready: keep it if the request was an update (and
        persist it with the update, see persist_reply), then let it go out, unless a
        fail_loc drops it (the connection is closed instead: the client resends)."""
        if not self.may_write():  # fenced while it ran: no reply goes out
            return None
        key = (export.uuid, req.xid)
        event = self._running.pop(key, None)
        if event is not None:
            body = {k: v for k, v in reply.body.items()
                    if k not in ("lock", "parent_lock", "parent_attr", "wb_lock")}  # (locks granted once)
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

    def error_reply(self, req: Message, e: ErrnoError) -> Message:
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

    # -- lctl parameters (OBD_ADMIN, target_admin.py) --
    def params(self) -> ParamTree:
        """This target's lctl parameters (built once; subclasses add theirs)."""
        if self._params is None:
            self._params = target_admin.build_params(self)
        return self._params

    async def _admin(self, export: Export, req: Message) -> dict[str, Any]:
        return await target_admin.admin(self, req.body)

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

