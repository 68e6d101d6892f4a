"""recovering.py - the recovery window of a target that clients replay to (MDT, OST).

The decisions are in recovery.Recovery; this mixin keeps the known clients in the
storage (recovery.json), holds requests while a restarted instance waits for its
former clients, lets update replays through in transno order and lock replays in
their phase, and evicts the clients that did not come back in the window.
"""

from __future__ import annotations

import errno
import json
import logging
from typing import TYPE_CHECKING, Any

import trio

from ..params import ParamError, ParamTree
from ..protocol import constants as C
from ..protocol.ldlm import FL_REPLAY
from ..protocol.message import Message
from .errors import ServiceError
from .recovery import Recovery

if TYPE_CHECKING:
    from .target import Export, TargetServer

    _Base = TargetServer
else:
    _Base = object

log = logging.getLogger(__name__)

# A client that pings (every 5 s when idle) and has not been heard from for this long,
# or whose connection broke and did not come back, is evicted (Lustre's ping evictor).
PING_EVICT_TIMEOUT = 60.0


def is_lock_replay(req: Message) -> bool:
    if req.opc != C.LDLM_ENQUEUE or not isinstance(req.body, dict):
        return False
    flags = req.body.get("flags", 0)
    return type(flags) is int and flags >= 0 and bool(flags & FL_REPLAY)


class RecoveringTarget(_Base):
    """Mixed into a TargetServer subclass before it; call load_known() when the storage
    is open and start_recovery() once serving."""

    recovery_window: float

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._known: set[str] = set()  # clients connected now (kept as recovery.json)
        self.recovery: Recovery | None = None
        self._recovered = trio.Event()
        self._recovery_changed = trio.Event()
        self._known_changed = trio.Event()
        self.ping_evict_timeout = PING_EVICT_TIMEOUT
        self._lost: dict[str, float] = {}  # known client -> when its connection broke

    def load_known(self) -> None:
        known = self.storage.read_json("recovery.json", []) or []
        self._known = {u for u in known if isinstance(u, str)}
        if self._known:  # clients of the last instance: wait for their replays
            self.recovery = Recovery(set(self._known), deadline=float("inf"))

    def start_recovery(self, nursery: trio.Nursery, deadline: float) -> None:
        if self.recovery is not None:
            self.recovery.deadline = deadline
            log.info("%s: recovery: waiting up to %gs for %d clients", self.name,
                     self.recovery_window, len(self.recovery.known))
            nursery.start_soon(self._recovery_timer)
        else:
            self._recovered.set()
        nursery.start_soon(self._known_saver)
        nursery.start_soon(self._ping_evictor)

    def add_recovery_params(self, tree: ParamTree, base: str) -> None:
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
            silent = [e.uuid for e in list(self.exports.values())
                      if e.flags & C.OBD_CONNECT_TRANSNO and now - e.last_seen > limit]
            lost = [u for u, t in list(self._lost.items())
                    if now - t > limit and u not in self.exports]
            for uuid in silent + lost:
                self.count("ping_evictions")
                await self.ldlm.evict(uuid, f"not heard from for {limit:g}s")
                self.client_left(uuid)

    async def export_disconnected(self, export: Export) -> None:
        await super().export_disconnected(export)
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

    def recovery_exempt(self, req: Message) -> bool:
        """What goes on during recovery besides replays: lctl and lock cancels."""
        return req.opc in (C.OBD_ADMIN, C.LDLM_CANCEL)

    def after_update_replay(self, req: Message) -> bool:
        """Hook: a request that is part of recovery but must not run while updates are
        being replayed in transno order (it takes a transno of its own): the MDT's open
        replays. It waits for the lock phase, then runs."""
        return False

    async def _wait_lock_phase(self) -> Recovery | None:
        """Wait until no update replay can come any more; the recovery, if running."""
        rec = self.recovery
        if rec is None or self._recovered.is_set():
            return None
        while not self._recovered.is_set() and not rec.locks_may_replay(trio.current_time()):
            with trio.move_on_at(rec.deadline):
                await self._recovery_changed.wait()
        return rec

    async def run_replay(self, handler: Any, export: Export, req: Message) -> Any:
        """Run a replayed update (the MDT reuses the first time's identities)."""
        return await handler(export, req)

    async def dispatch(self, handler: Any, export: Export, req: Message) -> Any:
        replaying = bool(req.flags & C.MSG_REPLAY and req.transno)
        if is_lock_replay(req):
            return await self._lock_replay(handler, export, req)
        if self.after_update_replay(req):
            await self._wait_lock_phase()
            return await handler(export, req)
        if not self._recovered.is_set() and not replaying and not self.recovery_exempt(req):
            self.count("recovery_waits")
            await self._recovered.wait()  # (others' replays run first)
        if not replaying:
            return await handler(export, req)
        rec = self.recovery if not self._recovered.is_set() else None
        if rec is not None:
            rec.known.add(export.uuid)
            rec.queued[export.uuid] = req.transno
            self._changed()
            while not rec.may_run(export.uuid, req.transno, self.last_transno + 1,
                                  trio.current_time()):
                with trio.move_on_at(rec.deadline):
                    await self._recovery_changed.wait()
        self.count("replayed_updates")
        try:
            return await self.run_replay(handler, export, req)
        finally:
            if rec is not None:
                rec.queued.pop(export.uuid, None)
                rec.replayed += 1
                self._changed()

    async def _lock_replay(self, handler: Any, export: Export, req: Message) -> Any:
        """A lock of the last instance: taken again in the lock phase of recovery only
        (after it, locks granted since could conflict: refused, the client drops it)."""

        rec = await self._wait_lock_phase()
        if self._recovered.is_set():
            self.count("lock_replays_refused")
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
        rec = self.recovery
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
        self._finish(export.uuid, locks=False)

    def lock_replay_finished(self, export: Export) -> None:
        self._finish(export.uuid, locks=True)

    def _finish(self, uuid: str, *, locks: bool) -> None:
        rec = self.recovery
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
        rec = self.recovery
        if rec is None or self._recovered.is_set():
            return
        log.info("%s: recovery over (%s): %d replays, %d locks, %d of %d clients", self.name,
                 why, rec.replayed, rec.replayed_locks, rec.completed, len(rec.known))
        self._recovered.set()
        self._changed()

    def recovery_lines(self) -> list[str]:
        """lctl get_param {mdt,obdfilter}.*.recovery_status, shaped like Lustre's."""
        rec = self.recovery
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
        rec = self.recovery
        assert rec is not None
        await trio.sleep_until(rec.deadline)
        if self._recovered.is_set():
            return
        stale = sorted(uuid for uuid in rec.missing() if uuid not in self.exports)
        log.info("%s: recovery window over; evicting %d clients that did not come back",
                 self.name, len(stale))
        self._changed()
        await self._evict_unrecovered(stale, "did not come back in the recovery window")
        await trio.sleep_until(rec.deadline + 2 * self.recovery_window)
        if self._recovered.is_set():
            return
        missing = sorted(rec.missing())
        self._end_recovery(f"the window of {self.recovery_window:g}s is long over")
        await self._evict_unrecovered(missing, "did not finish recovery")

    async def _evict_unrecovered(self, uuids: list[str], reason: str) -> None:
        for uuid in uuids:
            self.count("recovery_evictions")
            self.ldlm.evicted[uuid] = None  # told so when it connects again
            await self.evict_export(uuid, reason)
            self.client_left(uuid)
