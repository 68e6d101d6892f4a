"""Attribute write-back on real mounts (fuse_client/md_writeback.py): chmod, chown and
utimes of a file its client created are answered by that client under a write-back lock
and reach the MDT later, in one request; whoever else looks first gets them at once.

Mount A is the cluster's own mount, B a second client process.
"""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mnthelpers import as_user, cli
from test_fast_path import client_instance, llite_counter, mdc_reints
from test_replay import stat_of

TIMEOUT = 180


def set_llite(mnt: Path, name: str, value: str) -> None:
    cli("lctl", "-m", mnt, "set_param", f"llite.{client_instance(mnt)}.{name}={value}").check()


def tar_like(path: Path, mode: int = 0o640, times: tuple[int, int] = (10**9, 10**9)) -> None:
    """What tar -x does to each file: create, write, chown, chmod, close, utimes."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"t" * 3000)
        os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.utime(path, ns=times)


@pytest.mark.timeout(TIMEOUT)
def test_setattrs_of_a_new_file_cost_no_round_trip_and_are_seen_at_once_elsewhere(cluster,
                                                                                ab, mnt_b):
    a, b = ab
    set_llite(cluster.mnt, "attr_writeback_age", "30")  # (only B's look flushes them)
    try:
        reints = mdc_reints(cluster.mnt)
        local = llite_counter(cluster.mnt, "wb_setattrs")
        tar_like(a / "f", 0o640, (1_000_000_000, 2_000_000_000))
        # chown, chmod and utimes were answered by A: the REINTs are the create and the
        # size update the release sends (in the background: maybe not yet), 4 or more
        # without write-back. (One more was seen once in a loaded full run, cause not
        # found: a resend counts again in mdc stats.)
        assert llite_counter(cluster.mnt, "wb_setattrs") - local == 3
        assert mdc_reints(cluster.mnt) - reints <= 3
        st = os.stat(a / "f")
        assert (st.st_mode & 0o7777, st.st_size, st.st_mtime_ns) == (0o640, 3000,
                                                                      2_000_000_000)
        flushes = llite_counter(cluster.mnt, "wb_flushes")
        recalls = stat_of(cluster, "writeback_recalls")
        # B, at once: the MDT calls A's lock back, A flushes, B sees it all.
        st_b = os.stat(b / "f")
        assert (st_b.st_mode & 0o7777, st_b.st_uid, st_b.st_size, st_b.st_mtime_ns,
                st_b.st_atime_ns) == (0o640, 0, 3000, 2_000_000_000, 1_000_000_000)
        assert st_b.st_ctime_ns == st.st_ctime_ns
        assert llite_counter(cluster.mnt, "wb_flushes") == flushes + 1
        assert stat_of(cluster, "writeback_recalls") > recalls
        assert (b / "f").read_bytes() == b"t" * 3000
        # And a listing on B (a readdir with attributes) after a change on A.
        tar_like(a / "g", 0o604, (3_000_000_000, 4_000_000_000))
        out = subprocess.run(["ls", "-ln", "--time-style=+%s", str(b)], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        line = next(x for x in out.splitlines() if x.endswith(" g"))
        assert line.startswith("-rw----r-- ") and " 3000 4 g" in line, out
    finally:
        set_llite(cluster.mnt, "attr_writeback_age", "1")


@pytest.mark.timeout(TIMEOUT)
def test_a_change_elsewhere_comes_after_ours(cluster, ab, mnt_b):
    a, b = ab
    set_llite(cluster.mnt, "attr_writeback_age", "30")
    try:
        tar_like(a / "f", 0o644, (5_000_000_000, 6_000_000_000))
        os.chmod(b / "f", 0o600)  # B's update calls A's lock back: A's changes go first
        st = os.stat(a / "f")
        assert (st.st_mode & 0o7777, st.st_mtime_ns, st.st_size) == (0o600, 6_000_000_000,
                                                                      3000)
        # A's lock is gone: A's next chmod is an ordinary update, seen by B.
        reints = mdc_reints(cluster.mnt)
        os.chmod(a / "f", 0o444)
        assert mdc_reints(cluster.mnt) - reints == 1
        assert os.stat(b / "f").st_mode & 0o7777 == 0o444
        # An open on B also waits for A's flush (it reads the mode to check access).
        tar_like(a / "h", 0o600)
        assert as_user(65534, lambda: open(b / "h").read()) == [
            "raised", "PermissionError(13, 'Permission denied')"]
    finally:
        set_llite(cluster.mnt, "attr_writeback_age", "1")


@pytest.mark.timeout(TIMEOUT)
def test_the_rules_are_the_mdts(cluster, workdir):
    """Decided on the client, by the MDT's rules: a non-owner may not chmod, the owner
    may not give the file away nor take a group they are not in."""
    f = workdir / "mine"
    workdir.chmod(0o777)

    def make_and_try() -> object:
        fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
        out = []
        for call in (lambda: os.chown(f, 0, -1), lambda: os.chown(f, -1, 0),
                     lambda: os.chmod(f, 0o4755), lambda: os.utime(f, (7, 7))):
            try:
                call()
                out.append(0)
            except OSError as e:
                out.append(e.errno)
        st = os.stat(f)
        return out + [st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns]

    got = as_user(65534, make_and_try)
    assert got == [errno.EPERM, errno.EPERM, 0, 0, 0o4755, 65534, 65534, 7 * 10**9], got
    assert as_user(65533, lambda: os.chmod(f, 0o777)) == [
        "raised", "PermissionError(1, 'Operation not permitted')"]
    st = os.stat(f)
    assert (st.st_mode & 0o7777, st.st_uid) == (0o4755, 65534)
    # root's chown of a set-id file: the MDT's result after a flush is the same.
    os.chown(f, 1000, 1000)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1000, 1000)


@pytest.mark.timeout(TIMEOUT)
def test_fsync_and_age_send_the_changes(cluster, workdir):
    f = workdir / "f"
    set_llite(cluster.mnt, "attr_writeback_age", "30")
    try:
        fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.fchmod(fd, 0o620)
            flushes = llite_counter(cluster.mnt, "wb_flushes")
            os.fsync(fd)
            assert llite_counter(cluster.mnt, "wb_flushes") == flushes + 1
        finally:
            os.close(fd)
    finally:
        set_llite(cluster.mnt, "attr_writeback_age", "0.2")
    try:
        g = workdir / "g"  # (f's lock went back at the new age: a new file's)
        flushes = llite_counter(cluster.mnt, "wb_flushes")
        fd = os.open(g, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.fchmod(fd, 0o640)
        os.close(fd)
        deadline = time.monotonic() + 30
        while llite_counter(cluster.mnt, "wb_flushes") == flushes:
            assert time.monotonic() < deadline, "the change was never sent"
            time.sleep(0.1)
    finally:
        set_llite(cluster.mnt, "attr_writeback_age", "1")


CHANGER = """
import os, sys
d = sys.argv[1]
for i in range(20):
    p = os.path.join(d, f"f{i}")
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"x" * (i + 1))
    os.fchmod(fd, 0o640 | (i & 7))
    os.close(fd)
    os.utime(p, ns=(i * 10**9, (i + 100) * 10**9))
