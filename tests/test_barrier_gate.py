"""The SIR barrier gate's state table (fuse_client/barrier_gate.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlustre.fuse_client.barrier_gate import (
    TRANSITIONS,
    Gate,
    GateState,
    IllegalGateTransition,
    admits,
)

G = GateState


def gate() -> Gate:
    return Gate("t", {"last_stall_s": 0.0, "longest_stall_s": 0.0})


def test_the_barrier_cycle_and_its_stall() -> None:
    g = gate()
    assert g.to(G.ENQUEUING, 1.0) and g.to(G.OPEN, 1.5)
    assert g.stats["last_stall_s"] == 0.5  # closed from the first enqueue
    assert g.to(G.DRAINING, 2.0) and g.to(G.ENQUEUING, 3.0) and g.to(G.OPEN, 4.25)
    assert g.stats["last_stall_s"] == 2.25 and g.stats["longest_stall_s"] == 2.25
    assert not g.to(G.OPEN, 5.0)  # staying is no transition


@pytest.mark.parametrize("old,new", [(G.OFF, G.OPEN), (G.OFF, G.DRAINING),
                                     (G.ENQUEUING, G.DRAINING), (G.DRAINING, G.OPEN)])
def test_other_moves_raise(old: GateState, new: GateState) -> None:
    g = gate()
    g.state = old
    with pytest.raises(IllegalGateTransition):
        g.to(new, 0.0)
    assert g.state is old


@given(st.lists(st.sampled_from(list(G)), max_size=40))
def test_walks_follow_the_table(seq: list[GateState]) -> None:
    g = gate()
    t = 0.0
    for state in seq:
        t += 1
        old = g.state
        try:
            changed = g.to(state, t)
        except IllegalGateTransition:
            assert state not in TRANSITIONS[old] and state is not G.OFF
            continue
        assert changed == (state is not old)
        assert g.state is state
    # A stall is only ever measured while open to application updates again.
    assert g.stats["longest_stall_s"] >= g.stats["last_stall_s"] >= 0
    assert admits(g.state, flush=True) or g.state is G.ENQUEUING
