"""cli.py - the `mlustre` command: local clusters, mounts, single servers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import registry
from .cli_options import client_opts, server_opts, squash_opts, stripe_opts
from .localcluster import endpoints, standbys
from .localcluster.daemons import DaemonFailed, spawn, stop_pid, wait_ready
from .protocol.nid import Nid, format_spec, parse_spec

READY_TIMEOUT = 30.0


class CliError(Exception):
    """A user-facing failure: printed as one message, exit status 1."""


def default_data_dir(fsname: str) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/mlustre") / fsname
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "mlustre" / fsname


def check_stripes(args: argparse.Namespace) -> None:
    if args.stripe_count is not None and (args.stripe_count == 0 or args.stripe_count < -1):
        raise CliError("--stripe-count must be -1 (all OSTs) or at least 1")
    if args.stripe_size is not None and (args.stripe_size <= 0
                                         or args.stripe_size % (64 << 10)):
        raise CliError("--stripe-size must be a positive multiple of 65536")


def check_mountpoint(mnt: str) -> str:
    path = os.path.realpath(mnt)
    if registry.is_mounted(path):
        raise CliError(f"mount point {mnt} is busy: something is already mounted there")
    if not os.path.exists(path):
        raise CliError(f"mount point {mnt} does not exist")
    if not os.path.isdir(path):
        raise CliError(f"mount point {mnt} is not a directory")
    if os.listdir(path):
        raise CliError(f"mount point {mnt} is not empty")
    return path


# -- servers --
def _raise_fd_limit() -> None:
    """A server keeps one descriptor per client connection: use the hard limit, not
    the shell's soft one (often 1024), so that the connection limit follows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def cmd_server(args: argparse.Namespace) -> int:
    from .servers.target import serve_forever

    _raise_fd_limit()
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        host, port = ("127.0.0.1", 0) if not args.listen else Nid.parse(args.listen)
        mgs = [Nid.parse(n) for n in args.mgs.split(",")] if args.mgs else []
    except ValueError as e:
        raise CliError(str(e)) from None
    metrics = _metrics_address(args.metrics)
    common: dict[str, Any] = {"host": host, "port": port, "release": args.release,
                              "commit_interval": args.commit_interval,
                              "ldlm_timeout": args.ldlm_timeout,
                              "update_lock": not args.no_update_lock,
                              "max_connections": args.max_connections,
                              "max_locks": args.max_locks,
                              "evict_threshold": args.evict_threshold,
                              "auth_key": _server_key(args)}
    check_stripes(args)
    if args.max_connections is not None and args.max_connections < 1:
        raise CliError("--max-connections must be at least 1")
    if args.max_locks < 1:
        raise CliError("--max-locks must be at least 1")
    if args.evict_threshold is not None and args.evict_threshold < 0:
        raise CliError("--evict-threshold must be 0 (never) or more")
    if not args.ldlm_timeout > 0:
        raise CliError("--ldlm-timeout must be positive")
    if not 0 <= args.recovery_window <= 3600:
        raise CliError("--recovery-window must be between 0 and 3600 seconds")
    if not 0.05 <= args.mmp_interval <= 60:
        raise CliError("--mmp-interval must be between 0.05 and 60 seconds")
    if args.mmp_quorum < 0:
        raise CliError("--mmp-quorum must be 0 (off) or more seconds")
    if args.standby and not args.listen:
        raise CliError("--standby needs --listen HOST:PORT (the address it serves on "
                       "once it takes over)")
    if args.failover_nid or args.standby:
        # A server of a failover pair guards its storage with a heartbeat (MMP).
        from .servers.heartbeat import MmpConfig

        common["mmp"] = MmpConfig(interval=args.mmp_interval, standby=args.standby,
                                  quorum_timeout=args.mmp_quorum or None,
                                  exit_on_fence=True, mgs=mgs)
    if args.ping_evict_timeout is not None and (
            args.kind == "mgs" or not 0.1 <= args.ping_evict_timeout <= 86400):
        raise CliError("--ping-evict-timeout is an MDT's or OST's, 0.1 to 86400 seconds")
    if args.kind == "mgs":
        from .servers.mgs import MgsServer
        server: Any = MgsServer(args.fsname, args.data, stripe_count=args.stripe_count,
                                stripe_size=args.stripe_size, **common)
    elif args.kind == "mdt":
        from .servers.mdt.server import MdtServer
        _check_squash(args)
        server = MdtServer(args.fsname, args.index, args.data, mgs=mgs, ost_count=args.osts,
                           failover_nids=args.failover_nid,
                           recovery_window=args.recovery_window,
                           root_squash=args.root_squash, nosquash_nids=args.nosquash_nids,
                           **common)
    else:
        from .servers.ost import OstServer
        server = OstServer(args.fsname, args.index, args.data, mgs=mgs,
                           failover_nids=args.failover_nid,
                           recovery_window=args.recovery_window, **common)
    if args.kind != "mgs" and not mgs:
        raise CliError(f"a {args.kind} needs --mgs HOST:PORT")
    if args.ping_evict_timeout is not None:
        # (the lctl parameter *.ping_evict_timeout, from the start: a server on another
        # host is not one of this machine's local clusters, which lctl reaches)
        server.recovery.ping_evict_timeout = args.ping_evict_timeout
    return serve_forever(server, metrics=metrics, standby_nid=args.listen or "")


