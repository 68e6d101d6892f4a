"""Hosts as network namespaces (mlustre/netns/): an MGS, an MDS pair, an OSS pair and
two clients, each its own network namespace on a private bridge, with servers started by
`mlustre server` and clients by `mlustre mount SPEC` inside their hosts, as on real
machines; then faults on the links (delay, loss, partitions, a pulled cable) and what
each must do to the clients.

One cluster per module (a few seconds to build); every test lifts its faults at the
end, failing or not, and the module's teardown unmounts both clients, stops every
server by pid and deletes the namespaces. The servers evict a silent client after 8 s
(--ping-evict-timeout) and a lock holder that does not answer after 3 s
(--ldlm-timeout), so the long cut-off stays short. The recovery window is 45 s: a
client gives up a server that vanished from the network only after its request
timeout (30 s), and must still find its recovery window open on the failover partner
(a window shorter than that evicts it instead, as in Lustre, whose default window is
several times its obd_timeout). Namespaces, addresses and the
cluster's directory are derived from this worker's pid and a fresh directory, so
concurrent xdist workers never share a name or a subnet.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mnthelpers import make_world_dir, remove_tree_if_unmounted, run

from mlustre.localcluster.cluster import cli_command
from mlustre.netns.driver import NetnsCluster, missing_tools
from mlustre.netns.plan import tag_for

EVICT_S = 8.0  # --ping-evict-timeout of the MDT and OSTs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(missing_tools(delay=True)),
    reason="needs root and ip, nsenter, nft, iptables (scripts/bootstrap installs them)")


@pytest.fixture(scope="module")
def mh(base_tmp):
    base = make_world_dir(base_tmp, "netns-")
    c = NetnsCluster.create(base, fsname="mh", clients=2,
                            tag=tag_for(f"{os.getpid()}:{base}"),
                            server_options=["--ldlm-timeout", "3", "--recovery-window", "45",
                                            "--ping-evict-timeout", f"{EVICT_S:g}"])
    try:
        c.up()
        yield c
    finally:
        problems = c.down()
        remove_tree_if_unmounted(base)
        assert not problems, problems


@pytest.fixture
def net(mh):
    """The module's cluster; every fault is lifted after the test, failing or not."""
    try:
        yield mh
    finally:
        mh.clear_faults()


def mnt(c: NetnsCluster, client: str) -> Path:
    return Path(c.state["mounts"][client])


