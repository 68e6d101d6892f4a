"""A short failover soak, as CI runs it: the shell and probe workloads on a fresh
cluster while every target is restarted and killed in turn (scripts/failover-soak).
No application error, every failover done, the data identical after a full restart."""

from __future__ import annotations

import json
import sys

import pytest
from mnthelpers import run_script

TIMEOUT = 300


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_short_failover_soak(tmp_path):
    report = tmp_path / "soak.json"
    rc, out, leftover = run_script(
        [sys.executable, "-m", "mlustre.soak", "--duration", "48",
         "--interval", "3", "--failovers", "15", "--workloads", "shell,probe",
         "--source-files", "100",
         "--json", str(report), "--base", str(tmp_path)], tmp_path, TIMEOUT - 60, "the soak")
    assert rc == 0, out[-4000:]
    result = json.loads(report.read_text())
    summary = result["summary"]
    assert summary["application_errors"] == 0 and summary["failed_failovers"] == 0
    # 48 s at one failover every 3 s (longer if failovers are slow: --failovers), going
    # round 4 targets x {restart, crash, partner (not the MGS), upgrade}: 15 failovers,
    # each kind of each target once.
    assert summary["failovers"] >= 15, summary
    by_kind = summary["failovers_by_kind"]
    assert by_kind["restart"] >= 4 and by_kind["crash"] >= 4, by_kind
    assert by_kind["partner"] >= 3 and by_kind["upgrade"] >= 4, by_kind
    kinds = {(f["target"], f["kind"]) for f in result["failovers"]}
    assert {("MDT0000", "crash"), ("OST0000", "crash"), ("MDT0000", "upgrade"),
            ("OST0001", "upgrade")} <= kinds, kinds
    upgraded = [f for f in result["failovers"] if f["kind"] == "upgrade"]
    assert all("to 1.8" in f["message"] for f in upgraded), upgraded
    assert summary["data_verified"] is True
    assert result["workloads"]["shell"]["rounds"] >= 2
    assert result["workloads"]["probe"]["ops"] > 0
    assert not leftover  # the soak unmounted its cluster
