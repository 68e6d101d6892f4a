"""replayed.py - an update a client sends again because a crash of the MDT lost it.

The server passes one to the store's update methods (None for a first execution), so that
the replay gets the transno, inode number, generation and OST objects it had the first time.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReplayedUpdate:
    """The replayed update's first transno and the attributes its first reply gave the
    inode it created ({} when it created none, or the client did not keep them)."""

    transno: int
    attr: dict = field(default_factory=dict)

    def identity(self) -> tuple[int, int] | None:
        """(ino, gen) the first execution gave the inode it created, if the reply said."""
        attr = self.attr
        if not attr or type(attr.get("ino")) is not int or type(attr.get("gen")) is not int:
            return None
        return attr["ino"], attr["gen"]

    def layout(self) -> dict | None:
        """The layout (OST objects) a replayed create had the first time."""
        layout = self.attr.get("layout") if self.attr else None
        return layout if isinstance(layout, dict) and layout.get("objects") else None
