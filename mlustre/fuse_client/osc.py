"""osc.py - object requests to one OST: bulk read/write (BRW), punch, statfs."""

from __future__ import annotations

from typing import Any

from ..protocol import constants as C
from .imports import Import


class Osc:
    def __init__(self, index: int, imp: Import) -> None:
        self.index = index
        self.imp = imp
        self.write_bytes = 0
        self.read_bytes = 0

    async def write(self, oid: int, offset: int, data: bytes | bytearray, *,
                    flush: bool = False) -> int:
        """Write data (flush: write-back of cached pages); returns the transno
        (uncommitted until last_committed covers it)."""
        reply = await self.imp.call(C.OST_WRITE, {"oid": oid, "offset": offset}, bulk=data,
                                    flush=flush)
        self.write_bytes += len(data)
        return reply.transno

    async def read(self, oid: int, offset: int, length: int) -> bytes | bytearray:
        reply = await self.imp.call(C.OST_READ, {"oid": oid, "offset": offset, "length": length})
        data = reply.bulk if reply.bulk is not None else b""
        self.read_bytes += len(data)
        return data

    async def punch(self, oid: int, size: int) -> None:
        await self.imp.call(C.OST_PUNCH, {"oid": oid, "size": size})

    async def statfs(self) -> dict[str, Any]:
        return (await self.imp.call(C.OST_STATFS, {})).body

    async def sync(self) -> None:
        await self.imp.call(C.OST_SYNC, {})
