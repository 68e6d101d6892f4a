"""Read-ahead of the client daemon (fuse_client/readahead.py) on a real mount: a large
file read sequentially comes back intact, and pages read ahead by one client are
dropped when another client writes over them (they were cached under a PR lock, which
the write calls back), so the reader sees the new data at its very next read."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mnthelpers import cli

MiB = 1 << 20
READ = 128 << 10  # what the kernel sends per read request


@pytest.fixture
def ab(cluster, workdir, client2) -> tuple[Path, Path]:
    """The test's directory through client A (the cluster's mount) and client B."""
    cluster.mount_client(client2).check()
    return workdir, client2 / workdir.relative_to(cluster.mnt)


def make_file(a_dir: Path, layout: str, size: int) -> tuple[str, bytes]:
    d = a_dir / layout
    d.mkdir()
    if layout == "striped":
        cli("lfs", "setstripe", "-c", "2", "-S", "65536", d).check()
    data = os.urandom(size)
    (d / "big").write_bytes(data)
    return f"{layout}/big", data


def read_seq(fd: int, start: int, end: int) -> bytes:
    out = bytearray()
    pos = start
    while pos < end:
        got = os.pread(fd, min(READ, end - pos), pos)
        assert got, f"short read at {pos}"
        out += got
        pos += len(got)
    return bytes(out)


@pytest.mark.parametrize("layout", ["plain", "striped"])
def test_large_file_read_sequentially_on_another_client(ab, layout):
    a, b = ab
    name, data = make_file(a, layout, 40 * MiB + 12345)
    fd = os.open(b / name, os.O_RDONLY)
    try:
        assert read_seq(fd, 0, len(data)) == data
        assert os.pread(fd, READ, len(data)) == b""
    finally:
        os.close(fd)


@pytest.mark.parametrize("layout", ["plain", "striped"])
def test_write_by_another_client_drops_pages_read_ahead(ab, layout):
    a, b = ab
    name, data = make_file(a, layout, 24 * MiB)
    fd = os.open(b / name, os.O_RDONLY)
    try:
        head = read_seq(fd, 0, 3 * MiB)  # a stream: B reads chunks ahead of it
        assert head == data[:3 * MiB]
        time.sleep(0.5)  # let the read-ahead land in B's cache (stricter, not looser)
        new = os.urandom(MiB + 4096)
        at = 7 * MiB + 100  # within the chunks read ahead, across a chunk boundary
        with open(a / name, "r+b") as f:
            f.seek(at)
            f.write(new)
        expect = data[:at] + new + data[at + len(new):]
        assert read_seq(fd, 3 * MiB, len(data)) == expect[3 * MiB:]
    finally:
        os.close(fd)
