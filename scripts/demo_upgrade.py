#!/usr/bin/env python3
"""demo_upgrade.py - a rolling upgrade of a running mlustre cluster, 1.8 -> 2.0, one
server at a time by controlled failover, under a mixed workload that must not see a
single failed system call; then one server back to 1.8.

Started by scripts/demo-upgrade (which bootstraps first). Steps:

  1. a fresh local cluster of release 1.8 whose MDT and OSTs are failover pairs
     (`mlustre up --release 1.8 --failover-pairs`), in a new work directory;
  2. workloads on the mount, each its own process:
       writer   appends checksummed fixed-size records (sequence number, sha256 of the
                payload), fsync every N records, and times every write
       held     one file held open for the whole run: pwrite at growing offsets, each
                chunk read back at once and an older one too
       extract  a tarball of part of a real source tree, extracted again and again,
                every file checksummed against the original
       copy     cp -a / mv / rm -rf of the extracted trees
  3. meanwhile `mlustre upgrade ... --release 2.0` of MDT0000, OST0000, OST0001 (each
     onto its failover partner) and the MGS, a few seconds apart, then OST0001 back
     to 1.8 (onto its first node);
  4. at the end every byte is verified (all records, the held file through its
     descriptor and a fresh open, the trees), the cluster is stopped and the work
     directory removed (kept on failure: logs are in its data/ directory);
  5. a timeline of the failovers (barrier, stop and restart times, the writer's
     stall around each), the writer's throughput over time, a summary, an SVG plot
     (--plot) and, with --json, a machine-readable report.

Exit status 0 only if no system call failed, every byte verified and every upgrade
succeeded; 1 otherwise, 2 for bad arguments, 128+N after signal N (cleaned up).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
_NEXT_TO_PYTHON = Path(sys.executable).with_name("mlustre")
MLUSTRE = str(_NEXT_TO_PYTHON if _NEXT_TO_PYTHON.exists() else ROOT / ".venv" / "bin" / "mlustre")
PROG = "demo-upgrade"
FSNAME = "demo"
WORKLOADS = ("writer", "held", "extract", "copy")
# (target, release, --partner): the rolling upgrade, then one downgrade.
PLAN = [("MDT0000", "2.0", True), ("OST0000", "2.0", True), ("OST0001", "2.0", True),
        ("MGS", "2.0", False), ("OST0001", "1.8", True)]
FINAL_RELEASES = {"MGS": "2.0", "MDT0000": "2.0", "OST0000": "2.0", "OST0001": "1.8"}
MAGIC = b"MLUR"
HEADER = struct.Struct("<4sQdI32s")  # magic, sequence, wall clock, payload length, sha256
HELD_CHUNK = 16 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---- workers (each a child process: python demo_upgrade.py --worker NAME --conf F) ----

class Worker:
    """Counts operations, failed system calls (every OSError) and mismatches."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.t0 = conf["t0"]
        self.deadline = conf["deadline"]  # a bound in case the demo is gone
        self.stop_file = Path(conf["stop"])
        self._checked = 0.0
        self.dir = Path(conf["dir"])
        self.ops: dict[str, int] = {}
        self.errors = 0
        self.mismatches = 0
        self.notes: list[dict[str, Any]] = []
        self.bytes_written = 0
        self.bytes_verified = 0
        self.extra: dict[str, Any] = {}

    def running(self) -> bool:
        """Until the demo says stop (a file in its work directory, looked at every
        0.1 s) or the bound."""
        now = time.monotonic()
        if now >= self.deadline:
            return False
        if now - self._checked >= 0.1:
            self._checked = now
            if self.stop_file.exists():
                self.deadline = now
                return False
        return True

    def now(self) -> float:
        return time.monotonic() - self.t0

    def count(self, op: str, n: int = 1) -> None:
        self.ops[op] = self.ops.get(op, 0) + n

    def failed(self, call: str, e: OSError) -> None:
        self.errors += 1
        self.notes.append({"t": round(self.now(), 3), "call": call,
                           "errno": errno.errorcode.get(e.errno or 0, str(e.errno)),
                           "error": str(e)})

    def mismatch(self, what: str) -> None:
        self.mismatches += 1
        self.notes.append({"t": round(self.now(), 3), "mismatch": what})

    @contextmanager
    def call(self, name: str) -> Iterator[None]:
        """A failed system call inside is counted and re-raised as Abandon."""
        try:
            yield
        except OSError as e:
            self.failed(name, e)
            raise Abandon(name) from e

    def open(self, path: Path, flags: int) -> int:
        """os.open, counted; a failure is counted and abandons the round (see call)."""
        with self.call("open"):
            fd = os.open(path, flags, 0o644)
        self.count("open")
        return fd

    def close(self, fd: int) -> None:
        """os.close, counted; a failure is counted (in a finally: it abandons nothing)."""
        try:
            os.close(fd)
            self.count("close")
        except OSError as e:
            self.failed("close", e)

    def save(self) -> None:
        out = {"ops": self.ops, "ops_total": sum(self.ops.values()), "errors": self.errors,
               "mismatches": self.mismatches, "notes": self.notes[:50],
               "bytes_written": self.bytes_written, "bytes_verified": self.bytes_verified,
               **self.extra}
        Path(self.conf["out"]).write_text(json.dumps(out))


class Abandon(Exception):
    """This round is given up after a failed system call (already counted)."""


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def tree_sums(root: Path) -> tuple[dict[str, str], int]:
    sums, total = {}, 0
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            sums[str(p.relative_to(root))], size = sha256_file(p)
            total += size
    return sums, total


