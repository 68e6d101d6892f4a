"""give_back.py - when a data lock called back is given back: the pass rule, without I/O.

Giving back a data lock means passes of: write back its dirty data, push size and
mtime, drop the kernel's and the daemon's pages. The kernel may send I/O of the file
meanwhile (it can hold the very page lock the kernel invalidation waits for), and that
I/O is served under the lock being given back ("borrowed"): so a pass is repeated
until one sees no such I/O come or run. If I/O keeps coming for `max_passes` passes,
the lock is lent no more (FORCE): the I/O under it ends and one last pass writes back
and drops what it left, so nothing written under the lock stays behind its cancel.

The driver (data_locks.DataLocks.blocking) asks `next_step` before each pass, telling
it how many borrowed I/Os there have been and how many run now; it calls `started`
when a pass begins (after the I/O running under the lock has ended).
"""

from __future__ import annotations

from enum import Enum

REVOKE_PASSES = 8  # flush+invalidate rounds while the kernel keeps sending I/O


class Step(Enum):
    PASS = "pass"  # one more flush/invalidate/drop pass, the lock still lent
    FORCE = "force"  # lend the lock no more, then one last pass
    DONE = "done"  # nothing came during the last pass: cancel the lock


class GiveBack:
    """The passes of one lock's give-back.

    :passes: lending passes begun (the "revoke_passes" counter counts them).
    :forced: the lock stopped being lent (the "revokes_forced" counter).
    """

    def __init__(self, max_passes: int = REVOKE_PASSES) -> None:
        self.max_passes = max_passes
        self.passes = 0
        self.forced = False
        self._mark: int | None = None  # borrowed I/O count when the last pass began

    def next_step(self, borrowed_io: int, io_running: int) -> Step:
        """What to do now, `borrowed_io` I/Os having been served under the lock so far
        and `io_running` of them still running."""
        if self.forced:
            return Step.DONE
        if self._mark is not None and borrowed_io == self._mark and not io_running:
            return Step.DONE
        if self.passes < self.max_passes:
            self.passes += 1
            return Step.PASS
        self.forced = True
        return Step.FORCE

    def started(self, borrowed_io: int) -> None:
        """A pass begins now, `borrowed_io` I/Os served under the lock so far."""
        self._mark = borrowed_io
