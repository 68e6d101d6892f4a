"""`mlustre lfs` on a real mount: df, setstripe/getstripe, path2fid/fid2path,
getname, check servers, and clear errors for paths that are not on mlustre."""

from __future__ import annotations

import os
import re

import pytest
from mnthelpers import cli

TIMEOUT = 60


def lfs(*args, timeout: float = 45):
    res = cli("lfs", *args, timeout=timeout)
    assert not res.timed_out, "lfs hung\n" + res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    return res


def lfs_ok(*args) -> str:
    return lfs(*args).check().stdout


def assert_error(res, mentions: str) -> None:
    assert res.rc == 1, "expected exit status 1\n" + res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and mentions in lines[0], res.describe()


def stripe(text: str) -> dict[str, str]:
    """lmm_* keys of `lfs getstripe FILE`, and the rows of its object table."""
    out: dict = {"objects": []}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if line.startswith("lmm_"):
            out[fields[0].rstrip(":")] = fields[1]
        elif fields and fields[0].isdigit():
            out["objects"].append((int(fields[0]), int(fields[1])))
    return out


@pytest.mark.timeout(TIMEOUT)
def test_df_lists_mdt_and_osts(cluster):
    out = lfs_ok("df", cluster.mnt)
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["UUID", "1K-blocks", "Used", "Available", "Use%"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    assert set(rows) == {"mlustre-MDT0000_UUID", "mlustre-OST0000_UUID", "mlustre-OST0001_UUID",
                         "filesystem_summary:"}, out
    for row in rows.values():
        total, used, avail = (int(x) for x in row[1:4])
        assert total > 0 and used >= 0 and avail > 0 and re.fullmatch(r"\d+%", row[4]), out
        where = row[5]
        assert where.startswith(str(cluster.mnt)), out
    assert rows["mlustre-OST0001_UUID"][5] == f"{cluster.mnt}[OST:1]"
    ost_total = sum(int(rows[f"mlustre-OST000{i}_UUID"][1]) for i in range(2))
    assert int(rows["filesystem_summary:"][1]) == ost_total
    human = lfs_ok("df", "-h", cluster.mnt)
    assert re.search(r"mlustre-OST0000_UUID\s+[\d.]+[KMGTPE]\s", human), human
    inodes = lfs_ok("df", "-i", cluster.mnt)
    assert inodes.splitlines()[0].split()[1:4] == ["Inodes", "IUsed", "IFree"]
    # without a path: every mlustre mount of this machine, this one included
    assert f"{cluster.mnt}[MDT:0]" in lfs("df").stdout


@pytest.mark.timeout(TIMEOUT)
def test_setstripe_getstripe_dir_and_new_file(cluster, workdir):
    d = workdir / "d"
    d.mkdir()
    assert "no default layout" in lfs_ok("getstripe", d)
    lfs_ok("setstripe", "-c", "2", "-S", "64K", d)
    out = lfs_ok("getstripe", d)
    assert out.splitlines()[1].split() == ["stripe_count:", "2", "stripe_size:", "65536",
                                           "stripe_offset:", "-1"], out
    assert lfs_ok("getstripe", "-c", d).strip() == "2"
    # a file created in it inherits the default
    inherited = d / "inherited"
    inherited.write_bytes(b"x" * 200_000)
    got = stripe(lfs_ok("getstripe", inherited))
    assert got["lmm_stripe_count"] == "2" and got["lmm_stripe_size"] == "65536", got
    # a new file with its own layout, then data
    f = workdir / "sub" / "new"
    f.parent.mkdir()
    lfs_ok("setstripe", "-c", "2", "-S", "1M", "-i", "1", f)
    assert f.exists() and f.stat().st_size == 0
    got = stripe(lfs_ok("getstripe", f))
    assert (got["lmm_stripe_count"], got["lmm_stripe_size"], got["lmm_stripe_offset"]) == (
        "2", "1048576", "1"), got
    assert lfs_ok("getstripe", "-S", f).strip() == "1048576"
    assert lfs_ok("getstripe", "-i", f).strip() == "1"
    f.write_bytes(os.urandom(3 << 20))
    got = stripe(lfs_ok("getstripe", f))
    assert len(got["objects"]) == 2 and {o for o, _ in got["objects"]} == {0, 1}, got
    assert got["objects"][0][0] == 1, got  # starts at OST 1, as asked
    # the xattr agrees
    lov = os.getxattr(f, "lustre.lov").decode()
    assert "stripe_count=2" in lov and "stripe_size=1048576" in lov


@pytest.mark.timeout(TIMEOUT)
def test_setstripe_existing_empty_file_and_file_with_data(cluster, workdir):
    empty = workdir / "empty"
    empty.touch()
    lfs_ok("setstripe", "-c", "2", empty)
    assert lfs_ok("getstripe", "-c", empty).strip() == "2"
    full = workdir / "full"
    full.write_bytes(b"data")
    assert_error(lfs("setstripe", "-c", "2", full),
                 "cannot change the layout of a file with data")
    assert full.read_bytes() == b"data"
    assert_error(lfs("setstripe", "-c", "1", "-S", "3K", workdir / "x"), "multiple of 64K")
    assert_error(lfs("setstripe", "-i", "9", workdir / "y"), "invalid layout")
    assert not (workdir / "x").exists() and not (workdir / "y").exists()
    assert_error(lfs("setstripe", workdir / "z"), "at least one of")


@pytest.mark.timeout(TIMEOUT)
def test_path2fid_fid2path_round_trip(cluster, workdir):
    (workdir / "a" / "b").mkdir(parents=True)
    f = workdir / "a" / "b" / "file"
    f.write_text("x")
    top = workdir / "top"
    top.write_text("y")
    paths = [f, top, workdir / "a", cluster.mnt]
    for p in paths:
        fid = lfs_ok("path2fid", p).strip()
        assert re.fullmatch(r"\[0x[0-9a-f]+:0x[0-9a-f]+:0x[0-9a-f]+\]", fid), fid
        assert lfs_ok("fid2path", cluster.mnt, fid).strip() == str(p)
    assert lfs_ok("path2fid", cluster.mnt).strip() == "[0x200000007:0x1:0x0]"
    many = lfs_ok("path2fid", f, top).splitlines()
    assert [line.split(": ")[0] for line in many] == [str(f), str(top)]
    # a hard link gives one of its paths; a renamed file its new path
    os.link(f, workdir / "link")
    fid = lfs_ok("path2fid", f).strip()
    assert lfs_ok("fid2path", cluster.mnt, fid).strip() in (str(f), str(workdir / "link"))
    os.rename(top, workdir / "a" / "moved")
    fid = lfs_ok("path2fid", workdir / "a" / "moved").strip()
    assert lfs_ok("fid2path", cluster.mnt, fid).strip() == str(workdir / "a" / "moved")
    # gone, unknown, malformed
    gone = workdir / "gone"
    gone.write_text("z")
    fid = lfs_ok("path2fid", gone).strip()
    gone.unlink()
    assert_error(lfs("fid2path", cluster.mnt, fid), "no such file")
    assert_error(lfs("fid2path", cluster.mnt, "[0x200000400:0x7fffffff:0x0]"), "no such file")
    assert_error(lfs("fid2path", cluster.mnt, "nonsense"), "not a FID")


@pytest.mark.timeout(TIMEOUT)
def test_check_servers_all_active(cluster):
    res = lfs("check", "servers", cluster.mnt).check()
    rows = [line.split(None, 2) for line in res.stdout.splitlines()]
    assert [r[0] for r in rows] == ["mlustre-MGS-mgc", "mlustre-MDT0000-mdc",
                                    "mlustre-OST0000-osc", "mlustre-OST0001-osc"], res.stdout
    assert all(r[2] == "active" and re.fullmatch(r"127\.0\.0\.1:\d+", r[1]) for r in rows), rows


@pytest.mark.timeout(TIMEOUT)
def test_getname_names_each_mounts_own_parameters(cluster, workdir, mnt_b):
    """`lfs getname` gives each mount its client's FSNAME-ID: the name under which
    `lctl get_param llite.*` shows that client's parameters and no other's."""
    names = {}
    for mnt in (cluster.mnt, mnt_b):
        name, point = lfs_ok("getname", mnt / workdir.name).split()
        assert point == str(mnt.resolve())
        assert re.fullmatch(r"mlustre-[0-9a-f]{16}", name), name
        names[mnt] = name
    assert names[cluster.mnt] != names[mnt_b]
    # (Every mount of the machine: other tests' too, a dead client's among them, which
    # makes the status 1 with a line on stderr.)
    listed = lfs("getname").stdout.splitlines()
    for mnt, name in names.items():
        assert f"{name} {mnt.resolve()}" in listed, listed
    for mnt, name in names.items():
        out = cli("lctl", "-m", mnt, "get_param", f"llite.{name}.uuid").check().stdout
        assert out.startswith(f"llite.{name}.uuid=") and len(out.splitlines()) == 1, out


@pytest.mark.timeout(TIMEOUT)
def test_errors_outside_mlustre(cluster, scratch):
    local = scratch / "f"
    local.write_text("x")
    for args in (("df", scratch), ("getstripe", local), ("setstripe", "-c", "1", scratch / "n"),
                 ("path2fid", local), ("fid2path", scratch, "[0x200000007:0x1:0x0]"),
                 ("check", "servers", scratch), ("getname", scratch)):
        assert_error(lfs(*args), "not on an mlustre filesystem")
    assert not (scratch / "n").exists()
    assert_error(lfs("getstripe", cluster.mnt / "missing"), "No such file or directory")
    assert_error(lfs("path2fid", cluster.mnt / "missing"), "No such file or directory")
    assert_error(lfs("bogus"), "invalid choice")
    assert_error(lfs("setstripe", "-c", "two", cluster.mnt / "n"), "invalid int value")