def worker_writer(w: Worker) -> None:
    """Append records until the deadline, fsync every N; then read all back."""
    size, every = w.conf["record_size"], w.conf["fsync_every"]
    payload_len = size - HEADER.size
    path = w.dir / "records"
    times = array("d")  # monotonic (since t0) and wall clock, per record write
    seq = 0
    rng = random.Random(1)
    times_file = open(w.conf["times"], "wb")  # written in batches
    flushed = time.monotonic()
    try:
        fd = w.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while w.running():
                payload = rng.randbytes(payload_len)
                record = HEADER.pack(MAGIC, seq, time.time(), payload_len,
                                     hashlib.sha256(payload).digest()) + payload
                with w.call(f"write (record {seq})"):
                    n = os.write(fd, record)
                done = time.monotonic()
                w.count("write")
                if n != size:  # a short write on a regular file is an error too
                    w.mismatch(f"short write of record {seq}: {n} of {size} bytes")
                    break
                times.append(done - w.t0)
                times.append(time.time())
                seq += 1
                if done - flushed >= 0.25:  # (kept if this process is killed)
                    times.tofile(times_file)
                    times_file.flush()
                    del times[:]
                    flushed = done
                w.bytes_written += size
                if seq % every == 0:
                    with w.call(f"fsync (after record {seq - 1})"):
                        os.fsync(fd)
                    w.count("fsync")
            with w.call("fsync (last)"):
                os.fsync(fd)
            w.count("fsync")
        finally:
            w.close(fd)
    except Abandon:
        pass  # counted; what was written is still verified below
    times.tofile(times_file)
    times_file.close()
    w.extra.update(records=seq, record_size=size, fsync_every=every)
    # Read every record back through a fresh open.
    verified = 0
    try:
        with w.call("open (verify)"), open(path, "rb", buffering=0) as f:
            w.count("open")
            expect = 0
            while True:
                with w.call(f"read (verify, record {expect})"):
                    block = f.read(size * 256)
                w.count("read")
                if not block:
                    break
                for off in range(0, len(block), size):
                    rec = block[off:off + size]
                    if len(rec) < size:
                        w.mismatch(f"record {expect}: truncated ({len(rec)} bytes)")
                        break
                    magic, got_seq, _wall, plen, digest = HEADER.unpack_from(rec)
                    body = rec[HEADER.size:HEADER.size + plen]
                    if (magic != MAGIC or got_seq != expect or plen != payload_len
                            or hashlib.sha256(body).digest() != digest):
                        w.mismatch(f"record {expect}: bad header or checksum "
                                   f"(magic {magic!r}, sequence {got_seq})")
                    else:
                        verified += 1
                    expect += 1
            if expect != seq:
                w.mismatch(f"{expect} records in the file, {seq} written")
    except Abandon:
        pass
    w.extra["records_verified"] = verified
    w.bytes_verified += verified * size


def held_chunk(i: int) -> bytes:
    return hashlib.sha256(f"held {i}".encode()).digest() * (HELD_CHUNK // 32)


def worker_held(w: Worker) -> None:
    """One descriptor for the whole run: write at growing offsets, read back."""
    path = w.dir / "held"
    rng = random.Random(2)
    chunks = 0
    worst = 0.0
    try:
        fd = w.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            while w.running():
                t = time.monotonic()
                data = held_chunk(chunks)
                with w.call(f"pwrite (offset {chunks * HELD_CHUNK})"):
                    n = os.pwrite(fd, data, chunks * HELD_CHUNK)
                w.count("pwrite")
                if n != len(data):
                    w.mismatch(f"short pwrite at chunk {chunks}")
                    break
                chunks += 1
                w.bytes_written += len(data)
                for j in (chunks - 1, rng.randrange(chunks)):
                    with w.call(f"pread (offset {j * HELD_CHUNK})"):
                        back = os.pread(fd, HELD_CHUNK, j * HELD_CHUNK)
                    w.count("pread")
                    if back != held_chunk(j):
                        w.mismatch(f"chunk {j} read back differs (after {chunks} written)")
                if chunks % 8 == 0:
                    with w.call("fsync"):
                        os.fsync(fd)
                    w.count("fsync")
                    with w.call("fstat"):
                        st = os.fstat(fd)
                    w.count("fstat")
                    if st.st_size != chunks * HELD_CHUNK:
                        w.mismatch(f"fstat size {st.st_size}, expected {chunks * HELD_CHUNK}")
                worst = max(worst, time.monotonic() - t)
                time.sleep(0.05)
            with w.call("fsync (last)"):
                os.fsync(fd)
            w.count("fsync")
            # Verify through the descriptor held all along.
            bad = 0
            for j in range(chunks):
                with w.call(f"pread (verify, offset {j * HELD_CHUNK})"):
                    back = os.pread(fd, HELD_CHUNK, j * HELD_CHUNK)
                w.count("pread")
                if back != held_chunk(j):
                    bad += 1
                    if bad <= 3:
                        w.mismatch(f"chunk {j} differs (held descriptor)")
                else:
                    w.bytes_verified += HELD_CHUNK
        finally:
            w.close(fd)
        # And through a fresh open.
        with w.call("open (verify)"), open(path, "rb") as f:
            w.count("open")
            with w.call("read (verify)"):
                content = f.read()
            w.count("read")
        if len(content) != chunks * HELD_CHUNK:
            w.mismatch(f"fresh open: {len(content)} bytes, expected {chunks * HELD_CHUNK}")
        for j in range(chunks):
            if content[j * HELD_CHUNK:(j + 1) * HELD_CHUNK] == held_chunk(j):
                w.bytes_verified += HELD_CHUNK
            else:
                w.mismatch(f"chunk {j} differs (fresh open)")
                break
    except Abandon:
        pass
    w.extra.update(chunks=chunks, chunk_size=HELD_CHUNK, slowest_round_s=round(worst, 3))


def verify_tree(w: Worker, tree: Path, expected: dict[str, str]) -> None:
    with w.call(f"read tree {tree.name}"):
        got, size = tree_sums(tree)
    w.count("verify", len(got))
    if got != expected:
        bad = sorted(k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k))
        w.mismatch(f"{tree.name}: {len(bad)} files differ, e.g. {bad[:3]}")
    else:
        w.bytes_verified += size


def ready_trees(w: Worker, extract_dir: Path) -> list[Path]:
    with w.call("readdir"):
        names = os.listdir(extract_dir)
    w.count("readdir")
    return sorted((extract_dir / n for n in names if n.startswith("ready")),
                  key=lambda p: int(p.name[5:]))


