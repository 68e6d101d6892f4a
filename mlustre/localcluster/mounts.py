"""localcluster/mounts.py - the mounts of this machine, from /proc/self/mountinfo.

The one parser of the kernel's mount table in the project (the CLI's registry, the
mount tests, the benchmarks and the demos all ask here). It never stats a mount
point: a hung FUSE mount would hang the caller, and a dead one fails lstat and would
look unmounted. Paths in the table escape space, tab, newline and backslash as octal
(\\040, \\011, \\012, \\134); `unescape` undoes every such escape.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A path field of /proc/mounts or mountinfo as the path it names."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    point: str  # the mount point, unescaped
    fstype: str  # e.g. "fuse.mlustre", "tmpfs"
    source: str
    major: int
    minor: int  # for FUSE: the connection number under /sys/fs/fuse/connections


def parse_mountinfo(text: str) -> list[Mount]:
    """The lines of a mountinfo file as Mounts (lines it cannot read are skipped)."""
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rf = left.split(), right.split()
        if len(fields) < 5:
            continue
        major, _, minor = fields[2].partition(":")
        out.append(Mount(unescape(fields[4]), rf[0] if rf else "",
                         unescape(rf[1]) if len(rf) > 1 else "",
                         int(major or 0), int(minor or 0)))
    return out


def mounts() -> list[Mount]:
    """Every mount visible to this process; [] if the table cannot be read."""
    try:
        with open(MOUNTINFO) as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []


def _norm(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path)).rstrip("/") or "/"


def is_mounted(path: str | os.PathLike[str], *, real: bool = False) -> bool:
    """Whether something is mounted exactly on path (real=True: on its realpath)."""
    p = os.path.realpath(path) if real else _norm(path)
    return any(m.point == p for m in mounts())


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points strictly below path."""
    p = _norm(path).rstrip("/") + "/"
    return [m.point for m in mounts() if m.point.startswith(p)]


def mount_at(path: str | os.PathLike[str]) -> Mount | None:
    """The mount on path itself (the last one, if several are stacked)."""
    p = _norm(path)
    found = [m for m in mounts() if m.point == p]
    return found[-1] if found else None


def fstype(path: str | os.PathLike[str]) -> str | None:
    """The type of the filesystem mounted exactly on path, else None."""
    m = mount_at(path)
    return m.fstype if m else None


def fstype_of(path: str | os.PathLike[str]) -> str:
    """The type of the filesystem path lies on (its deepest enclosing mount)."""
    p = os.path.realpath(path)
    best, kind = "", ""
    for m in mounts():
        if (p == m.point or p.startswith(m.point.rstrip("/") + "/")) and len(m.point) >= len(best):
            best, kind = m.point, m.fstype
    return kind


def fuse_connection(path: str | os.PathLike[str]) -> int | None:
    """The FUSE connection number of the mount on path (the minor of its device)."""
    m = mount_at(path)
    return m.minor if m else None


def fuse_abort(connection: int | None) -> bool:
    """Abort a FUSE connection through fusectl (if mounted): every call still waiting
    on it fails, so processes stuck in a dead mount can die."""
    if connection is None:
        return False
    try:
        Path(f"/sys/fs/fuse/connections/{connection}/abort").write_text("1")
        return True
    except OSError:
        return False
