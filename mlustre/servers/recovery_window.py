"""recovery_window.py - the trio driver of a target's recovery (MDT, OST): the
recovery window after a restart, the known clients, replay ordering, the lock replay
phase and the ping evictor.

The decisions are in recovery.Recovery (sans-IO); which path a request takes through
recovery is decided by request_gate.RequestGate (its `Route`). This component keeps
the known clients in the storage (recovery.json), holds requests while a restarted
instance waits for its former clients, lets update replays through in transno order
and lock replays in their phase, and evicts the clients that did not come back in the
window. A target is given one by its constructor and reaches it through plain calls;
the component reaches the target only through `interfaces.RecoveryHost`.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..params import ParamError, ParamTree
from ..protocol import constants as C
from ..protocol.message import Message
from .errors import ServiceError
from .export import Export, Handler, Stats
from .interfaces import RecoveryHost
from .recovery import Recovery
from .request_gate import Route
from .storage import TargetStorage

log = logging.getLogger(__name__)

# A client that pings (every 5 s when idle) and has not been heard from for this long,
# or whose connection broke and did not come back, is evicted (Lustre's ping evictor).
PING_EVICT_TIMEOUT = 60.0

ReplayRunner = Callable[[Handler, Export, Message], Awaitable[Any]]


async def run_handler(handler: Handler, export: Export, req: Message) -> Any:
    """How a replayed update runs unless the target says otherwise: as the first time."""
    return await handler(export, req)


class RecoveryWindow:
    """Call load_known() when the storage is open and start() once serving."""

    def __init__(self, host: RecoveryHost, storage: TargetStorage, stats: Stats, *,
                 window: float, run_replay: ReplayRunner = run_handler) -> None:
        self.host = host
        self.storage = storage
        self.stats = stats
        self.window = window
        # Runs a replayed update (the MDT reuses the first time's identities).
        self.run_replay = run_replay
        self._known: set[str] = set()  # clients connected now (kept as recovery.json)
        self.core: Recovery | None = None
        self._recovered = trio.Event()
        self._recovery_changed = trio.Event()
        self._known_changed = trio.Event()
        self.ping_evict_timeout = PING_EVICT_TIMEOUT
        self._lost: dict[str, float] = {}  # known client -> when its connection broke

    @property
    def name(self) -> str:
        return self.host.name

    def load_known(self) -> None:
        known = self.storage.read_json("recovery.json", []) or []
        self._known = {u for u in known if isinstance(u, str)}
        if self._known:  # clients of the last instance: wait for their replays
            self.core = Recovery(set(self._known), deadline=float("inf"))

    def start(self, nursery: trio.Nursery, deadline: float) -> None:
        if self.core is not None:
            self.core.deadline = deadline
            log.info("%s: recovery: waiting up to %gs for %d clients", self.name,
                     self.window, len(self.core.known))
            nursery.start_soon(self._recovery_timer)
        else:
            self._recovered.set()
        nursery.start_soon(self._known_saver)
        nursery.start_soon(self._ping_evictor)

    def add_params(self, tree: ParamTree, base: str) -> None:
        tree.add(base + "recovery_status", self.recovery_lines)
        tree.add(base + "ping_evict_timeout", lambda: self.ping_evict_timeout,
                 self._set_ping_evict_timeout)

    def _set_ping_evict_timeout(self, text: str) -> None:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0.1 <= value <= 86400:
            raise ParamError(errno.EINVAL, "ping_evict_timeout is 0.1 to 86400 seconds")
        self.ping_evict_timeout = value

    async def _ping_evictor(self) -> None:
        """Evict the clients that keep transnos (they ping when idle) and were not heard
        from for ping_evict_timeout: connected but silent (a hung client), or whose
        connection broke and who did not come back (a dead one). Their locks go, and a
        later restart does not wait for them."""
        while True:
            await trio.sleep(min(max(self.ping_evict_timeout / 4, 0.05), 5.0))
            if not self._recovered.is_set():
                continue  # (the recovery window decides then)
            now = trio.current_time()
            limit = self.ping_evict_timeout
            exports = self.host.exports
            silent = [e.uuid for e in list(exports.values())
                      if e.flags & C.OBD_CONNECT_TRANSNO and now - e.last_seen > limit]
            lost = [u for u, t in list(self._lost.items())
                    if now - t > limit and u not in exports]
            for uuid in silent + lost:
                self.stats.count("ping_evictions")
                await self.host.evict(uuid, f"not heard from for {limit:g}s")
                self.host.client_left(uuid)

    def export_disconnected(self, export: Export) -> None:
        if export.uuid in self._known:
            self._lost[export.uuid] = trio.current_time()

    def _changed(self) -> None:
        """Wake every task waiting for its turn in recovery (each checks again)."""
        self._recovery_changed.set()
        self._recovery_changed = trio.Event()

    @property
    def recovering(self) -> bool:
        return not self._recovered.is_set()

    async def wait_recovered(self) -> None:
        await self._recovered.wait()

    async def _wait_lock_phase(self) -> Recovery | None:
        """Wait until no update replay can come any more; the recovery, if running."""
        rec = self.core
        if rec is None or self._recovered.is_set():
            return None
        while not self._recovered.is_set() and not rec.locks_may_replay(trio.current_time()):
            with trio.move_on_at(rec.deadline):
                await self._recovery_changed.wait()
        return rec

    async def dispatch(self, route: Route, handler: Handler, export: Export,
                       req: Message) -> Any:
        """Run a request's handler on the path the request gate chose through recovery."""
        if route is Route.LOCK_REPLAY:
            return await self._lock_replay(handler, export, req)
        if route is Route.AFTER_UPDATE_REPLAYS:
            await self._wait_lock_phase()
            return await handler(export, req)
        if route is Route.HOLD:
            self.stats.count("recovery_waits")
            await self._recovered.wait()  # (others' replays run first)
            return await handler(export, req)
        if route is Route.REPLAY:
            return await self._replay(handler, export, req)
        return await handler(export, req)

    async def _replay(self, handler: Handler, export: Export, req: Message) -> Any:
        """A replayed update: in global transno order while recovering."""
        rec = self.core if not self._recovered.is_set() else None
        if rec is not None:
            rec.known.add(export.uuid)
            rec.queued[export.uuid] = req.transno
            self._changed()
            while not rec.may_run(export.uuid, req.transno, self.host.last_transno + 1,
                                  trio.current_time()):
                with trio.move_on_at(rec.deadline):
                    await self._recovery_changed.wait()
        self.stats.count("replayed_updates")
        try:
            return await self.run_replay(handler, export, req)
        finally:
            if rec is not None:
                rec.queued.pop(export.uuid, None)
                rec.replayed += 1
                self._changed()

    async def _lock_replay(self, handler: Handler, export: Export, req: Message) -> Any:
        """A lock of the last instance: taken again in the lock phase of recovery only
        (after it, locks granted since could conflict: refused, the client drops it)."""
        rec = await self._wait_lock_phase()
        if self._recovered.is_set():
            self.stats.count("lock_replays_refused")
            raise ServiceError(errno.ESTALE, "lock replay outside recovery")
        result = await handler(export, req)
        if rec is not None:
            rec.replayed_locks += 1
        return result

    # -- the known clients --
    def client_joined(self, export: Export) -> None:
        # Only clients that keep their updates for replay (OBD_CONNECT_TRANSNO, as a
        # mount's imports do) are waited for; tools' sessions are not.
        self._lost.pop(export.uuid, None)
        if export.flags & C.OBD_CONNECT_TRANSNO and export.uuid not in self._known:
            self._known.add(export.uuid)
            self._known_changed.set()

    def client_left(self, uuid: str) -> None:
        self._lost.pop(uuid, None)
        if uuid in self._known:
            self._known.discard(uuid)
            self._known_changed.set()
        rec = self.core
        if rec is not None and not self._recovered.is_set():
            rec.leave(uuid)
            self._changed()
            if not rec.active:
                self._end_recovery("every client has replayed")

    async def _known_saver(self) -> None:
        """Keep recovery.json current, at most a few times a second (a thousand clients
        connecting must not mean a thousand rewrites)."""
        while True:
            await self._known_changed.wait()
            self._known_changed = trio.Event()
            self.storage.write_atomic("recovery.json",
                                      json.dumps(sorted(self._known)).encode())
            await trio.sleep(0.2)

    def replay_finished(self, export: Export) -> None:
        """The client says it has replayed every update (MSG_REQ_REPLAY_DONE)."""
        self._finish(export.uuid, locks=False)

    def lock_replay_finished(self, export: Export) -> None:
        """The client says it has replayed its locks too (MSG_LOCK_REPLAY_DONE)."""
        self._finish(export.uuid, locks=True)

    def _finish(self, uuid: str, *, locks: bool) -> None:
        rec = self.core
        if rec is None or self._recovered.is_set():
            return
        if locks:
            rec.finish(uuid)
        else:
            rec.finish_requests(uuid)
        self._changed()
        if not rec.active:
            self._end_recovery("every client has replayed")

    def _end_recovery(self, why: str) -> None:
        rec = self.core
        if rec is None or self._recovered.is_set():
            return
        log.info("%s: recovery over (%s): %d replays, %d locks, %d of %d clients", self.name,
                 why, rec.replayed, rec.replayed_locks, rec.completed, len(rec.known))
        self._recovered.set()
        self._changed()

    def recovery_lines(self) -> list[str]:
        """lctl get_param {mdt,obdfilter}.*.recovery_status, shaped like Lustre's."""
        rec = self.core
        if rec is None:
            return ["status: INACTIVE", f"known_clients: {len(self._known)}"]
        active = not self._recovered.is_set()
        lines = [f"status: {'RECOVERING' if active else 'COMPLETE'}"]
        if active:
            left = max(0.0, rec.deadline - trio.current_time())
            lines.append(f"time_remaining: {left:.1f}")
        lines += [f"completed_clients: {rec.completed}/{len(rec.known)}",
                  f"replayed_requests: {rec.replayed}",
                  f"replayed_locks: {rec.replayed_locks}",
                  f"evicted_clients: {self.stats.get('recovery_evictions', 0)}",
                  f"known_clients: {len(self._known)}"]
        return lines

    async def _recovery_timer(self) -> None:
        """At the window's end the known clients that did not come back are evicted;
        the ones that did and are still replaying go on (past the window their replays
        no longer wait for gaps), up to twice the window more, then they are evicted
        too."""
        rec = self.core
        assert rec is not None
        await trio.sleep_until(rec.deadline)
        if self._recovered.is_set():
            return
        stale = sorted(uuid for uuid in rec.missing() if uuid not in self.host.exports)
        log.info("%s: recovery window over; evicting %d clients that did not come back",
                 self.name, len(stale))
        self._changed()
        await self._evict_unrecovered(stale, "did not come back in the recovery window")
        await trio.sleep_until(rec.deadline + 2 * self.window)
        if self._recovered.is_set():
            return
        missing = sorted(rec.missing())
        self._end_recovery(f"the window of {self.window:g}s is long over")
        await self._evict_unrecovered(missing, "did not finish recovery")

    async def _evict_unrecovered(self, uuids: list[str], reason: str) -> None:
        for uuid in uuids:
            self.stats.count("recovery_evictions")
            await self.host.evict_unrecovered(uuid, reason)
            self.host.client_left(uuid)