def _metrics_address(text: str | None) -> tuple[str, int] | None:
    """--metrics HOST:PORT, checked before anything starts (None: no endpoint)."""
    from .metrics import parse_address  # (prometheus_client: only when needed)

    try:
        return parse_address(text) if text is not None else None
    except ValueError as e:
        raise CliError(str(e)) from None


def _load_key(path: str) -> bytes:
    from .protocol.keyfile import KeyFileError, load_key

    try:
        return load_key(path)
    except KeyFileError as e:
        raise CliError(str(e)) from None


def _server_key(args: argparse.Namespace) -> bytes | None:
    """A server in secure mode (--secure, or a --key given) must have a usable key:
    it refuses to start rather than serve without authentication."""
    if args.key:
        return _load_key(args.key)
    if args.secure:
        raise CliError("secure mode needs the filesystem's key: --key FILE "
                       "(create one with `mlustre keygen FILE`)")
    return None


def cmd_keygen(args: argparse.Namespace) -> int:
    from .protocol.keyfile import KeyFileError, create_key_file

    try:
        create_key_file(args.file, force=args.force, privacy=args.privacy)
    except KeyFileError as e:
        raise CliError(str(e)) from None
    mode = "privacy: frames encrypted" if args.privacy else "integrity: frames authenticated"
    print(f"created key file {args.file} (mode 0600, {mode}): give it to every server "
          f"(--key) and client (mount --key) of the filesystem")
    return 0


def _cluster_key(data: Path, no_auth: bool, privacy: bool = False) -> Path | None:
    """The key file of a local cluster: DATA/auth.key, created on first use, in privacy
    mode with --privacy (None with --no-auth). An existing key file keeps its mode:
    --privacy on an integrity cluster is refused, not silently ignored."""
    if no_auth:
        if privacy:
            raise CliError("--privacy needs authentication (it encrypts with the key): "
                           "drop --no-auth")
        return None
    path = data / "auth.key"
    if not path.exists():
        from .protocol.keyfile import KeyFileError, create_key_file

        try:
            create_key_file(path, privacy=privacy)
        except KeyFileError as e:
            raise CliError(str(e)) from None
    key = _load_key(str(path))  # a damaged or widened key file: say so before starting
    if privacy and not getattr(key, "privacy", False):
        raise CliError(f"{path} is an integrity-mode key (frames not encrypted); to "
                       f"encrypt this cluster's frames replace it: `mlustre keygen --privacy "
                       f"--force {path}` (every client then needs the new key file)")
    return path


def _start(args: list[str], log: Path, what: str) -> tuple[int, str, str | None]:
    """Start a server; its pid, NID and metrics address (from its READY line)."""
    proc = spawn(args, log)
    fields = endpoints.ready_fields(wait_ready(proc, log, what, READY_TIMEOUT))
    return proc.pid, fields.get("nid", ""), fields.get("metrics")


