"""Unit tests for the pure helpers of mlustre.tools.lfs: sizes, layouts, tables, mountinfo."""

from __future__ import annotations

import pytest

from mlustre.protocol.fid import Fid, ino_of
from mlustre.tools import lfs
from mlustre.tools.lfs import LfsError


@pytest.mark.parametrize(("text", "value"), [
    ("4096", 4096), ("64K", 65536), ("64k", 65536), ("1M", 1 << 20), ("1m", 1 << 20),
    ("2G", 2 << 30), ("1T", 1 << 40), ("1MB", 1 << 20), ("4MiB", 4 << 20), (" 128K ", 128 << 10),
])  # fmt: skip
def test_parse_size(text: str, value: int) -> None:
    assert lfs.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1M", "1X", "1 M", "0x10", "K1", "1MM"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        lfs.parse_size(text)


@pytest.mark.parametrize(("n", "text"), [
    (0, "0"), (1023, "1023"), (1024, "1.0K"), (1536, "1.5K"), (1 << 20, "1.0M"),
    (int(7.8 * (1 << 30)), "7.8G"), (3 << 40, "3.0T"), (5 << 60, "5.0E"), (5000 << 60, "5000.0E"),
])  # fmt: skip
def test_human_size(n: int, text: str) -> None:
    assert lfs.human_size(n) == text


def test_use_percent_rounds_up() -> None:
    assert lfs.use_percent(0, 100) == "0%"
    assert lfs.use_percent(1, 1000) == "1%"
    assert lfs.use_percent(50, 50) == "50%"
    assert lfs.use_percent(100, 0) == "100%"
    assert lfs.use_percent(0, 0) == "-"


def test_parse_lov_file_and_dir() -> None:
    f = lfs.parse_lov(b"stripe_count=2 stripe_size=1048576 stripe_offset=0 objects=0:1,1:7")
    assert f == {"stripe_count": 2, "stripe_size": 1048576, "stripe_offset": 0,
                 "objects": [(0, 1), (1, 7)]}
    assert lfs.parse_lov("stripe_count=-1") == {"stripe_count": -1}
    with pytest.raises(ValueError):
        lfs.parse_lov("stripe_count")


def test_format_lov_only_given_keys() -> None:
    assert lfs.format_lov(2, None, None) == b"stripe_count=2"
    assert lfs.format_lov(2, 65536, -1) == b"stripe_count=2 stripe_size=65536 stripe_offset=-1"
    assert lfs.format_lov(None, 1 << 20, 1) == b"stripe_size=1048576 stripe_offset=1"


def test_check_stripe_args() -> None:
    lfs.check_stripe_args(-1, None, None)
    lfs.check_stripe_args(None, 64 << 10, 0)
    for bad in [(None, None, None), (-2, None, None), (None, 1000, None), (None, 0, None),
                (None, None, -2)]:
        with pytest.raises(LfsError):
            lfs.check_stripe_args(*bad)


def test_format_file_stripe() -> None:
    out = lfs.format_file_stripe("/mnt/f", {"stripe_count": 2, "stripe_size": 1048576,
                                            "stripe_offset": 1, "objects": [(1, 5), (0, 26)]})
    lines = out.splitlines()
    assert lines[0] == "/mnt/f"
    assert lines[1].split() == ["lmm_stripe_count:", "2"]
    assert lines[2].split() == ["lmm_stripe_size:", "1048576"]
    assert lines[3].split() == ["lmm_pattern:", "raid0"]
    assert lines[4].split() == ["lmm_stripe_offset:", "1"]
    assert lines[5].split() == ["obdidx", "objid", "objid", "group"]
    assert lines[6].split() == ["1", "5", "0x5", "0"]
    assert lines[7].split() == ["0", "26", "0x1a", "0"]
    assert len(lines) == 8


def test_format_dir_stripe() -> None:
    assert "no default layout" in lfs.format_dir_stripe("/mnt/d", None)
    out = lfs.format_dir_stripe("/mnt/d", {"stripe_count": 2})
    assert out.splitlines() == ["/mnt/d", "stripe_count:  2 stripe_size:   0 stripe_offset: -1"]


MDT = {"files": 10, "ffree": 90, "namemax": 255}
OST = {"bsize": 4096, "blocks": 1000, "bfree": 750, "bavail": 700, "files": 500, "ffree": 400}


def test_df_rows_blocks() -> None:
    rows, summary = lfs.df_rows("fs", "/mnt", MDT, {1: OST, 0: OST})
    assert [r.uuid for r in rows] == ["fs-MDT0000_UUID", "fs-OST0000_UUID", "fs-OST0001_UUID"]
    assert [r.where for r in rows] == ["/mnt[MDT:0]", "/mnt[OST:0]", "/mnt[OST:1]"]
    assert (rows[0].total, rows[0].used, rows[0].avail, rows[0].inodes) == (100, 10, 90, True)
    assert (rows[1].total, rows[1].used, rows[1].avail) == (4000, 1000, 2800)
    assert (summary.uuid, summary.total, summary.used, summary.avail, summary.where) == (
        "filesystem_summary:", 8000, 2000, 5600, "/mnt")