def worker_extract(w: Worker) -> None:
    """Extract the tarball, verify every file, publish the tree as readyN (rename)."""
    tarball = Path(w.conf["tarball"])
    expected = json.loads(Path(w.conf["sums"]).read_text())
    rounds = 0
    while w.running():
        try:
            if len(ready_trees(w, w.dir)) >= 2:  # the copy workload is behind: wait
                time.sleep(0.1)
                continue
            rounds += 1
            tmp = w.dir / f"tmp{rounds}"
            with w.call(f"mkdir {tmp.name}"):
                tmp.mkdir()
            w.count("mkdir")
            with w.call(f"tar x into {tmp.name}"), tarfile.open(tarball) as tf:
                tf.extractall(tmp, filter="tar")
            w.count("extract", len(expected))
            verify_tree(w, tmp, expected)
            with w.call(f"rename {tmp.name}"):
                os.rename(tmp, w.dir / f"ready{rounds}")
            w.count("rename")
        except Abandon:
            time.sleep(0.2)
    w.extra["rounds"] = rounds


def worker_copy(w: Worker) -> None:
    """mv an extracted tree here, cp -a it, verify, mv the copy, rm -rf the rest."""
    extract_dir = Path(w.conf["extract_dir"])
    expected = json.loads(Path(w.conf["sums"]).read_text())
    rounds = 0
    last: Path | None = None
    while w.running():
        try:
            ready = ready_trees(w, extract_dir)
            if not ready:
                time.sleep(0.1)
                continue
            rounds += 1
            n = ready[0].name[5:]
            work, copy, moved = w.dir / f"work{n}", w.dir / f"copy{n}", w.dir / f"moved{n}"
            with w.call(f"mv {ready[0].name}"):
                os.rename(ready[0], work)
            w.count("mv")
            with w.call(f"cp -a work{n}"):
                shutil.copytree(work, copy, symlinks=True)
            w.count("cp", len(expected))
            verify_tree(w, copy, expected)
            with w.call(f"mv copy{n}"):
                os.rename(copy, moved)
            w.count("mv")
            with w.call(f"rm -rf work{n}"):
                shutil.rmtree(work)
            w.count("rm", len(expected))
            if last is not None:
                with w.call(f"rm -rf {last.name}"):
                    shutil.rmtree(last)
                w.count("rm", len(expected))
            last = moved
        except Abandon:
            time.sleep(0.2)
    w.extra["rounds"] = rounds


