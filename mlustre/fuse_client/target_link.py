"""target_link.py - one target's client side put together: its Import, lock client, SIR
writer gate and Mdc or Osc.

The Import tells one listener of its events (imports.ImportEvents), given to it by its
constructor: the TargetLink, which builds the Import first, passing itself, then the
components that use the Import, and forwards each event to them in a fixed order:

    connected(body)     the lock client (a new instance, an eviction), the writer gate
                        (is the barrier lock offered?), then the mount's hook (the MDT's
                        open replay), each on its own (one failing stops no other)
    replay_updates      the Mdc's kept updates, or the Osc's unstable writes (REPLAY)
    replay_locks        the lock client's granted locks (REPLAY_LOCKS, after the updates)
    committed(transno)  the Osc lets go of what the OST committed
    gate                the Barrier (none when built without one)

The lock client's ASTs come through the Import's connection to `_ast`, and BASTs on the
barrier resource go on to the Barrier. ClientNode builds one link per target; tests and
benchmarks that speak to one server build one directly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..protocol import constants as C
from ..protocol.dialect import Identity
from ..protocol.ldlm import barrier_lock
from ..protocol.message import Message
from ..protocol.nid import Nid
from ..protocol.rpc import Endpoint
from .barrier import Barrier, Drainer
from .imports import Import, WriterGate
from .ldlm import LockClient, OnBlocking, OnEvicted, OnEvictedNow, OnGlimpse
from .ldlm_client import ClientLock
from .mdc import Mdc
from .osc import UNSTABLE_LIMIT, Osc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetHooks:
    """What a mount does on the events of one target (library mode: nothing), handed
    to the constructors of the target's lock client and barrier gate."""

    lru_size: int = 100  # unused locks the lock client keeps
    lru_max_age: float = 600.0  # seconds an unused lock is kept at most
    lru_interval: float = 1.0  # seconds between LRU passes
    on_blocking: OnBlocking | None = None
    on_evicted: OnEvicted | None = None
    on_evicted_now: OnEvictedNow | None = None
    on_glimpse: OnGlimpse | None = None
    on_reset: OnEvicted | None = None
    drain: Drainer | None = None  # the barrier's drain of this target's dirty state
    # Called with each connect reply, after the lock client's and the gate's hooks.
    on_connected: Callable[[dict[str, Any]], None] | None = None


class TargetLink:
    """One target (`kind` "mdt" or "ost") as this client speaks to it.

    :imp: the Import; :locks: its LockClient; :barrier: its writer gate (None when built
    with barrier=False); :mdc: the Mdc of an MDT, :osc: the Osc of OST `index`.
    The writer gate is enabled iff `flags` offers OBD_CONNECT_UPDATE_LOCK.
    """

    def __init__(self, name: str, kind: str, nids: list[Nid], *, client_uuid: str,
                 index: int = 0, hooks: TargetHooks | None = None, barrier: bool = True,
                 identity: Identity | None = None, unstable_limit: int = UNSTABLE_LIMIT,
                 release: str = "2.0", flags: int = 0, connect_timeout: float = 5.0,
                 request_timeout: float = 30.0, ping_interval: float = 5.0,
                 key: bytes | None = None,
                 nid_source: Callable[[str], Awaitable[list[Nid]]] | None = None) -> None:
        self.name = name
        self.kind = kind
        self.hooks = hooks = hooks or TargetHooks()
        self.imp = Import(name, nids,
                          connect_opc=C.MDS_CONNECT if kind == "mdt" else C.OST_CONNECT,
                          client_uuid=client_uuid, release=release, flags=flags,
                          handler=self._ast, request_timeout=request_timeout,
                          connect_timeout=connect_timeout, ping_interval=ping_interval,
                          key=key, nid_source=nid_source, events=self)
        res = barrier_lock(kind)[0]
        self.locks = LockClient(name, self.imp, lru_size=hooks.lru_size,
                                lru_max_age=hooks.lru_max_age, lru_interval=hooks.lru_interval,
                                on_blocking=hooks.on_blocking, on_evicted=hooks.on_evicted,
                                on_evicted_now=hooks.on_evicted_now,
                                on_glimpse=hooks.on_glimpse, on_reset=hooks.on_reset,
                                watch={res: self._barrier_blocked} if barrier else None)
        self.barrier = (Barrier(name, kind, self.imp, self.locks,
                                enabled=bool(flags & C.OBD_CONNECT_UPDATE_LOCK),
                                drain=hooks.drain) if barrier else None)
        self.mdc = Mdc(self.imp, identity=identity) if kind == "mdt" else None
        self.osc = (Osc(index, self.imp, unstable_limit=unstable_limit) if kind != "mdt"
                    else None)

    async def _ast(self, endpoint: Endpoint, msg: Message) -> Message | None:
        return await self.locks.handle_request(endpoint, msg)

    def _barrier_blocked(self, lock: ClientLock) -> None:
        if self.barrier is not None:
            self.barrier.blocked(lock)

    # -- imports.ImportEvents --
    @property
    def gate(self) -> WriterGate | None:
        return self.barrier

    def connected(self, reply_body: dict[str, Any]) -> None:
        hooks: list[Callable[[dict[str, Any]], None]] = [self.locks.connected]
        if self.barrier is not None:
            hooks.append(self.barrier.connected)
        if self.hooks.on_connected is not None:
            hooks.append(self.hooks.on_connected)
        for hook in hooks:
            try:
                hook(reply_body)
            except Exception:
                log.exception("%s: on_connected hook failed", self.name)

    async def replay_updates(self, endpoint: Endpoint) -> None:
        if self.mdc is not None:
            await self.mdc.replay(endpoint)
        if self.osc is not None:
            await self.osc.replay(endpoint)

    async def replay_locks(self, endpoint: Endpoint) -> None:
        await self.locks.replay_locks(endpoint)

    def committed(self, last_committed: int) -> None:
        if self.osc is not None:
            self.osc.committed(last_committed)
