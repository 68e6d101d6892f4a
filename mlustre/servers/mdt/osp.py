"""osp.py - the MDT's links to its OSTs (Lustre's OSP): destroying the objects of
removed files once their removal is committed, and the orphan cleanup after a crash.

A component of the MDT, given by its constructor what it uses: the MGS to find the
OSTs, the filesystem key, the target's counters and a way to ask for a commit. Once
serving, `start` hands it the store and the recovery's end to wait for.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ...protocol import constants as C
from ...protocol.nid import Nid
from ...protocol.session import Session
from ..export import Stats
from ..mgs import read_config, target_name
from ..ost import ORPHAN_KEEP_MAX
from .store import MdtStore

log = logging.getLogger(__name__)

DESTROY_BATCH = 1024  # committed destroy-log rows taken at once


class Osp:
    """The OST objects the MDT destroys (removed files, orphans of a crash)."""

    def __init__(self, name: str, fsname: str, mgs: list[Nid], *, auth_key: bytes | None,
                 stats: Stats, want_commit: Callable[[], None]) -> None:
        self.name = name
        self.fsname = fsname
        self.mgs = mgs
        self.auth_key = auth_key
        self.stats = stats
        self.want_commit = want_commit
        self.osts: dict[int, list[Nid]] = {}
        self._ost_sessions: dict[int, Session] = {}
        self._destroy_wanted = trio.Event()
        self._committed_destroys: list[tuple[int, int, int]] = []
        self._nursery: trio.Nursery | None = None
        self.store: MdtStore | None = None

    def start(self, nursery: trio.Nursery, store: MdtStore,
              wait_recovered: Callable[[], Awaitable[None]]) -> None:
        """Serving: destroy committed removals as they come, and clean up the orphans
        of the last run once recovery is over."""
        self._nursery = nursery
        self.store = store
        nursery.start_soon(self._destroy_loop)
        nursery.start_soon(self._orphan_objects, wait_recovered)

    @property
    def busy(self) -> bool:
        """Committed destroys are still being worked off (no new rows wanted yet)."""
        return bool(self._committed_destroys)

    def committed(self, rows: list[tuple[int, int, int]] | None) -> None:
        """A commit just became durable; `rows` are the destroy-log rows the MDT read
        right after its COMMIT (before any later update), so every one is committed and
        destroying its objects can never outrun the unlink that logged it."""
        if rows and not self._committed_destroys:
            self._committed_destroys = rows
        if self._committed_destroys:
            self._destroy_wanted.set()

    def count(self, what: str, n: int = 1) -> None:
        self.stats.count(what, n)

    async def _refresh_osts(self) -> None:
        assert self._nursery is not None
        cfg = await read_config(self._nursery, self.mgs, self.fsname, self.name, self.auth_key)
        self.osts = {t["index"]: [Nid.parse(n) for n in t["nids"]]
                     for t in cfg["targets"] if t["kind"] == "ost"}

    async def _ost_session(self, idx: int) -> Session:
        assert self._nursery is not None
        session = self._ost_sessions.get(idx)
        if session is not None and not session.endpoint.closed:
            return session
        if idx not in self.osts:
            await self._refresh_osts()
        session = await Session.open(self._nursery, self.osts[idx],
                                     target=target_name(self.fsname, "ost", idx),
                                     connect_opc=C.OST_CONNECT, client_uuid=f"{self.name}-osp",
                                     key=self.auth_key)
        self._ost_sessions[idx] = session
        return session

    async def _orphan_objects(self, wait_recovered: Callable[[], Awaitable[None]]) -> None:
        """Lustre's MDS-OST orphan cleanup: once no replayed creation can come, each
        OST destroys the objects of ids the last runs handed out after their last
        commit that no file names (their creations were lost with a crash)."""
        await wait_recovered()
        assert self.store is not None
        ranges = self.store.orphan_ranges()
        while ranges:
            for ost, (lo, hi) in sorted(ranges.items()):
                keep = self.store.objects_in(ost, lo, hi)
                try:
                    destroyed = 0
                    session = await self._ost_session(ost)
                    for a, b, kept in _orphan_requests(lo, hi, keep):
                        reply = await session.call(C.OST_CREATE,
                                                   {"delorphan": [a, b], "keep": kept})
                        destroyed += reply.body.get("destroyed", 0)
                except Exception as e:  # that OST is down: again later
                    log.info("%s: orphan cleanup of OST%04x postponed: %s", self.name, ost, e)
                    self._ost_sessions.pop(ost, None)
                    continue
                self.store.orphans_cleaned(ost)
                self.want_commit()
                self.count("orphan_objects_destroyed", destroyed)
                del ranges[ost]
            if ranges:
                await trio.sleep(5.0)

    async def _destroy_loop(self) -> None:
        while True:
            await self._destroy_wanted.wait()
            self._destroy_wanted = trio.Event()
            try:
                await self._destroy_committed()
            except Exception as e:  # an OST is down: keep the log, try again later
                log.info("%s: object destroys postponed: %s", self.name, e)
                self._ost_sessions.clear()
                self.osts.clear()
                await trio.sleep(2.0)
                self._destroy_wanted.set()  # retries the committed rows still listed

    async def _destroy_committed(self) -> None:
        assert self.store is not None
        pending = self._committed_destroys
        by_ost: dict[int, list[tuple[int, int]]] = {}
        for log_id, ost_idx, oid in pending:
            by_ost.setdefault(ost_idx, []).append((log_id, oid))
        for idx, items in by_ost.items():
            session = await self._ost_session(idx)
            await session.call(C.OST_DESTROY, {"oids": [oid for _, oid in items]})
            self.store.destroys_done([log_id for log_id, _ in items])
            done = {log_id for log_id, _ in items}
            self._committed_destroys = [p for p in self._committed_destroys if p[0] not in done]
        if len(pending) == DESTROY_BATCH:
            self.want_commit()


def _orphan_requests(lo: int, hi: int, keep: list[int]) -> list[tuple[int, int, list[int]]]:
    """[lo, hi) cut so that each piece names at most ORPHAN_KEEP_MAX ids to keep
    (keep: sorted, within [lo, hi))."""
    pieces = []
    start = lo
    for i in range(0, len(keep), ORPHAN_KEEP_MAX):
        kept = keep[i:i + ORPHAN_KEEP_MAX]
        end = keep[i + ORPHAN_KEEP_MAX] if i + ORPHAN_KEEP_MAX < len(keep) else hi
        pieces.append((start, end, kept))
        start = end
    return pieces or [(lo, hi, [])]
