"""Lost replies on a real mount: with the MDT told (fail_loc) to drop the reply of
its next update and close the connection, the client reconnects and resends, and the
MDT answers from its reply log instead of executing the update twice - so mkdir,
create, rename and unlink all succeed exactly once."""

from __future__ import annotations

import os
import re

import pytest
from mnthelpers import cli

TIMEOUT = 90


def fsname(cluster) -> str:
    return cluster.spec.rsplit(":/", 1)[1]


def mdt_param(cluster, name: str) -> str:
    return f"mdt.{fsname(cluster)}-MDT0000.{name}"


def set_fail(cluster, value: str) -> None:
    cli("lctl", "-m", cluster.mnt, "set_param", f"{mdt_param(cluster, 'fail_loc')}={value}").check()


def reconstructed(cluster) -> int:
    out = cli("lctl", "-m", cluster.mnt, "get_param", "-n",
              mdt_param(cluster, "stats")).check().stdout
    m = re.search(r"^reconstructed\s+(\d+) samples", out, re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.timeout(TIMEOUT)
def test_updates_whose_reply_is_lost_happen_once(cluster, workdir):
    before = reconstructed(cluster)
    try:
        set_fail(cluster, "drop_reply:MDS_REINT:once")
        (workdir / "d").mkdir()  # EEXIST if executed twice
        set_fail(cluster, "drop_reply:MDS_REINT:once")
        fd = os.open(workdir / "d" / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, b"data")
        os.close(fd)
        set_fail(cluster, "drop_reply:MDS_REINT:once")
        os.rename(workdir / "d" / "f", workdir / "d" / "g")  # ENOENT if twice
        assert (workdir / "d" / "g").read_bytes() == b"data"
        set_fail(cluster, "drop_reply:MDS_REINT:once")
        os.unlink(workdir / "d" / "g")  # ENOENT if twice
        assert os.listdir(workdir / "d") == []
    finally:
        set_fail(cluster, "none")
    # Each dropped reply closes the connection: the update it answered is resent and
    # its reply reconstructed (and so is any other request then in flight, such as a
    # release's size update, which nobody waits for).
    assert reconstructed(cluster) - before >= 4
    out = cli("lctl", "-m", cluster.mnt, "get_param",
              mdt_param(cluster, "fail_loc")).check().stdout
    assert out.strip().endswith("=none"), out


@pytest.mark.timeout(TIMEOUT)
def test_bad_fail_loc_is_refused(cluster):
    res = cli("lctl", "-m", cluster.mnt, "set_param",
              f"{mdt_param(cluster, 'fail_loc')}=explode:MDS_REINT")
    assert res.rc == 1 and "unknown fail_loc action" in res.stderr, res.describe()
