"""mgs.py - the management server: the filesystem's configuration.

Holds the fsname, the default striping and every target with its NIDs
(including failover NIDs). Targets register when they start; clients (and the
MDT, which needs the OSTs) read the configuration. Persisted as JSON in the
MGS's storage so a restarted MGS knows the filesystem.
"""

from __future__ import annotations

import errno
import json
import logging
from typing import Any

import trio

from ..protocol import constants as C
from ..protocol.message import Message
from ..protocol.nid import Nid
from ..protocol.session import Session
from .target import Export, ServiceError, TargetServer, body_field

log = logging.getLogger(__name__)

TARGET_KINDS = ("mdt", "ost")


class MgsServer(TargetServer):
    kind = "mgs"
    connect_opcodes = (C.MGS_CONNECT,)
    disconnect_opcodes = (C.MGS_DISCONNECT,)

    def __init__(self, fsname: str, data_dir: str, *, stripe_count: int | None = None,
                 stripe_size: int | None = None, **kw: Any) -> None:
        super().__init__(f"{fsname}-MGS", data_dir, fsname=fsname, **kw)
        self.fsname = fsname
        # Given values change the filesystem's defaults; None keeps what the MGS has.
        self.given_stripes = {k: v for k, v in (("stripe_count", stripe_count),
                                                ("stripe_size", stripe_size)) if v is not None}
        self.config: dict[str, Any] = {"fsname": fsname, "stripe_count": 1,
                                       "stripe_size": 1 << 20, "targets": {}}
        self.handlers = {C.MGS_TARGET_REG: self.target_reg, C.MGS_CONFIG_READ: self.config_read}

    def open_storage(self) -> None:
        super().open_storage()
        saved = self.storage.read_json("config.json")
        if isinstance(saved, dict):
            if saved.get("fsname") != self.fsname:
                raise OSError(f"MGS storage holds filesystem {saved.get('fsname')!r}, "
                              f"not {self.fsname!r}")
            self.config = saved
        if self.given_stripes or not isinstance(saved, dict):
            self.config.update(self.given_stripes)
            self._save()

    def _save(self) -> None:
        self.storage.write_atomic("config.json", json.dumps(self.config, indent=1).encode())

    async def target_reg(self, export: Export, req: Message) -> dict[str, Any]:
        body = req.body
        name = body_field(body, "name", str)
        kind = body_field(body, "kind", str)
        index = body_field(body, "index", int)
        nid = body_field(body, "nid", str)
        failover = body_field(body, "failover_nids", list, default=[])
        instance = body_field(body, "instance", int, default=0)
        if kind not in TARGET_KINDS or not 0 <= index <= 0xFFFF:
            raise ServiceError(errno.EINVAL, "bad target kind or index")
        if not 0 <= instance < (1 << 63):
            raise ServiceError(errno.EINVAL, "instance out of range")
        if name != target_name(self.fsname, kind, index):
            raise ServiceError(errno.EINVAL, f"target name {name!r} does not match its kind/index")
        try:
            nids = [str(Nid.parse(n)) for n in [nid, *failover] if isinstance(n, str)]
        except ValueError as e:
            raise ServiceError(errno.EINVAL, str(e)) from None
        if len(nids) != 1 + len(failover) or len(nids) > 16:
            raise ServiceError(errno.EINVAL, "bad failover NID list")
        old = self.config["targets"].get(name)
        if old is not None and (old["kind"] != kind or old["index"] != index):
            raise ServiceError(errno.EEXIST, f"{name} is registered as another target")
        # Every field checked: only now change anything. The NID serving now goes first
        # (clients try it first), then its failover partners.
        self.config["targets"][name] = {"kind": kind, "index": index,
                                        "nids": list(dict.fromkeys(nids)),
                                        "instance": instance}
        self._save()
        log.info("registered %s at %s", name, nid)
        return {"fsname": self.fsname}

    async def config_read(self, export: Export, req: Message) -> dict[str, Any]:
        targets = [{"name": n, **t} for n, t in sorted(self.config["targets"].items())]
        return {"fsname": self.fsname, "stripe_count": self.config["stripe_count"],
                "stripe_size": self.config["stripe_size"], "targets": targets}


def target_name(fsname: str, kind: str, index: int) -> str:
    """Lustre's target names: FSNAME-MDT0000, FSNAME-OST0001."""
    return f"{fsname}-{kind.upper()}{index:04X}"


async def read_config(nursery: trio.Nursery, mgs: list[Nid], fsname: str, client_uuid: str,
                      key: bytes | None) -> dict[str, Any]:
    """The filesystem's configuration as the MGS serves it (targets, their NIDs, the
    default striping), read over a session of its own by another server."""
    session = await Session.open(nursery, mgs, target=f"{fsname}-MGS",
                                 connect_opc=C.MGS_CONNECT, client_uuid=client_uuid, key=key)
    try:
        return (await session.call(C.MGS_CONFIG_READ)).body
    finally:
        await session.close()
