"""Unit tests for mlustre.fuse_client.lov: RAID-0 striping of file extents over objects."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlustre.fuse_client.lov import Layout, Segment

KIB, MIB = 1 << 10, 1 << 20
REAL_STRIPE_SIZES = [64 * KIB, 128 * KIB, 256 * KIB, 1 * MIB, 2 * MIB, 4 * MIB]


def layout(count: int, size: int) -> Layout:
    # distinct OSTs and object ids per stripe, so a wrong stripe shows
    return Layout(count, size, tuple((10 + s, 1000 + 7 * s) for s in range(count)))


def byte_home(lay: Layout, pos: int) -> tuple[int, int]:
    """Model: the (stripe, object offset) of file byte pos."""
    unit = pos // lay.stripe_size
    return unit % lay.stripe_count, (unit // lay.stripe_count) * lay.stripe_size \
        + pos % lay.stripe_size


def dealt(lay: Layout, file_size: int) -> list[tuple[int, int]]:
    """Model by dealing: the file's bytes in order, stripe_size at a time, round the objects;
    each object receives its bytes back to back. Entry p is byte p's (stripe, object offset)."""
    cursor = [0] * lay.stripe_count
    out = []
    for pos in range(file_size):
        stripe = (pos // lay.stripe_size) % lay.stripe_count
        out.append((stripe, cursor[stripe]))
        cursor[stripe] += 1
    return out


def check_segments(lay: Layout, offset: int, length: int, segs: list[Segment]) -> None:
    """Structure: the segments tile the extent in file order, each inside one stripe unit,
    and each carries its stripe's object."""
    pos = offset
    for seg in segs:
        assert seg.file_offset == pos
        assert seg.length > 0
        assert (seg.ost_idx, seg.oid) == lay.objects[seg.stripe]
        first, last = seg.file_offset, seg.file_offset + seg.length - 1
        assert first // lay.stripe_size == last // lay.stripe_size  # never crosses a unit
        assert byte_home(lay, first) == (seg.stripe, seg.obj_offset)
        assert byte_home(lay, last) == (seg.stripe, seg.obj_offset + seg.length - 1)
        pos += seg.length
    assert pos == offset + length
    for seg in segs[1:]:  # maximal: every later segment starts a new stripe unit
        assert seg.file_offset % lay.stripe_size == 0


def expand(segs: list[Segment]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for seg in segs:
        out.extend(zip([seg.stripe] * seg.length,
                       range(seg.obj_offset, seg.obj_offset + seg.length), strict=True))
    return out


# -- map_extent ------------------------------------------------------------------------------------

def test_single_stripe_is_identity() -> None:
    lay = layout(1, 1 * MIB)
    segs = lay.map_extent(5 * MIB + 3, 3 * MIB)
    assert [(s.stripe, s.obj_offset, s.file_offset, s.length) for s in segs] == [
        (0, 5 * MIB + 3, 5 * MIB + 3, MIB - 3),
        (0, 6 * MIB, 6 * MIB, MIB),
        (0, 7 * MIB, 7 * MIB, MIB),
        (0, 8 * MIB, 8 * MIB, 3),
    ]


def test_known_example() -> None:
    lay = Layout(3, 64 * KIB, ((0, 11), (1, 12), (2, 13)))
    segs = lay.map_extent(100 * KIB, 200 * KIB)
    assert segs == [
        Segment(1, 1, 12, 36 * KIB, 100 * KIB, 28 * KIB),
        Segment(2, 2, 13, 0, 128 * KIB, 64 * KIB),
        Segment(0, 0, 11, 64 * KIB, 192 * KIB, 64 * KIB),
        Segment(1, 1, 12, 64 * KIB, 256 * KIB, 44 * KIB),
    ]


def test_empty_extent() -> None:
    assert layout(2, 64 * KIB).map_extent(12345, 0) == []


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_map_extent_exhaustive_small_stripes(count: int, size: int) -> None:
    """Every extent of a 4-round file, byte by byte, against dealing the bytes out."""
    lay = layout(count, size)
    file_size = 4 * count * size + 3
    model = dealt(lay, file_size)
    for offset in range(file_size):
        for length in range(file_size - offset + 1):
            segs = lay.map_extent(offset, length)
            assert expand(segs) == model[offset:offset + length], (offset, length)
            check_segments(lay, offset, length, segs)


offsets = st.one_of(
    st.integers(0, 64 * MIB),
    # near stripe-unit boundaries, where off-by-ones live
    st.builds(lambda k, d: max(k * 64 * KIB + d, 0), st.integers(0, 1024), st.integers(-3, 3)),
)


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 4), size=st.sampled_from(REAL_STRIPE_SIZES), offset=offsets,
       length=st.integers(0, 150 * KIB))
