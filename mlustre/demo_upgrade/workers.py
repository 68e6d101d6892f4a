"""demo_upgrade/workers.py - the workloads, each a child process
(`python -m mlustre.demo_upgrade --worker NAME --conf F`): a checksummed record writer,
a file held open, tar extraction, cp/mv/rm. Each counts operations, failed system
calls and mismatches, and verifies what it wrote once told to stop.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import tarfile
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import HEADER, HELD_CHUNK, MAGIC


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
