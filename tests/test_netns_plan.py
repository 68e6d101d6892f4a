"""The multi-host plan (mlustre/netns/plan.py) without root or namespaces: topology,
names and addresses, the commands each host runs, and the rules of every fault."""

from __future__ import annotations

import pytest

from mlustre.netns.nfqdelay import config_messages, parse_messages, verdict_message
from mlustre.netns.plan import (
    Fault,
    Mmp,
    PlanError,
    Topology,
    after_takeover,
    check_stackable,
    holder_pid,
    parse_fault,
    parse_ms,
    tag_for,
)


@pytest.fixture
def topo() -> Topology:
    return Topology.build("abc123", "fs", clients=2, oss_pairs=1)


def test_hosts_pairs_and_addresses(topo):
    assert list(topo.hosts) == ["mgs", "mds1", "mds2", "oss1", "oss2", "client1", "client2"]
    addrs = [h.addr for h in topo.hosts.values()]
    assert len(set(addrs)) == len(addrs)
    assert all(a.startswith(topo.subnet + ".") and a.startswith(("198.18.", "198.19."))
               for a in addrs)
    assert topo.targets["MDT0000"].primary == "mds1"
    assert topo.targets["MDT0000"].partner == "mds2"
    # active/active OSS pair: one OST primary on each node, the other its partner
    assert (topo.targets["OST0000"].primary, topo.targets["OST0000"].partner) == ("oss1", "oss2")
    assert (topo.targets["OST0001"].primary, topo.targets["OST0001"].partner) == ("oss2", "oss1")
    assert topo.spec() == f"{topo.host('mgs').addr}:7000:/fs"
    assert topo.start_order() == ["MGS", "OST0000", "OST0001", "MDT0000"]


def test_names_differ_per_tag_and_fit_interface_limits():
    a = Topology.build(tag_for("worker gw0 pid 1"), "fs")
    b = Topology.build(tag_for("worker gw1 pid 2"), "fs")
    assert not set(a.namespaces) & set(b.namespaces)
    assert a.subnet != b.subnet
    assert Topology.build("abc", "fs", net=257).subnet == "198.19.1"
    assert Topology.build("abc", "fs", net=512 + 3).subnet == "198.18.3"
    assert all(len(h.port) <= 15 for h in a.hosts.values())  # IFNAMSIZ
    with pytest.raises(PlanError):
        Topology.build("Bad/Tag", "fs")


def test_nothing_is_created_in_the_machines_own_namespace(topo):
    """Every step runs in a test namespace, except creating namespaces, veth pairs
    whose both ends are placed in namespaces at creation, and the guard: the subnet is
    unreachable from the machine's own namespace (removed again at teardown)."""
    for step in topo.setup_steps():
        if step.netns is None:
            argv = list(step.argv)
            assert argv[:3] == ["ip", "netns", "add"] or (
                argv[:3] == ["ip", "link", "add"] and argv.count("netns") == 2) or (
                argv == ["ip", "route", "add", "unreachable", f"{topo.subnet}.0/24"]), argv
    assert topo.teardown_steps()[-1].argv == ("ip", "route", "del", "unreachable",
                                              f"{topo.subnet}.0/24")
    addr_steps = [s for s in topo.setup_steps() if s.argv[:3] == ("ip", "addr", "add")]
    assert {s.netns for s in addr_steps} == {h.netns for h in topo.hosts.values()}
    assert [s.argv for s in topo.teardown_steps()][-2] == ("ip", "netns", "delete", topo.switch)


def test_server_command_lines_name_addresses_and_failover_nids(topo):
    mds1, mds2, mgs = (topo.host(n).addr for n in ("mds1", "mds2", "mgs"))
    args = topo.server_args("MDT0000", "mds2", data="/d", key="/k")
    assert args[:2] == ["server", "mdt"]
    assert args[args.index("--listen") + 1] == f"{mds2}:7001"
    assert args[args.index("--failover-nid") + 1] == f"{mds1}:7001"
    assert args[args.index("--mgs") + 1] == f"{mgs}:7000"
    assert args[args.index("--key") + 1] == "/k"
    assert args[args.index("--osts") + 1] == "2"
    mgs_args = topo.server_args("MGS", "mgs", data="/m", key=None)
    assert "--failover-nid" not in mgs_args and "--mgs" not in mgs_args
    with pytest.raises(PlanError):
        topo.server_args("MDT0000", "oss1", data="/d", key=None)
    assert topo.target("fs-ost0001").name == "OST0001"


