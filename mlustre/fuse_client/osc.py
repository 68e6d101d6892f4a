"""osc.py - object requests to one OST: bulk read/write (BRW), punch, statfs.

Written data the OST has answered but not committed ("unstable" pages) is kept,
with the punches, until the OST's last_committed covers it: a crash of the OST can
lose it, and the client then replays it, in transno order, to the new instance.
The amount kept is bounded (`unstable_limit`; a mount's OSCs share 64 MiB):
beyond it the client asks the OST to commit (OST_SYNC), as Lustre's unstable-page
accounting does.
"""

from __future__ import annotations

import heapq
import logging
from typing import Any

import trio

from ..protocol import constants as C
from ..protocol.rpc import Endpoint
from .imports import Import

log = logging.getLogger(__name__)

UNSTABLE_LIMIT = 64 << 20  # per OSC by default
UNSTABLE_TOTAL = 64 << 20  # a mount's OSCs share this (client.py)


class Osc:
    """Requests to one OST. Its target's ImportEvents (target_link.TargetLink) run
    `replay` after an OST restart and `committed` as the OST commits."""

    def __init__(self, index: int, imp: Import, *, unstable_limit: int = UNSTABLE_LIMIT) -> None:
        self.index = index
        self.imp = imp
        self.write_bytes = 0
        self.read_bytes = 0
        self.unstable_limit = unstable_limit
        # transno -> (opcode, body, data): answered, not yet committed by the OST.
        self.unstable: dict[int, tuple[int, dict[str, Any], bytes | None]] = {}
        self._order: list[int] = []  # heap of the transnos in `unstable`
        self.unstable_bytes = 0
        self.replayed = 0
        self.unstable_syncs = 0
        self._syncing: trio.Event | None = None  # set when the sync under way is done

    def _keep(self, transno: int, opc: int, body: dict[str, Any], data: bytes | None) -> None:
        if transno <= self.imp.peer_committed:
            return
        if transno not in self.unstable:
            heapq.heappush(self._order, transno)
            self.unstable_bytes += len(data or b"")
            self.unstable[transno] = (opc, body, data)

    def committed(self, last_committed: int) -> None:
        """The OST committed up to last_committed (told by its import's events)."""
        while self._order and self._order[0] <= last_committed:
            _, _, data = self.unstable.pop(heapq.heappop(self._order))
            self.unstable_bytes -= len(data or b"")

    async def _limit_unstable(self) -> None:
        """Too much kept: have the OST commit (one sync at a time). Writers past twice
        the limit wait for that sync, so what is kept stays bounded."""
        if self.unstable_bytes <= self.unstable_limit:
            return
        if self._syncing is not None:
            if self.unstable_bytes > 2 * self.unstable_limit:
                await self._syncing.wait()
            return
        self._syncing = trio.Event()
        try:
            self.unstable_syncs += 1
            await self.sync()
        finally:
            self._syncing.set()
            self._syncing = None

    async def replay(self, endpoint: Endpoint) -> None:
        """The OST restarted: send again, in transno order and with their first
        transnos, the writes and punches it answered but had not committed."""
        committed = self.imp.peer_committed
        self.committed(committed)
        if not self.unstable:
            return
        log.info("%s: replaying %d writes/punches (%d bytes) above transno %d",
                 self.imp.target, len(self.unstable), self.unstable_bytes, committed)
        for transno in sorted(self.unstable):
            opc, body, data = self.unstable[transno]
            reply = await endpoint.call(opc, body, bulk=data, flags=C.MSG_REPLAY,
                                        timeout=self.imp.replay_timeout,
                                        conn_cnt=self.imp.conn_cnt, xid=self.imp.new_xid(),
                                        transno=transno)
            if reply.status:
                log.warning("%s: replay of transno %d failed: %s", self.imp.target, transno,
                            reply.body.get("error", reply.status))
            self.replayed += 1
        self.imp.replays += 1

    async def write(self, oid: int, offset: int, data: bytes | bytearray, *,
                    flush: bool = False) -> int:
        """Write data (flush: write-back of cached pages); returns the transno
        (uncommitted until last_committed covers it)."""
        body = {"oid": oid, "offset": offset}
        reply = await self.imp.call(C.OST_WRITE, body, bulk=data, flush=flush)
        self.write_bytes += len(data)
        self._keep(reply.transno, C.OST_WRITE, body, bytes(data))
        await self._limit_unstable()
        return reply.transno

    async def read(self, oid: int, offset: int, length: int) -> bytes | bytearray:
        reply = await self.imp.call(C.OST_READ, {"oid": oid, "offset": offset, "length": length})
        data = reply.bulk if reply.bulk is not None else b""
        self.read_bytes += len(data)
        return data

    async def punch(self, oid: int, size: int) -> None:
        body = {"oid": oid, "size": size}
        reply = await self.imp.call(C.OST_PUNCH, body)
        self._keep(reply.transno, C.OST_PUNCH, body, None)

    async def statfs(self) -> dict[str, Any]:
        return (await self.imp.call(C.OST_STATFS, {})).body

    async def sync(self) -> None:
        await self.imp.call(C.OST_SYNC, {})
