"""The CLI's error paths: bad arguments and impossible requests exit non-zero
with a message on stderr, quickly, and leave nothing mounted or running.
Also the positive shape of `status --json` and of `up`'s output."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
from mnthelpers import (
    SPEC_RE,
    Cluster,
    attempt_up,
    cli,
    is_mounted,
    make_world_dir,
    mlustre_cmd,
    mounts_under,
    pids_in_group,
    proc_starttime,
    run,
    sh,
    wait_until,
)


def assert_cli_error(res, *, within: float = 30, mentions: str | None = None) -> None:
    assert not res.timed_out, "command hung\n" + res.describe()
    assert res.rc not in (0, None), "expected a non-zero exit status\n" + res.describe()
    assert res.stderr.strip(), "expected a message on stderr\n" + res.describe()
    assert res.elapsed < within, f"took {res.elapsed:.1f}s\n" + res.describe()
    assert "Traceback" not in res.stderr, "error reported as a traceback\n" + res.describe()
    if mentions:
        assert mentions in res.stderr, f"stderr should mention {mentions!r}\n" + res.describe()


def assert_no_leftovers(res) -> None:
    """Nothing of the failed command's process group is still running."""
    assert wait_until(lambda: not pids_in_group(res.pid), 10), (
        f"processes left behind: {pids_in_group(res.pid)}\n" + res.describe()
    )


@pytest.fixture
def place(base_tmp):
    """A world-traversable directory with an empty `mnt` and a `data` path."""
    root = make_world_dir(base_tmp, "cli-")
    (root / "mnt").mkdir()
    yield root
    assert not mounts_under(root), f"left mounted: {mounts_under(root)}"


# --------------------------------------------------------------------------
# arguments


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        [],
        ["up"],
        ["mount", "only-one-arg"],
        ["status"],
        ["up", "/tmp", "--osts", "abc"],
    ],
)
def test_bad_arguments(args):
    assert_cli_error(cli(*args))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("osts", ["0", "-1"])
def test_up_rejects_bad_ost_count(place, osts):
    res = attempt_up(place / "mnt", place / "data", "--osts", osts)
    assert_cli_error(res)
    assert not is_mounted(place / "mnt")
    assert_no_leftovers(res)


# --------------------------------------------------------------------------
# up on bad mount points


@pytest.mark.timeout(120)
def test_up_on_missing_mountpoint(place):
    missing = place / "does-not-exist"
    res = attempt_up(missing, place / "data")
    assert_cli_error(res, mentions=str(missing))
    assert not missing.exists()
    assert_no_leftovers(res)


@pytest.mark.timeout(120)
def test_up_on_a_file(place):
    (place / "file").write_text("x")
    res = attempt_up(place / "file", place / "data")
    assert_cli_error(res)
    assert_no_leftovers(res)


@pytest.mark.timeout(120)
def test_up_on_non_empty_mountpoint(place):
    (place / "mnt" / "precious").write_text("keep me\n")
    res = attempt_up(place / "mnt", place / "data")
    assert_cli_error(res)
    assert not is_mounted(place / "mnt")
    assert (place / "mnt" / "precious").read_text() == "keep me\n"
    assert_no_leftovers(res)


@pytest.mark.timeout(180)
def test_up_on_mounted_mountpoint_is_busy(fresh_cluster, place):
    res = attempt_up(fresh_cluster.mnt, place / "data")
    assert_cli_error(res)
    assert_no_leftovers(res)
    # the running cluster is unharmed
    assert is_mounted(fresh_cluster.mnt)
    sh(f"echo ok > {fresh_cluster.mnt}/still-works").check()


@pytest.mark.timeout(180)
def test_up_with_data_of_running_cluster(fresh_cluster, place):
    """Two clusters on one data directory would corrupt it."""
    res = attempt_up(place / "mnt", fresh_cluster.data)
    assert_cli_error(res)
    assert not is_mounted(place / "mnt")
    assert_no_leftovers(res)
    sh(f"echo ok > {fresh_cluster.mnt}/still-works").check()


# --------------------------------------------------------------------------
# mount / umount / status / down on bad targets


