"""Automatic takeover when a server's *host* is cut off, on network namespaces
(mlustre/netns/, `scripts/netns-cluster up --standby`): every MDT and OST runs on its
primary host with a standby on its failover partner host, both on the same storage
directory (the shared disk: the namespaces share the machine's filesystem), with a
short heartbeat (--mmp-interval 0.5 --mmp-quorum 2).

A writer on client1's mount appends a known pattern, reads each block back and creates
small files (appendwriter.py); the cable of the host of the MDT's primary, or of an OST's
(whose partner hosts the other OST of the pair and the standby of the first), is pulled.
The cut-off primary still reaches its storage, so only the quorum can fence it: it no
longer reaches the MGS, stops renewing its heartbeat after --mmp-quorum seconds and
fences when its lease runs out (a FENCED line, the last of its log; exit status 3).
Only then does the standby on the partner host take over; the clients give up the
silent host after their request timeout (30 s), find the target at its failover NID and
recover there (no eviction), and the writer goes on without an error. With the cable
back, the old primary serves nothing (it exited; started again as a plain server it is
refused, the heartbeat having moved) and becomes the new standby. client2 then reads
exactly what was written: nothing lost, nothing twice.

Each test builds a cluster of its own (a few seconds) with the servers' default
timeouts (recovery window, eviction), so that the takeover is tried as an administrator
would run it; the fixture tears it all down (mounts, servers and standbys by pid,
faults, namespaces) whether the test passes or not.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from appendwriter import Writer, fenced_log_ends, verify
from mnthelpers import make_world_dir, remove_tree_if_unmounted, run

from mlustre import registry
from mlustre.localcluster.cluster import cli_command
from mlustre.localcluster.processes import proc_starttime
from mlustre.netns.driver import NetnsCluster, NetnsError, missing_tools
from mlustre.netns.plan import Mmp, tag_for

MMP = Mmp(interval=0.5, quorum=2.0)
SLACK = 3.0  # seconds a loaded 2-core machine may add to a timer
CLIENT_GIVES_UP = 30.0 + 5.0 + 15.0  # request timeout, a connect attempt, and margin

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(missing_tools()),
    reason="needs root and ip, nsenter, nft (scripts/bootstrap installs them)")


@pytest.fixture
def sbnet(base_tmp):
    """A multi-host cluster with a standby of every MDT and OST on its partner host;
    down (faults lifted, unmounted, every server and standby ended by pid, namespaces
    deleted) at the end, failing or not."""
    base = make_world_dir(base_tmp, "netns-")  # (netns-*: a dead session's reaper finds it)
    c = NetnsCluster.create(base, fsname="sb", clients=2,
                            tag=tag_for(f"{os.getpid()}:{base}"), mmp=MMP)
    try:
        c.up(standbys=True)
        yield c
    finally:
        with contextlib.suppress(NetnsError):  # (what a CLI run in the test recorded)
            c.state = NetnsCluster.load(base).state
        problems = c.down()
        remove_tree_if_unmounted(base)
        assert not problems, problems


@contextlib.contextmanager
def logs_on_failure(c: NetnsCluster) -> Iterator[None]:
    """An assertion failing inside gets the tails of every host's logs (servers,
    standbys, mounts) attached: the cluster's directory is gone after the teardown."""
    try:
        yield
    except AssertionError as e:
        tails = []
        for log in sorted(c.base.glob("hosts/*/*.log")):
            lines = log.read_text(errors="replace").splitlines()[-12:]
            tails.append(f"--- {log.relative_to(c.base)}\n" + "\n".join(lines))
        raise AssertionError(f"{e}\n" + "\n".join(tails)) from None


def mnt(c: NetnsCluster, client: str) -> Path:
    return Path(c.state["mounts"][client])