# -- clusters --
def cmd_up(args: argparse.Namespace) -> int:
    mnt = check_mountpoint(args.mountpoint)
    if not 1 <= args.osts <= 64:
        raise CliError("--osts must be between 1 and 64")
    check_stripes(args)
    if not args.fsname.isidentifier() or len(args.fsname) > 8:
        raise CliError("--fsname must be a short identifier (at most 8 characters)")
    data = Path(args.data or default_data_dir(args.fsname)).resolve()
    data.mkdir(parents=True, exist_ok=True)
    cluster_file = data / "cluster.json"
    if cluster_file.exists():
        old = json.loads(cluster_file.read_text())
        alive = [s for s in old.get("servers", []) if registry.pid_alive(s.get("pid"))]
        if alive:
            raise CliError(f"the cluster in {data} is already running "
                           f"(servers {', '.join(s['name'] for s in alive)}); "
                           f"use `mlustre down {old.get('first_mount')}` first")
    print(f"data and logs: {data}")
    servers: list[dict[str, Any]] = []
    if not args.ldlm_timeout > 0:
        raise CliError("--ldlm-timeout must be positive")
    if not 0 <= args.recovery_window <= 3600:
        raise CliError("--recovery-window must be between 0 and 3600 seconds")
    _check_squash(args)
    if args.standby and not args.failover_pairs:
        raise CliError("--standby needs --failover-pairs")
    if not 0.05 <= args.mmp_interval <= 60 or args.mmp_quorum < 0:
        raise CliError("--mmp-interval must be between 0.05 and 60 s, --mmp-quorum 0 or more")
    key_file = _cluster_key(data, args.no_auth, args.privacy)
    keyed = ["--key", str(key_file)] if key_file else []
    squash = [*(["--root-squash", args.root_squash] if args.root_squash else []),
              *(["--nosquash-nids", args.nosquash_nids] if args.nosquash_nids else [])]
    base = ["--fsname", args.fsname, "--release", args.release,
            "--commit-interval", str(args.commit_interval),
            "--ldlm-timeout", str(args.ldlm_timeout),
            *(["--no-update-lock"] if args.no_update_lock else []), *keyed]
    try:
        stripes = [f"--{k.replace('_', '-')}={v}" for k, v in
                   (("stripe_count", args.stripe_count), ("stripe_size", args.stripe_size))
                   if v is not None]
        mgs_args = ["server", "mgs", "--data", str(data / "mgs"), *base, *stripes,
                    "--metrics", endpoints.UP_ADDRESS]
        pid, mgs_nid, mgs_metrics = _start(mgs_args, data / "mgs.log", "MGS")
        servers.append({"name": f"{args.fsname}-MGS", "kind": "mgs", "nid": mgs_nid,
                        "pid": pid, "data": str(data / "mgs"), "log": str(data / "mgs.log"),
                        "args": mgs_args, "metrics": mgs_metrics})
        endpoints.pin(servers[0])
        procs = []
        specs = [("mdt", 0)] + [("ost", i) for i in range(args.osts)]
        pairs: dict[str, tuple[str, str]] = {}
        for kind, idx in specs:
            name = f"{args.fsname}-{kind.upper()}{idx:04X}"
            tdir = data / name
            extra = ["--recovery-window", str(args.recovery_window)]
            if kind == "mdt":
                extra += ["--osts", str(args.osts), *squash]
            if args.failover_pairs:
                # Two servers for one storage directory: this one on PAIR_ADDRS[0], its
                # partner (started by `mlustre failover --partner`) on PAIR_ADDRS[1].
                pairs[name] = (standbys.free_nid(standbys.PAIR_ADDRS[0]), standbys.free_nid(standbys.PAIR_ADDRS[1]))
                extra += ["--listen", pairs[name][0], "--failover-nid", pairs[name][1],
                          "--mmp-interval", str(args.mmp_interval),
                          "--mmp-quorum", str(args.mmp_quorum)]
            log = data / f"{name}.log"
            cmd = ["server", kind, "--index", str(idx), "--data", str(tdir), "--mgs", mgs_nid,
                   *extra, *base, "--metrics", endpoints.UP_ADDRESS]
            procs.append((name, kind, tdir, log, cmd, spawn(cmd, log)))
        for name, kind, tdir, log, cmd, proc in procs:
            entry = {"name": name, "kind": kind, "pid": proc.pid, "data": str(tdir),
                     "log": str(log), "nid": "", "args": cmd}
            if name in pairs:
                entry["pair"] = list(pairs[name])
            servers.append(entry)
        for (name, _kind, _tdir, log, _cmd, proc), entry in zip(procs, servers[1:],
                                                                strict=True):
            fields = endpoints.ready_fields(wait_ready(proc, log, name, READY_TIMEOUT))
            entry["nid"] = fields["nid"]
            entry["metrics"] = fields.get("metrics")
            endpoints.pin(entry)
        for entry in servers[1:] if args.standby else []:  # once every target serves
            standbys.start(entry, READY_TIMEOUT)
        spec = format_spec([Nid.parse(mgs_nid)], args.fsname)
        key = str(key_file) if key_file else None
        registry.write_json(cluster_file, {"fsname": args.fsname, "spec": spec,
                                           "data": str(data), "servers": servers,
                                           "first_mount": mnt, "started": time.time(),
                                           "key": key})
        registry.register_cluster(spec, str(data), key)
        client_pid, client_metrics = _mount(spec, mnt, data, args, key, metrics=endpoints.UP_ADDRESS)
    except (DaemonFailed, CliError) as e:
        for s in reversed(servers):
            if s.get("standby"):
                stop_pid(s["standby"]["pid"], timeout=5)
            stop_pid(s["pid"], timeout=5)
        raise CliError(str(e)) from None
    for s in servers:
        print(f"{s['name']:<16} {s['kind']:<4} nid={s['nid']:<22} pid={s['pid']:<8} "
              f"metrics=http://{s['metrics']}/metrics")
        if s.get("standby"):
            print(f"{'  standby':<21} nid={s['standby']['nid']:<22} pid={s['standby']['pid']}")
    print(f"client           pid={client_pid} mounted on {mnt} "
          f"metrics=http://{client_metrics}/metrics")
    print(f"spec: {spec}")
    if key_file:
        mode = "privacy" if getattr(_load_key(str(key_file)), "privacy", False) else "integrity"
        print(f"key: {key_file} ({mode} mode)")
    else:
        print("key: none (--no-auth: connections are not authenticated)")
    return 0