class Worker:
    """`python -c SCRIPT ARGS` in its own process, spoken to by lines; kill() ends it by
    pid (always called in a finally)."""

    def __init__(self, script: str, *args: str | os.PathLike) -> None:
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", script, *map(os.fspath, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, bufsize=0, start_new_session=True)
        self.buf = b""

    def describe(self) -> str:
        self.err.seek(0)
        return (f"worker pid {self.proc.pid} rc={self.proc.poll()}\n"
                f"{self.err.read().decode(errors='replace')[-3000:]}")

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} within {timeout}s; {self.describe()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise AssertionError(f"worker ended before {prefix!r}; {self.describe()}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        text = line.decode(errors="replace")
        assert text.startswith(prefix), f"expected {prefix!r}, got {text!r}; {self.describe()}"
        return text

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# Writes a tree of files (fsynced) and prints their sha256 sums; run with a timeout.
WRITE_TREE = r"""
import hashlib, json, os, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(root, exist_ok=True)
sums = {}
for i in range(n):
    size = (i * 37 % 9 + 1) * 7000 + (1 << 20 if i == 0 else 0)
    data = (hashlib.sha256(f"{seed}{i}".encode()).digest() * (size // 32 + 1))[:size]
    tmp, name = os.path.join(root, f".f{i}"), os.path.join(root, f"f{i}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, name)
    sums[f"f{i}"] = hashlib.sha256(data).hexdigest()
print(json.dumps(sums))
"""


def write_tree(root: Path, n: int, seed: str, timeout: float = 120) -> dict[str, str]:
    import json

    r = run([sys.executable, "-c", WRITE_TREE, root, str(n), seed], timeout=timeout)
    assert r.rc == 0 and not r.timed_out, r.describe()
    return json.loads(r.stdout)


def tree_sums(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if p.is_file()}


def exchange(c: NetnsCluster, tag: str, n: int = 12, timeout: float = 120) -> None:
    """Each client writes a tree; the other reads it back, byte for byte."""
    a, b = mnt(c, "client1"), mnt(c, "client2")
    sums_a = write_tree(a / f"{tag}-a", n, tag + "a", timeout)
    sums_b = write_tree(b / f"{tag}-b", n, tag + "b", timeout)
    assert tree_sums(b / f"{tag}-a") == sums_a
    assert tree_sums(a / f"{tag}-b") == sums_b


RTT_PROBE = r"""
import socket, sys, time
t = time.monotonic()
try:
    socket.create_connection((sys.argv[1], 1), timeout=5)
except ConnectionRefusedError:
    print(time.monotonic() - t)
"""


@pytest.mark.timeout(150)
def test_network_is_private_and_servers_run_on_their_hosts(net):
    """Each server listens on its own host's address; from the machine's own namespace
    the test subnet is unreachable (a guard route), and the hosts have no route out of
    it."""
    c = net
    st = c.status()
    assert all(s["running"] for s in st["servers"].values()), st
    assert c.spec.startswith(c.topo.host("mgs").addr + ":")
    own = subprocess.run(["ip", "-4", "route", "show", "match", c.topo.host("mgs").addr],
                         capture_output=True, text=True).stdout
    assert f"unreachable {c.topo.subnet}.0/24" in own, own
    r = subprocess.run([sys.executable, "-c", "import socket,sys;"
                        "socket.create_connection((sys.argv[1], 7000), timeout=5)",
                        c.topo.host("mgs").addr], capture_output=True, text=True, timeout=30)
    assert "no route to host" in r.stderr.lower(), r.stderr  # (EHOSTUNREACH, at once)
    r = c.exec("client1", ["ip", "-4", "route"], capture_output=True, text=True, timeout=10)
    assert "default" not in r.stdout and r.stdout.count("\n") == 1, r.stdout
    r = c.exec("mds1", ["ss", "-ltnH"], capture_output=True, text=True, timeout=10)
    assert f"{c.topo.host('mds1').addr}:7001" in r.stdout, r.stdout
    # lfs connects to the servers itself: from here it says where to run it, at once;
    # on the client's host it works.
    m = mnt(c, "client1")
    t0 = time.monotonic()
    r = run([*cli_command(), "lfs", "df", m], timeout=30)
    assert r.rc == 1 and "another network namespace" in r.stderr, r.describe()
    assert time.monotonic() - t0 < 5
    r = c.exec("client1", [*cli_command(), "lfs", "df", str(m)], capture_output=True,
               text=True, timeout=60)
    assert r.returncode == 0 and f"{m}[MDT:0]" in r.stdout, r.stdout + r.stderr
    exchange(c, "plain", n=4)


@pytest.mark.timeout(240)
def test_delay_50ms_everything_works(net):
    """50 ms each way on a client's link and on the MDS's (plus 10 ms of jitter, which
    reorders packets on the client's): a workload on both clients verifies."""
    net.add_fault(["delay", "client1", "50ms", "10ms"])
    net.add_fault(["delay", "mds1", "50ms"])
    # A SYN to a closed port of client1 and its RST: one round trip through client1's
    # delayed link, 100 ms (2 x 50 ± 10) with the delay in the kernel's queue.
    r = net.exec("client2", ["python3", "-c", RTT_PROBE, net.topo.host("client1").addr],
                 capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert 0.085 <= float(r.stdout) < 1.0, r.stdout
    exchange(net, "delay", n=8, timeout=180)


@pytest.mark.timeout(240)
def test_loss_5_percent_everything_works(net):
    """5% of the packets of both clients lost at random, each way: a workload verifies."""
    net.add_fault(["loss", "client1", "5%"])
    net.add_fault(["loss", "client2", "5%"])
    exchange(net, "loss", n=12, timeout=180)


# Holds a file open across a cut-off: "ready" when written and fsynced, then on "go"
# writes, fsyncs and reads through the same descriptor, reporting ok or the errno.
HOLDER = r"""
import errno, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, b"before", 0)
os.fsync(fd)
print("ready", flush=True)
while True:
    cmd = sys.stdin.readline().strip()
    if cmd == "quit" or not cmd:
        break
    try:
        os.pwrite(fd, cmd.encode(), 0)
        os.fsync(fd)
        got = os.pread(fd, len(cmd), 0).decode()
        print("ok", got, flush=True)
    except OSError as e:
        print("errno", errno.errorcode.get(e.errno, e.errno), flush=True)
try:
    os.close(fd)
except OSError as e:
    print("close", errno.errorcode.get(e.errno, e.errno), flush=True)
"""


@pytest.mark.timeout(150)
def test_client_cut_off_from_mds_briefly_resumes_without_error(net):
    """client1 loses the MDS pair for 3 s (under the 8 s eviction timeout) while it
    creates files and holds one open: the calls wait and complete, the open file works
    on, and client2 goes on meanwhile."""
    a, b = mnt(net, "client1"), mnt(net, "client2")
    (a / "brief").mkdir()
    (b / "brief2").mkdir()
    holder = Worker(HOLDER, a / "brief" / "held")
    try:
        holder.expect("ready", 30)
        net.add_fault(["partition", "client1", "mds1", "mds2"])
        cut = time.monotonic()
        creator = subprocess.Popen(
            [sys.executable, "-c", "import os,sys\nfor i in range(5):\n"
             " open(os.path.join(sys.argv[1], f'c{i}'), 'w').write(str(i))",
             a / "brief"], start_new_session=True, stderr=subprocess.PIPE)
        try:
            sums_b = write_tree(b / "brief2" / "t", 4, "brief", timeout=60)
            time.sleep(max(0.0, 3 - (time.monotonic() - cut)))
            assert creator.poll() is None, "client1 created files while cut off from the MDS"
            net.clear_faults()
            assert creator.wait(timeout=60) == 0, creator.stderr.read() if creator.stderr else ""
        finally:
            if creator.poll() is None:
                creator.kill()
                creator.wait()
        holder.send("after")
        assert holder.expect("", 60) == "ok after"
        holder.send("quit")
        assert holder.proc.wait(timeout=30) == 0, holder.describe()
    finally:
        holder.kill()
    assert sorted(p.name for p in (b / "brief").iterdir()) == \
        ["c0", "c1", "c2", "c3", "c4", "held"]
    assert (b / "brief" / "held").read_bytes() == b"aftere"  # (over "before")
    assert tree_sums(a / "brief2" / "t") == sums_b


@pytest.mark.timeout(180)
def test_client_cut_off_longer_is_evicted_and_comes_back(net):
    """client1 loses the MDS pair for longer than the eviction timeout: the MDT evicts
    it, client2 goes on untouched meanwhile; when the link is back client1 reconnects by
    itself, its file open since before gives EIO, new opens work, and everything
    client2 wrote is there."""
    a, b = mnt(net, "client1"), mnt(net, "client2")
    (a / "long").mkdir()
    (b / "long2").mkdir()
    holder = Worker(HOLDER, a / "long" / "held")
    try:
        holder.expect("ready", 30)
        net.add_fault(["partition", "client1", "mds1", "mds2"])
        cut = time.monotonic()
        sums_b = write_tree(b / "long2" / "t", 8, "long", timeout=60)
        assert time.monotonic() - cut < EVICT_S, "client2 was slowed down by client1's cut"
        time.sleep(max(0.0, EVICT_S + 5 - (time.monotonic() - cut)))
        net.clear_faults()
        # client1 reconnects by itself: a new open works (once it learnt of its eviction)
        deadline = time.monotonic() + 60
        while True:
            r = run([sys.executable, "-c", "import sys;print(open(sys.argv[1]).read())",
                     a / "long" / "held"], timeout=60)
            if r.rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.rc == 0 and r.stdout.strip() == "before", r.describe()
        holder.send("again")
        assert holder.expect("", 60) == "errno EIO"
        holder.send("quit")
        holder.proc.wait(timeout=30)
    finally:
        holder.kill()
    assert tree_sums(a / "long2" / "t") == sums_b
    exchange(net, "after-evict", n=3)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["mds-partition", "oss-cable", "mds-fenced"])
def test_server_cut_off_from_every_client_is_a_crash_for_them(net, how):
    """The MDS cut off from both clients (nftables), or an OSS's cable pulled, for 4 s:
    to the clients the server is gone, as in a crash: their calls on it wait, and
    complete once it is back, with nothing lost and no error. mds-fenced: the MDS's
    cable stays out, so the MDT is killed there (fencing) and started on its failover
    partner, mds2, as an HA manager would; the clients find it at its failover NID and
    recover (replay) there; then it moves back to mds1 by a controlled failover."""
    a, b = mnt(net, "client1"), mnt(net, "client2")
    tag = f"srv-{how}"
    (a / tag).mkdir()
    if how == "mds-partition":
        net.add_fault(["partition", "mds1", "client1", "client2"])
    else:
        net.add_fault(["link-down", net.state["servers"]["OST0000" if how == "oss-cable"
                                                         else "MDT0000"]["host"]])
    cut = time.monotonic()
    cut_wall = time.time()
    writers = [subprocess.Popen([sys.executable, "-c", WRITE_TREE, m / tag / n, "3", tag + n],
                                stdout=subprocess.PIPE, start_new_session=True)
               for m, n in ((a, "x"), (b, "y"))]
    try:
        time.sleep(4)
        blocked = [w.poll() is None for w in writers]
        if how == "mds-fenced":
            assert net.state["servers"]["MDT0000"]["host"] == "mds1"
            net.failover("MDT0000", "crash-partner")
            assert net.state["servers"]["MDT0000"]["host"] == "mds2"
            outs = [w.communicate(timeout=90)[0] for w in writers]
            net.clear_faults()
        else:
            net.clear_faults()
            outs = [w.communicate(timeout=90)[0] for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert any(blocked), "no client waited for the cut-off server"
    assert [w.returncode for w in writers] == [0, 0]
    import json

    assert tree_sums(b / tag / "x") == json.loads(outs[0])
    assert tree_sums(a / tag / "y") == json.loads(outs[1])
    assert time.monotonic() - cut < 90
    if how == "mds-fenced":  # both clients recovered with the new instance on mds2
        r = run([*cli_command(), "lctl", "-m", a, "get_param", "-n", "mdc.*.import"],
                timeout=60)
        mds2 = net.topo.nid("MDT0000", "mds2")
        assert r.rc == 0 and r.stdout.count(f"current_connection: {mds2}") == 2, r.describe()
        since = [line.split(",")[1].strip() for line in r.stdout.splitlines()
                 if re.fullmatch(r"\s+\d+, \w+", line)
                 and int(line.split(",")[0]) >= int(cut_wall)]  # (earlier tests' go before)
        assert since.count("REPLAY") == 2 and "EVICTED" not in since, r.stdout
        net.failover("MDT0000", "partner")
        assert net.state["servers"]["MDT0000"]["host"] == "mds1"
        exchange(net, "back-on-mds1", n=2)


@pytest.mark.timeout(240)
def test_cli_fault_commands(net, tmp_path):
    """scripts/netns-cluster's fault, status, exec and clear on the module's cluster
    (oneway drop: the MDS hears nothing from client2, which waits, then goes on)."""
    cmd = [sys.executable, "-m", "mlustre.netns"]
    d = ["--dir", str(net.base)]
    mds = net.state["servers"]["MDT0000"]["host"]
    r = run([*cmd, "fault", *d, "oneway", mds, "client2", "in"], timeout=30)
    assert r.rc == 0 and "drops what it receives from client2" in r.stdout, r.describe()
    net.state = NetnsCluster.load(net.base).state  # (the CLI recorded the fault)
    r = run([*cmd, "status", *d], timeout=30)
    assert "#" in r.stdout and "oneway" not in r.stderr, r.describe()
    b = mnt(net, "client2")
    w = subprocess.Popen(["mkdir", b / "oneway"], start_new_session=True)
    try:
        time.sleep(2)
        assert w.poll() is None
        r = run([*cmd, "clear", *d], timeout=30)
        assert r.rc == 0 and "lifted 1" in r.stdout, r.describe()
        assert w.wait(timeout=60) == 0
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    net.state = NetnsCluster.load(net.base).state
    r = run([*cmd, "exec", *d, "client1", "ip", "-4", "-o", "addr", "show", "eth0"],
            timeout=30)
    assert net.topo.host("client1").addr in r.stdout, r.describe()
    assert (mnt(net, "client1") / "oneway").is_dir()
    shutil.rmtree(mnt(net, "client1") / "oneway")
