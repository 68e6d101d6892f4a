"""`scripts/netns-cluster` (python -m mlustre.netns): a multi-host mlustre cluster on
one machine, each host a network namespace (plan.py), and faults on its links.

    up [--clients N] [--oss-pairs N] [--fsname F] [--ping-evict-timeout S] ...
       [--standby] [--mmp-interval S] [--mmp-quorum S]
    status [--json]
    standby TARGET [--stop]          start (stop) TARGET's standby on its partner host
    exec HOST CMD...                 run CMD on HOST (its network namespace)
    fault KIND HOST ... [--for S]    partition / oneway / loss / link-down / delay
    clear [ID|HOST]                  lift faults (all without an argument)
    failover TARGET [--crash] [--partner] [--release R]   restart a server
    freeze TARGET SECONDS            SIGSTOP a server for a while
    mount CLIENT / umount CLIENT
    soak [...]                       workloads on two clients while faults hit the servers
    down                             unmount, stop every server, remove the namespaces

The cluster lives in --dir (default $MLUSTRE_NETNS_DIR or /var/tmp/mlustre-netns):
its state (netns.json), the key and each host's copy of it, the targets' shared
storage, the servers' logs per host, the clients' mount points (DIR/mnt/CLIENT).
Needs root (namespaces, mounts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from .driver import NetnsCluster, NetnsError
from .plan import Mmp, PlanError

DEFAULT_DIR = "/var/tmp/mlustre-netns"


def cmd_up(args: argparse.Namespace) -> int:
    opts: list[str] = []
    for flag, value in (("--ldlm-timeout", args.ldlm_timeout),
                        ("--recovery-window", args.recovery_window),
                        ("--ping-evict-timeout", args.ping_evict_timeout)):
        if value is not None:
            opts += [flag, f"{value:g}"]
    mmp = None
    if args.mmp_interval is not None or args.mmp_quorum is not None:
        default = Mmp()
        mmp = Mmp(default.interval if args.mmp_interval is None else args.mmp_interval,
                  default.quorum if args.mmp_quorum is None else args.mmp_quorum)
    c = NetnsCluster.create(args.dir, fsname=args.fsname, clients=args.clients,
                            oss_pairs=args.oss_pairs, server_options=opts, mmp=mmp)
    try:
        c.up(mount=not args.no_mount, standbys=args.standby)
    except BaseException:
        c.down()
        raise
    print_status(c)
    return 0


def print_status(c: NetnsCluster) -> None:
    st = c.status()
    print(f"spec: {st['spec']}")
    print(f"dir: {st['dir']}  (delay by {'netem' if st['netem'] else 'NFQUEUE delayer'})")
    print(f"{'host':<9} {'address':<15} {'namespace':<18} role")
    for name, h in st["hosts"].items():
        print(f"{name:<9} {h['addr']:<15} {h['netns']:<18} {h['role']}")
    for name, s in st["servers"].items():
        state = f"pid {s['pid']}" if s["running"] else "stopped"
        print(f"{name:<9} on {s['host']:<7} nid {s['nid']:<20} release {s['release']}  {state}")
        sb = st["standbys"].get(name)
        if sb:
            state = f"pid {sb['pid']}, standing by" if sb["running"] else "stopped"
            print(f"  standby on {sb['host']:<7} nid {sb['nid']:<20} {'':<11}  {state}")
    if st["mmp"]:
        print(f"heartbeat: --mmp-interval {st['mmp']['interval']:g} "
              f"--mmp-quorum {st['mmp']['quorum']:g}")
    for client, mnt in st["mounts"].items():
        print(f"{client:<9} mounted on {mnt}")
    for f in st["faults"]:
        print(f"fault {f}")


def cmd_status(args: argparse.Namespace) -> int:
    c = NetnsCluster.load(args.dir)
    if args.json:
        print(json.dumps(c.status(), indent=1))
    else:
        print_status(c)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    problems = NetnsCluster.load(args.dir).down()
    for p in problems:
        print(f"netns-cluster: {p}", file=sys.stderr)
    return 1 if problems else 0


def cmd_exec(args: argparse.Namespace) -> int:
    c = NetnsCluster.load(args.dir)
    if not args.command:
        raise NetnsError("exec HOST CMD...")
    return c.exec(args.host, args.command).returncode


def cmd_fault(args: argparse.Namespace) -> int:
    c = NetnsCluster.load(args.dir)
    fault = c.add_fault(args.words)
    print(f"fault {fault.describe()}")
    if args.duration is not None:
        try:
            time.sleep(args.duration)
        finally:
            c.clear_fault(fault.id)
        print(f"lifted #{fault.id}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    c = NetnsCluster.load(args.dir)
    if args.what is None:
        n = c.clear_faults()
    elif args.what.isdigit():
        c.clear_fault(int(args.what))
        n = 1
    else:
        n = c.clear_faults(c.topo.host(args.what).name)
    print(f"lifted {n} fault(s)")
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    c = NetnsCluster.load(args.dir)
    kind = ("crash" if args.crash else "partner" if args.partner
            else "upgrade" if args.release else "restart")
    print(c.failover(args.target, kind, release=args.release))
    return 0


def cmd_standby(args: argparse.Namespace) -> int:
    c = NetnsCluster.load(args.dir)
    if args.stop:
        c.stop_standby(args.target)
        print(f"{c.topo.target(args.target).name}: standby stopped")
        return 0
    e = c.start_standby(args.target)
    name = c.topo.target(args.target).name
    print(f"{name}: standby on {e['host']} (nid {c.topo.nid(name, e['host'])}, pid {e['pid']})")
    return 0


def cmd_freeze(args: argparse.Namespace) -> int:
    NetnsCluster.load(args.dir).freeze(args.target, args.seconds)
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    print(NetnsCluster.load(args.dir).mount(args.client))
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    problems = NetnsCluster.load(args.dir).umount(args.client)
    for p in problems:
        print(f"netns-cluster: {p}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netns-cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=os.environ.get("MLUSTRE_NETNS_DIR", DEFAULT_DIR),
                        help="the cluster's directory (state, keys, storage, logs, mounts)")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", parents=[common], help="build the hosts, start and mount")
    up.add_argument("--clients", type=int, default=2)
    up.add_argument("--oss-pairs", type=int, default=1, help="OSS pairs (2 OSTs each)")
    up.add_argument("--fsname", default="mhfs")
    up.add_argument("--no-mount", action="store_true", help="start servers only")
    up.add_argument("--ldlm-timeout", type=float)
    up.add_argument("--recovery-window", type=float)
    up.add_argument("--ping-evict-timeout", type=float,
                    help="the eviction timeout of silent clients (default 60 s)")
    up.add_argument("--standby", action="store_true",
                    help="also start a standby of every MDT and OST on its partner host "
                         "(it takes over by itself when the server stops, freezes or its "
                         "host is cut off)")
    up.add_argument("--mmp-interval", type=float,
                    help="heartbeat interval of the pairs' servers (default 1 s)")
    up.add_argument("--mmp-quorum", type=float,
                    help="seconds a pair's server serves on without reaching the MGS "
                         "(default 10; 0: off)")
    up.set_defaults(fn=cmd_up)

    for name, fn, hlp in (("status", cmd_status, "hosts, servers, mounts, faults"),
                          ("down", cmd_down, "unmount, stop servers, remove namespaces")):
        sp = sub.add_parser(name, parents=[common], help=hlp)
        if name == "status":
            sp.add_argument("--json", action="store_true")
        sp.set_defaults(fn=fn)

    ex = sub.add_parser("exec", parents=[common], help="run a command on a host")
    ex.add_argument("host")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(fn=cmd_exec)

    fa = sub.add_parser("fault", parents=[common], help="a fault on a host's link: "
                        "partition HOST [PEER...] | oneway HOST PEER in|out | loss HOST PCT | "
                        "link-down HOST | delay HOST MS [JITTER] [reorder PCT]")
    fa.add_argument("--for", dest="duration", type=float,
                    help="lift it again after this many seconds (else: until `clear`)")
    fa.add_argument("words", nargs="+")
    fa.set_defaults(fn=cmd_fault)

    cl = sub.add_parser("clear", parents=[common], help="lift faults: all, one (ID) or a host's")
    cl.add_argument("what", nargs="?")
    cl.set_defaults(fn=cmd_clear)

    fo = sub.add_parser("failover", parents=[common], help="restart a server")
    fo.add_argument("target")
    g = fo.add_mutually_exclusive_group()
    g.add_argument("--crash", action="store_true", help="kill -9 instead of a graceful stop")
    g.add_argument("--partner", action="store_true", help="onto its failover partner")
    fo.add_argument("--release", choices=["1.8", "2.0"])
    fo.set_defaults(fn=cmd_failover)

    sb = sub.add_parser("standby", parents=[common],
                        help="start a target's standby on the host of its pair that does not "
                             "serve it (or --stop it)")
    sb.add_argument("target")
    sb.add_argument("--stop", action="store_true")
    sb.set_defaults(fn=cmd_standby)

    fz = sub.add_parser("freeze", parents=[common], help="SIGSTOP a server for a while")
    fz.add_argument("target")
    fz.add_argument("seconds", type=float)
    fz.set_defaults(fn=cmd_freeze)

    for name, fn in (("mount", cmd_mount), ("umount", cmd_umount)):
        sp = sub.add_parser(name, parents=[common], help=f"{name} a client host's mount")
        sp.add_argument("client")
        sp.set_defaults(fn=fn)

    so = sub.add_parser("soak", parents=[common], help="workloads on two client hosts while "
                        "faults of every kind hit the servers")
    from .soak import add_arguments, cmd_soak

    add_arguments(so)
    so.set_defaults(fn=cmd_soak)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("netns-cluster: needs root (network namespaces, mounts)", file=sys.stderr)
        return 1
    try:
        return int(args.fn(args))
    except (NetnsError, PlanError) as e:
        print(f"netns-cluster: {e}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as e:
        print(f"netns-cluster: timed out: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
