"""The SIR barrier on real mounts: a controlled failover freezes the target first, so
its clients flush, wait for the commit and hold their updates — nothing is resent or
replayed afterwards (counted); `lctl barrier_freeze/thaw/stat` hold updates (not reads)
until a thaw or the freeze's expiry; a client that does not answer is evicted; servers
or clients without UPDATE_LOCK still recover (by resend), in every combination."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mnthelpers import Cluster, cli, client_pid, fsname_of, mount_extra, run, sha256_file

TIMEOUT = 180


def lctl(c: Cluster, *args: str, timeout: float = 60):
    res = cli("lctl", "-m", c.mnt, *args, timeout=timeout)
    assert not res.timed_out, "lctl hung\n" + res.describe()
    return res


def blocks(c: Cluster, pattern: str) -> dict[str, str]:
    """get_param PATTERN of this mount's client(s) and servers: name -> value text."""
    res = lctl(c, "get_param", pattern).check()
    out: dict[str, str] = {}
    name = None
    for line in res.stdout.splitlines():
        m = re.match(r"^(\S+?)=(.*)$", line)
        if m and not line.startswith(" "):
            name = m.group(1)
            out[name] = m.group(2)
        elif name is not None:
            out[name] += "\n" + line
    return out


def field(text: str, key: str) -> str:
    m = re.search(rf"^\s*{key}:\s*(\S+)", text, re.MULTILINE)
    assert m, f"no {key} in\n{text}"
    return m.group(1)


def resent_updates(c: Cluster) -> int:
    return sum(int(field(v, "resent_updates")) for v in blocks(c, "*.*.import").values())


def server_stat(c: Cluster, key: str) -> int:
    fs = fsname_of(c)
    res = lctl(c, "get_param", f"obdfilter.{fs}-*.stats", f"mdt.{fs}-*.stats").check()
    return sum(int(m.group(1)) for m in
               re.finditer(rf"^{key}\s+(\d+)\s+samples", res.stdout, re.MULTILINE))


WRITER = r"""
import hashlib, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
mirror = bytearray()
n = 0
for line in sys.stdin:
    if line.strip() == "end":
        break
    # 4 KiB into each of 48 chunks of 1 MiB: partly dirty chunks, which write-back
    # leaves in the cache until its periodic flush (full ones go at once).
    for k in range(48):
        off = k * (1 << 20) + n * 4096
        block = hashlib.sha256(f"{n}/{k}".encode()).digest() * 128
        os.pwrite(fd, block, off)
        if len(mirror) < off + len(block):
            mirror.extend(bytes(off + len(block) - len(mirror)))
        mirror[off:off + len(block)] = block
    n += 1
    print("wrote", n, flush=True)
os.close(fd)
print("done", hashlib.sha256(mirror).hexdigest(), flush=True)
"""


@pytest.mark.timeout(TIMEOUT)
def test_controlled_failover_leaves_nothing_to_replay(cluster_factory, tmp_path):  # noqa: F811
    c = cluster_factory("--osts", "2", "--fsname", "br" + secrets.token_hex(3))
    assert resent_updates(c) == 0
    # The periodic flush (1 s) must not write the dirty data back before each freeze does:
    # on a loaded machine starting `mlustre failover` alone can take longer than that.
    lctl(c, "set_param", "llite.*.flush_interval=600").check()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(c.mnt / "dirty")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ns = c.mnt / "ns"
    ns.mkdir()
    try:
        reports = []
        for i, target in enumerate(("OST0000", "MDT0000", "OST0001", "OST0000", "MDT0000")):
            writer.stdin.write("more\n")
            writer.stdin.flush()
            assert writer.stdout.readline().startswith("wrote")
            (ns / f"f{i}").write_text(f"file {i}")
            os.rename(ns / f"f{i}", ns / f"g{i}")
            res = cli("failover", c.mnt, target, "--json").check()
            report = json.loads(res.stdout)
            assert report["kind"] == "controlled" and report["barrier"] is not None, report
            assert report["barrier"]["clients"] == 1 and report["barrier"]["evicted"] == 0
            reports.append(report)
        writer.stdin.write("end\n")
        writer.stdin.flush()
        out, _ = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0
    digest = out.split()[-1]
    assert sha256_file(c.mnt / "dirty") == digest
    assert sorted(p.name for p in ns.iterdir()) == [f"g{i}" for i in range(5)]
    # The OSTs were frozen while the writer's data was dirty: it was flushed to them.
    assert sum(r["barrier"]["flushed_bytes"] for r in reports if "OST" in r["target"]) > 0
    # Nothing was resent or replayed: the barrier left the restarts nothing to do.
    assert resent_updates(c) == 0
    assert server_stat(c, "resent_updates") == 0
    gates = blocks(c, "*.*.barrier")
    assert len(gates) == 3 and all(field(v, "state") == "open" for v in gates.values()), gates
    assert all(int(field(v, "drains")) >= 1 for v in gates.values()), gates
    c.remember_pids(c.status())


MKDIR = "import os, sys; os.mkdir(sys.argv[1]); print('made', flush=True)"


