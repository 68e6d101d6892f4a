"""The verified writer of the takeover tests (test_standby.py, test_multihost_standby.py):
a process that appends a known pattern to a file on a mount the whole time (fsync every
8 blocks), reads each block back through another descriptor, and creates a small file
every 16 blocks (metadata too), until a stop file appears. Any error ends it with a
traceback, so "the writer continued without error" is its exit status. verify() then
checks, through another client, that the file is exactly the blocks written: a block
lost or written twice would cut or shift the appended file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mnthelpers import wait_until

BLOCK = 16384

WRITER = r"""
import json, os, sys, time
path, stop, progress, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
rd = os.open(path, os.O_RDONLY)
n = files = 0
while not os.path.exists(stop):
    data = (b"%010d|" % n) * (block // 11) + b"#" * (block % 11)
    assert os.write(fd, data) == block
    if n % 8 == 0:
        os.fsync(fd)
    back = os.pread(rd, block, n * block)
    assert back == data, f"block {n} reads back wrong"
    n += 1
    if n % 16 == 0:  # metadata too: a small file each 16 blocks
        with open(os.path.join(os.path.dirname(path), f"meta-{files}"), "w") as f:
            f.write(f"file {files}")
        files += 1
    with open(progress + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(progress + ".tmp", progress)
    time.sleep(0.005)
os.fsync(fd)
os.close(fd)
os.close(rd)
print(json.dumps({"blocks": n, "files": files}))
"""


def expected_block(n: int) -> bytes:
    return (b"%010d|" % n) * (BLOCK // 11) + b"#" * (BLOCK % 11)


class Writer:
    """The writer process on a mount, in directory `dir` (made unless it exists),
    stopped through a file in scratch."""

    def __init__(self, mnt: Path, scratch: Path, name: str = "w") -> None:
        self.dir = mnt / name
        self.dir.mkdir(exist_ok=True)
        self.stop_file = scratch / f"{name}.stop"
        self.progress_file = scratch / f"{name}.progress"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(self.dir / "data"), str(self.stop_file),
             str(self.progress_file), str(BLOCK)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)

    def blocks(self) -> int:
        try:
            return int(self.progress_file.read_text())
        except (OSError, ValueError):
            return 0

    def advances(self, by: int, timeout: float) -> bool:
        start = self.blocks()
        return wait_until(lambda: self.blocks() >= start + by or self.proc.poll() is not None,
                          timeout) and self.proc.poll() is None

    def finish(self) -> dict:
        self.stop_file.write_text("")
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, f"the writer failed:\n{err}"
        return json.loads(out)

    def describe(self) -> str:
        """Why it stopped, once it did (its traceback)."""
        if self.proc.poll() is None:
            return f"the writer (pid {self.proc.pid}) runs, at block {self.blocks()}"
        _, err = self.proc.communicate(timeout=10)
        return f"the writer exited with status {self.proc.returncode}:\n{err}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.stop_file.write_text("")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def verify(wdir: Path, result: dict) -> None:
    """What another client reads in the writer's directory: its blocks exactly
    (appends: a block written twice or lost would shift or cut the file) and every
    small file, and no more."""
    data = (wdir / "data").read_bytes()
    n = result["blocks"]
    assert len(data) == n * BLOCK, (len(data), n * BLOCK)
    bad = [i for i in range(n) if data[i * BLOCK:(i + 1) * BLOCK] != expected_block(i)]
    assert not bad, f"blocks {bad[:10]} differ"
    for i in range(result["files"]):
        assert (wdir / f"meta-{i}").read_text() == f"file {i}"
    assert not (wdir / f"meta-{result['files']}").exists()


def fenced_log_ends(log: Path, offset: int = 0) -> list[str]:
    """The lines of a server's log (from offset: its own start) up to its FENCED line,
    which must be its last: a fenced server logs, answers and writes nothing more."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    fenced = [i for i, line in enumerate(lines) if "FENCED" in line]
    assert fenced, f"no FENCED line in {log}:\n" + "\n".join(lines[-10:])
    after = lines[fenced[0] + 1:]
    assert not after, f"{log} has lines after its FENCED line: {after}"
    return lines[:fenced[0] + 1]
