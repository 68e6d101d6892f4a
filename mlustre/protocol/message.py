"""message.py - the neutral, release-independent form of one RPC message.

Both sides build and read `Message` objects; a `Codec` turns them into the wire
form of one release and back. Requests kept for replay stay in this form, so
they can be re-encoded for whatever release the server runs at send time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .constants import REPLY, REQUEST


@dataclass(slots=True)
class Message:
    """One request or reply.

    :type: REQUEST, REPLY or ERR.
    :opc: opcode (protocol.constants).
    :xid: per-connection request id; a reply carries its request's xid.
    :flags: MSG_* flags (RESENT, REPLAY, ...).
    :conn_cnt: the sender's connection epoch.
    :transno: on replies to updates, the transaction number given to it.
    :last_committed: on replies, the highest transno the target has committed.
    :status: 0, or a positive errno.
    :body: opcode-specific fields, a dict with str keys.
    :bulk: bulk data (BRW payloads), carried beside the encoded header.
    """

    type: int
    opc: int
    xid: int
    flags: int = 0
    conn_cnt: int = 0
    transno: int = 0
    last_committed: int = 0
    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    bulk: bytes | bytearray | memoryview | None = None

    @classmethod
    def request(cls, opc: int, xid: int, body: dict[str, Any] | None = None,
                flags: int = 0, conn_cnt: int = 0,
                bulk: bytes | bytearray | memoryview | None = None,
                transno: int = 0) -> Message:
        """A request; `transno` is set only on a replay (the update's first transno)."""
        return cls(REQUEST, opc, xid, flags, conn_cnt, transno, 0, 0, body or {}, bulk)

    def reply(self, body: dict[str, Any] | None = None, *, status: int = 0, transno: int = 0,
              last_committed: int = 0,
              bulk: bytes | bytearray | memoryview | None = None) -> Message:
        """The reply to this request."""
        return Message(REPLY, self.opc, self.xid, 0, self.conn_cnt, transno, last_committed,
                       status, body or {}, bulk)
