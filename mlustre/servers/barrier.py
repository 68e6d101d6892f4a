"""barrier.py - the SIR write barrier of one target (MDT or OST).

Every client that negotiated OBD_CONNECT_UPDATE_LOCK holds a CR lock on the
target's barrier resource before it sends an update. A freeze enqueues the EX
lock there: each holder gets a BAST, flushes its dirty data, waits for the commit,
cancels its locks and gives the CR lock back; once every holder has (or was evicted
after the callback timeout, which the holder's flushing I/O prolongs), EX is granted
and the target is frozen: no update arrives any more, and everything received is
committed. A thaw releases EX and the clients' queued CR enqueues are granted; a
frozen target that is stopped is replaced by its successor, which grants them.

A frozen barrier expires (thaws by itself) after its timeout, so a forgotten freeze
cannot hold the filesystem forever, as Lustre's write barrier does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import trio

from ..protocol.ldlm import Mode, barrier_lock
from .export import Export, Stats
from .interfaces import TaskHost
from .ldlm_namespace import ServerLock
from .ldlm_service import LdlmService

log = logging.getLogger(__name__)

DEFAULT_FREEZE_TIMEOUT = 30.0  # seconds a freeze lasts unless thawed or renewed


def describe_freeze(f: dict[str, Any]) -> str:
    """One line for a freeze's report (FreezeReport as a dict: the wire's form), as the
    server logs it and lctl and `mlustre failover` print it."""
    return (f"frozen in {f['freeze_s']:.3f}s ({f['clients']} clients flushed "
            f"{f['flushed_bytes']} bytes in {f['flushed_updates']} updates, "
            f"{f['evicted']} evicted)")


class BarrierState(Enum):
    THAWED = "thawed"
    FREEZING = "freezing"
    FROZEN = "frozen"
    EXPIRED = "expired"  # was frozen, thawed by its timeout


@dataclass
class FreezeReport:
    """What one freeze cost: how long it took, how many clients held the CR lock,
    what they flushed meanwhile, how many had to be evicted."""

    freeze_s: float = 0.0
    clients: int = 0
    flushed_bytes: int = 0
    flushed_updates: int = 0
    evicted: int = 0
    started_at: float = field(default_factory=time.time)


class ServerBarrier:
    """The barrier of one target: its lock service takes and releases the EX lock,
    its target (`TaskHost`) commits and runs the expiry timer; the evictions a freeze
    caused are read from the target's counters."""

    def __init__(self, name: str, kind: str, locks: LdlmService, tasks: TaskHost,
                 stats: Stats) -> None:
        self.name = name
        self.locks = locks
        self.tasks = tasks
        self.stats = stats
        self.res, self.type, self.policy = barrier_lock(kind)
        self.state = BarrierState.THAWED
        self.since = time.time()
        self.expires_at: float | None = None  # trio time at which a freeze thaws itself
        self.report: FreezeReport | None = None  # the last (or current) freeze
        self.freezes = 0
        self.thaws = 0
        self._lock: ServerLock | None = None
        self._frozen = trio.Event()
        self._expiry: trio.CancelScope | None = None

    def _set(self, state: BarrierState) -> None:
        if state is not self.state:
            log.info("%s: barrier %s -> %s", self.name, self.state.value, state.value)
        self.state = state
        self.since = time.time()

    def holders(self) -> int:
        """Clients holding a CR lock on the barrier resource."""
        ns = self.locks.namespace
        return len({lk.owner for lk in ns.granted_locks(self.res) if lk.mode == Mode.CR})

    async def freeze(self, timeout: float = DEFAULT_FREEZE_TIMEOUT) -> FreezeReport:
        """Freeze (or renew a freeze) and return its report once frozen."""
        if self.state is BarrierState.FREEZING:
            await self._frozen.wait()
        if self.state is BarrierState.FROZEN:
            self._arm_expiry(timeout)
            assert self.report is not None
            return self.report
        self._set(BarrierState.FREEZING)
        self._frozen = trio.Event()
        self.freezes += 1
        report = self.report = FreezeReport(clients=self.holders())
        evictions = self.stats.get("evictions", 0)
        t0 = trio.current_time()
        try:
            self._lock = await self.locks.lock_local_one(
                self.res, self.type, Mode.EX, self.policy)
        except BaseException:
            self._set(BarrierState.THAWED)
            self._frozen.set()
            raise
        await self.tasks.commit()  # everything the clients flushed is durable
        report.freeze_s = trio.current_time() - t0
        report.evicted = self.stats.get("evictions", 0) - evictions
        self._set(BarrierState.FROZEN)
        self._frozen.set()
        self._arm_expiry(timeout)
        log.info("%s: barrier %s", self.name, describe_freeze(asdict(report)))
        return report

    def thaw(self, *, expired: bool = False) -> bool:
        """Release the barrier; False if it was not frozen (nothing to do)."""
        if self.state is not BarrierState.FROZEN:
            return False
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        lock, self._lock = self._lock, None
        if lock is not None:
            self.locks.unlock_local([lock])
        self.expires_at = None
        self.thaws += 1
        self._set(BarrierState.EXPIRED if expired else BarrierState.THAWED)
        return True

    def _arm_expiry(self, timeout: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self.expires_at = trio.current_time() + timeout
        scope = trio.CancelScope()

        async def expire() -> None:
            with scope:
                await trio.sleep(timeout)
                log.warning("%s: barrier expired after %gs; thawing", self.name, timeout)
                self._expiry = None
                self.thaw(expired=True)

        if self.tasks.spawn(expire):
            self._expiry = scope

    def note_update(self, export: Export, nbytes: int) -> None:
        """An update from a client while the freeze waits for it: counted as flushed,
        and it keeps that client's barrier lock from timing out (it is busy flushing)."""
        if self.state is not BarrierState.FREEZING or self.report is None:
            return
        self.report.flushed_bytes += nbytes
        self.report.flushed_updates += 1
        self.locks.prolong(export, self.res)

    def stat(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state.value, "since": round(self.since, 3),
                               "freezes": self.freezes, "thaws": self.thaws,
                               "holders": self.holders()}
        if self.expires_at is not None:
            out["time_to_expire"] = round(max(0.0, self.expires_at - trio.current_time()), 1)
        if self.report is not None:
            out["last_freeze"] = {k: (round(v, 4) if isinstance(v, float) else v)
                                  for k, v in asdict(self.report).items()}
        return out

    def stat_lines(self) -> list[str]:
        """lctl barrier_stat's text (as Lustre: state, then time to expire)."""
        st = self.stat()
        lines = [f"state: {st['state']}"]
        if "time_to_expire" in st:
            lines.append(f"time_to_expire: {st['time_to_expire']}")
        lines.append(f"holders: {st['holders']}")
        if "last_freeze" in st:
            lines.append(f"last_freeze: {describe_freeze(st['last_freeze'])}")
        return lines
