"""A 512 MiB file through the mount: written with dd bs=1M, read back with
its sha256 compared, striped over both OSTs (checked via lustre.lov when
that xattr can be read)."""

from __future__ import annotations

import re
import shlex
import sys
import warnings

import pytest
from mnthelpers import run, sh, sh_ok

SIZE_MIB = 512
GENERATOR = """
import hashlib, random, sys
rng, h = random.Random(20241123), hashlib.sha256()
for _ in range(int(sys.argv[1])):
    block = rng.randbytes(1 << 20)
    h.update(block)
    sys.stdout.buffer.write(block)
sys.stdout.flush()
open(sys.argv[2], "w").write(h.hexdigest())
"""


def _parse_lov(text: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", text))


@pytest.mark.timeout(300)
def test_512mib_file_roundtrip(cluster, scratch, client2):
    bigdir = cluster.mnt / "big"
    bigdir.mkdir()
    lov_dir = sh(f"setfattr -n lustre.lov -v stripe_count=2 {bigdir}")
    target = bigdir / "file.bin"

    # stream seeded random data to the mount (no local copy), hashing on the way
    hashfile = scratch / "sha256"
    write = sh(
        f"{sys.executable} -c {shlex.quote(GENERATOR)} {SIZE_MIB} {hashfile} "
        f"| dd of={target} bs=1M iflag=fullblock status=none",
        timeout=200,
    )
    write.check()
    written = hashfile.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", written), write.describe()
    assert sh_ok(f"stat -c %s {target}").strip() == str(SIZE_MIB << 20)

    # best effort: make the read-back come from the servers, not the page cache
    run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], timeout=60)
    read = sh_ok(f"dd if={target} bs=1M status=none | sha256sum", timeout=200)
    assert read.split()[0] == written, "content read back differs from what was written"
    # a second client has nothing cached: its copy comes from the OSTs
    cluster.mount_client(client2).check()
    read2 = sh_ok(f"dd if={client2}/big/file.bin bs=1M status=none | sha256sum", timeout=200)
    assert read2.split()[0] == written, "second client reads different content"

    # layout: only if lustre.lov is implemented
    if lov_dir.rc != 0:
        warnings.warn(
            f"cannot set lustre.lov on a directory: {lov_dir.stderr.strip()}", stacklevel=1
        )
        return
    lov = sh(f"getfattr --only-values -n lustre.lov {target}")
    if lov.rc != 0:
        warnings.warn(f"lustre.lov of a file not readable: {lov.stderr.strip()}", stacklevel=1)
        return
    fields = _parse_lov(lov.stdout)
    assert fields.get("stripe_count") == "2", f"file not striped over 2 OSTs: {lov.stdout!r}"
    objects = fields.get("objects", "").split(",")
    assert len(objects) == 2, f"expected 2 objects: {lov.stdout!r}"
    if all(":" in o for o in objects):
        assert len({o.split(":")[0] for o in objects}) == 2, f"stripes on one OST: {lov.stdout!r}"
