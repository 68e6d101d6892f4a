"""mdc.py - metadata requests to the MDT, built from neutral arguments.

Every method returns the reply body (or raises RpcError with the errno). The
caller's credentials travel with each request: the MDT checks permissions
itself rather than trusting the client's kernel.

`intent` ({"handle", "bits", "dir_bits"}) asks the MDT to grant a PR lock on the
inode the reply describes (its handle comes back as body["lock"]); `cancels`
carries early-cancelled lock handles in an update (ELC).
"""

from __future__ import annotations

from typing import Any

from ..protocol import constants as C
from ..protocol import dialect
from .imports import Import

Cred = list[Any]  # [uid, gid, [groups]]


class Mdc:
    def __init__(self, imp: Import) -> None:
        self.imp = imp
        # What the client knows of an inode (generation, FID), to name it in the
        # release of the MDT at send time; set by the mount (its inode table).
        self.identity: dialect.Identity = lambda ino: (None, None)

    async def _call(self, opc: int, body: dict[str, Any], *,
                    flush: bool = False) -> dict[str, Any]:
        def encode(release: str, neutral: dict[str, Any]) -> dict[str, Any]:
            return dialect.encode_request(release, neutral, self.identity, opc)

        return (await self.imp.call(opc, body, flush=flush, encode=encode)).body

    async def _reint(self, op: int, cred: Cred, *, intent: dict[str, Any] | None = None,
                     cancels: list[int] | None = None, **fields: Any) -> dict[str, Any]:
        body = {"op": op, "cred": cred, **fields}
        if intent is not None:
            body["lock"] = intent
        if cancels:
            body["cancels"] = cancels
        # The size and mtime that written data gave a file travel with write-back.
        return await self._call(C.MDS_REINT, body, flush=op == C.REINT_WRITE_UPDATE)

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

    async def readdir(self, cred: Cred, ino: int, cookie: int, count: int) -> dict[str, Any]:
        return await self._call(C.MDS_READPAGE,
                                {"cred": cred, "ino": ino, "cookie": cookie, "count": count})

    async def getxattr(self, cred: Cred, ino: int, name: bytes) -> bytes:
        return (await self._call(C.MDS_GETXATTR, {"cred": cred, "ino": ino, "name": name}))[
            "value"]

    async def listxattr(self, cred: Cred, ino: int) -> list[bytes]:
        return (await self._call(C.MDS_GETXATTR, {"cred": cred, "ino": ino}))["names"]

    async def statfs(self) -> dict[str, Any]:
        return await self._call(C.MDS_STATFS, {})

    async def fid2path(self, ino: int) -> bytes:
        """The path of inode ino relative to the root (b"" for the root itself)."""
        return (await self._call(C.MDS_FID2PATH, {"ino": ino}))["path"]

    async def sync(self) -> None:
        await self._call(C.MDS_SYNC, {})

    async def close(self, handle: int) -> None:
        await self._call(C.MDS_CLOSE, {"handle": handle})

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
