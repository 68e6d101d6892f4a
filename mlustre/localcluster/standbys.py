"""standbys.py - the standby servers of a local cluster (`mlustre up --failover-pairs
--standby`): their command lines, and which server of a pair serves now.

A standby takes its target over by itself (servers/heartbeat.py), so `cluster.json`,
written by `up`, goes stale when that happens. `reconcile` reads the heartbeat record in
the target's storage (its holder names the pid) and swaps the two servers' entries when
the standby is the holder, so that `status`, `down`, `failover` and the tools name the
server that serves.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

from .. import registry

_HOLDER_PID = re.compile(r"\bpid=(\d+)\b")
PAIR_ADDRS = ("127.0.0.2", "127.0.0.3")  # the two "nodes" of a local failover pair


class TakeoverFailed(Exception):
    """A standby did not take its target over in time."""


def free_nid(host: str) -> str:
    """HOST:PORT with a port free right now (for a server started later on it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return f"{host}:{sock.getsockname()[1]}"


def option(args: list[str], name: str) -> str | None:
    """The value of the last `name VALUE` pair in args."""
    value = None
    for a, b in zip(args, args[1:], strict=False):
        if a == name:
            value = b
    return value


def standby_args(cmd: list[str], pair: list[str], serving_nid: str) -> list[str]:
    """The command of the other server of a pair: the same target and storage, on the
    other address, waiting (--standby)."""
    there = pair[1] if serving_nid == pair[0] else pair[0]
    # (No metrics endpoint while it stands by: it would take the active server's port.)
    out = without(without(without(without(cmd, "--listen"), "--failover-nid"), "--metrics"),
                  "--standby", 0)
    return [*out, "--listen", there, "--failover-nid", serving_nid, "--standby"]


def serving_args(cmd: list[str]) -> list[str]:
    """A standby's command without --standby (it serves when started: a restart)."""
    return without(cmd, "--standby", 0)


def holder_pid(storage: str) -> int | None:
    """The pid in the heartbeat record of a target's storage (None: no record)."""
    try:
        record = json.loads((Path(storage) / "mmp").read_text())
    except (OSError, ValueError):
        return None
    m = _HOLDER_PID.search(str(record.get("holder", ""))) if isinstance(record, dict) else None
    return int(m.group(1)) if m else None


def reconcile(cluster: dict[str, Any]) -> bool:
    """Swap a server with its standby where the standby took over (True: changed)."""
    changed = False
    for server in cluster.get("servers", []):
        standby = server.get("standby")
        if not standby or not registry.pid_alive(standby.get("pid")):
            continue
        if holder_pid(server["data"]) != standby["pid"]:
            continue
        keys = ("pid", "nid", "args", "log")
        old = {k: server.get(k) for k in keys}
        server.update({k: standby.get(k) for k in keys})
        server["args"] = serving_args(server["args"])
        standby.update(old)
        standby["args"] = standby_args(old["args"] or [], server["pair"], server["nid"])
        changed = True
    return changed


def describe(server: dict[str, Any]) -> dict[str, Any] | None:
    """A status line's view of a server's standby."""
    standby = server.get("standby")
    if not standby:
        return None
    alive = registry.pid_alive(standby.get("pid"))
    return {"nid": standby.get("nid"), "pid": standby.get("pid"), "log": standby.get("log"),
            "state": "standing by" if alive else "stopped"}


def without(args: list[str], option: str, values: int = 1) -> list[str]:
    """args with every `option [VALUE]` removed."""
    out: list[str] = []
    skip = 0
    for a in args:
        if skip:
            skip -= 1
        elif a == option:
            skip = values
        else:
            out.append(a)
    return out


def start(server: dict[str, Any], timeout: float) -> None:
    """Start the standby of a paired server (on the other address of its pair) and
    wait for its `READY standby` line; recorded as server["standby"]."""
    from .daemons import spawn, wait_ready

    args = standby_args(server["args"], server["pair"], server["nid"])
    old = server.get("standby")  # (after a handover: the stopped server, whose log it keeps)
    log = Path(old["log"]) if old else Path(server["log"]).with_name(
        Path(server["log"]).stem + "-standby.log")
    proc = spawn(args, log)
    line = wait_ready(proc, log, f"standby of {server['name']}", timeout)
    nid = dict(f.split("=", 1) for f in line.split() if "=" in f).get("nid", "")
    server["standby"] = {"pid": proc.pid, "nid": nid, "args": args, "log": str(log)}


def wait_takeover(server: dict[str, Any], timeout: float) -> bool:
    """After its active server stopped: wait until the standby holds the heartbeat and
    accepts connections on its address (True), or it died / the time ran out."""
    standby = server["standby"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and registry.pid_alive(standby["pid"]):
        if holder_pid(server["data"]) == standby["pid"]:
            host, port = standby["nid"].rsplit(":", 1)
            try:
                with socket.create_connection((host, int(port)), timeout=0.5):
                    return True
            except OSError:
                pass
        time.sleep(0.05)
    return False


def live(server: dict[str, Any]) -> bool:
    standby = server.get("standby")
    return bool(standby) and registry.pid_alive(standby.get("pid"))


def hand_over(server: dict[str, Any], timeout: float) -> None:
    """The active server of a pair was stopped: its standby takes over (the entries
    swap), and the stopped one is started again as the new standby."""
    if not wait_takeover(server, timeout):
        raise TakeoverFailed(f"its standby (pid {server['standby']['pid']}) did not take "
                             f"over within {timeout:g}s")
    reconcile({"servers": [server]})
    start(server, timeout)
