"""Unit tests of the MDT store's destroy log (servers/mdt/destroy_log.py)."""

from __future__ import annotations

from pathlib import Path

from mdt_helpers import (
    ROOT,
    destroyed,
    mkfile,
    objects_of,
    open_store,
)

from mlustre.servers.mdt.store import (
    ROOT_INO,
    MdtStore,
)


def test_destroy_log_drain(mdt_store: MdtStore) -> None:
    for i in range(5):
        mkfile(mdt_store, b"f%d" % i)
        mdt_store.unlink(ROOT, ROOT_INO, b"f%d" % i)
    pending = mdt_store.pending_destroys(3)
    assert len(pending) == 3
    ids = [p[0] for p in pending]
    assert ids == sorted(ids)
    transno = mdt_store.last_transno
    mdt_store.destroys_done(ids)
    assert mdt_store.last_transno == transno  # bookkeeping, not a client update
    rest = mdt_store.pending_destroys()
    assert len(rest) == 2 and not set(ids) & {p[0] for p in rest}
    mdt_store.destroys_done([p[0] for p in rest])
    assert mdt_store.pending_destroys() == []
    mdt_store.destroys_done([])


def test_destroy_log_survives_commit(mdt_db_path: Path) -> None:
    s = open_store(mdt_db_path)
    f = mkfile(s, b"f")
    s.unlink(ROOT, ROOT_INO, b"f")
    s.close()
    s2 = open_store(mdt_db_path)
    try:
        assert destroyed(s2) == objects_of(f)
    finally:
        s2.close()
