"""The metadata fast path on real mounts: what a client may answer without a round trip,
and that it stays right while other clients change things.

* Size on the MDT: a file nobody has open for write has its size on the MDT; a client
  holding an MDT lock with the SOM bit stats it without an OST glimpse (the file's
  only writer too, for the file it writes). Another client's open for write takes that
  lock back, so a stat never shows a size older than a write that completed.

Mount A is the cluster's own mount, B a second client process. Counters are read with
`mlustre lctl get_param llite.FSNAME-ID.stats` with `lfs getname MNT`'s name (that
client's own).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from mnthelpers import as_user, cli, fsname_of, wait_until

TIMEOUT = 120


def client_instance(mnt: Path) -> str:
    """FSNAME-ID of the client mounted at mnt (`lfs getname`): `lctl -m MNT` shows every
    client of that filesystem on this machine, the names tell them apart."""
    res = cli("lfs", "getname", mnt)
    res.check()
    name, point = res.stdout.split()
    assert point == str(mnt.resolve()), res.stdout
    return name


def llite_counter(mnt: Path, name: str) -> int:
    """One of the llite stats counters of the client mounted at mnt."""
    res = cli("lctl", "-m", mnt, "get_param", f"llite.{client_instance(mnt)}.stats")
    res.check()
    m = re.search(rf"^{re.escape(name)}\s+(\d+) samples", res.stdout, re.MULTILINE)
    assert m, f"no counter {name} in\n{res.stdout}"
    return int(m.group(1))


def glimpses(mnt: Path) -> int:
    return llite_counter(mnt, "glimpse_rpcs")


@pytest.mark.timeout(TIMEOUT)
def test_stat_of_a_closed_file_needs_no_glimpse(cluster, ab, mnt_b):
    a, b = ab
    (a / "f").write_bytes(b"x" * 3000)
    before = glimpses(mnt_b)
    st = os.stat(b / "f")
    assert st.st_size == 3000
    assert glimpses(mnt_b) == before, "B glimpsed the OSTs for a file nobody writes"
    # A (its writer, now closed) has it too
    before_a = glimpses(cluster.mnt)
    assert os.stat(a / "f").st_size == 3000
    assert glimpses(cluster.mnt) == before_a


@pytest.mark.timeout(TIMEOUT)
def test_the_only_writer_needs_no_glimpse_for_its_new_file(cluster, ab):
    a, _ = ab
    before = glimpses(cluster.mnt)
    fd = os.open(a / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"y" * 5000)
        assert os.stat(a / "new").st_size == 5000
    finally:
        os.close(fd)
    assert os.stat(a / "new").st_size == 5000
    assert glimpses(cluster.mnt) == before


@pytest.mark.timeout(TIMEOUT)
def test_a_writer_on_another_client_takes_the_size_back(cluster, ab, mnt_b):
    """B has the size from the MDT; A opens the file for write and writes without
    closing: B's next stat shows each of A's writes (B must ask: a glimpse), and after
    A's close B has the size from the MDT again."""
    a, b = ab
    (a / "g").write_bytes(b"z" * 100)
    assert os.stat(b / "g").st_size == 100
    fd = os.open(a / "g", os.O_WRONLY | os.O_APPEND)
    try:
        size = 100
        for n in (1, 4096, 70_000):
            assert os.write(fd, b"w" * n) == n
            size += n
            assert os.stat(b / "g").st_size == size, "B's stat while A writes"
    finally:
        os.close(fd)
    assert os.stat(b / "g").st_size == size, "B's stat after A's close"

    def from_the_mdt() -> bool:
        before = glimpses(mnt_b)
        assert os.stat(b / "g").st_size == size
        return glimpses(mnt_b) == before

    # (A's release - its size report and MDT close - goes in the background: once it
    # is in, B takes the size from the MDT again.)
    assert wait_until(from_the_mdt, 20), "the size is back on the MDT after A's close"
    with open(b / "g", "rb") as f:
        assert len(f.read()) == size


@pytest.mark.timeout(TIMEOUT)
def test_truncate_and_o_trunc_on_another_client_are_seen(ab):
    a, b = ab
    (a / "t").write_bytes(b"q" * 10_000)
    assert os.stat(b / "t").st_size == 10_000
    os.truncate(a / "t", 123)
    assert os.stat(b / "t").st_size == 123
    with open(a / "t", "wb") as f:  # O_TRUNC, then a write
        f.write(b"r" * 7)
    assert os.stat(b / "t").st_size == 7
    assert (b / "t").read_bytes() == b"r" * 7


# Open cache: a read-only open's MDT handle is kept at close while A holds the file's
# lock (open_cache.py); opening again costs no request, and any change of what that
# open checked (by another client) calls the lock back first.

def mdc_reints(mnt: Path) -> int:
    cid = client_instance(mnt).rsplit("-", 1)[1]
    res = cli("lctl", "-m", mnt, "get_param", f"mdc.*-mdc-{cid}.stats")
    res.check()
    m = re.search(r"^req\.MDS_REINT\s+(\d+) samples", res.stdout, re.MULTILINE)
    return int(m.group(1)) if m else 0


