"""driver.py - runs the plan of plan.py: builds the namespaces and links, starts the
servers (`mlustre server`) and clients (`mlustre mount SPEC`) inside their hosts'
namespaces, applies and lifts faults, and tears everything down.

Everything is recorded in DIR/netns.json (namespaces, server and standby pids with
their start times, mounts, faults with their delayer pids), so separate invocations of
`scripts/netns-cluster` (up, fault, exec, down) share one cluster, and `down` ends only
the processes this cluster started, by pid (and start time: a recycled pid is never
signalled).

Processes enter a host with `nsenter --net=/run/netns/NAME`, not `ip netns exec`: the
latter also makes a private mount namespace, which would hide a client's FUSE mount
from the rest of the machine (and from `mlustre umount`). A host therefore shares the
machine's filesystem (as NFS-shared storage and a shared /run would), and only its
network is its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..localcluster.cluster import cli_command, force_unmount
from ..localcluster.daemons import DaemonFailed, stop_pid, wait_ready
from ..localcluster.processes import proc_starttime, terminate_pids
from .plan import (
    SUBNETS,
    Fault,
    Mmp,
    PlanError,
    Step,
    Topology,
    after_takeover,
    check_stackable,
    holder_pid,
    parse_fault,
    tag_for,
)

STATE = "netns.json"
READY_TIMEOUT = 60.0
TAKEOVER_TIMEOUT = 60.0  # a handover (`failover` of a target with a standby)


def _live_pid(entry: dict[str, Any] | None) -> int | None:
    """The PID a state entry records, if that very process (same start time) still runs."""
    if entry and entry.get("pid") and proc_starttime(entry["pid"]) == entry.get("start"):
        return int(entry["pid"])
    return None


class NetnsError(Exception):
    """A failure to report in one line (a command that failed, a host that is unknown)."""


def in_netns(netns: str | None, argv: list[str] | tuple[str, ...]) -> list[str]:
    return list(argv) if netns is None else ["nsenter", f"--net=/run/netns/{netns}", "--",
                                             *argv]


def run_step(step: Step, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(in_netns(step.netns, step.argv), input=step.input, text=True,
                       capture_output=True, timeout=timeout, check=False)
    if step.check and r.returncode != 0:
        where = f" (in {step.netns})" if step.netns else ""
        raise NetnsError(f"{' '.join(step.argv)}{where}: {r.stderr.strip() or r.returncode}")
    return r


def missing_tools(*, delay: bool = False) -> list[str]:
    """The commands a cluster needs that this machine lacks (Debian packages: iproute2,
    util-linux, nftables, iptables)."""
    tools = ["ip", "nsenter", "nft"] + (["iptables"] if delay else [])
    return [t for t in tools if shutil.which(t) is None]


class NetnsCluster:
    """One multi-host cluster, known by its state directory."""

    def __init__(self, base: Path, state: dict[str, Any]) -> None:
        self.base = base
        self.state = state
        self.state.setdefault("standbys", {})  # (a state written before standbys)
        self.state.setdefault("mmp", None)
        # The servers this object started, by pid: their exit status (a fenced server
        # exits with 3) is known only to the process that started them, and only while
        # their Popen is kept (one dropped is reaped, status lost, by the next Popen).
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.topo = Topology.build(state["tag"], state["fsname"], clients=state["clients"],
                                   oss_pairs=state["oss_pairs"], net=state.get("net"))

    # -- state --
    @classmethod
    def create(cls, base: str | os.PathLike[str], *, fsname: str = "mhfs", clients: int = 2,
               oss_pairs: int = 1, tag: str | None = None,
               server_options: list[str] | None = None,
               mmp: Mmp | None = None) -> NetnsCluster:
        """mmp: the heartbeat options of every server of a failover pair (None: the
        servers' defaults), which standbys need short to take over quickly."""
        base = Path(base).resolve()
        if (base / STATE).exists():
            raise NetnsError(f"{base} already holds a cluster ({STATE}); `down` it first")
        base.mkdir(parents=True, exist_ok=True)
        state = {"tag": tag or tag_for(str(base)), "fsname": fsname, "clients": clients,
                 "oss_pairs": oss_pairs, "server_options": server_options or [],
                 "network": False, "netem": None, "servers": {}, "mounts": {},
                 "faults": [], "next_fault": 1, "standbys": {},
                 "mmp": mmp.to_json() if mmp is not None else None}
        c = cls(base, state)
        c.save()
        return c

    @classmethod
    def load(cls, base: str | os.PathLike[str]) -> NetnsCluster:
        base = Path(base).resolve()
        try:
            state = json.loads((base / STATE).read_text())
        except FileNotFoundError:
            raise NetnsError(f"no cluster in {base} (start one with `up`)") from None
        return cls(base, state)

    def save(self) -> None:
        tmp = self.base / (STATE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.base / STATE)

    # -- paths --
    def host_dir(self, host: str) -> Path:
        return self.base / "hosts" / host

    def key_file(self, host: str) -> Path:
        return self.host_dir(host) / "fs.key"

    def storage(self, target: str) -> Path:
        return self.base / "storage" / f"{self.topo.fsname}-{self.topo.target(target).name}"

    def mountpoint(self, client: str) -> Path:
        return self.base / "mnt" / client

    @property
    def spec(self) -> str:
        return self.topo.spec()

    # -- network --
    def network_up(self) -> None:
        missing = missing_tools()
        if missing:
            raise NetnsError(f"missing commands: {', '.join(missing)} (scripts/bootstrap "
                             f"installs them)")
        self._claim_subnet()
        self.state["network"] = True  # from here on, down removes what exists
        self.save()
        for step in self.topo.setup_steps()[1:]:  # (the guard route: claimed above)
            run_step(step)
        self.state["netem"] = self._probe_netem()
        self.save()

    def _claim_subnet(self) -> None:
        """Take the first free /24 from the tag's own on: adding the guard route is the
        claim (it fails with EEXIST while another cluster on this machine has it), so
        concurrent clusters never share a subnet."""
        start = self.topo.net
        for i in range(SUBNETS):
            topo = Topology.build(self.topo.tag, self.topo.fsname, clients=self.topo.clients,
                                  oss_pairs=self.topo.oss_pairs, net=start + i)
            guard = replace(topo.setup_steps()[0], check=False)
            r = run_step(guard)
            if r.returncode == 0:
                self.topo = topo
                self.state["net"] = topo.net
                self.save()
                return
            if "exists" not in r.stderr.lower():
                raise NetnsError(f"{' '.join(guard.argv)}: {r.stderr.strip()}")
        raise NetnsError("every test subnet of 198.18.0.0/15 is in use on this machine")

    def _probe_netem(self) -> bool:
        """Whether tc netem works here (sch_netem built or loadable): tried on the
        switch namespace's loopback, which carries nothing."""
        r = run_step(Step(("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"),
                          self.topo.switch, check=False))
        if r.returncode == 0:
            run_step(Step(("tc", "qdisc", "del", "dev", "lo", "root"), self.topo.switch,
                          check=False))
        return r.returncode == 0

    def make_keys(self) -> None:
        """One key, copied to every host (mode 0600), as an administrator would."""
        master = self.base / "fs.key"
        if not master.exists():
            r = subprocess.run([*cli_command(), "keygen", str(master)], capture_output=True,
                               text=True, timeout=60, check=False)
            if r.returncode != 0:
                raise NetnsError(f"keygen: {r.stderr.strip()}")
        for host in self.topo.hosts:
            dest = self.key_file(host)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(master, dest)
            os.chmod(dest, 0o600)

    # -- servers --
    def start_server(self, target: str, host: str | None = None,
                     release: str | None = None,
                     extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """Start target's server on host (default: where it ran last, else its primary),
        as `mlustre server` in that host's namespace, and wait for its READY line. extra:
        more `mlustre server` options for this start (e.g. a standby's, on the partner
        host while the primary serves)."""
        t = self.topo.target(target)
        old = self.state["servers"].get(t.name, {})
        host = host or old.get("host") or t.primary
        release = release or old.get("release") or "2.0"
        entry = self._spawn(t.name, host, release, extra, standby=False)
        self.state["servers"][t.name] = entry
        self.save()
        return entry

    def _spawn(self, target: str, host: str, release: str, extra: tuple[str, ...], *,
               standby: bool) -> dict[str, Any]:
        """`mlustre server` for target on host, in its namespace; its READY line waited
        for (a standby's says it watches). The entry to record."""
        t = self.topo.target(target)
        storage = self.storage(t.name)
        storage.mkdir(parents=True, exist_ok=True)
        args = self.topo.server_args(t.name, host, data=str(storage),
                                     key=str(self.key_file(host)), release=release,
                                     options=(*self._options_for(t.kind), *extra),
                                     mmp=Mmp.from_json(self.state["mmp"]), standby=standby)
        log = self.host_dir(host) / f"{t.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as logf:
            offset = logf.tell()
            proc = subprocess.Popen(in_netns(self.topo.host(host).netns, [*cli_command(), *args]),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=logf, start_new_session=True, close_fds=True)
        what = f"{'standby of ' if standby else ''}{t.name} on {host}"
        try:
            wait_ready(proc, log, what, READY_TIMEOUT)
        except DaemonFailed as e:
            raise NetnsError(str(e)) from None
        self.procs[proc.pid] = proc
        return {"host": host, "pid": proc.pid, "start": proc_starttime(proc.pid),
                "release": release, "log": str(log), "log_offset": offset}

    def exit_status(self, pid: int) -> int | None:
        """The exit status of a server this object started (None: still running, or
        not started here)."""
        proc = self.procs.get(pid)
        return proc.poll() if proc is not None else None

    # -- standbys --
    def start_standby(self, target: str) -> dict[str, Any]:
        """Start target's standby on the host of its pair that does not serve it (`mlustre
        server ... --standby`, the same storage directory: the shared disk), and wait
        until it watches. It takes the target over by itself when the server stops,
        freezes or its host is cut off (servers/heartbeat.py)."""
        t = self.topo.target(target)
        self.reconcile()
        entry = self.state["servers"].get(t.name)
        if not entry:
            raise NetnsError(f"{t.name} was never started")
        if self.standby_pid(t.name) is not None:
            old = self.state["standbys"][t.name]
            raise NetnsError(f"{t.name} already has a standby on {old['host']} "
                             f"(pid {old['pid']})")
        host = self.topo.other_host(t.name, entry["host"])
        standby = self._spawn(t.name, host, entry.get("release") or "2.0", (), standby=True)
        self.state["standbys"][t.name] = standby
        self.save()
        return standby

    def standby_pid(self, target: str) -> int | None:
        return _live_pid(self.state["standbys"].get(self.topo.target(target).name))

    def stop_standby(self, target: str) -> None:
        pid = self.standby_pid(target)
        if pid is not None:
            stop_pid(pid, timeout=30)
        entry = self.state["standbys"].get(self.topo.target(target).name)
        if entry:
            entry["pid"] = None
            self.save()

    def holder(self, target: str) -> int | None:
        """The pid in target's heartbeat record: the server that holds its storage."""
        try:
            return holder_pid((self.storage(target) / "mmp").read_text())
        except OSError:
            return None

    def reconcile(self) -> list[str]:
        """Swap the state's server and standby entries of every target whose standby
        took over by itself since (plan.after_takeover). Returns those targets."""
        swapped = []
        for name, standby in self.state["standbys"].items():
            server = self.state["servers"].get(name)
            if server is None:
                continue
            pair = after_takeover(server, standby, self.holder(name),
                                  self.standby_pid(name) is not None)
            if pair is not None:
                self.state["servers"][name], self.state["standbys"][name] = pair
                swapped.append(name)
        if swapped:
            self.save()
        return swapped

    def wait_takeover(self, target: str, timeout: float) -> bool:
        """Until target's standby holds the heartbeat and says it serves (its READY
        line, in its log once it took over): True, with the entries swapped; False if
        it died or the time ran out."""
        t = self.topo.target(target)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.standby_pid(t.name)
            if pid is None:
                return False
            if self.holder(t.name) == pid and self._says_ready(self.state["standbys"][t.name]):
                self.reconcile()
                return True
            time.sleep(0.1)
        return False

    def _says_ready(self, entry: dict[str, Any]) -> bool:
        """Whether a standby's log (since it started) has its serving READY line."""
        try:
            with open(entry["log"], "rb") as f:
                f.seek(entry.get("log_offset") or 0)
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        return any(line.startswith("READY ") and not line.startswith("READY standby ")
                   for line in text.splitlines())

    def _options_for(self, kind: str) -> list[str]:
        """The cluster's server options that apply to this kind of server."""
        opts = list(self.state["server_options"])
        if kind == "mgs":  # (timeouts of targets only)
            out, skip = [], False
            for o in opts:
                if skip:
                    skip = False
                    continue
                if o in ("--ldlm-timeout", "--recovery-window", "--ping-evict-timeout"):
                    skip = True
                    continue
                out.append(o)
            return out
        return opts

    def server_pid(self, target: str) -> int | None:
        return _live_pid(self.state["servers"].get(self.topo.target(target).name))

    def stop_server(self, target: str, *, crash: bool = False, timeout: float = 60) -> None:
        """SIGTERM: a graceful stop, which freezes the target's SIR barrier first (a
        controlled failover); crash: SIGKILL."""
        pid = self.server_pid(target)
        if pid is not None:
            if crash:
                os.kill(pid, signal.SIGKILL)
            stop_pid(pid, timeout=timeout)
        self.state["servers"].get(self.topo.target(target).name, {})["pid"] = None
        self.save()

    def failover(self, target: str, kind: str, *, release: str | None = None) -> str:
        """restart (controlled, same host), crash (kill -9, same host), partner
        (controlled, onto the other host of the pair), crash-partner (kill -9, then the
        other host: fencing a server that cannot be reached), upgrade (controlled, same
        host, the given release). A target with a live standby is handed over to it
        instead (_hand_over)."""
        if kind not in ("restart", "crash", "partner", "crash-partner", "upgrade"):
            raise NetnsError(f"unknown failover kind {kind!r}")
        t = self.topo.target(target)
        self.reconcile()
        entry = self.state["servers"].get(t.name)
        if not entry:
            raise NetnsError(f"{t.name} was never started")
        if self.standby_pid(t.name) is not None:
            return self._hand_over(t.name, kind)
        host = entry["host"]
        if kind in ("partner", "crash-partner"):
            if t.partner is None:
                raise NetnsError(f"{t.name} has no failover partner")
            host = t.partner if host == t.primary else t.primary
        self.stop_server(t.name, crash=kind.startswith("crash"))
        self.start_server(t.name, host, release=release)
        return f"{kind} {t.name}: now on {host} ({release or entry.get('release')})"

    def _hand_over(self, target: str, kind: str) -> str:
        """A failover of a target that has a standby: the server stops (gracefully, or
        kill -9 for crash and crash-partner), the standby takes over by itself, and the
        stopped host becomes the new standby. The target always moves to the other host
        (its standby serves it before the old server could restart), so an upgrade in
        place is refused."""
        if kind == "upgrade":
            standby = self.state["standbys"][target]
            raise NetnsError(f"{target} has a standby on {standby['host']}: stop it first "
                             f"(`standby {target} --stop`) to upgrade in place")
        old = self.state["servers"][target]["host"]
        self.stop_server(target, crash=kind.startswith("crash"))
        if not self.wait_takeover(target, TAKEOVER_TIMEOUT):
            raise NetnsError(f"{target}'s standby did not take over within "
                             f"{TAKEOVER_TIMEOUT:g}s")
        self.start_standby(target)
        now = self.state["servers"][target]
        return f"{kind} {target}: its standby took over on {now['host']}; {old} stands by"

    def freeze(self, target: str, seconds: float) -> None:
        """SIGSTOP the server for a while (a hung server), then SIGCONT."""
        pid = self.server_pid(target)
        if pid is None:
            raise NetnsError(f"{target} is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def start_servers(self) -> None:
        for name in self.topo.start_order():
            self.start_server(name)

    # -- clients --
    def mount(self, client: str, extra: list[str] | None = None) -> Path:
        h = self.topo.host(client)
        if h.role != "client":
            raise NetnsError(f"{client} is not a client host")
        mnt = self.mountpoint(client)
        mnt.mkdir(parents=True, exist_ok=True)
        os.chmod(mnt, 0o755)
        log = self.host_dir(client) / "mount.log"
        argv = [*cli_command(), "mount", "--key", str(self.key_file(client)), *(extra or []),
                self.spec, str(mnt)]
        r = subprocess.run(in_netns(h.netns, argv), capture_output=True, text=True,
                           timeout=90, check=False, start_new_session=True)
        log.write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise NetnsError(f"mount on {client}: {r.stderr.strip() or r.stdout.strip()}")
        self.state["mounts"][client] = str(mnt)
        self.save()
        return mnt

    def umount(self, client: str) -> list[str]:
        """`mlustre umount` (dirty data written back), else fusermount3 -u/-uz."""
        mnt = self.state["mounts"].get(client)
        problems: list[str] = []
        if not mnt:
            return problems
        from .. import registry

        info = registry.find_mount(mnt)
        r = subprocess.run([*cli_command(), "umount", mnt], capture_output=True, text=True,
                           timeout=90, check=False)
        if r.returncode != 0:
            problems.append(f"umount {mnt}: {r.stderr.strip()}")
            problems += force_unmount(mnt)
            pid = info.get("pid") if info else None
            if pid:
                terminate_pids({int(pid): proc_starttime(int(pid)) or 0}, grace=5)
        del self.state["mounts"][client]
        self.save()
        return problems

    # -- faults --
    def add_fault(self, words: list[str]) -> Fault:
        fault = parse_fault(self.state["next_fault"], words, self.topo)
        check_stackable(fault, [Fault.from_json(r["fault"]) for r in self.state["faults"]])
        if fault.kind == "delay" and not self.state.get("netem") and missing_tools(delay=True):
            raise NetnsError("delay without netem needs iptables (scripts/bootstrap)")
        apply, _undo = self.topo.fault_steps(fault, netem=bool(self.state.get("netem")))
        record = {"fault": fault.to_json(), "delayer": None}
        self.state["next_fault"] += 1
        self.state["faults"].append(record)
        self.save()
        try:
            if fault.kind == "delay" and not self.state.get("netem"):
                record["delayer"] = self._start_delayer(fault)  # before the queue exists
                self.save()
            for step in apply:
                run_step(step)
        except (NetnsError, PlanError):
            self.clear_fault(fault.id)
            raise
        return fault

    def _start_delayer(self, fault: Fault) -> dict[str, Any]:
        h = self.topo.host(fault.host)
        log = self.host_dir(fault.host) / f"nfqdelay-{fault.id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                in_netns(h.netns, [sys.executable, "-m", "mlustre.netns.nfqdelay",
                                   *self.topo.delayer_args(fault)]),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf,
                start_new_session=True, close_fds=True)
        try:
            wait_ready(proc, log, f"delayer on {fault.host}", 20)
        except DaemonFailed as e:
            raise NetnsError(str(e)) from None
        return {"pid": proc.pid, "start": proc_starttime(proc.pid)}

    def clear_fault(self, fault_id: int) -> None:
        for record in list(self.state["faults"]):
            fault = Fault.from_json(record["fault"])
            if fault.id != fault_id:
                continue
            _apply, undo = self.topo.fault_steps(fault, netem=bool(self.state.get("netem")))
            for step in undo:
                run_step(step)
            d = record.get("delayer")
            if d and d.get("pid") and proc_starttime(d["pid"]) == d.get("start"):
                stop_pid(d["pid"], timeout=5)  # (it lets what it holds go first)
            self.state["faults"].remove(record)
            self.save()

    def clear_faults(self, host: str | None = None) -> int:
        ids = [r["fault"]["id"] for r in self.state["faults"]
               if host is None or r["fault"]["host"] == host]
        for i in ids:
            self.clear_fault(i)
        return len(ids)

    def faults(self) -> list[Fault]:
        return [Fault.from_json(r["fault"]) for r in self.state["faults"]]

    # -- commands on hosts --
    def exec(self, host: str, argv: list[str], timeout: float | None = None,
             **kw: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(in_netns(self.topo.host(host).netns, argv), timeout=timeout,
                              check=False, **kw)

    # -- the whole cluster --
    def up(self, *, mount: bool = True, standbys: bool = False) -> None:
        """Network, keys, servers (MGS, OSTs, MDT), a standby of every MDT and OST on
        its partner host (standbys), and a mount on every client host."""
        self.network_up()
        self.make_keys()
        self.start_servers()
        if standbys:
            for name in self.topo.start_order():
                if self.topo.targets[name].partner is not None:
                    self.start_standby(name)
        if mount:
            for client in self.topo.client_hosts:
                self.mount(client)

    def down(self) -> list[str]:
        """Unmount every client, stop every server (SIGTERM, then SIGKILL) and delayer,
        remove the namespaces. Data stays in DIR/storage. Returns what went wrong."""
        problems: list[str] = []
        for fault in self.faults():
            try:
                self.clear_fault(fault.id)
            except (NetnsError, subprocess.SubprocessError) as e:
                problems.append(str(e))
        for client in list(self.state["mounts"]):
            try:
                problems += self.umount(client)
            except subprocess.SubprocessError as e:
                problems.append(f"umount {client}: {e}")
        # The standbys first (they stop at once), so that none takes a target over from
        # a server stopping; then the servers, gracefully first: each commits and
        # releases its storage claim.
        for entries in (self.state["standbys"].values(), self.state["servers"].values()):
            terminate_pids({int(e["pid"]): e["start"] for e in entries
                            if e.get("pid") and e.get("start") is not None}, grace=30)
            for e in entries:
                e["pid"] = None
        if self.state.get("network"):
            for step in self.topo.teardown_steps():
                run_step(step)
            self.state["network"] = False
        self.save()
        (self.base / STATE).rename(self.base / (STATE + ".down"))
        return problems

    def status(self) -> dict[str, Any]:
        self.reconcile()
        return {
            "dir": str(self.base), "spec": self.spec, "netem": self.state.get("netem"),
            "hosts": {h.name: {"role": h.role, "addr": h.addr, "netns": h.netns}
                      for h in self.topo.hosts.values()},
            "servers": {n: {**e, "running": self.server_pid(n) is not None,
                            "nid": self.topo.nid(n, e["host"])}
                        for n, e in self.state["servers"].items()},
            "standbys": {n: {**e, "running": self.standby_pid(n) is not None,
                             "nid": self.topo.nid(n, e["host"])}
                         for n, e in self.state["standbys"].items()},
            "mmp": self.state["mmp"],
            "mounts": self.state["mounts"],
            "faults": [f.describe() for f in self.faults()],
        }
