"""waiters.py - callers waiting for their replies, and when they give up.

An RPC's caller waits for the reply its connection's reader hands over (rpc.py).
Both pieces here exist because the obvious trio forms cost more than the rest of a
small call on loopback: a `trio.Event` per call parks through a ParkingLot, and a
`trio.move_on_after` per call (a cancel scope with a deadline) costs about as much
as a whole scheduler pass. Instead a `ReplyWaiter` parks its task directly, and the
timeouts of all the calls of one connection are kept in one `Deadlines` heap that
the connection's single reaper task serves (one cancel scope per reaper sleep, not
per call).
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import trio


class ReplyWaiter:
    """One call's wait for its reply: `wake` (from the reader, the reaper or a close)
    ends it; `wait` returns at once if it has already ended."""

    __slots__ = ("reply", "error", "timed_out", "done", "_task")

    def __init__(self) -> None:
        self.reply: Any = None
        self.error: BaseException | None = None
        self.timed_out = False
        self.done = False
        self._task: trio.lowlevel.Task | None = None

    def wake(self) -> None:
        if self.done:
            return
        self.done = True
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._task = None  # cancelled: a later wake must not reschedule us
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        if self.done:
            await trio.lowlevel.checkpoint()  # (a checkpoint, as every wait is)
            return
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)


class Deadlines:
    """The pending calls' deadlines, earliest first (sans-IO: the reaper asks).

    A call that ends before its deadline is not removed (that would cost a heap search
    per call); its entry is dropped when it comes due, or when stale entries outnumber
    the live ones (`compact`)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ReplyWaiter]] = []
        self._seq = 0  # ties between equal deadlines never compare waiters

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline: float, waiter: ReplyWaiter) -> bool:
        """Track `waiter` until `deadline`; True if it is now the earliest (the reaper
        must wake up sooner than it planned)."""
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, waiter))
        return self._heap[0][2] is waiter

    def next_deadline(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def expire(self, now: float) -> list[ReplyWaiter]:
        """The waiters still waiting whose deadline is `now` or earlier (dropped from
        the heap, like the entries of calls that ended)."""
        heap, due = self._heap, []
        while heap and heap[0][0] <= now:
            waiter = heapq.heappop(heap)[2]
            if not waiter.done:
                due.append(waiter)
        return due

    def compact(self, live: int) -> None:
        """Drop the entries of ended calls once they are most of the heap (`live`: how
        many calls may still be waiting), so a busy connection's heap stays small."""
        if len(self._heap) > 2 * live + 64:
            self._heap = [e for e in self._heap if not e[2].done]
            heapq.heapify(self._heap)
