"""Root squash on a real mount: `mlustre up --root-squash UID:GID`; root's calls are
served as UID:GID by the MDT (its own directory is then not writable, what it makes
belongs to UID:GID), unless the client's NID is exempted with
`lctl set_param mdt.*.nosquash_nids=`; the setting survives a failover of the MDT."""

from __future__ import annotations

import os
import secrets

import pytest
from mnthelpers import cli

TIMEOUT = 120


@pytest.mark.timeout(TIMEOUT)
def test_root_is_squashed_unless_exempt(cluster_factory):  # noqa: F811
    c = cluster_factory("--osts", "1", "--fsname", "rs" + secrets.token_hex(3),
                        "--root-squash", "65534:65534")
    assert os.geteuid() == 0, "these tests run as root"
    with pytest.raises(PermissionError):
        os.mkdir(c.mnt / "denied")  # the root directory is root's, 0755
    cli("lctl", "-m", c.mnt, "set_param", "mdt.*.nosquash_nids=127.0.0.1").check()
    os.mkdir(c.mnt / "shared")
    assert os.stat(c.mnt / "shared").st_uid == 0  # exempt: root is root
    os.chmod(c.mnt / "shared", 0o777)
    (c.mnt / "secret").write_text("root only")
    os.chmod(c.mnt / "secret", 0o600)
    cli("lctl", "-m", c.mnt, "set_param", "mdt.*.nosquash_nids=NONE").check()
    (c.mnt / "shared" / "made").write_text("by squashed root")
    st = os.stat(c.mnt / "shared" / "made")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    with pytest.raises(PermissionError):
        (c.mnt / "secret").read_text()
    cli("failover", c.mnt, "MDT0000").check()
    (c.mnt / "shared" / "after").write_text("still squashed")
    assert os.stat(c.mnt / "shared" / "after").st_uid == 65534
    out = cli("lctl", "-m", c.mnt, "get_param", "mdt.*.root_squash").check().stdout
    assert out.strip().endswith("root_squash=65534:65534"), out
    c.remember_pids(c.status())


@pytest.mark.timeout(TIMEOUT)
def test_bad_root_squash_values_are_refused(cluster, tmp_path):
    mnt = tmp_path / "m"
    mnt.mkdir()
    res = cli("up", mnt, "--data", tmp_path / "data", "--root-squash", "nobody")
    assert res.rc != 0 and "UID:GID" in res.stderr, res.describe()
    res = cli("lctl", "-m", cluster.mnt, "set_param", "mdt.*.nosquash_nids=x.y")
    assert res.rc != 0 and "not an address" in res.stderr, res.describe()