print("done", flush=True)
"""


def expected(i: int) -> tuple[int, int, int]:
    return 0o640 | (i & 7), i + 1, (i + 100) * 10**9


@pytest.mark.timeout(TIMEOUT)
def test_changes_survive_an_mdt_crash(cluster_factory, client2):
    """Flushed but not committed (replay barrier): replayed. Not flushed at all (age
    60 s): the lock is replayed, the changes stay ours and go when someone looks."""
    c = cluster_factory("--osts", "2", "--fsname", "wb" + secrets.token_hex(3))
    m = c.mnt
    (m / "flushed").mkdir()
    (m / "pending").mkdir()
    os.sync()
    cli("lctl", "-m", m, "set_param", "mdt.*.replay_barrier=1").check()
    set_llite(m, "attr_writeback_age", "0.2")
    subprocess.run([sys.executable, "-c", CHANGER, str(m / "flushed")], check=True,
                   timeout=120)
    deadline = time.monotonic() + 30
    while llite_counter(m, "wb_flushes") < 20:
        assert time.monotonic() < deadline, llite_counter(m, "wb_flushes")
        time.sleep(0.1)
    set_llite(m, "attr_writeback_age", "60")
    subprocess.run([sys.executable, "-c", CHANGER, str(m / "pending")], check=True,
                   timeout=120)
    cli("failover", m, "MDT0000", "--crash").check()
    for d in ("flushed", "pending"):
        for i in range(20):
            st = os.stat(m / d / f"f{i}")
            assert (st.st_mode & 0o7777, st.st_size, st.st_mtime_ns) == expected(i), (d, i)
    # (Once the reads above are answered, recovery is over.)
    assert stat_of(c, "replayed_updates") >= 20
    # A second client sees both: the flushed ones from the MDT (replayed flushes), the
    # pending ones through A's replayed locks, which its looks call back.
    c.mount_client(client2).check()
    for d in ("flushed", "pending"):
        for i in range(20):
            st = os.stat(client2 / d / f"f{i}")
            assert (st.st_mode & 0o7777, st.st_size, st.st_mtime_ns) == expected(i), (d, i)
    c.remember_pids(c.status())


@pytest.mark.timeout(TIMEOUT)
def test_controlled_failover_flushes_and_leaves_nothing_to_replay(cluster_factory,
                                                                  client2):
    c = cluster_factory("--osts", "2", "--fsname", "wf" + secrets.token_hex(3))
    m = c.mnt
    (m / "d").mkdir()
    set_llite(m, "attr_writeback_age", "60")
    set_llite(m, "flush_interval", "600")
    subprocess.run([sys.executable, "-c", CHANGER, str(m / "d")], check=True, timeout=120)
    flushes = llite_counter(m, "wb_flushes")
    res = cli("failover", m, "MDT0000", "--json").check()
    assert '"controlled"' in res.stdout, res.stdout
    assert llite_counter(m, "wb_flushes") >= flushes + 20  # (the barrier's drain)
    assert stat_of(c, "replayed_updates") == 0
    c.mount_client(client2).check()
    for i in range(20):
        st = os.stat(client2 / "d" / f"f{i}")
        assert (st.st_mode & 0o7777, st.st_size, st.st_mtime_ns) == expected(i), i
    c.remember_pids(c.status())


@pytest.mark.timeout(TIMEOUT)
def test_an_idle_write_back_lock_goes_back_and_others_look_without_a_callback(cluster,
                                                                             ab, mnt_b):
    """After the age flush the lock goes back: another client listing a directory this
    one filled a moment ago waits for no callback (one per file otherwise)."""
    a, b = ab
    set_llite(cluster.mnt, "attr_writeback_age", "0.2")
    try:
        given = llite_counter(cluster.mnt, "wb_given_back")
        for i in range(10):
            tar_like(a / f"f{i}", 0o600 | i, (i * 10**9, (i + 1) * 10**9))
        fd = os.open(a / "f0", os.O_RDONLY)  # (flushed by an fsync: given back all the same)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        deadline = time.monotonic() + 30
        while llite_counter(cluster.mnt, "wb_given_back") < given + 10:
            assert time.monotonic() < deadline, "the write-back locks were kept"
            time.sleep(0.1)
        recalls = stat_of(cluster, "writeback_recalls")
        for i in range(10):
            st = os.stat(b / f"f{i}")
            assert (st.st_mode & 0o7777, st.st_mtime_ns, st.st_size) == (
                0o600 | i, (i + 1) * 10**9, 3000)
        assert stat_of(cluster, "writeback_recalls") == recalls
        # A still answers from its cache (its other lock on each file stayed).
        assert os.stat(a / "f3").st_mode & 0o7777 == 0o603
    finally:
        set_llite(cluster.mnt, "attr_writeback_age", "1")
