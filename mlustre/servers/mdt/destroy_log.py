"""destroy_log.py - OST objects to destroy: those of removed files and replaced layouts.

Rows are added in the transaction of the update that removed the objects' file; the server
destroys the objects once that transaction is committed (never before: a crash could
bring the file back) and then forgets the rows.
"""

from __future__ import annotations

import json

from .db import MdtDb


class DestroyLog:
    """The destroy_log table."""

    def __init__(self, db: MdtDb) -> None:
        self._db = db

    def add_layout(self, layout_json: str | None) -> None:
        """Log every object of a file layout (JSON as the inode row keeps it)."""
        if not layout_json:
            return
        objects = json.loads(layout_json)["objects"]
        self._db.conn.executemany(
            "INSERT INTO destroy_log (ost_idx, object_id) VALUES (?, ?)",
            [(ost, oid) for ost, oid in objects],
        )

    def pending(self, limit: int = 256) -> list[tuple[int, int, int]]:
        """Oldest rows: (log_id, ost_idx, object_id)."""
        return [
            tuple(r)
            for r in self._db.conn.execute(
                "SELECT id, ost_idx, object_id FROM destroy_log ORDER BY id LIMIT ?", (limit,)
            )
        ]

    def forget(self, log_ids: list[int]) -> None:
        """Delete rows whose objects are gone (an operation without transno)."""
        self._db.conn.executemany(
            "DELETE FROM destroy_log WHERE id = ?", [(int(i),) for i in log_ids]
        )
