"""kernel_readahead.py - the kernel's read-ahead window for this mount.

The kernel gives a FUSE mount the default 128 KiB window: a sequential reader then
has one 128 KiB request in flight at a time, and each costs a round trip through the
daemon, so reads run at the speed of that round trip whatever the daemon caches or
reads ahead. A wider window lets the kernel send several requests at once (still
within the mount's max_pages per request). The window is the backing device's
read_ahead_kb in sysfs; the device is found in /proc/self/mountinfo, as the mount
point itself must not be touched by the daemon that serves it (it would deadlock).
The kernel sets the window when it gets the daemon's answer to FUSE_INIT (to at most
its default), after the mount and at a moment the daemon is not told of: so it is set
a few times over the first seconds of the mount.
"""

from __future__ import annotations

import logging

import trio

log = logging.getLogger(__name__)

READ_AHEAD_KB = 4096
SET_AT = (0.05, 0.3, 1.0, 3.0)  # seconds after the mount (FUSE_INIT is answered meanwhile)


def mount_device(mountinfo: str, mountpoint: str) -> str | None:
    """major:minor of the last mount at mountpoint in a mountinfo text (fields: id,
    parent, major:minor, root, mount point with octal escapes, ...)."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")
        if point == mountpoint:
            found = fields[2]
    return found


def widen(mountpoint: str, kb: int = READ_AHEAD_KB) -> bool:
    """Set the kernel's read-ahead window of the mount at mountpoint (best effort: it
    needs root and sysfs; without them reads are slower, not wrong)."""
    try:
        with open("/proc/self/mountinfo") as f:
            dev = mount_device(f.read(), mountpoint)
        if dev is None:
            return False
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
        return True
    except OSError as e:
        log.info("kernel read-ahead of %s left as it is: %s", mountpoint, e)
        return False


async def keep_wide(mountpoint: str, kb: int = READ_AHEAD_KB) -> None:
    """Widen the window, again after FUSE_INIT has narrowed it (see the module's doc)."""
    waited = 0.0
    for at in SET_AT:
        await trio.sleep(at - waited)
        waited = at
        if not widen(mountpoint, kb):
            return