@pytest.mark.timeout(90)
def test_mount_unreachable_spec_fails_quickly(place):
    res = cli("mount", "127.0.0.1:1:/x", place / "mnt", timeout=60)
    assert_cli_error(res, within=30)
    assert not is_mounted(place / "mnt")
    assert_no_leftovers(res)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "spec", ["not-a-spec", "127.0.0.1:/x", "127.0.0.1:99999:/x", "127.0.0.1:1234:"]
)
def test_mount_malformed_spec(place, spec):
    res = cli("mount", spec, place / "mnt")
    assert_cli_error(res, within=10)
    assert not is_mounted(place / "mnt")


@pytest.mark.timeout(90)
def test_mount_on_missing_mountpoint(cluster, place):
    res = cli("mount", cluster.spec, place / "nope")
    assert_cli_error(res)
    assert not (place / "nope").exists()


@pytest.mark.timeout(90)
def test_mount_on_mounted_mountpoint_is_busy(cluster):
    res = cli("mount", cluster.spec, cluster.mnt)
    assert_cli_error(res)
    sh(f"ls {cluster.mnt} >/dev/null").check()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["down"], ["umount"]])
def test_commands_on_a_plain_directory(place, command):
    target = place / "mnt"
    res = cli(command[0], target, *command[1:])
    assert_cli_error(res)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["status", "down", "umount"])
def test_commands_on_missing_path(place, command):
    assert_cli_error(cli(command, place / "missing"))


# --------------------------------------------------------------------------
# positive shapes


@pytest.mark.timeout(240)
def test_status_json_shape_with_options(base_tmp):
    c = Cluster.create(base_tmp, ["--osts", "3", "--fsname", "tfs"])
    try:
        c.up()
        assert c.spec and c.spec.endswith(":/tfs"), c.spec
        host, port, _ = c.spec.split(":", 2)
        assert host and port.isdigit()
        st = c.status()
        assert st["fsname"] == "tfs"
        assert st["spec"] == c.spec
        assert os.path.realpath(st["data"]) == os.path.realpath(c.data)
        kinds = [s["kind"].lower() for s in st["servers"]]
        assert kinds.count("ost") == 3, st["servers"]
        assert kinds.count("mgs") == 1 and kinds.count("mdt") >= 1, st["servers"]
        for s in st["servers"]:
            assert {"name", "kind", "nid", "pid", "state"} <= set(s), s
            assert s["nid"] and s["name"] and s["state"], s
            assert proc_starttime(s["pid"]) is not None, f"server not running: {s}"
        assert len({s["name"] for s in st["servers"]}) == len(st["servers"])
        mounts = {e["mountpoint"]: e["pid"] for e in st["clients"]}
        assert str(c.mnt) in mounts, st["clients"]
        assert proc_starttime(mounts[str(c.mnt)]) is not None
        # the OSTs serve data: a file larger than one stripe round-trips
        sh(f"head -c 5000000 /dev/urandom > {c.mnt}/f && cmp {c.mnt}/f {c.mnt}/f").check()
    finally:
        c.teardown()


@pytest.mark.timeout(240)
def test_up_output_can_be_captured_by_a_pipe(base_tmp):
    """`spec=$(mlustre up ...)` must return: daemons may not keep stdout open."""
    c = Cluster.create(base_tmp)
    cmd = shlex.join(mlustre_cmd() + ["up", str(c.mnt), "--data", str(c.data)])
    try:
        res = run(
            ["bash", "-c", f"out=$({cmd}); rc=$?; printf '%s\\n' \"$out\"; exit $rc"], timeout=90
        )
        c.up_result, c.up_pgid = res, res.pid
        if is_mounted(c.mnt):
            try:
                c.remember_pids(c.status())
            except AssertionError:
                c._remember_group()
        assert not res.timed_out, "`$(mlustre up ...)` hangs: a daemon holds the pipe\n" + (
            res.describe()
        )
        res.check()
        assert SPEC_RE.search(res.stdout), res.describe()
    finally:
        c.teardown()


@pytest.mark.timeout(60)
def test_status_json_is_pure_json(cluster):
    res = cli("status", cluster.mnt, "--json")
    res.check()
    json.loads(res.stdout)
    human = cli("status", cluster.mnt)
    human.check()
    assert re.search(r"OST", human.stdout, re.IGNORECASE), human.describe()
