"""fuzz/cases.py - hypothesis strategies drawing hostile cases (see frames.py).

Imports hypothesis, which only the test extras install: only the fuzzer itself
(tests/test_fuzz_servers.py, `python -m mlustre.fuzz`) imports this module.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ..protocol import constants as C
from ..protocol.ldlm import LockType, Mode
from .cluster import GOOD_OID, OWNER, U64
from .frames import (
    COMMON_OPCODES,
    EDGE_INTS,
    FIELDS,
    NAMES,
    OPCODES,
    REFS,
    REINT_OPS,
    TEMPLATES,
    Frame,
    HostileCase,
    Ref,
)

leaves = st.one_of(
    st.none(), st.booleans(), st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(1 << 63), max_value=U64),
    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=40),
    st.sampled_from(NAMES), st.sampled_from([Ref(r) for r in REFS]))
values = st.recursive(leaves, lambda kids: st.one_of(
    st.lists(kids, max_size=5),
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), kids,
                    max_size=5)), max_leaves=12)
creds = st.one_of(
    st.tuples(st.integers(1, 5000).filter(lambda u: u != OWNER),
              st.integers(0, 5000).filter(lambda u: u != OWNER),
              st.lists(st.integers(0, 5000).filter(lambda u: u != OWNER), max_size=3)
              ).map(list),
    values)
inos = st.one_of(st.sampled_from([Ref("dir_ino"), Ref("file_ino"), 1, 2, 0]),
                 st.lists(st.sampled_from(EDGE_INTS), min_size=2, max_size=3), values)
handles = st.one_of(st.sampled_from([Ref("open_handle"), Ref("mdt_lock"), Ref("ost_lock")]),
                    st.sampled_from(EDGE_INTS), values)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "cred": creds, "ino": inos, "parent": inos, "new_parent": inos,
    "name": st.sampled_from(NAMES), "new_name": st.sampled_from(NAMES),
    "op": st.one_of(st.sampled_from(REINT_OPS), values),
    "handle": handles, "handles": st.lists(handles, max_size=4), "cancels":
    st.lists(handles, max_size=4), "oid": st.sampled_from([0, 1, GOOD_OID + 7, (1 << 63) - 1,
                                                           1 << 63, -1]),
    "res": st.lists(st.one_of(st.sampled_from([Ref("file_ino"), GOOD_OID, 0]),
                              st.sampled_from(EDGE_INTS)), min_size=4, max_size=4),
    "type": st.sampled_from([int(t) for t in LockType] + [0, 99]),
    "mode": st.one_of(st.sampled_from([int(m) for m in Mode] + [0, 3, 64]),
                      st.sampled_from(EDGE_INTS)),
    "policy": st.one_of(st.lists(st.sampled_from(EDGE_INTS), min_size=2, max_size=2),
                        st.sampled_from([1, 2, 0x3f, 0x40])),
    "offset": st.sampled_from(EDGE_INTS), "length": st.sampled_from(EDGE_INTS),
    "size": st.sampled_from(EDGE_INTS),
    "uuid": st.one_of(st.text(max_size=10), values),
    "flags": st.sampled_from([0, 1, 2, 0o100, 0o1000, 0o2000, 0o100 | 0o200, 7, U64]),
    "lock": st.fixed_dictionaries({"handle": handles, "bits": st.sampled_from(
        [1, 2, 0x3f, 0x40, 0, -1])}),
    "attrs": st.dictionaries(st.sampled_from(["mode", "uid", "gid", "size", "atime_ns",
                                              "mtime_ns", "atime_now", "x"]),
                             st.one_of(st.sampled_from(EDGE_INTS), st.booleans()),
                             max_size=3),
    "value": st.one_of(st.binary(max_size=64), st.sampled_from(
        [b"stripe_count=2", b"stripe_size=0", b"objects=0:1", b"x" * 70000])),
    "target": st.sampled_from(NAMES),
    "layout": st.one_of(st.fixed_dictionaries({"stripe_count": st.sampled_from(EDGE_INTS),
                                               "stripe_size": st.sampled_from(EDGE_INTS)}),
                        values),
    "oids": st.lists(st.sampled_from([0, 1, GOOD_OID + 7, -1, 1 << 63]), max_size=5),
    "kind": st.sampled_from(["mdt", "ost", "mgs", ""]),
    "index": st.sampled_from(EDGE_INTS), "instance": st.sampled_from(EDGE_INTS),
    "nid": st.sampled_from(["127.0.0.1:1", "x", "", "1.2.3.4:99999", "[::1]:5"]),
    "pattern": st.sampled_from(["*", "*.stats", "ldlm.*.locks", "[", ""]),
    "mask": st.sampled_from(EDGE_INTS),
}


@st.composite
def bodies(draw: st.DrawFn, opc: int = 0) -> dict[Any, Any]:
    template = TEMPLATES.get(opc, [])
    keys = [k for k in template if draw(st.integers(0, 9))]  # each dropped 1 time in 10
    keys += draw(st.lists(st.sampled_from(FIELDS), max_size=3 if template else 7,
                          unique=True))
    body: dict[Any, Any] = {}
    for k in keys:
        body[k] = draw(PLAUSIBLE[k] if k in PLAUSIBLE and draw(st.booleans()) else values)
    return body


@st.composite
def frames(draw: st.DrawFn, kind: str) -> Frame:
    what = draw(st.sampled_from(["message"] * 12 + ["raw_header"] * 2 +
                                ["garbage", "lying_prefix", "oversized"]))
    if what == "message":
        known = st.sampled_from(OPCODES[kind] + COMMON_OPCODES)
        opc = draw(st.one_of(known, known, known, known, st.integers(0, 1000)))
        return Frame("message", opc=opc,
                     xid=draw(st.one_of(st.sampled_from([Ref("good_xid"), 1, 1 << 62, U64]),
                                        st.integers(1, U64))),
                     flags=draw(st.sampled_from([0, 0, C.MSG_RESENT, C.MSG_REPLAY,
                                                 C.MSG_RESENT | C.MSG_REPLAY,
                                                 C.MSG_REQ_REPLAY_DONE, U64])),
                     body=draw(bodies(opc)),
                     bulk=draw(st.one_of(st.just(b""), st.binary(max_size=4096))),
                     release=draw(st.sampled_from(["2.0", "1.8"])))
    if what == "raw_header":
        header = draw(st.dictionaries(
            st.sampled_from(["type", "opc", "xid", "flags", "conn_cnt", "transno",
                             "last_committed", "status", "body"]),
            values, max_size=9))
        if draw(st.booleans()):
            header.setdefault("type", C.REQUEST)
            header.setdefault("opc", draw(st.sampled_from(OPCODES[kind])))
            header.setdefault("xid", 7)
        as_list = draw(st.booleans())
        return Frame("raw_header", extra={"header": header, "as_list": as_list},
                     bulk=draw(st.one_of(st.just(b""), st.binary(max_size=64))))
    if what == "garbage":
        return Frame("garbage", raw=draw(st.binary(min_size=1, max_size=512)))
    if what == "lying_prefix":
        return Frame("lying_prefix", header_len=draw(st.integers(0, 1 << 16)),
                     bulk_len=draw(st.integers(0, 1 << 16)),
                     raw=draw(st.binary(max_size=256)))
    return Frame("oversized", header_len=draw(st.sampled_from([C.MAX_HEADER + 1, (1 << 32) - 1,
                                                                0])),
                 bulk_len=draw(st.sampled_from([C.MAX_BULK + 1, (1 << 32) - 1, 0])))


@st.composite
def hostile_cases(draw: st.DrawFn, kind: str) -> HostileCase:
    fs = draw(st.lists(frames(kind), min_size=1, max_size=6))
    return HostileCase(
        connect=draw(st.booleans()) or draw(st.booleans()),
        uuid=draw(st.sampled_from(["fuzz-hostile", "fuzz-hostile-2", ""])),
        frames=fs, half_close=draw(st.booleans()),
        linger=draw(st.sampled_from([0.01, 0.02, 0.05])),
        truncate_last=draw(st.one_of(st.just(0), st.integers(1, 64))))
