"""recovery.py - a target's recovery after a restart: whom it waits for, and the order
in which replayed updates and locks are taken.

The clients connected when the last instance stopped are "known" (kept in the
storage as recovery.json, as Lustre's last_rcvd keeps its clients). After a restart
recovery goes through Lustre's two phases:

1. Request replay. Until every known client has said it finished replaying its
   updates (an OBD_PING flagged MSG_REQ_REPLAY_DONE) or the window has passed,
   replays run one at a time in global transno order. A replay runs when its transno
   is the next one, or when no client that could still send a lower one is left (each
   client replays one request at a time, so every other known client is then either
   done or waiting with a higher one), or once the window is over.
2. Lock replay. Once no update replay can come any more, the locks clients held are
   granted again as they were (a lock taken by a replayed update's handler would
   otherwise call back a lock that is not replayed yet). A client says it is done
   with an OBD_PING flagged MSG_LOCK_REPLAY_DONE.

Every other request waits until every known client is through both phases, or the
window is over; the known clients that did not finish are then evicted. Plain
class: the server drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Recovery:
    known: set[str]
    deadline: float  # in the server's clock
    req_done: set[str] = field(default_factory=set)  # phase 1 over for these clients
    done: set[str] = field(default_factory=set)  # both phases over
    gone: set[str] = field(default_factory=set)  # left or evicted: not waited for
    queued: dict[str, int] = field(default_factory=dict)  # client -> transno it waits with
    replayed: int = 0
    replayed_locks: int = 0

    @property
    def active(self) -> bool:
        return bool(self.missing())

    @property
    def completed(self) -> int:
        return len((self.done & self.known) - self.gone)

    def may_run(self, uuid: str, transno: int, next_transno: int, now: float) -> bool:
        """May `uuid`'s replay numbered `transno` run now?"""
        if transno <= next_transno or now >= self.deadline:
            return min(self.queued.values(), default=transno) >= transno
        waiting_for = self.known - self.req_done - self.gone - set(self.queued)
        return not waiting_for and min(self.queued.values()) == transno

    def locks_may_replay(self, now: float) -> bool:
        """Phase 2: no update replay can come any more."""
        return not (self.known - self.req_done - self.gone) or now >= self.deadline

    def finish_requests(self, uuid: str) -> None:
        self.req_done.add(uuid)
        self.queued.pop(uuid, None)

    def finish(self, uuid: str) -> None:
        self.finish_requests(uuid)
        self.done.add(uuid)

    def leave(self, uuid: str) -> None:
        """A client disconnected cleanly or was evicted: not waited for any more."""
        self.gone.add(uuid)
        self.queued.pop(uuid, None)

    def missing(self) -> set[str]:
        """Known clients that did not finish (to evict when the window ends)."""
        return self.known - self.done - self.gone
