"""`mlustre lctl` against a real cluster: devices, import states, settable client and
target parameters, globbing, and one-line errors. Other clusters may run on this
machine at the same time (other test workers' clusters too, some with the same fsname),
so every call is scoped to this module's mount (`lctl -m MNT`: its client and its
cluster's targets), and client parameters are looked up by this mount's client id."""

from __future__ import annotations

import os
import re

import pytest
from mnthelpers import cli

from mlustre import registry
from mlustre.bench.rpccount import parse_stats
from mlustre.fuse_client.md_cache import MD_LRU_SIZE

TIMEOUT = 60
SCOPE: list[str] = []  # ["-m", MNT] of this module's cluster (the `scoped` fixture)


def lctl(*args, timeout: float = 45):
    res = cli("lctl", *SCOPE, *args, timeout=timeout)
    assert not res.timed_out, "lctl hung\n" + res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    return res


def lctl_ok(*args) -> str:
    return lctl(*args).check().stdout


def params(text: str) -> dict[str, str]:
    """name=value lines (single-line values only)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def assert_error(res, mentions: str) -> None:
    assert res.rc == 1, "expected exit status 1\n" + res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and mentions in lines[0], res.describe()


@pytest.fixture(scope="module", autouse=True)
def scoped(cluster):
    SCOPE[:] = ["-m", str(cluster.mnt)]
    yield
    SCOPE.clear()


@pytest.fixture(scope="module")
def cid(cluster):
    info = registry.find_mount(str(cluster.mnt))
    assert info and info.get("admin_socket"), info
    assert oct(os.stat(info["admin_socket"]).st_mode & 0o777) == "0o600"
    return info["uuid"].replace("-", "")[:16]


@pytest.mark.timeout(TIMEOUT)
def test_imports_are_full(cluster, cid):
    out = lctl_ok("get_param", f"mdc.*-mdc-{cid}.import", f"osc.*-osc-{cid}.import")
    blocks = re.findall(r"^(\w+)\.(\S+)\.import=\n((?:.+\n?)+?)(?=^\w+\.\S+=|\Z)", out, re.M)
    kinds = sorted(kind for kind, _, _ in blocks)
    assert kinds == ["mdc", "osc", "osc"], out
    for _, _, body in blocks:
        assert "state: FULL" in body.splitlines(), out


@pytest.mark.timeout(TIMEOUT)
def test_dirty_bytes_and_max_dirty_mb(cluster, cid):
    (cluster.mnt / "dirty").write_bytes(b"x" * 100_000)
    got = params(lctl_ok("get_param", f"osc.*-{cid}.cur_dirty_bytes"))
    assert len(got) == 2 and all(v.isdigit() for v in got.values()), got
    out = lctl_ok("set_param", f"osc.*-{cid}.max_dirty_mb=64")
    assert sorted(params(out).values()) == ["64", "64"], out
    values = lctl_ok("get_param", "-n", f"osc.*-{cid}.max_dirty_mb").split()
    assert values == ["64", "64"]
    assert lctl_ok("get_param", "-n", f"llite.*-{cid}.max_dirty_mb").split() == ["64"]
    lctl_ok("set_param", f"llite.*-{cid}.max_cached_mb=128")
    assert lctl_ok("get_param", "-n", f"llite.*-{cid}.max_cached_mb").split() == ["128"]
    # Writing still works under the new limit.
    (cluster.mnt / "after").write_bytes(b"y" * 300_000)
    assert (cluster.mnt / "after").read_bytes() == b"y" * 300_000


@pytest.mark.timeout(TIMEOUT)
def test_target_commit_interval(cluster):
    ost = f"{cluster_fsname(cluster)}-OST0001"
    out = lctl_ok("set_param", f"obdfilter.{ost}.commit_interval=0.5")
    assert f"obdfilter.{ost}.commit_interval=0.5" in out.splitlines()
    got = params(lctl_ok("get_param", f"obdfilter.{ost}.*"))
    assert got[f"obdfilter.{ost}.commit_interval"] == "0.5"
    assert got[f"obdfilter.{ost}.uuid"] == f"{ost}_UUID"
    assert int(got[f"obdfilter.{ost}.num_exports"]) >= 1
    lctl_ok("set_param", f"obdfilter.{ost}.commit_interval=1")


def cluster_fsname(cluster) -> str:
    return cluster.spec.rsplit("/", 1)[1]


@pytest.mark.timeout(TIMEOUT)
def test_list_param_globs(cluster, cid):
    names = lctl_ok("list_param", f"llite.*-{cid}.*").split()
    assert {n.rsplit(".", 1)[1] for n in names} >= {
        "max_cached_mb", "cached_bytes", "dirty_bytes", "inodes", "open_files"}
    fs = cluster_fsname(cluster)
    names = lctl_ok("list_param", f"*.{fs}-MDT0000.last_*").split()
    assert f"mdt.{fs}-MDT0000.last_transno" in names
    assert f"mdt.{fs}-MDT0000.last_committed" in names
    marked = lctl_ok("list_param", "-F", f"obdfilter.{fs}-OST0000.commit_*").split()
    assert f"obdfilter.{fs}-OST0000.commit_interval=" in marked


@pytest.mark.timeout(TIMEOUT)
def test_dl_lists_devices(cluster, cid):
    rows = [line.split() for line in lctl_ok("dl").splitlines()]
    assert all(r[1] == "UP" and len(r) == 6 for r in rows), rows
    fs = cluster_fsname(cluster)
    names = {(r[2], r[3]) for r in rows}
    assert ("mdc", f"{fs}-MDT0000-mdc-{cid}") in names
    assert ("osc", f"{fs}-OST0000-osc-{cid}") in names
    assert ("osc", f"{fs}-OST0001-osc-{cid}") in names
    assert any(t == "mgc" for t, _ in names)
    for dev in [("mgs", f"{fs}-MGS"), ("mdt", f"{fs}-MDT0000"),
                ("obdfilter", f"{fs}-OST0000"), ("obdfilter", f"{fs}-OST0001")]:
        assert dev in names, rows
    assert [int(r[0]) for r in rows] == list(range(len(rows)))


@pytest.mark.timeout(TIMEOUT)
def test_errors_are_one_line(cluster, cid):
    here = ()  # (every call is scoped to this mount: see SCOPE)
    assert_error(lctl(*here, "get_param", "no.such.param"), "no such parameter")
    assert_error(lctl(*here, "set_param", "no.such.param=1"), "no such parameter")
    assert_error(lctl(*here, "set_param", f"osc.*-{cid}.max_dirty_mb=lots"), "not a whole number")
    assert_error(lctl(*here, "set_param", f"osc.*-{cid}.max_dirty_mb=0"), "between 1 and")
    fs = cluster_fsname(cluster)
    assert_error(lctl(*here, "set_param", f"obdfilter.{fs}-OST0000.commit_interval=soon"),
                 "not a number")
    assert_error(lctl(*here, "set_param", f"obdfilter.{fs}-OST0000.commit_interval=-1"),
                 "greater than 0")
    assert_error(lctl(*here, "set_param", f"mdt.{fs}-MDT0000.uuid=x"), "read-only")
    assert_error(lctl(*here, "set_param", f"osc.*-{cid}.max_dirty_mb"), "NAME=VALUE")
    assert_error(lctl(*here, "frobnicate"), "invalid choice")
    assert params(lctl_ok("get_param", f"osc.*-{cid}.max_dirty_mb"))  # still set


@pytest.mark.timeout(TIMEOUT)
def test_client_lock_namespaces(cluster, cid, tmp_path):
    """A mount's locks are visible and its LRU can be cleared, as with Lustre's
    ldlm.namespaces.*.{lock_count,lru_size,stats}."""
    path = cluster.mnt / "locked"
    path.write_bytes(b"y" * 5000)
    assert path.read_bytes() == b"y" * 5000
    os.stat(path)
    counts = params(lctl_ok("get_param", f"ldlm.namespaces.*-{cid}.lock_count"))
    mdc = [int(v) for k, v in counts.items() if "-mdc-" in k]
    osc = [int(v) for k, v in counts.items() if "-osc-" in k]
    assert len(mdc) == 1 and mdc[0] >= 1 and len(osc) == 2 and sum(osc) >= 1, counts
    stats = lctl_ok("get_param", f"ldlm.namespaces.*-MDT0000-mdc-{cid}.stats")
    assert re.search(r"^intent_grants\s+[1-9]\d* samples", stats, re.M), stats
    dump = lctl_ok("get_param", f"ldlm.namespaces.*-OST*-osc-{cid}.locks")
    assert re.search(r"EXTENT P[RW] Extent\(start=0, end=18446744073709551615\) granted", dump)
    lctl_ok("set_param", f"ldlm.namespaces.*-{cid}.lru_size=clear")
    for _ in range(100):  # what stays: the SIR barrier's CR lock, never in the LRU
        counts = params(lctl_ok("get_param", f"ldlm.namespaces.*-OST*-osc-{cid}.lock_count"))
        if all(v == "1" for v in counts.values()):
            break
    assert all(v == "1" for v in counts.values()), counts
    dump = lctl_ok("get_param", f"ldlm.namespaces.*-OST*-osc-{cid}.locks")
    assert len(re.findall(r"EXTENT CR .* granted", dump)) == 2, dump
    assert path.read_bytes() == b"y" * 5000  # read again under a new lock
    size = params(lctl_ok("get_param", f"ldlm.namespaces.*-MDT0000-mdc-{cid}.lru_size"))
    assert list(size.values()) == [str(MD_LRU_SIZE)], size
    assert_error(lctl("-m", str(cluster.mnt), "set_param", f"ldlm.namespaces.*-{cid}.lru_size=-3"),
                 "lru_size")


@pytest.mark.timeout(TIMEOUT)
def test_mount_option_scopes_to_one_filesystem(cluster, cid, tmp_path):
    out = lctl_ok("-m", str(cluster.mnt), "get_param", "mdt.*.uuid", "llite.*.uuid")
    lines = out.splitlines()
    assert len([x for x in lines if x.startswith("mdt.")]) == 1, out
    assert [x for x in lines if x.startswith("llite.")] == [
        x for x in lines if x.startswith("llite.") and cid in x], out
    assert_error(lctl("-m", str(tmp_path), "get_param", "mdt.*.uuid"),
                 "not an mlustre mount")


def stat_counts(*patterns: str):
    """Counters of this mount's client and its cluster's targets, by kind (rpc-count's
    parser: what the lead's measurements rely on)."""
    return parse_stats(lctl_ok("get_param", *patterns))


@pytest.mark.timeout(TIMEOUT)
def test_per_operation_counters_of_one_create(cluster, cid):
    """One create+write+fsync+close counts, at least, the FUSE requests it is made of
    (llite.*.stats) and the RPCs that must carry it (mdc/osc.*.stats), and the MDT and
    an OST saw them (mdt/obdfilter.*.stats). Only lower bounds: how many lookups or
    getattrs the kernel adds is its business."""
    fs = cluster_fsname(cluster)
    patterns = (f"llite.*-{cid}.stats", f"mdc.*-{cid}.stats", f"osc.*-{cid}.stats",
                f"mdt.{fs}-MDT0000.stats", f"obdfilter.{fs}-OST*.stats")
    before = stat_counts(*patterns)
    fd = os.open(cluster.mnt / "counted-create", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        assert os.write(fd, b"12345") == 5
        os.fsync(fd)
    finally:
        os.close(fd)
    after = stat_counts(*patterns)

    def delta(kind: str, name: str) -> int:
        return after.get(kind, {}).get(name, 0) - before.get(kind, {}).get(name, 0)

    assert delta("llite", "create") == 1, (before, after)
    assert delta("llite", "write_bytes") >= 1 and delta("llite", "write_bytes.bytes") == 5
    assert delta("llite", "close") >= 1 and delta("llite", "flush") >= 1
    assert delta("llite", "fsync") == 1
    assert delta("mdc", "req.MDS_REINT") >= 1
    assert delta("osc", "req.OST_WRITE") >= 1
    assert delta("mdt", "req.MDS_REINT") >= 1
    assert delta("obdfilter", "req.OST_WRITE") >= 1
    os.unlink(cluster.mnt / "counted-create")
    # The client's counters are per request type; the older ones are still there.
    assert "md_rpcs" in after["llite"] and "md_cache_hits" in after["llite"]
