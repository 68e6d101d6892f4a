"""storage.py - a target's storage directory: exclusive claim, heartbeat record, boot count.

A failover pair shares one storage directory; the claim (an exclusive flock on
a file inside it, held for the server's life) makes it impossible for two live,
running servers to serve it at once. The kernel drops the lock when the holder
dies, so a crashed server never blocks its partner. A holder that is alive but
cannot serve (frozen, cut off) keeps the lock: for that, servers of a failover pair
also keep the heartbeat record `mmp` (decided in mmp.py, driven by heartbeat.py);
this module only reads and writes it.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .mmp import Record


class StorageBusy(Exception):
    """Another live server holds this storage directory."""


class TargetStorage:
    """The claimed storage directory of one target."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._claim_fd: int | None = None
        self._claimed = False
        self.instance = 0

    def claim(self, holder: str) -> None:
        """Take the exclusive claim or raise StorageBusy naming the holder."""
        if not self.try_flock():
            raise StorageBusy(f"{self.path} is served by another server "
                              f"({self.flock_holder() or 'unknown'})")
        self.claimed_by(holder)

    def try_flock(self) -> bool:
        """Take the exclusive flock if it is free (True), or say it is held."""
        if self._claim_fd is not None:
            return True
        fd = os.open(self.path / "claim", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._claim_fd = fd
        return True

    def drop_flock(self) -> None:
        if self._claim_fd is not None:
            os.close(self._claim_fd)
            self._claim_fd = None

    @property
    def has_flock(self) -> bool:
        return self._claim_fd is not None

    def flock_holder(self) -> str:
        """What the holder of the flock wrote into the claim file."""
        try:
            return (self.path / "claim").read_text(errors="replace").strip()
        except OSError:
            return ""

    def note_holder(self, holder: str) -> None:
        """Name the holder in `claim` (a server that took over without the flock, once
        it got it)."""
        if self._claim_fd is not None:
            os.ftruncate(self._claim_fd, 0)
            os.pwrite(self._claim_fd, f"{holder} pid={os.getpid()}\n".encode(), 0)

    def claimed_by(self, holder: str) -> None:
        """This server serves the directory now: say who in `claim`, count the boot."""
        if self._claim_fd is not None:
            self.note_holder(holder)
        else:  # taken over by the heartbeat while a frozen holder keeps the flock
            self.write_atomic("claim.holder", f"{holder} pid={os.getpid()}\n".encode())
        self._claimed = True
        self.instance = self._bump_instance()

    def read_mmp(self) -> tuple[Record | None, bool]:
        """The heartbeat record and whether the file exists but holds no record."""
        try:
            raw = (self.path / "mmp").read_bytes()
        except FileNotFoundError:
            return None, False
        try:
            record = Record.from_dict(json.loads(raw))
        except ValueError:
            record = None
        return record, record is None

    def write_mmp(self, record: Record) -> None:
        """Replace the record at once (rename). No fsync: the servers of a pair read
        it through one kernel (as they share its flock), so the page cache is the
        truth, and a renewal stuck in fsync on a busy disk must not cost the lease."""
        tmp = self.path / f"mmp.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record.to_dict()))
        os.replace(tmp, self.path / "mmp")

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
        return self._claimed

    def release(self) -> None:
        self._claimed = False
        self.drop_flock()
