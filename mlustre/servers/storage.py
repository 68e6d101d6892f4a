"""storage.py - a target's storage directory: exclusive claim and boot count.

A failover pair shares one storage directory; the claim (an exclusive flock on
a file inside it, held for the server's life) makes it impossible for two
servers to serve it at once, as Lustre's MMP does. The kernel drops the lock
when the holder dies, so a crashed server never blocks its partner.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


class StorageBusy(Exception):
    """Another live server holds this storage directory."""


class TargetStorage:
    """The claimed storage directory of one target."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._claim_fd: int | None = None
        self.instance = 0

    def claim(self, holder: str) -> None:
        """Take the exclusive claim or raise StorageBusy naming the holder."""
        fd = os.open(self.path / "claim", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StorageBusy(
                f"{self.path} is served by another server ({other or 'unknown'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} pid={os.getpid()}\n".encode(), 0)
        self._claim_fd = fd
        self.instance = self._bump_instance()

    def _bump_instance(self) -> int:
        """Count boots, so clients can tell a restarted server from a reconnect."""
        f = self.path / "instance"
        n = int(f.read_text()) + 1 if f.exists() else 1
        self.write_atomic("instance", str(n).encode())
        return n

    def write_atomic(self, name: str, data: bytes) -> None:
        tmp = self.path / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)

    def read_json(self, name: str, default: object = None) -> object:
        f = self.path / name
        if not f.exists():
            return default
        return json.loads(f.read_text())

    @property
    def claimed(self) -> bool:
        return self._claim_fd is not None

    def release(self) -> None:
        if self._claim_fd is not None:
            os.close(self._claim_fd)
            self._claim_fd = None
