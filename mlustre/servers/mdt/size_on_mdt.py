"""size_on_mdt.py - when the size the MDT stores is the file's size (Size-on-MDT).

A file's size lives in its OST objects; the MDT learns it from its writers (the size and
mtime a client reports after writing, before it closes). Nobody but a writer changes the
objects' size, so the MDT's size is the size when:

* no handle is open for write on the file, and
* every writer since the MDT last knew the size closed cleanly (it reported what it
  wrote). A writer that vanished (evicted, or its report failed) or a crash of the MDT
  while the file was open for write leaves the size unsure until the file is truncated
  (a truncate sets the size on the MDT and the objects together).

A client may then take the size from the MDT's reply and skip the OST glimpse, for as long
as it holds an MDT lock with the SOM bit, which the MDT grants only in that state and calls
back when someone opens the file for write (docs/architecture.md, "Size on the MDT").
The sole writer may hold it too: the size it knows is the MDT's plus its own writes.

Marks are persistent (table som_unsure, written in the transaction of the open that makes
them, so a crash never forgets one); which marks are "trusted" (made during this run while
the size was known, by writers that are all still here) lives in memory only: after a
restart every mark stays until a truncate.
"""

from __future__ import annotations

from .db import MdtDb


class SizeAuthority:
    """Write handles per inode and the persistent 'size unsure' marks.

    The mutating methods run inside an operation of the database (MdtDb.run): their
    table changes go with it, their in-memory changes only if it succeeds.
    """

    def __init__(self, db: MdtDb) -> None:
        self._db = db
        self._marked: set[int] = {
            ino for (ino,) in db.conn.execute("SELECT ino FROM som_unsure")}
        self._trusted: set[int] = set()  # marks made this run, by writers all still here
        self._writer_ino: dict[int, int] = {}  # write handle -> ino
        self._writers: dict[int, set[int]] = {}  # ino -> its write handles

    def writers(self, ino: int) -> set[int]:
        """The handles open for write on ino."""
        return self._writers.get(ino, set())

    def known(self, ino: int) -> bool:
        """Is the size stored on the MDT the file's size, but for live writers' writes?"""
        return ino not in self._marked or ino in self._trusted

    def grantable(self, ino: int, mine: set[int] | frozenset[int]) -> bool:
        """May a client whose open handles are `mine` take ino's size from the MDT?"""
        return self.known(ino) and self.writers(ino) <= mine

    def writer_opened(self, ino: int, handle: int) -> None:
        """A handle opened ino for write (inside its operation)."""
        # (The table, not _marked: an earlier step of this operation may have changed it.)
        fresh = self._db.conn.execute(
            "SELECT 1 FROM som_unsure WHERE ino = ?", (ino,)).fetchone() is None
        if fresh:
            self._db.conn.execute("INSERT OR IGNORE INTO som_unsure (ino) VALUES (?)", (ino,))

        def register() -> None:
            self._marked.add(ino)
            if fresh:
                self._trusted.add(ino)
            self._writer_ino[handle] = ino
            self._writers.setdefault(ino, set()).add(handle)

        self._db.on_success(register)

    def closing(self, handle: int, clean: bool) -> None:
        """A handle closes (inside its operation). clean: its writer reported its size
        (not a client that left, nor a writer whose last report failed)."""
        ino = self._writer_ino.get(handle)
        if ino is None:
            return
        last = self._writers.get(ino, set()) == {handle}
        unmark = last and clean and ino in self._trusted
        if unmark:
            self._db.conn.execute("DELETE FROM som_unsure WHERE ino = ?", (ino,))

        def unregister() -> None:
            self._writer_ino.pop(handle, None)
            left = self._writers.get(ino, set())
            left.discard(handle)
            if not left:
                self._writers.pop(ino, None)
            if not clean:
                self._trusted.discard(ino)
            if unmark:
                self._marked.discard(ino)
                self._trusted.discard(ino)

        self._db.on_success(unregister)

    def truncated(self, ino: int) -> None:
        """ino's size was set on the MDT and its objects together (inside the operation):
        known again; with live writers, known but for what they write."""
        if self._db.conn.execute("SELECT 1 FROM som_unsure WHERE ino = ?",
                                 (ino,)).fetchone() is None:
            return
        if self.writers(ino):
            self._db.on_success(lambda: self._trusted.add(ino))
            return
        self._db.conn.execute("DELETE FROM som_unsure WHERE ino = ?", (ino,))

        def unmark() -> None:
            self._marked.discard(ino)
            self._trusted.discard(ino)

        self._db.on_success(unmark)
