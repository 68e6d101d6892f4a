"""import_state.py - the states of an import (Lustre's import state machine), without I/O.

The trio driver (imports.Import) asks this table before it changes state, so a path
that would move an import where no code path should take it fails loudly instead of
leaving requests waiting for a state that never comes.

    NEW -> CONNECTING
    CONNECTING -> DISCONN         (no answer, refused, authentication failed)
               -> EVICTED         (the connect reply says "evicted")
               -> REPLAY          (a new instance of the target: recovery)
               -> RECOVER         (requests a dead connection left unanswered)
               -> FULL
    REPLAY -> REPLAY_LOCKS        (the target is done with our replayed updates)
           -> DISCONN             (the connection died during recovery)
    REPLAY_LOCKS -> RECOVER | FULL | DISCONN
    EVICTED -> RECOVER | FULL     (what the target granted is dropped meanwhile)
    RECOVER -> FULL
    FULL -> DISCONN               (connection lost, request or ping timed out)
    DISCONN -> CONNECTING         (the keeper tries every NID again)
    any -> CLOSED                 (unmount)

Staying in a state is no transition (always allowed). CLOSED is final: a connect
attempt that ends after close() changes nothing, so transitions from CLOSED are
ignored (not errors).
"""

from __future__ import annotations

from enum import Enum


class ImportState(Enum):
    NEW = "NEW"
    CONNECTING = "CONNECTING"
    REPLAY = "REPLAY"  # sending the updates a restarted target may have lost
    REPLAY_LOCKS = "REPLAY_LOCKS"  # taking our locks again on the restarted target
    RECOVER = "RECOVER"  # resending the requests the old connection left unanswered
    FULL = "FULL"
    DISCONN = "DISCONN"
    EVICTED = "EVICTED"  # the target evicted us: what it granted is dropped, then FULL
    CLOSED = "CLOSED"


S = ImportState

TRANSITIONS: dict[ImportState, frozenset[ImportState]] = {
    S.NEW: frozenset({S.CONNECTING}),
    S.CONNECTING: frozenset({S.DISCONN, S.EVICTED, S.REPLAY, S.RECOVER, S.FULL}),
    S.REPLAY: frozenset({S.REPLAY_LOCKS, S.DISCONN}),
    S.REPLAY_LOCKS: frozenset({S.RECOVER, S.FULL, S.DISCONN}),
    S.EVICTED: frozenset({S.RECOVER, S.FULL}),
    S.RECOVER: frozenset({S.FULL}),
    S.FULL: frozenset({S.DISCONN}),
    S.DISCONN: frozenset({S.CONNECTING}),
    S.CLOSED: frozenset(),
}

HISTORY_LEN = 16


class IllegalTransition(RuntimeError):
    """A code path tried to move an import where the state table does not allow."""


class ImportStates:
    """The current state of one import and its recent transitions (lctl's import view).

    :history: the last HISTORY_LEN (time, state name) pairs; the caller passes the time.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.state = ImportState.NEW
        self.history: list[tuple[float, str]] = []

    def to(self, state: ImportState, now: float) -> bool:
        """Move to `state` at wall-clock time `now`; True if the state changed. Raises
        IllegalTransition if the table forbids it (any state may go to CLOSED)."""
        if self.state is ImportState.CLOSED or state is self.state:
            return False
        if state is not ImportState.CLOSED and state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.target}: {self.state.value} -> {state.value}")
        self.state = state
        self.history = (self.history + [(now, state.value)])[-HISTORY_LEN:]
        return True

    @property
    def full(self) -> bool:
        """Requests flow."""
        return self.state is ImportState.FULL

    @property
    def resend_ok(self) -> bool:
        """Requests a dead connection left unanswered may go again."""
        return self.state in (ImportState.FULL, ImportState.RECOVER)
