"""Unit tests of the MDT store's layouts and OST object ids (servers/mdt/layouts.py,
servers/mdt/object_ids.py), orphan object ranges included."""

from __future__ import annotations

import errno
import itertools
import time
from pathlib import Path

import pytest
from mdt_helpers import (
    ALICE,
    BOB,
    OST_COUNT,
    ROOT,
    crash,
    destroyed,
    mkdir,
    mkfile,
    objects_of,
    open_store,
    raises,
    shared_dir,
)

from mlustre.servers.mdt.store import (
    ROOT_INO,
    MdtStore,
)

# --------------------------------------------------------------------------- layouts


def test_default_layout(mdt_store: MdtStore) -> None:
    lay = mkfile(mdt_store, b"f")["layout"]
    assert set(lay) == {"stripe_count", "stripe_size", "stripe_offset", "objects", "gen"}
    assert (lay["stripe_count"], lay["stripe_size"], lay["gen"]) == (1, 1 << 20, 1)
    assert len(lay["objects"]) == 1
    assert lay["objects"][0][0] == lay["stripe_offset"]


def test_store_default_striping(mdt_db_path: Path) -> None:
    s = open_store(mdt_db_path, default_stripe_count=2, default_stripe_size=1 << 16)
    try:
        lay = mkfile(s, b"f")["layout"]
        assert (lay["stripe_count"], lay["stripe_size"]) == (2, 1 << 16)
    finally:
        s.close()
    with pytest.raises(ValueError):
        MdtStore(str(mdt_db_path), clock=time.time_ns, ost_count=0)
    with pytest.raises(ValueError):
        MdtStore(str(mdt_db_path), clock=time.time_ns, ost_count=2, default_stripe_size=1000)


def test_explicit_striping(mdt_store: MdtStore) -> None:
    lay = mkfile(mdt_store, b"f", layout={"stripe_count": 3, "stripe_offset": 2,
                                      "stripe_size": 1 << 17})["layout"]  # fmt: skip
    assert (lay["stripe_count"], lay["stripe_size"], lay["stripe_offset"]) == (3, 1 << 17, 2)
    assert [o[0] for o in lay["objects"]] == [2, 3, 0]
    lay2 = mkfile(mdt_store, b"g", layout={"stripe_count": 2, "stripe_offset": 2})["layout"]
    assert [o[0] for o in lay2["objects"]] == [2, 3]
    # Object ids are unique per OST.
    assert lay2["objects"][0][1] == lay["objects"][0][1] + 1
    assert lay2["objects"][1][1] == lay["objects"][1][1] + 1


def test_round_robin_offsets(mdt_store: MdtStore) -> None:
    starts = [mkfile(mdt_store, b"f%d" % i)["layout"]["stripe_offset"] for i in range(8)]
    assert starts == [(starts[0] + i) % OST_COUNT for i in range(8)]


@pytest.mark.parametrize("count,expect", [(-1, 4), (4, 4), (9, 4), (0, 1), (2, 2)])
def test_stripe_count_clamped(mdt_store: MdtStore, count: int, expect: int) -> None:
    lay = mkfile(mdt_store, b"f", layout={"stripe_count": count})["layout"]
    assert lay["stripe_count"] == expect == len(lay["objects"])
    assert len({o[0] for o in lay["objects"]}) == expect


def test_object_ids_never_reused(mdt_store: MdtStore) -> None:
    seen: set[tuple[int, int]] = set()
    for i in range(20):
        f = mkfile(mdt_store, b"f", layout={"stripe_count": -1})
        objs = set(objects_of(f))
        assert not objs & seen
        seen |= objs
        mdt_store.unlink(ROOT, ROOT_INO, b"f")
        if i == 10:
            mdt_store.commit()
    assert len(seen) == 20 * OST_COUNT


