"""The pure helpers of data_locks and md_cache: which object extents a file range needs locked,
and the search permission a cached lookup checks."""

from __future__ import annotations

import pytest

from mlustre.fuse_client.data_locks import EOF, WHOLE, object_extents
from mlustre.fuse_client.lov import Layout
from mlustre.fuse_client.md_cache import may_search
from mlustre.protocol.ldlm import Extent

ONE = Layout(1, 1 << 20, ((0, 5),))
TWO = Layout(2, 65536, ((0, 5), (1, 6)))


def test_single_stripe_maps_the_range_itself() -> None:
    assert object_extents(ONE, 0, 1 << 20) == [(0, 5, Extent(0, (1 << 20) - 1))]
    assert object_extents(ONE, 4096, 8192) == [(0, 5, Extent(4096, 8191))]


def test_two_stripes_get_bounding_extents() -> None:
    # [0, 256 KiB) = stripes 0,1,0,1 of 64 KiB: each object holds [0, 128 KiB).
    assert sorted(object_extents(TWO, 0, 4 * 65536)) == [
        (0, 5, Extent(0, 2 * 65536 - 1)), (1, 6, Extent(0, 2 * 65536 - 1))]
    # A range inside one stripe touches one object only.
    assert object_extents(TWO, 65536 + 10, 65536 + 20) == [(1, 6, Extent(10, 19))]


def test_eof_means_every_object_whole() -> None:
    assert object_extents(TWO, 0, EOF) == [(0, 5, WHOLE), (1, 6, WHOLE)]


def test_empty_range_still_locks_its_byte() -> None:
    assert object_extents(ONE, 100, 100) == [(0, 5, Extent(100, 100))]


@pytest.mark.parametrize(("uid", "gid", "groups", "mode", "ok"), [
    (0, 0, [], 0o000, True),  # root searches anything
    (10, 10, [], 0o100, True),  # owner: user bit
    (10, 10, [], 0o011, False),  # owner without the user bit, even if others may
    (11, 20, [], 0o010, True),  # group
    (11, 21, [20], 0o010, True),  # supplementary group
    (11, 21, [], 0o010, False),
    (11, 21, [], 0o001, True),  # others
])
def test_may_search(uid: int, gid: int, groups: list[int], mode: int, ok: bool) -> None:
    attr = {"mode": 0o040000 | mode, "uid": 10, "gid": 20}
    assert may_search(attr, uid, gid, groups) is ok
