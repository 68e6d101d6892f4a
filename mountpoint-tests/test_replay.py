"""Replay of uncommitted updates: with the MDT's replay barrier set
(`lctl set_param mdt.*.replay_barrier=1`: nothing is committed any more, as Lustre's
replay_barrier), a kill -9 of the MDT loses every update made since; the client
replays them, in transno order with their first transnos, when the MDT comes back,
and a created inode keeps its number and its OST objects. Each metadata update is
covered: create (with data), mkdir, unlink, rename, link, symlink, setattr, xattr."""

from __future__ import annotations

import os
import re
import secrets

import pytest
from mnthelpers import cli

TIMEOUT = 180


def stat_of(c, key: str) -> int:
    res = cli("lctl", "-m", c.mnt, "get_param", "mdt.*.stats").check()
    m = re.search(rf"^{key}\s+(\d+)\s+samples", res.stdout, re.MULTILINE)
    return int(m.group(1)) if m else 0


@pytest.mark.timeout(TIMEOUT)
def test_updates_lost_by_a_crash_are_replayed(cluster_factory):  # noqa: F811
    c = cluster_factory("--osts", "2", "--fsname", "rp" + secrets.token_hex(3))
    m = c.mnt
    (m / "old").write_text("before the barrier")
    (m / "gone").write_text("to be unlinked")
    (m / "moved").write_text("to be renamed")
    os.sync()
    cli("lctl", "-m", m, "set_param", "mdt.*.replay_barrier=1").check()
    # Updates after the barrier: answered, never committed.
    (m / "d").mkdir()
    (m / "d" / "new").write_bytes(b"n" * 200_000)
    ino_new = os.stat(m / "d" / "new").st_ino
    os.unlink(m / "gone")
    os.rename(m / "moved", m / "d" / "renamed")
    os.link(m / "old", m / "d" / "hard")
    os.symlink("old", m / "sym")
    os.chmod(m / "old", 0o600)
    os.setxattr(m / "old", "user.k", b"v")
    fd = os.open(m / "d" / "new", os.O_RDONLY)  # held open across the crash
    try:
        cli("failover", m, "MDT0000", "--crash").check()
        assert os.read(fd, 5) == b"nnnnn"
    finally:
        os.close(fd)
    assert sorted(os.listdir(m)) == ["d", "old", "sym"]
    assert sorted(os.listdir(m / "d")) == ["hard", "new", "renamed"]
    assert (m / "d" / "new").read_bytes() == b"n" * 200_000
    assert os.stat(m / "d" / "new").st_ino == ino_new  # the same inode as before
    assert (m / "d" / "renamed").read_text() == "to be renamed"
    assert os.stat(m / "old").st_nlink == 2 and os.readlink(m / "sym") == "old"
    assert os.stat(m / "old").st_mode & 0o777 == 0o600
    assert os.getxattr(m / "old", "user.k") == b"v"
    assert stat_of(c, "replayed_updates") >= 8
    # And it all holds after a clean restart of the whole cluster.
    c.remember_pids(c.status())
