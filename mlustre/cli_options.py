"""cli_options.py - argument groups of the `mlustre` command line shared by its
subcommands (and `mlustre server`'s own), kept apart from cli.py's commands."""

from __future__ import annotations

import argparse

from .servers.limits import DEFAULT_EVICT_THRESHOLD, DEFAULT_MAX_LOCKS


def client_opts(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--max-dirty-mb", type=int, default=256, help="dirty data limit")
    sp.add_argument("--max-cached-mb", type=int, default=512, help="data cache limit")
    sp.add_argument("--release", default="2.0", choices=["1.8", "2.0"])
    sp.add_argument("--client-no-update-lock", action="store_true",
                    help="the client does not use the SIR barrier lock: it recovers "
                         "from every restart by resend and replay")

def squash_opts(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--root-squash", metavar="UID:GID", default=None,
                    help="(MDT) serve root's requests as UID:GID, as Lustre's root_squash "
                         "(0:0, the default, squashes nothing; kept with the MDT's "
                         "storage; also `lctl set_param mdt.*.root_squash=`)")
    sp.add_argument("--nosquash-nids", metavar="NIDS", default=None,
                    help="(MDT) client addresses or networks exempt from root squash, "
                         "e.g. 127.0.0.1,10.0.0.0/8")

def stripe_opts(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--stripe-count", type=int, default=None,
                    help="default stripe count of new files, -1 = all OSTs (kept by the "
                         "MGS; default 1)")
    sp.add_argument("--stripe-size", type=int, default=None,
                    help="default stripe size, a multiple of 65536 (kept by the MGS; "
                         "default 1 MiB)")


def server_opts(sv: argparse.ArgumentParser) -> None:
    """The options of `mlustre server`."""
    sv.add_argument("kind", choices=["mgs", "mdt", "ost"])
    sv.add_argument("--fsname", required=True)
    sv.add_argument("--data", required=True, help="the target's storage directory")
    sv.add_argument("--index", type=int, default=0)
    sv.add_argument("--mgs", help="MGS NID(s), HOST:PORT[,HOST:PORT]")
    sv.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1, any port)")
    sv.add_argument("--osts", type=int, default=None, help="(mdt) number of OSTs")
    sv.add_argument("--failover-nid", action="append", default=[],
                    help="NID of the failover partner (repeatable); guards the storage "
                         "with a heartbeat (MMP)")
    sv.add_argument("--standby", action="store_true",
                    help="do not serve yet: watch the storage's heartbeat and take the "
                         "target over (on --listen) when its active server stops, "
                         "freezes or is cut off from the MGS")
    sv.add_argument("--mmp-interval", type=float, default=1.0,
                    help="heartbeat interval in seconds (the active server fences after "
                         "3 intervals without a renewal; a standby takes over after 5 "
                         "unchanged intervals + 0.5 s)")
    sv.add_argument("--mmp-quorum", type=float, default=10.0,
                    help="renew the heartbeat (or take over) only while the MGS answered "
                         "within this many seconds (0: off)")
    sv.add_argument("--release", default="2.0", choices=["1.8", "2.0"])
    squash_opts(sv)
    sv.add_argument("--no-update-lock", action="store_true",
                    help="do not offer the SIR barrier lock (OBD_CONNECT_UPDATE_LOCK): "
                         "clients then recover from a restart by resend and replay")
    sv.add_argument("--commit-interval", type=float, default=1.0)
    sv.add_argument("--recovery-window", type=float, default=15.0,
                    help="(mdt, ost) seconds a restarted target waits for the clients it "
                         "knew to replay their uncommitted updates, open files and locks")
    sv.add_argument("--ldlm-timeout", type=float, default=10.0,
                    help="seconds a lock holder has to cancel after a blocking AST "
                         "before it is evicted")
    sv.add_argument("--ping-evict-timeout", type=float, default=None,
                    help="(mdt, ost) seconds a client may stay unheard before it is evicted "
                         "(default 60; lctl *.ping_evict_timeout)")
    sv.add_argument("--max-connections", type=int, default=None,
                    help="connections this server keeps; more are refused with EUSERS "
                         "(default 4096, less if the descriptor limit is lower)")
    sv.add_argument("--max-locks", type=int, default=DEFAULT_MAX_LOCKS,
                    help="locks one client may hold on this target; more are refused with "
                         f"ENOLCK (default {DEFAULT_MAX_LOCKS})")
    sv.add_argument("--evict-threshold", type=int, default=None,
                    help="protocol violations of one client within a minute that get it "
                         f"evicted (default {DEFAULT_EVICT_THRESHOLD}; 0: never)")
    sv.add_argument("--key", metavar="FILE", default=None,
                    help="the filesystem's key file (mode 0600): secure mode, every "
                         "connection must prove this key")
    sv.add_argument("--secure", action="store_true",
                    help="refuse to start without --key")
    sv.add_argument("--metrics", metavar="HOST:PORT", default=None,
                    help="serve Prometheus metrics at http://HOST:PORT/metrics (PORT 0: any)")
    sv.add_argument("--log-level", default="info")
    stripe_opts(sv)