def test_a_standby_runs_on_the_other_host_of_its_pair_with_the_same_heartbeat(topo):
    mmp = Mmp(0.5, 2)
    active = topo.server_args("OST0001", "oss2", data="/d", key=None, mmp=mmp)
    standby = topo.server_args("OST0001", topo.other_host("OST0001", "oss2"), data="/d",
                               key=None, mmp=mmp, standby=True)
    assert standby[standby.index("--listen") + 1] == f"{topo.host('oss1').addr}:7101"
    assert standby[standby.index("--failover-nid") + 1] == f"{topo.host('oss2').addr}:7101"
    assert standby[-1] == "--standby" and "--standby" not in active
    for args in (active, standby):  # the same options on both: the wait outlasts the lease
        assert args[args.index("--mmp-interval") + 1] == "0.5"
        assert args[args.index("--mmp-quorum") + 1] == "2"
        assert args[args.index("--data") + 1] == "/d"  # the shared disk
    assert "--mmp-interval" not in topo.server_args("MGS", "mgs", data="/m", key=None, mmp=mmp)
    assert topo.other_host("MDT0000", "mds2") == "mds1"
    for bad in (lambda: topo.other_host("MGS", "mgs"), lambda: topo.other_host("MDT0000", "oss1"),
                lambda: topo.server_args("MGS", "mgs", data="/m", key=None, standby=True),
                lambda: Mmp(0.01, 2), lambda: Mmp(1, -1)):
        with pytest.raises(PlanError):
            bad()


@pytest.mark.parametrize(("interval", "quorum"), [(0.5, 2), (1, 10), (0.1, 0.5), (2, 1)])
def test_a_cut_off_primary_fences_before_its_standby_may_take_over(interval, quorum):
    mmp = Mmp(interval, quorum)
    early, late = mmp.fence_window()
    assert 0 <= early < late < mmp.takeover_within()
    assert late == quorum + 3 * interval + interval  # quorum, lease, one renewal tick
    assert mmp.takeover_wait > mmp.lease + interval  # (servers/mmp.py's rule)
    assert Mmp(interval, 0).fence_window() == (float("inf"), float("inf"))  # no quorum
    assert Mmp.from_json(mmp.to_json()) == mmp and Mmp.from_json(None) is None


def test_after_a_takeover_the_standby_entry_becomes_the_server():
    server = {"host": "mds1", "pid": 10, "start": 1}
    standby = {"host": "mds2", "pid": 20, "start": 2}
    assert holder_pid('{"seq": 4, "holder": "fs-MDT0000 pid=20 nid=198.18.0.4:7001"}') == 20
    assert holder_pid("torn{") is None and holder_pid('{"seq": 1}') is None
    assert holder_pid("[1, 2]") is None
    assert after_takeover(server, standby, 20, True) == (standby, server)
    assert after_takeover(server, standby, 10, True) is None  # the server holds it still
    assert after_takeover(server, standby, 20, False) is None  # the standby died since
    assert after_takeover(server, None, 20, True) is None
    assert after_takeover(server, standby, None, True) is None  # no record


def test_partition_rules_drop_both_ways_between_the_hosts_only(topo):
    f = parse_fault(1, ["partition", "client1", "mds1", "mds2"], topo)
    apply, undo = topo.fault_steps(f, netem=False)
    (step,) = apply
    assert step.netns == topo.host("client1").netns
    mds = f"{{ {topo.host('mds1').addr}, {topo.host('mds2').addr} }}"
    assert f'iifname "eth0" ip saddr {mds} drop' in step.input
    assert f'oifname "eth0" ip daddr {mds} drop' in step.input
    assert undo[0].argv == ("nft", "delete", "table", "inet", "mlf_1")
    everyone = parse_fault(2, ["partition", "mds1"], topo)
    script = topo.fault_steps(everyone, netem=False)[0][0].input
    assert 'iifname "eth0" drop' in script and 'oifname "eth0" drop' in script


