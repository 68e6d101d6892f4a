"""Unit tests of Size-on-MDT (servers/mdt/size_on_mdt.py through the store): when the MDT
may hand out a file's size as the file's size, so that a client skips the OST glimpse."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mdt_helpers import ALICE, ROOT, crash, mkfile, open_store, raises

from mlustre.servers.mdt.store import ROOT_INO, MdtStore

NOBODY: frozenset[int] = frozenset()


def _open(s: MdtStore, ino: int, flags: int) -> int:
    return s.open(ROOT, ino, flags)[1]["handle"]


def test_a_file_nobody_writes_has_its_size_on_the_mdt(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    assert mdt_store.size_grantable(f["ino"], NOBODY)
    reader = _open(mdt_store, f["ino"], os.O_RDONLY)
    assert mdt_store.size_grantable(f["ino"], NOBODY)  # readers change nothing
    mdt_store.close(reader)
    assert mdt_store.size_grantable(f["ino"], NOBODY)


def test_while_open_for_write_only_the_writer_may_trust_it(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    w = _open(mdt_store, f["ino"], os.O_WRONLY)
    assert not mdt_store.size_grantable(f["ino"], NOBODY)
    assert mdt_store.size_grantable(f["ino"], {w})  # its only writer
    w2 = _open(mdt_store, f["ino"], os.O_RDWR)
    assert not mdt_store.size_grantable(f["ino"], {w})  # another writer
    assert mdt_store.size_grantable(f["ino"], {w, w2})
    mdt_store.close(w2)
    mdt_store.close(w)
    assert mdt_store.size_grantable(f["ino"], NOBODY)


def test_create_with_open_for_write_counts_as_a_writer(mdt_store: MdtStore) -> None:
    _, res = mdt_store.create(ROOT, ROOT_INO, b"c", stat.S_IFREG | 0o644,
                              open_flags=os.O_WRONLY | os.O_CREAT)
    ino, handle = res["attr"]["ino"], res["handle"]
    assert not mdt_store.size_grantable(ino, NOBODY)
    assert mdt_store.size_grantable(ino, {handle})
    mdt_store.close(handle)
    assert mdt_store.size_grantable(ino, NOBODY)


def test_a_writer_that_left_makes_the_size_unsure_until_a_truncate(
        mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    w = _open(mdt_store, f["ino"], os.O_WRONLY)
    mdt_store.close(w, clean=False)  # evicted, or its last size report failed
    assert not mdt_store.size_grantable(f["ino"], NOBODY)
    r = _open(mdt_store, f["ino"], os.O_WRONLY)
    mdt_store.close(r)  # a clean writer after it does not know what the first wrote
    assert not mdt_store.size_grantable(f["ino"], NOBODY)
    mdt_store.setattr(ROOT, f["ino"], {"size": 10})
    assert mdt_store.size_grantable(f["ino"], NOBODY)


def test_open_with_o_trunc_makes_it_sure_again(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f")
    mdt_store.close(_open(mdt_store, f["ino"], os.O_WRONLY), clean=False)
    t = _open(mdt_store, f["ino"], os.O_WRONLY | os.O_TRUNC)
    assert mdt_store.size_grantable(f["ino"], {t})
    mdt_store.close(t)
    assert mdt_store.size_grantable(f["ino"], NOBODY)


def test_a_failed_open_marks_nothing(mdt_store: MdtStore) -> None:
    f = mkfile(mdt_store, b"f", mode=0o444)
    with raises(errno.EACCES):
        mdt_store.open(ALICE, f["ino"], os.O_WRONLY)
    assert mdt_store.size_grantable(f["ino"], NOBODY)


def test_files_open_for_write_at_a_crash_stay_unsure(tmp_path: Path) -> None:
    """Handles live in memory: after a restart the MDT cannot know whether the writers
    of the last run reported their sizes; the marks they left are kept until a
    truncate, whatever clean closes come after."""
    s = open_store(tmp_path / "mdt.db")
    f = mkfile(s, b"f")
    g = mkfile(s, b"g")
    _open(s, f["ino"], os.O_WRONLY)
    s.close(_open(s, g["ino"], os.O_WRONLY))
    s.commit()
    crash(s)
    s = open_store(tmp_path / "mdt.db")
    assert not s.size_grantable(f["ino"], NOBODY)
    assert s.size_grantable(g["ino"], NOBODY)  # closed cleanly before the crash
    s.close(_open(s, f["ino"], os.O_RDWR))
    assert not s.size_grantable(f["ino"], NOBODY)
    s.setattr(ROOT, f["ino"], {"size": 0})
    assert s.size_grantable(f["ino"], NOBODY)
    s.close()


def test_an_uncommitted_open_leaves_no_mark_after_a_crash(tmp_path: Path) -> None:
    """(Its client replays the open, which marks the file again.)"""
    s = open_store(tmp_path / "mdt.db")
    f = mkfile(s, b"f")
    s.commit()
    _open(s, f["ino"], os.O_WRONLY)
    crash(s)
    s = open_store(tmp_path / "mdt.db")
    assert s.size_grantable(f["ino"], NOBODY)
    s.close()

