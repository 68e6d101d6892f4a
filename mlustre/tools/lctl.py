"""lctl.py - `mlustre lctl`: a Lustre-like lctl for the clients and servers on this machine.

    dl                                  devices: client imports and local targets
    get_param [-n] PATTERN...           name=value (-n: values only)
    set_param NAME=VALUE...             set (NAME may be a glob), prints name=value
    list_param PATTERN...               names of matching parameters

Parameters live in each client process (asked over its Unix socket, recorded in
the mount registry) and in each target of the local clusters (an OBD_ADMIN
request on a connected session). Patterns are fnmatch globs over dotted names,
e.g. `osc.*.max_dirty_mb`, `obdfilter.*.commit_interval`.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ..params import format_param
from .lfs import LfsError, _run_async, run_tool

CONNECT_TIMEOUT = 3.0
CALL_TIMEOUT = 5.0
FREEZE_TIMEOUT = 120.0  # a freeze waits for every client to flush (or be evicted)


class LctlError(LfsError):
    """A user-facing failure: one message on stderr, exit status 1."""


@dataclass
class Source:
    """Somewhere parameters live: a client process or a target."""

    kind: str  # "client", or the target kind: "mgs", "mdt", "ost"
    name: str
    address: str  # a Unix socket path or a NID
    info: dict[str, Any] = field(default_factory=dict)


def parse_assignment(text: str) -> tuple[str, str]:
    """"osc.*.max_dirty_mb=64" -> ("osc.*.max_dirty_mb", "64")."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise LctlError(f"{text}: expected NAME=VALUE")
    return name, value


def format_device(index: int, dev_type: str, name: str, uuid: str, refcount: int,
                  state: str = "UP") -> str:
    """One line of `lctl dl`."""
    return f"{index:3d} {state} {dev_type} {name} {uuid} {refcount}"


# ---------------------------------------------------------------- discovery