def test_oneway_loss_and_link_down(topo):
    one = parse_fault(3, ["oneway", "mds1", "client2", "in"], topo)
    script = topo.fault_steps(one, netem=False)[0][0].input
    assert "hook input" in script and "hook output" not in script
    assert one.describe().endswith("drops what it receives from client2")
    loss = parse_fault(4, ["loss", "client1", "5%"], topo)
    script = topo.fault_steps(loss, netem=False)[0][0].input
    assert script.count("numgen random mod 100 < 5 drop") == 2
    down = parse_fault(5, ["link-down", "oss1"], topo)
    apply, undo = topo.fault_steps(down, netem=False)
    assert apply[0].argv == ("ip", "link", "set", "p-oss1", "down")
    assert apply[0].netns == topo.switch and undo[0].argv[-1] == "up"


def test_delay_uses_netem_where_there_is_one_else_the_queue(topo):
    f = parse_fault(7, ["delay", "client1", "50ms", "5ms", "reorder", "25%"], topo)
    assert (f.delay_ms, f.jitter_ms, f.reorder) == (50, 5, 25)
    apply, undo = topo.fault_steps(f, netem=True)
    assert [s.argv[-6:] for s in apply] == [("netem", "delay", "50ms", "5ms", "reorder",
                                              "25%")] * 2
    assert {s.netns for s in apply} == {topo.host("client1").netns, topo.switch}
    apply, undo = topo.fault_steps(f, netem=False)
    assert all("NFQUEUE" in s.argv and s.netns == topo.host("client1").netns for s in apply)
    assert [s.argv[1] for s in undo] == ["-D", "-D"]
    assert topo.delayer_args(f)[:4] == ["--queue", str(topo.delay_queue(f)), "--delay-ms", "50"]


def test_a_second_delay_of_one_host_is_refused_not_silently_ignored(topo):
    first = parse_fault(1, ["delay", "client1", "50ms"], topo)
    loss = parse_fault(2, ["loss", "client1", "5%"], topo)
    check_stackable(parse_fault(3, ["delay", "mds1", "50ms"], topo), [first, loss])
    check_stackable(parse_fault(3, ["loss", "client1", "5%"], topo), [first, loss])
    with pytest.raises(PlanError, match="#1 client1: 50 ms delay.*clear it first"):
        check_stackable(parse_fault(3, ["delay", "client1", "20ms"], topo), [loss, first])


@pytest.mark.parametrize("words", [["loss", "client1", "150%"], ["loss", "client1", "2.5%"],
                                   ["delay", "client1"], ["delay", "client1", "fast"],
                                   ["oneway", "mds1", "client1"], ["partition", "nohost"],
                                   ["flood", "mds1"], ["partition", "mds1", "nohost"]])
def test_bad_faults_are_refused(topo, words):
    with pytest.raises(PlanError):
        parse_fault(1, words, topo)


def test_durations_and_fault_records():
    assert parse_ms("50ms") == 50 and parse_ms("0.2s") == 200 and parse_ms("7") == 7
    f = Fault(3, "loss", "client1", percent=5)
    assert Fault.from_json(f.to_json()) == f


def test_nfqueue_messages():
    """The delayer's netlink messages: bind + config acknowledged, a verdict per id."""
    bind, params = config_messages(101)
    assert len(bind) % 4 == 0 and int.from_bytes(bind[:4], "little") == len(bind)
    v = verdict_message(101, 42)
    assert v[-4:] == (42).to_bytes(4, "big")
    # a queued packet's message, as the kernel sends it: nlmsghdr, nfgenmsg, packet hdr
    import struct

    attr = struct.pack("=HH", 4 + 7, 1) + struct.pack("!IHB", 99, 0x0800, 3) + b"\0"
    body = struct.pack("!BBH", 2, 0, 101) + attr
    msg = struct.pack("=IHHII", 16 + len(body), (3 << 8) | 0, 0, 0, 0) + body
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + bytes(16)
    assert parse_messages(msg + ack) == ([99], [0])