@pytest.mark.timeout(TIMEOUT)
def test_freeze_holds_updates_not_reads_until_thaw_or_expiry(cluster_factory):  # noqa: F811
    c = cluster_factory("--osts", "1", "--fsname", "bf" + secrets.token_hex(3))
    fs = fsname_of(c)
    (c.mnt / "before").write_text("x")
    (c.mnt / "sub").mkdir()  # (a pending mkdir holds its directory's lock in the kernel)
    out = lctl(c, "barrier_freeze", fs, "30").check().stdout
    assert re.search(rf"{fs}-MDT0000: frozen in [\d.]+s \(1 clients", out), out
    assert "'frozen'" in lctl(c, "barrier_stat", fs).check().stdout
    made = subprocess.Popen([sys.executable, "-c", MKDIR, str(c.mnt / "sub" / "d1")],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert made.poll() is None, "an update went through a frozen barrier"
        assert (c.mnt / "before").read_text() == "x"  # reads need no barrier
        assert sorted(os.listdir(c.mnt)) == ["before", "sub"]
        out = lctl(c, "barrier_thaw", fs).check().stdout
        assert f"{fs}-MDT0000: thawed" in out
        assert made.communicate(timeout=30)[0].strip() == "made"
    finally:
        if made.poll() is None:
            made.kill()
            made.wait()
    assert made.returncode == 0 and (c.mnt / "sub" / "d1").is_dir()
    # A freeze that is never thawed expires by itself.
    lctl(c, "barrier_freeze", fs, "1").check()
    res = run([sys.executable, "-c", MKDIR, str(c.mnt / "d2")], timeout=30)
    assert res.rc == 0 and res.elapsed > 0.5, res.describe()
    stat = json.loads(lctl(c, "barrier_stat", fs, "--json").check().stdout)
    assert stat[0]["state"] == "expired" and stat[0]["freezes"] == 2, stat
    # Bad arguments: one clear line, exit status non-zero.
    for args, msg in ((("barrier_freeze", fs, "0"), "timeout"),
                      (("barrier_stat", "nosuchfs"), "no such filesystem or target"),
                      (("barrier_freeze",), "arguments")):
        res = lctl(c, *args)
        assert res.rc != 0 and msg in res.stderr, res.describe()


@pytest.mark.timeout(TIMEOUT)
def test_a_silent_client_is_evicted_by_a_freeze(cluster_factory, tmp_path):  # noqa: F811
    c = cluster_factory("--osts", "1", "--fsname", "bs" + secrets.token_hex(3),
                        "--ldlm-timeout", "2")
    fs = fsname_of(c)
    mnt_b = c.data.parent / "client-b"
    mnt_b.mkdir()
    mnt_b.chmod(0o755)
    mount_extra(c, mnt_b).check()
    (mnt_b / "from-b").write_text("b")
    pid_b = client_pid(c, mnt_b)
    os.kill(pid_b, signal.SIGSTOP)
    try:
        out = json.loads(lctl(c, "barrier_freeze", fs, "30", "--json").check().stdout)
    finally:
        os.kill(pid_b, signal.SIGCONT)
    frozen = out[0]["frozen"]
    assert frozen["clients"] == 2 and frozen["evicted"] == 1, frozen
    assert 1.5 < frozen["freeze_s"] < 15, frozen
    lctl(c, "barrier_thaw", fs).check()
    (c.mnt / "from-a").write_text("a")
    # B was evicted: it reconnects, and new calls work again.
    deadline = time.monotonic() + 30
    while True:
        try:
            (mnt_b / "again").write_text("b2")
            break
        except OSError:
            assert time.monotonic() < deadline, "client B never worked again"
            time.sleep(0.2)
    assert sorted(os.listdir(c.mnt)) == ["again", "from-a", "from-b"]


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("side", ["servers", "client"])
def test_without_update_lock_a_restart_is_recovered_by_resend(cluster_factory, side):  # noqa: F811
    """The interop matrix's other half: servers that do not offer UPDATE_LOCK, or a
    client that does not ask for it. Controlled restarts then freeze nobody; the
    client recovers by resend as after a crash, and nothing is lost."""
    up = ["--osts", "2", "--fsname", "bn" + secrets.token_hex(3)]
    c = cluster_factory(*up, *(["--no-update-lock"] if side == "servers" else []))
    clients = [c.mnt]
    if side == "client":  # a second client without it, beside one with it
        mnt_b = c.data.parent / "client-b"
        mnt_b.mkdir()
        mnt_b.chmod(0o755)
        mount_extra(c, mnt_b, "--client-no-update-lock").check()
        clients.append(mnt_b)
    gates = blocks(c, "*.*.barrier")
    off = [n for n, v in gates.items() if field(v, "state") == "off"]
    assert len(off) == 3, gates  # every import of the client(s) without it
    src = Path(c.data.parent) / "src"
    src.write_bytes(b"".join(hashlib.sha256(str(i).encode()).digest() * (1 << 15)
                             for i in range(24)))
    copies = [subprocess.Popen(["cp", str(src), str(m / f"copy-{i}")])
              for i, m in enumerate(clients)]
    try:
        for target in ("OST0000", "MDT0000", "OST0001"):
            report = json.loads(cli("failover", c.mnt, target, "--json").check().stdout)
            expect = 0 if side == "servers" else 1  # only the client that holds CR
            barrier = report["barrier"]
            assert (barrier is None and side == "servers") or \
                (barrier is not None and barrier["clients"] == expect), report
        for p in copies:
            assert p.wait(timeout=120) == 0
    finally:
        for p in copies:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, m in enumerate(clients):
        assert sha256_file(c.mnt / f"copy-{i}") == sha256_file(src), m
    c.remember_pids(c.status())
