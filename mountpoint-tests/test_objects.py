"""OST objects follow their files: striped as the layout says, destroyed once the
last link and the last open are gone (and the removal is committed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def layout(path: Path) -> dict[str, str]:
    text = os.getxattr(path, "lustre.lov").decode()
    return dict(item.split("=", 1) for item in text.split())


def object_files(cluster, objects: str) -> list[Path]:
    """The files on the OSTs' storage that back a layout's objects ("ost:oid,...")."""
    paths = []
    for item in objects.split(","):
        ost, oid = (int(x) for x in item.split(":"))
        paths.append(cluster.data / f"mlustre-OST{ost:04X}" / "O" / f"{oid & 0xFF:02x}"
                     / f"{oid:x}")
    return paths


def wait_gone(paths: list[Path], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"objects still there: {paths}"
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_objects_striped_and_destroyed_after_unlink(cluster, workdir):
    os.setxattr(workdir, "lustre.lov", b"stripe_count=2 stripe_size=65536")
    f = workdir / "f"
    with open(f, "wb") as out:
        out.write(os.urandom(300_000))
        out.flush()
        os.fsync(out.fileno())  # (close alone leaves the data in the client's cache)
    lov = layout(f)
    assert lov["stripe_count"] == "2" and lov["stripe_size"] == "65536"
    files = object_files(cluster, lov["objects"])
    assert len({p.parent.parent.parent for p in files}) == 2, "not on two OSTs"
    sizes = sorted(p.stat().st_size for p in files)
    assert sum(sizes) == 300_000 and sizes[0] > 0, sizes
    f.unlink()
    wait_gone(files)


@pytest.mark.timeout(60)
def test_open_unlinked_objects_live_until_last_close(cluster, workdir):
    f = workdir / "f"
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"x" * 200_000)
        os.fsync(fd)
        files = object_files(cluster, layout(f)["objects"])
        f.unlink()
        assert not f.exists()
        time.sleep(2.5)  # more than a commit interval: nothing may go while it is open
        assert all(p.exists() for p in files)
        assert os.pread(fd, 10, 199_990) == b"x" * 10
    finally:
        os.close(fd)
    wait_gone(files)


@pytest.mark.timeout(60)
def test_replaced_file_objects_destroyed(cluster, workdir):
    (workdir / "a").write_bytes(b"a" * 100_000)
    (workdir / "b").write_bytes(b"b" * 100_000)
    files = object_files(cluster, layout(workdir / "b")["objects"])
    os.rename(workdir / "a", workdir / "b")
    assert (workdir / "b").read_bytes() == b"a" * 100_000
    wait_gone(files)
