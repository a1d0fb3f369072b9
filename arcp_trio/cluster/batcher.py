"""The owner's write-behind for job events: queued without waiting, written to Redis
in batches (``scripts.emit``, one call per job per batch), in order per job.

An agent's ``emit`` must not wait for a round trip (the per-event path never waits,
as with SQLite's write-behind), and one script call per event would cap a node at a
few thousand events a second (``../shared/CLUSTER.md``). So ``publish`` appends to
the job's queue and the writer sends whatever has gathered, up to ``max_batch``
events a call, jobs in parallel (bounded), each job's calls one after another.

When Redis fails or does not answer, the batch stays queued and is sent again after
``retry_sec``: safe, because ``emit`` skips numbers the job already has, so a call
that did run and whose reply was lost changes nothing the second time. The queue is
bounded: past ``max_pending`` events ``congested`` is True and producers wait on
``wait_writable`` (``JobContext.emit`` already does for a durable store).

A job taken over by another node (``Fenced``) has its queue dropped and
``on_fenced`` called once: this node must stop the job without writing its terminal.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import attrs
import trio

from ..wire.errors import InternalError
from .redis import RedisError, unavailable
from .scripts import Fenced, HistoryEvent, emit

if TYPE_CHECKING:
    from collections.abc import Callable

    from .redis import Redis

__all__ = ["EmitBatcher"]

log = logging.getLogger(__name__)


@attrs.define
class _JobQueue:
    epoch: int
    history_cap: int
    events: deque[HistoryEvent] = attrs.field(factory=deque)
    #: Highest number Redis confirmed.
    written: int = 0
    busy: bool = False


class EmitBatcher:
    """Batches of job events into Redis, for one node (``run`` writes)."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        *,
        on_fenced: Callable[[str, Fenced], None],
        max_batch: int = 256,
        max_pending: int = 20_000,
        parallel: int = 16,
        retry_sec: float = 0.5,
    ) -> None:
        self._redis = redis
        self.node_id = node_id
        self._on_fenced = on_fenced
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._limiter = trio.Semaphore(parallel)
        self._retry_sec = retry_sec
        self._jobs: dict[str, _JobQueue] = {}
        self._ready: deque[str] = deque()
        self.pending = 0
        self._work = trio.Event()
        self._progress = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: False while Redis refuses or does not answer (batches wait and retry).
        self.healthy = True

    def publish(self, job_id: str, epoch: int, event: HistoryEvent, *, history_cap: int) -> None:
        """Queue one event of ``job_id`` (owned at ``epoch``). Never waits."""
        queue = self._jobs.get(job_id)
        if queue is None:
            queue = self._jobs[job_id] = _JobQueue(epoch=epoch, history_cap=history_cap)
        elif queue.epoch != epoch:
            raise InternalError(f"job {job_id}: epoch {epoch} after {queue.epoch}")
        queue.events.append(event)
        self.pending += 1
        if not queue.busy:
            queue.busy = True
            self._ready.append(job_id)
            self._work.set()

    @property
    def congested(self) -> bool:
        return self.pending >= self._max_pending

    async def wait_writable(self) -> None:
        """Until not ``congested``; always a scheduling point."""
        await trio.lowlevel.checkpoint()
        while self.congested:
            await self._wait_progress()

    def written(self, job_id: str) -> int:
        """The job's highest event number Redis has confirmed (0 for an unknown job)."""
        queue = self._jobs.get(job_id)
        return queue.written if queue is not None else 0

    async def flush(self, job_id: str) -> None:
        """Until every event of ``job_id`` queued so far is in Redis (before its
        terminal is written, so the terminal is its last stamp)."""
        queue = self._jobs.get(job_id)
        if queue is None or not queue.events:
            return
        target = queue.events[-1].number
        while job_id in self._jobs and self._jobs[job_id].written < target:
            await self._wait_progress()

    def forget(self, job_id: str) -> None:
        """The job ended (after its last ``flush``): drop its bookkeeping."""
        queue = self._jobs.get(job_id)
        if queue is not None and not queue.events:
            del self._jobs[job_id]

    async def _wait_progress(self) -> None:
        self._progress = self._progress if not self._progress.is_set() else trio.Event()
        await self._progress.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await self._work.wait()
                self._work = trio.Event()
                while self._ready:
                    job_id = self._ready.popleft()
                    await self._limiter.acquire()
                    nursery.start_soon(self._drain, job_id)

    async def _drain(self, job_id: str) -> None:
        """Write the job's queue until it is empty (one job, one call at a time)."""
        try:
            queue = self._jobs[job_id]
            while queue.events:
                # A job's first event goes alone: its watchers see it one round trip
                # after the agent's first yield, not after a whole batch is stamped.
                size = self._max_batch if queue.written else 1
                batch = [queue.events[i] for i in range(min(size, len(queue.events)))]
                try:
                    with trio.fail_after(10):
                        result = await emit(
                            self._redis,
                            job_id,
                            node=self.node_id,
                            epoch=queue.epoch,
                            events=batch,
                            history_cap=queue.history_cap,
                        )
                except Fenced as fenced:
                    self.pending -= len(queue.events)
                    del self._jobs[job_id]
                    self._signal()
                    log.warning("job taken over, its events dropped job=%s: %s", job_id, fenced)
                    self._on_fenced(job_id, fenced)
                    return
                except (RedisError, OSError, trio.TooSlowError) as exc:
                    if self.healthy:
                        log.warning("emit failed, will retry job=%s: %s", job_id, unavailable(exc))
                    self.healthy = False
                    await trio.sleep(self._retry_sec)
                    continue
                self.healthy = True
                while queue.events and queue.events[0].number <= result.last:
                    queue.events.popleft()
                    self.pending -= 1
                queue.written = result.last
                self._signal()
            queue.busy = False
        finally:
            self._limiter.release()

    def _signal(self) -> None:
        self._progress.set()