def worker_main(name: str, conf_path: str) -> int:
    conf = json.loads(Path(conf_path).read_text())[name]
    w = Worker(conf)
    try:
        {"writer": worker_writer, "held": worker_held, "extract": worker_extract,
         "copy": worker_copy}[name](w)
    except Exception as e:  # a bug or an unexpected error: counted, never hidden
        w.errors += 1
        w.notes.append({"t": round(w.now(), 3), "call": "worker", "errno": "-",
                        "error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        w.save()
    return 0


# ---- the demo ------------------------------------------------------------------------

class Failed(Exception):
    """The demo cannot go on (the message says why)."""


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_SIG: dict[str, Any] = {"critical": 0, "pending": None}


def _on_signal(signum: int, frame: Any) -> None:
    if _SIG["critical"] or _SIG.get("cleaning"):  # let an mlustre command finish first
        _SIG["pending"] = _SIG["pending"] or signum
        return
    raise Interrupted(signum)


@contextmanager
def critical() -> Iterator[None]:
    """Signals are held while an mlustre command runs (each is bounded by a timeout):
    a half-done `up` or `upgrade` could leave a server nobody knows of. A held signal
    takes effect at the next check_signal(), once what was done is recorded."""
    _SIG["critical"] += 1
    try:
        yield
    finally:
        _SIG["critical"] -= 1


def check_signal() -> None:
    if not _SIG["critical"] and _SIG["pending"] and not _SIG.get("cleaning"):
        raise Interrupted(_SIG["pending"])


def mlustre(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [MLUSTRE, *args]
    with critical():
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  start_new_session=True)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return subprocess.CompletedProcess(cmd, -1, out, f"timed out after {timeout} s")


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def make_source(base: Path, source: Path, max_files: int) -> tuple[int, int]:
    """A tarball of (part of) a real source tree, and its files' checksums."""
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.is_symlink()]
    files = files[:max_files]
    sums = {}
    with tarfile.open(base / "source.tar", "w") as tf:
        for p in files:
            tf.add(p, arcname=str(p.relative_to(source)))
            sums[str(p.relative_to(source))] = sha256_file(p)[0]
    (base / "source.sums").write_text(json.dumps(sums))
    return len(files), sum(p.stat().st_size for p in files)


def schedule(duration: float) -> list[float]:
    """When each step of PLAN starts (seconds after the workload started)."""
    first, last = 0.12 * duration, 0.72 * duration
    step = (last - first) / (len(PLAN) - 1)
    return [first + i * step for i in range(len(PLAN))]


def short(name: str) -> str:
    return name.split("-", 1)[-1]


def run_demo(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="mlustre-demo-upgrade-", dir=args.base))
    os.chmod(base, 0o755)
    mnt, data = base / "mnt", base / "data"
    mnt.mkdir()
    result: dict[str, Any] = {
        "duration_s": args.duration, "work_dir": str(base), "fsname": FSNAME,
        "started_wall": time.time(), "servers_before": [], "servers_after": [],
        "failovers": [], "workloads": {}, "trees": {}, "problems": [], "plot": None}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ok = False
    interrupted: Interrupted | None = None
    times = array("d")
    t0 = time.monotonic()
    try:
        log(f"work directory {base} (mount {mnt}, data and logs {data})")
        up = mlustre("up", str(mnt), "--data", str(data), "--fsname", FSNAME, "--osts",
                     str(args.osts), "--release", "1.8", "--failover-pairs", timeout=180)
        if up.returncode != 0:
            raise Failed("mlustre up failed: " + (up.stderr or up.stdout).strip()[-2000:])
        check_signal()
        result["fuse_connection"] = fuse_connection(mnt)
        st = mlustre("status", str(mnt), "--json")
        servers = (last_json(st.stdout) or {}).get("servers", [])
        result["servers_before"] = servers
        log(f"cluster {FSNAME} up, release 1.8, MDT and OSTs in failover pairs:")
        for s in servers:
            print(f"    {s['name']:<14} {s['kind']:<4} {s['nid']:<20} pid {s['pid']:<7} "
                  f"release {s['release']}  {s['state']}")
        nfiles, nbytes = make_source(base, Path(args.source), args.source_files)
        log(f"source tree: {nfiles} files, {human(nbytes)} of {args.source} in a tarball")

        t0 = time.monotonic()
        result["t0_wall"] = time.time()
        conf: dict[str, Any] = {}
        for name in WORKLOADS:
            (mnt / name).mkdir()
            # The workers run until the stop file appears (or, should this process be
            # gone, until a bound).
            conf[name] = {"t0": t0, "deadline": t0 + args.duration + 900,
                          "stop": str(base / "stop"), "dir": str(mnt / name),
                          "out": str(base / f"{name}.json")}
        conf["writer"].update(record_size=args.record_size, fsync_every=args.fsync_every,
                              times=str(base / "writer.times"))
        for name in ("extract", "copy"):
            conf[name].update(tarball=str(base / "source.tar"), sums=str(base / "source.sums"),
                              extract_dir=str(mnt / "extract"))
        (base / "workers.json").write_text(json.dumps(conf))
        with critical():  # every worker started is in procs (to be killed on an abort)
            for name in WORKLOADS:
                with open(base / f"{name}.log", "wb") as logf:
                    procs[name] = subprocess.Popen(
                        [sys.executable, __file__, "--worker", name, "--conf",
                         str(base / "workers.json")],
                        stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        check_signal()
        log(f"workloads running for {args.duration:g} s: {', '.join(WORKLOADS)} "
            f"(pids {', '.join(str(p.pid) for p in procs.values())})")

        nids = {short(s["name"]): s["nid"] for s in servers}
        releases = {short(s["name"]): s["release"] for s in servers}
        for n, ((target, release, partner), at) in enumerate(
                zip(PLAN, schedule(args.duration), strict=True), 1):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            check_early_ends(procs, result)
            start, start_wall = time.monotonic(), time.time()
            res = mlustre("upgrade", str(mnt), target, "--release", release, "--json",
                          *(["--partner"] if partner else []))
            end = time.monotonic()
            info = last_json(res.stdout) if res.returncode == 0 else None
            ev: dict[str, Any] = {
                "n": n, "target": target, "from": releases.get(target), "to": release,
                "partner": partner, "at_s": round(start - t0, 3), "end_s": round(end - t0, 3),
                "at_wall": round(start_wall, 3),
                "ok": res.returncode == 0 and info is not None, "exit_status": res.returncode,
                "nid_before": nids.get(target), "nid_after": None, "stop_s": None,
                "restart_s": None, "total_s": None, "barrier": None, "json": info}
            if info is not None:
                ev["from"] = info.get("from", ev["from"])
                ev["nid_after"] = info.get("nid")
                ev["stop_s"] = info.get("stop_s")
                ev["total_s"] = info.get("total_s")
                if ev["stop_s"] is not None and ev["total_s"] is not None:
                    ev["restart_s"] = round(ev["total_s"] - ev["stop_s"], 4)
                ev["barrier"] = info.get("barrier")
                if info.get("to") != release:
                    ev["ok"] = False
                nids[target] = info.get("nid") or nids.get(target)
                releases[target] = info.get("to", release)
            else:
                ev["message"] = (res.stderr or res.stdout).strip()[-2000:]
            if res.returncode == 0 and res.stderr.strip():  # e.g. "barrier not frozen"
                ev["warnings"] = res.stderr.strip().splitlines()[-5:]
            result["failovers"].append(ev)
            log(f"failover {n} at {start - t0:.1f} s: {target} {ev['from']} -> {release}"
                f"{' on its partner' if partner else ''}: " + (
                    f"{ev['nid_before']} -> {ev['nid_after']}, stop {num(ev['stop_s'])} s, "
                    f"serving again after {num(ev['total_s'])} s, barrier "
                    f"{fmt_barrier(ev['barrier'])}" if ev["ok"]
                    else f"FAILED (exit status {res.returncode}): {ev.get('message')}"))
            for line in ev.get("warnings", []):
                log(f"  upgrade said: {line}")
            check_signal()
            if not ev["ok"]:
                log("an upgrade failed: no further upgrades")
                break
        check_signal()

        # The workloads go on until the end of --duration, and at least a few seconds
        # after the last failover (so the writer's recovery shows).
        last_end = max((ev["end_s"] for ev in result["failovers"]), default=0.0)
        stop_at = t0 + max(args.duration, last_end + max(5.0, 0.1 * args.duration))
        if stop_at > time.monotonic():
            log(f"last failover done; workloads go on for "
                f"{stop_at - time.monotonic():.0f} s more")
            while time.monotonic() < stop_at:
                time.sleep(min(0.5, max(0.0, stop_at - time.monotonic())))
                check_early_ends(procs, result)
        check_early_ends(procs, result)
        (base / "stop").touch()
        result["workload_s"] = round(time.monotonic() - t0, 3)
        log(f"workloads told to stop at {result['workload_s']:.1f} s; they verify what "
            f"they wrote")
        # (After a failed upgrade a server may be away for good: the workloads would
        # wait for it, so they get less time to end.)
        margin = args.verify_timeout if all(ev["ok"] for ev in result["failovers"]) else 60
        wait_until = time.monotonic() + margin
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(0.0, wait_until - time.monotonic()))
            except subprocess.TimeoutExpired:
                result["problems"].append(
                    f"workload {name} (pid {proc.pid}) did not end within {margin:.0f} s "
                    f"of the stop; stuck in {wchan(proc.pid)}: killed")
                stop_worker(proc, result)
            out = base / f"{name}.json"
            if out.exists():
                result["workloads"][name] = json.loads(out.read_text())
            if proc.returncode or not out.exists():  # a traceback is in its log
                tail = (base / f"{name}.log").read_text(errors="replace")[-1500:]
                result["problems"].append(f"workload {name} ended with exit status "
                                          f"{proc.returncode}{'' if out.exists() else ', no report'}"
                                          f": {tail.strip()}")
        idle = {"writer": "records", "held": "chunks", "extract": "rounds", "copy": "rounds"}
        for name, key in idle.items():
            if name in result["workloads"] and not result["workloads"][name].get(key):
                result["problems"].append(f"workload {name} did no work ({key}: 0)")
        if result.get("stuck_workers"):
            raise Failed("workers stuck in the mount: the trees are not checked")
        log("workloads stopped and verified by themselves; checking the trees left on "
            "the mount")
        expected = json.loads((base / "source.sums").read_text())
        for tree in sorted([*(mnt / "extract").glob("ready*"), *(mnt / "copy").glob("moved*")]):
            got, size = tree_sums(tree)
            same = got == expected
            result["trees"][str(tree.relative_to(mnt))] = {"files": len(got), "bytes": size,
                                                           "identical": same}
            if not same:
                result["problems"].append(f"tree {tree.relative_to(mnt)} differs from the "
                                          f"source")
        st = mlustre("status", str(mnt), "--json")
        result["servers_after"] = (last_json(st.stdout) or {}).get("servers", [])
        check_signal()
        got_rel = {short(s["name"]): s["release"] for s in result["servers_after"]}
        if got_rel != FINAL_RELEASES:
            result["problems"].append(f"releases after the upgrades: {got_rel}, expected "
                                      f"{FINAL_RELEASES}")
        ok = True
    except Failed as e:
        result["problems"].append(str(e))
        log(f"error: {e}")
    except Interrupted as e:
        interrupted = e
        result["problems"].append(f"interrupted by {e}")
        print(f"\n{PROG}: interrupted by {e}; cleaning up", file=sys.stderr, flush=True)
    except Exception as e:  # report it, clean up, keep the work directory
        result["problems"].append(f"{type(e).__name__}: {e}")
        log(f"error: {type(e).__name__}: {e}")
    finally:
        _SIG["cleaning"] = True
        with critical():
            for proc in procs.values():  # only the workers this run started
                stop_worker(proc, result)
        if procs and "workload_s" not in result:
            result["workload_s"] = round(time.monotonic() - t0, 3)
    if result.get("stuck_workers"):
        abort_fuse_connection(result)
    if (base / "writer.times").exists():  # (also what a killed writer had written)
        raw = (base / "writer.times").read_bytes()
        times.frombytes(raw[:len(raw) // 16 * 16])
    result["writer_times"] = times
    code = finish(result, args, base, mnt, ok=ok)
    return 128 + interrupted.signum if interrupted else code


def check_early_ends(procs: dict[str, subprocess.Popen[bytes]],
                     result: dict[str, Any]) -> None:
    """A workload that ends before it is told to stop is a problem (said once)."""
    for name, proc in procs.items():
        said = f"workload {name} ended early"
        if proc.poll() is not None and not any(p.startswith(said) for p in result["problems"]):
            result["problems"].append(f"{said} (exit status {proc.returncode})")
            log(result["problems"][-1])


def wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip() or "?"
    except OSError:
        return "?"


def stop_worker(proc: subprocess.Popen[bytes], result: dict[str, Any]) -> None:
    """SIGKILL one worker this run started (its own process group). A worker stuck in a
    call the file system never answers cannot die: it is noted, not waited for."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        result.setdefault("stuck_workers", []).append(proc.pid)
        result["problems"].append(f"worker pid {proc.pid} stuck in {wchan(proc.pid)} after "
                                  f"SIGKILL (a file system call that is never answered)")


def fuse_connection(mnt: Path) -> int | None:
    """The FUSE connection number of the mount (the minor of its device)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mnt):
                return int(fields[2].split(":")[1])
    return None


def abort_fuse_connection(result: dict[str, Any]) -> None:
    """Workers stuck in the mount hold it: abort this mount's FUSE connection (fusectl,
    if mounted) so that their calls fail and they die, and the unmount can go on."""
    conn = result.get("fuse_connection")
    abort = Path(f"/sys/fs/fuse/connections/{conn}/abort")
    if conn is None or not abort.exists():
        result["problems"].append("cannot abort the FUSE connection (fusectl is not mounted "
                                  "on /sys/fs/fuse/connections): stuck workers "
                                  f"{result['stuck_workers']} remain")
        return
    abort.write_text("1")
    result["problems"].append(f"aborted FUSE connection {conn} to free stuck workers "
                              f"{result['stuck_workers']}")
    time.sleep(1)


def stop_cluster(mnt: Path) -> str | None:
    """mlustre down, else fusermount3 -u, then -uz. None if all went well."""
    with critical():
        if not (mnt.parent / "data" / "cluster.json").exists() and not is_mounted(mnt):
            return None
        down = mlustre("down", str(mnt))
        if down.returncode == 0 and not is_mounted(mnt):
            return None
        problem = f"mlustre down: {(down.stderr or down.stdout).strip()[-500:]}"
        for flag in ("-u", "-uz"):
            if is_mounted(mnt):
                subprocess.run(["fusermount3", flag, str(mnt)], capture_output=True,
                               timeout=30, check=False)
        if down.returncode != 0:  # it stops the servers only once the mount is gone
            again = mlustre("down", str(mnt))
            problem += ("; after fusermount3, mlustre down " +
                        ("stopped the servers" if again.returncode == 0 else
                         f"failed again: {(again.stderr or again.stdout).strip()[-300:]}"))
        return problem


def finish(result: dict[str, Any], args: argparse.Namespace, base: Path, mnt: Path, *,
           ok: bool) -> int:
    _SIG["cleaning"] = True
    problem = stop_cluster(mnt)
    if problem:
        result["problems"].append(problem)
    log(f"cluster stopped{' (with problems)' if problem else ''}")
    times = result.pop("writer_times", array("d"))
    analyse(result, times, args)
    clean = ok and not result["summary"]["failed"]
    if clean:
        shutil.rmtree(base, ignore_errors=True)
    else:
        result["kept"] = str(base)
    report(result, times, args)
    if not clean:
        print(f"\nwork directory kept: {base} (server and client logs in {base / 'data'}, "
              f"workload logs and reports in {base})")
    print("OK" if clean else "FAIL", flush=True)
    return 0 if clean else 1


# ---- analysis and report ---------------------------------------------------------------

def fmt_barrier(b: Any) -> str:
    if not isinstance(b, dict):
        return "-"
    return (f"freeze {num(b.get('freeze_s'), '{:.3f}')} s, {b.get('clients', '-')} clients, "
            f"{human(b.get('flushed_bytes') or 0)} flushed, {b.get('evicted', '-')} evicted")


def gaps_in(mono: list[float], lo: float, hi: float) -> tuple[float, float]:
    """Longest gap between consecutive record writes overlapping [lo, hi], and where
    it ended."""
    best, at = 0.0, lo
    for a, b in zip(mono, mono[1:], strict=False):
        if b >= lo and a <= hi and b - a > best:
            best, at = b - a, b
    return best, at


def throughput(mono: list[float], record_size: int, bin_s: float, until: float) -> list[float]:
    bins = [0.0] * max(1, math.floor(until / bin_s + 1e-9))  # whole bins only
    for t in mono:
        i = int(t / bin_s)
        if 0 <= i < len(bins):
            bins[i] += record_size
    return [b / bin_s / 1e6 for b in bins]


def analyse(result: dict[str, Any], times: array, args: argparse.Namespace) -> None:
    mono = list(times[0::2])
    wl = result["workloads"]
    rsize = wl.get("writer", {}).get("record_size", args.record_size)
    evs = result["failovers"]
    for i, ev in enumerate(evs):
        lo = ev["at_s"] - 0.5
        hi = ev["end_s"] + 3.0
        if i + 1 < len(evs):
            hi = max(ev["end_s"] + 0.5, min(hi, evs[i + 1]["at_s"] - 0.5))
        ev["window_s"] = [round(lo, 3), round(hi, 3)]
        stall, _ = gaps_in(mono, lo, hi) if mono else (None, None)
        ev["writer_stall_s"] = None if stall is None else round(stall, 4)
    worst, worst_at = 0.0, 0.0
    quiet = 0.0
    for a, b in zip(mono, mono[1:], strict=False):
        if b - a > worst:
            worst, worst_at = b - a, b
        if not any(b >= ev["window_s"][0] and a <= ev["window_s"][1] for ev in evs):
            quiet = max(quiet, b - a)
    end = result.get("workload_s") or max(result["duration_s"], mono[-1] if mono else 0.0)
    result["throughput"] = {
        "bin_s": args.bin, "mb_per_s": [round(x, 3) for x in
                                        throughput(mono, rsize, args.bin, end)],
        "per_second_mb_per_s": [round(x, 3) for x in throughput(mono, rsize, 1.0, end)]}
    errors = [(name, n) for name, w in wl.items() for n in w.get("notes", [])]
    for _name, note in errors:
        note["failover"] = which_failover(evs, note["t"])
    syscall_errors = sum(w.get("errors", 0) for w in wl.values())
    mismatches = sum(w.get("mismatches", 0) for w in wl.values())
    failed_fo = [ev for ev in evs if not ev["ok"]]
    missing = [w for w in WORKLOADS if w not in wl]
    result["summary"] = {
        "failovers": len(evs), "failed_failovers": len(failed_fo),
        "releases": [f"{ev['target']} {ev['from']}->{ev['to']}" for ev in evs],
        "syscall_errors": syscall_errors, "mismatches": mismatches,
        "errors": syscall_errors + mismatches + len(failed_fo) + len(result["problems"])
        + len(missing),
        "ops": {name: w.get("ops_total", 0) for name, w in wl.items()},
        "bytes_written": sum(w.get("bytes_written", 0) for w in wl.values()),
        "bytes_verified": sum(w.get("bytes_verified", 0) for w in wl.values())
        + sum(t["bytes"] for t in result["trees"].values() if t["identical"]),
        "records": wl.get("writer", {}).get("records", 0),
        "longest_stall_s": round(worst, 4), "longest_stall_at_s": round(worst_at, 3),
        "longest_stall_failover": which_failover(evs, worst_at),
        "longest_stall_outside_failovers_s": round(quiet, 4),
    }
    result["summary"]["failed"] = bool(
        result["summary"]["errors"] or len(evs) != len(PLAN)
        or not result["summary"]["bytes_verified"])


def which_failover(evs: list[dict[str, Any]], t: float) -> int | None:
    """The failover whose window holds t, else the last one before t."""
    for ev in evs:
        if ev.get("window_s") and ev["window_s"][0] <= t <= ev["window_s"][1]:
            return ev["n"]
    before = [ev["n"] for ev in evs if ev["at_s"] <= t]
    return before[-1] if before else None


SPARK = " ▁▂▃▄▅▆▇█"


def host(nid: str | None) -> str:
    return (nid or "?").rsplit(":", 1)[0]


def num(v: Any, form: str = "{:.2f}") -> str:
    return "-" if v is None else form.format(v)


def report(result: dict[str, Any], times: array, args: argparse.Namespace) -> None:
    s = result["summary"]
    evs = result["failovers"]
    wl = result["workloads"]
    print("\n== timeline (seconds since the workload started)")
    head = (f"{'#':>2} {'at':>6}  {'target':<8} {'release':<10} {'node':<22} "
            f"{'barrier':>7} {'flushed':>9} {'clients':>7} {'evicted':>7} "
            f"{'stop':>6} {'restart':>7} {'stall':>6}")
    print(head)
    for ev in evs:
        b = ev["barrier"] if isinstance(ev["barrier"], dict) else {}
        node = f"{host(ev['nid_before'])} -> {host(ev['nid_after'])}" if ev["ok"] else "FAILED"
        print(f"{ev['n']:>2} {ev['at_s']:>6.1f}  {ev['target']:<8} "
              f"{ev['from']} -> {ev['to']:<3} {node:<22} "
              f"{num(b.get('freeze_s')):>7} "
              f"{(human(b['flushed_bytes']) if b.get('flushed_bytes') is not None else '-'):>9} "
              f"{num(b.get('clients'), '{}'):>7} {num(b.get('evicted'), '{}'):>7} "
              f"{num(ev['stop_s']):>6} {num(ev['restart_s']):>7} "
              f"{num(ev.get('writer_stall_s')):>6}")
        if not ev["ok"]:
            print(f"     {ev.get('message') or ev.get('json')}")
    print("   (barrier: freeze time in s; stop/restart: seconds the server took to stop "
          "and to serve again;\n    stall: the writer's longest gap between two record "
          "writes around the failover)")
    per_s = result["throughput"]["per_second_mb_per_s"]
    if per_s:
        top = max(per_s) or 1.0
        print(f"\n== writer throughput, MB/s per second (peak {top:.1f}; failovers "
              f"numbered below the second they began in)")
        line = "".join(SPARK[max(1, min(8, round(v / top * 8)))] if v > 0 else "_"
                       for v in per_s)
        marks = [" "] * len(per_s)
        for ev in evs:
            i = int(ev["at_s"])
            if 0 <= i < len(marks):
                marks[i] = str(ev["n"])
        print(f"  |{line}|")
        print(f"   {''.join(marks).rstrip()}")
        for row in range(0, len(per_s), 10):
            vals = " ".join(f"{v:5.1f}" for v in per_s[row:row + 10])
            print(f"  {row:>3}-{min(row + 10, len(per_s)) - 1:<3}s {vals}")
    print("\n== summary")
    print(f"{'workload':<8} {'ops':>8} {'failed calls':>12} {'mismatches':>10} "
          f"{'written':>10} {'verified':>10}  notes")
    for name in WORKLOADS:
        w = wl.get(name)
        if w is None:
            print(f"{name:<8} {'-':>8}  (no report)")
            continue
        note = {"writer": f"{w.get('records', 0)} records of {w.get('record_size')} B, "
                          f"{w.get('records_verified', 0)} verified",
                "held": f"{w.get('chunks', 0)} chunks on one descriptor, slowest round "
                        f"{w.get('slowest_round_s', 0):.2f} s",
                "extract": f"{w.get('rounds', 0)} extractions",
                "copy": f"{w.get('rounds', 0)} cp/mv/rm rounds"}[name]
        print(f"{name:<8} {w.get('ops_total', 0):>8} {w.get('errors', 0):>12} "
              f"{w.get('mismatches', 0):>10} {human(w.get('bytes_written', 0)):>10} "
              f"{human(w.get('bytes_verified', 0)):>10}  {note}")
        for n in w.get("notes", [])[:5]:
            fo = n.get("failover")
            where = (f" (failover {fo}: {evs[fo - 1]['target']} {evs[fo - 1]['from']} -> "
                     f"{evs[fo - 1]['to']})") if fo else ""
            what = (f"{n['call']}: {n['errno']} {n['error']}" if "call" in n
                    else f"mismatch: {n['mismatch']}")
            print(f"    at {n['t']:.2f} s{where}: {what}")
    for tree, t in result["trees"].items():
        print(f"tree {tree}: {t['files']} files, {human(t['bytes'])}, "
              f"{'identical to the source' if t['identical'] else 'DIFFERS'}")
    after = {short(x["name"]): f"{x['release']} on {x['nid']}" for x in result["servers_after"]}
    if after:
        print("servers now: " + ", ".join(f"{k} {v}" for k, v in after.items()))
    fo = s["longest_stall_failover"]
    print(f"failovers: {s['failovers']} ({', '.join(s['releases'])}), failed: "
          f"{s['failed_failovers']}")
    print(f"system calls failed: {s['syscall_errors']}; verification mismatches: "
          f"{s['mismatches']}; bytes verified: {human(s['bytes_verified'])}")
    print(f"longest writer stall: {s['longest_stall_s']:.2f} s (ending at "
          f"{s['longest_stall_at_s']:.1f} s{f', failover {fo}' if fo else ''}); away "
          f"from failovers: {s['longest_stall_outside_failovers_s']:.2f} s")
    for p in result["problems"]:
        print(f"problem: {p}")
    if args.plot:
        try:
            Path(args.plot).write_text(svg(result), encoding="utf-8")
            result["plot"] = str(Path(args.plot).resolve())
            print(f"plot: {result['plot']}")
        except OSError as e:
            print(f"plot: cannot write {args.plot}: {e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"report: {Path(args.json).resolve()}")


def svg(result: dict[str, Any]) -> str:
    """Writer throughput over time, a marker and a label per failover."""
    tp = result["throughput"]
    vals, bin_s = tp["mb_per_s"], tp["bin_s"]
    evs = result["failovers"]
    width, height = 980, 440
    left, right, top, bottom = 64, 24, 96, 52
    pw, ph = width - left - right, height - top - bottom
    tmax = max(len(vals) * bin_s, 1.0)
    peak = max(vals or [0.0]) or 1.0
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 1e9) if peak / s <= 6)
    ymax = step * math.ceil(peak / step)
    tstep = next(s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300, 1e9) if tmax / s <= 12)

    def x(t: float) -> float:
        return left + t / tmax * pw

    def y(v: float) -> float:
        return top + ph - v / ymax * ph

    s = result["summary"]
    title = (f"mlustre rolling upgrade 1.8 → 2.0 under load: writer throughput "
             f"(MB/s per {bin_s:g} s)")
    sub = (f"{s['failovers']} failovers, {s['syscall_errors']} failed system calls, "
           f"{s['mismatches']} mismatches, {human(s['bytes_verified'])} verified, "
           f"longest stall {s['longest_stall_s']:.2f} s")
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text x="{left}" y="40" fill="#444">{escape(sub)}</text>']
    for i in range(int(ymax / step) + 1):
        v = i * step
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    t = 0.0
    while t <= tmax + 1e-9:
        out.append(f'<line x1="{x(t):.1f}" y1="{top + ph}" x2="{x(t):.1f}" '
                   f'y2="{top + ph + 5}" stroke="#333"/>')
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 18}" text-anchor="middle">'
                   f'{t:g}</text>')
        t += tstep
    out.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">'
               f'seconds since the workload started (dashed: an upgrade begins; shaded: '
               f'until the server serves again)</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2})">MB/s</text>')
    pts = [f"{x(0):.1f},{y(0):.1f}"]
    for i, v in enumerate(vals):
        pts += [f"{x(i * bin_s):.1f},{y(v):.1f}", f"{x((i + 1) * bin_s):.1f},{y(v):.1f}"]
    pts.append(f"{x(len(vals) * bin_s):.1f},{y(0):.1f}")
    out.append(f'<polygon points="{" ".join(pts)}" fill="#9cf" stroke="#2a6ebb" '
               f'stroke-width="1.2"/>')
    for ev in evs:  # the time each upgrade command ran, shaded
        out.append(f'<rect x="{x(ev["at_s"]):.1f}" y="{top}" '
                   f'width="{max(x(ev["end_s"]) - x(ev["at_s"]), 1):.1f}" height="{ph}" '
                   f'fill="{"#fbd" if ev["ok"] else "#f66"}" opacity="0.5"/>')
    for ev in evs:
        xe = x(ev["at_s"])
        row = (ev["n"] - 1) % 2
        label = f"{ev['n']}: {ev['target']} {ev['from']}→{ev['to']}"
        stall = ev.get("writer_stall_s")
        detail = ("FAILED" if not ev["ok"] else
                  f"stall {stall:.2f} s" if stall is not None else "")
        ly = top - 34 + row * 18
        out.append(f'<line x1="{xe:.1f}" y1="{ly + 4}" x2="{xe:.1f}" y2="{top + ph}" '
                   f'stroke="#c0392b" stroke-width="1.5" stroke-dasharray="4 3"/>')
        out.append(f'<text class="event" x="{xe + 3:.1f}" y="{ly}" fill="#c0392b">'
                   f'{escape(label)}<tspan dx="5" fill="#666">{escape(detail)}</tspan></text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               f'stroke="#333"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---- arguments -------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def main() -> int:
    p = Parser(
        prog=PROG,
        description="Start a local mlustre cluster of release 1.8 (MDT and OSTs in failover "
                    "pairs), run a mixed workload on it (a checksummed record writer, a file "
                    "held open, tar extraction, cp/mv/rm), upgrade every server to 2.0 one by "
                    "one by controlled failover (MDT0000, OST0000, OST0001 onto their "
                    "partners, then the MGS) and downgrade OST0001 back to 1.8, verify every "
                    "byte, stop the cluster and print a timeline, the writer's throughput "
                    "and a summary. Exit status 1 on any failed system call, mismatch or "
                    "failed upgrade.")
    p.add_argument("--duration", type=float, default=50.0, metavar="S",
                   help="seconds the workload runs; the upgrades are spread over its first "
                        "three quarters (default 50: about a minute in all; at least 10)")
    p.add_argument("--plot", default="demo-upgrade.svg", metavar="PATH",
                   help="SVG plot of the writer's throughput with the failovers "
                        "(default: demo-upgrade.svg in the current directory; '' for none)")
    p.add_argument("--json", metavar="PATH", help="also write a machine-readable report")
    p.add_argument("--source", default="/usr/include", metavar="DIR",
                   help="source tree for the tarball the extract workload uses "
                        "(default /usr/include; e.g. /usr/lib/python3.11)")
    p.add_argument("--source-files", type=int, default=400, metavar="N",
                   help="at most this many of its files (default 400)")
    p.add_argument("--record-size", type=int, default=4096, metavar="BYTES",
                   help="bytes per record of the writer (default 4096)")
    p.add_argument("--fsync-every", type=int, default=64, metavar="N",
                   help="the writer fsyncs after every N records (default 64)")
    p.add_argument("--osts", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--bin", type=float, default=0.5, metavar="S",
                   help="seconds per throughput bin in the plot and the JSON report "
                        "(default 0.5; the printed table is per second)")
    p.add_argument("--verify-timeout", type=float, default=300.0, metavar="S",
                   help="seconds the workloads may take after the end to verify "
                        "(default 300)")
    p.add_argument("--base", metavar="DIR", help="where to make the work directory (default $TMPDIR or /tmp)")
    p.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    p.add_argument("--conf", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker, args.conf)
    checks: list[tuple[bool, str]] = [
        (args.duration >= 10 and math.isfinite(args.duration),
         "--duration must be at least 10 seconds"),
        (args.duration <= 24 * 3600, "--duration must be at most a day"),
        (args.source_files >= 1, "--source-files must be at least 1"),
        (HEADER.size < args.record_size <= 1 << 20,
         f"--record-size must be between {HEADER.size + 1} and 1048576"),
        (args.fsync_every >= 1, "--fsync-every must be at least 1"),
        (0.05 <= args.bin <= 10, "--bin must be between 0.05 and 10 seconds"),
        (args.verify_timeout > 0, "--verify-timeout must be positive"),
        (args.osts == 2, "--osts: the upgrade plan is for 2 OSTs"),
        (Path(args.source).is_dir(), f"--source {args.source} is not a directory"),
        (args.base is None or Path(args.base).is_dir(),
         f"--base {args.base} is not a directory"),
    ]
    for good, message in checks:
        if not good:
            p.error(message)
    if not any(f.is_file() for f in Path(args.source).rglob("*")):
        p.error(f"--source {args.source} holds no files")
    for opt in ("plot", "json"):
        path = getattr(args, opt)
        if path and not Path(path).resolve().parent.is_dir():
            p.error(f"--{opt} {path}: no directory {Path(path).resolve().parent}")
    if not Path(MLUSTRE).exists():
        print(f"{PROG}: error: {MLUSTRE} is missing (run scripts/bootstrap)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
