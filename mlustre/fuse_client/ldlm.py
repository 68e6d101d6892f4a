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

* Intent locks: `intent_begin()`/`intent_end()` around a request that asks the
  server to grant a lock with its reply (getattr/lookup on the MDT); `glimpse()`
  takes a PR lock on an object, or learns from the PW holders the size and mtime
  their caches give the file; `early_cancel()` takes the unused locks an update
  would call back and gives their handles to put in that update (ELC).
* A glimpse AST (LDLM_GL_CALLBACK) is answered with `on_glimpse(lock)`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from typing import Any

import trio

from ..protocol import constants as C
from ..protocol.errors import ConnectionLost, RpcError
from ..protocol.ldlm import FL_ELC, Extent, LockType, Mode, ResId
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
    Reservation,
    UnknownLock,
    replay_flags,
)

log = logging.getLogger(__name__)

CANCEL_MAX = 512  # handles in one LDLM_CANCEL (docs/protocol.md)
_READ_MODES = Mode.PR | Mode.CR | Mode.NL

OnBlocking = Callable[[ClientLock], Awaitable[None]]
OnEvicted = Callable[[list[ClientLock]], Awaitable[None]]
OnGlimpse = Callable[[ClientLock], "dict[str, int] | None"]
OnEvictedNow = Callable[[list[ClientLock]], None]


class LockFailed(Exception):
    """The lock was lost before it could be used (eviction while enqueueing)."""


_KINDS: dict[int, str] = {}


def ref_kind(mode: Mode | int) -> str:
    """The kind of reference a user of a lock in `mode` takes: reader or writer.
    (Remembered per mode: flag arithmetic on enums costs microseconds, and a readdir
    page takes a reference on hundreds of locks.)"""
    kind = _KINDS.get(mode)
    if kind is None:
        kind = _KINDS[int(mode)] = READ if Mode(mode) & _READ_MODES else WRITE
    return kind


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


def _no_glimpse(lock: ClientLock) -> dict[str, int] | None:
    return None


def _no_evicted_now(locks: list[ClientLock]) -> None:
    return None


