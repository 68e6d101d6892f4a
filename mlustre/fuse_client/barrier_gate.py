"""barrier_gate.py - the SIR barrier's writer gate of one target, without I/O.

    OFF -> ENQUEUING          the target offers the barrier lock (or a new instance
                              forgot our CR lock)
    ENQUEUING -> OPEN         the CR lock is granted: updates flow
    OPEN -> DRAINING          the CR lock is called back: application updates wait,
                              write-back (flush) still goes
    OPEN -> ENQUEUING         the CR lock was lost (eviction, server restart)
    DRAINING -> ENQUEUING     drained and given back: ask for it again
    any -> OFF                the target stopped offering it: nothing is gated

Staying in a state is no transition. Other moves raise IllegalGateTransition. The
gate also keeps how long updates were stalled (closed to application updates); the
caller passes the time. The trio driver is barrier.Barrier.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class GateState(Enum):
    OFF = "off"              # the target does not offer the barrier: nothing is gated
    ENQUEUING = "enqueuing"  # asking for the CR lock: every update waits
    OPEN = "open"            # CR held: updates flow
    DRAINING = "draining"    # called back: application updates wait, write-back flows


G = GateState

TRANSITIONS: dict[GateState, frozenset[GateState]] = {
    G.OFF: frozenset({G.ENQUEUING}),
    G.ENQUEUING: frozenset({G.OPEN, G.OFF}),
    G.OPEN: frozenset({G.DRAINING, G.ENQUEUING, G.OFF}),
    G.DRAINING: frozenset({G.ENQUEUING, G.OFF}),
}


class IllegalGateTransition(RuntimeError):
    """A code path tried to move the gate where the table does not allow."""


def admits(state: GateState, *, flush: bool) -> bool:
    """May an update go now? Write-back (flush) also goes while draining: it is what
    the drain waits for."""
    if state in (GateState.OFF, GateState.OPEN):
        return True
    return flush and state is GateState.DRAINING


class Gate:
    """The gate's state and stall statistics (last_stall_s, longest_stall_s in `stats`)."""

    def __init__(self, target: str, stats: dict[str, Any]) -> None:
        self.target = target
        self.state = GateState.OFF
        self.stats = stats
        self._closed_at: float | None = None

    def to(self, state: GateState, now: float) -> bool:
        """Move to `state` at monotonic time `now`; True if it changed."""
        if state is self.state:
            return False
        if state not in TRANSITIONS[self.state] and state is not GateState.OFF:
            raise IllegalGateTransition(
                f"{self.target}: barrier gate {self.state.value} -> {state.value}")
        if not admits(state, flush=False) and self._closed_at is None:
            self._closed_at = now
        elif admits(state, flush=False) and self._closed_at is not None:
            stall = now - self._closed_at
            self.stats["last_stall_s"] = round(stall, 4)
            self.stats["longest_stall_s"] = max(self.stats["longest_stall_s"], round(stall, 4))
            self._closed_at = None
        self.state = state
        return True
