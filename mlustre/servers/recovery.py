"""recovery.py - the MDT's recovery after a restart: whom it waits for, and the order
in which replayed updates run.

The clients connected when the last instance stopped are "known" (kept in the
storage as recovery.json, as Lustre's last_rcvd keeps its clients). After a restart,
until every known client has said it finished replaying (an OBD_PING flagged
MSG_REQ_REPLAY_DONE) or the recovery window has passed, replays run one at a time in
global transno order, and every other request waits. A replay runs when its transno
is the next one, or when no client that could still send a lower one is left (each
client replays one request at a time, so every other known client is then either
done or waiting with a higher one), or once the window is over. Known clients that
did not finish in the window are evicted. Plain class: the server drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Recovery:
    known: set[str]
    deadline: float  # in the server's clock
    done: set[str] = field(default_factory=set)
    queued: dict[str, int] = field(default_factory=dict)  # client -> transno it waits with
    replayed: int = 0

    @property
    def active(self) -> bool:
        return bool(self.known - self.done)

    def may_run(self, uuid: str, transno: int, next_transno: int, now: float) -> bool:
        """May `uuid`'s replay numbered `transno` run now?"""
        if transno <= next_transno or now >= self.deadline:
            return min(self.queued.values(), default=transno) >= transno
        waiting_for = self.known - self.done - set(self.queued)
        return not waiting_for and min(self.queued.values()) == transno

    def finish(self, uuid: str) -> None:
        self.done.add(uuid)
        self.queued.pop(uuid, None)

    def missing(self) -> set[str]:
        """Known clients that did not finish (to evict when the window ends)."""
        return self.known - self.done