class LockClient:
    """The locks of this client on one target, and the tasks that keep them.

    :on_blocking: awaited before a lock is cancelled (BAST, LRU): the llite layer
        flushes dirty pages and drops caches under the lock there.
    :on_evicted: awaited (in the background) with the dropped locks after an eviction.
    :on_evicted_now: run inline when an eviction is learnt, before any other task: what
        must not reach the server any more (dirty data) is dropped there.
    :on_glimpse: answers a glimpse AST (the size and mtime our cache gives the file).
    :on_reset: awaited with the locks a restarted server forgot (no EIO: nothing lost).
    :watch: resource -> told at once of a BAST on a lock of it (the SIR barrier's task
        watches its CR lock); such locks cache nothing (no on_blocking flush).

    The import's connects and lock replay reach it through its target's ImportEvents
    (target_link.TargetLink): `connected()` and `replay_locks()`.
    """

    def __init__(self, target: str, imp: Import | None = None, *, lru_size: int = 100,
                 lru_max_age: float = 600.0, lru_interval: float = 1.0,
                 on_blocking: OnBlocking | None = None,
                 on_evicted: OnEvicted | None = None,
                 on_evicted_now: OnEvictedNow | None = None,
                 on_glimpse: OnGlimpse | None = None,
                 on_reset: OnEvicted | None = None,
                 watch: Mapping[ResId, Callable[[ClientLock], None]] | None = None) -> None:
        self.target = target
        self.ns = ClientNamespace(target, lru_size=lru_size, lru_max_age=lru_max_age)
        self.lru_interval = lru_interval
        self.on_blocking: OnBlocking = on_blocking or _no_blocking
        self.on_evicted: OnEvicted = on_evicted or _no_evicted
        self.on_glimpse: OnGlimpse = on_glimpse or _no_glimpse
        self.on_reset: OnEvicted = on_reset or _no_evicted
        self.on_evicted_now: OnEvictedNow = on_evicted_now or _no_evicted_now
        self._instance: Any = None
        # Told at once of a BAST on a resource (the SIR barrier's task watches its lock).
        self.watched: Mapping[ResId, Callable[[ClientLock], None]] = watch or {}
        # Where requests go (None only for a lock client that just answers ASTs in tests).
        self.imp = imp
        self._grants: dict[int, trio.Event] = {}  # local handle -> set on CP AST / eviction
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self.stats: dict[str, int] = {
            "enqueue_rpcs": 0, "matches": 0, "waits": 0, "cancel_rpcs": 0, "cancels": 0,
            "basts": 0, "cps": 0, "evictions": 0, "intents": 0, "intent_grants": 0,
            "glimpses": 0, "glimpse_grants": 0, "gl_asts": 0, "elc": 0, "resets": 0,
            "reenqueues": 0, "replayed": 0,
        }

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
        `timeout` seconds (the enqueue is then given up). A server restart while the
        enqueue waits is no failure: the new instance is asked again."""
        assert self.imp is not None, "LockClient not attached to an Import"
        res, type, mode = ResId(*res), LockType(type), Mode(mode)
        with trio.fail_after(timeout) if timeout is not None else nullcontext():
            while True:
                evictions, resets = self.stats["evictions"], self.stats["resets"]
                lock = await self._enqueue_once(res, type, mode, policy, no_lru, flags)
                if lock is not None:
                    return lock
                if self.stats["evictions"] != evictions or self.stats["resets"] == resets:
                    raise LockFailed(f"{self.target}: lock lost (evicted)")
                self.stats["reenqueues"] += 1

    async def _enqueue_once(self, res: ResId, type: LockType, mode: Mode, policy: object,
                            no_lru: bool, flags: int) -> ClientLock | None:
        """One attempt; None if the lock was dropped meanwhile (a reset or an eviction)."""
        assert self.imp is not None
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
            elif lock.state is LockState.CANCELLED and isinstance(body.get("handle"), int):
                # Dropped by a reset while the (resent) request reached the new
                # instance: that instance's lock is nobody's; give it back.
                self._spawn(self._send_cancel, [body["handle"]])
            if lock.state is LockState.ENQUEUING:
                self.stats["waits"] += 1
                await granted.wait()
            if lock.state is LockState.CANCELLED:
                return None
            done = True
            return lock
        finally:
            self._grants.pop(lock.handle, None)
            if not done:
                self._give_up(lock, kind)

    # ---- intent locks, glimpses, early cancels -----------------------------------------

    def intent_begin(self, res: ResId | tuple[int, ...], type: LockType | int,
                     mode: Mode | int, policy: object) -> ClientLock:
        """A lock to ask for inside another request; its handle goes in that request.
        Call intent_end() with the reply, whatever happens."""
        lock = self.ns.new_lock(res if res.__class__ is ResId else ResId(*res),
                                type if type.__class__ is LockType else LockType(type),
                                mode if mode.__class__ is Mode else Mode(mode), policy)
        self.ns.addref(lock.handle, ref_kind(lock.mode))
        self.stats["intents"] += 1
        return lock

    def intent_range(self, res: ResId, type: LockType, mode: Mode, policy: object,
                     count: int) -> Reservation:
        """Handles for up to `count` intent locks of one request (a readdir page grants
        one per entry it returns): locks are made only for the handles the reply
        grants (range_lock) or a callback names. End with range_end() whatever
        happens."""
        return self.ns.reserve(count, res, type, mode, policy)

    def range_lock(self, r: Reservation, index: int) -> ClientLock | None:
        """The intent lock of handle r.base + index, as intent_begin() makes it (the
        caller ends it with intent_end()); None once the range is over (eviction)."""
        lock, new = self.ns.made(r, index)
        if lock is not None and new:
            self.ns.addref(lock.handle, ref_kind(lock.mode))
            self.stats["intents"] += 1
        return lock

    def range_end(self, r: Reservation) -> None:
        """The reply was handled or the request failed: a lock a callback made that
        the reply did not end (the reply was lost) ends here, ungranted."""
        self.ns.unreserve(r)
        for lock in r.locks.values():
            if lock.state is LockState.ENQUEUING and lock.users:
                self.intent_end(lock, None)

    def intent_end(self, lock: ClientLock, remote: int | None) -> bool:
        """The reply came (remote = the server's handle if it granted the lock) or the
        request failed (None). True if the lock is now GRANTED: what the reply said
        may be cached until the lock is called back."""
        kind = ref_kind(lock.mode)
        if remote is None or lock.state is not LockState.ENQUEUING:
            if lock.state is LockState.ENQUEUING:
                self.ns.enqueue_failed(lock.handle)
            self.release(lock, kind=kind)
            return False
        self.stats["intent_grants"] += 1
        self._grant(lock, remote, lock.mode, wire_policy(lock.type, lock.policy))
        self.release(lock, kind=kind)
        return lock.state is LockState.GRANTED

    async def glimpse(self, res: ResId | tuple[int, ...],
                      policy: Extent) -> tuple[ClientLock | None, list[list[int]], float]:
        """A PR EXTENT lock on `res` if one is held or can be granted at once; else no
        lock and the [size, mtime_ns] each PW holder's cache gives the file. Also how
        long ago (seconds) a writer last gave back a lock on `res` (0: unknown)."""
        res = ResId(*res)
        now = trio.current_time()
        lock = self.ns.match(res, LockType.EXTENT, Mode.PR, policy, now)
        if lock is not None:
            self.stats["matches"] += 1
            return lock, [], 0.0
        assert self.imp is not None
        lock = self.ns.new_lock(res, LockType.EXTENT, Mode.PR, policy)
        self.ns.addref(lock.handle, READ)
        self.stats["glimpses"] += 1
        try:
            reply = await self.imp.call(C.LDLM_ENQUEUE, {
                "res": list(res), "type": int(LockType.EXTENT), "mode": int(Mode.PR),
                "policy": wire_policy(LockType.EXTENT, policy), "handle": lock.handle,
                "flags": 0, "intent": "glimpse"})
        except BaseException:
            self._give_up(lock, READ)
            raise
        body = reply.body
        ago = body.get("released_ago", 0.0)
        ago = float(ago) if isinstance(ago, int | float) else 0.0
        if body.get("granted") and lock.state is LockState.ENQUEUING:
            self.stats["glimpse_grants"] += 1
            self._grant(lock, body["handle"], body["mode"], body["policy"])
            self.release(lock, kind=READ)
            return (lock if lock.state is LockState.GRANTED else None), [], ago
        self._give_up(lock, READ)
        return None, [list(v) for v in body.get("lvbs", [])], ago

    async def early_cancel(self, wanted: list[tuple[ResId, int]]) -> list[int]:
        """ELC for an update that will take EX IBITS locks on `wanted` (resource, bits):
        the unused locks of ours it would call back are flushed (on_blocking) and taken;
        put the returned handles in the update, then call cancels_sent()."""
        picked: list[ClientLock] = []
        for res, bits in wanted:
            picked += self.ns.elc_candidates(ResId(*res), LockType.IBITS, Mode.EX, bits)
        for lock in picked:
            lock.flags |= FL_ELC
            try:
                await self.on_blocking(lock)
            except Exception:
                log.exception("%s: on_blocking failed for lock %d", self.target, lock.handle)
        self.stats["elc"] += len(picked)
        return [lk.remote_handle for lk in picked if lk.remote_handle is not None]

    def cancels_sent(self, handles: list[int], *, delivered: bool = True) -> None:
        """The update carrying early cancels was answered (delivered), or failed: then
        the cancels go again in an LDLM_CANCEL of their own (unknown handles are
        ignored by the server)."""
        if not delivered and handles:
            self._spawn(self._send_cancel, list(handles))
        for handle in handles:
            lock = self.ns.by_remote(handle)
            if lock is not None and lock.state is LockState.CANCELLING:
                if self.ns.cancelled(lock.handle) is not None:
                    self.stats["cancels"] += 1

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

    async def _cancel(self, locks: list[ClientLock], concurrency: int = 1) -> None:
        """Flush (on_blocking, for up to `concurrency` locks at once), then cancel: one
        LDLM_CANCEL per 512 locks."""
        limiter = trio.CapacityLimiter(concurrency)

        async def blocking(lock: ClientLock) -> None:
            async with limiter:
                try:
                    await self.on_blocking(lock)
                except Exception:
                    log.exception("%s: on_blocking failed for lock %d", self.target,
                                  lock.handle)

        async with trio.open_nursery() as nursery:
            for lock in locks:
                if lock.res not in self.watched:  # (the barrier lock: nothing cached)
                    nursery.start_soon(blocking, lock)
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

    async def give_back(self, lock: ClientLock) -> None:
        """Drop our reference to a lock being called back and cancel it at once,
        returning once the server has the cancel (the barrier's CR lock: asking for it
        again before that would find the old one still granted)."""
        if self.ns.decref(lock.handle, ref_kind(lock.mode), trio.current_time()):
            await self._cancel([lock])

    async def cancel_unused(self, concurrency: int = 1) -> int:
        """Cancel every lock no one uses (lru_size=clear; the barrier's drain, which
        gives them back `concurrency` at a time: each may wait for a kernel
        invalidation in a worker thread)."""
        picked = self.ns.clear_lru()
        if picked:
            await self._cancel(picked, concurrency)
        return len(picked)

    async def cancel_these(self, locks: list[ClientLock]) -> int:
        """Give back those of `locks` nobody uses (flushed first, as any cancel); how
        many (idle write-back locks: md_writeback.py)."""
        picked = self.ns.take_unused(locks)
        if picked:
            await self._cancel(picked)
        return len(picked)

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
            if msg.opc == C.LDLM_GL_CALLBACK:
                self.stats["gl_asts"] += 1
                lock = self.ns.by_remote(msg.body["handle"])
                lvb = self.on_glimpse(lock) if lock is not None else None
                if lvb is None:
                    return msg.reply({}, status=errno.ENOENT)
                return msg.reply(lvb)
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
                # (A handle of a range whose reply is on its way: its lock starts now.)
                found = self.ns.reserved_index(local)
                lock = self.range_lock(*found) if found is not None else None
            if lock is not None and lock.state is LockState.ENQUEUING \
                    and lock.remote_handle is None:
                self.ns.replayed(local, remote)  # (just records the server's handle)
        action = self.ns.blocking_ast(remote, trio.current_time(),
                                      discard_data=bool(body.get("flags", 0) & FL_DISCARD_DATA))
        hook = self.watched.get(action.lock.res) if action.lock is not None else None
        if hook is not None:
            assert action.lock is not None
            hook(action.lock)
        if action.cancel_now:
            assert action.lock is not None
            self._spawn(self._cancel, [action.lock])
        elif action.lock is None:
            # A lock we do not know (its grant's reply was lost): give it back, or the
            # server would evict us for holding it.
            self._spawn(self._send_cancel, [remote])

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

    # ---- lock replay (the import's REPLAY_LOCKS state) -------------------------------

    async def replay_locks(self, endpoint: Endpoint) -> None:
        """The target restarted: take our granted locks again, as they were, so that the
        caches they protect stay valid. A lock the server refuses is dropped with what it
        protected (on_reset), as all were before lock replay."""
        assert self.imp is not None
        locks = [lk for lk in self.ns.replay_list() if not lk.waiting]
        refused = []
        for lock in locks:
            if lock.state is LockState.CANCELLED:
                continue
            reply = await endpoint.call(C.LDLM_ENQUEUE, {
                "res": list(lock.res), "type": int(lock.type), "mode": int(lock.mode),
                "policy": wire_policy(lock.type, lock.policy), "handle": lock.handle,
                "flags": replay_flags(lock)}, timeout=self.imp.replay_timeout,
                conn_cnt=self.imp.conn_cnt)
            if reply.status or not isinstance(reply.body.get("handle"), int):
                refused.append(lock)
                continue
            if lock.state is not LockState.CANCELLED:
                self.ns.replayed(lock.handle, reply.body["handle"])
                self.stats["replayed"] += 1
        if refused:
            log.warning("%s: %d of %d locks refused at replay; dropped", self.target,
                        len(refused), len(locks))
            self._reset(refused, "refused at replay")
        elif locks:
            log.info("%s: %d locks replayed", self.target, len(locks))

    def _reset(self, locks: list[ClientLock], why: str) -> None:
        dropped = self.ns.forget(locks)
        if not dropped:
            return
        self.stats["resets"] += 1
        log.info("%s: %d locks dropped (%s)", self.target, len(dropped), why)
        for lock in dropped:
            event = self._grants.get(lock.handle)
            if event is not None:
                event.set()  # the waiting enqueue asks the new instance again
        self._spawn(self.on_reset, dropped)

    # ---- eviction ---------------------------------------------------------------------

    def connected(self, reply_body: dict[str, Any]) -> None:
        """A connect reply of the import: a new instance, or an eviction."""
        instance = reply_body.get("instance")
        restarted = self._instance is not None and instance != self._instance
        self._instance = instance
        if restarted and not reply_body.get("evicted"):
            # The granted locks are replayed (replay_locks, which the import's events
            # always run after this); the enqueues queued on the old instance are asked
            # for again.
            self._reset([lk for lk in self.ns.all_locks() if lk.waiting], "waiting")
            return
        if not reply_body.get("evicted"):
            return
        self.stats["evictions"] += 1
        dropped = self.ns.invalidate_all()
        log.warning("%s: evicted by the server; %d locks dropped", self.target, len(dropped))
        try:
            self.on_evicted_now(dropped)
        except Exception:
            log.exception("%s: on_evicted_now failed", self.target)
        for event in self._grants.values():
            event.set()  # the waiting enqueues see their lock CANCELLED
        self._spawn(self.on_evicted, dropped)
