"""layouts.py - file layouts (striping over OSTs) and directories' default layouts.

A new file's layout takes, key by key, the explicit settings of its create, else its
directory's default, else the root's default (the filesystem's), else the store's
defaults; its objects come from `ObjectIds`.  A file never written may be re-striped
(its old objects go to the destroy log).
"""

from __future__ import annotations

import errno
import json
import stat

from .db import MdtDb
from .destroy_log import DestroyLog
from .errors import fail
from .inodes import Inodes
from .object_ids import ObjectIds
from .permissions import Cred
from .schema import (
    CTIME,
    DIR_LAYOUT,
    INO,
    LAYOUT,
    MODE,
    ROOT_INO,
    SIZE,
    UID,
    WRITTEN,
    Row,
    attr_of,
)

STRIPE_SIZE_UNIT = 65536
STRIPE_SIZE_MAX = 1 << 32  # as Lustre (LOV_MAX_STRIPE_SIZE: under 4 GiB, here 4 GiB)

LAYOUT_KEYS = ("stripe_count", "stripe_size", "stripe_offset")
# Keys of a full file layout that a caller may hand back to us; they are outputs, not settings.
LAYOUT_OUTPUT_KEYS = frozenset({"objects", "gen"})


def check_layout(layout: dict | None, ost_count: int) -> dict:
    """Validate striping settings; return only the keys that were given (None = not given)."""
    if layout is None:
        return {}
    if not isinstance(layout, dict):
        raise fail(errno.EINVAL, "layout must be a dict")
    out: dict[str, int] = {}
    for key, value in layout.items():
        if key in LAYOUT_OUTPUT_KEYS or value is None:
            continue
        if key not in LAYOUT_KEYS:
            raise fail(errno.EINVAL, f"unknown layout key {key!r}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(errno.EINVAL, f"{key} must be an int")
        out[key] = value
    count = out.get("stripe_count")
    if count is not None and count < -1:
        raise fail(errno.EINVAL, "stripe_count must be -1 or >= 0")
    size = out.get("stripe_size")
    if size is not None and (size <= 0 or size % STRIPE_SIZE_UNIT or size > STRIPE_SIZE_MAX):
        raise fail(errno.EINVAL, f"stripe_size must be a positive multiple of {STRIPE_SIZE_UNIT} "
                                 f"of at most {STRIPE_SIZE_MAX}")
    offset = out.get("stripe_offset")
    if offset is not None and not (offset == -1 or 0 <= offset < ost_count):
        raise fail(errno.EINVAL, "stripe_offset must be -1 or a valid OST index")
    return out


def check_defaults(ost_count: int, default_stripe_size: int) -> None:
    """ValueError for a store that could not make a layout."""
    if ost_count < 1:
        raise ValueError("ost_count must be >= 1")
    if default_stripe_size <= 0 or default_stripe_size % STRIPE_SIZE_UNIT:
        raise ValueError(f"default_stripe_size must be a multiple of {STRIPE_SIZE_UNIT}")


class Layouts:
    """Layout decisions and the layout columns of inode rows."""

    def __init__(self, db: MdtDb, inodes: Inodes, object_ids: ObjectIds,
                 destroy_log: DestroyLog, *, default_stripe_count: int,
                 default_stripe_size: int) -> None:
        check_defaults(object_ids.ost_count, default_stripe_size)
        self._db = db
        self._inodes = inodes
        self._object_ids = object_ids
        self._destroy_log = destroy_log
        self.default_stripe_count = default_stripe_count
        self.default_stripe_size = default_stripe_size
        self._root_default = self._load_dir_default(ROOT_INO)

    @property
    def ost_count(self) -> int:
        return self._object_ids.ost_count

    def check(self, layout: dict | None) -> dict:
        """The striping settings given (EINVAL for bad ones)."""
        return check_layout(layout, self.ost_count)

    def _load_dir_default(self, ino: int) -> dict | None:
        r = self._db.conn.execute(
            "SELECT dir_layout FROM inodes WHERE ino = ?", (ino,)).fetchone()
        return json.loads(r[0]) if r and r[0] else None

    def new_layout(self, settings: dict, gen: int) -> dict:
        """A layout with fresh objects for full settings (see settings_for)."""
        count = settings["stripe_count"]
        if count == -1 or count > self.ost_count:
            count = self.ost_count
        count = max(count, 1)
        start, objects = self._object_ids.allocate(count, settings["stripe_offset"])
        return {
            "stripe_count": count,
            "stripe_size": settings["stripe_size"],
            "stripe_offset": start,
            "objects": objects,
            "gen": gen,
        }

    def settings_for(self, parent: Row, explicit: dict) -> dict:
        """Per-key precedence: explicit > parent default > root default > store default."""
        settings = {
            "stripe_count": self.default_stripe_count,
            "stripe_size": self.default_stripe_size,
            "stripe_offset": -1,
        }
        if self._root_default:
            settings.update(self._root_default)
        if parent[INO] != ROOT_INO and parent[DIR_LAYOUT]:
            settings.update(json.loads(parent[DIR_LAYOUT]))
        settings.update(explicit)
        return settings

    def get_dir_layout(self, ino: int) -> dict | None:
        """The default layout stored on a directory (None if unset or not a directory)."""
        r = self._inodes.row(ino)
        if not stat.S_ISDIR(r[MODE]) or not r[DIR_LAYOUT]:
            return None
        return json.loads(r[DIR_LAYOUT])

    def set_layout(self, cred: Cred, ino: int, layout: dict, now: int) -> dict:
        """Set a directory's default layout, or re-stripe a never-written empty file.

        On a directory the given keys replace its default ({} removes it).  On a file,
        missing keys keep the file's stripe count and size, and placement is chosen anew.
        """
        settings = self.check(layout)
        r = list(self._inodes.row(ino))
        if cred.uid != 0 and cred.uid != r[UID]:
            raise fail(errno.EPERM)
        r[CTIME] = now
        conn = self._db.conn
        if stat.S_ISDIR(r[MODE]):
            dir_json = json.dumps(settings, separators=(",", ":")) if settings else None
            conn.execute(
                "UPDATE inodes SET dir_layout = ?, ctime_ns = ? WHERE ino = ?", (dir_json, now, ino)
            )
            if ino == ROOT_INO:
                new_default = settings or None

                def set_root_default() -> None:
                    self._root_default = new_default

                self._db.on_success(set_root_default)
            return attr_of(r)
        if not stat.S_ISREG(r[MODE]):
            raise fail(errno.EINVAL, "layouts are for files and directories")
        if r[SIZE] != 0 or r[WRITTEN]:
            raise fail(errno.EBUSY, "file already has data")
        old = json.loads(r[LAYOUT]) if r[LAYOUT] else None
        merged = {
            "stripe_count": old["stripe_count"] if old else self.default_stripe_count,
            "stripe_size": old["stripe_size"] if old else self.default_stripe_size,
            "stripe_offset": -1,
        }
        merged.update(settings)
        new = self.new_layout(merged, (old["gen"] if old else 0) + 1)
        self._destroy_log.add_layout(r[LAYOUT])
        r[LAYOUT] = json.dumps(new, separators=(",", ":"))
        conn.execute(
            "UPDATE inodes SET layout = ?, ctime_ns = ? WHERE ino = ?", (r[LAYOUT], now, ino)
        )
        return attr_of(r)
