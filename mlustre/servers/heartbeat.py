"""heartbeat.py - the driver of mmp.py: the heartbeat record's I/O, the flock, the MGS
pings (the quorum) and the timers of one server of a failover pair.

Times are `time.monotonic()` (CLOCK_MONOTONIC, which keeps counting while the process
is stopped), not trio's clock, so that the synchronous claim at startup and the trio
tasks afterwards measure the same lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..protocol import constants as C
from ..protocol.nid import Nid
from ..protocol.session import Session
from .mmp import Decision, Mmp, MmpError, Record, State, Verdict
from .storage import StorageBusy, TargetStorage

log = logging.getLogger(__name__)

FENCED_EXIT = 3  # the exit status of a server that fenced itself
DEFAULT_QUORUM_TIMEOUT = 10.0


@dataclass(slots=True)
class MmpConfig:
    """How a server of a failover pair guards its storage (the CLI's --standby,
    --mmp-interval, --mmp-quorum). exit_on_fence: a server process exits at once when it
    fences (no thread of it writes anything more); in-process servers (tests) stop."""

    interval: float = 1.0
    standby: bool = False
    quorum_timeout: float | None = DEFAULT_QUORUM_TIMEOUT
    exit_on_fence: bool = False
    mgs: list[Nid] = field(default_factory=list)


class Heartbeat:
    """Keeps one server's claim on its storage through the heartbeat record."""

    def __init__(self, name: str, fsname: str, storage: TargetStorage, config: MmpConfig, *,
                 holder: str, key: bytes | None, on_fence: Callable[[str], None]) -> None:
        """on_fence: what the server does when it must stop serving (called once)."""
        self.name = name
        self.fsname = fsname
        self.storage = storage
        self.config = config
        self.key = key
        # Without an MGS there is no quorum to ask (the MGS itself, tests).
        quorum = config.quorum_timeout if config.mgs else None
        self.core = Mmp(holder, config.interval, standby=config.standby, quorum_timeout=quorum)
        self._on_fence = on_fence
        self.mgs_reached_at: float | None = None
        self._quorum_warned = False
        # Taken over from a holder that did not exit (the heartbeat), or that had gone
        # silent before it exited (it fenced): its clients may come back late.
        self.took_over_live = False

    @property
    def holder(self) -> str:
        return self.core.me

    # -- the request path --
    def may_serve(self) -> bool:
        """False once the lease ran out (e.g. this process was frozen): fence at once."""
        if self.core.may_serve(time.monotonic()):
            return True
        if self.core.state is State.RELEASED:  # stopped gracefully: nothing to fence
            return False
        self.fence(self.core.expired(time.monotonic()) if self.core.state is State.ACTIVE
                   else f"not active ({self.core.state.value})")
        return False

    def fence(self, reason: str | None) -> None:
        if self.core.state is State.FENCED:
            return
        why = reason or "lost the storage"
        self.core.fence(why)
        self._on_fence(why)

    # -- claiming --
    def _look(self) -> Decision:
        got = self.storage.try_flock()
        record, unreadable = self.storage.read_mmp()
        d = self.core.watch(time.monotonic(), record, got_flock=got, unreadable=unreadable,
                            mgs_reached_at=self.mgs_reached_at)
        if d.verdict in (Verdict.WAIT, Verdict.REFUSE) and got:
            self.storage.drop_flock()  # an active holder without it may take it
        return d

    def _write_claim(self, record: Record) -> float:
        started = time.monotonic()
        self.storage.write_mmp(record)
        return started

    def claim(self) -> None:
        """A server that is not a standby: claim now, wait a few intervals for a holder
        of unclear liveness, or raise StorageBusy (one clear line)."""
        while True:
            d = self._look()
            if d.verdict is Verdict.CLAIM:
                assert d.record is not None
                self.core.claimed(time.monotonic(), d.record,
                                  started_at=self._write_claim(d.record))
                self.storage.claimed_by(self.holder)
                # The quorum counts from the claim: the MGS is pinged once serving (a
                # server that never reaches it stops renewing after quorum_timeout).
                self.mgs_reached_at = time.monotonic()
                return
            if d.verdict is Verdict.REFUSE:
                raise StorageBusy(f"{self.storage.path} is served by another server "
                                  f"({d.reason}); start this one with --standby to take "
                                  f"over when that one stops")
            if d.verdict is Verdict.TAKE_OVER:
                assert d.record is not None
                self.core.taking_over(d.record, started_at=self._write_claim(d.record))
                time.sleep(self.core.recheck_delay)
                self.mgs_reached_at = time.monotonic()  # (as for a claim)
                if self._recheck():
                    return
                raise StorageBusy(f"{self.storage.path}: another server claimed it at the "
                                  f"same time")
            time.sleep(self.core.interval)

    def _recheck(self) -> bool:
        record, _ = self.storage.read_mmp()
        if not self.core.recheck(time.monotonic(), record):
            return False
        reason = self.renew()  # the recheck's wait took 2 intervals of the first lease
        if reason is not None:  # (not fenced here: this may run in a worker thread)
            raise StorageBusy(f"{self.storage.path}: lost while taking over: {reason}")
        self.storage.claimed_by(self.holder)
        return True

    async def stand_by(self) -> None:
        """A standby: watch until the heartbeat stops (and the MGS is reachable), then
        take the storage over. Returns once it is ours."""
        log.info("%s: standing by (heartbeat interval %gs, takeover after %gs without "
                 "a change)", self.name, self.core.interval, self.core.takeover_wait)
        async with trio.open_nursery() as nursery:
            if self.config.mgs:
                nursery.start_soon(self.ping_mgs)
            last_reason = ""
            while True:
                d = await trio.to_thread.run_sync(self._look)
                if d.verdict is Verdict.CLAIM:
                    assert d.record is not None
                    started = await trio.to_thread.run_sync(self._write_claim, d.record)
                    self.core.claimed(time.monotonic(), d.record, started_at=started)
                    self.storage.claimed_by(self.holder)
                    self.mgs_reached_at = time.monotonic()  # (as in claim)
                    # A holder that went silent before it died (it fenced: cut off or
                    # hung) left clients that still wait on it: as a live takeover.
                    self.took_over_live = d.holder_silent
                    log.warning("%s: the storage is free (its holder is gone%s): taking "
                                "over", self.name, ", silent before it went: fenced"
                                if d.holder_silent else "")
                    break
                if d.verdict is Verdict.TAKE_OVER:
                    assert d.record is not None
                    log.warning("%s: heartbeat unchanged for %gs: taking over", self.name,
                                self.core.takeover_wait)
                    started = await trio.to_thread.run_sync(self._write_claim, d.record)
                    self.core.taking_over(d.record, started_at=started)
                    await trio.sleep(self.core.recheck_delay)
                    if await trio.to_thread.run_sync(self._recheck):
                        self.took_over_live = True
                        break
                    log.warning("%s: another server claimed the storage too; watching",
                                self.name)
                elif d.reason and d.reason != last_reason:
                    log.warning("%s: not taking over: %s", self.name, d.reason)
                last_reason = d.reason
                await trio.sleep(self.core.interval)
            nursery.cancel_scope.cancel()
        log.warning("%s: took over the storage (heartbeat seq %d, %s)", self.name,
                    self.core.seq, "with its flock" if self.core.has_flock
                    else "its old holder still holds the flock")

    # -- active --
    def renew(self) -> str | None:
        """One renewal (blocking; also called once right before a server listens, so
        the time it took to load its storage does not eat the first lease). Returns
        why the server must fence, or None."""
        if self.core.state is not State.ACTIVE:
            return None
        reason = self.core.expired(time.monotonic())
        if reason is None:
            record, unreadable = self.storage.read_mmp()
            reason = self.core.check_record(None if unreadable else record)
        if reason is not None:
            return reason
        flock = self.core.has_flock or self.storage.try_flock()
        if flock and not self.core.has_flock:
            log.info("%s: the old holder's flock is free: taken", self.name)
            self.storage.note_holder(self.holder)
        now = time.monotonic()
        new = self.core.renewal(now, mgs_reached_at=self.mgs_reached_at, flock=flock)
        if new is None:
            if not self._quorum_warned:
                log.warning("%s: the MGS has not answered for %gs: not renewing the "
                            "heartbeat (this server fences when its lease runs out)",
                            self.name, self.core.quorum_timeout or 0)
                self._quorum_warned = True
            return None
        if self._quorum_warned:
            log.warning("%s: the MGS answers again: renewing the heartbeat", self.name)
            self._quorum_warned = False
        self.storage.write_mmp(new)
        self.core.renewed(new, started_at=now)
        return None

    async def keep(self) -> None:
        """Renew the record every interval while serving; fence when it cannot.

        The renewals run in a thread of their own, as Lustre's kmmpd is a thread of its
        own: a server whose event loop is busy for a few seconds (a long SQLite step, a
        loaded host) still renews, while a frozen process (every thread stopped) or a
        cut-off one (no MGS answers, counted by `ping_mgs` on the event loop) does not.
        """
        token = trio.lowlevel.current_trio_token()
        done = threading.Event()

        def loop() -> None:
            while not done.is_set() and self.core.state is State.ACTIVE:
                try:
                    reason = self.renew()
                except (OSError, MmpError) as e:  # (fenced meanwhile; storage gone)
                    reason = f"cannot renew the heartbeat: {e}"
                if reason is not None:
                    if self.config.exit_on_fence:
                        self.fence(reason)  # logs and exits the process, from any thread
                    else:
                        try:
                            trio.from_thread.run_sync(self.fence, reason, trio_token=token)
                        except trio.RunFinishedError:
                            pass
                    return
                done.wait(self.core.interval)

        thread = threading.Thread(target=loop, name=f"{self.name}-mmp", daemon=True)
        thread.start()
        try:
            await trio.sleep_forever()
        finally:
            done.set()

    async def ping_mgs(self) -> None:
        """Reach the MGS every interval (the quorum: a cut-off host stops renewing)."""
        session: Session | None = None
        timeout = max(self.core.interval, 0.5)
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    try:
                        if session is None:
                            session = await Session.open(
                                nursery, self.config.mgs, target=f"{self.fsname}-MGS",
                                connect_opc=C.MGS_CONNECT, client_uuid=f"{self.name}-mmp-"
                                f"{os.getpid()}", key=self.key, timeout=timeout)
                        await session.call(C.OBD_PING, timeout=timeout)
                        self.mgs_reached_at = time.monotonic()
                    except Exception as e:  # unreachable, timed out, closed: try again
                        log.debug("%s: MGS ping failed: %s", self.name, e)
                        if session is not None:
                            with trio.move_on_after(1):
                                await session.close()
                            session = None
                    await trio.sleep(self.core.interval)
            finally:
                if session is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await session.close()

    def release(self) -> None:
        """A graceful stop: leave a clean record (not after a fence)."""
        record = self.core.release()
        if record is not None:
            self.storage.write_mmp(record)
