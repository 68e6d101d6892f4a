"""Open replay: files held open across an MDT restart stay usable - written, read,
closed - and an open-unlinked file keeps its data, because the client re-opens its
files on the new MDT instance within the recovery window, after which the MDT
destroys only the unlinked inodes nobody re-opened."""

from __future__ import annotations

import os
import re

import pytest
from conftest import _cluster_lifetime
from mnthelpers import cli, wait_until

TIMEOUT = 120


@pytest.fixture
def short_window_cluster(base_tmp):
    yield from _cluster_lifetime(base_tmp, ["--osts", "2", "--recovery-window", "2"])


def mdt_stat(cluster, name: str) -> int:
    fs = cluster.spec.rsplit(":/", 1)[1]
    out = cli("lctl", "-m", cluster.mnt, "get_param", "-n",
              f"mdt.{fs}-MDT0000.stats").check().stdout
    m = re.search(rf"^{name}\s+(\d+) samples", out, re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.timeout(TIMEOUT)
def test_open_files_survive_an_mdt_restart(short_window_cluster):
    c = short_window_cluster
    kept = c.mnt / "kept"
    gone = c.mnt / "gone"
    fd_kept = os.open(kept, os.O_CREAT | os.O_RDWR, 0o644)
    fd_gone = os.open(gone, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd_kept, b"before ")
        os.write(fd_gone, b"unlinked but open " * 1000)
        os.fsync(fd_gone)
        os.unlink(gone)
        cli("failover", c.mnt, "MDT0000").check()
        # The restarted MDT (its counters start at 0) destroys unreferenced orphans when
        # its window ends.
        assert wait_until(lambda: mdt_stat(c, "orphan_cleanups") >= 1, 30)
        assert mdt_stat(c, "open_replays") == 2
        os.write(fd_kept, b"after")
        assert os.pread(fd_gone, 18, 0) == b"unlinked but open "
        assert os.fstat(fd_gone).st_nlink == 0
        assert os.fstat(fd_gone).st_size == 18000
    finally:
        os.close(fd_kept)
        os.close(fd_gone)
    assert kept.read_bytes() == b"before after"
    assert not gone.exists()
