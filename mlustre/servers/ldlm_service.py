"""ldlm_service.py - a target's lock service: the trio driver of its Namespace.

`servers/ldlm_namespace.py` decides (grant, queue, which holders to call back,
deadlines); this module does the I/O around it for a target, which it reaches only through
`interfaces.LockServiceHost` (its exports, violations, closing an evicted export):

* LDLM_ENQUEUE and LDLM_CANCEL from clients (docs/protocol.md, "LDLM");
* blocking (BAST) and completion (CP) ASTs sent to the clients as requests on
  their own connections, each in a background task (a handler never waits for
  a client while holding up its reply);
* a timer that sleeps until the namespace's next callback deadline and evicts
  the owners whose deadline passed: their locks are dropped, their export is
  closed and forgotten, and their next connect is told it was evicted;
* lock release without eviction when a client disconnects explicitly, and
  lock prolonging by I/O under a lock (the OST's BRW).

A client whose BAST or CP AST cannot be delivered (no connection) is evicted
at once, as in Lustre.
"""

from __future__ import annotations

import errno
import logging
import secrets
from typing import Any

import trio

from ..protocol import constants as C
from ..protocol.errors import ConnectionLost, RpcTimeout
from ..protocol.ldlm import (
    FL_BLOCK_GRANTED,
    FL_BLOCK_WAIT,
    FL_LOCK_CHANGED,
    FL_NO_EXPANSION,
    FL_REPLAY,
    Extent,
    LockType,
    Mode,
    ResId,
)
from ..protocol.message import Message
from .errors import ServiceError
from .export import Export, Stats
from .interfaces import LockServiceHost
from .ldlm_namespace import (
    LOCAL_OWNER as LOCAL,
)
from .ldlm_namespace import (
    LockError,
    Namespace,
    Reprocessed,
    ServerLock,
)
from .limits import DEFAULT_MAX_LOCKS

log = logging.getLogger(__name__)

U64 = (1 << 64) - 1
CANCEL_MAX = 512  # handles in one LDLM_CANCEL
LDLM_OPCODES = frozenset({C.LDLM_ENQUEUE, C.LDLM_CANCEL})
# Reply flags a client may see (lustre_dlm_flags.h values).
REPLY_FLAGS = FL_LOCK_CHANGED | FL_BLOCK_WAIT
EVICTED_MEMORY = 4096  # evicted client uuids remembered for their next connect
GLIMPSE_TIMEOUT = 5.0  # longest wait for a holder's answer to a glimpse AST


def _in_trio() -> bool:
    try:
        trio.current_time()
    except RuntimeError:
        return False
    return True


def _wire_policy(lock: ServerLock) -> Any:
    if lock.type is LockType.EXTENT:
        assert isinstance(lock.policy, Extent)
        return [lock.policy.start, lock.policy.end]
    if lock.type is LockType.IBITS:
        return int(lock.policy)  # type: ignore[call-overload]
    return None