def mdc_requests(mnt: Path, opc: str) -> int:
    cid = client_instance(mnt).rsplit("-", 1)[1]
    res = cli("lctl", "-m", mnt, "get_param", f"mdc.*-mdc-{cid}.stats")
    res.check()
    m = re.search(rf"^req\.{opc}\s+(\d+) samples", res.stdout, re.MULTILINE)
    return int(m.group(1)) if m else 0


@pytest.mark.timeout(TIMEOUT)
def test_listing_a_directory_asks_nothing_for_dot_and_dotdot(cluster, ab):
    """readdir's . and .. come from what the client holds (the directory, the name of
    it in its parent): a listing costs its one page (none more for the kernel's call
    after the last entry), no GETATTR of . or lookup of ..."""
    a, _ = ab
    (a / "d").mkdir()
    (a / "d" / "f").write_bytes(b"")
    before = {opc: mdc_requests(cluster.mnt, opc)
              for opc in ("MDS_GETATTR", "MDS_GETATTR_NAME", "MDS_READPAGE")}
    for _ in range(3):
        os.stat(a / "d")  # (the name, under its lock)
        names = subprocess.run(["ls", "-a", str(a / "d")], capture_output=True, text=True,
                               check=True, timeout=30).stdout.split()
        assert names == [".", "..", "f"]
    after = {opc: mdc_requests(cluster.mnt, opc) for opc in before}
    assert after == {**before, "MDS_READPAGE": before["MDS_READPAGE"] + 3}


def read_as(uid: int, path: Path) -> object:
    def read() -> object:
        with open(path, "rb") as f:
            return len(f.read())
    return as_user(uid, read)


@pytest.mark.timeout(TIMEOUT)
def test_opening_a_file_again_needs_no_request(cluster, ab):
    a, _ = ab
    (a / "f").write_bytes(b"z" * 4000)
    # The write's release (data, size update, MDT close) goes on after close(2) returns;
    # its size update gives our lock on the file back and with it a kept open. Once a
    # read-only open is kept, every next one is served with no request.
    hits = llite_counter(cluster.mnt, "open_cache_hits")
    deadline = time.monotonic() + 10
    while llite_counter(cluster.mnt, "open_cache_hits") == hits:
        assert time.monotonic() < deadline, "no read-only open was ever served from the cache"
        assert (a / "f").read_bytes() == b"z" * 4000
    hits, reints = llite_counter(cluster.mnt, "open_cache_hits"), mdc_reints(cluster.mnt)
    for _ in range(5):
        assert (a / "f").read_bytes() == b"z" * 4000
    assert llite_counter(cluster.mnt, "open_cache_hits") == hits + 5
    assert mdc_reints(cluster.mnt) == reints, "an open of a file opened before went out"


@pytest.mark.timeout(TIMEOUT)
def test_a_kept_open_does_not_outlive_a_permission_change_elsewhere(cluster, ab):
    a, b = ab
    (a / "f").write_bytes(b"p" * 100)
    os.chmod(a / "f", 0o644)
    assert read_as(1000, a / "f") == 100
    hits = llite_counter(cluster.mnt, "open_cache_hits")
    assert read_as(1000, a / "f") == 100
    assert llite_counter(cluster.mnt, "open_cache_hits") == hits + 1  # (kept for uid 1000)
    os.chmod(b / "f", 0o600)  # on B: A's lock is called back, its kept open closed
    got = read_as(1000, a / "f")
    assert got[0] == "raised" and "Permission denied" in got[1], got  # type: ignore[index]
    assert (a / "f").read_bytes() == b"p" * 100  # (root may)


@pytest.mark.timeout(TIMEOUT)
def test_kept_opens_do_not_keep_objects_of_files_removed_elsewhere(cluster, ab):
    a, b = ab
    f = a / "f"
    with open(f, "wb") as out:
        out.write(b"o" * 70_000)
        out.flush()
        os.fsync(out.fileno())
    objects = os.getxattr(f, "lustre.lov").decode()
    assert f.read_bytes() == b"o" * 70_000
    assert f.read_bytes() == b"o" * 70_000  # (opened from the cache)
    oid = {k: v for k, v in (i.split("=", 1) for i in objects.split())}["objects"]
    ost, num = (int(x) for x in oid.split(",")[0].split(":"))
    path = cluster.data / f"{fsname_of(cluster)}-OST{ost:04X}" / "O" / f"{num & 0xFF:02x}" \
        / f"{num:x}"
    assert path.exists()
    os.unlink(b / "f")  # on B: A's kept open closes, the file's objects go
    assert wait_until(lambda: not path.exists(), 15), "objects kept by a cached open"
    assert not f.exists()


@pytest.mark.timeout(TIMEOUT)
def test_listxattr_of_a_file_known_to_have_none_needs_no_request(cluster, ab):
    """cp -a lists every source file's xattrs: a file the client knows (under its
    lock) to have none is answered locally; a change elsewhere is seen at once."""
    a, b = ab
    (a / "f").write_bytes(b"x")
    before = mdc_requests(cluster.mnt, "MDS_GETXATTR")
    assert os.listxattr(a / "f") == []
    assert mdc_requests(cluster.mnt, "MDS_GETXATTR") == before
    os.setxattr(b / "f", "user.k", b"v")
    assert os.listxattr(a / "f") == ["user.k"]
    os.removexattr(b / "f", "user.k")
    assert os.listxattr(a / "f") == []
