"""fuzz/frames.py - what a hostile case sends, and how it becomes bytes.

The vocabulary of the cases (edge values, names, fields, opcodes, the request templates),
`Frame` and `HostileCase`, and their rendering against a running `FuzzCluster` (values
only known then, such as the good client's handles, are `Ref`s until rendered; what the
protocol allows to any client is taken out: see mlustre/fuzz/cluster.py). No hypothesis
here: mlustre/fuzz/cases.py draws the cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from ..protocol import constants as C
from ..protocol.codec import PREFIX, Codec18, Codec20
from ..protocol.message import Message
from .cluster import FS, GOOD_OID, GOOD_UUID, OWNER, U64

if TYPE_CHECKING:
    from .cluster import FuzzCluster

EDGE_INTS = [0, 1, 2, 7, 12, 255, 256, 4095, 4096, 65535, 65536, (1 << 31) - 1, 1 << 31,
             (1 << 32) - 1, 1 << 32, (1 << 62), (1 << 63) - 1, 1 << 63, U64, -1, -(1 << 63)]
NAMES = [b"", b".", b"..", b"/", b"a/b", b"\x00", b"x" * 255, b"x" * 256, b"data", b"keep",
         b"new", b"../../etc", "str-name", b"\xff\xfe"]
FIELDS = ["oid", "offset", "length", "size", "oids", "cred", "ino", "parent", "new_parent",
          "name", "new_name", "mode", "rdev", "flags", "open_flags", "layout", "exclusive",
          "target", "value", "attrs", "via_handle", "replay", "kill_priv", "mtime_ns",
          "atime_ns", "op", "cookie", "count", "mask", "handle", "handles", "cancels", "lock",
          "parent_lock", "res", "type", "mode", "policy", "intent", "uuid", "release", "kind",
          "index", "nid", "failover_nids", "instance", "timeout", "replay_attr", "dir_bits",
          "bits", "remote"]
OPCODES = {
    "ost": [C.OST_WRITE, C.OST_READ, C.OST_PUNCH, C.OST_GETATTR, C.OST_DESTROY, C.OST_STATFS,
            C.OST_SYNC, C.OST_CREATE, C.OST_SETATTR, C.OST_DISCONNECT, C.OST_CONNECT],
    "mdt": [C.MDS_GET_ROOT, C.MDS_GETATTR, C.MDS_GETATTR_NAME, C.MDS_READLINK,
            C.MDS_READPAGE, C.MDS_GETXATTR, C.MDS_STATFS, C.MDS_ACCESS, C.MDS_SYNC, C.MDS_CLOSE,
            C.MDS_REINT, C.MDS_REINT, C.MDS_REINT, C.MDS_FID2PATH, C.MDS_DISCONNECT,
            C.MDS_CONNECT],
    "mgs": [C.MGS_TARGET_REG, C.MGS_CONFIG_READ, C.MGS_DISCONNECT, C.MGS_CONNECT],
}
COMMON_OPCODES = [C.OBD_PING, C.OBD_ADMIN, C.LDLM_ENQUEUE, C.LDLM_CANCEL, C.LDLM_CONVERT,
                  C.LDLM_BL_CALLBACK, C.LDLM_CP_CALLBACK, C.LDLM_GL_CALLBACK]
REINT_OPS = [C.REINT_SETATTR, C.REINT_CREATE, C.REINT_LINK, C.REINT_UNLINK, C.REINT_RENAME,
             C.REINT_OPEN, C.REINT_SETXATTR, C.REINT_MKDIR, C.REINT_SYMLINK, C.REINT_RMDIR,
             C.REINT_REMOVEXATTR, C.REINT_SETLAYOUT, 0, 99]
# Allowed to any client by the protocol today (see the module's docstring).
TRUSTED_REINT = (C.REINT_WRITE_UPDATE, C.REINT_ATIME)


class Ref:
    """A value only known once the cluster runs (the good client's handles, inodes)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"


REFS = ["dir_ino", "file_ino", "open_handle", "mdt_lock", "ost_lock", "good_xid"]


# The fields each request has, so that cases get past the first check and deep into
# the handlers; `bodies` then drops, adds or confuses some.
TEMPLATES: dict[int, list[str]] = {
    C.OST_WRITE: ["oid", "offset"], C.OST_READ: ["oid", "offset", "length"],
    C.OST_PUNCH: ["oid", "size"], C.OST_GETATTR: ["oid"], C.OST_DESTROY: ["oids"],
    C.MDS_GETATTR: ["ino", "lock"], C.MDS_GETATTR_NAME: ["cred", "parent", "name", "lock"],
    C.MDS_READLINK: ["ino"], C.MDS_READPAGE: ["cred", "ino", "cookie", "count"],
    C.MDS_GETXATTR: ["cred", "ino", "name"], C.MDS_ACCESS: ["cred", "ino", "mask"],
    C.MDS_CLOSE: ["handle"], C.MDS_FID2PATH: ["ino", "cred"],
    C.MDS_REINT: ["op", "cred", "ino", "parent", "name", "new_parent", "new_name", "mode",
                  "flags", "attrs", "value", "target", "layout", "cancels"],
    C.LDLM_ENQUEUE: ["res", "type", "mode", "policy", "handle", "flags"],
    C.LDLM_CANCEL: ["handles"],
    C.MGS_TARGET_REG: ["name", "kind", "index", "nid", "failover_nids", "instance"],
    C.OBD_ADMIN: ["op", "pattern"],
}


@dataclass
class Frame:
    """One thing sent: a message (encoded by a release's codec, or as a raw map of
    header fields), raw bytes, or a prefix whose lengths lie."""

    kind: str
    opc: int = 0
    xid: Any = 1
    flags: Any = 0
    body: Any = None
    bulk: bytes = b""
    release: str = "2.0"
    raw: bytes = b""
    header_len: int = 0
    bulk_len: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class HostileCase:
    connect: bool
    uuid: str
    frames: list[Frame]
    half_close: bool
    linger: float
    truncate_last: int = 0  # send only this many bytes of the last frame (0: all)

    def render(self, cluster: FuzzCluster) -> list[bytes]:
        out = [_render(f, cluster) for f in self.frames]
        if self.truncate_last and out:
            out[-1] = out[-1][:self.truncate_last]
        return out


def _resolve(value: Any, cluster: FuzzCluster) -> Any:
    if isinstance(value, Ref):
        g = cluster.good
        if value.what == "good_xid":
            return g.xids[0] if g.xids else 1
        return getattr(g, value.what)
    if isinstance(value, list):
        return [_resolve(v, cluster) for v in value]
    if isinstance(value, dict):
        return {_resolve(k, cluster): _resolve(v, cluster) for k, v in value.items()}
    return value


def _sanitize(opc: int, body: Any) -> Any:
    """Keep a case to what the protocol forbids (see the module's docstring)."""
    if not isinstance(body, dict):
        return body
    cred = body.get("cred")
    if isinstance(cred, list) and cred and type(cred[0]) is int and cred[0] in (0, OWNER):
        body["cred"] = [4321, *cred[1:]]
    if isinstance(cred, list) and len(cred) > 1 and type(cred[1]) is int and cred[1] == OWNER:
        body["cred"] = [body["cred"][0], 4321, *cred[2:]]
    if opc == C.OBD_ADMIN and body.get("op") not in ("get", "list", "barrier_stat"):
        body["op"] = "get"  # (setting parameters is an administrator's: see docstring)
    if opc == C.MDS_REINT and body.get("op") in TRUSTED_REINT:
        body["op"] = 99
    if opc == C.MGS_TARGET_REG and isinstance(body.get("name"), str) \
            and body["name"].startswith(FS):
        body["name"] = "x" + body["name"]
    if body.get("oid") == GOOD_OID:
        body["oid"] = GOOD_OID + 7
    if isinstance(body.get("oids"), list):
        body["oids"] = [o for o in body["oids"] if o != GOOD_OID]
    if body.get("uuid") == GOOD_UUID:
        body["uuid"] = "x"
    return body


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return msgpack.packb(repr(obj), use_bin_type=True)


def _render(f: Frame, cluster: FuzzCluster) -> bytes:
    if f.kind == "message":
        body = _sanitize(f.opc, _resolve(f.body, cluster))
        xid = _resolve(f.xid, cluster)
        msg = Message(C.REQUEST, f.opc, xid, flags=f.flags, body=body,
                      bulk=f.bulk or None)
        codec = Codec18() if f.release == "1.8" else Codec20()
        try:
            return codec.encode(msg)
        except Exception:  # a body msgpack cannot carry: send its repr instead
            msg.body = {"junk": repr(body)}
            return codec.encode(msg)
    if f.kind == "raw_header":
        header = _resolve(f.extra["header"], cluster)
        if isinstance(header.get("body"), dict):
            header["body"] = _sanitize(header.get("opc", 0), header["body"])
        if header.get("opc") in (C.MDS_REINT, C.OBD_ADMIN):
            header["body"] = {"op": 99}
        if f.extra["as_list"]:
            header = [0x0BD00BD3, *[header.get(k) for k in (
                "type", "opc", "xid", "flags", "conn_cnt", "transno", "last_committed",
                "status", "body")]]
        packed = _pack(header)
        return PREFIX.pack(len(packed), len(f.bulk)) + packed + f.bulk
    if f.kind == "garbage":
        return f.raw
    return PREFIX.pack(f.header_len, f.bulk_len) + f.raw
