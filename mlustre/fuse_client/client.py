"""client.py - a client node: MGS configuration, the MDT and OST imports.

Shared by the FUSE mount (node.py builds one, giving it the mount's hooks) and by
library-mode clients that speak to a filesystem without mounting it (tests, scale
benchmarks, lfs). Per target it builds the Import, its lock client, its barrier gate
and its Mdc/Osc, in that order; what the mount does on their events comes in as
TargetHooks, passed to their constructors.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..protocol import constants as C
from ..protocol.dialect import Identity
from ..protocol.errors import ConnectionLost
from ..protocol.nid import Nid, parse_spec
from ..protocol.session import Session
from .barrier import Barrier, Drainer
from .imports import Import
from .ldlm import LockClient, OnBlocking, OnEvicted, OnEvictedNow, OnGlimpse
from .mdc import Mdc
from .osc import UNSTABLE_TOTAL, Osc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetHooks:
    """What a mount does on the events of one target (library mode: nothing), handed
    to the constructors of the target's lock client and barrier gate."""

    lru_size: int = 100  # unused locks the lock client keeps
    on_blocking: OnBlocking | None = None
    on_evicted: OnEvicted | None = None
    on_evicted_now: OnEvictedNow | None = None
    on_glimpse: OnGlimpse | None = None
    on_reset: OnEvicted | None = None
    drain: Drainer | None = None  # the barrier's drain of this target's dirty state
    # Called with each connect reply, after the lock client's and the gate's hooks.
    on_connected: Callable[[dict[str, Any]], None] | None = None


# (kind "mdt" or "ost", OST index or None for the MDT) -> that target's hooks.
HooksFor = Callable[[str, "int | None"], TargetHooks]


def no_hooks(kind: str, index: int | None) -> TargetHooks:
    return TargetHooks()


class ClientNode:
    """Everything a client knows of one filesystem.

    :mdc: requests to the MDT; :oscs: OST index -> requests to that OST.
    """

    def __init__(self, spec: str, *, release: str = "2.0", client_uuid: str | None = None,
                 connect_timeout: float = 5.0, mount_timeout: float = 20.0,
                 update_lock: bool = True, key: bytes | None = None,
                 hooks: HooksFor = no_hooks, identity: Identity | None = None) -> None:
        self.spec = spec
        self.key = key  # the filesystem's shared key (None: an insecure filesystem)
        self.mgs_nids, self.fsname = parse_spec(spec)
        self.release = release
        self.uuid = client_uuid or str(uuidlib.uuid4())
        self.connect_timeout = connect_timeout
        self.mount_timeout = mount_timeout
        self.config: dict[str, Any] = {}
        self.imports: list[Import] = []
        self.mdc: Mdc | None = None
        self.oscs: dict[int, Osc] = {}
        self.locks: dict[str, LockClient] = {}  # target name -> its lock client
        self.update_lock = update_lock  # offer the SIR barrier lock (UPDATE_LOCK)
        self.barriers: dict[str, Barrier] = {}  # target name -> its writer gate
        self.hooks = hooks
        self.identity = identity  # (generation, FID) of an inode, for the MDT's release

    async def read_config(self, nursery: trio.Nursery,
                          timeout: float | None = None) -> dict[str, Any]:
        deadline = trio.current_time() + (timeout or self.mount_timeout)
        while True:
            try:
                session = await Session.open(nursery, self.mgs_nids,
                                             target=f"{self.fsname}-MGS",
                                             connect_opc=C.MGS_CONNECT, client_uuid=self.uuid,
                                             timeout=self.connect_timeout, key=self.key)
                break
            except ConnectionLost as e:
                if trio.current_time() >= deadline:
                    raise ConnectionLost(f"MGS unreachable: {e}") from None
                await trio.sleep(0.5)
        try:
            return (await session.call(C.MGS_CONFIG_READ)).body
        finally:
            await session.close()

    async def connect(self, nursery: trio.Nursery) -> None:
        """Read the configuration and connect to every target (ConnectionLost if one
        stays unreachable for mount_timeout)."""
        self.configure(await self.read_config(nursery))
        await self.start(nursery)

    def configure(self, config: dict[str, Any]) -> None:
        """Build the imports, lock clients, barrier gates, Mdc and Oscs of the targets
        the configuration names (nothing is sent yet)."""
        self.config = config
        targets = self.config["targets"]
        mdts = [t for t in targets if t["kind"] == "mdt"]
        if not mdts:
            raise ConnectionLost(f"filesystem {self.fsname} has no MDT registered yet")
        osts = sorted((t for t in targets if t["kind"] == "ost"), key=lambda t: t["index"])
        mdt = mdts[0]
        imp = self._import(mdt, C.MDS_CONNECT, self.hooks("mdt", None))
        self.mdc = Mdc(imp, identity=self.identity)
        for t in osts:
            # Unstable data kept for replay: 64 MiB for the whole client (the
            # client stays within its memory budget however many OSTs there are).
            self.oscs[t["index"]] = Osc(t["index"],
                                        self._import(t, C.OST_CONNECT,
                                                     self.hooks("ost", t["index"])),
                                        unstable_limit=max(4 << 20, UNSTABLE_TOTAL // len(osts)))

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the lock and barrier tasks and connect every import."""
        for locks in self.locks.values():
            await nursery.start(locks.run)
        for barrier in self.barriers.values():
            await nursery.start(barrier.run)
        async with trio.open_nursery() as connecting:
            for imp in self.imports:
                connecting.start_soon(lambda i=imp: i.connect(
                    nursery, first_timeout=self.mount_timeout))

    def _import(self, target: dict[str, Any], opc: int, hooks: TargetHooks) -> Import:
        locks = LockClient(target["name"], lru_size=hooks.lru_size,
                           on_blocking=hooks.on_blocking, on_evicted=hooks.on_evicted,
                           on_evicted_now=hooks.on_evicted_now, on_glimpse=hooks.on_glimpse,
                           on_reset=hooks.on_reset)
        flags = C.OBD_CONNECT_FID | C.OBD_CONNECT_IBITS | C.OBD_CONNECT_TRANSNO
        if self.update_lock:
            flags |= C.OBD_CONNECT_UPDATE_LOCK
        imp = Import(target["name"], [Nid.parse(n) for n in target["nids"]], connect_opc=opc,
                     client_uuid=self.uuid, release=self.release, flags=flags,
                     connect_timeout=self.connect_timeout, handler=locks.handle_request,
                     key=self.key, nid_source=self.target_nids)
        locks.attach(imp)
        self.locks[target["name"]] = locks
        self.barriers[target["name"]] = Barrier(
            target["name"], "mdt" if opc == C.MDS_CONNECT else "ost", imp, locks,
            enabled=self.update_lock, drain=hooks.drain)
        if hooks.on_connected is not None:
            imp.on_connected.append(hooks.on_connected)
        self.imports.append(imp)
        return imp

    async def target_nids(self, name: str) -> list[Nid]:
        """Where the MGS says target `name` serves now."""
        async with trio.open_nursery() as nursery:
            config = await self.read_config(nursery, timeout=self.connect_timeout)
        for t in config["targets"]:
            if t["name"] == name:
                return [Nid.parse(n) for n in t["nids"]]
        return []

    async def close(self) -> None:
        for imp in self.imports:
            opc = C.MDS_DISCONNECT if self.mdc and imp is self.mdc.imp else C.OST_DISCONNECT
            await imp.close(opc)
        for locks in self.locks.values():
            locks.close()
        for barrier in self.barriers.values():
            barrier.close()
