"""target_process.py - a target as a process: run it until SIGTERM/SIGINT with one
READY line once it listens and one clear line for a startup failure, its metrics
endpoint (--metrics) beside it, and the fail_loc crash points' way of dying (as kill -9
would).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Protocol

import trio

from .. import metrics_server
from ..params import ParamTree
from ..procs import detach_stdout_to_stderr
from ..protocol.errors import AuthError
from .barrier import BarrierState
from .storage import StorageBusy

log = logging.getLogger(__name__)


class Runnable(Protocol):
    """What serve_forever needs of a target (TargetServer)."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def standby(self) -> bool: ...

    def open_storage(self) -> None: ...

    async def stand_by(self) -> None: ...

    async def run(self, *, task_status: trio.TaskStatus[str] = ...) -> None: ...

    def stop(self) -> None: ...

    def params(self) -> ParamTree: ...


# The states a target's barrier may be in (metrics list them all).
METRIC_STATES = {"barrier": [s.value for s in BarrierState]}


def crash(why: str) -> None:
    """Die at once, as kill -9 would (fail_loc crash points): no commit, no cleanup."""
    log.critical("%s", why)
    for h in logging.getLogger().handlers:
        h.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def serve_forever(server: Runnable, metrics: tuple[str, int] | None = None, *,
                  standby_nid: str = "") -> int:
    """Run a server in this process until SIGTERM/SIGINT; print READY once listening
    (a standby: `READY standby NAME nid=NID pid=N` once it watches, and the usual line
    in its log once it took over and serves).

    metrics: (host, port) to serve its metrics on (port 0: any free port); the READY
    line then says where (`metrics=HOST:PORT`). Its listeners are opened first, so that
    an address in use fails the start before the target registers anywhere."""

    async def stand_by(signals: AsyncIterator[int]) -> bool:
        """Wait for the takeover; False if a signal came first."""
        print(f"READY standby {server.name} nid={standby_nid} pid={os.getpid()}", flush=True)
        detach_stdout_to_stderr()
        took_over = False
        async with trio.open_nursery() as waiting:
            async def on_signal() -> None:
                async for _ in signals:
                    log.info("%s: stopping on signal (standing by)", server.name)
                    waiting.cancel_scope.cancel()

            async def take_over() -> None:
                nonlocal took_over
                await server.stand_by()
                took_over = True
                waiting.cancel_scope.cancel()

            waiting.start_soon(on_signal)
            waiting.start_soon(take_over)
        return took_over

    async def main() -> None:
        listeners = (await metrics_server.open_listeners(*metrics)
                     if metrics is not None else None)
        async with trio.open_nursery() as outer:  # the metrics, until the target has stopped
            async with trio.open_nursery() as nursery:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    if server.standby and not await stand_by(signals):
                        outer.cancel_scope.cancel()
                        return
                    nid = await nursery.start(server.run)
                    ready = f"READY {server.kind} {server.name} nid={nid} pid={os.getpid()}"
                    if listeners is not None:
                        outer.start_soon(metrics_server.serve, listeners, lambda: (
                            metrics_server.render_params(server.params(), METRIC_STATES)))
                        ready += f" metrics={metrics_server.address_of(listeners)}"
                    print(ready, flush=True)
                    detach_stdout_to_stderr()
                    async for _ in signals:
                        log.info("%s: stopping on signal", server.name)
                        server.stop()
                        break
            outer.cancel_scope.cancel()

    try:
        if not server.standby:
            server.open_storage()
        trio.run(main)
    except (StorageBusy, OSError, AuthError) as e:  # startup failures print one clear line
        print(f"error: {server.name}: {e}", file=sys.stderr, flush=True)
        return 1
    except BaseExceptionGroup as eg:
        match, _ = eg.split((OSError, AuthError))  # e.g. the port is in use, however deeply nested
        if match is None:
            raise
        leaf: BaseException = match
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        print(f"error: {server.name}: {leaf}", file=sys.stderr, flush=True)
        return 1
    return 0
