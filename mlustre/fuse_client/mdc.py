"""mdc.py - metadata requests to the MDT, built from neutral arguments.

Every method returns the reply body (or raises RpcError with the errno). The
caller's credentials travel with each request: the MDT checks permissions
itself rather than trusting the client's kernel.

`intent` ({"handle", "bits", "dir_bits"}) asks the MDT to grant a PR lock on the
inode the reply describes (its handle comes back as body["lock"]); `cancels`
carries early-cancelled lock handles in an update (ELC).

Updates the MDT answered but has not committed are kept (`kept`) and replayed when
it restarts (`replay`), so a crash that loses them loses nothing the client was told.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any

from ..protocol import constants as C
from ..protocol import dialect
from ..protocol.message import Message
from ..protocol.rpc import Endpoint
from .imports import Import

log = logging.getLogger(__name__)

Cred = list[Any]  # [uid, gid, [groups]]


# Fields of a kept update that are not sent again: lock intents and early cancels.
_NOT_REPLAYED = frozenset({"lock", "parent_lock", "cancels"})


@dataclass
class Kept:
    """A namespace update (MDS_REINT) the MDT answered but has not committed yet:
    replayed if it restarts. (Closes are not kept: the open they close is not
    re-opened after a restart either.)"""

    transno: int
    xid: int
    opc: int
    body: dict[str, Any]  # neutral form
    attr: dict[str, Any] | None  # what the reply said of the inode (a create's identity)


class Mdc:
    """Requests to the MDT. Its target's ImportEvents (target_link.TargetLink) run
    `replay` after an MDT restart."""

    def __init__(self, imp: Import, *, identity: dialect.Identity | None = None) -> None:
        self.imp = imp
        self.kept: list[Kept] = []  # in transno order
        self.replayed = 0
        # What the client knows of an inode (generation, FID), to name it in the
        # release of the MDT at send time: the mount's inode table.
        self.identity: dialect.Identity = identity or (lambda ino: (None, None))

    async def _call(self, opc: int, body: dict[str, Any], *,
                    flush: bool = False) -> dict[str, Any]:
        def encode(release: str, neutral: dict[str, Any]) -> dict[str, Any]:
            return dialect.encode_request(release, neutral, self.identity, opc)

        reply = await self.imp.call(opc, body, flush=flush, encode=encode)
        self._keep(opc, body, reply)
        return reply.body

    def _keep(self, opc: int, body: dict[str, Any], reply: Message) -> None:
        committed = self.imp.peer_committed
        if self.kept and self.kept[0].transno <= committed:
            self.kept = [k for k in self.kept if k.transno > committed]
        if reply.transno > committed and opc == C.MDS_REINT and C.is_update(opc, body):
            attr = reply.body.get("attr")
            entry = Kept(reply.transno, reply.xid, opc, body,
                         attr if isinstance(attr, dict) else None)
            if self.kept and self.kept[-1].transno > entry.transno:
                bisect.insort(self.kept, entry, key=lambda k: k.transno)
            else:
                self.kept.append(entry)

    async def replay(self, endpoint: Endpoint) -> None:
        """The MDT restarted: send again, in transno order and under their first xids
        and transnos, the updates it answered but had not committed (a crash may have
        lost them; those it still has are acknowledged without being run again)."""
        kept = [k for k in self.kept if k.transno > self.imp.peer_committed]
        if not kept:
            return
        release = endpoint.codec.release
        log.info("%s: replaying %d updates (transnos %d..%d)", self.imp.target, len(kept),
                 kept[0].transno, kept[-1].transno)
        for k in kept:
            # Without the lock requests of the first time: the locks of the old
            # instance are gone (and new ones are asked for as usual).
            neutral = {key: v for key, v in k.body.items() if key not in _NOT_REPLAYED}
            body = dialect.encode_request(release, {**neutral, "replay_attr": k.attr},
                                          self.identity, k.opc)
            reply = await endpoint.call(k.opc, body, timeout=self.imp.replay_timeout,
                                        flags=C.MSG_REPLAY, conn_cnt=self.imp.conn_cnt,
                                        xid=k.xid, transno=k.transno)
            if reply.status:
                log.warning("%s: replay of transno %d (opc %d) failed: %s", self.imp.target,
                            k.transno, k.opc, reply.body.get("error", reply.status))
            self.replayed += 1
        self.imp.replays += 1

    async def _reint(self, op: int, cred: Cred, *, intent: dict[str, Any] | None = None,
                     cancels: list[int] | None = None, flush: bool = False,
                     **fields: Any) -> dict[str, Any]:
        body = {"op": op, "cred": cred, **fields}
        if intent is not None:
            body["lock"] = intent
        if cancels:
            body["cancels"] = cancels
        # The size and mtime that written data gave a file travel with write-back.
        return await self._call(C.MDS_REINT, body,
                                flush=flush or op == C.REINT_WRITE_UPDATE)

    async def getattr(self, ino: int, intent: dict[str, Any] | None = None) -> dict[str, Any]:
        """{"attr": ..., "lock": handle if the intent lock was granted}"""
        body: dict[str, Any] = {"ino": ino}
        if intent is not None:
            body["lock"] = intent
        return await self._call(C.MDS_GETATTR, body)

    async def lookup(self, cred: Cred, parent: int, name: bytes,
                     intent: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"cred": cred, "parent": parent, "name": name}
        if intent is not None:
            body["lock"] = intent
        return await self._call(C.MDS_GETATTR_NAME, body)

    async def readlink(self, ino: int) -> bytes:
        return (await self._call(C.MDS_READLINK, {"ino": ino}))["target"]

    async def readdir(self, cred: Cred, ino: int, cookie: int, count: int,
                      locks: dict[str, Any] | None = None) -> dict[str, Any]:
        """A page of entries; with `locks`, their intent locks too (md_cache)."""
        body: dict[str, Any] = {"cred": cred, "ino": ino, "cookie": cookie, "count": count}
        if locks is not None:
            body["locks"] = locks
        return await self._call(C.MDS_READPAGE, body)

    async def getxattr(self, cred: Cred, ino: int, name: bytes) -> bytes:
        return (await self._call(C.MDS_GETXATTR, {"cred": cred, "ino": ino, "name": name}))[
            "value"]

    async def listxattr(self, cred: Cred, ino: int) -> list[bytes]:
        return (await self._call(C.MDS_GETXATTR, {"cred": cred, "ino": ino}))["names"]

    async def statfs(self) -> dict[str, Any]:
        return await self._call(C.MDS_STATFS, {})

    async def fid2path(self, cred: Cred, ino: int) -> bytes:
        """The path of inode ino relative to the root (b"" for the root itself); only
        for root (EPERM otherwise), as Lustre's fid2path needs CAP_DAC_READ_SEARCH."""
        return (await self._call(C.MDS_FID2PATH, {"ino": ino, "cred": cred}))["path"]

    async def sync(self) -> None:
        await self._call(C.MDS_SYNC, {})

    async def close(self, handle: int, size_unsure: bool = False) -> None:
        """size_unsure: this writer could not report what it wrote (the MDT stops taking
        the file's size as its own until a truncate)."""
        body: dict[str, Any] = {"handle": handle}
        if size_unsure:
            body["size_unsure"] = True
        await self._call(C.MDS_CLOSE, body)

    async def create(self, cred: Cred, parent: int, name: bytes, mode: int, rdev: int = 0,
                     open_flags: int | None = None, exclusive: bool = True,
                     **kw: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"parent": parent, "name": name, "mode": mode, "rdev": rdev,
                                "exclusive": exclusive}
        if open_flags is not None:
            body["open_flags"] = open_flags
        return await self._reint(C.REINT_CREATE, cred, **body, **kw)

    async def mkdir(self, cred: Cred, parent: int, name: bytes, mode: int,
                    **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_MKDIR, cred, parent=parent, name=name, mode=mode, **kw)

    async def symlink(self, cred: Cred, parent: int, name: bytes, target: bytes,
                      **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_SYMLINK, cred, parent=parent, name=name,
                                 target=target, **kw)

    async def link(self, cred: Cred, ino: int, parent: int, name: bytes,
                   **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_LINK, cred, ino=ino, parent=parent, name=name, **kw)

    async def unlink(self, cred: Cred, parent: int, name: bytes, **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_UNLINK, cred, parent=parent, name=name, **kw)

    async def rmdir(self, cred: Cred, parent: int, name: bytes, **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_RMDIR, cred, parent=parent, name=name, **kw)

    async def rename(self, cred: Cred, parent: int, name: bytes, new_parent: int,
                     new_name: bytes, flags: int, **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_RENAME, cred, parent=parent, name=name,
                                 new_parent=new_parent, new_name=new_name, flags=flags, **kw)

    async def setattr(self, cred: Cred, ino: int, attrs: dict[str, Any],
                      via_handle: bool = False, **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_SETATTR, cred, ino=ino, attrs=attrs,
                                 via_handle=via_handle, **kw)

    async def writeback_setattr(self, cred: Cred, ino: int, attrs: dict[str, Any],
                                wb: int | None) -> dict[str, Any]:
        """What was changed under a write-back lock (md_writeback.py), `wb` its handle
        while we hold it. Like a size update, it is write-back: the barrier's drain
        lets it through."""
        fields: dict[str, Any] = {"ino": ino, "attrs": attrs, "wb": wb}
        if wb is None:
            del fields["wb"]
            fields["attrs"] = {k: v for k, v in attrs.items() if k != "ctime_ns"}
        return await self._reint(C.REINT_SETATTR, cred, flush=True, **fields)

    async def open(self, cred: Cred, ino: int, flags: int, **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_OPEN, cred, ino=ino, flags=flags, **kw)

    async def setxattr(self, cred: Cred, ino: int, name: bytes, value: bytes,
                       flags: int, **kw: Any) -> dict[str, Any]:
        return await self._reint(C.REINT_SETXATTR, cred, ino=ino, name=name, value=value,
                                 flags=flags, **kw)

    async def removexattr(self, cred: Cred, ino: int, name: bytes, **kw: Any) -> None:
        await self._reint(C.REINT_REMOVEXATTR, cred, ino=ino, name=name, **kw)

    async def touch_atime(self, ino: int, atime_ns: int) -> dict[str, Any]:
        return (await self._reint(C.REINT_ATIME, [0, 0, []], ino=ino, atime_ns=atime_ns))[
            "attr"]

    async def write_update(self, ino: int, size: int, mtime_ns: int,
                           kill_priv: bool, **kw: Any) -> dict[str, Any]:
        return (await self._reint(C.REINT_WRITE_UPDATE, [0, 0, []], ino=ino, size=size,
                                  mtime_ns=mtime_ns, kill_priv=kill_priv, **kw))["attr"]
