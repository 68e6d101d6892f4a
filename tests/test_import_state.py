"""The import state table (fuse_client/import_state.py): the paths Import takes are
allowed, everything else raises, CLOSED is final."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from mlustre.fuse_client.import_state import (
    HISTORY_LEN,
    TRANSITIONS,
    IllegalTransition,
    ImportState,
    ImportStates,
)

S = ImportState

# The paths imports.Import takes (its connect, recovery, keeper, request and close code).
PATHS = [
    [S.CONNECTING, S.FULL],  # first connect
    [S.CONNECTING, S.DISCONN, S.CONNECTING, S.FULL],  # a NID that did not answer
    [S.CONNECTING, S.FULL, S.DISCONN, S.CONNECTING, S.RECOVER, S.FULL],  # resend
    [S.CONNECTING, S.FULL, S.DISCONN, S.CONNECTING, S.REPLAY, S.REPLAY_LOCKS, S.FULL],
    [S.CONNECTING, S.FULL, S.DISCONN, S.CONNECTING, S.REPLAY, S.REPLAY_LOCKS, S.RECOVER,
     S.FULL],
    [S.CONNECTING, S.FULL, S.DISCONN, S.CONNECTING, S.REPLAY, S.DISCONN],  # died in replay
    [S.CONNECTING, S.FULL, S.DISCONN, S.CONNECTING, S.REPLAY, S.REPLAY_LOCKS, S.DISCONN],
    [S.CONNECTING, S.FULL, S.DISCONN, S.CONNECTING, S.EVICTED, S.FULL],
    [S.CONNECTING, S.FULL, S.DISCONN, S.CONNECTING, S.EVICTED, S.RECOVER, S.FULL],
    [S.CONNECTING, S.FULL, S.CLOSED],
    [S.CLOSED],
]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(s.value for s in p))
def test_paths_of_import_are_allowed(path: list[ImportState]) -> None:
    states = ImportStates("t")
    for i, state in enumerate(path):
        assert states.to(state, float(i))
    assert states.state is path[-1]
    assert [name for _, name in states.history] == [s.value for s in path]


@pytest.mark.parametrize("old,new", [
    (S.NEW, S.FULL), (S.FULL, S.REPLAY), (S.FULL, S.CONNECTING), (S.DISCONN, S.FULL),
    (S.RECOVER, S.DISCONN), (S.EVICTED, S.REPLAY), (S.REPLAY, S.FULL), (S.NEW, S.EVICTED),
])
def test_other_transitions_raise(old: ImportState, new: ImportState) -> None:
    states = ImportStates("t")
    states.state = old
    with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
        states.to(new, 0.0)
    assert states.state is old


def test_staying_is_no_transition() -> None:
    states = ImportStates("t")
    states.to(S.CONNECTING, 1.0)
    assert not states.to(S.CONNECTING, 2.0)
    assert states.history == [(1.0, "CONNECTING")]


def test_closed_is_final_and_quiet() -> None:
    states = ImportStates("t")
    states.to(S.CONNECTING, 1.0)
    assert states.to(S.CLOSED, 2.0)
    for state in S:
        assert not states.to(state, 3.0)  # (a connect ending after close changes nothing)
    assert states.state is S.CLOSED


def test_every_state_reaches_closed_and_closed_leads_nowhere() -> None:
    assert set(TRANSITIONS) == set(S)
    assert TRANSITIONS[S.CLOSED] == frozenset()
    for state in S:
        states = ImportStates("t")
        states.state = state
        states.to(S.CLOSED, 0.0)
        assert states.state is S.CLOSED


@given(st.lists(st.sampled_from(list(S)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_history_is_bounded_and_follows_the_table(seq: list[ImportState]) -> None:
    states = ImportStates("t")
    for t, state in enumerate(seq):
        old = states.state
        try:
            changed = states.to(state, float(t))
        except IllegalTransition:
            assert old is not S.CLOSED and state is not S.CLOSED
            assert state not in TRANSITIONS[old] and state is not old
            continue
        assert changed == (old is not S.CLOSED and state is not old)
    assert len(states.history) <= HISTORY_LEN


class ImportMachine(RuleBasedStateMachine):
    """Random walks through the table: the state only ever moves along it."""

    def __init__(self) -> None:
        super().__init__()
        self.states = ImportStates("t")
        self.model = S.NEW
        self.t = 0.0

    @rule(state=st.sampled_from(list(S)))
    def move(self, state: ImportState) -> None:
        self.t += 1
        allowed = self.model is not S.CLOSED and (
            state is S.CLOSED or state in TRANSITIONS[self.model])
        if self.model is S.CLOSED or state is self.model:
            assert not self.states.to(state, self.t)
        elif allowed:
            assert self.states.to(state, self.t)
            self.model = state
        else:
            with pytest.raises(IllegalTransition):
                self.states.to(state, self.t)

    @invariant()
    def agrees(self) -> None:
        assert self.states.state is self.model
        assert self.states.full == (self.model is S.FULL)
        assert self.states.resend_ok == (self.model in (S.FULL, S.RECOVER))
        if self.states.history:
            assert self.states.history[-1][1] == self.model.value


TestImportMachine = ImportMachine.TestCase
TestImportMachine.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
