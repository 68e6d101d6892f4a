"""localcluster/endpoints.py - the metrics endpoints of a local cluster's processes.

`mlustre up` starts every server and its client with `--metrics 127.0.0.1:0` (a free
loopback port each); a daemon's READY line says which address it got. Recorded in
DATA/cluster.json (servers) and the mount records (clients), they are what
`mlustre status --json` lists under "metrics". A server's command line is pinned to the
port it got, so `mlustre failover` and `upgrade` restart it on the same endpoint.
"""

from __future__ import annotations

from typing import Any

UP_ADDRESS = "127.0.0.1:0"


def ready_fields(line: str) -> dict[str, str]:
    """A READY line's `key=value` fields (nid, pid, metrics)."""
    return dict(f.split("=", 1) for f in line.split() if "=" in f)


def pin(server: dict[str, Any]) -> None:
    """After a start: the server's --metrics is the address it got (port 0 resolved)."""
    if not server.get("metrics"):
        return
    args: list[str] = []
    skip = False
    for a in server["args"]:
        if skip:
            skip = False
        elif a == "--metrics":
            skip = True
        else:
            args.append(a)
    server["args"] = [*args, "--metrics", server["metrics"]]


def listing(servers: list[dict[str, Any]], clients: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """status --json's "metrics": every endpoint, with the URL a scraper takes."""
    out = [{"name": s["name"], "kind": s["kind"], "address": s["metrics"]}
           for s in servers if s.get("metrics")]
    out += [{"name": f"client:{c['mountpoint']}", "kind": "client", "address": c["metrics"]}
            for c in clients if c.get("metrics")]
    return [{**e, "url": f"http://{e['address']}/metrics"} for e in out]