def _mount(spec: str, mnt: str, cluster_data: Path | None, args: argparse.Namespace,
           key_file: str | None = None, metrics: str | None = None) -> tuple[int, str | None]:
    """Start a client process; its pid and metrics address (None without --metrics)."""
    logdir = cluster_data or Path(registry.state_dir()) / "logs"
    log = logdir / f"client-{os.path.basename(mnt) or 'root'}-{os.getpid()}.log"
    cmd = ["client", spec, mnt, "--max-dirty-mb", str(args.max_dirty_mb),
           "--max-cached-mb", str(args.max_cached_mb), "--release", args.release]
    if getattr(args, "client_no_update_lock", False):
        cmd += ["--client-no-update-lock"]
    if cluster_data:
        cmd += ["--cluster-data", str(cluster_data)]
    if key_file:
        _load_key(key_file)
        cmd += ["--key", os.path.abspath(key_file)]
    if metrics:
        cmd += ["--metrics", metrics]
    proc = spawn(cmd, log)
    try:
        line = wait_ready(proc, log, f"client of {spec}", READY_TIMEOUT + 10)
    except DaemonFailed as e:
        if registry.is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], timeout=10, check=False)
        # The client's own one-line reason (e.g. a wrong key), not its whole log tail.
        reasons = [line.removeprefix("error: ") for line in str(e).splitlines()
                   if line.startswith("error: cannot mount")]
        raise CliError(reasons[-1] if reasons else str(e)) from None
    return proc.pid, endpoints.ready_fields(line).get("metrics")


def cmd_client(args: argparse.Namespace) -> int:
    from .fuse_client import mount_main

    argv = [args.spec, args.mountpoint, "--release", args.release,
            "--max-dirty-mb", str(args.max_dirty_mb), "--max-cached-mb", str(args.max_cached_mb)]
    if args.cluster_data:
        argv += ["--cluster-data", args.cluster_data]
    if args.key:
        argv += ["--key", args.key]
    if args.client_no_update_lock:
        argv += ["--no-update-lock"]
    if args.metrics:
        argv += ["--metrics", args.metrics]
    return mount_main.main(argv)


