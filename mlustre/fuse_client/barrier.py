"""barrier.py - the client's side of the SIR barrier on one target: the writer gate.

When the target offers OBD_CONNECT_UPDATE_LOCK, the client holds a CR lock on the
target's barrier resource (never in the LRU) and sends update requests only while it
holds it. A BAST on that lock means the target wants to stop (a controlled restart,
an upgrade) or to freeze: the gate closes for application updates (they block, they
never fail), write-back goes on until nothing of the target is dirty or in flight,
the target is asked to commit, every other lock of ours on it is cancelled, and the
CR lock is given back and asked for again at once. That enqueue is granted after a
thaw, or by the next server instance, and the gate opens: nothing was left to replay.

Without the flag (an older server, or a client told not to use it) the gate is
always open and a restart is recovered the classic way (resend, replay).

The gate's state table is barrier_gate.py (no I/O); `Barrier` is the trio driver around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..protocol import constants as C
from ..protocol.errors import RpcError
from ..protocol.ldlm import Mode, barrier_lock
from .barrier_gate import Gate, GateState, IllegalGateTransition, admits
from .imports import Import, ImportClosed, ImportState
from .ldlm import LockClient, LockFailed
from .ldlm_client import ClientLock, LockState

log = logging.getLogger(__name__)

__all__ = ["Barrier", "Drainer", "GateState", "IllegalGateTransition", "admits"]


CANCEL_CONCURRENCY = 16  # MDT locks given back at once by a drain (kernel invalidations)
DRAIN_PASSES = 4  # flush passes before the CR lock goes back (later writes wait in cache)

# Drains a target's dirty state (data pages of files on an OST; for the MDT also the
# sizes and mtimes still to push); returns the bytes it wrote.
Drainer = Callable[[], Awaitable[int]]


class Barrier:
    """The writer gate of one target, and the task keeping its CR lock.

    Its target's ImportEvents (target_link.TargetLink) make it the import's writer gate
    and tell it of each connect (`connected`); its lock client's BASTs on the barrier
    resource (`res`) come to `blocked`.
    """

    def __init__(self, target: str, kind: str, imp: Import, locks: LockClient,
                 *, enabled: bool = True, drain: Drainer | None = None) -> None:
        self.target = target
        self.kind = kind
        self.imp = imp
        self.locks = locks
        self.enabled = enabled  # the client offers UPDATE_LOCK
        self.res, self.type, self.policy = barrier_lock(kind)
        self.drain = drain
        self.lock: ClientLock | None = None
        self.inflight = 0  # admitted updates not answered yet
        self._changed = trio.Event()
        self._wake = trio.Event()
        self.stats: dict[str, Any] = {
            "enqueues": 0, "callbacks": 0, "drains": 0, "flushed_bytes": 0,
            "last_drain_s": 0.0, "last_stall_s": 0.0, "longest_stall_s": 0.0,
            "waiters": 0,
        }
        self.gate = Gate(target, self.stats)
        self._scope: trio.CancelScope | None = None

    # -- the gate --
    @property
    def state(self) -> GateState:
        return self.gate.state

    def _set(self, state: GateState) -> None:
        old = self.gate.state
        if not self.gate.to(state, time.monotonic()):
            return
        log.info("%s: barrier gate %s -> %s", self.target, old.value, state.value)
        self._changed.set()
        self._changed = trio.Event()

    async def enter(self, *, flush: bool = False) -> None:
        """Wait until an update may go; pair with leave()."""
        while not admits(self.state, flush=flush):
            self.stats["waiters"] += 1
            try:
                await self._changed.wait()
            finally:
                self.stats["waiters"] -= 1
            if self.imp.state is ImportState.CLOSED:
                raise ImportClosed(self.target)
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self._changed.set()
            self._changed = trio.Event()

    # -- events --
    def connected(self, body: dict[str, Any]) -> None:
        offered = bool(body.get("flags", 0) & C.OBD_CONNECT_UPDATE_LOCK) and self.enabled
        if not offered:
            if self.state is not GateState.OFF:
                log.info("%s: the server does not offer the barrier lock", self.target)
            self.lock = None
            self._set(GateState.OFF)
        elif self.state is GateState.OFF or (
                self.lock is not None and self.lock.state is LockState.CANCELLED):
            self._set(GateState.ENQUEUING)  # (a new instance forgot our CR lock)
        self._wake.set()

    def blocked(self, lock: ClientLock) -> None:
        if lock is self.lock:
            self.stats["callbacks"] += 1
            self._wake.set()

    # -- the task --
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the CR lock while the target offers it; until close()."""
        with trio.CancelScope() as self._scope:
            task_status.started()
            await self._loop()

    def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _loop(self) -> None:
        while True:
            if self.state is GateState.OFF:
                await self._sleep()
                continue
            if self.state is GateState.ENQUEUING or self.lock is None \
                    or self.lock.state is LockState.CANCELLED:
                self._set(GateState.ENQUEUING)
                await self._enqueue()
                continue
            if self.lock.state is LockState.CBPENDING:
                await self._give_back()
                continue
            await self._sleep()

    async def _sleep(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()

    async def _enqueue(self) -> None:
        self.stats["enqueues"] += 1
        try:
            lock = await self.locks.enqueue(self.res, self.type, Mode.CR, self.policy,
                                            no_lru=True)
        except (LockFailed, RpcError) as e:  # evicted meanwhile: ask again
            log.info("%s: barrier lock enqueue failed (%s); again", self.target, e)
            await trio.sleep(0.05)
            return
        if self.state is GateState.OFF:  # the server stopped offering it meanwhile
            self.locks.release(lock)
            return
        self.lock = lock
        self._set(GateState.OPEN)

    async def _give_back(self) -> None:
        """The BAST's work: drain, commit, cancel our locks, give the CR lock back."""
        t0 = time.monotonic()
        self._set(GateState.DRAINING)
        self.stats["drains"] += 1
        flushed = 0
        phases: dict[str, float] = {}
        try:
            for _ in range(DRAIN_PASSES):  # writers dirtying pages meanwhile: bounded
                wrote = await self.drain() if self.drain is not None else 0
                flushed += wrote
                while self.inflight:
                    await self._changed.wait()
                if not wrote or self._lost():
                    break
            phases["flush"] = time.monotonic() - t0
            if self.imp.uncommitted:  # wait for the commit of what we sent
                await self.imp.call(C.MDS_SYNC if self.kind == "mdt" else C.OST_SYNC, {})
            phases["commit"] = time.monotonic() - t0 - sum(phases.values())
        except (RpcError, ImportClosed) as e:
            log.warning("%s: barrier drain: %s", self.target, e)
        self.stats["flushed_bytes"] += flushed
        if self.kind == "mdt":
            # Names and attributes cached under MDT locks: dropping them touches only the
            # kernel's attributes. (Data locks stay: cancelling one invalidates the
            # kernel's pages, which can wait for a page that a writer blocked in this
            # daemon holds. A restarted OST forgets them and the client then drops what
            # they covered; after a thaw they are still valid.)
            await self.locks.cancel_unused(concurrency=CANCEL_CONCURRENCY)
        phases["cancel"] = time.monotonic() - t0 - sum(phases.values())
        lock, self.lock = self.lock, None
        if lock is not None and lock.state is not LockState.CANCELLED:
            await self.locks.give_back(lock)
        self.stats["last_drain_s"] = round(time.monotonic() - t0, 4)
        self.stats["last_drain_phases"] = {k: round(v, 4) for k, v in phases.items()}
        log.info("%s: barrier lock given back after %.3fs (%d flushed; %s)", self.target,
                 time.monotonic() - t0, flushed,
                 ", ".join(f"{k} {v:.3f}s" for k, v in phases.items()))
        self._set(GateState.ENQUEUING)

    def _lost(self) -> bool:
        """Our CR lock is gone already (evicted, or the server restarted)."""
        return self.lock is None or self.lock.state is LockState.CANCELLED

    def params(self) -> list[str]:
        """lctl's view (mdc.*.barrier / osc.*.barrier)."""
        lines = [f"state: {self.state.value}", f"inflight: {self.inflight}"]
        lines += [f"{k}: {v}" for k, v in self.stats.items()]
        return lines
