"""The lock vocabulary: Lustre's compatibility matrix, mode coverage, policies."""

from __future__ import annotations

import pytest

from mlustre.protocol.ldlm import (
    WHOLE,
    Extent,
    IBits,
    LockType,
    Mode,
    compatible,
    conflicts,
    covers,
)

# Rows: held; columns: wanted, in the order NL CR CW PR PW EX (lustre-facts.md §1).
MATRIX = {
    Mode.NL: "111111",
    Mode.CR: "111110",
    Mode.CW: "111000",
    Mode.PR: "110100",
    Mode.PW: "110000",
    Mode.EX: "100000",
}
ORDER = [Mode.NL, Mode.CR, Mode.CW, Mode.PR, Mode.PW, Mode.EX]


@pytest.mark.parametrize("held", ORDER)
@pytest.mark.parametrize("wanted", ORDER)
def test_compatibility_matrix(held: Mode, wanted: Mode) -> None:
    assert compatible(held, wanted) == (MATRIX[held][ORDER.index(wanted)] == "1")


@pytest.mark.parametrize("a", ORDER)
@pytest.mark.parametrize("b", ORDER)
def test_matrix_is_symmetric(a: Mode, b: Mode) -> None:
    assert compatible(a, b) == compatible(b, a)


def test_coverage() -> None:
    assert covers(Mode.EX, Mode.PR) and covers(Mode.PW, Mode.PR)
    assert not covers(Mode.PR, Mode.PW) and not covers(Mode.CR, Mode.PR)
    assert all(covers(m, m) for m in ORDER)


def test_policies() -> None:
    assert conflicts(LockType.IBITS, Mode.EX, IBits.LOOKUP, Mode.PR, IBits.LOOKUP)
    assert not conflicts(LockType.IBITS, Mode.EX, IBits.LOOKUP, Mode.PR, IBits.UPDATE)
    assert conflicts(LockType.EXTENT, Mode.PW, Extent(0, 99), Mode.PR, Extent(99, 200))
    assert not conflicts(LockType.EXTENT, Mode.PW, Extent(0, 99), Mode.PR, Extent(100, 200))
    assert not conflicts(LockType.EXTENT, Mode.PR, WHOLE, Mode.PR, WHOLE)
    assert conflicts(LockType.PLAIN, Mode.EX, None, Mode.CR, None)
    assert Extent(0, 10).contains(Extent(3, 10)) and not Extent(0, 10).contains(Extent(3, 11))