def test_map_extent_byte_by_byte_real_sizes(count: int, size: int, offset: int,
                                            length: int) -> None:
    lay = layout(count, size)
    segs = lay.map_extent(offset, length)
    model = [byte_home(lay, p) for p in range(offset, offset + length)]
    assert expand(segs) == model
    check_segments(lay, offset, length, segs)


@settings(max_examples=300, deadline=None)
@given(count=st.integers(1, 4), size=st.sampled_from(REAL_STRIPE_SIZES), offset=offsets,
       length=st.integers(0, 40 * MIB))
def test_map_extent_large_extents(count: int, size: int, offset: int, length: int) -> None:
    lay = layout(count, size)
    segs = lay.map_extent(offset, length)
    check_segments(lay, offset, length, segs)
    # one segment per stripe unit touched
    if length:
        units = (offset + length - 1) // size - offset // size + 1
        assert len(segs) == units
    # per object, the pieces of a contiguous extent are contiguous in the object too
    by_stripe: dict[int, list[Segment]] = {}
    for seg in segs:
        by_stripe.setdefault(seg.stripe, []).append(seg)
    for pieces in by_stripe.values():
        for a, b in zip(pieces, pieces[1:], strict=False):
            assert b.obj_offset == a.obj_offset + a.length


# -- object_size_at --------------------------------------------------------------------------------

def object_sizes_model(lay: Layout, file_size: int) -> list[int]:
    """Model: each object's size is one past the highest object offset any file byte below
    file_size maps to (0 if none does)."""
    sizes = [0] * lay.stripe_count
    if file_size == 0:
        return sizes
    last_unit = (file_size - 1) // lay.stripe_size
    for unit in range(max(last_unit - lay.stripe_count + 1, 0), last_unit + 1):
        last_byte = min(file_size - 1, (unit + 1) * lay.stripe_size - 1)
        stripe, off = byte_home(lay, last_byte)
        sizes[stripe] = max(sizes[stripe], off + 1)
    return sizes


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [1, 3, 4])
def test_object_size_at_exhaustive_small_stripes(count: int, size: int) -> None:
    lay = layout(count, size)
    for file_size in range(5 * count * size):
        model = [0] * count
        for stripe, off in dealt(lay, file_size):
            model[stripe] = max(model[stripe], off + 1)
        assert [lay.object_size_at(s, file_size) for s in range(count)] == model, file_size


@settings(max_examples=300, deadline=None)
@given(count=st.integers(1, 4), size=st.sampled_from(REAL_STRIPE_SIZES),
       file_size=st.one_of(offsets, st.integers(0, 1 << 40)))
def test_object_size_at_real_sizes(count: int, size: int, file_size: int) -> None:
    lay = layout(count, size)
    got = [lay.object_size_at(s, file_size) for s in range(count)]
    assert got == object_sizes_model(lay, file_size)
    assert sum(got) == file_size  # RAID-0 keeps every byte exactly once


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 4), size=st.sampled_from(REAL_STRIPE_SIZES),
       file_size=st.integers(0, 64 * MIB))
def test_object_size_at_agrees_with_map_extent(count: int, size: int, file_size: int) -> None:
    lay = layout(count, size)
    ends = [0] * count
    for seg in lay.map_extent(0, file_size):
        ends[seg.stripe] = max(ends[seg.stripe], seg.obj_offset + seg.length)
    assert [lay.object_size_at(s, file_size) for s in range(count)] == ends


