"""Metrics: lctl parameters -> Prometheus families and text (metrics.py), the HTTP
reply, the trio endpoint (metrics_server.py), and `mlustre server --metrics` (a real
MGS process; its output checked by `promtool check metrics` when promtool is there)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from mlustre import metrics, metrics_server
from mlustre.params import ParamTree

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "mlustre.cli"]

# Values as the ParamTree getters return them (copied from a running cluster).
MDT = [
    ("mdt.fs-MDT0000.num_exports", 2),
    ("mdt.fs-MDT0000.num_connections", 3),
    ("mdt.fs-MDT0000.instance", 4),
    ("mdt.fs-MDT0000.last_transno", 17),
    ("mdt.fs-MDT0000.last_committed", 15),
    ("mdt.fs-MDT0000.stats", [
        "snapshot_time             1796293720.232287 secs.usecs",
        "auth_ok                   2 samples [reqs]",
        "evictions                 1 samples [reqs]",
        "recovery_evictions        2 samples [reqs]",
        "ldlm_granted              3 samples [reqs]",
        "req.MDS_GETATTR           7 samples [reqs]",
        "req.MDS_REINT             2 samples [reqs]"]),
    ("mdt.fs-MDT0000.recovery_status", [
        "status: RECOVERING", "time_remaining: 12.5", "completed_clients: 1/3",
        "replayed_requests: 4", "replayed_locks: 0", "evicted_clients: 0",
        "known_clients: 3"]),
    ("mdt.fs-MDT0000.barrier_stat", ["state: frozen", "time_to_expire: 29.0",
                                     "holders: 2"]),
    ("ldlm.namespaces.fs-MDT0000.lock_count", 5),
    ("ldlm.namespaces.fs-MDT0000.granted_count", 4),
    ("ldlm.namespaces.fs-MDT0000.waiting_count", 1),
    ("ldlm.namespaces.fs-MDT0000.resource_count", 3),
]
OST = [
    ("obdfilter.fs-OST0001.stats", [
        "snapshot_time             1796293720.230186 secs.usecs",
        "req.OST_WRITE             1 samples [reqs]",
        "write_bytes               4096 samples [reqs]",
        "read_bytes                10 samples [reqs]"]),
    ("obdfilter.fs-OST0001.recovery_status", ["status: INACTIVE", "known_clients: 1"]),
]
CLIENT = [
    ("llite.fs-abc.stats", [
        "close                     1 samples [reqs]",
        "md_cache_hits             5 samples [events]",
        "write_bytes               2 samples [bytes] 3 5 8"]),
    ("llite.fs-abc.dirty_bytes", 100),
    ("llite.fs-abc.cached_bytes", 4096),
    ("llite.fs-abc.max_dirty_mb", 256),
    ("mdc.fs-MDT0000-mdc-abc.import", {
        "name": "fs-MDT0000", "state": "REPLAY", "conn_cnt": 2, "instance": 4,
        "peer_committed": 9, "resent_updates": 1, "state_history": [[1, "FULL"]]}),
    ("mdc.fs-MDT0000-mdc-abc.stats", ["req.MDS_CONNECT           2 samples [reqs]"]),
    ("mdc.fs-MDT0000-mdc-abc.barrier", [
        "state: draining", "inflight: 1", "enqueues: 2", "callbacks: 1", "drains: 1",
        "flushed_bytes: 4096", "last_drain_s: 0.5", "last_stall_s: 0.1",
        "longest_stall_s: 0.25", "waiters: 3"]),
    ("osc.fs-OST0001-osc-abc.cur_dirty_bytes", 100),
    ("osc.fs-OST0001-osc-abc.write_bytes", 8192),
    ("ldlm.namespaces.fs-OST0001-osc-abc.lock_count", 2),
    ("ldlm.namespaces.fs-OST0001-osc-abc.stats", [
        "basts                     4 samples [events]",
        "evictions                 1 samples [events]"]),
]
STATES = {"import": ["NEW", "FULL", "REPLAY"], "gate": ["open", "draining"],
          "barrier": ["thawed", "frozen"]}


def samples(params: list) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name, sorted labels -> value, as a scraper would see them."""
    out = {}
    for fam in metrics.families(params, STATES).metrics():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def lab(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_server_metrics_follow_lustrefs_exporter_names() -> None:
    got = samples(MDT + OST)
    mdt = {"component": "mdt", "target": "fs-MDT0000"}
    ost = {"component": "ost", "target": "fs-OST0001"}
    assert got["lustre_stats_total", lab(**mdt, operation="mds_getattr")] == 7
    assert got["lustre_stats_total", lab(**ost, operation="ost_write")] == 1
    assert got["lustre_write_bytes_total", lab(**ost, operation="write")] == 4096
    assert got["lustre_read_bytes_total", lab(**ost, operation="read")] == 10
    assert got["lustre_connected_clients", lab(**mdt)] == 2
    assert got["mlustre_connections", lab(**mdt)] == 3
    assert got["mlustre_target_instance", lab(**mdt)] == 4
    assert got["mlustre_ldlm_locks", lab(**mdt)] == 5
    assert got["mlustre_ldlm_waiting_locks", lab(**mdt)] == 1
    # recovery: lustrefs-exporter's encoding (4 = recovering, 1 = inactive)
    assert got["lustre_recovery_status", lab(**mdt)] == 4
    assert got["lustre_recovery_status", lab(**ost)] == 1
    assert got["lustre_recovery_status_completed_clients", lab(**mdt)] == 1
    assert got["mlustre_recovery_known_clients", lab(**mdt)] == 3
    # barrier: a state set, every known state listed
    assert got["mlustre_barrier_state", lab(**mdt, state="frozen")] == 1
    assert got["mlustre_barrier_state", lab(**mdt, state="thawed")] == 0
    assert got["mlustre_barrier_holders", lab(**mdt)] == 2
    # evictions: the lock service's and the recovery window's
    assert got["mlustre_evictions_total", lab(**mdt)] == 3
    assert got["mlustre_target_events_total", lab(**mdt, event="auth_ok")] == 2
    # a gauge kept in stats is not a counter
    assert ("mlustre_target_events_total", lab(**mdt, event="ldlm_granted")) not in got


def test_client_metrics() -> None:
    got = samples(CLIENT)
    ll = {"fs": "fs", "target": "fs-abc"}
    mdc = {"component": "mdc", "target": "fs-MDT0000-mdc-abc"}
    osc = {"component": "osc", "target": "fs-OST0001-osc-abc"}
    assert got["lustre_client_stats_total", lab(**ll, operation="close")] == 1
    assert got["lustre_client_stats_total", lab(**ll, operation="write_bytes")] == 2
    assert got["mlustre_client_write_bytes_total", lab(**ll)] == 8
    assert got["mlustre_client_dirty_bytes", lab(**ll)] == 100
    assert got["mlustre_client_cached_bytes", lab(**ll)] == 4096
    assert got["mlustre_client_max_dirty_bytes", lab(**ll)] == 256 << 20
    assert got["mlustre_import_state", lab(**mdc, state="REPLAY")] == 1
    assert got["mlustre_import_state", lab(**mdc, state="FULL")] == 0
    assert got["mlustre_import_connects_total", lab(**mdc)] == 2
    assert got["mlustre_import_server_instance", lab(**mdc)] == 4
    assert got["mlustre_client_rpcs_total", lab(**mdc, operation="mds_connect")] == 2
    assert got["mlustre_client_barrier_state", lab(**mdc, state="draining")] == 1
    assert got["mlustre_client_barrier_events_total", lab(**mdc, event="drains")] == 1
    assert got["mlustre_client_barrier_flushed_bytes_total", lab(**mdc)] == 4096
    assert got["mlustre_client_barrier_longest_stall_seconds", lab(**mdc)] == 0.25
    assert got["mlustre_cur_dirty_bytes", lab(**osc)] == 100
    assert got["lustre_write_bytes_total", lab(**osc, operation="write")] == 8192
    assert got["mlustre_ldlm_locks", lab(**osc)] == 2
    assert got["mlustre_ldlm_events_total", lab(**osc, event="basts")] == 4
    assert got["mlustre_evictions_total", lab(**osc)] == 1


def test_exposition_text() -> None:
    text = metrics.exposition(metrics.families(MDT + OST + CLIENT, STATES)).decode()
    assert "# TYPE lustre_stats_total counter" in text
    assert ('lustre_stats_total{component="mdt",operation="mds_getattr",'
            'target="fs-MDT0000"} 7.0') in text
    assert "# TYPE mlustre_client_dirty_bytes gauge" in text
    # every family has help and type, once
    for name in {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}:
        assert text.count(f"# TYPE {name} ") == 1
        assert f"# HELP {name} " in text


def test_exposition_passes_promtool() -> None:
    assert shutil.which("promtool"), "promtool missing: run scripts/bootstrap (prometheus)"
    text = metrics.exposition(metrics.families(MDT + OST + CLIENT, STATES))
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert not r.stdout.strip() and not r.stderr.strip()


def test_every_spec_name_is_lint_clean() -> None:
    """promtool's naming rules, for every family (even the ones a sample lacks)."""
    for name, spec in metrics.SPECS.items():
        assert name.startswith(("lustre_", "mlustre_"))
        assert name.endswith("_total") == (spec.kind == "counter"), name
        assert not name.endswith("_count"), name


def test_only_wanted_params_are_read() -> None:
    tree = ParamTree()
    tree.add("ldlm.namespaces.fs-MDT0000.lock_count", lambda: 1)

    def boom() -> None:
        raise AssertionError("a lock dump was read for metrics")

    tree.add("ldlm.namespaces.fs-MDT0000.locks", boom)
    tree.add("mdt.fs-MDT0000.exports", boom)
    body = metrics_server.render_params(tree).decode()
    assert 'mlustre_ldlm_locks{component="mdt",target="fs-MDT0000"} 1.0' in body


def test_parse_stats_and_fields() -> None:
    assert metrics.parse_stats(["snapshot_time 1.5 secs.usecs",
                                "write_bytes 2 samples [bytes] 3 5 8",
                                "req.OBD_PING 4 samples [reqs]", "garbage"]) == {
        "write_bytes": (2, 8), "req.OBD_PING": (4, None)}
    assert metrics.parse_stats("not a list") == {}
    assert metrics.parse_fields(["state: open", "x"]) == {"state": "open"}


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:9100", ("::1", 9100)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert metrics.parse_address(text) == expected


@pytest.mark.parametrize("text", ["9100", ":9100", "host:", "host:65536", "host:-1",
                                  "host:x"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.parse_address(text)


def test_http_reply() -> None:
    def body() -> bytes:
        return b"x 1\n"

    ok = metrics.http_reply(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n", body)
    assert ok.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in ok
    assert b"Content-Length: 4\r\n" in ok and ok.endswith(b"\r\n\r\nx 1\n")
    head = metrics.http_reply(b"HEAD /metrics HTTP/1.1\r\n\r\n", body)
    assert head.startswith(b"HTTP/1.0 200") and head.endswith(b"\r\n\r\n")
    assert metrics.http_reply(b"GET /other HTTP/1.1\r\n\r\n", body).startswith(
        b"HTTP/1.0 404")
    assert metrics.http_reply(b"POST /metrics HTTP/1.1\r\n\r\n", body).startswith(
        b"HTTP/1.0 405")
    assert metrics.http_reply(b"\x00\xff garbage", body).startswith(b"HTTP/1.0 400")


def test_endpoint_serves_and_reports_address_in_use() -> None:
    tree = ParamTree()
    count = {"n": 0}

    def lock_count() -> int:
        count["n"] += 1
        return count["n"]

    tree.add("ldlm.namespaces.fs-OST0000.lock_count", lock_count)

    async def get(address: str, request: bytes) -> bytes:
        host, port = metrics.parse_address(address)
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(request)
            out = b""
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out

    async def main() -> None:
        with trio.fail_after(30):
            listeners = await metrics_server.open_listeners("127.0.0.1", 0)
            address = metrics_server.address_of(listeners)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(metrics_server.serve, listeners,
                                   lambda: metrics_server.render_params(tree))
                first = await get(address, b"GET /metrics HTTP/1.1\r\n\r\n")
                second = await get(address, b"GET /metrics HTTP/1.1\r\n\r\n")
                assert first.startswith(b"HTTP/1.0 200")
                assert b'mlustre_ldlm_locks{component="ost",target="fs-OST0000"} 1.0' in first
                assert b"} 2.0" in second  # read again at each scrape
                assert (await get(address, b"BREW /pot HTTP/1.1\r\n\r\n")).startswith(
                    b"HTTP/1.0 405")
                with pytest.raises(OSError, match="cannot serve metrics on 127.0.0.1:"
                                                  r"\d+: address in use"):
                    await metrics_server.open_listeners(*metrics.parse_address(address))
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_server_metrics_flag(tmp_path: Path) -> None:
    """A real MGS with --metrics: READY names the address, /metrics serves its stats;
    a bad value and an address in use are one-line errors."""
    proc = subprocess.Popen([*CLI, "server", "mgs", "--fsname", "x", "--data",
                             str(tmp_path / "mgs"), "--metrics", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("READY mgs x-MGS")
        address = dict(f.split("=", 1) for f in ready.split() if "=" in f)["metrics"]
        host, port = metrics.parse_address(address)
        assert host == "127.0.0.1" and port > 0
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 200")
        assert b'mlustre_connections{component="mgs",target="x-MGS"}' in reply
        # the same address again: refused with one line, before anything else starts
        r = subprocess.run([*CLI, "server", "mgs", "--fsname", "x", "--data",
                            str(tmp_path / "mgs2"), "--metrics", address],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1
        assert f"cannot serve metrics on {address}: address in use" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize("args", [
    ["server", "mgs", "--fsname", "x", "--data", "D", "--metrics", "nohost"],
    ["server", "mgs", "--fsname", "x", "--data", "D", "--metrics", "127.0.0.1:70000"],
    ["mount", "127.0.0.1:1:/x", "D", "--metrics", "127.0.0.1"],
])
def test_bad_metrics_address(tmp_path: Path, args: list[str]) -> None:
    r = subprocess.run([*CLI, *[str(tmp_path) if a == "D" else a for a in args]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "--metrics wants HOST:PORT" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_local_cluster_endpoints() -> None:
    """up's READY fields, the port pinned into a server's command line (so a failover
    keeps it), and status --json's listing."""
    from mlustre.localcluster import endpoints

    line = "READY mdt fs-MDT0000 nid=127.0.0.1:4000 pid=7 metrics=127.0.0.1:9101"
    assert endpoints.ready_fields(line) == {"nid": "127.0.0.1:4000", "pid": "7",
                                            "metrics": "127.0.0.1:9101"}
    server = {"name": "fs-MDT0000", "kind": "mdt", "metrics": "127.0.0.1:9101",
              "args": ["server", "mdt", "--metrics", endpoints.UP_ADDRESS, "--index", "0"]}
    endpoints.pin(server)
    assert server["args"] == ["server", "mdt", "--index", "0", "--metrics", "127.0.0.1:9101"]
    old = {"name": "fs-MGS", "kind": "mgs", "metrics": None, "args": ["server", "mgs"]}
    endpoints.pin(old)  # a cluster started without endpoints stays so
    assert old["args"] == ["server", "mgs"]
    assert endpoints.listing([server, old], [
        {"mountpoint": "/mnt", "pid": 9, "metrics": "127.0.0.1:9102"},
        {"mountpoint": "/mnt2", "pid": 10, "metrics": None}]) == [
        {"name": "fs-MDT0000", "kind": "mdt", "address": "127.0.0.1:9101",
         "url": "http://127.0.0.1:9101/metrics"},
        {"name": "client:/mnt", "kind": "client", "address": "127.0.0.1:9102",
         "url": "http://127.0.0.1:9102/metrics"}]
