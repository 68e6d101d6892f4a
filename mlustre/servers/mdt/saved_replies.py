"""saved_replies.py - replies kept in the database with the updates they answer (Lustre's
last_rcvd reply data), so that a client resending after a crash gets the first answer."""

from __future__ import annotations

import msgpack

from ..reply_log import SavedReply
from .db import MdtDb


class SavedReplies:
    """The replies table."""

    def __init__(self, db: MdtDb) -> None:
        self._db = db

    def save(self, uuid: str, xid: int, saved: SavedReply, forgotten: int | None = None) -> None:
        """Keep a reply in the open transaction, with the update it answers: both
        survive a crash, or neither.  `forgotten`: an xid of the client's whose reply
        is no longer needed."""
        self._db.ensure_transaction()
        conn = self._db.conn
        conn.execute("INSERT OR REPLACE INTO replies (uuid, xid, transno, status, body)"
                     " VALUES (?, ?, ?, ?, ?)",
                     (uuid, xid, saved.transno, saved.status,
                      msgpack.packb(saved.body, use_bin_type=True)))
        if forgotten is not None:
            conn.execute("DELETE FROM replies WHERE uuid = ? AND xid = ?", (uuid, forgotten))

    def all(self) -> list[tuple[str, int, SavedReply]]:
        """Every kept reply, oldest first per client."""
        rows = self._db.conn.execute(
            "SELECT uuid, xid, transno, status, body FROM replies ORDER BY rowid").fetchall()
        return [(u, x, SavedReply(t, st, msgpack.unpackb(b, raw=False))) for u, x, t, st, b
                in rows]