def cmd_mount(args: argparse.Namespace) -> int:
    try:
        parse_spec(args.spec)
    except ValueError as e:
        raise CliError(str(e)) from None
    mnt = check_mountpoint(args.mountpoint)
    if args.metrics is not None:
        _metrics_address(args.metrics)
    # Without --key, a local cluster's own key (mlustre up made one) is used.
    pid, metrics = _mount(args.spec, mnt, None, args,
                          args.key or registry.key_file_for_spec(args.spec), args.metrics)
    print(f"mounted {args.spec} on {mnt} (client pid {pid})"
          + (f", metrics at http://{metrics}/metrics" if metrics else ""))
    return 0


def _unmount(mnt: str, timeout: float = 60.0) -> None:
    info = registry.find_mount(mnt)
    if not registry.is_mounted(mnt):
        if info is None:
            raise CliError(f"{mnt} is not an mlustre mount")
        registry.unregister_mount(mnt)
        return
    pid = info.get("pid") if info else None
    r = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        if pid and not registry.pid_alive(pid):
            # The client died: its mount is dead ("Transport endpoint is not connected").
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, timeout=30)
            registry.unregister_mount(mnt)
            return
        raise CliError(f"cannot unmount {mnt}: {r.stderr.strip() or r.returncode}")
    deadline = time.monotonic() + timeout
    while pid and registry.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid and registry.pid_alive(pid):
        stop_pid(pid, timeout=5)
    registry.unregister_mount(mnt)


def cmd_umount(args: argparse.Namespace) -> int:
    _unmount(args.mountpoint)
    return 0


