"""fuzz.py - hostile clients against real MGS, MDT and OST servers (hypothesis).

A `FuzzCluster` runs the three servers in a background thread's trio loop, on
loopback TCP, with data a well-behaved client (`Good`) wrote before: a directory
and a file with an xattr owned by uid 1000 on the MDT, with an open handle and a
lock held on it; an object with known bytes and a lock on the OST; the MGS's
configuration. Each case opens a raw socket from the calling thread and sends
what `hostile_case` draws: malformed, truncated, oversized and type-confused
frames, and well-formed requests whose fields are hostile (another client's
lock handles, open handles and xids, edge values, odd names). After every case
`check` asks, with fresh well-behaved sessions and a time limit, that every server
still serves and that the data, the good client's export, open handle and
locks are intact (a lock may go only because the good client gave it back on a
blocking callback, as a real client does).

Not fuzzed, because the protocol allows it to any client today (no
authentication yet): connecting under another client's uuid, registering a
target with the MGS, writing OST objects and the size/mtime/atime of MDT
inodes (REINT_WRITE_UPDATE, REINT_ATIME), setting parameters and freezing the
barrier (OBD_ADMIN), and root's credentials. The cases
never use the good client's uuid, the names of the filesystem's targets, the
good object, or uids 0 and 1000.

Used by tests/test_fuzz_servers.py (a short campaign) and scripts/fuzz (a long one).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio
from hypothesis import strategies as st

from ..protocol import constants as C
from ..protocol.codec import PREFIX, Codec18, Codec20
from ..protocol.errors import ConnectionLost, RpcError, RpcTimeout
from ..protocol.ldlm import IBITS_FULL, OBJECT_EOF, LockType, Mode
from ..protocol.message import Message
from ..protocol.nid import Nid
from ..protocol.rpc import Endpoint
from ..protocol.session import Session
from ..servers.mdt.server import MdtServer
from ..servers.mgs import MgsServer
from ..servers.ost import OstServer
from ..servers.target import TargetServer

FS = "fuzz"
TARGETS = ("mgs", "mdt", "ost")
GOOD_UUID = "fuzz-good-client"
OWNER = 1000  # owner of the good client's files (mode 0700 directory)
GOOD_OID = 4242
GOOD_DATA = hashlib.sha256(b"fuzz").digest() * 2048  # 64 KiB
GOOD_XATTR = b"user.fuzz", b"value" * 20
CHECK_TIMEOUT = 10.0  # a server that does not serve a good client within this hangs
U64 = (1 << 64) - 1
log = logging.getLogger(__name__)


class FuzzFailure(AssertionError):
    """A server crashed, hung, or lost or changed data a hostile client must not touch."""


# --------------------------------------------------------------- the good client

@dataclass
class Good:
    """What the well-behaved client holds on each target, and the locks it gave back
    when called back (the only way its locks may go)."""

    sessions: dict[str, Session] = field(default_factory=dict)
    dir_ino: int = 0
    file_ino: int = 0
    open_handle: int = 0
    mdt_lock: int = 0
    ost_lock: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    given_back: set[int] = field(default_factory=set)
    xids: list[int] = field(default_factory=list)

    async def on_ast(self, endpoint: Endpoint, req: Message) -> Message:
        """Blocking callbacks are answered and the lock cancelled, as a mount does."""
        handle = req.body.get("handle")
        if req.opc == C.LDLM_BL_CALLBACK and type(handle) is int:
            self.given_back.add(handle)
            endpoint.context.setdefault("cancels", []).append(handle)
            trio.lowlevel.spawn_system_task(_cancel_later, endpoint, handle)
        return req.reply({})


async def _cancel_later(endpoint: Endpoint, handle: int) -> None:
    try:
        await endpoint.call(C.LDLM_CANCEL, {"handles": [handle]}, timeout=5)
    except (ConnectionLost, RpcTimeout):
        pass


CRED = [OWNER, OWNER, []]


# --------------------------------------------------------------- the cluster

class FuzzCluster:
    """MGS, MDT and OST in one background trio loop, plus the good client's data."""

    def __init__(self, base: Path, **server_kw: Any) -> None:
        kw = {"commit_interval": 3600.0, "ldlm_timeout": 30.0, **server_kw}
        self.mgs = MgsServer(FS, str(base / "mgs"), **kw)
        self.mdt = MdtServer(FS, 0, str(base / "mdt"), ost_count=1, **kw)
        self.ost = OstServer(FS, 0, str(base / "ost"), **kw)
        self.servers: dict[str, TargetServer] = {"mgs": self.mgs, "mdt": self.mdt,
                                                 "ost": self.ost}
        self.nids: dict[str, Nid] = {}
        self.good = Good()
        self.token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self.error: BaseException | None = None
        self.cases = 0

    # -- lifecycle --
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="fuzz-servers", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise FuzzFailure(f"servers did not start: {self.error!r}")
        self.run_in_loop(self._setup)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as e:  # a crash of the loop is what the fuzzer looks for
            self.error = e
            self._ready.set()

    async def _serve(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for kind, server in self.servers.items():
                self.nids[kind] = Nid.parse(await nursery.start(server.run))
            nursery.start_soon(self._hold_sessions)
            self._ready.set()
            await self._stop.wait()
            for session in self.good.sessions.values():
                await session.close()
            for server in self.servers.values():
                server.stop()
            self._session_nursery.cancel_scope.cancel()

    async def _hold_sessions(self) -> None:
        """The nursery the good client's long-lived sessions live in."""
        async with trio.open_nursery() as nursery:
            self._session_nursery = nursery
            await trio.sleep_forever()

    def stop(self) -> None:
        if self.token is not None and self._thread is not None and self._thread.is_alive():
            stop = self._stop
            assert stop is not None
            try:
                trio.from_thread.run_sync(stop.set, trio_token=self.token)
            except trio.RunFinishedError:
                pass
            self._thread.join(30)

    def run_in_loop(self, afn: Callable[[], Awaitable[Any]],
                    timeout: float = CHECK_TIMEOUT) -> Any:
        """Run afn in the servers' loop; FuzzFailure if it takes longer than timeout
        (the servers hang) or the loop has died (they crashed)."""
        if self.error is not None or self._thread is None or not self._thread.is_alive():
            raise FuzzFailure(f"the servers' event loop died: {self.error!r}")
        box: dict[str, Any] = {}

        async def bounded() -> Any:
            with trio.fail_after(timeout):
                return await afn()

        def call() -> None:
            try:
                box["value"] = trio.from_thread.run(bounded, trio_token=self.token)
            except BaseException as e:
                box["error"] = e

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(timeout + 5)
        if t.is_alive():
            raise FuzzFailure(f"the servers' event loop is stuck (no answer in {timeout + 5}s)")
        if "error" in box:
            err = box["error"]
            if isinstance(err, trio.TooSlowError):
                raise FuzzFailure(f"a well-behaved client was not served within {timeout}s")
            if isinstance(err, FuzzFailure):
                raise err
            raise FuzzFailure(f"a well-behaved client failed: {err!r}") from err
        return box.get("value")

    # -- the good client --
    async def session(self, kind: str, uuid: str | None = None,
                      handler: Any = None) -> Session:
        opc = {"mgs": C.MGS_CONNECT, "mdt": C.MDS_CONNECT, "ost": C.OST_CONNECT}[kind]
        return await Session.open(self._session_nursery, [self.nids[kind]],
                                  target=self.servers[kind].name, connect_opc=opc,
                                  client_uuid=uuid, handler=handler, timeout=5)

    async def _setup(self) -> None:
        g = self.good
        for kind in TARGETS:
            g.sessions[kind] = await self.session(kind, GOOD_UUID, g.on_ast)
        mdt, ost = g.sessions["mdt"], g.sessions["ost"]
        g.config = (await g.sessions["mgs"].call(C.MGS_CONFIG_READ)).body
        r = await mdt.call(C.MDS_REINT, {"op": C.REINT_MKDIR, "cred": [0, 0, []],
                                         "parent": 1, "name": b"keep", "mode": 0o700})
        g.dir_ino = r.body["attr"]["ino"]
        await mdt.call(C.MDS_REINT, {"op": C.REINT_SETATTR, "cred": [0, 0, []],
                                     "ino": g.dir_ino, "attrs": {"uid": OWNER, "gid": OWNER}})
        r = await mdt.call(C.MDS_REINT, {
            "op": C.REINT_CREATE, "cred": CRED, "parent": g.dir_ino, "name": b"data",
            "mode": stat.S_IFREG | 0o600, "open_flags": 2})
        g.file_ino, g.open_handle = r.body["attr"]["ino"], r.body["handle"]
        g.xids.append(mdt.endpoint._next_xid - 1)
        await mdt.call(C.MDS_REINT, {"op": C.REINT_SETXATTR, "cred": CRED,
                                     "ino": g.file_ino, "name": GOOD_XATTR[0],
                                     "value": GOOD_XATTR[1]})
        g.xids.append(mdt.endpoint._next_xid - 1)
        r = await mdt.call(C.LDLM_ENQUEUE, {"res": [g.file_ino, 0, 0, 0],
                                            "type": int(LockType.IBITS), "mode": int(Mode.PR),
                                            "policy": int(IBITS_FULL), "handle": 1})
        g.mdt_lock = r.body["handle"]
        await ost.endpoint.call(C.OST_WRITE, {"oid": GOOD_OID, "offset": 0}, bulk=GOOD_DATA)
        await ost.call(C.OST_SYNC)
        r = await ost.call(C.LDLM_ENQUEUE, {"res": [GOOD_OID, 0, 0, 0],
                                            "type": int(LockType.EXTENT), "mode": int(Mode.PR),
                                            "policy": [0, OBJECT_EOF], "handle": 1})
        g.ost_lock = r.body["handle"]

    # -- the check after every case --
    def check(self, kinds: tuple[str, ...] = TARGETS) -> None:
        self.run_in_loop(lambda: self._check(kinds))

    async def _check(self, kinds: tuple[str, ...]) -> None:
        g = self.good
        for kind in kinds:
            server = self.servers[kind]
            export = server.exports.get(GOOD_UUID)
            if export is None or export.handle != g.sessions[kind].server["handle"] \
                    or export.endpoint.closed or g.sessions[kind].endpoint.closed:
                raise FuzzFailure(f"{kind}: the good client lost its export or connection")
            s = await self.session(kind)
            try:
                await getattr(self, f"_check_{kind}")(s)
            except RpcError as e:
                raise FuzzFailure(f"{kind}: a good request failed: {e}") from e
            finally:
                await s.close()
        mdt_ns, ost_ns = self.mdt.ldlm.namespace, self.ost.ldlm.namespace
        for ns, handle in ((mdt_ns, g.mdt_lock), (ost_ns, g.ost_lock)):
            lock = ns.lock(handle)
            held = lock is not None and lock.owner == GOOD_UUID
            if not held and handle not in g.given_back:
                raise FuzzFailure(f"the good client's lock {handle:#x} went without a "
                                  "callback")

    async def _check_mgs(self, s: Session) -> None:
        if (await s.call(C.MGS_CONFIG_READ)).body != self.good.config:
            raise FuzzFailure("the MGS configuration changed")

    async def _check_mdt(self, s: Session) -> None:
        g = self.good
        r = await s.call(C.MDS_GETATTR_NAME, {"cred": CRED, "parent": g.dir_ino,
                                              "name": b"data"})
        attr = r.body["attr"]
        if (attr["ino"], attr["uid"], attr["mode"]) != (g.file_ino, OWNER,
                                                         stat.S_IFREG | 0o600):
            raise FuzzFailure(f"the good file changed: {attr}")
        r = await s.call(C.MDS_GETXATTR, {"cred": CRED, "ino": g.file_ino,
                                          "name": GOOD_XATTR[0]})
        if r.body["value"] != GOOD_XATTR[1]:
            raise FuzzFailure("the good file's xattr changed")
        r = await s.call(C.MDS_READPAGE, {"cred": CRED, "ino": g.dir_ino})
        if [e[0] for e in r.body["entries"]] != [b"data"]:
            raise FuzzFailure(f"the good directory changed: {r.body['entries']}")
        store = self.mdt.store
        if store is None or not store.handle_open(g.open_handle) \
                or g.open_handle not in self.mdt.open_handles.get(GOOD_UUID, ()):
            raise FuzzFailure("the good client's open handle was closed")
        root = await s.call(C.MDS_GETATTR, {"ino": 1})
        if not stat.S_ISDIR(root.body["attr"]["mode"]):
            raise FuzzFailure("the root is not a directory")

    async def _check_ost(self, s: Session) -> None:
        r = await s.call(C.OST_READ, {"oid": GOOD_OID, "offset": 0, "length": len(GOOD_DATA)})
        if bytes(r.bulk or b"") != GOOD_DATA:
            raise FuzzFailure("the good object's data changed")
        await s.endpoint.call(C.OST_WRITE, {"oid": GOOD_OID + 1, "offset": 0}, bulk=b"x" * 100)
        r = await s.call(C.OST_GETATTR, {"oid": GOOD_OID + 1})
        if r.body["size"] < 100:
            raise FuzzFailure("a good write was lost")

    # -- hostile cases --
    def hostile(self, kind: str, case: HostileCase) -> None:
        """Send one case on a fresh raw connection to `kind`, read what comes back for a
        moment, close. Never hangs: every socket call has a timeout."""
        self.cases += 1
        nid = self.nids[kind]
        with socket.create_connection((nid.host, nid.port), timeout=5) as sock:
            sock.settimeout(2)
            try:
                if case.connect:
                    sock.sendall(_connect_frame(kind, self.servers[kind].name, case.uuid))
                for chunk in case.render(self):
                    sock.sendall(chunk)
                if case.half_close:
                    sock.shutdown(socket.SHUT_WR)
                _drain(sock, case.linger)
            except OSError:
                pass  # the server may close on us: that is its right


def _drain(sock: socket.socket, linger: float) -> None:
    sock.settimeout(linger)
    end = time.monotonic() + 1.0
    try:
        while time.monotonic() < end and sock.recv(1 << 16):
            pass
    except OSError:
        pass


CONNECT_OPC = {"mgs": C.MGS_CONNECT, "mdt": C.MDS_CONNECT, "ost": C.OST_CONNECT}


def _connect_frame(kind: str, target: str, uuid: str) -> bytes:
    msg = Message.request(CONNECT_OPC[kind], 1 << 62,
                          {"uuid": uuid, "target": target, "release": "2.0", "flags": 0})
    return Codec20().encode(msg)


# --------------------------------------------------------------- strategies

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


@st.composite
def hostile_cases(draw: st.DrawFn, kind: str) -> HostileCase:
    fs = draw(st.lists(frames(kind), min_size=1, max_size=6))
    return HostileCase(
        connect=draw(st.booleans()) or draw(st.booleans()),
        uuid=draw(st.sampled_from(["fuzz-hostile", "fuzz-hostile-2", ""])),
        frames=fs, half_close=draw(st.booleans()),
        linger=draw(st.sampled_from([0.01, 0.02, 0.05])),
        truncate_last=draw(st.one_of(st.just(0), st.integers(1, 64))))
