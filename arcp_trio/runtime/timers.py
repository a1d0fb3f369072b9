"""One task for many deadlines: heartbeats (§6.4) and resume windows (§6.3).

Theory of operation
-------------------
A runtime with thousands of idle sessions should not keep thousands of sleeping
tasks: each costs memory, and each wake-up costs the scheduler a pass. ``Timers``
keeps every deadline in one heap, and one task (``run``, started in the runtime's
session nursery) sleeps until the earliest of them.

Coalescing: after a wake-up the task sleeps at least ``granularity`` seconds, so
deadlines that fall close together are served in one pass (and the frames they
queue — pings, say — leave and their answers arrive in bursts, which the scheduler
handles far more cheaply than one at a time). A deadline may therefore fire up to
``granularity`` late, never early; callers that must act *by* a time schedule that
much ahead (``HeartbeatMonitor.slack``).

Callbacks are synchronous and get Trio's ``now``. One that raises is logged and
dropped; it cannot stop the others or the task. Whoever schedules a callback owns
what its failure means: ``Connection`` ends itself if its heartbeat callback fails,
so a heartbeat error costs one connection, never the runtime
(``context/seed-heartbeat-reconnect-pr.txt`` is what happens otherwise).

Cancellation is lazy (a cancelled entry stays in the heap until it is due); the
heap is rebuilt once cancelled entries are the majority, so it stays bounded by the
number of live timers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Timer", "Timers"]

log = logging.getLogger(__name__)


class Timer:
    """A scheduled callback; ``cancel`` it to stop it from firing."""

    __slots__ = ("_queued", "_timers", "callback", "cancelled", "deadline")

    def __init__(self, timers: Timers, deadline: float, callback: Callable[[float], None]) -> None:
        self._timers = timers
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        #: Still in the heap (a cancelled one there counts towards a rebuild).
        self._queued = True

    def cancel(self) -> None:
        """Idempotent; safe from inside any callback, including this one's."""
        if not self.cancelled:
            self.cancelled = True
            if self._queued:
                self._timers._cancelled_one()


class Timers:
    """Deadlines served by one task. Build one per runtime; start ``run``."""

    def __init__(self, *, granularity: float = 0.0) -> None:
        if granularity < 0:
            raise ValueError(f"granularity must be >= 0, got {granularity}")
        self.granularity = granularity
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._cancelled = 0
        #: The scope the task sleeps in, while it sleeps: moved earlier by ``call_at``.
        self._sleep: trio.CancelScope | None = None
        self._not_before = -math.inf

    def __len__(self) -> int:
        """Live (not cancelled) timers."""
        return len(self._heap) - self._cancelled

    def call_at(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        """Call ``callback(now)`` once Trio time reaches ``deadline`` (see coalescing)."""
        timer = Timer(self, deadline, callback)
        heapq.heappush(self._heap, (deadline, next(self._order), timer))
        sleep = self._sleep
        if sleep is not None and deadline < sleep.deadline:
            sleep.deadline = max(deadline, self._not_before)
        return timer

    async def run(self) -> None:
        """Serve deadlines until cancelled. Never raises for a callback's error."""
        while True:
            wake_at = self._heap[0][0] if self._heap else math.inf
            with trio.CancelScope(deadline=max(wake_at, self._not_before)) as sleep:
                self._sleep = sleep
                try:
                    await trio.sleep_forever()
                finally:
                    self._sleep = None
            now = trio.current_time()
            self._not_before = now + self.granularity
            self._fire(now)

    def _fire(self, now: float) -> None:
        heap = self._heap
        due: list[Timer] = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            timer._queued = False
            if timer.cancelled:
                self._cancelled -= 1
            else:
                due.append(timer)
        for timer in due:
            if timer.cancelled:
                continue  # cancelled by an earlier callback of this pass
            # Fired timers count as done: a callback cancelling its own timer is a no-op.
            timer.cancelled = True
            try:
                timer.callback(now)
            except Exception:
                log.error("timer callback failed callback=%r", timer.callback, exc_info=True)

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            kept = []
            for entry in self._heap:
                if entry[2].cancelled:
                    entry[2]._queued = False
                else:
                    kept.append(entry)
            heapq.heapify(kept)
            self._heap = kept
            self._cancelled = 0
