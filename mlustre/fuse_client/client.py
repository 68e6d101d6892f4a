"""client.py - a client node: MGS configuration, the MDT and OST imports.

Shared by the FUSE mount (node.py builds one, giving it the mount's hooks) and by
library-mode clients that speak to a filesystem without mounting it (tests, scale
benchmarks, lfs). Per target it builds a TargetLink (target_link.py: the Import, its
lock client, its barrier gate and its Mdc/Osc, the Import's events forwarded to them);
what the mount does on their events comes in as TargetHooks, passed to their
constructors.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import trio

from ..protocol import constants as C
from ..protocol.dialect import Identity
from ..protocol.errors import ConnectionLost
from ..protocol.nid import Nid, parse_spec
from ..protocol.session import Session
from .barrier import Barrier
from .imports import Import
from .ldlm import LockClient
from .mdc import Mdc
from .osc import UNSTABLE_LIMIT, UNSTABLE_TOTAL, Osc
from .target_link import TargetHooks, TargetLink

__all__ = ["ClientNode", "HooksFor", "TargetHooks", "no_hooks"]

log = logging.getLogger(__name__)


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
        self.links: dict[str, TargetLink] = {}  # target name -> all of the above
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
        self.mdc = self._link(mdts[0], "mdt", self.hooks("mdt", None)).mdc
        for t in osts:
            # Unstable data kept for replay: 64 MiB for the whole client (the
            # client stays within its memory budget however many OSTs there are).
            osc = self._link(t, "ost", self.hooks("ost", t["index"]),
                             unstable_limit=max(4 << 20, UNSTABLE_TOTAL // len(osts))).osc
            assert osc is not None
            self.oscs[t["index"]] = osc

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

    def _link(self, target: dict[str, Any], kind: str, hooks: TargetHooks,
              unstable_limit: int = UNSTABLE_LIMIT) -> TargetLink:
        flags = C.OBD_CONNECT_FID | C.OBD_CONNECT_IBITS | C.OBD_CONNECT_TRANSNO
        if self.update_lock:
            flags |= C.OBD_CONNECT_UPDATE_LOCK
        link = TargetLink(target["name"], kind, [Nid.parse(n) for n in target["nids"]],
                          client_uuid=self.uuid, index=target.get("index") or 0, hooks=hooks,
                          identity=self.identity, release=self.release, flags=flags,
                          connect_timeout=self.connect_timeout, key=self.key,
                          nid_source=self.target_nids, unstable_limit=unstable_limit)
        self.links[target["name"]] = link
        self.locks[target["name"]] = link.locks
        assert link.barrier is not None
        self.barriers[target["name"]] = link.barrier
        self.imports.append(link.imp)
        return link

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