def local_clusters() -> list[dict[str, Any]]:
    """cluster.json of every local cluster the registry knows (by spec or by mount)."""
    from .. import registry

    dirs: list[str] = []
    for f in sorted((registry.state_dir() / "clusters").glob("*.json")):
        try:
            data = json.loads(f.read_text()).get("data")
        except (OSError, json.JSONDecodeError):
            continue
        if data and data not in dirs:
            dirs.append(data)
    for m in registry.all_mounts():
        if m.get("cluster_data") and m["cluster_data"] not in dirs:
            dirs.append(m["cluster_data"])
    from ..localcluster import standbys

    out = []
    for d in dirs:
        try:
            cluster = json.loads((Path(d) / "cluster.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        standbys.reconcile(cluster)  # a standby that took over is the target's server
        out.append(cluster)
    return out


def sources(scope: str | None = None) -> list[Source]:
    """Every local client and target, or (scope = a mount point) those of its
    filesystem only: local clusters may share an fsname, and so target names."""
    from .. import registry

    spec = None
    if scope is not None:
        info = registry.find_mount(os.path.realpath(scope))
        if info is None:
            raise LctlError(f"{scope} is not an mlustre mount on this machine")
        spec = info.get("spec")
    found: list[Source] = []
    for m in registry.all_mounts():
        sock = m.get("admin_socket")
        if spec is not None and m.get("spec") != spec:
            continue
        if sock and registry.pid_alive(m.get("pid")) and os.path.exists(sock):
            found.append(Source("client", m["mountpoint"], sock, m))
    seen = set()
    for c in local_clusters():
        if spec is not None and c.get("spec") != spec:
            continue
        for s in c.get("servers", []):
            if s.get("nid") and registry.pid_alive(s.get("pid")) and s["name"] not in seen:
                seen.add(s["name"])
                found.append(Source(s["kind"], s["name"], s["nid"],
                                    {**s, "spec": c.get("spec"), "key": c.get("key")}))
    return found


# ---------------------------------------------------------------- requests

def _opcodes(kind: str) -> tuple[int, int]:
    from ..protocol import constants as C

    return {"mgs": (C.MGS_CONNECT, C.MGS_DISCONNECT), "mdt": (C.MDS_CONNECT, C.MDS_DISCONNECT),
            "ost": (C.OST_CONNECT, C.OST_DISCONNECT)}[kind]


async def _ask(src: Source, body: dict[str, Any],
               call_timeout: float = CALL_TIMEOUT) -> tuple[int, Any]:
    """(0, reply body) or (errno, message) of one OBD_ADMIN request."""
    import trio

    from ..protocol import constants as C
    from ..protocol.nid import Nid
    from ..protocol.rpc import Endpoint
    from ..protocol.session import Session

    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(CONNECT_TIMEOUT + call_timeout):
                    if src.kind == "client":
                        stream = await trio.open_unix_socket(src.address)
                        endpoint = Endpoint(stream, name=f"lctl->{src.name}")
                        await nursery.start(endpoint.serve)
                        try:
                            reply = await endpoint.call(C.OBD_ADMIN, body, timeout=call_timeout)
                        finally:
                            await endpoint.aclose()
                    else:
                        from ..protocol.keyfile import load_key

                        conn, disc = _opcodes(src.kind)
                        key = load_key(src.info["key"]) if src.info.get("key") else None
                        s = await Session.open(nursery, [Nid.parse(src.address)],
                                               target=src.name, connect_opc=conn,
                                               timeout=CONNECT_TIMEOUT, key=key)
                        try:
                            reply = await s.endpoint.call(C.OBD_ADMIN, body,
                                                          timeout=call_timeout)
                            with trio.move_on_after(1):
                                await s.endpoint.call(disc, {}, timeout=1)
                        finally:
                            await s.close()
            finally:
                nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        return errno.ETIMEDOUT, f"{src.name}: no answer"
    except Exception as e:  # ConnectionLost, RpcError, OSError: that source is unreachable
        return errno.EHOSTUNREACH, f"{src.name}: {e}"
    except BaseExceptionGroup as eg:  # a connection's task failed: say what, not "group"
        leaf: BaseException = eg
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        return errno.EHOSTUNREACH, f"{src.name}: {leaf or type(leaf).__name__}"
    if reply.status:
        return reply.status, str(reply.body.get("error") or os.strerror(reply.status))
    return 0, reply.body


def ask_all(srcs: list[Source], body: dict[str, Any],
            call_timeout: float = CALL_TIMEOUT) -> list[tuple[Source, int, Any]]:
    import trio

    results: dict[int, tuple[int, Any]] = {}

    async def run() -> None:
        async def one(i: int, src: Source) -> None:
            results[i] = await _ask(src, body, call_timeout)

        async with trio.open_nursery() as nursery:
            for i, src in enumerate(srcs):
                nursery.start_soon(one, i, src)

    _run_async(run)
    return [(src, *results[i]) for i, src in enumerate(srcs)]


def _warn(msg: str) -> None:
    print(f"mlustre lctl: warning: {msg}", file=sys.stderr)


def _gather(srcs: list[Source], body: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """Matching parameters of every source, and the hard errors (not ENOENT)."""
    params: list[list[Any]] = []
    errors: list[str] = []
    for _src, status, result in ask_all(srcs, body):
        if status == 0:
            params += result.get("params", [])
        elif status in (errno.ETIMEDOUT, errno.EHOSTUNREACH):
            _warn(result)
        elif status != errno.ENOENT:
            errors.append(result)
    return params, errors


def _need_sources(scope: str | None = None) -> list[Source]:
    srcs = sources(scope)
    if not srcs:
        raise LctlError("no mlustre client or server is running on this machine")
    return srcs


# ---------------------------------------------------------------- commands

def _query(srcs: list[Any], body: dict[str, Any], what: str) -> tuple[list[Any], int]:
    """Matching (name, value) pairs from every source, and 1 if something was wrong."""
    params, errors = _gather(srcs, body)
    if errors:  # the same mistake reported by several sources: say it once
        print(f"mlustre lctl: {errors[0]}", file=sys.stderr)
        return sorted(params, key=lambda p: p[0]), 1
    if not params:
        print(f"mlustre lctl: {what}: no such parameter", file=sys.stderr)
        return [], 1
    return sorted(params, key=lambda p: p[0]), 0


def cmd_get_param(args: argparse.Namespace) -> int:
    srcs = _need_sources(args.mount)
    status = 0
    for pattern in args.patterns:
        params, bad = _query(srcs, {"op": "get", "pattern": pattern}, pattern)
        status |= bad
        for name, value in params:
            print(format_param(name, value, values_only=args.n))
    return status


def cmd_list_param(args: argparse.Namespace) -> int:
    srcs = _need_sources(args.mount)
    status = 0
    for pattern in args.patterns:
        params, bad = _query(srcs, {"op": "list", "pattern": pattern}, pattern)
        status |= bad
        for name, writable in params:
            print(f"{name}{'=' if writable and args.F else ''}")
    return status


def cmd_set_param(args: argparse.Namespace) -> int:
    assignments = [parse_assignment(a) for a in args.assignments]
    srcs = _need_sources(args.mount)
    status = 0
    for name, value in assignments:
        params, bad = _query(srcs, {"op": "set", "name": name, "value": value}, name)
        status |= bad
        for pname, pvalue in params:
            print(format_param(pname, pvalue))
    return status


def cmd_dl(args: argparse.Namespace) -> int:
    from ..protocol.nid import parse_spec

    srcs = sources(args.mount)
    lines: list[tuple[str, str, str, int]] = []
    clients = [s for s in srcs if s.kind == "client"]
    targets = [s for s in srcs if s.kind != "client"]
    answers = ask_all(srcs, {"op": "get", "pattern": "*"}) if srcs else []
    values = {src.name: dict(map(tuple, result.get("params", []))) if status == 0 else None
              for src, status, result in answers}
    for src in clients:
        params = values.get(src.name)
        if params is None:
            continue
        uuid = src.info.get("uuid", "")
        try:
            mgs = parse_spec(src.info.get("spec", ""))[0][0]
            lines.append(("mgc", f"MGC{mgs}", uuid, 1))
        except (ValueError, IndexError):
            pass
        for pname in sorted(params, key=lambda n: (not n.startswith("mdc."), n)):
            kind, _, rest = pname.partition(".")
            dev, _, leaf = rest.rpartition(".")
            if kind in ("mdc", "osc") and leaf == "import":
                state = params[pname].get("state", "")
                lines.append((kind, dev, uuid, 1 if state == "FULL" else 0))
    order = {"mgs": 0, "mdt": 1, "ost": 2}
    for src in sorted(targets, key=lambda s: (order.get(s.kind, 3), s.name)):
        params = values.get(src.name)
        if params is None:
            continue
        dev_type = {"mgs": "mgs", "mdt": "mdt", "ost": "obdfilter"}[src.kind]
        prefix = f"{dev_type}.{src.name}."
        lines.append((dev_type, src.name, params.get(prefix + "uuid", f"{src.name}_UUID"),
                      int(params.get(prefix + "num_exports", 0)) + 1))
    for i, (dev_type, name, uuid, ref) in enumerate(lines):
        print(format_device(i, dev_type, name, uuid, ref))
    return 0


def barrier_targets(name: str, scope: str | None) -> list[Source]:
    """The targets a barrier command acts on: `name` is a filesystem (its MDTs, as
    Lustre's write barrier) or one target (full name, or e.g. OST0000 with -m)."""
    targets = [s for s in sources(scope) if s.kind in ("mdt", "ost")]
    exact = [s for s in targets if s.name == name or s.name.endswith(f"-{name.upper()}")]
    if exact:
        return exact
    mdts = [s for s in targets if s.kind == "mdt" and s.name.rsplit("-", 1)[0] == name]
    if not mdts:
        raise LctlError(f"{name}: no such filesystem or target running here")
    return mdts


def _barrier(args: argparse.Namespace, body: dict[str, Any]) -> int:
    srcs = barrier_targets(args.name, args.mount)
    status = 0
    results = []
    for src, err, result in ask_all(srcs, body, FREEZE_TIMEOUT):
        if err:
            print(f"mlustre lctl: {args.lctl_command}: {result}", file=sys.stderr)
            status = 1
            continue
        results.append(result)
        if getattr(args, "json", False):
            continue
        what = {"barrier_freeze": "frozen", "barrier_thaw": "thawed"}.get(args.lctl_command)
        if what == "frozen":
            from ..servers.barrier import describe_freeze

            print(f"{src.name}: {describe_freeze(result['frozen'])}; expires in "
                  f"{result.get('time_to_expire', 0)}s")
        elif what == "thawed":
            print(f"{src.name}: {'thawed' if result['thawed'] else 'was not frozen'}")
        else:
            print(f"The barrier for {src.name} is in '{result['state']}'")
            if "time_to_expire" in result:
                print(f"The barrier will be expired after {result['time_to_expire']} seconds")
    if getattr(args, "json", False):
        print(json.dumps(results))
    return status


def cmd_barrier_freeze(args: argparse.Namespace) -> int:
    if not 0 < args.timeout <= 86400:
        raise LctlError("barrier_freeze: the timeout must be in (0, 86400] seconds")
    return _barrier(args, {"op": "barrier_freeze", "timeout": args.timeout})


def cmd_barrier_thaw(args: argparse.Namespace) -> int:
    return _barrier(args, {"op": "barrier_thaw"})


def cmd_barrier_stat(args: argparse.Namespace) -> int:
    return _barrier(args, {"op": "barrier_stat"})


# ---------------------------------------------------------------- arguments

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sub = self.prog.removeprefix("mlustre lctl").strip()
        raise LctlError(f"{sub}: {message}" if sub else message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlustre lctl", description="Lustre-like lctl for local mlustre "
                "clients and servers.")
    p.add_argument("-m", "--mount", metavar="MNT",
                   help="only the filesystem mounted at MNT (its clients here and, for a "
                        "local cluster, its servers)")
    sub = p.add_subparsers(dest="lctl_command", required=True, parser_class=_Parser)
    dl = sub.add_parser("dl", help="list devices (client imports, local targets)")
    dl.set_defaults(fn=cmd_dl)
    gp = sub.add_parser("get_param", help="print parameters matching globs")
    gp.add_argument("-n", action="store_true", help="values only")
    gp.add_argument("patterns", nargs="+", metavar="PATTERN")
    gp.set_defaults(fn=cmd_get_param)
    sp = sub.add_parser("set_param", help="set parameters: NAME=VALUE (NAME may be a glob)")
    sp.add_argument("assignments", nargs="+", metavar="NAME=VALUE")
    sp.set_defaults(fn=cmd_set_param)
    lp = sub.add_parser("list_param", help="names of parameters matching globs")
    lp.add_argument("-F", action="store_true", help="mark settable parameters with '='")
    lp.add_argument("patterns", nargs="+", metavar="PATTERN")
    lp.set_defaults(fn=cmd_list_param)
    bf = sub.add_parser("barrier_freeze", help="freeze a filesystem's MDTs or one target: "
                        "clients flush and stop sending updates until thawed")
    bf.add_argument("name", help="FSNAME (its MDTs) or a target, e.g. FSNAME-OST0000")
    bf.add_argument("timeout", nargs="?", type=float, default=30.0,
                    help="seconds until the barrier thaws by itself (default 30)")
    bf.add_argument("--json", action="store_true")
    bf.set_defaults(fn=cmd_barrier_freeze)
    bt = sub.add_parser("barrier_thaw", help="thaw a frozen barrier")
    bt.add_argument("name", help="FSNAME or a target")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(fn=cmd_barrier_thaw)
    bs = sub.add_parser("barrier_stat", help="state of the barrier")
    bs.add_argument("name", help="FSNAME or a target")
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(fn=cmd_barrier_stat)
    return p


def main(argv: list[str]) -> int:
    return run_tool("mlustre lctl", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
