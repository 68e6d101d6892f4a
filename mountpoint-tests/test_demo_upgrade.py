"""The upgrade demo, shortened (scripts/demo-upgrade --duration 30): a 1.8 cluster
is upgraded to 2.0 server by server (and one server back to 1.8) by controlled failover
under its workloads. No system call fails, every byte is verified, every upgrade is
done, and the SVG plot is well-formed XML with a label per failover."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mnthelpers import run_script

TIMEOUT = 360
EXPECTED = [("MDT0000", "1.8", "2.0"), ("OST0000", "1.8", "2.0"), ("OST0001", "1.8", "2.0"),
            ("MGS", "1.8", "2.0"), ("OST0001", "2.0", "1.8")]


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_upgrade_demo(tmp_path):
    report, plot = tmp_path / "demo.json", tmp_path / "demo.svg"
    rc, out, leftover = run_script(
        [sys.executable, "-m", "mlustre.demo_upgrade", "--duration", "30",
         "--source-files", "200", "--json", str(report), "--plot", str(plot),
         "--base", str(tmp_path)], tmp_path, TIMEOUT - 60, "the demo")
    assert rc == 0, out[-6000:]
    result = json.loads(report.read_text())
    summary = result["summary"]
    assert summary["errors"] == 0 and summary["syscall_errors"] == 0, summary
    assert summary["mismatches"] == 0 and summary["failed_failovers"] == 0, summary
    assert [(f["target"], f["from"], f["to"]) for f in result["failovers"]] == EXPECTED
    assert all(f["ok"] for f in result["failovers"])
    assert [f["json"]["kind"] for f in result["failovers"]] == ["controlled"] * 5
    # The MDT and OSTs moved to their failover partner and back; the MGS stayed.
    moved = [(f["nid_before"].rsplit(":", 1)[0], f["nid_after"].rsplit(":", 1)[0])
             for f in result["failovers"]]
    assert moved[:3] == [("127.0.0.2", "127.0.0.3")] * 3 and moved[4] == moved[2][::-1]
    assert moved[3][0] == moved[3][1]
    assert summary["bytes_verified"] > 0 and summary["records"] > 0
    assert result["workloads"]["writer"]["records_verified"] == summary["records"]
    assert all(w["ops_total"] > 0 for w in result["workloads"].values())
    assert result["trees"] and all(t["identical"] for t in result["trees"].values())
    releases = {s["name"].split("-")[-1]: s["release"] for s in result["servers_after"]}
    assert releases == {"MGS": "2.0", "MDT0000": "2.0", "OST0000": "2.0", "OST0001": "1.8"}
    assert result["throughput"]["mb_per_s"] and max(result["throughput"]["mb_per_s"]) > 0
    assert "timeline" in out and "OK" in out.splitlines()[-1]

    svg = ET.parse(plot).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    texts = ["".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    for n, (target, old, new) in enumerate(EXPECTED, 1):
        assert any(t.startswith(f"{n}: {target} {old}→{new}") for t in texts), texts
    assert not Path(result["work_dir"]).exists()  # removed after a clean run
    assert not leftover  # the demo unmounted its cluster (other clusters may come and go)