def _u64(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= U64:
        raise LockError(errno.EINVAL, f"{what} must be an unsigned 64-bit integer")
    return value


class LdlmService:
    """The lock namespace of one target and the tasks that drive it."""

    def __init__(self, host: LockServiceHost, stats: Stats, *, kind: str,
                 lock_types: frozenset[LockType], callback_timeout: float,
                 max_locks: int = DEFAULT_MAX_LOCKS) -> None:
        self.host = host
        self.stats = stats
        self.name = host.name
        self.kind = kind
        self.lock_types = lock_types
        self.namespace = Namespace(host.name, callback_timeout=callback_timeout,
                                   first_handle=(secrets.randbits(32) << 20) | 1)
        self.evicted: dict[str, None] = {}  # uuids evicted and not reconnected since
        self._local_seq = 0
        self.started_at = trio.current_time() if _in_trio() else 0.0
        self._local_granted: dict[int, trio.Event] = {}  # local lock handle -> set on grant
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self.max_locks = max_locks  # per client (limits.py); lctl may change it
        self._update_gauges()

    @property
    def timeout(self) -> float:
        return self.namespace.callback_timeout

    # -- lifecycle --
    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.started_at = trio.current_time()
        nursery.start_soon(self._timer_loop)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.namespace.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            for owner in self.namespace.expired(trio.current_time()):
                if owner == LOCAL:
                    continue
                log.warning("%s: lock callback timer expired for %s after %.1fs: evicting",
                            self.name, owner, self.timeout)
                await self.evict(owner, "lock callback timeout")

    # -- requests --
    def at_lock_limit(self, owner: str, handle: int) -> bool:
        """Would a new lock of `owner` (not a resend of `handle`) go over the limit of
        locks one client may hold (granted or waiting)?"""
        return (self.namespace.count_of(owner) >= self.max_locks
                and not self.namespace.has(owner, handle))

    def _refuse_over_limit(self, export: Export) -> None:
        self.stats.count("ldlm_lock_limit")
        self.host.violation(export.uuid, "lock_limit",
                              f"holds {self.namespace.count_of(export.uuid)} locks")
        raise ServiceError(errno.ENOLCK, f"a client may hold at most {self.max_locks} locks "
                                         f"on {self.name}")

    async def enqueue(self, export: Export, req: Message) -> dict[str, Any]:
        """A lock request: a refusal (LockError, an ErrnoError) is the reply's status."""
        body = req.body
        res = body.get("res")
        if type(res) is not list or len(res) != 4:
            raise LockError(errno.EINVAL, "res must be a list of 4 integers")
        resid = ResId(*(_u64(x, "res") for x in res))
        type_ = body.get("type")
        if type(type_) is not int or type_ not in {int(t) for t in self.lock_types}:
            raise LockError(errno.EINVAL, f"lock type {type_!r} not served by "
                                          f"{self.kind}")
        mode = body.get("mode")
        if type(mode) is not int:
            raise LockError(errno.EINVAL, "mode must be an integer")
        policy = body.get("policy", ...)
        if policy is ...:
            raise LockError(errno.EINVAL, "request lacks field 'policy'")
        if type_ == LockType.EXTENT:
            if type(policy) is not list or len(policy) != 2:
                raise LockError(errno.EINVAL, "an extent policy is [start, end]")
            policy = (_u64(policy[0], "extent start"), _u64(policy[1], "extent end"))
        handle = _u64(body.get("handle"), "handle")
        flags = _u64(body.get("flags", 0), "flags")
        now = trio.current_time()
        if self.at_lock_limit(export.uuid, handle):
            self._refuse_over_limit(export)
        if body.get("intent") == "glimpse":
            return await self._glimpse(export, handle, resid, LockType(type_), mode, policy)
        if flags & FL_REPLAY:
            return self._replay(export, handle, resid, LockType(type_), mode, policy,
                                flags)
        result = self.namespace.enqueue(export.uuid, handle, resid, LockType(type_), mode,
                                        policy, now, no_expand=bool(flags & FL_NO_EXPANSION))
        lock = result.lock
        self.stats.count("ldlm_enqueues")
        self._send_asts(Reprocessed([], result.basts))
        self._update_gauges()
        return {"handle": lock.handle, "granted": result.granted, "mode": int(lock.mode),
                "policy": _wire_policy(lock), "flags": lock.flags & REPLY_FLAGS}

    def _replay(self, export: Export, handle: int, res: ResId, type_: LockType, mode: Any,
                policy: Any, flags: int) -> dict[str, Any]:
        """Lock replay (the server's recovery lets it through only in its lock phase):
        a lock the client held from the last instance is granted again as it was. One
        that would conflict with a lock granted since is refused (ESTALE): the client
        then drops it with what it protected."""
        if not flags & FL_BLOCK_GRANTED:
            raise LockError(errno.EINVAL, "only granted locks are replayed")
        if self.namespace.would_block(export.uuid, res, type_, mode, policy) \
                and self.namespace.lock_by_owner(export.uuid, handle) is None:
            self.stats.count("ldlm_replays_refused")
            raise LockError(errno.ESTALE, "a replayed lock conflicts with a granted one")
        result = self.namespace.enqueue(export.uuid, handle, res, type_, mode,
                                        policy, trio.current_time(), replay=True,
                                        no_expand=bool(flags & FL_NO_EXPANSION))
        self.stats.count("ldlm_replays")
        self._update_gauges()
        lock = result.lock
        return {"handle": lock.handle, "granted": True, "mode": int(lock.mode),
                "policy": _wire_policy(lock), "flags": 0}

    async def _glimpse(self, export: Export, handle: int, res: ResId, type_: LockType,
                       mode: int, policy: Any) -> dict[str, Any]:
        """A glimpse (Lustre's glimpse enqueue): grant the lock if nothing conflicts;
        else take no lock and ask every other client holding a PW lock on the object
        for the size and mtime its cache gives the file (LDLM_GL_CALLBACK)."""
        now = trio.current_time()
        lock = self.namespace.try_enqueue(export.uuid, handle, res, type_, mode, policy, now)
        self.stats.count("ldlm_glimpses")
        # How long ago a writer last gave a lock on it back ("never" = since this server
        # started): a size the client read from the MDT before that is still current.
        released = self.namespace.pw_released_at(res)
        ago = now - (released if released is not None else self.started_at)
        if lock is not None:
            self._update_gauges()
            return {"handle": lock.handle, "granted": True, "mode": int(lock.mode),
                    "policy": _wire_policy(lock), "flags": lock.flags & REPLY_FLAGS,
                    "released_ago": ago}
        lvbs: list[list[int]] = []

        async def ask(holder: ServerLock) -> None:
            target = self.host.exports.get(holder.owner)
            if target is None:
                return
            self.stats.count("ldlm_gl_asts")
            try:
                reply = await target.endpoint.call(
                    C.LDLM_GL_CALLBACK, {"handle": holder.handle, "remote": holder.remote_handle},
                    timeout=min(self.timeout, GLIMPSE_TIMEOUT))
            except (ConnectionLost, RpcTimeout) as e:
                log.info("%s: glimpse AST to %s failed: %s", self.name, holder.owner, e)
                return
            size, mtime = reply.body.get("size"), reply.body.get("mtime_ns")
            if not reply.status and type(size) is int and type(mtime) is int:
                lvbs.append([size, mtime])

        async with trio.open_nursery() as nursery:
            for holder in self.namespace.pw_holders(res, exclude=export.uuid):
                nursery.start_soon(ask, holder)
        return {"granted": False, "aborted": True, "lvbs": lvbs, "released_ago": ago}

    async def cancel(self, export: Export, req: Message) -> dict[str, Any]:
        handles = req.body.get("handles")
        if (type(handles) is not list or len(handles) > CANCEL_MAX
                or not all(type(h) is int for h in handles)):
            raise ServiceError(errno.EINVAL, f"handles must be a list of at most {CANCEL_MAX} "
                                             "integers")
        self.cancel_handles(export, handles)
        return {}

    def cancel_handles(self, export: Export, handles: list[int]) -> None:
        """Cancel locks of `export` (LDLM_CANCEL, or early lock cancel carried by an
        update request); unknown handles are ignored, as Lustre does."""
        now = trio.current_time()
        out = Reprocessed()
        for handle in handles:
            try:
                done = self.namespace.cancel(export.uuid, handle, now)
            except LockError as e:  # unknown or another client's: ignored, as Lustre does
                self.stats.count("ldlm_cancel_unknown")
                if e.errno == errno.EPERM:  # another client's: never by mistake
                    self.stats.count("ldlm_cancel_foreign")
                    self.host.violation(export.uuid, "foreign_lock", f"handle {handle:#x}")
                continue
            self.stats.count("ldlm_cancels")
            out.granted += done.granted
            out.basts += done.basts
        self._send_asts(out)
        self._update_gauges()

    # -- the target's own locks (an update's EX locks on the inodes it changes) --
    def intent_lock(self, export: Export, handle: Any, res: ResId, bits: int,
                    mode: Mode = Mode.PR) -> int | None:
        """Grant `export` an IBITS lock (PR: Lustre's intent locks of getattr/lookup;
        PW: a write-back lock on attributes) with its reply, if that needs no waiting;
        the server's handle, or None."""
        if type(handle) is not int or not 0 <= handle <= U64:
            return None
        if self.at_lock_limit(export.uuid, handle):  # the reply goes out without a lock
            self.stats.count("ldlm_lock_limit")
            return None
        try:
            lock = self.namespace.try_enqueue(export.uuid, handle, res, LockType.IBITS,
                                              mode, bits, trio.current_time())
        except LockError:
            return None
        if lock is None:
            self.stats.count("ldlm_intent_refused")
            return None
        self.stats.count("ldlm_intent_grants")
        self._update_gauges()
        return lock.handle

    def local_would_block(self, wanted: list[tuple[ResId, int]]) -> bool:
        return any(self.namespace.would_block(LOCAL, res, LockType.IBITS, Mode.EX, bits)
                   for res, bits in wanted)

    async def lock_local(self, wanted: list[tuple[ResId, int]]) -> list[ServerLock]:
        """EX IBITS locks for an update, in resource order (no deadlock between two
        updates); conflicting client locks are called back and waited for. Without a
        conflict nothing awaits: an inline handler may call this."""
        merged: dict[ResId, int] = {}
        for res, bits in wanted:
            merged[res] = merged.get(res, 0) | bits
        locks: list[ServerLock] = []
        try:
            for res in sorted(merged):
                self._local_seq += 1
                result = self.namespace.enqueue(LOCAL, self._local_seq, res, LockType.IBITS,
                                                Mode.EX, merged[res], trio.current_time())
                locks.append(result.lock)
                if not result.granted:
                    event = self._local_granted[result.lock.handle] = trio.Event()
                    self._send_asts(Reprocessed([], result.basts))
                    self.stats.count("ldlm_update_waits")
                    await event.wait()
        except BaseException:
            self.unlock_local(locks)
            raise
        return locks

    async def lock_local_one(self, res: ResId, type_: LockType, mode: Mode,
                             policy: object) -> ServerLock:
        """One lock of the target's own on any resource (the barrier's EX lock),
        waiting for conflicting client locks to be called back."""
        self._local_seq += 1
        result = self.namespace.enqueue(LOCAL, self._local_seq, res, type_, mode, policy,
                                        trio.current_time(), no_expand=True)
        if not result.granted:
            event = self._local_granted[result.lock.handle] = trio.Event()
            self._send_asts(Reprocessed([], result.basts))
            try:
                await event.wait()
            except BaseException:
                self.unlock_local([result.lock])
                raise
        self._update_gauges()
        return result.lock

    def unlock_local(self, locks: list[ServerLock]) -> None:
        out = Reprocessed()
        now = trio.current_time()
        for lock in locks:
            self._local_granted.pop(lock.handle, None)
            if self.namespace.lock(lock.handle) is lock:
                done = self.namespace.cancel(LOCAL, lock.handle, now)
                out.granted += done.granted
                out.basts += done.basts
        self._send_asts(out)
        self._update_gauges()

    def prolong(self, export: Export, res: ResId, extent: Extent | None = None) -> None:
        """I/O by this client under its locks on `res`: push their callback deadlines."""
        if self.namespace.prolong(export.uuid, res, trio.current_time(), extent):
            self.stats.count("ldlm_prolongs")

    # -- releasing and evicting --
    def release(self, owner: str) -> None:
        """The client disconnected explicitly: drop its locks (not an eviction)."""
        if not self.namespace.locks_of(owner):
            return
        self._send_asts(self.namespace.evict(owner, trio.current_time()))
        self._update_gauges()

    async def evict(self, owner: str, reason: str) -> None:
        """Drop every lock of `owner`, close and forget its export."""
        if owner in self.evicted and not self.namespace.locks_of(owner):
            return  # already evicted (e.g. a BAST and a CP failed together)
        out = self.namespace.evict(owner, trio.current_time())
        self.stats.count("evictions")
        self.evicted[owner] = None
        while len(self.evicted) > EVICTED_MEMORY:
            del self.evicted[next(iter(self.evicted))]
        self._send_asts(out)
        self._update_gauges()
        await self.host.evict_export(owner, reason)

    def mark_evicted(self, uuid: str) -> None:
        """A client evicted by someone else (the recovery window): told so when it
        connects again."""
        self.evicted[uuid] = None

    def connected(self, uuid: str) -> bool:
        """A client connects: was it evicted since its last connection? (Forgets it.)"""
        return self.evicted.pop(uuid, ...) is None

    # -- ASTs --
    def _send_asts(self, out: Reprocessed) -> None:
        for lock in out.granted:
            if lock.owner == LOCAL:
                event = self._local_granted.pop(lock.handle, None)
                if event is not None:
                    event.set()
        if self._nursery is None:  # not running (unit use): nothing to send
            return
        for lock in out.granted:
            if lock.owner != LOCAL:
                self._nursery.start_soon(self._send_cp, lock)
        for lock in out.basts:
            if lock.owner != LOCAL:  # the target's own locks go when its update is done
                self._nursery.start_soon(self._send_bast, lock)
        if out.basts:
            self._wakeup.set()  # a new callback deadline for the timer

    async def _send_bast(self, lock: ServerLock) -> None:
        body = {"handle": lock.handle, "remote": lock.remote_handle, "flags": 0}
        await self._send_ast(lock, C.LDLM_BL_CALLBACK, body, "ldlm_basts")

    async def _send_cp(self, lock: ServerLock) -> None:
        body = {"handle": lock.handle, "remote": lock.remote_handle, "mode": int(lock.mode),
                "policy": _wire_policy(lock)}
        await self._send_ast(lock, C.LDLM_CP_CALLBACK, body, "ldlm_cps")

    async def _send_ast(self, lock: ServerLock, opc: int, body: dict[str, Any],
                        stat: str) -> None:
        """Send one AST; evict its owner if it cannot be delivered."""
        if self.namespace.lock(lock.handle) is not lock:
            return  # cancelled or evicted meanwhile
        export = self.host.exports.get(lock.owner)
        try:
            if export is None:
                raise ConnectionLost("client not connected")
            self.stats.count(stat)
            reply = await export.endpoint.call(opc, body, timeout=self.timeout)
        except ConnectionLost as e:
            if self.namespace.lock(lock.handle) is lock:
                log.warning("%s: %s to %s failed (%s): evicting", self.name,
                            C.OPCODE_NAMES.get(opc, opc), lock.owner, e)
                await self.evict(lock.owner, f"AST failed: {e}")
            return
        except RpcTimeout:
            return  # a BAST's callback timer evicts the client if it does not cancel
        if reply.status:
            log.info("%s: client %s answered %s with status %d", self.name, lock.owner,
                     C.OPCODE_NAMES.get(opc, opc), reply.status)

    def dump(self) -> list[str]:
        """One line per lock (Lustre's ldlm.dump_namespaces), for lctl."""
        now = trio.current_time()
        lines = []
        for res in self.namespace.resources():
            for lk in self.namespace.resource_locks(res):
                owner = "(target)" if lk.owner == LOCAL else lk.owner
                due = f" bast {lk.deadline - now:+.1f}s" if lk.deadline is not None else ""
                lines.append(f"{lk.handle:#x} res {list(res)} {lk.type.name} {lk.mode.name} "
                             f"{_wire_policy(lk)} {'granted' if lk.granted else 'waiting'} "
                             f"owner {owner}{due}")
        return lines

    # -- statistics --
    def _update_gauges(self) -> None:
        self.stats["ldlm_granted"] = self.namespace.granted_count
        self.stats["ldlm_waiting"] = self.namespace.waiting_count
