"""dialect.py - how each release names MDT objects in request and reply bodies.

Release 1.8 names an inode by [ino, generation]; release 2.0 by its FID
[seq, oid, ver] (an IGIF FID for inodes created under 1.8: seq = ino, oid = gen).
A 2.0 server also reports ino and gen in every attribute map, so a client can name
any object it has seen to either release. Clients keep requests in the neutral form
(inode numbers) and encode them for the release of the server at send time
(`encode_request`); servers decode whatever form into inode numbers (`parse_id`)
after checking that it is their release's (`check_request`). A plain inode number is
the neutral form, also accepted (tools and tests speak it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .constants import MDS_REINT, REINT_OPEN
from .fid import Fid, fid_of, ino_of

# Body fields that name an MDT inode.
ID_FIELDS = ("ino", "parent", "new_parent")

# What a client knows of an inode: its generation and FID, when a server said them.
Identity = Callable[[int], "tuple[int | None, list[int] | None]"]


class DialectError(ValueError):
    """A body names an object in a form its receiver does not speak."""


def wire_id(release: str, ino: int, gen: int | None, fid: list[int] | None) -> Any:
    """How `release` names inode `ino` (the neutral number if what it needs is unknown)."""
    if release == "1.8":
        return [ino, gen] if gen is not None else ino
    if fid is not None:
        return list(fid)
    if ino == 1:
        return list(fid_of(1, 0))
    if gen is not None and 12 <= ino <= 0xFFFFFFFF:
        return list(fid_of(ino, gen, igif=True))  # (a 2.0 server maps IGIF back to ino)
    return ino


def encode_request(release: str, body: dict[str, Any], identity: Identity,
                   opc: int = 0) -> dict[str, Any]:
    """A copy of a neutral request body in `release`'s form: its inode fields, and
    for 1.8 the layout of an open (`"open": [object, flags, cred]`, positional)."""
    out = dict(body)
    for key in ID_FIELDS:
        ino = body.get(key)
        if type(ino) is int:
            gen, fid = identity(ino)
            out[key] = wire_id(release, ino, gen, fid)
    if release == "1.8" and opc == MDS_REINT and out.get("op") == REINT_OPEN:
        out["open"] = [out.pop("ino", None), out.pop("flags", 0), out.pop("cred", None)]
    return out


def normalize_request(release: str, opc: int, body: Any) -> Any:
    """What a server of `release` received, in the form its handlers read (a 1.8 open
    unpacked); DialectError for a body in the other release's form."""
    check_request(release, body)
    if opc != MDS_REINT or not isinstance(body, dict) or body.get("op") != REINT_OPEN:
        return body
    packed = body.get("open")
    if release != "1.8":
        if packed is not None:
            raise DialectError("release 2.0 opens name the object in 'fid'/'ino' fields, "
                               "not in a 1.8 'open' array")
        return body
    if not isinstance(packed, list) or len(packed) != 3:
        raise DialectError("a release 1.8 open carries 'open': [object, flags, cred]")
    check_request(release, {"ino": packed[0]})
    out = {k: v for k, v in body.items() if k != "open"}
    out["ino"], out["flags"], out["cred"] = packed
    return out


def check_request(release: str, body: Any) -> None:
    """Refuse a body naming objects in the other release's form."""
    if not isinstance(body, dict):
        return
    for key in ID_FIELDS:
        value = body.get(key)
        if isinstance(value, list):
            want = 2 if release == "1.8" else 3
            if len(value) != want:
                form = "[ino, generation]" if release == "1.8" else "a FID [seq, oid, ver]"
                raise DialectError(f"release {release} names objects by {form}; "
                                   f"field {key!r} is {value!r}")


def parse_id(value: Any) -> int:
    """The inode number named by a neutral number, [ino, gen] or a FID."""
    if type(value) is int:
        return value
    if isinstance(value, list) and all(type(v) is int for v in value):
        if len(value) == 2:
            return value[0]
        if len(value) == 3:
            try:
                return ino_of(Fid(*value))
            except ValueError as e:
                raise DialectError(str(e)) from None
    raise DialectError(f"not an object identity: {value!r}")


def add_fids(body: Any, igif: Callable[[int], bool]) -> Any:
    """A 2.0 server's reply: every attribute map (one with ino and gen) gets its FID."""
    if isinstance(body, dict):
        if type(body.get("ino")) is int and type(body.get("gen")) is int and "fid" not in body:
            ino = body["ino"]
            try:
                body["fid"] = list(fid_of(ino, body["gen"], igif=igif(ino)))
            except ValueError:
                body["fid"] = list(fid_of(ino, body["gen"]))
        for v in body.values():
            if isinstance(v, dict | list):
                add_fids(v, igif)
    elif isinstance(body, list):
        for v in body:
            if isinstance(v, dict | list):
                add_fids(v, igif)
    return body
