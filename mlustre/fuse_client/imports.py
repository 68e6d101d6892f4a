"""imports.py - the client's connection to one target (Lustre's "import").

An import knows every NID of its target and keeps one connection. Requests
wait while the import is not FULL and are resent (flag RESENT, same xid) when a
connection dies before their reply came, so application calls block across a
server restart instead of failing. The full recovery protocol (replay of
uncommitted requests, lock replay, eviction) builds on this state machine.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from ..protocol import constants as C
from ..protocol.codec import RELEASES, codec_for
from ..protocol.errors import AuthError, ConnectionLost, RpcError, RpcTimeout
from ..protocol.message import Message
from ..protocol.nid import Nid
from ..protocol.rpc import Endpoint, Handler
from ..protocol.secure import open_connection
from .import_state import IllegalTransition, ImportState, ImportStates

__all__ = ["IllegalTransition", "Import", "ImportClosed", "ImportEvents", "ImportState",
           "WriterGate"]

log = logging.getLogger(__name__)


# Encodes a neutral request body for a release (protocol/dialect.py), at send time.
BodyEncoder = Callable[[str, dict[str, Any]], dict[str, Any]]


class ImportClosed(Exception):
    """The import was closed (unmount): no request can be sent any more."""


class WriterGate(Protocol):
    """What update requests pass (barrier.Barrier, the SIR writer gate)."""

    async def enter(self, *, flush: bool = False) -> None: ...

    def leave(self) -> None: ...


class ImportEvents(Protocol):
    """What the rest of a target's client side does on its import's events, given to the
    Import by its constructor (target_link.TargetLink: the lock client, the writer gate,
    the Mdc or Osc of that target)."""

    @property
    def gate(self) -> WriterGate | None:
        """The SIR writer gate update requests pass (barrier.Barrier), if any."""
        ...

    def connected(self, reply_body: dict[str, Any]) -> None:
        """Each successful connect reply, before requests flow again (the lock client
        checks "evicted" there)."""
        ...

    async def replay_updates(self, endpoint: Endpoint) -> None:
        """Re-send, to a new instance of the target, the updates it may have lost
        (REPLAY; before the import is FULL again)."""
        ...

    async def replay_locks(self, endpoint: Endpoint) -> None:
        """Take our locks again on a new instance (REPLAY_LOCKS, after the updates)."""
        ...

    def committed(self, last_committed: int) -> None:
        """The target reported a higher last_committed: what was kept for replay up to
        there can go."""
        ...


class Import:
    """One target as seen by this client.

    :nids: the target's NIDs, tried in turn (failover partners included).
    :state: ImportState; `history` keeps the last transitions with times.
    :peer_committed: highest last_committed the target has reported.
    :events: who is told of connects, runs the replays and learns of commits, and whose
        writer gate updates pass (target_link.TargetLink); None for a bare import.
    """

    def __init__(self, target: str, nids: list[Nid], *, connect_opc: int, client_uuid: str,
                 release: str = "2.0", flags: int = 0, handler: Handler | None = None,
                 request_timeout: float = 30.0, connect_timeout: float = 5.0,
                 ping_interval: float = 5.0, key: bytes | None = None,
                 nid_source: Callable[[str], Awaitable[list[Nid]]] | None = None,
                 events: ImportEvents | None = None) -> None:
        self.target = target
        self.key = key  # the filesystem's shared key: connections are authenticated
        self.nids = nids
        self.connect_opc = connect_opc
        self.client_uuid = client_uuid
        self.release = release
        self.flags = flags
        self.handler = handler
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.states = ImportStates(target)  # the state table (import_state.py)
        self.endpoint: Endpoint | None = None
        self.server: dict[str, Any] = {}
        self.evictions = 0  # connect replies that said "evicted"
        self.conn_cnt = 0
        self.peer_committed = 0
        self.last_transno = 0  # highest transno of our requests the target answered
        self.last_error = ""
        self.auth_error: AuthError | None = None  # the last connect failed authentication
        self._full = trio.Event()
        self._reconnect_wanted = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._nid_idx = 0
        self._next_xid = 1
        # Where the MGS says the target serves now (client.ClientNode.target_nids).
        self.nid_source = nid_source
        self._nids_refreshed = -1e9
        # The rest of the target's client side, told of connects, replays and commits
        # (None: a bare import, as tests and tools use, that nobody else listens to).
        self.events = events
        self.ping_interval = ping_interval
        # Replays wait for the target's recovery (other clients' replays, its window):
        # longer than a request; a dead server still ends them (connection closed).
        self.replay_timeout = max(request_timeout, 300.0)
        self.recovery_time = 0.0  # seconds the last recovery took (connect to FULL)
        self.pings = 0
        self.sent: dict[int, int] = {}  # requests sent by call(), resends too, per opcode
        self._last_sent = 0.0
        self._to_resend: set[int] = set()  # xids of requests a dead connection left
        self._resend_ok = trio.Event()  # set in RECOVER and FULL
        self._resends_changed = trio.Event()
        self._instance: Any = None
        self.replays = 0  # connections to a new instance that replayed something
        self.resent_updates = 0  # update requests sent again after a lost connection

    @property
    def state(self) -> ImportState:
        return self.states.state

    @property
    def history(self) -> list[tuple[float, str]]:
        return self.states.history

    def _set_state(self, state: ImportState) -> None:
        old = self.states.state
        if self.states.to(state, time.time()):
            log.info("%s: %s -> %s", self.target, old.value, state.value)
        elif old is ImportState.CLOSED:
            return  # (a connect attempt that ends after close() changes nothing)
        if state is ImportState.FULL:
            self._full.set()
        elif self._full.is_set():
            self._full = trio.Event()
        if state in (ImportState.FULL, ImportState.RECOVER):
            self._resend_ok.set()
        elif self._resend_ok.is_set():
            self._resend_ok = trio.Event()

    async def connect(self, nursery: trio.Nursery, *, first_timeout: float | None = None) -> None:
        """Connect now (raising ConnectionLost if no NID answers within first_timeout),
        then keep the connection up in the background."""
        self._nursery = nursery
        deadline = trio.current_time() + (first_timeout or self.connect_timeout * 2)
        while True:
            if await self._try_all_nids():
                break
            if self.auth_error is not None:  # a wrong or missing key: waiting cannot help
                raise self.auth_error
            if trio.current_time() >= deadline:
                raise ConnectionLost(f"cannot reach {self.target} at "
                                     f"{', '.join(map(str, self.nids))}: {self.last_error}")
            await trio.sleep(0.2)
        nursery.start_soon(self._keeper)
        if self.ping_interval > 0:
            nursery.start_soon(self._pinger)

    async def _try_all_nids(self) -> bool:
        self.auth_error = None
        for _ in range(len(self.nids)):
            nid = self.nids[self._nid_idx % len(self.nids)]
            if await self._try_connect(nid):
                return True
            self._nid_idx += 1
        return False

    async def _try_connect(self, nid: Nid) -> bool:
        assert self._nursery is not None
        self._set_state(ImportState.CONNECTING)
        try:
            stream, mac = await open_connection(nid.host, nid.port, self.key,
                                                peer=f"{self.target} at {nid}",
                                                timeout=self.connect_timeout)
        except (OSError, trio.TooSlowError, ConnectionLost) as e:
            self.last_error = f"{nid}: {e or 'connect timed out'}"
            self._set_state(ImportState.DISCONN)
            return False
        except AuthError as e:
            return self._auth_failed(e)
        self.conn_cnt += 1
        endpoint = Endpoint(stream, codec=self.release, handler=self.handler,
                            name=f"{self.target}@{nid}", mac=mac)
        endpoint._next_xid = 1 << 62  # connect requests never collide with the import's xids
        await self._nursery.start(endpoint.serve)
        try:
            reply = await endpoint.call(self.connect_opc, {
                "uuid": self.client_uuid, "target": self.target, "release": self.release,
                "flags": self.flags}, timeout=self.connect_timeout, conn_cnt=self.conn_cnt)
        except (ConnectionLost, RpcTimeout) as e:
            self.last_error = f"{nid}: {e}"
            await endpoint.aclose()
            self._set_state(ImportState.DISCONN)
            return False
        if reply.status == errno.EACCES:  # a secure target, and this client has no key
            await endpoint.aclose()
            return self._auth_failed(AuthError(
                f"authentication with {self.target} at {nid} failed: "
                f"{reply.body.get('error', 'key required')}"))
        if reply.status:
            self.last_error = f"{nid}: connect refused: {reply.body.get('error', reply.status)}"
            await endpoint.aclose()
            self._set_state(ImportState.DISCONN)
            return False
        self.endpoint = endpoint
        self.server = reply.body
        # Speak the server's release from now on (the client speaks both): requests
        # kept in the neutral form are encoded for it at send time.
        peer_release = reply.body.get("release")
        if peer_release in RELEASES and peer_release != endpoint.codec.release:
            endpoint.codec = codec_for(peer_release)
        if reply.body.get("evicted"):
            # Requests begun before are void: resending them (a write-back snapshot, an
            # update) could undo what other clients did since. EVICTED while the hooks
            # (the lock client) drop what the target no longer grants us.
            self.evictions += 1
            self._set_state(ImportState.EVICTED)
        self._note_committed(reply)
        if self.events is not None:
            try:
                self.events.connected(reply.body)
            except Exception:
                log.exception("%s: connect event failed", self.target)
        instance, self._instance = self._instance, reply.body.get("instance")
        if instance is not None and instance != self._instance \
                and not reply.body.get("evicted"):
            started = trio.current_time()
            try:
                await self._recover(endpoint)
            except (ConnectionLost, RpcTimeout) as e:
                self.last_error = f"{nid}: recovery: {e}"
                await endpoint.aclose()
                self._set_state(ImportState.DISCONN)
                return False
            self.recovery_time = trio.current_time() - started
        if self._to_resend:
            # Requests the dead connection left unanswered go first (RECOVER), then
            # the rest (FULL).
            self._set_state(ImportState.RECOVER)
            with trio.move_on_after(self.connect_timeout):
                while self._to_resend and self.endpoint is endpoint and not endpoint.closed:
                    changed = self._resends_changed = trio.Event()
                    await changed.wait()
        self._set_state(ImportState.FULL)
        log.info("%s: connected to %s (release %s, instance %s)", self.target, nid,
                 reply.body.get("release"), reply.body.get("instance"))
        return True

    async def _recover(self, endpoint: Endpoint) -> None:
        """A new instance of the target: Lustre's recovery, seen from one client.
        REPLAY: the updates it may have lost (and says it is done with them);
        REPLAY_LOCKS: the locks it no longer has (and says it is done)."""
        self._set_state(ImportState.REPLAY)
        if self.events is not None:
            await self.events.replay_updates(endpoint)
        await endpoint.call(C.OBD_PING, {}, flags=C.MSG_REQ_REPLAY_DONE,
                            timeout=self.replay_timeout, conn_cnt=self.conn_cnt)
        self._set_state(ImportState.REPLAY_LOCKS)
        if self.events is not None:
            await self.events.replay_locks(endpoint)
        reply = await endpoint.call(C.OBD_PING, {}, flags=C.MSG_LOCK_REPLAY_DONE,
                                    timeout=self.replay_timeout, conn_cnt=self.conn_cnt)
        self._note_committed(reply)

    def new_xid(self) -> int:
        """An xid of this import (replays that did not have one)."""
        xid = self._next_xid
        self._next_xid += 1
        return xid

    async def _pinger(self) -> None:
        """Ping an idle target every ping_interval: a dead peer is noticed without a
        request waiting for its timeout, and last_committed keeps moving (so kept
        replay data is freed)."""
        while self.state is not ImportState.CLOSED:
            await trio.sleep(self.ping_interval)
            endpoint = self.endpoint
            if self.state is not ImportState.FULL or endpoint is None \
                    or trio.current_time() - self._last_sent < self.ping_interval:
                continue
            self.pings += 1
            try:
                reply = await endpoint.call(C.OBD_PING, {}, conn_cnt=self.conn_cnt,
                                            timeout=max(self.ping_interval,
                                                        self.request_timeout / 2))
            except (ConnectionLost, RpcTimeout) as e:
                if not endpoint.closed:
                    log.warning("%s: ping failed (%s); reconnecting", self.target, e)
                    await endpoint.aclose(f"ping failed: {e}")
                continue
            self._note_committed(reply)

    def _auth_failed(self, e: AuthError) -> bool:
        log.error("%s", e)
        self.auth_error = e
        self.last_error = str(e)
        self._set_state(ImportState.DISCONN)
        return False

    async def _keeper(self) -> None:
        """Reconnect whenever the connection dies, with backoff, until closed."""
        delay = 0.05
        while self.state is not ImportState.CLOSED:
            endpoint = self.endpoint
            if endpoint is not None and self.state is ImportState.FULL:
                await endpoint.wait_closed()
                if self.state is ImportState.CLOSED:
                    return
                log.warning("%s: connection lost (%s); reconnecting", self.target,
                            endpoint.close_reason)
                self._set_state(ImportState.DISCONN)
                delay = 0.05
            if await self._try_all_nids():
                continue
            await self._refresh_nids()
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _refresh_nids(self) -> None:
        """No NID answers: the target may have moved (a restart on a new port, a failover
        partner); ask the MGS where it serves now."""
        if self.nid_source is None or trio.current_time() - self._nids_refreshed < 2.0:
            return
        self._nids_refreshed = trio.current_time()
        try:
            nids = await self.nid_source(self.target)
        except Exception as e:  # the MGS may be down too; keep the NIDs we have
            log.debug("%s: cannot refresh NIDs from the MGS: %s", self.target, e)
            return
        if nids and nids != self.nids:
            log.info("%s: NIDs now %s", self.target, ", ".join(map(str, nids)))
            self.nids = nids
            self._nid_idx = 0

    def _note_committed(self, reply: Message) -> None:
        if reply.last_committed > self.peer_committed:
            self.peer_committed = reply.last_committed
            if self.events is not None:
                self.events.committed(reply.last_committed)
        if reply.transno > self.last_transno:
            self.last_transno = reply.transno

    @property
    def uncommitted(self) -> bool:
        """Has the target answered updates of ours that it has not committed yet?"""
        return self.last_transno > self.peer_committed

    async def call(self, opc: int, body: dict[str, Any] | None = None, *,
                   timeout: float | None = None,
                   bulk: bytes | bytearray | memoryview | None = None,
                   flush: bool = False, encode: BodyEncoder | None = None) -> Message:
        """Send a request, waiting through disconnections; RpcError on a failed status.
        An update first passes the target's writer gate (`flush`: it is write-back of
        data already written, which goes on while the gate drains). `encode` turns the
        neutral body into the form of the release the server speaks, at each send."""
        gate = self.events.gate if self.events is not None and C.is_update(opc, body) \
            else None
        if gate is None:
            return await self._call(opc, body, timeout, bulk, encode)
        await gate.enter(flush=flush)
        try:
            return await self._call(opc, body, timeout, bulk, encode)
        finally:
            gate.leave()

    async def _call(self, opc: int, body: dict[str, Any] | None, timeout: float | None,
                    bulk: bytes | bytearray | memoryview | None,
                    encode: BodyEncoder | None = None) -> Message:
        flags = 0
        xid: int | None = None
        evictions = self.evictions
        try:
            while True:
                if self.state is ImportState.CLOSED:
                    raise ImportClosed(self.target)
                if self.state is not ImportState.FULL and not (
                        flags & C.MSG_RESENT and self.state is ImportState.RECOVER):
                    # (waiting on a set Event still yields)
                    await (self._resend_ok if flags & C.MSG_RESENT else self._full).wait()
                    continue
                if self.evictions != evictions:
                    raise RpcError(errno.EIO,
                                   f"{self.target}: evicted while the request waited")
                endpoint = self.endpoint
                assert endpoint is not None
                if xid is None:
                    xid = self._next_xid  # per import: a resend keeps it across connections
                    self._next_xid += 1
                elif self._to_resend:
                    self._resend_done(xid)
                self._last_sent = trio.current_time()
                self.sent[opc] = self.sent.get(opc, 0) + 1  # (mdc/osc.*.stats)
                wire = (encode(endpoint.codec.release, body) if encode and body is not None
                        else body)
                try:
                    reply = await endpoint.call(opc, wire,
                                                timeout=timeout or self.request_timeout,
                                                flags=flags, conn_cnt=self.conn_cnt, xid=xid,
                                                bulk=bulk)
                except (ConnectionLost, RpcTimeout) as e:
                    log.info("%s: request opc %d xid %d: %s; will resend", self.target, opc,
                             xid, e)
                    if not endpoint.closed:
                        await endpoint.aclose(f"request timed out: {e}")
                    if self.endpoint is endpoint and self.state is ImportState.FULL:
                        self._set_state(ImportState.DISCONN)  # the keeper reconnects
                    flags |= C.MSG_RESENT
                    self._to_resend.add(xid)
                    if opc in C.UPDATE_OPCODES:
                        self.resent_updates += 1
                    continue
                self._note_committed(reply)
                if reply.status:
                    raise RpcError(reply.status, str(reply.body.get("error", "")))
                return reply
        finally:
            if xid is not None and self._to_resend:
                self._resend_done(xid)  # (answered, failed or abandoned: not owed any more)

    def _resend_done(self, xid: int) -> None:
        if xid in self._to_resend:
            self._to_resend.discard(xid)
            self._resends_changed.set()

    async def close(self, disconnect_opc: int | None = None) -> None:
        endpoint = self.endpoint
        if disconnect_opc is not None and endpoint is not None and self.state is ImportState.FULL:
            with trio.move_on_after(2):
                try:
                    await endpoint.call(disconnect_opc, {}, timeout=2)
                except (ConnectionLost, RpcTimeout):
                    pass
        self._set_state(ImportState.CLOSED)
        self._full.set()  # wake waiters so they see CLOSED
        if endpoint is not None:
            await endpoint.aclose("import closed")
