"""server.py - the metadata target: namespace, attributes, layouts, opens.

The POSIX logic and its storage live in `MdtStore` (SQLite, no I/O besides
the database); this layer checks request fields, maps opcodes to the store and
keeps the periodic commit going. Its components come in by the constructor: the
recovery window (TargetServer's), and the OSP (mdt_osp.py) that destroys the OST
objects of removed files once their removal is committed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from typing import Any

import trio

from ...params import ParamError, ParamTree
from ...protocol import constants as C
from ...protocol import dialect
from ...protocol.errors import ConnectionLost, ErrnoError
from ...protocol.ldlm import NAME_BITS, IBits, LockType, ResId, inode_res
from ...protocol.message import Message
from ...protocol.nid import Nid
from ..layout_xattr import LOV_XATTR, format_layout, parse_layout
from ..ldlm_service import CANCEL_MAX
from ..mgs import read_config, target_name
from ..ost import register_with_mgs
from ..reply_log import SavedReply
from ..squash import RootSquash, parse_nids, parse_squash
from ..target import DEFERRED, Export, FieldError, ServiceError, TargetServer, body_field
from .fields import (
    ATTRS,
    ID_MAX,
    MAX_NAME,
    MAX_XATTR_VALUE,
    MODE_MAX,
    RDEV_MAX,
    READDIR_MAX,
    UPDATE,
    _cred,
    _ino,
    _int,
    _name,
)
from .intents import IntentLocks
from .osp import DESTROY_BATCH, Osp, _orphan_requests  # noqa: F401  (tests import it here)
from .store import MdtError, MdtStore, ReplayedUpdate

log = logging.getLogger(__name__)


class MdtServer(TargetServer):
    kind = "mdt"
    connect_opcodes = (C.MDS_CONNECT,)
    disconnect_opcodes = (C.MDS_DISCONNECT,)
    lock_types = frozenset({LockType.IBITS})
    reconstructable_opcodes = frozenset({C.MDS_REINT, C.MDS_CLOSE})
    inline_opcodes = frozenset({
        C.OBD_PING, C.MDS_GET_ROOT, C.MDS_GETATTR, C.MDS_GETATTR_NAME, C.MDS_READLINK,
        C.MDS_READPAGE, C.MDS_GETXATTR, C.MDS_STATFS, C.MDS_ACCESS, C.MDS_CLOSE, C.MDS_REINT,
        C.MDS_FID2PATH})

    def __init__(self, fsname: str, index: int, data_dir: str, *, mgs: list[Nid] | None = None,
                 failover_nids: list[str] | None = None, ost_count: int | None = None,
                 recovery_window: float = 15.0, root_squash: str | None = None,
                 nosquash_nids: str | None = None, **kw: Any) -> None:
        super().__init__(target_name(fsname, "mdt", index), data_dir,
                         recovery_window=recovery_window, fsname=fsname, **kw)
        # Given on the command line (None: as kept in the storage, else off).
        self._squash_args = (root_squash, nosquash_nids)
        self.squash = RootSquash()
        # Open handles by the client that opened them: kept across its reconnects, closed
        # when it leaves or is evicted; nobody else may close them.
        self.open_handles: dict[str, set[int]] = {}
        self._replayed_opens: dict[tuple[str, int], list[int]] = {}  # (client, ino) -> handles
        self.fsname = fsname
        self.index = index
        self.mgs = mgs or []
        self.failover_nids = failover_nids or []
        self.ost_count = ost_count
        self.store: MdtStore | None = None
        self.osp = Osp(self.name, fsname, self.mgs, auth_key=self.auth_key, stats=self.stats,
                       want_commit=self.want_commit)
        self._nursery: trio.Nursery | None = None
        # After a start, clients re-open their open files (open replay) until this time;
        # unlinked inodes are destroyed only then, so that open-unlinked files survive.
        self.reopen_until = 0.0
        self.size_known_after = float("inf")  # (set when the target starts)
        self.intents = IntentLocks(
            self.ldlm, lambda: self.store,
            lambda uuid: self.open_handles.get(uuid, frozenset()),
            lambda: not self.recovering and trio.current_time() >= self.size_known_after)
        self.handlers = {
            C.MDS_GET_ROOT: self.get_root, C.MDS_GETATTR: self.getattr,
            C.MDS_GETATTR_NAME: self.lookup, C.MDS_READLINK: self.readlink,
            C.MDS_READPAGE: self.readdir, C.MDS_GETXATTR: self.getxattr,
            C.MDS_STATFS: self.statfs, C.MDS_ACCESS: self.access, C.MDS_SYNC: self.sync,
            C.MDS_CLOSE: self.close, C.MDS_REINT: self.reint, C.MDS_FID2PATH: self.fid2path,
        }
        self.reint_ops = {
            C.REINT_CREATE: self.r_create, C.REINT_MKDIR: self.r_mkdir,
            C.REINT_SYMLINK: self.r_symlink, C.REINT_LINK: self.r_link,
            C.REINT_UNLINK: self.r_unlink, C.REINT_RMDIR: self.r_rmdir,
            C.REINT_RENAME: self.r_rename, C.REINT_SETATTR: self.r_setattr,
            C.REINT_OPEN: self.r_open, C.REINT_SETXATTR: self.r_setxattr,
            C.REINT_REMOVEXATTR: self.r_removexattr, C.REINT_WRITE_UPDATE: self.r_write_update,
            C.REINT_SETLAYOUT: self.r_setlayout, C.REINT_ATIME: self.r_atime,
        }

    # -- storage and commits --
    def open_storage(self) -> None:
        super().open_storage()
        cfg = self.storage.read_json("mdt.json", {}) or {}
        if self.ost_count is None:
            self.ost_count = int(cfg.get("ost_count", 1))
        elif cfg and int(cfg.get("ost_count", self.ost_count)) != self.ost_count:
            log.info("%s: OST count changes from %s to %d", self.name, cfg.get("ost_count"),
                     self.ost_count)
        self.storage.write_atomic("mdt.json", f'{{"ost_count": {self.ost_count}}}'.encode())
        self.squash = RootSquash.from_dict(self.storage.read_json("squash.json", {}) or {})
        squash, nids = self._squash_args
        if squash is not None:
            self.squash.uid, self.squash.gid = parse_squash(squash)
        if nids is not None:
            self.squash.nosquash = parse_nids(nids)
        self._save_squash()
        self.store = MdtStore(str(self.storage.path / "mdt.sqlite"), ost_count=self.ost_count,
                              default_stripe_count=int(cfg.get("stripe_count", 1)),
                              release=self.release, clock=time.time_ns)
        for uuid, xid, saved in self.store.saved_replies():
            self.reply_log.record(uuid, xid, saved)
        self.store.commit()

    # -- the release's dialect (protocol/dialect.py) --
    def check_request(self, export: Export, req: Message) -> None:
        try:
            req.body = dialect.normalize_request(self.release, req.opc, req.body)
        except dialect.DialectError as e:
            raise ServiceError(errno.EPROTO, str(e)) from None
        if self.squash.enabled and isinstance(req.body, dict) and "cred" in req.body:
            cred = self.squash.apply(req.body["cred"], export.nid)
            if cred is not req.body["cred"]:
                req.body = {**req.body, "cred": cred}
                self.count("root_squashed")

    # -- replay of updates a crash lost (MSG_REPLAY) --
    def replay_done(self, req: Message) -> Message | None:
        """A replayed update numbered at or below what the store holds survived (its
        transaction reached the disk): acknowledged, not run again. (Its reply may have
        left the reply log's window.)"""
        store = self.store
        if store is not None and 0 < req.transno <= store.last_transno:
            return req.reply({}, transno=req.transno, last_committed=self.last_committed)
        return None

    def _replayed_update(self, req: Message) -> ReplayedUpdate | None:
        """An update a client replays because a crash lost it (dispatch runs it with
        run_replay), with what its first reply said: the store gives it the same transno,
        inode number, generation and OST objects again.  An open replay is a new open."""
        if not (req.flags & C.MSG_REPLAY and req.transno) or self.after_update_replay(req):
            return None
        attr = req.body.get("replay_attr") if isinstance(req.body, dict) else None
        return ReplayedUpdate(req.transno, attr if isinstance(attr, dict) else {})

    def after_update_replay(self, req: Message) -> bool:
        """Open replays are part of recovery, but each takes a transno: after the
        updates replayed in transno order."""
        return isinstance(req.body, dict) and req.body.get("replay") is True

    def client_left(self, uuid: str) -> None:
        self._close_handles_of(uuid)
        super().client_left(uuid)

    # -- root squash (servers/squash.py), kept in the storage across restarts --
    def _save_squash(self) -> None:
        self.storage.write_atomic("squash.json", json.dumps(self.squash.to_dict()).encode())

    def _set_replay_barrier(self, text: str) -> None:
        """1: everything so far is made durable, then nothing more is committed, so the
        next crash loses every later update (which clients must replay); 0: lift it."""
        if text.strip() not in ("0", "1") or self.store is None:
            raise ParamError(errno.EINVAL, "replay_barrier is 1 (set) or 0 (lift)")
        if text.strip() == "1":
            self.store.commit()
            self.store.replay_barrier = True
            log.warning("%s: replay barrier set: nothing is committed from now on "
                        "(transno %d)", self.name, self.store.last_committed)
        else:
            self.store.replay_barrier = False
            self.store.commit()

    def _set_root_squash(self, text: str) -> None:
        try:
            self.squash.uid, self.squash.gid = parse_squash(text)
        except ValueError as e:
            raise ParamError(errno.EINVAL, str(e)) from None
        self._save_squash()

    def _set_nosquash_nids(self, text: str) -> None:
        try:
            self.squash.nosquash = parse_nids(text)
        except ValueError as e:
            raise ParamError(errno.EINVAL, str(e)) from None
        self._save_squash()

    def params(self) -> ParamTree:
        fresh = self._params is None
        tree = super().params()
        if fresh:
            base = f"mdt.{self.name}."
            tree.add(base + "root_squash", lambda: self.squash.to_dict()["root_squash"],
                     self._set_root_squash)
            tree.add(base + "replay_barrier",
                     lambda: int(self.store is not None and self.store.replay_barrier),
                     self._set_replay_barrier)
            tree.add(base + "nosquash_nids",
                     lambda: self.squash.to_dict()["nosquash_nids"] or "NONE",
                     self._set_nosquash_nids)
        return tree

    def _in_dialect(self, reply: Message) -> Message:
        """A 2.0 server names every inode it reports by FID too (1.8: ino and gen)."""
        if self.release != "1.8" and self.store is not None and reply.body:
            dialect.add_fids(reply.body, self.store.created_under_18)
        return reply

    def make_reply(self, req: Message, result: Any) -> Message:
        return self._in_dialect(super().make_reply(req, result))

    def _reconstructed(self, req: Message, saved: SavedReply) -> Message:
        return self._in_dialect(super()._reconstructed(req, saved))

    def close_storage(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        super().close_storage()

    @property
    def last_transno(self) -> int:
        return self.store.last_transno if self.store else 0

    @property
    def last_committed(self) -> int:
        return self.store.last_committed if self.store else 0

    def needs_commit(self) -> bool:
        # Destroy-log cleanup changes the database without a transno.
        return super().needs_commit() or bool(
            self.store and (self.store.in_transaction or self.store.unsynced))

    async def do_commit(self) -> None:
        store = self.store
        assert store is not None
        ticket = store.begin_commit()
        # Taken right after the COMMIT, before any other update: every row listed is in
        # what the fsync makes durable, so destroying its objects (once it is done) can
        # never outrun the unlink that logged it (see Osp.committed).
        destroys = None if self.osp.busy else store.pending_destroys(DESTROY_BATCH)
        # The fsync runs in a worker thread without the connection (CommitTicket.sync),
        # so requests go on using the store meanwhile.
        await trio.to_thread.run_sync(ticket.sync)
        store.end_commit(ticket)
        self.osp.committed(destroys)

    async def started(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        assert self.recovery is not None
        self.reopen_until = trio.current_time() + self.recovery.window
        # Sizes on the MDT wait for the open replays of the clients of the last run (their
        # write handles are unknown until then); with no such client, none can come.
        self.size_known_after = self.reopen_until if self.recovery.core is not None else 0.0
        self.recovery.start(nursery, self.reopen_until)
        nursery.start_soon(self._orphans_after_reopen)
        if self.mgs:
            await register_with_mgs(nursery, self.mgs, self.fsname, self.name, "mdt", self.index,
                                    self.nid, self.failover_nids, self.storage.instance,
                                    key=self.auth_key)
            await self._apply_fs_defaults()
            assert self.store is not None
            self.osp.start(nursery, self.store, self.wait_recovered)

    async def _apply_fs_defaults(self) -> None:
        """The filesystem's default striping lives in the MGS configuration."""
        assert self._nursery is not None and self.store is not None
        try:
            cfg = await read_config(self._nursery, self.mgs, self.fsname, self.name,
                                    self.auth_key)
        except Exception as e:  # keep the defaults of the last run
            log.warning("%s: cannot read the filesystem defaults: %s", self.name, e)
            return
        count, size = cfg.get("stripe_count"), cfg.get("stripe_size")
        if type(count) is int and (count == -1 or count >= 1):
            self.store.default_stripe_count = count
        if type(size) is int and size > 0 and size % (64 << 10) == 0:
            self.store.default_stripe_size = size

    async def _orphans_after_reopen(self) -> None:
        """Unlinked inodes left by the last run are destroyed once clients have had the
        recovery window to re-open the ones they still hold open."""
        await trio.sleep_until(self.reopen_until)
        await self.wait_recovered()
        assert self.store is not None
        # Opens that update replays made again and no open replay took over: the file
        # was closed before the crash (the close is not replayed).
        for (uuid, _), handles in sorted(self._replayed_opens.items()):
            for handle in handles:
                # (A writer's size after it is unknown: the client closed it before the
                # crash, with a report the crash may have lost.)
                self._close_quietly(uuid, handle, clean=False)
                self.count("replayed_opens_closed")
        self._replayed_opens.clear()
        orphans = self.store.cleanup_orphans()
        self.count("orphan_cleanups")
        if orphans:
            log.info("%s: removed %d orphan inodes left by the last run", self.name, orphans)
        self.want_commit()

    def persist_reply(self, uuid: str, xid: int, saved: SavedReply,
                      forgotten: int | None) -> None:
        if self.store is not None:
            self.store.save_reply(uuid, xid, saved, forgotten)
            self.store.settle()  # the update and its reply now survive a kill -9

    # -- request handlers --
    def _store(self) -> MdtStore:
        if self.store is None:
            raise ServiceError(errno.ENODEV, "target is stopping")
        return self.store


    async def get_root(self, export: Export, req: Message) -> dict[str, Any]:
        return {"attr": self._store().getattr(1)}

    async def getattr(self, export: Export, req: Message) -> Any:
        ino = _ino(req.body)
        if self._after_writeback(export, req, [ino], self.getattr):
            return DEFERRED
        return self.intents.with_intent(export, req.body, {"attr": self._store().getattr(ino)})

    async def lookup(self, export: Export, req: Message) -> Any:
        b = req.body
        attr = self._store().lookup(_cred(b), _ino(b, "parent"), _name(b))
        if self._after_writeback(export, req, [attr["ino"]], self.lookup):
            return DEFERRED  # (looked up again once the holder flushed)
        return self.intents.with_intent(export, b, {"attr": attr})

    def _after_writeback(self, export: Export, req: Message, inos: list[int],
                         handler: Any) -> bool:
        """Do other clients hold write-back locks on `inos` (md_writeback.py)? Then
        the request waits, in a task of its own, until they flushed what they changed
        and gave the locks back, and runs again (True: the reply is that task's)."""
        wanted = self.intents.writeback_held(export, inos)
        if not wanted:
            return False
        assert self._nursery is not None
        self.count("writeback_recalls")
        self._nursery.start_soon(self._reply_after_writeback, export, req, handler, wanted)
        return True

    async def _reply_after_writeback(self, export: Export, req: Message, handler: Any,
                                     wanted: list[tuple[ResId, int]]) -> None:
        try:
            self.ldlm.unlock_local(await self.ldlm.lock_local(wanted))
            if self.exports.get(export.uuid) is not export:
                return  # (evicted or gone meanwhile: nobody to answer)
            result = await handler(export, req)
            if result is DEFERRED:
                return  # (another write-back lock meanwhile: that task answers)
            reply = self.make_reply(req, result)
        except ErrnoError as e:
            reply = self.error_reply(req, e)
        await self._send_deferred(export, req, reply)

    async def _send_deferred(self, export: Export, req: Message, reply: Message) -> None:
        """The reply of a request that waited in a task of its own (DEFERRED)."""
        out = await self.finish(export, req, reply)
        if out is None:
            return
        try:
            await export.endpoint.send_reply(out)
        except ConnectionLost as e:
            log.info("%s: reply to %s lost: %s", self.name, export.uuid, e)

    async def readlink(self, export: Export, req: Message) -> dict[str, Any]:
        return {"target": self._store().readlink(_ino(req.body))}

    async def readdir(self, export: Export, req: Message) -> Any:
        b = req.body
        count = min(max(_int(b, "count", 256), 1), READDIR_MAX)
        ino = _ino(b)
        entries = self._store().readdir(_cred(b), ino, _int(b, "cookie", 0), count)
        if self._after_writeback(export, req, [a["ino"] for _, a, _ in entries],
                                 self.readdir):
            return DEFERRED
        body: dict[str, Any] = {"entries": [[n, a, c] for n, a, c in entries],
                                "end": len(entries) < count}
        locks = b.get("locks")
        if type(locks) is dict:
            self.intents.readdir_locks(export, ino, body, locks)
        return body

    async def getxattr(self, export: Export, req: Message) -> dict[str, Any]:
        b = req.body
        store = self._store()
        name = body_field(b, "name", bytes, default=None)
        if name is None:
            return {"names": store.listxattr(_cred(b), _ino(b))}
        if len(name) > MAX_NAME:
            raise ServiceError(errno.ERANGE, "xattr name longer than 255 bytes")
        if name == LOV_XATTR:
            ino = _ino(b)
            attr = store.getattr(ino)
            layout = attr["layout"] or store.get_dir_layout(ino)
            if layout is None:
                raise ServiceError(errno.ENODATA)
            return {"value": format_layout(layout)}
        return {"value": store.getxattr(_cred(b), _ino(b), name)}

    async def statfs(self, export: Export, req: Message) -> dict[str, Any]:
        return {**self._store().statfs(), "maxbytes": C.MAX_FILE_SIZE}

    async def fid2path(self, export: Export, req: Message) -> dict[str, Any]:
        """A path from an identifier bypasses every directory's permissions: root only
        (after root squash), as Lustre's fid2path needs CAP_DAC_READ_SEARCH."""
        cred = _cred(req.body)
        ino = _ino(req.body)
        if cred.uid != 0:
            raise ServiceError(errno.EPERM, "fid2path is for root only")
        return {"path": self._store().path_of(ino)}

    async def access(self, export: Export, req: Message) -> Any:
        b = req.body
        if self._after_writeback(export, req, [_ino(b)], self.access):
            return DEFERRED
        self._store().access(_cred(b), _ino(b), _int(b, "mask", hi=7))
        return {}

    async def sync(self, export: Export, req: Message) -> dict[str, Any]:
        await self.commit()
        return {}

    async def close(self, export: Export, req: Message) -> tuple[int, dict[str, Any]]:
        handle = _int(req.body, "handle")
        store = self._store()
        if handle not in self.open_handles.get(export.uuid, ()):
            if store.handle_open(handle):  # another client's open: never by mistake
                self.count("close_foreign")
                self.violation(export.uuid, "foreign_handle", f"handle {handle}")
            raise ServiceError(errno.EBADF, f"no open handle {handle} of this client")
        unsure = body_field(req.body, "size_unsure", bool, default=False)
        result = store.close(handle, clean=not unsure, replayed=self._replayed_update(req))
        self._forget_handle(export.uuid, handle)
        return result

    def _close_handles_of(self, uuid: str) -> None:
        """A client left (disconnect, eviction, missed recovery): its opens go, as
        Lustre's export cleanup closes them (open-unlinked files are destroyed)."""
        handles = self.open_handles.pop(uuid, set())
        if not handles or self.store is None:
            return
        for handle in sorted(handles):
            try:
                self.store.close(handle, clean=False)  # a writer's last size is unknown
            except MdtError:
                continue
            self.count("closed_on_leave")
        self.want_commit()

    async def reint(self, export: Export, req: Message) -> Any:
        """An update: early-cancelled locks first, then EX locks on every inode it
        changes (clients caching them are called back), the update, the locks' release,
        and the intent lock of the reply. Inline when no lock has to be waited for."""
        b = req.body
        opc = _int(b, "op")
        op = self.reint_ops.get(opc)
        if op is None:
            raise ServiceError(errno.EOPNOTSUPP, "unknown REINT operation")
        cancels = b.get("cancels")
        if cancels is not None:
            if (type(cancels) is not list or len(cancels) > CANCEL_MAX
                    or not all(type(h) is int for h in cancels)):
                raise ServiceError(errno.EINVAL, "cancels must be a list of lock handles")
            self.ldlm.cancel_handles(export, cancels)
        wanted = self._update_locks(opc, b) + self.intents.size_callbacks(export, opc, b)
        if opc == C.REINT_SETATTR and self.intents.holds_writeback(export, b.get("wb"),
                                                                   _ino(b)):
            # A write-back flush: the holder's own lock keeps everyone else out; an EX
            # lock of ours would call that very lock back and wait for this flush.
            wanted = []
        elif opc == C.REINT_OPEN:
            wanted += self.intents.writeback_held(export, [_ino(b)])
        if wanted and self.ldlm.local_would_block(wanted):
            assert self._nursery is not None
            self.count("reint_waits")
            self._nursery.start_soon(self._reint_after_locks, export, req, op, wanted)
            return DEFERRED
        return await self._locked_reint(export, b, op, wanted, self._replayed_update(req),
                                        inline=True)

    async def _locked_reint(self, export: Export, b: dict[str, Any], op: Any,
                            wanted: list[tuple[ResId, int]],
                            replayed: ReplayedUpdate | None, inline: bool = False) -> Any:
        locks = await self.ldlm.lock_local(wanted)
        try:
            if self.exports.get(export.uuid) is not export:
                raise ServiceError(errno.ENOTCONN, "evicted while waiting for locks")
            transno, body = op(export, b, replayed)
        finally:
            self.ldlm.unlock_local(locks)
        body = self.intents.with_intent(export, b, body)
        body = self.intents.with_parent_intent(export, b, body)
        if replayed is None and "wb_lock" in b:
            body = self.intents.with_writeback(export, b, body, self._root_unsquashed(export))
        if inline:
            # From its early cancels to these grants nothing else ran (no lock waited
            # for, nothing awaited): what the client cached under the locks it cancelled
            # and this update did not change is still true under the new ones.
            if "lock" in body:
                body["lock_continues"] = True
            if "parent_lock" in body:
                body["parent_lock_continues"] = True
        return transno, body

    def _root_unsquashed(self, export: Export) -> bool:
        """Is root root for this client (no root squash for its NID)?"""
        return not self.squash.enabled or self.squash.exempt(export.nid)

    async def _reint_after_locks(self, export: Export, req: Message, op: Any,
                                 wanted: list[tuple[ResId, int]]) -> None:
        try:
            reply = self.make_reply(req, await self._locked_reint(
                export, req.body, op, wanted, self._replayed_update(req)))
        except ErrnoError as e:
            reply = self.error_reply(req, e)
        await self._send_deferred(export, req, reply)

    def _update_locks(self, opc: int, b: dict[str, Any]) -> list[tuple[ResId, int]]:
        """The inodes an update changes, with the bits of what changes: UPDATE for
        attributes and directory entries, LOOKUP for a name that goes away."""
        store = self._store()
        if opc in (C.REINT_CREATE, C.REINT_MKDIR, C.REINT_SYMLINK):
            parent = _ino(b, "parent")
            out = [(inode_res(parent), UPDATE)]
            child = store.child_ino(parent, _name(b))
            if child is not None:  # an open(O_CREAT) of an existing file may truncate it
                out.append((inode_res(child), UPDATE))
            return out
        if opc == C.REINT_LINK:
            return [(inode_res(_ino(b, "parent")), UPDATE), (inode_res(_ino(b)), UPDATE)]
        if opc in (C.REINT_UNLINK, C.REINT_RMDIR):
            parent = _ino(b, "parent")
            out = [(inode_res(parent), UPDATE)]
            child = store.child_ino(parent, _name(b))
            if child is not None:
                out.append((inode_res(child), NAME_BITS))
            return out
        if opc == C.REINT_RENAME:
            parent, new_parent = _ino(b, "parent"), _ino(b, "new_parent")
            out = [(inode_res(parent), UPDATE), (inode_res(new_parent), UPDATE)]
            for p, n in ((parent, _name(b)), (new_parent, _name(b, "new_name"))):
                child = store.child_ino(p, n)
                if child is not None:
                    out.append((inode_res(child), NAME_BITS))
            return out
        if opc == C.REINT_SETATTR:
            return [(inode_res(_ino(b)), ATTRS)]
        if opc == C.REINT_REMOVEXATTR:
            return [(inode_res(_ino(b)), UPDATE)]
        if opc in (C.REINT_SETXATTR, C.REINT_SETLAYOUT):
            return [(inode_res(_ino(b)), UPDATE | int(IBits.LAYOUT))]
        if opc == C.REINT_OPEN:
            flags = _int(b, "flags", hi=(1 << 32) - 1)
            return [(inode_res(_ino(b)), UPDATE)] if flags & os.O_TRUNC else []
        if opc == C.REINT_WRITE_UPDATE:
            # Size and mtime are the data locks' business; set-id bits are attributes.
            kill = body_field(b, "kill_priv", bool, default=True)
            return [(inode_res(_ino(b)), ATTRS)] if kill else []
        return []  # REINT_ATIME: atime is not kept coherent (as relatime in Lustre)

    def r_create(self, export: Export, b: dict[str, Any],
                 replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        open_flags = _int(b, "open_flags", None, hi=(1 << 32) - 1)
        layout = body_field(b, "layout", dict, default=None)
        transno, result = self._store().create(
            _cred(b), _ino(b, "parent"), _name(b), _int(b, "mode", hi=MODE_MAX),
            _int(b, "rdev", 0, hi=RDEV_MAX), open_flags=open_flags,
            exclusive=body_field(b, "exclusive", bool, default=True), layout=layout,
            replayed=replayed)
        if result.get("handle") is not None:
            self._remember_handle(export, result["handle"], result["attr"]["ino"], replayed)
        return transno, result

    def r_mkdir(self, export: Export, b: dict[str, Any],
                replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        transno, attr = self._store().mkdir(_cred(b), _ino(b, "parent"), _name(b),
                                            _int(b, "mode", hi=MODE_MAX), replayed=replayed)
        return transno, {"attr": attr}

    def r_symlink(self, export: Export, b: dict[str, Any],
                  replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        target = body_field(b, "target", bytes)
        transno, attr = self._store().symlink(_cred(b), _ino(b, "parent"), _name(b),
                                              target, replayed=replayed)
        return transno, {"attr": attr}

    def r_link(self, export: Export, b: dict[str, Any],
               replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        transno, attr = self._store().link(_cred(b), _ino(b), _ino(b, "parent"),
                                           _name(b), replayed=replayed)
        return transno, {"attr": attr}

    def r_unlink(self, export: Export, b: dict[str, Any],
                 replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        return self._store().unlink(_cred(b), _ino(b, "parent"), _name(b),
                                    replayed=replayed)

    def r_rmdir(self, export: Export, b: dict[str, Any],
                replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        return self._store().rmdir(_cred(b), _ino(b, "parent"), _name(b),
                                   replayed=replayed)

    def r_rename(self, export: Export, b: dict[str, Any],
                 replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        return self._store().rename(_cred(b), _ino(b, "parent"), _name(b),
                                    _ino(b, "new_parent"), _name(b, "new_name"),
                                    _int(b, "flags", 0, hi=7), replayed=replayed)

    def r_setattr(self, export: Export, b: dict[str, Any],
                  replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        attrs = body_field(b, "attrs", dict)
        allowed = {"mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "atime_now",
                   "mtime_now", "write_size", "write_mtime_ns"}
        if "wb" in b:
            allowed.add("ctime_ns")  # (a write-back flush: changed at the client's time)
        if not set(attrs) <= allowed:
            raise ServiceError(errno.EINVAL, "unknown attribute")
        for k, v in attrs.items():
            if k.endswith("_now"):
                if type(v) is not bool:
                    raise ServiceError(errno.EINVAL, f"{k} must be a bool")
            elif type(v) is not int:
                raise FieldError(f"{k} must be an int")
            elif (not 0 <= v < (1 << 63) or (k == "mode" and v > 0o7777)
                  or (k in ("uid", "gid") and v > ID_MAX)):
                raise ServiceError(errno.EINVAL, f"{k} out of range")
        via_handle = body_field(b, "via_handle", bool, default=False)
        transno, attr = self._store().setattr(_cred(b), _ino(b), attrs, via_handle=via_handle,
                                              replayed=replayed)
        return transno, {"attr": attr}

    def r_open(self, export: Export, b: dict[str, Any],
               replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        replay = body_field(b, "replay", bool, default=False)
        if replay:
            # Open replay: a file the client held open before this server started. Only
            # in the recovery window (no permission check: the open was allowed then).
            if trio.current_time() > self.reopen_until:
                raise ServiceError(errno.ESTALE, "open replay after the recovery window")
            self.count("open_replays")
        ino = _ino(b)
        transno, result = self._store().open(_cred(b), ino,
                                             _int(b, "flags", hi=(1 << 32) - 1), reopen=replay,
                                             replayed=replayed)
        self._remember_handle(export, result["handle"], ino, replayed)
        if replay:
            self._hand_over_replayed_open(export, ino)
        return transno, result

    def r_setxattr(self, export: Export, b: dict[str, Any],
                   replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        name = _name(b)
        value = body_field(b, "value", bytes)
        if len(value) > MAX_XATTR_VALUE:
            raise ServiceError(errno.E2BIG)
        if name == LOV_XATTR:
            try:
                layout = parse_layout(value)
            except ValueError as e:
                raise ServiceError(errno.EINVAL, str(e)) from None
            transno, attr = self._store().set_layout(_cred(b), _ino(b), layout,
                                                     replayed=replayed)
            return transno, {"attr": attr}
        return self._store().setxattr(_cred(b), _ino(b), name, value,
                                      _int(b, "flags", 0, hi=3), replayed=replayed)

    def r_removexattr(self, export: Export, b: dict[str, Any],
                      replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        return self._store().removexattr(_cred(b), _ino(b), _name(b),
                                         replayed=replayed)

    def r_write_update(self, export: Export, b: dict[str, Any],
                       replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        transno, attr = self._store().write_update(_ino(b), _int(b, "size"),
                                                   _int(b, "mtime_ns"),
                                                   body_field(b, "kill_priv", bool, default=True),
                                                   replayed=replayed)
        return transno, {"attr": attr}

    def r_atime(self, export: Export, b: dict[str, Any],
                replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        transno, attr = self._store().touch_atime(_ino(b), _int(b, "atime_ns"),
                                                  replayed=replayed)
        return transno, {"attr": attr}

    def r_setlayout(self, export: Export, b: dict[str, Any],
                    replayed: ReplayedUpdate | None) -> tuple[int, dict[str, Any]]:
        layout = body_field(b, "layout", dict)
        transno, attr = self._store().set_layout(_cred(b), _ino(b), layout,
                                                 replayed=replayed)
        return transno, {"attr": attr}

    # -- open handles belong to the export that made them --
    def _remember_handle(self, export: Export, handle: int, ino: int,
                         replayed: ReplayedUpdate | None) -> None:
        self.open_handles.setdefault(export.uuid, set()).add(handle)
        if replayed is not None:
            # An update replay made an open (O_CREAT/O_TRUNC) again: the client's open
            # replay takes it over (or the window's end closes it).
            self._replayed_opens.setdefault((export.uuid, ino), []).append(handle)

    def _hand_over_replayed_open(self, export: Export, ino: int) -> None:
        """The open replay of `ino` made its own handle: the one the update replay of
        the same open made goes (the file stays open through the new one)."""
        handles = self._replayed_opens.get((export.uuid, ino))
        if not handles:
            return
        handle = handles.pop()
        if not handles:
            del self._replayed_opens[(export.uuid, ino)]
        self._close_quietly(export.uuid, handle)
        self.count("replayed_opens_handed_over")

    def _close_quietly(self, uuid: str, handle: int, clean: bool = True) -> None:
        try:
            self._store().close(handle, clean=clean)
        except MdtError:
            return
        self._forget_handle(uuid, handle)

    def _forget_handle(self, uuid: str, handle: int) -> None:
        mine = self.open_handles.get(uuid)
        if mine is not None:
            mine.discard(handle)
            if not mine:
                del self.open_handles[uuid]