def test_df_rows_inodes() -> None:
    rows, summary = lfs.df_rows("fs", "/mnt", MDT, {0: OST}, inodes=True)
    assert (rows[1].total, rows[1].used, rows[1].avail) == (500, 100, 400)
    assert (summary.total, summary.used, summary.avail) == (100, 10, 90)


def test_format_df_blocks_and_human() -> None:
    rows, summary = lfs.df_rows("fs", "/mnt", MDT, {0: OST})
    lines = lfs.format_df(rows, summary).splitlines()
    assert lines[0].split() == ["UUID", "1K-blocks", "Used", "Available", "Use%", "Mounted", "on"]
    assert lines[1].split() == ["fs-MDT0000_UUID", "100", "10", "90", "10%", "/mnt[MDT:0]"]
    assert lines[2].split() == ["fs-OST0000_UUID", "4000", "1000", "2800", "27%", "/mnt[OST:0]"]
    assert lines[3] == ""
    assert lines[4].split() == ["filesystem_summary:", "4000", "1000", "2800", "27%", "/mnt"]
    human = lfs.format_df(rows, summary, human=True).splitlines()
    assert human[0].split()[1] == "bytes"
    assert human[1].split()[1:4] == ["100", "10", "90"]  # inodes stay counts
    assert human[2].split()[1:4] == ["3.9M", "1000.0K", "2.7M"]
    inodes = lfs.format_df(*lfs.df_rows("fs", "/mnt", MDT, {0: OST}, inodes=True), inodes=True)
    assert inodes.splitlines()[0].split()[1:5] == ["Inodes", "IUsed", "IFree", "IUse%"]


def test_format_check() -> None:
    out = lfs.format_check([("fs-MDT0000-mdc", "127.0.0.1:1", "active"),
                            ("fs-OST0000-osc", "127.0.0.1:2", "inactive: refused")])
    assert [line.split(None, 2) for line in out.splitlines()] == [
        ["fs-MDT0000-mdc", "127.0.0.1:1", "active"],
        ["fs-OST0000-osc", "127.0.0.1:2", "inactive: refused"]]


def test_parse_mountinfo() -> None:
    text = (
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "43 27 0:40 / /tmp/a\\040b rw,nosuid - fuse.mlustre 127.0.0.1:35863:/dev rw,user_id=0\n"
        "44 27 0:41 / /tmp/other rw - fuse.sshfs host:/x rw\n"
        "45 27 0:42 / /mnt/l rw shared:1 master:2 - fuse.mlustre 10.0.0.1:9,10.0.0.2:9:/fs rw\n"
    )
    assert lfs.parse_mountinfo(text) == [
        lfs.Mount("/tmp/a b", "127.0.0.1:35863:/dev"),
        lfs.Mount("/mnt/l", "10.0.0.1:9,10.0.0.2:9:/fs")]


def test_mount_of_picks_the_deepest_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lfs, "mlustre_mounts", lambda: [
        lfs.Mount("/mnt/a", "h:1:/one"), lfs.Mount("/mnt/a/b", "h:2:/two")])
    assert lfs.mount_of("/mnt/a/x").spec == "h:1:/one"
    assert lfs.mount_of("/mnt/a/b/c/d").spec == "h:2:/two"
    assert lfs.mount_of("/mnt/a").spec == "h:1:/one"
    with pytest.raises(LfsError, match="not on an mlustre filesystem"):
        lfs.mount_of("/mnt/ab")


def test_join_mount_path() -> None:
    assert lfs.join_mount_path("/mnt/l", b"") == b"/mnt/l"
    assert lfs.join_mount_path("/mnt/l/", b"d/f") == b"/mnt/l/d/f"
    assert lfs.join_mount_path("/", b"x") == b"/x"


def test_fid_of_stat_round_trips(tmp_path) -> None:
    st = (tmp_path / "f").touch() or (tmp_path / "f").stat()
    fid = Fid.parse(lfs.fid_of_stat(st))
    assert ino_of(fid) == st.st_ino


def test_argument_errors_are_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bogus"], ["setstripe"], ["setstripe", "-c", "x", "p"], ["df", "-q"],
                 ["check", "clients"], ["fid2path", "/mnt"], ["setstripe", "-S", "3K", "p"]):
        assert lfs.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("mlustre lfs: ") and err.count("\n") == 1, (argv, err)
