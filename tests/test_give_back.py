"""The give-back pass rule (fuse_client/give_back.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlustre.fuse_client.give_back import REVOKE_PASSES, GiveBack, Step


def test_one_quiet_pass_is_enough() -> None:
    gb = GiveBack()
    assert gb.next_step(0, 0) is Step.PASS
    gb.started(0)
    assert gb.next_step(0, 0) is Step.DONE
    assert gb.passes == 1 and not gb.forced


def test_io_during_a_pass_means_another() -> None:
    gb = GiveBack()
    assert gb.next_step(3, 0) is Step.PASS
    gb.started(3)
    assert gb.next_step(4, 0) is Step.PASS  # one borrowed I/O came
    gb.started(4)
    assert gb.next_step(4, 1) is Step.PASS  # one still running
    gb.started(5)
    assert gb.next_step(5, 0) is Step.DONE
    assert gb.passes == 3


def test_eight_busy_passes_then_force_then_done() -> None:
    gb = GiveBack()
    io = 0
    steps = []
    while (step := gb.next_step(io, 0)) is not Step.DONE:
        steps.append(step)
        gb.started(io)
        io += 1  # I/O keeps coming during every pass
    assert steps == [Step.PASS] * REVOKE_PASSES + [Step.FORCE]
    assert gb.passes == REVOKE_PASSES and gb.forced


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1)), max_size=30))
def test_never_more_than_max_passes_plus_one(events: list[tuple[int, int]]) -> None:
    gb = GiveBack(max_passes=4)
    io = 0
    passes = 0
    for came, running in events:
        step = gb.next_step(io, running)
        if step is Step.DONE:
            break
        passes += 1
        gb.started(io)
        io += came
    assert passes <= 5
    assert gb.passes <= 4
