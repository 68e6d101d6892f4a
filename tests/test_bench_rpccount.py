"""scripts/rpc-count's arithmetic (mlustre/bench/rpccount.py): reading `lctl get_param
*.stats` output, the deltas around a command, and its table."""

from __future__ import annotations

from mlustre.bench.rpccount import deltas, minus, parse_stats, report

BEFORE = """\
llite.fs-abcd.stats=
close                     2 samples [reqs]
md_rpcs                   10 samples [events]
write_bytes               1 samples [bytes] 4096 4096 4096
mdc.fs-MDT0000-mdc-abcd.stats=
req.MDS_CONNECT           1 samples [reqs]
osc.fs-OST0000-osc-abcd.stats=
osc.fs-OST0001-osc-abcd.stats=
req.OST_WRITE             1 samples [reqs]
mdt.fs-MDT0000.stats=
snapshot_time             1700000000.123456 secs.usecs
req.OBD_ADMIN             4 samples [reqs]
req.MDS_REINT             3 samples [reqs]
obdfilter.fs-OST0000.stats=
req.OST_WRITE             5 samples [reqs]
obdfilter.fs-OST0001.stats=
req.OST_WRITE             2 samples [reqs]
"""

AFTER = """\
llite.fs-abcd.stats=
close                     3 samples [reqs]
create                    1 samples [reqs]
md_rpcs                   10 samples [events]
write_bytes               3 samples [bytes] 5 4096 4106
mdc.fs-MDT0000-mdc-abcd.stats=
req.MDS_CONNECT           1 samples [reqs]
req.MDS_REINT             2 samples [reqs]
osc.fs-OST0000-osc-abcd.stats=
req.OST_WRITE             1 samples [reqs]
osc.fs-OST0001-osc-abcd.stats=
req.OST_WRITE             1 samples [reqs]
mdt.fs-MDT0000.stats=
snapshot_time             1700000009.0 secs.usecs
req.OBD_ADMIN             9 samples [reqs]
req.MDS_REINT             5 samples [reqs]
obdfilter.fs-OST0000.stats=
req.OST_WRITE             6 samples [reqs]
obdfilter.fs-OST0001.stats=
req.OST_WRITE             2 samples [reqs]
"""


def test_parse_sums_devices_and_skips_the_tools_own_requests():
    got = parse_stats(BEFORE)
    assert got == {
        "llite": {"close": 2, "md_rpcs": 10, "write_bytes": 1, "write_bytes.bytes": 4096},
        "mdc": {"req.MDS_CONNECT": 1}, "osc": {"req.OST_WRITE": 1},
        "mdt": {"req.MDS_REINT": 3}, "obdfilter": {"req.OST_WRITE": 7}}


def test_deltas_keep_only_what_changed():
    d = deltas(parse_stats(BEFORE), parse_stats(AFTER))
    assert d == {
        "llite": {"close": 1, "create": 1, "write_bytes": 2, "write_bytes.bytes": 10},
        "mdc": {"req.MDS_REINT": 2}, "mdt": {"req.MDS_REINT": 2},
        "obdfilter": {"req.OST_WRITE": 1}, "osc": {"req.OST_WRITE": 1}}


def test_report_per_operation():
    d = deltas(parse_stats(BEFORE), parse_stats(AFTER))
    lines = report(d, per=2).splitlines()
    assert lines[0].split() == ["kind", "counter", "delta", "per", "op", "(/2)"]
    rows = [line.split() for line in lines[1:]]
    # client first (llite, mdc, osc), then the servers (mdt, obdfilter)
    assert [r[0] for r in rows] == ["llite"] * 4 + ["mdc", "osc", "mdt", "obdfilter"]
    assert ["mdc", "req.MDS_REINT", "2", "1.00"] in rows
    assert ["llite", "write_bytes.bytes", "10", "5.00"] in rows
    assert report({}, None) == "(no counter changed)"
    assert len(report(d, None).splitlines()[1].split()) == 3


def test_the_tools_own_requests_are_subtracted():
    d = {"mdt": {"req.MDS_CONNECT": 5, "req.MDS_REINT": 2}, "llite": {"create": 1}}
    own = {"mdt": {"req.MDS_CONNECT": 5, "errors": 3}}
    assert minus(d, own) == {"mdt": {"req.MDS_REINT": 2}, "llite": {"create": 1}}
    assert minus({"mdt": {"req.MDS_CONNECT": 5}}, own) == {}
