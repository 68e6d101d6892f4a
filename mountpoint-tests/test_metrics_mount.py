"""Metrics of a running cluster: `mlustre up` gives every server and its client a
/metrics endpoint on a loopback port, `status --json` lists them under "metrics", each
passes `promtool check metrics`, and a real Prometheus scraping the cluster sees every
target up again after a failover of the MDT, with the MDT's RPC counters and its new
instance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mnthelpers import cli, is_mounted, mount_extra

TIMEOUT = 120



@pytest.fixture(autouse=True)
def _prometheus_installed() -> None:
    """scripts/bootstrap installs them: their absence is a failure, not a skip."""
    missing = [t for t in ("promtool", "prometheus") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run scripts/bootstrap (Debian's "
                    "prometheus package)")


def fetch(url: str, timeout: float = 10) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    """Prometheus's instant query API: the result vector."""
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, _, body = fetch(url)
    reply = json.loads(body)
    assert status == 200 and reply["status"] == "success", reply
    return reply["data"]["result"]


def wait_for(what: str, check, timeout: float = 30, interval: float = 0.5):
    """check() until it returns something true; AssertionError with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as e:  # Prometheus not listening yet
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


class Prometheus:
    """A real Prometheus on a loopback port, scraping `targets` every second, with its
    storage in `workdir`; stopped by its PID."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "mlustre",
                                "static_configs": [{"targets": targets}]}]}))
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}",
                 f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.mark.timeout(TIMEOUT)
def test_metrics_endpoints_promtool_and_prometheus_through_a_failover(fresh_cluster,
                                                                      scratch):
    c = fresh_cluster
    (c.mnt / "d").mkdir()
    (c.mnt / "d" / "f").write_bytes(b"x" * 100_000)
    status = c.status()
    endpoints = {m["name"]: m for m in status["metrics"]}
    fs = status["fsname"]
    assert set(endpoints) == {f"{fs}-MGS", f"{fs}-MDT0000", f"{fs}-OST0000",
                              f"{fs}-OST0001", f"client:{c.mnt}"}, status
    for s in status["servers"] + status["clients"]:
        assert s["metrics"] and s["metrics"].startswith("127.0.0.1:"), s

    # Every endpoint answers and passes promtool (no errors, no lint warnings).
    for name, m in endpoints.items():
        code, ctype, body = fetch(m["url"])
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4"), (name, ctype)
        check = subprocess.run(["promtool", "check", "metrics"], input=body,
                               capture_output=True, timeout=30)
        assert check.returncode == 0 and not check.stdout.strip() \
            and not check.stderr.strip(), (name, check.stdout, check.stderr, body[:2000])
    mdt_text = fetch(endpoints[f"{fs}-MDT0000"]["url"])[2].decode()
    assert 'lustre_stats_total{component="mdt",operation="mds_reint"' in mdt_text
    client_text = fetch(endpoints[f"client:{c.mnt}"]["url"])[2].decode()
    assert 'mlustre_import_state{component="mdc",state="FULL"' in client_text
    assert "mlustre_client_cached_bytes{" in client_text

    mdt_address = endpoints[f"{fs}-MDT0000"]["address"]
    prom = Prometheus(scratch, [m["address"] for m in endpoints.values()])
    try:
        every = len(endpoints)
        wait_for("every endpoint up in Prometheus", lambda: len(
            [r for r in query(prom.url, "up == 1")]) == every, timeout=40)

        failover = cli("failover", c.mnt, "MDT0000", "--json", timeout=90)
        failover.check()
        after = c.status()
        c.remember_pids(after)
        mdt_after = next(m for m in after["metrics"] if m["name"] == f"{fs}-MDT0000")
        assert mdt_after["address"] == mdt_address, "the failover moved the endpoint"
        (c.mnt / "d" / "after").write_bytes(b"after the failover")
        os.sync()

        # Prometheus scrapes the restarted MDT (its new instance), every target is up,
        # and the MDT's RPC counters are there.
        new = wait_for("the restarted MDT scraped", lambda: query(
            prom.url, f'mlustre_target_instance{{component="mdt",instance="{mdt_address}"}}'
                      " >= 2"), timeout=30)
        assert float(new[0]["value"][1]) >= 2
        wait_for("every endpoint up after the failover", lambda: len(
            query(prom.url, "up == 1")) == every, timeout=30)
        # (the restarted MDT's counters start again; the client's reconnect may come
        # after its first scrape)
        rpcs = wait_for("the restarted MDT's RPC counters", lambda: query(
            prom.url, f'lustre_stats_total{{component="mdt",instance="{mdt_address}",'
                      'operation="mds_connect"} >= 1'), timeout=30)
        assert rpcs[0]["metric"]["target"] == f"{fs}-MDT0000", rpcs
        wait_for("the client's MDT import FULL again", lambda: query(
            prom.url, 'mlustre_import_state{component="mdc",state="FULL"} == 1'), timeout=30)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- prometheus log ---\n{prom.log_tail()}") from None
    finally:
        prom.stop()


@pytest.mark.timeout(TIMEOUT)
def test_mount_metrics_flag_and_address_in_use(fresh_cluster, client2):
    """`mlustre mount --metrics`: the client serves its metrics and status lists them;
    an address in use fails the mount in one line and leaves nothing mounted."""
    c = fresh_cluster
    taken = next(m for m in c.status()["metrics"] if m["kind"] == "mdt")["address"]
    res = mount_extra(c, client2, "--metrics", taken)
    assert res.rc == 1, res.describe()
    assert f"cannot serve metrics on {taken}: address in use" in res.stderr, res.describe()
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not is_mounted(client2)

    res = mount_extra(c, client2, "--metrics", "127.0.0.1:0")
    res.check()
    listed = {m["name"]: m for m in c.status()["metrics"]}
    mine = listed[f"client:{client2}"]
    assert f"metrics at {mine['url']}" in res.stdout, res.describe()
    code, _, body = fetch(mine["url"])
    assert code == 200 and b"mlustre_import_state{" in body
