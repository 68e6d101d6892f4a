"""plan.py - the plan of a multi-host test cluster on one machine: hosts as network
namespaces, their addresses, the commands that build and remove the network, the
server and mount command lines each host runs, and the commands of every network
fault. Decisions only, no I/O: driver.py runs what this module writes down, so the
whole topology and every fault rule can be checked by unit tests without root.

Topology. Every host is a network namespace `mlx<tag>-<host>` whose only link, `eth0`,
is a veth pair to a port `p-<host>` of the bridge `br0`, and the bridge lives in a
namespace of its own, `mlx<tag>-sw` (the switch). So nothing of the test network exists
in the machine's own namespace (no interface, no address; only an `unreachable` route
for the subnet, so that nothing there sends towards it by mistake); the subnet
198.18-19.Y.0/24 (derived from the tag, in the range reserved for network tests) is
reachable only between these namespaces, and a host has no default route, so it cannot
send anywhere else. Hosts: `mgs`; the MDS pair
`mds1`/`mds2` (MDT0000 serves on mds1, failover NID on mds2); OSS pairs `oss1`/`oss2`,
... (each pair serves two OSTs, one primary on each node, the other node its failover
partner, as Lustre's active/active OSS pairs); clients `client1`, `client2`, ...
Targets listen on fixed ports (each host has its own address, so every pair member
uses the same port for the same target). A target's storage is one directory that both
members of its pair reach (the shared disk), claimed by flock as on one machine.

Faults act on a host's link, in the host's namespace:
  partition HOST [PEER...]   drop everything between HOST and PEERs (default: every
                             other host), both ways (nftables)
  oneway HOST PEER in|out    drop only what HOST receives from / sends to PEER
  loss HOST PCT              drop PCT% of HOST's packets at random, each direction
                             (nftables numgen)
  link-down HOST / link-up   the switch port of HOST down (a pulled cable)
  delay HOST MS [JITTER] [REORDER%]  hold every packet of HOST's link MS milliseconds,
                             each direction: tc netem where the kernel has it, else the
                             NFQUEUE delayer (nfqdelay.py)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..servers.mmp import LEASE_INTERVALS, WAIT_INTERVALS, WAIT_MARGIN

MGS_PORT = 7000
MDT_PORT = 7001
OST_PORT_BASE = 7100
NFT_TABLE_PREFIX = "mlf_"  # every fault's own nftables table: mlf_<fault id>
DELAY_QUEUE_BASE = 100  # NFQUEUE numbers of the delayer (per namespace)


class PlanError(ValueError):
    """A fault or topology that cannot be planned (unknown host, bad value)."""


@dataclass(frozen=True)
class Step:
    """One command: argv, run in the network namespace `netns` (None: the machine's
    own, only for creating and removing namespaces), with `input` on stdin. Steps of a
    teardown are `check=False`: what is already gone is no error."""

    argv: tuple[str, ...]
    netns: str | None = None
    input: str | None = None
    check: bool = True


@dataclass(frozen=True)
class Host:
    name: str
    role: str  # mgs, mds, oss, client
    addr: str
    netns: str
    port: str  # its port on the switch (in the switch's namespace)


@dataclass(frozen=True)
class Target:
    name: str  # MGS, MDT0000, OST0001
    kind: str  # mgs, mdt, ost
    index: int
    port: int
    primary: str  # host name
    partner: str | None  # the failover partner's host name (None: the MGS)


def tag_for(key: str) -> str:
    """A short tag from a unique key (a state directory, a pid): names and subnet."""
    return hashlib.sha1(key.encode()).hexdigest()[:6]


SUBNETS = 512  # the /24s of 198.18.0.0/15


def default_net(tag: str) -> int:
    return int(hashlib.sha1(tag.encode()).hexdigest()[:6], 16) % SUBNETS


@dataclass
class Topology:
    tag: str
    fsname: str
    clients: int = 2
    oss_pairs: int = 1
    net: int = 0  # which /24 of 198.18.0.0/15 (0..511)
    hosts: dict[str, Host] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)

    @classmethod
    def build(cls, tag: str, fsname: str, *, clients: int = 2, oss_pairs: int = 1,
              net: int | None = None) -> Topology:
        """net: the /24 to use (default: one derived from the tag; the driver moves to the
        next one while the guard route says another cluster has it)."""
        if not re.fullmatch(r"[0-9a-z]{1,8}", tag):
            raise PlanError(f"tag {tag!r}: 1 to 8 lowercase letters or digits")
        if not 1 <= clients <= 32 or not 1 <= oss_pairs <= 8:
            raise PlanError("1 to 32 clients and 1 to 8 OSS pairs")
        topo = cls(tag, fsname, clients, oss_pairs,
                   net=default_net(tag) if net is None else net % SUBNETS)
        names = [("mgs", "mgs"), ("mds1", "mds"), ("mds2", "mds")]
        names += [(f"oss{i}", "oss") for i in range(1, 2 * oss_pairs + 1)]
        names += [(f"client{i}", "client") for i in range(1, clients + 1)]
        for i, (name, role) in enumerate(names):
            topo.hosts[name] = Host(name, role, f"{topo.subnet}.{i + 2}",
                                    f"mlx{tag}-{name}", f"p-{name}")
        topo.targets["MGS"] = Target("MGS", "mgs", 0, MGS_PORT, "mgs", None)
        topo.targets["MDT0000"] = Target("MDT0000", "mdt", 0, MDT_PORT, "mds1", "mds2")
        for pair in range(oss_pairs):
            a, b = f"oss{2 * pair + 1}", f"oss{2 * pair + 2}"
            for j, (primary, partner) in enumerate(((a, b), (b, a))):
                index = 2 * pair + j
                name = f"OST{index:04X}"
                topo.targets[name] = Target(name, "ost", index, OST_PORT_BASE + index,
                                            primary, partner)
        return topo

    # -- names and addresses --
    @property
    def subnet(self) -> str:
        """198.18.Y or 198.19.Y (a /24 of 198.18.0.0/15, the range reserved for network
        tests, RFC 2544), from the tag. Its addresses exist only in the namespaces; the
        machine's own namespace gets only an `unreachable` route for it (guard_steps)."""
        return f"198.{18 + self.net // 256}.{self.net % 256}"

    @property
    def switch(self) -> str:
        return f"mlx{self.tag}-sw"

    @property
    def namespaces(self) -> list[str]:
        return [self.switch] + [h.netns for h in self.hosts.values()]

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise PlanError(f"no host {name!r} (hosts: {', '.join(self.hosts)})") from None

    def target(self, name: str) -> Target:
        key = name.split("-")[-1].upper()  # FSNAME-OST0001 or ost0001
        try:
            return self.targets[key]
        except KeyError:
            raise PlanError(f"no target {name!r} (targets: {', '.join(self.targets)})") from None

    def nid(self, target: str, host: str | None = None) -> str:
        t = self.target(target)
        return f"{self.host(host or t.primary).addr}:{t.port}"

    def spec(self) -> str:
        """The mount spec, by address, as on real hosts."""
        return f"{self.nid('MGS')}:/{self.fsname}"

    @property
    def client_hosts(self) -> list[str]:
        return [h.name for h in self.hosts.values() if h.role == "client"]

    def server_hosts(self) -> list[str]:
        return [h.name for h in self.hosts.values() if h.role != "client"]

    # -- building and removing the network --
    def guard_route(self) -> str:
        return f"{self.subnet}.0/24"

    def setup_steps(self) -> list[Step]:
        # The one thing in the machine's own namespace: the subnet is unreachable from
        # there, so a tool run outside the hosts by mistake (lfs, a test) fails at once
        # instead of sending towards whatever the default route leads to.
        steps = [Step(("ip", "route", "add", "unreachable", self.guard_route()))]
        steps += [Step(("ip", "netns", "add", ns)) for ns in self.namespaces]
        sw = self.switch
        steps += [Step(("ip", "link", "set", "lo", "up"), sw),
                  Step(("ip", "link", "add", "br0", "type", "bridge"), sw),
                  Step(("ip", "link", "set", "br0", "up"), sw)]
        for h in self.hosts.values():
            # Both ends are created in their namespaces: no name in the machine's own.
            steps += [
                Step(("ip", "link", "add", "eth0", "netns", h.netns, "type", "veth",
                      "peer", "name", h.port, "netns", sw)),
                Step(("ip", "link", "set", h.port, "master", "br0"), sw),
                Step(("ip", "link", "set", h.port, "up"), sw),
                Step(("ip", "link", "set", "lo", "up"), h.netns),
                Step(("ip", "addr", "add", f"{h.addr}/24", "dev", "eth0"), h.netns),
                Step(("ip", "link", "set", "eth0", "up"), h.netns),
            ]
        return steps

    def teardown_steps(self) -> list[Step]:
        """Deleting a namespace deletes its veth ends (and so their peers) and rules."""
        return [Step(("ip", "netns", "delete", ns), check=False)
                for ns in reversed(self.namespaces)] + [
            Step(("ip", "route", "del", "unreachable", self.guard_route()), check=False)]

    # -- servers --
    def server_args(self, target: str, host: str, *, data: str, key: str | None,
                    release: str = "2.0", options: tuple[str, ...] = (),
                    mmp: Mmp | None = None, standby: bool = False) -> list[str]:
        """`mlustre server ...` arguments for target on host (its primary or partner).
        mmp: the heartbeat options of a pair's servers (both members get the same, see
        Mmp); standby: this one waits on the partner host and takes over by itself."""
        t = self.target(target)
        if standby and t.partner is None:
            raise PlanError(f"{t.name} has no failover partner to stand by on")
        if host not in (t.primary, t.partner):
            raise PlanError(f"{t.name} serves on {t.primary}"
                            + (f" or {t.partner}" if t.partner else ""))
        args = ["server", t.kind, "--fsname", self.fsname, "--data", data,
                "--listen", self.nid(t.name, host), "--release", release]
        if t.kind != "mgs":
            args += ["--index", str(t.index), "--mgs", self.nid("MGS")]
            other = t.partner if host == t.primary else t.primary
            assert other is not None
            args += ["--failover-nid", self.nid(t.name, other)]
        if t.kind == "mdt":
            args += ["--osts", str(2 * self.oss_pairs)]
        if key:
            args += ["--key", key]
        if mmp is not None and t.partner is not None:
            args += mmp.options()
        return args + list(options) + (["--standby"] if standby else [])

    def other_host(self, target: str, host: str) -> str:
        """The other host of target's pair: where its standby goes while it serves on
        host (or where it moves to)."""
        t = self.target(target)
        if t.partner is None:
            raise PlanError(f"{t.name} has no failover partner")
        if host not in (t.primary, t.partner):
            raise PlanError(f"{host} is not a host of {t.name}'s pair")
        return t.partner if host == t.primary else t.primary

    def start_order(self) -> list[str]:
        """MGS first (the others register with it), then the OSTs, then the MDT (which
        reads the OST list)."""
        return ["MGS"] + [n for n in self.targets if n.startswith("OST")] + ["MDT0000"]

    # -- faults --
    def fault_steps(self, fault: Fault, *, netem: bool) -> tuple[list[Step], list[Step]]:
        """The steps that apply a fault and the ones that lift it again."""
        h = self.host(fault.host)
        table = f"{NFT_TABLE_PREFIX}{fault.id}"
        undo_nft = [Step(("nft", "delete", "table", "inet", table), h.netns, check=False)]
        if fault.kind in ("partition", "oneway"):
            peers = [self.host(p).addr for p in fault.peers] if fault.peers else []
            rules = []
            for direction in (("in", "out") if fault.kind == "partition" else (fault.direction,)):
                hook, iface, addr = (("input", "iifname", "saddr") if direction == "in"
                                     else ("output", "oifname", "daddr"))
                match = f"ip {addr} {{ {', '.join(peers)} }} " if peers else ""
                rules.append((hook, f'{iface} "eth0" {match}drop'))
            return [Step(("nft", "-f", "-"), h.netns, nft_script(table, rules))], undo_nft
        if fault.kind == "loss":
            rules = [(hook, f'{iface} "eth0" numgen random mod 100 < {int(fault.percent)} drop')
                     for hook, iface in (("input", "iifname"), ("output", "oifname"))]
            return [Step(("nft", "-f", "-"), h.netns, nft_script(table, rules))], undo_nft
        if fault.kind == "link-down":
            return ([Step(("ip", "link", "set", h.port, "down"), self.switch)],
                    [Step(("ip", "link", "set", h.port, "up"), self.switch, check=False)])
        if fault.kind == "delay":
            return self._delay_steps(fault, h, netem)
        raise PlanError(f"unknown fault {fault.kind!r}")

    def _delay_steps(self, fault: Fault, h: Host, netem: bool) -> tuple[list[Step], list[Step]]:
        if netem:  # both directions: HOST's egress, and the switch port's (HOST's ingress)
            spec = ["delay", f"{fault.delay_ms:g}ms"]
            if fault.jitter_ms:
                spec += [f"{fault.jitter_ms:g}ms"]
            if fault.reorder:
                spec += ["reorder", f"{fault.reorder:g}%"]
            ends = ((h.netns, "eth0"), (self.switch, h.port))
            return ([Step(("tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec), ns)
                     for ns, dev in ends],
                    [Step(("tc", "qdisc", "del", "dev", dev, "root"), ns, check=False)
                     for ns, dev in ends])
        queue = str(self.delay_queue(fault))
        rules = [("OUTPUT", "-o"), ("INPUT", "-i")]
        apply = [Step(("iptables", "-A", chain, flag, "eth0", "-j", "NFQUEUE", "--queue-num",
                       queue, "--queue-bypass"), h.netns) for chain, flag in rules]
        undo = [Step(("iptables", "-D", chain, flag, "eth0", "-j", "NFQUEUE", "--queue-num",
                      queue, "--queue-bypass"), h.netns, check=False) for chain, flag in rules]
        return apply, undo

    def delay_queue(self, fault: Fault) -> int:
        return DELAY_QUEUE_BASE + fault.id % 1000

    def delayer_args(self, fault: Fault) -> list[str]:
        """The delayer's arguments (python -m mlustre.netns.nfqdelay ...), without netem."""
        return ["--queue", str(self.delay_queue(fault)), "--delay-ms", f"{fault.delay_ms:g}",
                "--jitter-ms", f"{fault.jitter_ms:g}", "--reorder", f"{fault.reorder:g}"]


@dataclass(frozen=True)
class Mmp:
    """The heartbeat (MMP) options of the servers of the failover pairs.

    Every server of a pair gets the same ones, primary and standby alike, because a
    standby's takeover wait is derived from its *own* interval, and it is safe only
    while it outlasts its partner's lease plus one renewal (servers/mmp.py). The
    bounds below are what a test or an administrator may expect when a primary's host
    is cut off: it fences itself (quorum lost, then its lease runs out) before its
    standby takes over (when the fenced server's flock is free, or the heartbeat has
    not moved for `takeover_wait`)."""

    interval: float = 1.0
    quorum: float = 10.0  # seconds without an MGS answer before renewals stop (0: off)

    def __post_init__(self) -> None:
        if not 0.05 <= self.interval <= 60 or self.quorum < 0:
            raise PlanError("--mmp-interval: 0.05 to 60 s; --mmp-quorum: 0 (off) or more s")

    def options(self) -> list[str]:
        return ["--mmp-interval", f"{self.interval:g}", "--mmp-quorum", f"{self.quorum:g}"]

    @property
    def lease(self) -> float:
        return LEASE_INTERVALS * self.interval

    @property
    def takeover_wait(self) -> float:
        return WAIT_INTERVALS * self.interval + WAIT_MARGIN

    def fence_window(self) -> tuple[float, float]:
        """Seconds after a primary's host is cut off within which it fences: its last
        MGS answer came at most one interval and one ping timeout before the cut, its
        renewals stop `quorum` seconds after that answer, and it fences when the last
        renewal is `lease` old (checked every interval). Without a quorum it never
        fences (it still reaches the shared storage): (inf, inf)."""
        if not self.quorum:
            return (float("inf"), float("inf"))
        ping_timeout = max(self.interval, 0.5)
        early = self.quorum + self.lease - 2 * self.interval - ping_timeout
        return (max(0.0, early), self.quorum + self.lease + self.interval)

    def takeover_within(self) -> float:
        """Seconds after the cut by which the standby has taken over. Usually the fenced
        server exits and frees the storage's flock, and the standby claims at its next
        look (fence_window()[1] + an interval); should the fenced process hang instead,
        the heartbeat path bounds it: the record stops moving by `quorum` after the cut,
        the standby sees it unchanged within an interval, waits `takeover_wait` (longer
        than the lease plus an interval, so the old server has fenced by then whatever
        its clock did) and re-checks its claim 2 intervals later."""
        return self.quorum + self.takeover_wait + 3 * self.interval

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Mmp | None:
        return None if d is None else cls(float(d["interval"]), float(d["quorum"]))

    def to_json(self) -> dict[str, float]:
        return {"interval": self.interval, "quorum": self.quorum}


def holder_pid(record_text: str) -> int | None:
    """The pid of the server that wrote a heartbeat record (`DATA/mmp`, JSON whose
    holder is "NAME pid=N nid=HOST:PORT"); None when it is no record. The namespaces
    share the machine's pid namespace, so this is the pid the driver recorded."""
    try:
        record = json.loads(record_text)
    except ValueError:
        return None
    m = re.search(r"\bpid=(\d+)\b", str(record.get("holder", ""))) \
        if isinstance(record, dict) else None
    return int(m.group(1)) if m else None


def after_takeover(server: dict[str, Any], standby: dict[str, Any] | None,
                   holder: int | None, standby_alive: bool) -> tuple[dict[str, Any],
                                                                     dict[str, Any]] | None:
    """The state's (server, standby) entries of one target once its standby took over
    by itself (it holds the heartbeat and runs): swapped, so that `status`, `failover`
    and `down` name the server that serves, and the old one (fenced, or about to fence
    when it runs again) is the standby entry, shown as stopped once it exited. None:
    nothing to change."""
    if not standby or not standby_alive or holder is None or holder != standby.get("pid"):
        return None
    return dict(standby), dict(server)


def nft_script(table: str, rules: list[tuple[str, str]]) -> str:
    """An nftables table of its own for one fault, so lifting it is one delete."""
    lines = [f"table inet {table} {{"]
    for hook in dict.fromkeys(h for h, _ in rules):
        lines.append(f"  chain {hook} {{")
        lines.append(f"    type filter hook {hook} priority -10; policy accept;")
        lines += [f"    {rule}" for h, rule in rules if h == hook]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class Fault:
    """One fault on one host's link, as recorded in the cluster's state."""

    id: int
    kind: str  # partition, oneway, loss, link-down, delay
    host: str
    peers: list[str] = field(default_factory=list)
    direction: str = "in"  # oneway: in (HOST receives nothing from PEER) or out
    percent: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0

    def describe(self) -> str:
        what = {"partition": f"cut off from {', '.join(self.peers) or 'every host'}",
                "oneway": f"drops what it {'receives from' if self.direction == 'in' else 'sends to'}"
                          f" {', '.join(self.peers)}",
                "loss": f"{self.percent:g}% loss each way",
                "link-down": "link down",
                "delay": f"{self.delay_ms:g} ms delay each way"
                         + (f" ±{self.jitter_ms:g} ms" if self.jitter_ms else "")
                         + (f", {self.reorder:g}% sent at once (reordered)" if self.reorder
                            else "")}[self.kind]
        return f"#{self.id} {self.host}: {what}"

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Fault:
        return cls(**d)  # type: ignore[arg-type]


def parse_fault(fault_id: int, words: list[str], topo: Topology) -> Fault:
    """`partition HOST [PEER...]`, `oneway HOST PEER in|out`, `loss HOST 5%`,
    `link-down HOST`, `delay HOST 50ms [JITTER] [reorder 25%]` -> a Fault."""
    if len(words) < 2:
        raise PlanError("a fault needs a kind and a host")
    kind, host, rest = words[0], words[1], words[2:]
    topo.host(host)
    if kind == "partition":
        for p in rest:
            topo.host(p)
        return Fault(fault_id, kind, host, peers=list(rest))
    if kind == "oneway":
        if len(rest) != 2 or rest[1] not in ("in", "out"):
            raise PlanError("oneway HOST PEER in|out")
        topo.host(rest[0])
        return Fault(fault_id, kind, host, peers=[rest[0]], direction=rest[1])
    if kind == "loss":
        if len(rest) != 1:
            raise PlanError("loss HOST PERCENT")
        pct = parse_percent(rest[0])
        if not 0 < pct <= 100 or pct != int(pct):
            raise PlanError("loss: a whole percentage, 1 to 100")
        return Fault(fault_id, kind, host, percent=pct)
    if kind == "link-down":
        if rest:
            raise PlanError("link-down HOST")
        return Fault(fault_id, kind, host)
    if kind == "delay":
        if not rest:
            raise PlanError("delay HOST 50ms [JITTER] [reorder PCT]")
        delay = parse_ms(rest[0])
        jitter = reorder = 0.0
        tail = rest[1:]
        if tail and tail[0] != "reorder":
            jitter = parse_ms(tail.pop(0))
        if tail:
            if tail[0] != "reorder" or len(tail) != 2:
                raise PlanError("delay HOST MS [JITTER] [reorder PCT]")
            reorder = parse_percent(tail[1])
        if not 0 < delay <= 10_000 or jitter > delay or not 0 <= reorder < 100:
            raise PlanError("delay: 0 to 10 s, jitter at most the delay, reorder below 100%")
        return Fault(fault_id, kind, host, delay_ms=delay, jitter_ms=jitter, reorder=reorder)
    raise PlanError(f"unknown fault {kind!r} (partition, oneway, loss, link-down, delay)")


def check_stackable(fault: Fault, active: list[Fault]) -> None:
    """PlanError if `fault` cannot be added on top of the faults in force: a second delay
    on one host would not add up (netem's qdisc is replaced, and the first NFQUEUE rule
    accepts what it delays, so a second never sees the packet), and saying so beats a
    fault that silently does nothing. Delays on two hosts do add up (each link holds
    the packet in turn)."""
    if fault.kind != "delay":
        return
    for other in active:
        if other.kind == "delay" and other.host == fault.host:
            raise PlanError(f"fault {other.describe()} is in force; clear it first for "
                            f"another delay of {fault.host} (delays of one host do not add up)")


def parse_ms(text: str) -> float:
    """"50ms", "0.2s", "50" (milliseconds) -> milliseconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", text.strip())
    if not m:
        raise PlanError(f"{text!r}: expected a duration such as 50ms or 0.2s")
    value = float(m.group(1))
    return value * 1000 if m.group(2) == "s" else value


def parse_percent(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%?", text.strip())
    if not m:
        raise PlanError(f"{text!r}: expected a percentage such as 5%")
    return float(m.group(1))