def import_of(c: NetnsCluster, client: str, target: str) -> str:
    """`lctl get_param -n mdc|osc.FS-TARGET-*-CID.import` of one client's mount."""
    info = registry.find_mount(str(mnt(c, client)))
    assert info and info.get("uuid"), info
    cid = info["uuid"].replace("-", "")[:16]
    kind = "mdc" if target.startswith("MDT") else "osc"
    r = run([*cli_command(), "lctl", "-m", mnt(c, client), "get_param", "-n",
             f"{kind}.{c.topo.fsname}-{target}-{kind}-{cid}.import"], timeout=60)
    assert r.rc == 0, r.describe()
    return r.stdout


def connected_to(text: str) -> str | None:
    m = re.search(r"^current_connection: (\S+)$", text, re.M)
    return m.group(1) if m and "state: FULL" in text.splitlines() else None


def states_since(text: str, since: float) -> list[str]:
    """The import's state_history entries (`  SECONDS, STATE`) from `since` on."""
    return [m.group(2) for m in re.finditer(r"^\s+(\d+), (\w+)$", text, re.M)
            if int(m.group(1)) >= int(since)]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("target", ["MDT0000", "OST0000"])
def test_cut_off_primary_fences_and_its_standby_takes_over(sbnet, scratch, target):
    """The cable of target's primary host pulled under a verified writer on client1:
    the primary fences within its window (quorum + lease), only then its standby takes
    over, the writer goes on without an error, both clients reconnect to the failover
    NID unevicted; with the cable back the old primary is refused as a plain server and
    becomes the standby; client2 reads exactly what was written."""
    c = sbnet
    primary = dict(c.state["servers"][target])
    standby = dict(c.state["standbys"][target])
    partner = c.topo.other_host(target, primary["host"])
    assert standby["host"] == partner and c.standby_pid(target) == standby["pid"]
    assert c.holder(target) == primary["pid"]
    others = {n: (c.server_pid(n), c.standby_pid(n)) for n in c.state["standbys"] if n != target}
    assert all(None not in pids for pids in others.values()), others
    wdir_name = "w"
    (mnt(c, "client1") / wdir_name).mkdir()
    # Stripes on both OSTs (64 KiB each), so the appends go through the cut-off OST too.
    r = run([*cli_command(), "lfs", "setstripe", "-c", "-1", "-S", "64K",
             mnt(c, "client1") / wdir_name], timeout=60)
    assert r.rc == 0, r.describe()
    writer = Writer(mnt(c, "client1"), scratch, wdir_name)
    with logs_on_failure(c), contextlib.ExitStack() as cleanup:
        cleanup.callback(writer.kill)
        assert writer.advances(40, 30), f"the writer does not write: {writer.describe()}"
        c.add_fault(["link-down", primary["host"]])
        cut, cut_wall = time.monotonic(), time.time()
        fenced_at = took_over_at = None
        deadline = cut + MMP.takeover_within() + SLACK + 10
        while time.monotonic() < deadline and (fenced_at is None or took_over_at is None):
            now = time.monotonic() - cut
            if fenced_at is None and c.exit_status(primary["pid"]) is not None:
                fenced_at = now
            if took_over_at is None and c.holder(target) == standby["pid"]:
                took_over_at = now
            time.sleep(0.05)
        # The primary fenced itself: status 3, its last log line FENCED, after the
        # MGS (its quorum) had gone silent for --mmp-quorum seconds.
        assert fenced_at is not None, f"the cut-off primary (pid {primary['pid']}) still runs"
        assert c.exit_status(primary["pid"]) == 3
        lines = fenced_log_ends(Path(primary["log"]), primary["log_offset"])
        assert "heartbeat not renewed within its lease" in lines[-1], lines[-1]
        assert any(f"the MGS has not answered for {MMP.quorum:g}s" in line
                   for line in lines[-5:]), lines[-5:]
        early, late = MMP.fence_window()  # (cut: taken once the cable was out)
        assert early - 0.2 <= fenced_at <= late + SLACK, (fenced_at, (early, late))
        # ...and only then did its standby on the partner host take over.
        assert took_over_at is not None, f"{target}'s standby did not take over"
        assert fenced_at <= took_over_at <= MMP.takeover_within() + SLACK, \
            (fenced_at, took_over_at)
        taking = [line for line in log_since(standby) if "taking over" in line]
        assert taking and stamp(lines[-1]) <= stamp(taking[0]), (lines[-1], taking)
        assert c.wait_takeover(target, 30), f"{target}'s standby does not serve"
        assert c.state["servers"][target]["host"] == partner  # (the entries swapped)

        # The writer goes on (once client1 gave up the silent host), without an error.
        assert writer.advances(40, CLIENT_GIVES_UP), \
            f"the writer did not continue after the takeover: {writer.describe()}"
        stalled = time.monotonic() - cut
        new_nid = c.topo.nid(target, partner)
        for client in ("client1", "client2"):  # both found the failover NID, not evicted
            assert run_until(lambda cl=client: connected_to(import_of(c, cl, target))
                             == new_nid, 40), import_of(c, client, target)
            history = states_since(import_of(c, client, target), cut_wall)
            assert "EVICTED" not in history and "FULL" in history, (client, history)

        # The cable back: the old primary serves nothing (it exited) and cannot come
        # back as a plain server on the storage its partner's heartbeat now holds...
        c.clear_faults()
        assert proc_starttime(primary["pid"]) is None
        args = c.topo.server_args(target, primary["host"], data=str(c.storage(target)),
                                  key=str(c.key_file(primary["host"])), mmp=MMP)
        r = c.exec(primary["host"], [*cli_command(), *args], capture_output=True, text=True,
                   timeout=60)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(err) == 1 and "is served by another server" in err[0] \
            and "--standby" in err[0], (r.returncode, r.stderr)
        # ...but as the new standby, on its own host (as an administrator would:
        # scripts/netns-cluster standby TARGET).
        cmd = [sys.executable, "-m", "mlustre.netns"]
        r = run([*cmd, "standby", "--dir", c.base, target], timeout=90)
        c.state = NetnsCluster.load(c.base).state  # (what the CLI started, for down)
        assert r.rc == 0 and f"standby on {primary['host']}" in r.stdout, r.describe()
        back = c.state["standbys"][target]
        assert back["host"] == primary["host"] and c.standby_pid(target) == back["pid"]
        assert c.holder(target) == standby["pid"]
        r = run([*cmd, "status", "--dir", c.base], timeout=30)
        assert re.search(rf"^{target} +on {partner} .* pid {standby['pid']}\n"
                         rf"  standby on {primary['host']} .* pid {back['pid']}, standing by$",
                         r.stdout, re.M), r.describe()
        # The other targets kept their servers, and their standbys (one of them on the
        # cut-off host, without the MGS meanwhile) did not take over.
        assert {n: (c.server_pid(n), c.standby_pid(n)) for n in others} == others
        assert writer.advances(20, 30), f"the writer stopped: {writer.describe()}"
        result = writer.finish()
        # client2 reads exactly what client1 wrote: nothing lost, nothing twice.
        verify(mnt(c, "client2") / wdir_name, result)
        assert result["blocks"] > 100
        assert stalled < 90, f"the writer stalled {stalled:.0f}s"
    print(f"{target}: fenced {fenced_at:.1f}s after the cut (window {early:g}-{late:g}s), "
          f"standby took over at {took_over_at:.1f}s, the writer went on after "
          f"{stalled:.1f}s; {result['blocks']} blocks and {result['files']} files verified")


def log_since(entry: dict) -> list[str]:
    """A server's log lines since it started (its entry's log offset)."""
    with open(entry["log"], "rb") as f:
        f.seek(entry["log_offset"])
        return f.read().decode(errors="replace").splitlines()


def stamp(line: str) -> str:
    """A log line's time, "YYYY-MM-DD HH:MM:SS,mmm" (sorts as it reads)."""
    m = re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", line)
    assert m, line
    return m.group(0)


def run_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
