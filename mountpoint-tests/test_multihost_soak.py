"""The failover soak across hosts (`scripts/netns-cluster soak`, mlustre/netns/soak.py),
short: two client hosts run the shell and probe workloads while every kind of fault
(kill -9, freeze, partition, delay, loss, controlled failover, partner failover,
upgrade, pulled cable) hits the servers once or more, all link faults shorter than the
eviction timeout: no application error, and every tree identical through both clients.

The soak builds its own namespaces under a directory of this test; whatever happens to
the soak's process (a timeout kills it), the test then takes down what it left there
(servers by pid, mounts, namespaces).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from mnthelpers import make_world_dir, remove_tree_if_unmounted, run

from mlustre.netns.driver import NetnsCluster, NetnsError, missing_tools

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(missing_tools(delay=True)),
    reason="needs root and ip, nsenter, nft, iptables (scripts/bootstrap installs them)")


@pytest.mark.timeout(420)
def test_soak_across_hosts_every_fault_kind_no_error(base_tmp):
    base = make_world_dir(base_tmp, "netns-soak-")
    report = base / "report.json"
    try:
        r = run([sys.executable, "-m", "mlustre.netns", "soak", "--base", base / "soak",
                 "--duration", "45", "--interval", "2", "--fault-seconds", "2",
                 "--source-files", "60", "--json", report, "--keep"], timeout=360)
        assert r.rc == 0 and not r.timed_out, r.describe()
        summary = json.loads(report.read_text())["summary"]
        assert summary["application_errors"] == 0 and summary["failed_faults"] == 0
        assert summary["data_identical"] is True
        assert all(n >= 1 for n in summary["faults_by_kind"].values()), summary
    finally:
        try:
            NetnsCluster.load(base / "soak" / "cluster").down()  # only if left behind
        except NetnsError:
            pass
        remove_tree_if_unmounted(base)
