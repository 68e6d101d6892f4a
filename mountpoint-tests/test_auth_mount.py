"""Authenticated clusters on real mounts: `mlustre up` makes and uses a key by default,
clients with the key mount and the tools work; a wrong or missing key fails the mount
at once with one clear line and leaves nothing mounted or running."""

from __future__ import annotations

import stat

import pytest
from mnthelpers import (
    SPEC_RE,
    Cluster,
    cli,
    is_mounted,
    make_world_dir,
    pids_in_group,
    remove_tree_if_unmounted,
    wait_until,
)


@pytest.fixture
def spare(base_tmp):
    """An empty mount point (and a place for key files) of this test."""
    root = make_world_dir(base_tmp, "auth-")
    (root / "mnt").mkdir()
    yield root
    assert not is_mounted(root / "mnt"), "left mounted"
    remove_tree_if_unmounted(root)


def assert_refused(res, *mentions: str) -> None:
    """A mount that must fail fast, with one line naming the reason, and no leftovers."""
    assert not res.timed_out, "mount hung\n" + res.describe()
    assert res.rc == 1, res.describe()
    assert res.elapsed < 15, f"took {res.elapsed:.1f}s\n" + res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, "expected one line on stderr\n" + res.describe()
    for m in mentions:
        assert m in lines[0], f"stderr should mention {m!r}\n" + res.describe()
    assert wait_until(lambda: not pids_in_group(res.pid), 10), "processes left behind"


@pytest.mark.timeout(120)
def test_up_is_secure_by_default(cluster):
    key = cluster.data / "auth.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f"key: {key}" in cluster.up_result.stdout
    (cluster.mnt / "f").write_text("secret\n")
    assert (cluster.mnt / "f").read_text() == "secret\n"
    # The tools find the cluster's key: they connect to the (secure) targets.
    res = cli("lfs", "check", "servers", cluster.mnt)
    assert res.rc == 0 and "inactive" not in res.stdout, res.describe()
    res = cli("lctl", "-m", cluster.mnt, "get_param", "mdt.*.stats")
    assert res.rc == 0 and "auth_ok" in res.stdout, res.describe()


@pytest.mark.timeout(120)
def test_second_client_with_the_key(cluster, client2):
    res = cli("mount", "--key", cluster.data / "auth.key", cluster.spec, client2)
    assert res.rc == 0, res.describe()
    (cluster.mnt / "g").write_text("shared\n")
    assert (client2 / "g").read_text() == "shared\n"
    assert cli("umount", client2).rc == 0


@pytest.mark.timeout(120)
def test_wrong_key_fails_at_mount(cluster, spare):
    wrong = spare / "wrong.key"
    assert cli("keygen", wrong).rc == 0
    res = cli("mount", "--key", wrong, cluster.spec, spare / "mnt", timeout=60)
    assert_refused(res, "cannot mount", "authentication with", "failed: wrong key")
    assert not is_mounted(spare / "mnt")


@pytest.mark.timeout(120)
def test_missing_key_fails_at_mount(cluster, spare):
    """A spec the machine knows no key for (here the MGS named as localhost)."""
    spec = "localhost" + cluster.spec[len("127.0.0.1"):]
    res = cli("mount", spec, spare / "mnt", timeout=60)
    assert_refused(res, "cannot mount", "requires authentication")
    assert not is_mounted(spare / "mnt")


@pytest.mark.timeout(120)
def test_key_readable_by_others_refused(cluster, spare):
    copy = spare / "copy.key"
    copy.write_bytes((cluster.data / "auth.key").read_bytes())
    copy.chmod(0o644)
    res = cli("mount", "--key", copy, cluster.spec, spare / "mnt", timeout=60)
    assert_refused(res, "chmod 600")


@pytest.mark.timeout(180)
def test_no_auth_cluster(base_tmp, spare):
    """`up --no-auth` runs without a key as before; a client that has a key refuses it."""
    c = Cluster.create(base_tmp, ["--osts", "1", "--no-auth", "--fsname", "noauth"])
    try:
        res = c.up()
        assert "key: none" in res.stdout
        assert not (c.data / "auth.key").exists()
        (c.mnt / "f").write_text("plain\n")
        key = spare / "some.key"
        assert cli("keygen", key).rc == 0
        spec = SPEC_RE.search(res.stdout).group(1)
        res = cli("mount", "--key", key, spec, spare / "mnt", timeout=60)
        assert_refused(res, "does not use authentication")
    finally:
        problems = c.teardown()
        remove_tree_if_unmounted(c.data.parent)
    assert not problems, problems


@pytest.mark.timeout(180)
def test_privacy_cluster(base_tmp, spare):
    """`up --privacy`: frames encrypted; the key file says so, the client and the tools
    work, and a client whose key file has the same secret in integrity mode is refused
    with a clear line (no silent downgrade)."""
    c = Cluster.create(base_tmp, ["--osts", "1", "--privacy", "--fsname", "private"])
    try:
        res = c.up()
        key = c.data / "auth.key"
        assert f"key: {key} (privacy mode)" in res.stdout
        assert key.read_text().split()[2] == "privacy"
        data = bytes(range(256)) * 8192  # 2 MiB: bulk frames as well as small ones
        (c.mnt / "f").write_bytes(data)
        assert (c.mnt / "f").read_bytes() == data
        res = cli("lctl", "-m", c.mnt, "get_param", "mdt.*.stats")
        assert res.rc == 0 and "auth_ok" in res.stdout, res.describe()
        other = spare / "integrity.key"
        other.write_text(" ".join(key.read_text().split()[:2]) + "\n")
        other.chmod(0o600)
        spec = SPEC_RE.search(c.up_result.stdout).group(1)
        res = cli("mount", "--key", other, spec, spare / "mnt", timeout=60)
        assert_refused(res, "server uses privacy mode and this side integrity mode")
    finally:
        problems = c.teardown()
        remove_tree_if_unmounted(c.data.parent)
    assert not problems, problems
