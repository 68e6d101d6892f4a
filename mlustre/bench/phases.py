"""bench/phases.py - the timed phases of the I/O benchmark (write, read, create,
stat, unlink, reread); see mlustre/bench/io.py for what each measures.
"""

from __future__ import annotations

import hashlib
import os
import stat
import statistics
import time
from pathlib import Path

from .common import BLOCK, MIB, BenchError


def drop_caches() -> None:
    """Drop the kernel page/dentry/inode caches of the whole machine (--drop-caches)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise BenchError(f"cannot drop caches: {exc}") from exc


def phase_write(d: Path, data: bytes) -> dict:
    path = d / "seqfile"
    n = len(data)
    mv = memoryview(data)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        off = 0
        while off < n:
            w = os.write(fd, mv[off:off + BLOCK])
            if w <= 0:
                raise BenchError(f"write returned {w} at offset {off}")
            off += w
        os.fsync(fd)
    finally:
        os.close(fd)
    secs = time.perf_counter() - t0
    size = os.stat(path).st_size
    if size != n:
        raise BenchError(f"after write: st_size {size} != {n}")
    return {"bytes": n, "seconds": secs, "MB_s": n / secs / 1e6}


def phase_read(d: Path, buf: bytearray, data: bytes, expect_sha: str) -> dict:
    path = d / "seqfile"
    n = len(buf)
    t0 = time.perf_counter()
    off = read_into(path, memoryview(buf))
    secs = time.perf_counter() - t0
    if off != n:
        raise BenchError(f"short read: {off} of {n} bytes")
    size = os.stat(path).st_size
    if size != n:
        raise BenchError(f"st_size {size} != {n} written")
    sha = hashlib.sha256(buf).hexdigest()
    if sha != expect_sha:
        bad = [i // BLOCK for i in range(0, n, BLOCK) if buf[i:i + BLOCK] != data[i:i + BLOCK]]
        raise BenchError(f"data read back differs: sha256 {sha} != written {expect_sha}; "
                         f"{len(bad)} bad 1 MiB blocks, first ones {bad[:8]}")
    return {"bytes": n, "seconds": secs, "MB_s": n / secs / 1e6, "sha256_ok": True}


def file_names(d: Path, count: int) -> list[str]:
    return [str(d / "files" / f"f{i:06d}") for i in range(count)]


def phase_create(d: Path, count: int) -> dict:
    os.mkdir(d / "files")
    names = file_names(d, count)
    flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, flags, 0o644))
    secs = time.perf_counter() - t0
    return {"ops": count, "seconds": secs, "ops_s": count / secs}


def phase_stat(d: Path, count: int) -> dict:
    names = file_names(d, count)
    t0 = time.perf_counter()
    sts = [os.stat(p) for p in names]
    secs = time.perf_counter() - t0
    bad = [(p, st.st_mode, st.st_size) for p, st in zip(names, sts, strict=True)
           if not stat.S_ISREG(st.st_mode) or st.st_size != 0]
    if bad:
        raise BenchError(f"{len(bad)} files with wrong type/size, first: {bad[0]}")
    inos = {st.st_ino for st in sts}
    if len(inos) != count:
        raise BenchError(f"only {len(inos)} distinct st_ino for {count} files")
    return {"ops": count, "seconds": secs, "ops_s": count / secs}


def phase_unlink(d: Path, count: int) -> dict:
    names = file_names(d, count)
    t0 = time.perf_counter()
    for p in names:
        os.unlink(p)
    secs = time.perf_counter() - t0
    left = os.listdir(d / "files")
    if left:
        raise BenchError(f"{len(left)} entries left after unlink, e.g. {left[:3]}")
    os.rmdir(d / "files")
    return {"ops": count, "seconds": secs, "ops_s": count / secs}


def read_into(path: Path, mv: memoryview) -> int:
    """Read *path* from a fresh open() into *mv* in 1 MiB reads; returns the bytes read."""
    n = len(mv)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        off = 0
        while off < n:
            r = os.readv(fd, [mv[off:off + BLOCK]])
            if r == 0:
                break
            off += r
    finally:
        os.close(fd)
    return off


def phase_reread(d: Path, buf: bytearray, data: bytes, mb: int, passes: int) -> dict:
    """Write *mb* MiB, close, read once (untimed), then time *passes* reads (new open each)."""
    path = d / "rereadfile"
    n = mb * MIB
    src = memoryview(data)[:n]
    mv = memoryview(buf)[:n]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        off = 0
        while off < n:
            off += os.write(fd, src[off:off + BLOCK])
    finally:
        os.close(fd)

    def check(what: str, got: int) -> None:
        if got != n:
            raise BenchError(f"{what}: short read, {got} of {n} bytes")
        # bytes == bytes is a memcmp; memoryview == memoryview compares item by item.
        bad = [i // BLOCK for i in range(0, n, BLOCK)
               if bytes(mv[i:i + BLOCK]) != bytes(src[i:i + BLOCK])]
        if bad:
            raise BenchError(f"{what}: data read back differs from the data written in "
                             f"{len(bad)} 1 MiB blocks, first ones {bad[:8]}")

    t0 = time.perf_counter()
    got = read_into(path, mv)
    warm_secs = time.perf_counter() - t0
    check("warming read", got)
    secs = []
    for k in range(passes):
        mv[::4096] = bytes(len(range(0, n, 4096)))  # a stale buffer cannot pass the check
        t0 = time.perf_counter()
        got = read_into(path, mv)
        secs.append(time.perf_counter() - t0)
        check(f"pass {k + 1}", got)
    os.unlink(path)
    med = statistics.median(secs)
    return {"bytes": n, "seconds": med, "MB_s": n / med / 1e6, "passes": passes,
            "pass_MB_s": [round(n / x / 1e6, 1) for x in secs],
            "best_MB_s": n / min(secs) / 1e6, "warming_read_MB_s": n / warm_secs / 1e6,
            "data_ok": True}
