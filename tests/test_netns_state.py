"""The multi-host cluster's recorded state (mlustre/netns/driver.py) without root: a
standby that took its target over by itself is found from the heartbeat record in the
shared storage, and the state's entries swap, so that `status`, `failover` and `down`
name the server that serves (and `down` still ends the old one by pid)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlustre.localcluster.processes import proc_starttime
from mlustre.netns.driver import NetnsCluster, NetnsError
from mlustre.netns.plan import Mmp

pytestmark = pytest.mark.timeout(60)


def test_a_standby_that_took_over_becomes_the_server(tmp_path):
    c = NetnsCluster.create(tmp_path / "cl", tag="t1", mmp=Mmp(0.5, 2))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive, other = (subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                    for _ in range(2))
    try:
        c.state["servers"]["MDT0000"] = {"host": "mds1", "pid": gone.pid, "start": 1,
                                         "release": "2.0", "log": "/x", "log_offset": 0}
        c.state["standbys"]["MDT0000"] = {"host": "mds2", "pid": alive.pid,
                                          "start": proc_starttime(alive.pid),
                                          "release": "2.0", "log": "/y", "log_offset": 0}
        c.save()
        assert c.reconcile() == []  # no heartbeat record yet: nothing known
        c.storage("MDT0000").mkdir(parents=True)
        (c.storage("MDT0000") / "mmp").write_text(json.dumps(
            {"seq": 9, "holder": f"mh-MDT0000 pid={alive.pid} nid=x:7001"}))
        st = NetnsCluster.load(c.base).status()  # (status reconciles, and records it)
        assert st["servers"]["MDT0000"]["host"] == "mds2"
        assert st["servers"]["MDT0000"]["running"]
        assert st["standbys"]["MDT0000"]["host"] == "mds1"
        assert not st["standbys"]["MDT0000"]["running"]
        assert st["mmp"] == {"interval": 0.5, "quorum": 2.0}
        again = NetnsCluster.load(c.base)
        assert again.server_pid("MDT0000") == alive.pid and again.reconcile() == []
        # With a live standby, an upgrade in place is refused before anything stops.
        again.state["standbys"]["MDT0000"].update(pid=other.pid,
                                                  start=proc_starttime(other.pid))
        with pytest.raises(NetnsError, match="stop it first"):
            again.failover("MDT0000", "upgrade", release="1.8")
        assert alive.poll() is None and other.poll() is None
    finally:
        for p in (alive, other):
            p.kill()
            p.wait()


def test_a_state_from_before_standbys_loads(tmp_path):
    c = NetnsCluster.create(tmp_path / "old", tag="t2")
    state = json.loads((c.base / "netns.json").read_text())
    del state["standbys"], state["mmp"]
    (c.base / "netns.json").write_text(json.dumps(state))
    old = NetnsCluster.load(c.base)
    assert old.state["standbys"] == {} and old.status()["standbys"] == {}
    with pytest.raises(NetnsError, match="never started"):
        old.start_standby("OST0000")