def _cluster_of(mnt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    info = registry.find_mount(mnt)
    if info is None:
        raise CliError(f"{mnt} is not an mlustre mount on this machine")
    data = info.get("cluster_data") or registry.find_cluster_data(info.get("spec", ""))
    if not data or not (Path(data) / "cluster.json").exists():
        raise CliError(f"{mnt} is a client of {info.get('spec')}, not of a local cluster")
    cluster = json.loads((Path(data) / "cluster.json").read_text())
    if standbys.reconcile(cluster):  # a standby took over by itself since
        registry.write_json(Path(data) / "cluster.json", cluster)
    return info, cluster


def _clients_of(cluster: dict[str, Any], *, dead_too: bool = False) -> list[dict[str, Any]]:
    """Clients of the cluster on this machine (with dead_too: crashed ones still mounted)."""
    return [m for m in registry.all_mounts()
            if (m.get("cluster_data") == cluster["data"] or m.get("spec") == cluster["spec"])
            and (registry.pid_alive(m.get("pid"))
                 or (dead_too and registry.is_mounted(m["mountpoint"])))]


def cmd_status(args: argparse.Namespace) -> int:
    _, cluster = _cluster_of(args.mountpoint)
    servers = [{"name": s["name"], "kind": s["kind"], "nid": s["nid"], "pid": s["pid"],
                "release": standbys.option(s.get("args") or [], "--release") or "2.0",
                "state": "running" if registry.pid_alive(s["pid"]) else "stopped",
                "log": s.get("log"), "standby": standbys.describe(s),
                "metrics": s.get("metrics")}
               for s in cluster["servers"]]
    clients = [{"mountpoint": m["mountpoint"], "pid": m["pid"], "metrics": m.get("metrics")}
               for m in _clients_of(cluster)]
    if args.json:
        print(json.dumps({"fsname": cluster["fsname"], "spec": cluster["spec"],
                          "data": cluster["data"], "servers": servers, "clients": clients,
                          "metrics": endpoints.listing(servers, clients)}))
        return 0
    print(f"filesystem {cluster['fsname']}  spec {cluster['spec']}  data {cluster['data']}")
    for s in servers:
        print(f"  {s['name']:<16} {s['kind']:<4} {s['nid']:<22} pid {s['pid']:<8} "
              f"release {s['release']:<4} {s['state']}"
              + (f"  metrics {s['metrics']}" if s["metrics"] else ""))
        if s["standby"]:
            print(f"  {'  standby':<21} {s['standby']['nid']:<22} pid {s['standby']['pid']:<8} "
                  f"{'':<12} {s['standby']['state']}")
    for c in clients:
        print(f"  client {c['mountpoint']} pid {c['pid']}"
              + (f"  metrics {c['metrics']}" if c["metrics"] else ""))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _, cluster = _cluster_of(args.mountpoint)
    errors = []
    for m in _clients_of(cluster, dead_too=True):
        try:
            _unmount(m["mountpoint"])
        except CliError as e:
            errors.append(str(e))
    if errors:
        raise CliError("; ".join(errors) + " (servers left running)")
    for s in cluster["servers"]:  # first, or they take over what is being stopped
        if s.get("standby"):
            stop_pid(s["standby"]["pid"], timeout=30)
    order = {"mdt": 0, "ost": 1, "mgs": 2}
    for s in sorted(cluster["servers"], key=lambda s: order.get(s["kind"], 3)):
        if not stop_pid(s["pid"], timeout=30):
            print(f"warning: {s['name']} (pid {s['pid']}) had to be killed", file=sys.stderr)
    print(f"stopped {cluster['fsname']}: {len(cluster['servers'])} servers")
    return 0


def _check_squash(args: argparse.Namespace) -> None:
    from .servers.squash import parse_nids, parse_squash

    try:
        if args.root_squash is not None:
            parse_squash(args.root_squash)
        if args.nosquash_nids is not None:
            parse_nids(args.nosquash_nids)
    except ValueError as e:
        raise CliError(str(e)) from None


def _freeze(server: dict[str, Any], key_file: str | None) -> dict[str, Any] | None:
    """A controlled stop begins with the target's barrier: its clients flush, wait for
    the commit and hold their updates, so the restart leaves nothing to replay. The
    freeze's report, or None (an MGS; a server that does not answer: its own stop
    freezes as well as it can)."""
    if server["kind"] not in ("mdt", "ost") or not registry.pid_alive(server["pid"]):
        return None
    from .tools import lctl

    src = lctl.Source(server["kind"], server["name"], server["nid"], {"key": key_file})
    [(_, err, result)] = lctl.ask_all([src], {"op": "barrier_freeze", "timeout": 60.0},
                                      lctl.FREEZE_TIMEOUT)
    if err:
        print(f"warning: {server['name']}: barrier not frozen ({result}); stopping anyway",
              file=sys.stderr)
        return None
    frozen: dict[str, Any] = result["frozen"]
    return frozen


def _find_server(cluster: dict[str, Any], name: str) -> dict[str, Any]:
    """A server of the cluster by its name, with or without the fsname (MDT0000,
    OST0001, MGS) or, when there is one of its kind, by kind (mdt, mgs)."""
    wanted = name.lower()
    for s in cluster["servers"]:
        full = s["name"].lower()
        if wanted in (full, full.split("-", 1)[-1]):
            return s
    of_kind = [s for s in cluster["servers"] if s["kind"] == wanted]
    if len(of_kind) == 1:
        return of_kind[0]
    names = ", ".join(s["name"] for s in cluster["servers"])
    raise CliError(f"no target {name!r} in {cluster['fsname']} (targets: {names})")


def cmd_failover(args: argparse.Namespace) -> int:
    """Restart one target of a local cluster on its own NID: a graceful stop (commit,
    then exit), or with --crash a kill -9 first. Clients reconnect and resend."""
    _, cluster = _cluster_of(args.mountpoint)
    server = _find_server(cluster, args.target)
    pair = server.get("pair")
    if args.partner and not pair:
        raise CliError(f"{server['name']} has no failover partner in this local cluster "
                       "(start it with `mlustre up --failover-pairs`)")
    cmd = server.get("args")
    if not cmd:
        raise CliError(f"the cluster in {cluster['data']} was started by an older mlustre: "
                       f"restart it (`mlustre down`, `mlustre up`) to use failover")
    release = getattr(args, "release", None)
    was = standbys.option(cmd, "--release") or "2.0"
    handover = standbys.live(server)  # its standby takes over, it becomes the standby
    if handover and release is not None:
        raise CliError(f"{server['name']} has a standby: upgrades need a cluster without "
                       "standbys (`mlustre up --failover-pairs` without --standby)")
    barrier: dict[str, Any] | None = None
    if release is not None:
        cmd = standbys.without(cmd, "--release") + ["--release", release]
    here = server["nid"]
    if args.partner:  # the other server of the pair takes over the same storage
        there = pair[1] if here == pair[0] else pair[0]
        listen = standbys.without(standbys.without(cmd, "--listen"), "--failover-nid")
        listen += ["--listen", there, "--failover-nid", here]
    else:
        listen = standbys.without(cmd, "--listen") + ["--listen", here]
    started = time.monotonic()
    if args.crash:
        if registry.pid_alive(server["pid"]):
            os.kill(server["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while registry.pid_alive(server["pid"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        how = "killed (SIGKILL)"
    else:
        barrier = _freeze(server, cluster.get("key"))
        if not stop_pid(server["pid"], timeout=30):
            print(f"warning: {server['name']} did not stop within 30 s and was killed",
                  file=sys.stderr)
        how = "stopped"
        if barrier is not None:
            from .servers.barrier import describe_freeze

            how = f"{describe_freeze(barrier)}, {how}"
    if args.partner or handover:
        how += ", its standby took over," if handover else ", its partner took over,"
    if release is not None and release != was:
        how += f", {'upgraded' if release > was else 'downgraded'} from {was} to {release},"
    stopped = time.monotonic()
    try:
        if handover:
            standbys.hand_over(server, READY_TIMEOUT)
        else:
            pid, nid, metrics = _start(listen, Path(server["log"]), server["name"])
            server.update(pid=pid, nid=nid, args=listen, metrics=metrics)
            endpoints.pin(server)
    except (DaemonFailed, standbys.TakeoverFailed) as e:
        raise CliError(f"{server['name']} {how} but did not start again: {e}") from None
    pid, nid = server["pid"], server["nid"]
    registry.write_json(Path(cluster["data"]) / "cluster.json", cluster)
    total = time.monotonic() - started
    if getattr(args, "json", False):
        print(json.dumps({"target": server["name"], "kind": "crash" if args.crash else
                          "controlled", "partner": bool(args.partner), "from": was,
                          "to": release or was, "stop_s": round(stopped - started, 4),
                          "total_s": round(total, 4), "nid": nid, "pid": pid,
                          "barrier": barrier}))
        return 0
    print(f"{server['name']}: {how} in {stopped - started:.2f}s, serving again on {nid} "
          f"(pid {pid}) {total:.2f}s after the start")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlustre", description="A Lustre-like filesystem.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a local cluster and mount it")
    up.add_argument("mountpoint")
    up.add_argument("--osts", type=int, default=2)
    up.add_argument("--data", help="state and logs (default: /var/lib/mlustre/FSNAME as root)")
    up.add_argument("--fsname", default="mlustre")
    up.add_argument("--commit-interval", type=float, default=1.0)
    up.add_argument("--failover-pairs", action="store_true",
                    help="serve each MDT/OST from a pair of addresses (127.0.0.2 and "
                         "127.0.0.3) sharing its storage: `mlustre failover --partner` "
                         "moves it to the other")
    up.add_argument("--standby", action="store_true",
                    help="with --failover-pairs: start each pair's second server as a "
                         "standby that takes over by itself when the first stops, freezes "
                         "or is cut off (heartbeat, MMP)")
    up.add_argument("--mmp-interval", type=float, default=1.0,
                    help="heartbeat interval of the failover pairs' servers (s)")
    up.add_argument("--mmp-quorum", type=float, default=10.0,
                    help="pairs' servers renew only while the MGS answered that recently")
    up.add_argument("--recovery-window", type=float, default=15.0,
                    help="seconds a restarted MDT or OST waits for its clients to replay "
                         "their uncommitted updates, open files and locks")
    up.add_argument("--ldlm-timeout", type=float, default=10.0,
                    help="lock callback timeout of every server, seconds: a client that "
                         "does not give back a lock in time is evicted")
    up.add_argument("--no-update-lock", action="store_true",
                    help="servers do not offer the SIR barrier lock (recovery by replay)")
    up.add_argument("--no-auth", action="store_true",
                    help="no shared key: connections are not authenticated (by default the "
                         "cluster's key is DATA/auth.key, created on the first `up`)")
    up.add_argument("--privacy", action="store_true",
                    help="encrypt every frame (header and data) with AES-GCM, not only "
                         "authenticate it: written into DATA/auth.key when `up` creates it")
    squash_opts(up)
    stripe_opts(up)
    client_opts(up)
    up.set_defaults(fn=cmd_up)

    m = sub.add_parser("mount", help="mount an existing filesystem (one more client)")
    m.add_argument("spec", help="MGSNID:/FSNAME, e.g. 127.0.0.1:40001:/mlustre")
    m.add_argument("mountpoint")
    m.add_argument("--key", metavar="FILE", default=None,
                   help="the filesystem's key file (default: that of the local cluster "
                        "serving SPEC, if it has one)")
    m.add_argument("--metrics", metavar="HOST:PORT", default=None,
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (PORT 0: any)")
    client_opts(m)
    m.set_defaults(fn=cmd_mount)

    um = sub.add_parser("umount", help="unmount one client")
    um.add_argument("mountpoint")
    um.set_defaults(fn=cmd_umount)

    fo = sub.add_parser("failover", help="restart one target of a local cluster (clients "
                                         "reconnect and resend)")
    fo.add_argument("mountpoint", help="a mount of the cluster")
    fo.add_argument("target", help="e.g. MDT0000, OST0001, MGS, or the full name")
    fo.add_argument("--crash", action="store_true", help="kill -9 it first instead of a "
                                                          "graceful stop")
    fo.add_argument("--partner", action="store_true",
                    help="restart it on its failover partner (needs a failover pair)")
    fo.add_argument("--json", action="store_true", help="print what was done as JSON")
    fo.set_defaults(fn=cmd_failover)

    ug = sub.add_parser("upgrade", help="restart one target of a local cluster on another "
                                        "release (upgrade or downgrade), clients stay mounted")
    ug.add_argument("mountpoint", help="a mount of the cluster")
    ug.add_argument("target", help="e.g. MDT0000, OST0001, MGS, or the full name")
    ug.add_argument("--release", required=True, choices=["1.8", "2.0"])
    ug.add_argument("--partner", action="store_true",
                    help="start the new release on its failover partner")
    ug.add_argument("--json", action="store_true", help="print what was done as JSON")
    ug.set_defaults(fn=cmd_failover, crash=False)

    st = sub.add_parser("status", help="targets, NIDs, PIDs, states and clients")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)

    dn = sub.add_parser("down", help="unmount every client of a local cluster and stop it")
    dn.add_argument("mountpoint")
    dn.set_defaults(fn=cmd_down)

    sv = sub.add_parser("server", help="run one server in the foreground")
    server_opts(sv)
    sv.set_defaults(fn=cmd_server)

    cl = sub.add_parser("client", help="(internal) run a client process in the foreground")
    cl.add_argument("spec")
    cl.add_argument("mountpoint")
    cl.add_argument("--cluster-data")
    cl.add_argument("--key", default=None)
    cl.add_argument("--metrics", default=None)
    client_opts(cl)
    cl.set_defaults(fn=cmd_client)

    kg = sub.add_parser("keygen", help="create a filesystem key file (mode 0600) for "
                                       "authenticated connections")
    kg.add_argument("file")
    kg.add_argument("--force", action="store_true", help="replace an existing key file")
    kg.add_argument("--privacy", action="store_true",
                    help="the filesystem's frames are encrypted (header and data, AES-GCM), "
                         "not only authenticated: the mode is part of the key file")
    kg.set_defaults(fn=cmd_keygen)

    # Listed for --help only: main() hands `lfs ...` to mlustre.tools.lfs, which parses it.
    sub.add_parser("lfs", add_help=False,
                   help="lfs-like tool: df, getstripe, setstripe, path2fid, fid2path, "
                        "check servers (see `mlustre lfs --help`)")
    sub.add_parser("lctl", add_help=False,
                   help="lctl-like tool: dl, get_param, set_param, list_param "
                        "(see `mlustre lctl --help`)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lfs"]:
        from .tools import lfs
        return lfs.main(argv[1:])
    if argv[:1] == ["lctl"]:
        from .tools import lctl
        return lctl.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CliError as e:
        print(f"mlustre: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
