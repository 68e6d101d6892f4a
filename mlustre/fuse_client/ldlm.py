"""ldlm.py - the client's lock driver for one target: the trio layer around the sans-IO
ClientNamespace of ldlm_client.py (Lustre's client-side ldlm_cli_enqueue, the
callback handlers ldlm_handle_bl_callback/cp_callback and the LRU thread).

* `enqueue()` reuses a matching held lock or sends LDLM_ENQUEUE through the Import,
  waits for the CP AST when the lock is queued, and returns the lock with one
  reference ("r" for PR/CR/NL, "w" for PW/EX/CW) that the caller drops with
  `release()`.
* `handle_request()` answers the server's ASTs on the Import's connection: a BAST
  is answered at once; the flush (`on_blocking`) and the LDLM_CANCEL run in a
  background task, at once for an unused lock, else when the last user releases it.
  A CP AST grants a queued lock (it may come before the enqueue reply).
* A background task cancels the LRU's unused locks (too many, or too old) every
  `lru_interval` seconds, in batched LDLM_CANCELs.
* A connect reply with "evicted": true drops every lock (`invalidate_all`) and runs
  the `on_evicted` hook.

Used as a library for now (ClientNode.locks); llite does not take locks yet.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any

import trio

from ..protocol import constants as C
from ..protocol.errors import ConnectionLost, RpcError
from ..protocol.ldlm import Extent, LockType, Mode, ResId
from ..protocol.message import Message
from ..protocol.rpc import Endpoint
from .imports import Import, ImportClosed
from .ldlm_client import (
    FL_DISCARD_DATA,
    READ,
    WRITE,
    ClientLock,
    ClientNamespace,
    LockState,
    UnknownLock,
)

log = logging.getLogger(__name__)

CANCEL_MAX = 512  # handles in one LDLM_CANCEL (docs/protocol.md)
_READ_MODES = Mode.PR | Mode.CR | Mode.NL

OnBlocking = Callable[[ClientLock], Awaitable[None]]
OnEvicted = Callable[[list[ClientLock]], Awaitable[None]]


class LockFailed(Exception):
    """The lock was lost before it could be used (eviction while enqueueing)."""


def ref_kind(mode: Mode) -> str:
    """The kind of reference a user of a lock in `mode` takes: reader or writer."""
    return READ if Mode(mode) & _READ_MODES else WRITE


def wire_policy(type_: LockType, policy: object) -> Any:
    if type_ is LockType.EXTENT:
        assert isinstance(policy, Extent)
        return [policy.start, policy.end]
    if type_ is LockType.IBITS:
        return int(policy)  # type: ignore[call-overload]
    return None


def parse_policy(type_: LockType, wire: Any) -> object:
    if type_ is LockType.EXTENT:
        start, end = wire
        return Extent(int(start), int(end))
    if type_ is LockType.IBITS:
        return int(wire)
    return None


async def _no_blocking(lock: ClientLock) -> None:
    return None


async def _no_evicted(locks: list[ClientLock]) -> None:
    return None


class LockClient:
    """The locks of this client on one target, and the tasks that keep them.

    :on_blocking: awaited before a lock is cancelled (BAST, LRU): the llite layer
        flushes dirty pages and drops caches under the lock there.
    :on_evicted: awaited (in the background) with the dropped locks after an eviction.
    """

    def __init__(self, target: str, imp: Import | None = None, *, lru_size: int = 100,
                 lru_max_age: float = 600.0, lru_interval: float = 1.0,
                 on_blocking: OnBlocking | None = None,
                 on_evicted: OnEvicted | None = None) -> None:
        self.target = target
        self.ns = ClientNamespace(target, lru_size=lru_size, lru_max_age=lru_max_age)
        self.lru_interval = lru_interval
        self.on_blocking: OnBlocking = on_blocking or _no_blocking
        self.on_evicted: OnEvicted = on_evicted or _no_evicted
        self.imp: Import | None = None
        self._grants: dict[int, trio.Event] = {}  # local handle -> set on CP AST / eviction
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self.stats: dict[str, int] = {
            "enqueue_rpcs": 0, "matches": 0, "waits": 0, "cancel_rpcs": 0, "cancels": 0,
            "basts": 0, "cps": 0, "evictions": 0,
        }
        if imp is not None:
            self.attach(imp)

    def attach(self, imp: Import) -> None:
        """Send through `imp` and watch its connects for eviction. The Import must also
        have been built with handler=self.handle_request (its ASTs come that way)."""
        self.imp = imp
        imp.on_connected.append(self._connected)

    # ---- background tasks ---------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The LRU task, and the nursery of the cancel tasks; until close()."""
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started()
                    while True:
                        await trio.sleep(self.lru_interval)
                        await self.cancel_lru()
            finally:
                self._nursery = None

    def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            log.warning("%s: lock client not running; %s dropped", self.target, fn.__name__)
            return
        self._nursery.start_soon(fn, *args)

    # ---- enqueue and release ----------------------------------------------------------

    async def enqueue(self, res: ResId | tuple[int, ...] | list[int], type: LockType | int,
                      mode: Mode | int, policy: object, *, no_lru: bool = False,
                      flags: int = 0, timeout: float | None = None) -> ClientLock:
        """A granted lock covering the request, with one reference of ref_kind(mode).
        RpcError if the server refuses, LockFailed on eviction, trio.TooSlowError after
        `timeout` seconds (the enqueue is then given up)."""
        assert self.imp is not None, "LockClient not attached to an Import"
        res, type, mode = ResId(*res), LockType(type), Mode(mode)
        kind = ref_kind(mode)
        lock = self.ns.match(res, type, mode, policy, trio.current_time())
        if lock is not None:
            self.ns.addref(lock.handle, kind)
            self.stats["matches"] += 1
            return lock
        lock = self.ns.new_lock(res, type, mode, policy, no_lru=no_lru)
        self.ns.addref(lock.handle, kind)
        granted = self._grants[lock.handle] = trio.Event()
        done = False
        try:
            with trio.fail_after(timeout) if timeout is not None else nullcontext():
                self.stats["enqueue_rpcs"] += 1
                reply = await self.imp.call(C.LDLM_ENQUEUE, {
                    "res": list(res), "type": int(type), "mode": int(mode),
                    "policy": wire_policy(type, policy), "handle": lock.handle,
                    "flags": flags})
                body = reply.body
                if lock.state is LockState.ENQUEUING:  # else a CP AST came first (or eviction)
                    if body["granted"]:
                        self._grant(lock, body["handle"], body["mode"], body["policy"])
                    else:
                        self.ns.enqueue_waiting(lock.handle, body["handle"])
                if lock.state is LockState.ENQUEUING:
                    self.stats["waits"] += 1
                    await granted.wait()
            if lock.state is LockState.CANCELLED:
                raise LockFailed(f"{self.target}: lock {lock.handle} lost (evicted)")
            done = True
            return lock
        finally:
            self._grants.pop(lock.handle, None)
            if not done:
                self._give_up(lock, kind)

    def _give_up(self, lock: ClientLock, kind: str) -> None:
        """The enqueue failed or was abandoned: drop its reference and the lock."""
        remote = lock.remote_handle
        if lock.state is LockState.ENQUEUING:
            self.ns.enqueue_failed(lock.handle)
            if remote is not None:  # queued on the server: withdraw it
                self._spawn(self._send_cancel, [remote])
        self.release(lock, kind=kind)

    def release(self, lock: ClientLock, now: float | None = None, *,
                mode: Mode | None = None, kind: str | None = None) -> None:
        """Drop one reference taken by enqueue() (pass the mode enqueued if it differs
        from the lock's). The last user of a lock called back starts its cancel."""
        if kind is None:
            kind = ref_kind(mode if mode is not None else lock.mode)
            if kind == READ and not lock.readers and lock.writers:
                kind = WRITE
            elif kind == WRITE and not lock.writers and lock.readers:
                kind = READ
        if self.ns.decref(lock.handle, kind, trio.current_time() if now is None else now):
            self._spawn(self._cancel, [lock])

    def _grant(self, lock: ClientLock, remote: int, mode: int, policy: Any) -> None:
        self.ns.granted(lock.handle, remote, Mode(mode), parse_policy(lock.type, policy),
                        trio.current_time())
        if lock.state is LockState.CBPENDING and not lock.users:
            self._spawn(self._cancel, [lock])

    # ---- cancels --------------------------------------------------------------------------

    async def _cancel(self, locks: list[ClientLock]) -> None:
        """Flush (on_blocking), then cancel: one LDLM_CANCEL per 512 locks."""
        for lock in locks:
            try:
                await self.on_blocking(lock)
            except Exception:
                log.exception("%s: on_blocking failed for lock %d", self.target, lock.handle)
        taken = []
        for lock in locks:
            if lock.state is LockState.CANCELLED or lock.users:
                continue  # evicted meanwhile, or used again (cancelled on release)
            self.ns.start_cancel(lock.handle)
            taken.append(lock)
        await self._send_cancel([lk.remote_handle for lk in taken
                                 if lk.remote_handle is not None])
        for lock in taken:
            if self.ns.cancelled(lock.handle) is not None:
                self.stats["cancels"] += 1

    async def _send_cancel(self, handles: list[int]) -> None:
        assert self.imp is not None
        for i in range(0, len(handles), CANCEL_MAX):
            self.stats["cancel_rpcs"] += 1
            try:
                await self.imp.call(C.LDLM_CANCEL, {"handles": handles[i:i + CANCEL_MAX]})
            except (RpcError, ImportClosed, ConnectionLost) as e:
                # Evicted or unmounting: the server dropped (or will drop) the locks.
                log.info("%s: LDLM_CANCEL failed: %s", self.target, e)

    async def cancel_lru(self, now: float | None = None) -> int:
        """Cancel the LRU's excess and aged unused locks; how many."""
        picked = self.ns.lru_candidates(trio.current_time() if now is None else now)
        if picked:
            await self._cancel(picked)
        return len(picked)

    # ---- server -> client requests --------------------------------------------------------

    async def handle_request(self, endpoint: Endpoint, msg: Message) -> Message:
        try:
            if msg.opc == C.LDLM_BL_CALLBACK:
                self._blocking(msg.body)
                return msg.reply({})
            if msg.opc == C.LDLM_CP_CALLBACK:
                self._completion(msg.body)
                return msg.reply({})
        except (KeyError, TypeError, ValueError) as e:
            log.warning("%s: bad AST opc %d %r: %s", self.target, msg.opc, msg.body, e)
            return msg.reply({"error": f"bad AST: {e}"}, status=errno.EINVAL)
        return msg.reply(status=errno.EOPNOTSUPP)

    def _blocking(self, body: dict[str, Any]) -> None:
        self.stats["basts"] += 1
        remote, local = body["handle"], body.get("remote")
        if self.ns.by_remote(remote) is None and isinstance(local, int):
            # The BAST overtook the enqueue reply that tells us the server's handle.
            try:
                lock = self.ns.lock(local)
            except UnknownLock:
                lock = None
            if lock is not None and lock.state is LockState.ENQUEUING \
                    and lock.remote_handle is None:
                self.ns.replayed(local, remote)  # (just records the server's handle)
        action = self.ns.blocking_ast(remote, trio.current_time(),
                                      discard_data=bool(body.get("flags", 0) & FL_DISCARD_DATA))
        if action.cancel_now:
            assert action.lock is not None
            self._spawn(self._cancel, [action.lock])

    def _completion(self, body: dict[str, Any]) -> None:
        self.stats["cps"] += 1
        local, remote = body["remote"], body["handle"]
        try:
            lock = self.ns.lock(local)
        except UnknownLock:
            # An enqueue we gave up: the server holds a lock for us that nobody uses.
            log.info("%s: CP AST for unknown lock %s; cancelling it", self.target, local)
            self._spawn(self._send_cancel, [remote])
            return
        self._grant(lock, remote, body["mode"], body["policy"])
        event = self._grants.get(local)
        if event is not None:
            event.set()

    # ---- eviction ---------------------------------------------------------------------

    def _connected(self, reply_body: dict[str, Any]) -> None:
        if not reply_body.get("evicted"):
            return
        self.stats["evictions"] += 1
        dropped = self.ns.invalidate_all()
        log.warning("%s: evicted by the server; %d locks dropped", self.target, len(dropped))
        for event in self._grants.values():
            event.set()  # the waiting enqueues see their lock CANCELLED
        self._spawn(self.on_evicted, dropped)
