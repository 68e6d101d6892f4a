"""metrics.py - a process's lctl parameters as Prometheus metrics (sans-IO core).

Why from the parameters: `lctl get_param` already shows every counter a server or a
client keeps (RPCs per opcode, locks, dirty and cached bytes, import states, recovery
and barrier state, evictions). Reading the same ParamTree getters keeps one source of
truth: a number on /metrics is the number lctl prints. This module only turns
(parameter name, value) pairs into metric families and those into the text exposition
format; `metrics_server.py` serves them over HTTP from the process's own trio loop.

Names and labels follow lustrefs-exporter where it has the metric (lustre_stats_total,
lustre_read_bytes_total, lustre_write_bytes_total, lustre_connected_clients,
lustre_recovery_status, lustre_recovery_status_completed_clients,
lustre_client_stats_total; labels component/target/operation/fs); what it lacks is
`mlustre_`-prefixed (import and barrier states, dirty and cached bytes, evictions,
client RPCs, lock namespaces' events). Where its names fail `promtool check metrics`
they are not copied: its counter `lustre_client_stats` is `lustre_client_stats_total`
here; its gauges `lustre_lock_count_total` and `lustre_exports_total` (a gauge must not
end in _total, nor in _count) are `mlustre_ldlm_locks` and `lustre_connected_clients`.

Also the few lines of HTTP this needs (`http_reply`), so that the driver only moves
bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

# Prometheus's text format 0.0.4, which every Prometheus (and promtool) reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# lctl prefix of a server target -> its component label (Lustre's).
SERVER_PREFIXES = {"mgs": "mgs", "mdt": "mdt", "obdfilter": "ost"}

# lustrefs-exporter's recovery_status encoding.
RECOVERY_STATUS = {"COMPLETE": 0, "INACTIVE": 1, "WAITING": 2, "WAITING_FOR_CLIENTS": 3,
                   "RECOVERING": 4}
RECOVERY_UNKNOWN = 5

# Server `stats` entries that are gauges (set, not counted): shown by mlustre_ldlm_*
# and its neighbours instead.
GAUGE_STATS = frozenset({"ldlm_granted", "ldlm_waiting"})
# Server `stats` entries that are evictions of a client (a lock callback timeout, a
# misbehaving or silent client: all through the lock service's "evictions"; a client
# that did not come back in a recovery window: "recovery_evictions").
EVICTION_STATS = ("evictions", "recovery_evictions")


@dataclass(frozen=True)
class Spec:
    """One metric family: its type, help text and label names."""

    kind: str  # "counter" or "gauge"
    help: str
    labels: tuple[str, ...]


T = ("component", "target")
SPECS: dict[str, Spec] = {
    # -- servers (lustrefs-exporter's names where it has them)
    "lustre_stats_total": Spec("counter", "Requests a target received, per opcode "
                               "(mdt/obdfilter/mgs.*.stats req.*).",
                               ("component", "operation", "target")),
    "lustre_read_bytes_total": Spec("counter", "Bytes read (OST: served; osc: received).",
                                    ("component", "operation", "target")),
    "lustre_write_bytes_total": Spec("counter", "Bytes written (OST: stored; osc: sent).",
                                     ("component", "operation", "target")),
    "lustre_connected_clients": Spec("gauge", "Clients with an export on the target "
                                     "(num_exports).", T),
    "mlustre_ldlm_locks": Spec("gauge", "Locks in the LDLM namespace "
                               "(ldlm.namespaces.*.lock_count).", T),
    "lustre_recovery_status": Spec("gauge", "Recovery status of a target: 0=Complete "
                                   "1=Inactive 2=Waiting 3=WaitingForClients 4=Recovering "
                                   "5=Unknown.", T),
    "lustre_recovery_status_completed_clients": Spec(
        "gauge", "Clients that completed the recovery of the target.", T),
    "mlustre_recovery_known_clients": Spec("gauge", "Clients a restarted target waits for "
                                           "(recovery_status known_clients).", T),
    "mlustre_target_events_total": Spec("counter", "A target's other stats counters "
                                        "(auth, LDLM, recovery, errors, ...).",
                                        ("component", "event", "target")),
    "mlustre_evictions_total": Spec("counter", "Evictions: by a server of its clients "
                                    "(lock service, recovery), by a client of its locks "
                                    "(its lock namespace was evicted).", T),
    "mlustre_connections": Spec("gauge", "Connections the server keeps "
                                "(num_connections).", T),
    "mlustre_target_instance": Spec("gauge", "The target's boot count (instance): it grows "
                                    "at every restart.", T),
    "mlustre_last_transno": Spec("gauge", "The target's last transaction number.", T),
    "mlustre_last_committed": Spec("gauge", "The target's last committed transaction "
                                   "number.", T),
    "mlustre_barrier_state": Spec("gauge", "A target's SIR barrier state (1 for the "
                                  "current state).", ("component", "state", "target")),
    "mlustre_barrier_holders": Spec("gauge", "Clients holding the target's barrier lock.",
                                    T),
    "mlustre_ldlm_granted_locks": Spec("gauge", "Granted locks of the namespace.", T),
    "mlustre_ldlm_waiting_locks": Spec("gauge", "Waiting lock requests of the namespace.",
                                       T),
    "mlustre_ldlm_resources": Spec("gauge", "Resources of the namespace.", T),
    # -- clients
    "lustre_client_stats_total": Spec("counter", "Requests the client's mount served "
                                      "(llite.*.stats samples).",
                                      ("fs", "operation", "target")),
    "mlustre_client_read_bytes_total": Spec("counter", "Bytes the mount returned to reads.",
                                            ("fs", "target")),
    "mlustre_client_write_bytes_total": Spec("counter", "Bytes the mount took in writes.",
                                             ("fs", "target")),
    "mlustre_client_dirty_bytes": Spec("gauge", "Dirty bytes in the client's page cache.",
                                       ("fs", "target")),
    "mlustre_client_cached_bytes": Spec("gauge", "Bytes in the client's page cache.",
                                        ("fs", "target")),
    "mlustre_client_max_dirty_bytes": Spec("gauge", "The dirty data limit.",
                                           ("fs", "target")),
    "mlustre_client_max_cached_bytes": Spec("gauge", "The page cache limit.",
                                            ("fs", "target")),
    "mlustre_client_inodes": Spec("gauge", "Inodes the client knows.", ("fs", "target")),
    "mlustre_client_open_files": Spec("gauge", "Files open on the mount.", ("fs", "target")),
    "mlustre_client_rpcs_total": Spec("counter", "Requests the client sent to a target, per "
                                      "opcode (mdc/osc.*.stats).",
                                      ("component", "operation", "target")),
    "mlustre_import_state": Spec("gauge", "The client's import state (1 for the current "
                                 "state).", ("component", "state", "target")),
    "mlustre_import_connects_total": Spec("counter", "Connects of the import (conn_cnt).", T),
    "mlustre_import_resent_updates_total": Spec("counter", "Updates the import resent.", T),
    "mlustre_import_server_instance": Spec("gauge", "The instance (boot count) of the "
                                           "server the import is connected to.", T),
    "mlustre_import_peer_committed": Spec("gauge", "The last transno the target said it "
                                          "committed.", T),
    "mlustre_client_barrier_state": Spec("gauge", "The client's SIR writer gate state for "
                                         "a target (1 for the current state).",
                                         ("component", "state", "target")),
    "mlustre_client_barrier_events_total": Spec("counter", "The writer gate's counters "
                                                "(enqueues, callbacks, drains).",
                                                ("component", "event", "target")),
    "mlustre_client_barrier_flushed_bytes_total": Spec("counter", "Bytes the gate's drains "
                                                       "wrote back.", T),
    "mlustre_client_barrier_inflight": Spec("gauge", "Updates in flight through the gate.",
                                            T),
    "mlustre_client_barrier_waiters": Spec("gauge", "Updates waiting at the gate.", T),
    "mlustre_client_barrier_longest_stall_seconds": Spec("gauge", "The longest time the "
                                                         "gate held updates.", T),
    "mlustre_cur_dirty_bytes": Spec("gauge", "Dirty bytes bound for an OST "
                                    "(osc.*.cur_dirty_bytes).", T),
    "mlustre_unstable_bytes": Spec("gauge", "Bytes written but not yet committed by the "
                                   "OST (osc.*.unstable_bytes).", T),
    "mlustre_ldlm_unused_locks": Spec("gauge", "Unused locks in the client's LRU.", T),
    "mlustre_ldlm_lru_size": Spec("gauge", "The client's lock LRU size.", T),
    "mlustre_ldlm_events_total": Spec("counter", "The client lock namespace's counters "
                                      "(enqueues, cancels, BASTs, glimpses, ...).",
                                      ("component", "event", "target")),
}


@dataclass
class Families:
    """Samples gathered per metric name (each with the labels its Spec names)."""

    samples: dict[str, list[tuple[tuple[str, ...], float]]] = field(default_factory=dict)

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        spec = SPECS[name]
        self.samples.setdefault(name, []).append(
            (tuple(str(labels[k]) for k in spec.labels), float(value)))

    def metrics(self) -> list[Metric]:
        out: list[Metric] = []
        for name in sorted(self.samples):
            spec = SPECS[name]
            fam: CounterMetricFamily | GaugeMetricFamily
            if spec.kind == "counter":
                fam = CounterMetricFamily(name, spec.help, labels=spec.labels)
            else:
                fam = GaugeMetricFamily(name, spec.help, labels=spec.labels)
            seen: set[tuple[str, ...]] = set()
            for labels, value in self.samples[name]:
                if labels in seen:  # one series per label set (the first wins)
                    continue
                seen.add(labels)
                fam.add_metric(list(labels), value)
            out.append(fam)
        return out


# ---------------------------------------------------------------- parsing lctl values

_STAT = re.compile(r"^(\S+)\s+(\d+)\s+samples\s+\[(\w+)\](?:\s+(\d+)\s+(\d+)\s+(\d+))?")


def parse_stats(lines: Any) -> dict[str, tuple[int, int | None]]:
    """Lustre's stats text (`NAME N samples [unit] [min max sum]`): name -> (samples,
    sum or None). Lines that are not stats (snapshot_time) are skipped."""
    out: dict[str, tuple[int, int | None]] = {}
    for line in lines if isinstance(lines, list) else []:
        m = _STAT.match(str(line))
        if m:
            out[m[1]] = (int(m[2]), int(m[6]) if m[6] is not None else None)
    return out


def parse_fields(lines: Any) -> dict[str, str]:
    """`key: value` lines (barrier, recovery_status) as a dict of strings."""
    out: dict[str, str] = {}
    for line in lines if isinstance(lines, list) else []:
        key, sep, value = str(line).partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _number(text: Any) -> float | None:
    if isinstance(text, bool):
        return float(text)
    if isinstance(text, int | float):
        return float(text)
    try:
        return float(str(text))
    except ValueError:
        return None


def _opname(key: str) -> str:
    """req.MDS_GETATTR -> mds_getattr (as Lustre's service stats name opcodes)."""
    return key.removeprefix("req.").lower()


def _component_of(device: str) -> str:
    """A client device (FS-MDT0000-mdc-ID) -> mdc; a server target (FS-OST0001) -> ost."""
    parts = device.split("-")
    if len(parts) >= 3 and parts[2] in ("mdc", "osc"):
        return parts[2]
    kind = parts[1][:3].lower() if len(parts) > 1 else ""
    return kind if kind in ("mdt", "ost", "mgs") else "unknown"


# ---------------------------------------------------------------- the mapping

Rule = Callable[[Families, str, str, Any, Mapping[str, Sequence[str]]], None]

# (prefix, suffix) of the parameter -> what it becomes; the middle is the device.
_SERVER_SCALARS = {
    "num_exports": "lustre_connected_clients",
    "num_connections": "mlustre_connections",
    "instance": "mlustre_target_instance",
    "last_transno": "mlustre_last_transno",
    "last_committed": "mlustre_last_committed",
}
_NS_SCALARS = {
    "lock_count": "mlustre_ldlm_locks",
    "granted_count": "mlustre_ldlm_granted_locks",
    "waiting_count": "mlustre_ldlm_waiting_locks",
    "resource_count": "mlustre_ldlm_resources",
    "lock_unused_count": "mlustre_ldlm_unused_locks",
    "lru_size": "mlustre_ldlm_lru_size",
}
_LLITE_SCALARS = {
    "dirty_bytes": ("mlustre_client_dirty_bytes", 1),
    "cached_bytes": ("mlustre_client_cached_bytes", 1),
    "max_dirty_mb": ("mlustre_client_max_dirty_bytes", 1 << 20),
    "max_cached_mb": ("mlustre_client_max_cached_bytes", 1 << 20),
    "inodes": ("mlustre_client_inodes", 1),
    "open_files": ("mlustre_client_open_files", 1),
}
_OSC_SCALARS = {
    "cur_dirty_bytes": "mlustre_cur_dirty_bytes",
    "unstable_bytes": "mlustre_unstable_bytes",
}
_GATE_COUNTERS = ("enqueues", "callbacks", "drains")


def _server_param(out: Families, component: str, target: str, leaf: str, value: Any,
                  states: Mapping[str, Sequence[str]]) -> None:
    labels = {"component": component, "target": target}
    if leaf in _SERVER_SCALARS:
        num = _number(value)
        if num is not None:
            out.add(_SERVER_SCALARS[leaf], labels, num)
    elif leaf == "stats":
        evictions = 0
        for key, (samples, _sum) in parse_stats(value).items():
            if key.startswith("req."):
                out.add("lustre_stats_total", {**labels, "operation": _opname(key)}, samples)
            elif key in ("read_bytes", "write_bytes"):  # the OST counts bytes here
                op = key.removesuffix("_bytes")
                out.add(f"lustre_{key}_total", {**labels, "operation": op}, samples)
            elif key not in GAUGE_STATS:
                out.add("mlustre_target_events_total", {**labels, "event": key}, samples)
            if key in EVICTION_STATS:
                evictions += samples
        out.add("mlustre_evictions_total", labels, evictions)
    elif leaf == "recovery_status":
        fields = parse_fields(value)
        status = RECOVERY_STATUS.get(fields.get("status", ""), RECOVERY_UNKNOWN)
        out.add("lustre_recovery_status", labels, status)
        done = fields.get("completed_clients", "").partition("/")[0]
        if done.isdigit():
            out.add("lustre_recovery_status_completed_clients", labels, int(done))
        known = _number(fields.get("known_clients"))
        if known is not None:
            out.add("mlustre_recovery_known_clients", labels, known)
    elif leaf == "barrier_stat":
        fields = parse_fields(value)
        _state_set(out, "mlustre_barrier_state", labels, fields.get("state", ""),
                   states.get("barrier", ()))
        holders = _number(fields.get("holders"))
        if holders is not None:
            out.add("mlustre_barrier_holders", labels, holders)


def _namespace_param(out: Families, device: str, leaf: str, value: Any) -> None:
    labels = {"component": _component_of(device), "target": device}
    if leaf in _NS_SCALARS:
        num = _number(value)
        if num is not None:
            out.add(_NS_SCALARS[leaf], labels, num)
    elif leaf == "stats":  # a client's lock namespace
        stats = parse_stats(value)
        for key, (samples, _sum) in stats.items():
            out.add("mlustre_ldlm_events_total", {**labels, "event": key}, samples)
        if "evictions" in stats:
            out.add("mlustre_evictions_total", labels, stats["evictions"][0])


def _llite_param(out: Families, device: str, leaf: str, value: Any) -> None:
    labels = {"fs": device.rpartition("-")[0] or device, "target": device}
    if leaf in _LLITE_SCALARS:
        name, scale = _LLITE_SCALARS[leaf]
        num = _number(value)
        if num is not None:
            out.add(name, labels, num * scale)
    elif leaf == "stats":
        for key, (samples, total) in parse_stats(value).items():
            out.add("lustre_client_stats_total", {**labels, "operation": key}, samples)
            if key in ("read_bytes", "write_bytes") and total is not None:
                out.add(f"mlustre_client_{key}_total", labels, total)


def _client_import_param(out: Families, device: str, leaf: str, value: Any,
                         states: Mapping[str, Sequence[str]]) -> None:
    labels = {"component": _component_of(device), "target": device}
    if leaf == "stats":
        for key, (samples, _sum) in parse_stats(value).items():
            out.add("mlustre_client_rpcs_total", {**labels, "operation": _opname(key)},
                    samples)
    elif leaf == "import" and isinstance(value, dict):
        _state_set(out, "mlustre_import_state", labels, str(value.get("state", "")),
                   states.get("import", ()))
        for key, name in (("conn_cnt", "mlustre_import_connects_total"),
                          ("resent_updates", "mlustre_import_resent_updates_total"),
                          ("instance", "mlustre_import_server_instance"),
                          ("peer_committed", "mlustre_import_peer_committed")):
            num = _number(value.get(key))
            if num is not None:
                out.add(name, labels, num)
    elif leaf == "barrier":
        fields = parse_fields(value)
        _state_set(out, "mlustre_client_barrier_state", labels, fields.get("state", ""),
                   states.get("gate", ()))
        for key in _GATE_COUNTERS:
            num = _number(fields.get(key))
            if num is not None:
                out.add("mlustre_client_barrier_events_total", {**labels, "event": key}, num)
        for key, name in (("flushed_bytes", "mlustre_client_barrier_flushed_bytes_total"),
                          ("inflight", "mlustre_client_barrier_inflight"),
                          ("waiters", "mlustre_client_barrier_waiters"),
                          ("longest_stall_s", "mlustre_client_barrier_longest_stall_seconds")):
            num = _number(fields.get(key))
            if num is not None:
                out.add(name, labels, num)
    elif leaf in _OSC_SCALARS:
        num = _number(value)
        if num is not None:
            out.add(_OSC_SCALARS[leaf], labels, num)
    elif leaf in ("read_bytes", "write_bytes"):
        num = _number(value)
        if num is not None:
            op = leaf.removesuffix("_bytes")
            out.add(f"lustre_{leaf}_total", {**labels, "operation": op}, num)


def _state_set(out: Families, name: str, labels: Mapping[str, str], current: str,
               known: Sequence[str]) -> None:
    """A state as one series per state, 1 for the current one (Prometheus's state set):
    every state the caller knows is listed, so a change is a value change, not a series
    appearing."""
    for state in dict.fromkeys([*known, current]):
        if state:
            out.add(name, {**labels, "state": state}, 1 if state == current else 0)


_LEAVES = (set(_SERVER_SCALARS) | set(_NS_SCALARS) | set(_LLITE_SCALARS) | set(_OSC_SCALARS)
           | {"stats", "recovery_status", "barrier_stat", "import", "barrier", "read_bytes",
              "write_bytes"})


def wanted(name: str) -> bool:
    """Whether a parameter feeds a metric: the driver reads only those (not, e.g., the
    lock dumps, which may be long)."""
    return name.rpartition(".")[2] in _LEAVES


def families(params: Iterable[tuple[str, Any]],
             states: Mapping[str, Sequence[str]] | None = None) -> Families:
    """The metrics of (parameter name, value) pairs, as `ParamTree.get` gives them.

    states: the names of every state of "import" (the client's import states),
    "gate" (its writer gate) and "barrier" (a server's barrier), from the layers that
    define them (this module imports neither the client nor the servers)."""
    states = states or {}
    out = Families()
    for name, value in params:
        head, _, rest = name.partition(".")
        device, _, leaf = rest.rpartition(".")
        if head in SERVER_PREFIXES and device:
            _server_param(out, SERVER_PREFIXES[head], device, leaf, value, states)
        elif head == "ldlm" and device.startswith("namespaces."):
            _namespace_param(out, device.removeprefix("namespaces."), leaf, value)
        elif head == "llite" and device:
            _llite_param(out, device, leaf, value)
        elif head in ("mdc", "osc") and device:
            _client_import_param(out, device, leaf, value, states)
    return out


class _Snapshot(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def exposition(fams: Families) -> bytes:
    """The text exposition format of the families (prometheus_client writes it: its
    escaping of label values and help texts, its _total handling)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(fams.metrics()))
    return generate_latest(registry)


# ---------------------------------------------------------------- addresses and HTTP

def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` of --metrics (PORT 0: any free port); ValueError with a clear reason."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--metrics wants HOST:PORT (PORT 0-65535, 0: any free port), "
                         f"not {text!r}")
    return host, int(port)


MAX_REQUEST_HEAD = 8192


def http_reply(head: bytes, render: Callable[[], bytes]) -> bytes:
    """The whole HTTP/1.0 reply to one request head (its bytes up to the blank line):
    GET or HEAD /metrics gets `render()`; anything else a short error. The connection
    closes after it (Prometheus reconnects per scrape anyway)."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _reply(400, "Bad Request", b"bad request\n")
    method, target, _version = parts
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _reply(405, "Method Not Allowed", b"only GET\n", extra="Allow: GET, HEAD\r\n")
    if path not in ("/metrics", "/"):
        return _reply(404, "Not Found", b"metrics are at /metrics\n")
    body = render()
    reply = _reply(200, "OK", body, content_type=CONTENT_TYPE)
    return reply[:len(reply) - len(body)] if method == "HEAD" else reply


def _reply(status: int, reason: str, body: bytes, *, content_type: str = "text/plain",
           extra: str = "") -> bytes:
    head = (f"HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode("latin-1") + body