@pytest.mark.parametrize(
    "layout",
    [{"stripe_size": 1000}, {"stripe_size": 0}, {"stripe_size": -65536},
     {"stripe_offset": OST_COUNT}, {"stripe_offset": -2}, {"stripe_count": -2},
     {"stripe_pattern": 1}, {"stripe_count": "2"}],
)  # fmt: skip
def test_layout_validation(mdt_store: MdtStore, layout: dict) -> None:
    with raises(errno.EINVAL):
        mdt_store.create(ROOT, ROOT_INO, b"f", 0o644, layout=layout)
    with raises(errno.EINVAL):
        mdt_store.set_layout(ROOT, ROOT_INO, layout)
    assert mdt_store.last_transno == 0


def test_dir_default_layout_inheritance(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    assert mdt_store.get_dir_layout(d["ino"]) is None
    _, a = mdt_store.set_layout(ROOT, d["ino"], {"stripe_count": 2, "stripe_offset": 1})
    assert a["ino"] == d["ino"] and a["layout"] is None
    assert mdt_store.get_dir_layout(d["ino"]) == {"stripe_count": 2, "stripe_offset": 1}
    lay = mkfile(mdt_store, b"f", parent=d["ino"])["layout"]
    assert [o[0] for o in lay["objects"]] == [1, 2]
    # The explicit layout beats the directory default, key by key.
    lay = mkfile(mdt_store, b"g", parent=d["ino"], layout={"stripe_count": 1})["layout"]
    assert (lay["stripe_count"], lay["stripe_offset"]) == (1, 1)
    # Subdirectories do not inherit their parent's default; files outside are unaffected.
    sub = mkdir(mdt_store, b"sub", parent=d["ino"])
    assert mkfile(mdt_store, b"h", parent=sub["ino"])["layout"]["stripe_count"] == 1
    assert mkfile(mdt_store, b"top")["layout"]["stripe_count"] == 1


def test_root_default_is_filesystem_default(mdt_store: MdtStore) -> None:
    d = mkdir(mdt_store, b"d")
    mdt_store.set_layout(ROOT, ROOT_INO, {"stripe_count": 3, "stripe_size": 1 << 18})
    assert mdt_store.get_dir_layout(ROOT_INO) == {"stripe_count": 3, "stripe_size": 1 << 18}
    lay = mkfile(mdt_store, b"f", parent=d["ino"])["layout"]
    assert (lay["stripe_count"], lay["stripe_size"]) == (3, 1 << 18)
    mdt_store.set_layout(ROOT, d["ino"], {"stripe_count": 1})
    lay = mkfile(mdt_store, b"g", parent=d["ino"])["layout"]
    assert (lay["stripe_count"], lay["stripe_size"]) == (1, 1 << 18)  # per-key fallback
    mdt_store.set_layout(ROOT, ROOT_INO, {})  # {} removes a default
    assert mdt_store.get_dir_layout(ROOT_INO) is None
    lay = mkfile(mdt_store, b"h", parent=d["ino"])["layout"]
    assert (lay["stripe_count"], lay["stripe_size"]) == (1, 1 << 20)


def test_root_default_survives_reopen(mdt_db_path: Path) -> None:
    s = open_store(mdt_db_path)
    s.set_layout(ROOT, ROOT_INO, {"stripe_count": 2})
    s.close()
    s2 = open_store(mdt_db_path)
    try:
        assert mkfile(s2, b"f")["layout"]["stripe_count"] == 2
    finally:
        s2.close()


def test_set_layout_on_file(mdt_store: MdtStore) -> None:
    pub = shared_dir(mdt_store)
    f = mkfile(mdt_store, b"f", parent=pub, cred=ALICE, layout={"stripe_size": 1 << 17})
    old = objects_of(f)
    with raises(errno.EPERM):
        mdt_store.set_layout(BOB, f["ino"], {"stripe_count": 2})
    _, a = mdt_store.set_layout(ALICE, f["ino"], {"stripe_count": 3})
    lay = a["layout"]
    assert (lay["stripe_count"], lay["stripe_size"], lay["gen"]) == (3, 1 << 17, 2)
    assert not set(objects_of(a)) & set(old)
    assert destroyed(mdt_store) == old
    assert mdt_store.getattr(f["ino"])["layout"] == lay
    mdt_store.write_update(f["ino"], 10, 1)
    with raises(errno.EBUSY):
        mdt_store.set_layout(ALICE, f["ino"], {"stripe_count": 1})
    g = mkfile(mdt_store, b"g")
    mdt_store.setattr(ROOT, g["ino"], {"size": 5})
    with raises(errno.EBUSY):
        mdt_store.set_layout(ROOT, g["ino"], {"stripe_count": 2})
    mdt_store.symlink(ROOT, ROOT_INO, b"l", b"t")
    with raises(errno.EINVAL):
        mdt_store.set_layout(ROOT, mdt_store.lookup(ROOT, ROOT_INO, b"l")["ino"], {"stripe_count": 2})
    d = mkdir(mdt_store, b"d")
    with raises(errno.EPERM):
        mdt_store.set_layout(ALICE, d["ino"], {"stripe_count": 2})


def test_get_dir_layout_on_non_directory(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    assert mdt_store.get_dir_layout(f["ino"]) is None
    with raises(errno.ENOENT):
        mdt_store.get_dir_layout(8888)


def test_orphan_object_ranges_after_a_crash(mdt_db_path: Path) -> None:
    """Ids handed out after the last commit are lost with a crash; the next run starts
    past them and reports [first lost id, its first id) per OST until cleaned, keeping
    the earliest start across runs not cleaned up; objects_in names what layouts use."""
    s = open_store(mdt_db_path, ost_count=1)
    assert s.orphan_ranges() == {}  # a new filesystem: nothing can be lost
    kept = mkfile(s, b"kept")
    s.commit()
    lost = mkfile(s, b"lost")  # never committed
    crash(s)
    (_, first_lost), = objects_of(lost)
    (_, kept_oid), = objects_of(kept)
    s2 = open_store(mdt_db_path, ost_count=1)
    (lo, hi), = s2.orphan_ranges().values()
    assert lo == first_lost and hi > lo + 1_000_000
    (_, new_oid), = objects_of(mkfile(s2, b"new"))
    assert new_oid == hi  # this run's ids start past every lost one
    assert s2.objects_in(0, lo, hi) == []
    assert s2.objects_in(0, 0, hi + 1) == [kept_oid, new_oid]
    s2.commit()
    crash(s2)  # not cleaned up: the next run's range starts as early
    s3 = open_store(mdt_db_path, ost_count=1)
    try:
        (lo3, hi3), = s3.orphan_ranges().values()
        assert lo3 == lo and hi3 > hi
        s3.orphans_cleaned(0)
        assert s3.orphan_ranges() == {}
        s3.commit()
    finally:
        s3.close()
    s4 = open_store(mdt_db_path, ost_count=1)
    try:
        (lo4, _), = s4.orphan_ranges().values()
        assert lo4 == hi3  # (cleaned: only ids from the last run on are looked at again)
    finally:
        s4.close()


def test_orphan_requests_name_at_most_so_many_ids_to_keep() -> None:
    from mlustre.servers.mdt.server import _orphan_requests
    from mlustre.servers.ost import ORPHAN_KEEP_MAX

    assert _orphan_requests(10, 20, []) == [(10, 20, [])]
    keep = list(range(100, 100 + 2 * ORPHAN_KEEP_MAX + 5))
    pieces = _orphan_requests(50, 1 << 40, keep)
    assert [len(k) for _, _, k in pieces] == [ORPHAN_KEEP_MAX, ORPHAN_KEEP_MAX, 5]
    assert pieces[0][0] == 50 and pieces[-1][1] == 1 << 40
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))  # contiguous
    assert all(lo <= k < hi for lo, hi, kept in pieces for k in kept)
