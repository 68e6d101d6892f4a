"""ost.py - an object storage target: objects as files, BRW, punch, destroy.

Data goes to the object file as soon as a write arrives; a commit fsyncs every
object written since the last one (in a worker thread, off the event loop) and
then records the transno as committed. Replies carry transno and
last_committed like the MDT's, so clients know which written pages could still
be lost to a crash.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import trio

from ..params import ParamError, ParamTree
from ..protocol import constants as C
from ..protocol.errors import AuthError
from ..protocol.ldlm import Extent, LockType, ResId
from ..protocol.message import Message
from ..protocol.nid import Nid
from ..protocol.session import Session
from .mgs import target_name
from .object_store import ObjectStore
from .target import Export, ServiceError, TargetServer, body_field
from .undo_log import UndoLog

log = logging.getLogger(__name__)

THREAD_IO_MIN = 64 << 10  # below this, a syscall is cheaper than a thread hop
ORPHAN_KEEP_MAX = 4096  # object ids one orphan cleanup request may ask to keep


class OstServer(TargetServer):
    kind = "ost"
    connect_opcodes = (C.OST_CONNECT,)
    disconnect_opcodes = (C.OST_DISCONNECT,)
    lock_types = frozenset({LockType.EXTENT})
    inline_opcodes = frozenset({C.OBD_PING, C.OST_GETATTR, C.OST_PUNCH, C.OST_DESTROY,
                                C.OST_STATFS})

    def __init__(self, fsname: str, index: int, data_dir: str, *, mgs: list[Nid] | None = None,
                 failover_nids: list[str] | None = None, recovery_window: float = 15.0,
                 **kw: Any) -> None:
        super().__init__(target_name(fsname, "ost", index), data_dir,
                         recovery_window=recovery_window, fsname=fsname, **kw)
        self.undo: UndoLog | None = None
        self.fsname = fsname
        self.index = index
        self.mgs = mgs or []
        self.failover_nids = failover_nids or []
        self.objects: ObjectStore | None = None
        self._last_transno = 0
        self._last_committed = 0
        self.handlers = {
            C.OST_WRITE: self.write, C.OST_READ: self.read, C.OST_PUNCH: self.punch,
            C.OST_GETATTR: self.getattr, C.OST_DESTROY: self.destroy,
            C.OST_CREATE: self.delete_orphans, C.OST_STATFS: self.statfs, C.OST_SYNC: self.sync,
        }

    @property
    def last_transno(self) -> int:
        return self._last_transno

    @property
    def last_committed(self) -> int:
        return self._last_committed

    def open_storage(self) -> None:
        super().open_storage()
        self.objects = ObjectStore(self.storage.path)
        self.undo = UndoLog(self.storage.path)
        undone = self.undo.rollback(self.objects)
        if undone:
            self.count("replay_barrier_undone", undone)
        rcvd = self.storage.read_json("last_rcvd", {}) or {}
        self._last_transno = self._last_committed = int(rcvd.get("last_committed", 0))

    def close_storage(self) -> None:
        if self.objects is not None:
            self.objects.close()
        super().close_storage()

    def _transno(self, req: Message) -> int:
        """A new transno; a replayed update keeps its first one (recovery runs replays
        in transno order, so they leave no gap behind)."""
        if req.flags & C.MSG_REPLAY and req.transno:
            self._last_transno = max(self._last_transno, req.transno)
            return req.transno
        self._last_transno += 1
        return self._last_transno

    async def do_commit(self) -> None:
        assert self.objects is not None
        target = self._last_transno
        oids = self.objects.take_dirty()
        fds = [self.objects.fd(oid, create=True) for oid in oids]
        try:
            await trio.to_thread.run_sync(self._sync_fds, fds)
        finally:
            for oid in oids:
                self.objects.unpin(oid)
        self.storage.write_atomic("last_rcvd", f'{{"last_committed": {target}}}'.encode())
        self._last_committed = target

    def _commit_now(self) -> None:
        """A commit without leaving the event loop (lctl's replay_barrier=1: nothing may
        slip between the commit and the barrier)."""
        assert self.objects is not None
        target = self._last_transno
        oids = self.objects.take_dirty()
        try:
            self._sync_fds([self.objects.fd(oid, create=True) for oid in oids])
        finally:
            for oid in oids:
                self.objects.unpin(oid)
        self.storage.write_atomic("last_rcvd", f'{{"last_committed": {target}}}'.encode())
        self._last_committed = target

    @staticmethod
    def _sync_fds(fds: list[int | None]) -> None:
        for fd in fds:
            if fd is not None:
                os.fsync(fd)

    def needs_commit(self) -> bool:
        """Under a replay barrier nothing is made durable."""
        return super().needs_commit() and not (self.undo is not None and self.undo.active)

    async def started(self, nursery: trio.Nursery) -> None:
        assert self.recovery is not None
        self.recovery.start(nursery, trio.current_time() + self.recovery.window)
        if self.mgs:
            await register_with_mgs(nursery, self.mgs, self.fsname, self.name, "ost", self.index,
                                    self.nid, self.failover_nids, self.storage.instance,
                                    key=self.auth_key)

    def _oid(self, body: dict[str, Any]) -> int:
        oid = body_field(body, "oid", int)
        if not 0 <= oid < (1 << 63):
            raise ServiceError(errno.EINVAL, "object id out of range")
        return oid

    @staticmethod
    def _range(offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > (1 << 62):
            raise ServiceError(errno.EINVAL, "offset/length out of range")
        if length > C.BRW_MAX:
            raise ServiceError(errno.EMSGSIZE, f"bulk of {length} bytes exceeds {C.BRW_MAX}")

    @staticmethod
    def _within_max(end: int) -> None:
        """No object grows past the maximum file size (the client checks first; this is
        the defence, and the same errno the store would give)."""
        if end > C.MAX_FILE_SIZE:
            raise ServiceError(errno.EFBIG, f"object size {end} beyond {C.MAX_FILE_SIZE}")

    def _prolong(self, export: Export, oid: int, offset: int, length: int) -> None:
        """I/O under a lock being called back keeps the holder from eviction
        (ldlm_lock_prolong_one): the client is busy flushing under it."""
        self.ldlm.prolong(export, ResId(oid), Extent(offset, offset + max(length, 1) - 1))

    async def write(self, export: Export, req: Message) -> tuple[int, dict[str, Any]]:
        assert self.objects is not None
        oid = self._oid(req.body)
        offset = body_field(req.body, "offset", int)
        data = req.bulk if req.bulk is not None else b""
        self._range(offset, len(data))
        self._within_max(offset + len(data))
        self._prolong(export, oid, offset, len(data))
        if self.undo is not None and self.undo.active:
            self.undo.before_write(self.objects, oid, offset, len(data))
        fd = self.objects.fd(oid, create=True)
        assert fd is not None
        if len(data) >= THREAD_IO_MIN:
            self.objects.pin(oid)
            try:
                await trio.to_thread.run_sync(os.pwrite, fd, data, offset)
            finally:
                self.objects.unpin(oid)
        else:
            os.pwrite(fd, data, offset)
        self.objects.mark_dirty(oid)
        self.count("write_bytes", len(data))
        return self._transno(req), {}

    async def read(self, export: Export, req: Message) -> tuple[int, dict[str, Any], bytes]:
        assert self.objects is not None
        oid = self._oid(req.body)
        offset = body_field(req.body, "offset", int)
        length = body_field(req.body, "length", int)
        self._range(offset, length)
        self._prolong(export, oid, offset, length)
        fd = self.objects.fd(oid, create=False)
        if fd is None:
            return 0, {}, b""
        if length >= THREAD_IO_MIN:
            self.objects.pin(oid)
            try:
                data = await trio.to_thread.run_sync(os.pread, fd, length, offset)
            finally:
                self.objects.unpin(oid)
        else:
            data = os.pread(fd, length, offset)
        self.count("read_bytes", len(data))
        return 0, {}, data

    async def punch(self, export: Export, req: Message) -> tuple[int, dict[str, Any]]:
        assert self.objects is not None
        oid = self._oid(req.body)
        size = body_field(req.body, "size", int)
        self._range(size, 0)
        self._within_max(size)
        if self.undo is not None and self.undo.active:
            self.undo.before_punch(self.objects, oid, size)
        self.objects.punch(oid, size)
        return self._transno(req), {}

    async def getattr(self, export: Export, req: Message) -> dict[str, Any]:
        assert self.objects is not None
        size = self.objects.size(self._oid(req.body))
        return {"size": size}

    async def destroy(self, export: Export, req: Message) -> tuple[int, dict[str, Any]]:
        assert self.objects is not None
        oids = body_field(req.body, "oids", list)
        if len(oids) > 4096 or not all(type(o) is int for o in oids):
            raise ServiceError(errno.EINVAL, "bad object list")
        for oid in oids:
            oid = self._oid({"oid": oid})
            if self.undo is not None and self.undo.active:
                self.undo.before_destroy(self.objects, oid)
            self.objects.destroy(oid)
        return self._transno(req), {}

    async def delete_orphans(self, export: Export, req: Message) -> tuple[int, dict[str, Any]]:
        """OST_CREATE with "delorphan" (as Lustre's OBD_FL_DELORPHAN): the MDT lost the
        creations of ids [lo, hi) with a crash; destroy the objects in that range but
        those it still names ("keep"). Objects are otherwise created by their first
        write, so this is the opcode's only use. Only the MDT's own link may ask."""
        assert self.objects is not None
        fsname = self.name.rsplit("-", 1)[0]
        if not (export.uuid.startswith(f"{fsname}-MDT") and export.uuid.endswith("-osp")):
            raise ServiceError(errno.EPERM, "orphan cleanup is for the MDT")
        span = body_field(req.body, "delorphan", list)
        keep = body_field(req.body, "keep", list)
        if (len(span) != 2 or not all(type(x) is int for x in span)
                or not 0 <= span[0] <= span[1] <= (1 << 63)):
            raise ServiceError(errno.EINVAL, "delorphan is [lo, hi), 0 <= lo <= hi <= 2^63")
        if len(keep) > ORPHAN_KEEP_MAX or not all(type(o) is int for o in keep):
            raise ServiceError(errno.EINVAL, f"keep is at most {ORPHAN_KEEP_MAX} object ids")
        kept = set(keep)
        found = await trio.to_thread.run_sync(self.objects.oids_in, span[0], span[1])
        destroyed = 0
        for oid in found:
            if oid in kept:
                continue
            if self.undo is not None and self.undo.active:
                self.undo.before_destroy(self.objects, oid)
            self.objects.destroy(oid)
            destroyed += 1
        if destroyed:
            log.info("%s: destroyed %d orphan objects in [%d, %d)", self.name, destroyed,
                     span[0], span[1])
        self.count("orphan_objects_destroyed", destroyed)
        return self._transno(req), {"destroyed": destroyed}

    async def statfs(self, export: Export, req: Message) -> dict[str, Any]:
        st = os.statvfs(self.storage.path)
        return {"bsize": st.f_frsize, "blocks": st.f_blocks, "bfree": st.f_bfree,
                "bavail": st.f_bavail, "files": st.f_files, "ffree": st.f_ffree,
                "maxbytes": C.MAX_FILE_SIZE}

    async def sync(self, export: Export, req: Message) -> dict[str, Any]:
        await self.commit()
        return {}

    def _set_replay_barrier(self, text: str) -> None:
        """1: everything so far is made durable, then what is written is undone at the
        next start (servers/undo_log.py), so clients must replay it; 0: lift it."""
        if text.strip() not in ("0", "1") or self.undo is None:
            raise ParamError(errno.EINVAL, "replay_barrier is 1 (set) or 0 (lift)")
        if text.strip() == "1":
            self._commit_now()
            self.undo.start()
            log.warning("%s: replay barrier set: updates from now on are undone at the next "
                        "start (transno %d)", self.name, self._last_committed)
        else:
            self.undo.stop()

    def params(self) -> ParamTree:
        fresh = self._params is None
        tree = super().params()
        if fresh:
            base = f"obdfilter.{self.name}."
            tree.add(base + "replay_barrier", lambda: int(self.undo is not None
                                                          and self.undo.active),
                     self._set_replay_barrier)
        return tree


async def register_with_mgs(nursery: trio.Nursery, mgs: list[Nid], fsname: str, name: str,
                            kind: str, index: int, nid: str, failover_nids: list[str],
                            instance: int, *, key: bytes | None = None) -> None:
    """Tell the MGS this target now serves at nid (retrying while it is unreachable;
    an AuthError, a wrong key, is final: the server does not start)."""
    delay = 0.2
    while True:
        try:
            session = await Session.open(nursery, mgs, target=f"{fsname}-MGS",
                                         connect_opc=C.MGS_CONNECT, client_uuid=name,
                                         key=key)
            try:
                await session.call(C.MGS_TARGET_REG, {
                    "name": name, "kind": kind, "index": index, "nid": nid,
                    "failover_nids": failover_nids, "instance": instance})
            finally:
                await session.close()
            return
        except AuthError:
            raise
        except Exception as e:  # the MGS may start later; keep trying, loudly
            log.warning("%s: cannot register with the MGS (%s); retrying", name, e)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)