def test_object_size_at_examples() -> None:
    lay = layout(3, 1 * MIB)
    assert [lay.object_size_at(s, 0) for s in range(3)] == [0, 0, 0]
    assert [lay.object_size_at(s, 1) for s in range(3)] == [1, 0, 0]
    assert [lay.object_size_at(s, MIB + 5) for s in range(3)] == [MIB, 5, 0]
    assert [lay.object_size_at(s, 3 * MIB) for s in range(3)] == [MIB, MIB, MIB]
    # units 0, 3, 6 on stripe 0; 1, 4 and 2 bytes of 7 on stripe 1; 2, 5 on stripe 2
    assert [lay.object_size_at(s, 7 * MIB + 2) for s in range(3)] == [3 * MIB, 2 * MIB + 2,
                                                                       2 * MIB]


# -- from_dict ---------------------------------------------------------------------------------------

def test_from_dict_as_the_mdt_sends_it() -> None:
    d = {"stripe_count": 2, "stripe_size": MIB, "stripe_offset": 1,
         "objects": [[1, 17], [0, 23]], "gen": 3}
    lay = Layout.from_dict(d)
    assert lay == Layout(2, MIB, ((1, 17), (0, 23)), 3)
    assert lay.objects[0] == (1, 17) and type(lay.objects) is tuple
    assert Layout.from_dict({"stripe_count": 1, "stripe_size": 65536,
                             "objects": [[0, 1]]}).gen == 0


def test_layout_is_hashable_and_frozen() -> None:
    lay = Layout.from_dict({"stripe_count": 1, "stripe_size": MIB, "objects": [[0, 1]]})
    assert hash(lay) == hash(Layout(1, MIB, ((0, 1),)))
    with pytest.raises(AttributeError):
        lay.stripe_size = 1  # type: ignore[misc]


@pytest.mark.parametrize("d", [
    {"stripe_count": 0, "stripe_size": MIB, "objects": []},
    {"stripe_count": 1, "stripe_size": MIB, "objects": []},
    {"stripe_count": 1, "stripe_size": 0, "objects": [[0, 1]]},
    {"stripe_count": 1, "stripe_size": -MIB, "objects": [[0, 1]]},
    {"stripe_count": 2, "stripe_size": MIB, "objects": [[0, 1]]},
    {"stripe_count": 1, "stripe_size": MIB, "objects": [[0, 1], [1, 2]]},
    {"stripe_count": 1, "stripe_size": MIB, "objects": [[0, 1, 2]]},
    {"stripe_count": 1, "stripe_size": MIB, "objects": [["x", 1]]},
], ids=["no-objects", "count-1-no-objects", "size-0", "size-negative", "too-few-objects",
        "too-many-objects", "object-triple", "object-not-int"])
def test_from_dict_rejects_inconsistent_layouts(d: dict) -> None:
    with pytest.raises(ValueError):
        Layout.from_dict(d)


@settings(max_examples=300, deadline=None)
@given(count=st.integers(1, 4), size=st.sampled_from([64 * KIB, 128 * KIB, 1 * MIB]),
       offset=st.integers(0, 9 * MIB), length=st.integers(1, 3 * MIB))
def test_object_runs_hold_every_byte_once_where_map_extent_puts_it(count, size, offset, length):
    lay = layout(count, size)
    runs = lay.object_runs(offset, length)
    seen = []
    for run in runs:
        assert sum(n for _, n in run.pieces) == run.length
        pos = run.obj_offset
        for file_off, n in run.pieces:
            for seg in lay.map_extent(file_off, n):  # each piece lies where the run says
                assert (seg.ost_idx, seg.oid, seg.obj_offset) == (run.ost_idx, run.oid, pos)
                pos += seg.length
            seen.append((file_off, n))
    seen.sort()
    assert seen[0][0] == offset and sum(n for _, n in seen) == length
    assert all(a + n == b for (a, n), (b, _) in zip(seen, seen[1:], strict=False))
    # One run per object touched when the extent stays within one round of stripes or the
    # objects' parts follow each other (always, for an extent: RAID-0 fills them in order).
    assert len(runs) == len({(r.ost_idx, r.oid) for r in runs})


def test_one_run_per_object_for_a_striped_chunk():
    lay = layout(2, 64 * KIB)
    runs = lay.object_runs(MIB, MIB)
    assert [(r.ost_idx, r.obj_offset, r.length, len(r.pieces)) for r in runs] == [
        (10, MIB // 2, MIB // 2, 8), (11, MIB // 2, MIB // 2, 8)]
