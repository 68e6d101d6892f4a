"""fields.py - the MDT's checks of request fields: credentials, names, inode
identifiers (a number, 1.8's [ino, gen] or a FID) and bounded integers, each a
ServiceError (EINVAL, ENAMETOOLONG; a FieldError for what no real client sends)
rather than a crash in the store; and the lock bits updates take.
"""

from __future__ import annotations

import errno
from typing import Any

from ...protocol import dialect
from ...protocol.ldlm import IBits
from ..errors import FieldError, ServiceError, body_field
from .store import Cred

MAX_NAME = 255
MAX_XATTR_VALUE = 64 << 10
READDIR_MAX = 1024


ID_MAX = (1 << 32) - 2  # uids and gids: a Linux uid_t, but (uid_t)-1, which means "none"


def _cred(body: dict[str, Any]) -> Cred:
    raw = body.get("cred")
    if (type(raw) is not list or len(raw) != 3 or type(raw[0]) is not int
            or type(raw[1]) is not int or type(raw[2]) is not list or len(raw[2]) > 65536
            or not all(type(g) is int for g in raw[2])):
        raise FieldError("bad credentials")
    if not all(0 <= i <= ID_MAX for i in (raw[0], raw[1], *raw[2])):
        raise ServiceError(errno.EINVAL, "uid or gid out of range")
    return Cred(raw[0], raw[1], tuple(raw[2]))


def _name(body: dict[str, Any], field: str = "name") -> bytes:
    name = body_field(body, field, bytes)
    if len(name) > MAX_NAME:
        raise ServiceError(errno.ENAMETOOLONG)
    return name


def _ino(body: dict[str, Any], field: str = "ino") -> int:
    """The inode a body field names: a neutral number, 1.8's [ino, gen] or a FID."""
    if field not in body:
        raise FieldError(f"request lacks field {field!r}")
    try:
        ino = dialect.parse_id(body[field])
    except dialect.DialectError as e:
        raise FieldError(f"field {field!r}: {e}") from None
    if not 0 < ino < (1 << 63):
        raise ServiceError(errno.EINVAL, "inode number out of range")
    return ino


def _int(body: dict[str, Any], field: str, default: Any = ..., *, lo: int = 0,
         hi: int = (1 << 63) - 1) -> int:
    """An integer field within [lo, hi] (SQLite's integers are signed 64-bit)."""
    value = body_field(body, field, int, default)
    if value is not None and value is not default and not lo <= value <= hi:
        raise ServiceError(errno.EINVAL, f"{field} out of range")
    return value


MODE_MAX = 0o177777
UPDATE = int(IBits.UPDATE)
ATTRS = int(IBits.UPDATE | IBits.PERM)  # attributes, including those permissions use
RDEV_MAX = (1 << 32) - 1
