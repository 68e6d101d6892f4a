"""fuzz/cluster.py - real MGS, MDT and OST servers for hostile clients (no hypothesis here).

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

The cases themselves are drawn by mlustre/fuzz/cases.py (hypothesis, only installed with
the test extras) and rendered to bytes by mlustre/fuzz/frames.py. Used by
tests/test_fuzz_servers.py (a short campaign) and scripts/fuzz (`python -m mlustre.fuzz`,
a long one).
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
from typing import Any, Protocol

import trio

from ..protocol import constants as C
from ..protocol.codec import Codec20
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


class Hostile(Protocol):
    """What the cluster needs of a hostile case (fuzz/frames.py builds them): whether to
    connect first and as whom, its bytes against this cluster, how to end it."""

    connect: bool
    uuid: str
    half_close: bool
    linger: float

    def render(self, cluster: FuzzCluster) -> list[bytes]: ...


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
    def hostile(self, kind: str, case: Hostile) -> None:
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
