"""session.py - a plain connected RPC session to one target.

Used where reconnect-and-replay is not wanted: server-to-server links (a target
registering with the MGS, the MDT destroying OST objects) and admin commands.
The client's imports (fuse_client/imports.py) build recovery on top of this.
"""

from __future__ import annotations

import errno
import uuid as uuidlib
from typing import Any

import trio

from .errors import AuthError, ConnectionLost, RpcError, RpcTimeout
from .message import Message
from .nid import Nid
from .rpc import Endpoint, Handler
from .secure import open_connection


class Session:
    """An endpoint that has done the CONNECT handshake with one target."""

    def __init__(self, endpoint: Endpoint, nid: Nid, connect_reply: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.nid = nid
        self.server = connect_reply

    @classmethod
    async def open(cls, nursery: trio.Nursery, nids: list[Nid], *, target: str, connect_opc: int,
                   client_uuid: str | None = None, release: str = "2.0", flags: int = 0,
                   handler: Handler | None = None, timeout: float = 5.0,
                   extra: dict[str, Any] | None = None, key: bytes | None = None) -> Session:
        """Connect to the first NID that answers; ConnectionLost if none does.
        With a key, the connection is authenticated first; AuthError (at once, not
        trying further NIDs) if the key is wrong, missing or not used by the server."""
        errors = []
        for nid in nids:
            try:
                stream, mac = await open_connection(nid.host, nid.port, key,
                                                    peer=f"{target} at {nid}", timeout=timeout)
            except (OSError, trio.TooSlowError, ConnectionLost) as e:
                errors.append(f"{nid}: {e or 'timed out'}")
                continue
            endpoint = Endpoint(stream, codec=release, handler=handler, name=f"{target}@{nid}",
                                mac=mac)
            await nursery.start(endpoint.serve)
            body = {"uuid": client_uuid or str(uuidlib.uuid4()), "target": target,
                    "release": release, "flags": flags, **(extra or {})}
            try:
                reply = await endpoint.call(connect_opc, body, timeout=timeout)
            except (ConnectionLost, RpcTimeout) as e:
                errors.append(f"{nid}: {e}")
                await endpoint.aclose()
                continue
            if reply.status:
                await endpoint.aclose()
                if reply.status == errno.EACCES:  # a secure server, and we have no key
                    raise AuthError(f"authentication with {target} at {nid} failed: "
                                    f"{reply.body.get('error', 'key required')}")
                raise RpcError(reply.status, f"{target} at {nid} refused the connection: "
                               f"{reply.body.get('error', reply.status)}")
            return cls(endpoint, nid, reply.body)
        raise ConnectionLost(f"cannot reach {target}: " + "; ".join(errors))

    async def call(self, opc: int, body: dict[str, Any] | None = None, *,
                   timeout: float = 30.0) -> Message:
        """A request whose non-zero status raises RpcError."""
        reply = await self.endpoint.call(opc, body, timeout=timeout)
        if reply.status:
            raise RpcError(reply.status, str(reply.body.get("error", "")))
        return reply

    async def close(self) -> None:
        await self.endpoint.aclose()
