"""The runtime's state on Redis: what makes several ``arcp-trio serve`` processes one
runtime (docs/cluster.md). ``ClusterState`` is ``runtime.routing.SharedState``.

What each process keeps in RAM: the jobs it runs (and the last few it finished),
the sessions attached to it, and its connections. Everything else is in Redis,
written by the scripts of ``scripts.py`` (one atomic step each):

- a job's events go through the owner's ``EmitBatcher`` (write-behind, batched),
  whose ``emit`` stamps each into every watching session's stream inside Redis;
- the process a session is attached to reads its stream (``NodeReader``) and
  hands the frames to the connection: replay after a resume and live events are
  one path, in the session's own seq order (§8.3), on whichever node it is;
- a subscribe stamps the job's history and adds the watcher in one step per page
  (``attach_watcher``), wherever the job runs (§7.6);
- a cancel goes to the owner's control stream (§7.4); an idempotent submit is one
  ``admit`` for the whole cluster (§7.2);
- a node that stops renewing its lease has its running jobs ended by the others
  (``Janitor``) with their terminal, and is fenced from writing more for them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..protocol.eventlog import EventBuffer
from ..protocol.job import JobRecord, JobStatus, Terminal
from ..protocol.session import Dialect, ResumeWindow
from ..runtime.recovery import job_from_row, job_to_row, session_to_row
from ..runtime.session import Session
from ..runtime.state import MemoryJobRegistry, MemorySessionDirectory
from ..store.base import MemoryStore, SessionRow, StoreError
from ..wire.codec import dumps, encode_job_frame
from ..wire.errors import (
    DuplicateKey,
    ErrorCode,
    InternalError,
    InvalidRequest,
    JobNotFound,
    ResumeWindowExpired,
)
from ..wire.ids import new_frame_id, new_ulid
from ..wire.messages import MessageType
from . import jobs as cluster_jobs
from . import keys, scripts
from . import sessions as cluster_sessions
from .batcher import EmitBatcher
from .node import NodeLease, dead_nodes, orphans
from .reader import NodeReader, StampedFrame
from .redis import RedisError, unavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from ..runtime.config import RuntimeConfig
    from ..runtime.connection import Connection
    from ..runtime.routing import Canceller, Restarter
    from .redis import Redis

__all__ = ["ClusterSettings", "ClusterState", "default_node_id"]

log = logging.getLogger(__name__)

#: Finished jobs a node keeps in RAM after their terminal is in Redis (so that
#: ``Runtime.wait_job_done`` and a quick re-subscribe find them); older ones are
#: read back from Redis, like any other node's.
_FINISHED_IN_RAM = 256

#: Why Redis operations fail here: retried, or reported as a retryable error.
_REDIS_ERRORS = (RedisError, OSError, trio.TooSlowError)


def default_node_id() -> str:
    """Unique per process: host name, process id and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{new_ulid()[-6:].lower()}"


@attrs.frozen(kw_only=True)
class ClusterSettings:
    """How a node takes part in the cluster.

    Attributes:
        node_id: this process's name in the cluster (unique; ``default_node_id``).
        lease_sec: a node that has not renewed its lease for this long is dead: its
            running jobs are ended by the others (within ``lease_sec +
            janitor_sec`` plus a round trip: under 6 s by default).
        janitor_sec: how often each node looks for dead nodes.
        retry_sec: how long a write that Redis refused waits before it is tried again.
    """

    node_id: str = attrs.field(factory=default_node_id)
    lease_sec: float = 3.0
    janitor_sec: float = 1.0
    retry_sec: float = 0.5

    def __attrs_post_init__(self) -> None:
        if not self.node_id or any(c in self.node_id for c in "{}: \t\n"):
            raise ValueError(f"node id {self.node_id!r}: no spaces, braces or colons")
        if not 0 < self.janitor_sec < self.lease_sec:
            raise ValueError("janitor_sec must be positive and below lease_sec")


class _WriteBehind:
    """Writes keyed by what they write, the latest of each winning, sent by one task
    (``run``) and retried while Redis refuses: a session's row, its acknowledgement.
    Bounded by the number of keys (live sessions and jobs), never by traffic."""

    def __init__(self, retry_sec: float) -> None:
        self._retry_sec = retry_sec
        self._pending: dict[str, Callable[[], Awaitable[None]]] = {}
        self._work = trio.Event()
        self._progress = trio.Event()
        self._in_flight: str | None = None

    def put(self, key: str, write: Callable[[], Awaitable[None]]) -> None:
        self._pending[key] = write
        self._work.set()

    def __len__(self) -> int:
        return len(self._pending) + (self._in_flight is not None)

    async def wait_sent(self, key: str | None = None) -> None:
        """Until ``key``'s write (or every write, for None) queued so far is sent."""
        while (key in self._pending or self._in_flight == key) if key else len(self):
            if self._progress.is_set():
                self._progress = trio.Event()
            await self._progress.wait()

    async def run(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            while self._pending:
                key = next(iter(self._pending))
                write = self._pending.pop(key)
                self._in_flight = key
                try:
                    with trio.fail_after(10):
                        await write()
                except _REDIS_ERRORS as exc:
                    log.warning("write to redis failed, will retry key=%s: %s", key, exc)
                    self._pending.setdefault(key, write)
                    await trio.sleep(self._retry_sec)
                finally:
                    self._in_flight = None
                    self._progress.set()


class ClusterStore(MemoryStore):
    """The local store of a cluster node: nothing is kept on its disk (Redis has
    it all); its back-pressure is the event batcher's, and an acknowledgement
    trims the session's stream in Redis (§6.5)."""

    def __init__(self, state: ClusterState) -> None:
        super().__init__()
        self._state = state

    @property
    def congested(self) -> bool:  # type: ignore[override]  # (an attribute there)
        return self._state.batcher.congested

    async def wait_writable(self) -> None:
        await self._state.batcher.wait_writable()

    def trim_events(self, session_id: str, through_seq: int) -> None:
        self._state.ack(session_id, through_seq)


class RedisJobRegistry(MemoryJobRegistry):
    """``JobRegistry`` for a cluster: RAM holds the jobs this node runs; Redis every
    job (listing, idempotency, lookups of other nodes' jobs)."""

    def __init__(self, state: ClusterState) -> None:
        super().__init__()
        self._state = state
        self._finished: deque[JobRecord] = deque()

    def next_ordinal(self) -> int:
        return 0  # ``admit`` numbers the job, once for the whole cluster

    async def lookup(self, job_id: str) -> JobRecord | None:
        local = self.get(job_id)
        if local is not None:
            return local
        return await self._state.load_job(job_id)

    async def holder(self, principal: str, key: str, fingerprint: str) -> JobRecord | None:
        redis = self._state.redis
        try:
            job_id, print_ = await redis.hmget(
                keys.idempotency(principal, key), ["job", "fingerprint"]
            )
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        if job_id is None:
            return None
        if str(print_) != fingerprint:
            raise DuplicateKey(f"idempotency_key {key!r} was used with different parameters")
        return await self._holder_job(str(job_id))

    async def _holder_job(self, job_id: str) -> JobRecord:
        job = await self.lookup(job_id)
        if job is None:
            raise StoreError("the original submit's job is gone; retry")
        return job

    async def admit(self, job: JobRecord, *, fingerprint: str | None) -> JobRecord:
        state = self._state
        try:
            job.ordinal = await cluster_jobs.next_ordinal(state.redis)
            admitted = await scripts.admit(
                state.redis,
                job_id=job.job_id,
                principal=job.principal,
                owner=state.node_id,
                ordinal=job.ordinal,
                row=dumps(job_to_row(job)),
                idempotency_key=job.idempotency_key if fingerprint is not None else None,
                fingerprint=fingerprint or "",
                watcher=job.session_id,
            )
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        if admitted.created:
            self._table.add(job)
            state.router.owned(job.job_id, epoch=1)
            return job
        if admitted.fingerprint != (fingerprint or ""):
            raise DuplicateKey(
                f"idempotency_key {job.idempotency_key!r} was used with different parameters"
            )
        return await self._holder_job(admitted.job_id)

    def withdraw(self, job: JobRecord) -> None:
        super().withdraw(job)
        self._state.spawn(self._state.delete_job, job)

    def save(self, job: JobRecord) -> None:
        if self.get(job.job_id) is job:
            self._state.save_job(job)

    def adopt(self, job: JobRecord) -> None:
        """A job this node now runs (taken over from a dead node to run again)."""
        self._table.add(job)

    def finished(self, job: JobRecord) -> None:
        """Its terminal is in Redis: RAM keeps it among the last few finished."""
        self._finished.append(job)
        while len(self._finished) > _FINISHED_IN_RAM:
            old = self._finished.popleft()
            if self.get(old.job_id) is old:
                self._table.remove(old)

    async def list_for(
        self,
        principal: str,
        *,
        statuses: frozenset[str] | None,
        agent: str | None,
        created_after: datetime | None,
        limit: int,
        cursor: str | None,
        visible: Callable[[JobRecord], bool] | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """§6.6 across every node: the principal's index in Redis, by ordinal (keyset
        pagination). The filters are applied to each page read, a bounded number of
        pages per request (the cursor says where to go on)."""
        try:
            after = int(cursor) if cursor else 0
        except ValueError:
            where = "$.payload.cursor"
            raise InvalidRequest.at(where, "not a cursor this runtime issued") from None
        found: list[JobRecord] = []
        next_cursor: str | None = None
        try:
            for _ in range(8):
                rows, more = await cluster_jobs.list_for(
                    self._state.redis, principal, after=after, limit=limit - len(found)
                )
                for row in rows:
                    job = self._state.job_of(row.row_json, status=row.status)
                    if job is None or job.principal != principal:
                        continue
                    if statuses is not None and str(job.status) not in statuses:
                        continue
                    if agent is not None and job.agent_name != agent and job.agent != agent:
                        continue
                    if created_after is not None and job.created_at <= created_after:
                        continue
                    if visible is not None and not visible(job):
                        continue
                    found.append(job)
                if more is None:
                    return found, None
                after = more
                next_cursor = str(more)
                if len(found) >= limit:
                    break
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        return found, next_cursor


class RedisSessionDirectory(MemorySessionDirectory):
    """``SessionDirectory`` for a cluster: RAM holds the sessions attached here;
    Redis every session in its resume window (found by id or token, from any node)."""

    def __init__(self, state: ClusterState) -> None:
        super().__init__()
        self._state = state
        #: Token hashes last written to Redis's index, per session.
        self._written_tokens: dict[str, set[str]] = {}

    async def add(self, session: Session) -> None:
        state = self._state
        try:
            await scripts.open_session(
                state.redis,
                session.session_id,
                principal=session.principal,
                cap=session.buffer.max_events,
                dialect=session.dialect.value,
            )
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        self.index(session)

    async def find(self, session_id: str | None, token_hash: str) -> Session | None:
        redis = self._state.redis
        try:
            if session_id is None:
                session_id = await cluster_sessions.find_by_token(redis, token_hash)
                if session_id is None:
                    return None
            local = self.get(session_id)
            if local is not None and local.connection is not None:
                return local  # attached here: the resume supersedes it (§6.3)
            found = await cluster_sessions.state(redis, session_id)
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        if found is None or not found.row_json:
            return None
        return self._state.session_of(session_id, found)

    def save(self, session: Session) -> None:
        if self.get(session.session_id) is session:
            self._state.save_session(session, self)

    def retire_tokens(self, session: Session) -> tuple[set[str], set[str]]:
        """The token hashes to index now, and those to drop from the index."""
        valid = session.valid_token_hashes()
        old = self._written_tokens.get(session.session_id, set())
        self._written_tokens[session.session_id] = valid
        return valid, old - valid

    def remove(self, session: Session) -> None:
        super().remove(session)
        self._written_tokens.pop(session.session_id, None)


class RedisRouter:
    """``Router`` for a cluster: events and terminals go into Redis (the owner's
    batcher, then ``finish``), and reach watchers through their sessions' streams."""

    def __init__(self, state: ClusterState, *, timestamp: Callable[[], str]) -> None:
        self._state = state
        self.timestamp = timestamp
        self._canceller: Canceller = lambda _job_id, _why: False
        #: The epoch at which this node owns each job it runs (fencing: ``emit``).
        self._epochs: dict[str, int] = {}
        self.events_published = self.events_delivered = self.overflows = 0
        self.events_evicted = self.history_ram_total = 0

    def owned(self, job_id: str, *, epoch: int) -> None:
        self._epochs[job_id] = epoch

    def set_canceller(self, canceller: Canceller) -> None:
        self._canceller = canceller

    def epoch_of(self, job_id: str) -> int | None:
        """The epoch this node owns the job at; None: not this node's to write."""
        return self._epochs.get(job_id)

    def end_here(self, job_id: str, why: Terminal) -> bool:
        """End a job this node runs (a request from another node: never forwarded)."""
        return self._canceller(job_id, why)

    def publish(self, job: JobRecord, kind: str, body: Any) -> None:
        epoch = self._epochs.get(job.job_id)
        if epoch is None:
            return  # fenced: another node took the job over; this one writes nothing
        self.events_published += 1
        job.last_event_index += 1
        payload_json = dumps({"kind": kind, "ts": self.timestamp(), "body": body})
        self._state.batcher.publish(
            job.job_id,
            epoch,
            scripts.HistoryEvent(
                number=job.last_event_index,
                frame_id=new_frame_id(),
                payload_json=payload_json,
                trace_id=job.trace_id or "",
            ),
            history_cap=job.history_limit,
        )

    def publish_terminal(self, job: JobRecord) -> None:
        epoch = self._epochs.pop(job.job_id, None)
        frame_id = new_ulid()
        job.terminal_frame_id = frame_id
        if epoch is not None:
            self._state.spawn(self._state.write_terminal, job, epoch, frame_id)

    def deliver(
        self,
        session: Session,
        job: JobRecord,
        message_type: MessageType,
        frame_id: str,
        payload_json: str,
    ) -> None:
        self._state.spawn(
            self._state.deliver, session.session_id, job, str(message_type), frame_id, payload_json
        )

    def deliver_terminal(self, session: Session, job: JobRecord) -> None:
        assert job.terminal is not None
        message_type, payload = job.terminal.render(session.dialect)
        self.deliver(
            session, job, message_type, job.terminal_frame_id or new_ulid(), dumps(payload)
        )

    def watching(self, job: JobRecord) -> list[Session]:
        """Back-pressure comes from the batcher here (``ClusterStore``), not from
        watchers' connections: they may be on any node."""
        return []

    def request_cancel(self, job_id: str, why: Terminal) -> bool:
        if self._canceller(job_id, why):
            return True
        self._state.spawn(self._state.cancel_remote, job_id, why)
        return False

    async def cancel(self, job_id: str, why: Terminal) -> bool:
        if self._canceller(job_id, why):
            return True
        try:
            return await self._state.cancel_remote(job_id, why)
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None

    def fenced(self, job_id: str) -> None:
        self._epochs.pop(job_id, None)

    def uncache(self, job: JobRecord) -> None:
        """RAM holds no job history here (Redis has it)."""


@attrs.define
class _Attachment:
    """A session attached to this node: its Redis attach epoch and the seq its
    connection has been handed through."""

    epoch: int
    delivered: int
    paused: bool = False


class ClusterDelivery:
    """``SharedDelivery`` on Redis: sessions are claimed, fed from their streams and
    released (docs/cluster.md, "The flow of one event")."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._attached: dict[str, _Attachment] = {}

    async def attached(self, connection: Connection, *, after: int) -> None:
        state = self._state
        session = connection.session
        directory = state.sessions
        try:
            claimed = await cluster_sessions.attach(
                state.redis,
                session.session_id,
                node=state.node_id,
                tokens=session.valid_token_hashes(),
            )
            directory.index(session)
            # The welcome's new token must find the session from any node at once.
            await state.write_session_row(session, directory)
            if claimed.previous and claimed.previous != state.node_id:
                notice = {"kind": "superseded", "session": session.session_id}
                notice["epoch"] = str(claimed.epoch)
                await state.reader.send_control(claimed.previous, notice)
        except LookupError:
            directory.remove(session)
            raise ResumeWindowExpired("the session's resume window has ended") from None
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        self._attached[session.session_id] = _Attachment(epoch=claimed.epoch, delivered=after)
        # From here the buffer mirrors what this connection is handed: seqs after
        # ``after`` (the handshake checked that the stream still has them all).
        buffer = session.buffer
        session.buffer = EventBuffer.restore(
            [],
            max_events=buffer.max_events,
            acked_through=buffer.acked_through,
            evicted_through=buffer.evicted_through,
            cache_limit=0,
            last_seq=after,
            first_stored_seq=after + 1,
        )
        await state.reader.watch(session.session_id, after)

    def detached(self, connection: Connection) -> None:
        state = self._state
        session = connection.session
        attachment = self._attached.pop(session.session_id, None)
        state.reader.unwatch(session.session_id)
        state.sessions.remove(session)
        if attachment is not None:
            state.spawn(state.detach_session, session, attachment.epoch)

    def superseded(self, session_id: str, epoch: int) -> None:
        """Another node holds the session now (a resume there, §6.3)."""
        attachment = self._attached.get(session_id)
        session = self._state.sessions.get(session_id)
        if attachment is None or attachment.epoch >= epoch or session is None:
            return
        if session.connection is not None:
            session.connection.abort("superseded by a resume on another node")

    def frames(self, session_id: str, frames: list[StampedFrame]) -> None:
        """The reader's batch for one attached session: to its connection, in order.
        A batch this cannot hand over ends that connection (the client resumes from
        its last seq), never the reader."""
        try:
            self._hand_over(session_id, frames)
        except Exception:
            log.exception("session frames could not be delivered session_id=%s", session_id)
            self._state.reader.unwatch(session_id)
            session = self._state.sessions.get(session_id)
            if session is not None and session.connection is not None:
                session.connection.abort("internal error delivering frames")

    def _hand_over(self, session_id: str, frames: list[StampedFrame]) -> None:
        state = self._state
        attachment = self._attached.get(session_id)
        session = state.sessions.get(session_id)
        connection = session.connection if session is not None else None
        if attachment is None or session is None or connection is None or connection.closed:
            state.reader.unwatch(session_id)
            return
        buffer = session.buffer
        for frame in frames:
            if frame.seq <= attachment.delivered:
                continue  # already handed over (a re-watch overlapping a read)
            if frame.seq != buffer.last_seq + 1:
                # The stream's cap dropped frames the client never got (§6.5): said,
                # not skipped silently. The buffer learns where the stream goes on.
                state.router.overflows += 1
                state.router.events_evicted += frame.seq - buffer.last_seq - 1
                log.warning(
                    "session stream evicted unread events session_id=%s through=%s",
                    session_id,
                    frame.seq - 1,
                )
                buffer.skip_to(frame.seq - 1)
            text = encode_job_frame(
                MessageType(frame.message_type),
                frame_id=frame.frame_id,
                session_id=session_id,
                job_id=frame.job_id,
                event_seq=frame.seq,
                trace_id=frame.trace_id,
                payload_json=frame.payload_json,
            )
            buffer.append(frame.seq, frame.job_id, text)
            connection.enqueue(text)
            attachment.delivered = frame.seq
            state.router.events_delivered += 1
        if connection.congested and not attachment.paused:
            # A slow client: its frames wait in Redis, not here (bounded RAM).
            attachment.paused = True
            state.reader.unwatch(session_id)
            state.spawn(self._resume_when_writable, session_id, connection)

    async def _resume_when_writable(self, session_id: str, connection: Connection) -> None:
        await connection.wait_writable()
        attachment = self._attached.get(session_id)
        if attachment is None or connection.closed:
            return
        attachment.paused = False
        await self._state.reader.watch(session_id, attachment.delivered)

    async def watch(self, connection: Connection, job: JobRecord, *, after: int | None) -> None:
        state = self._state
        attach_id = new_ulid()
        start = after if after is not None else 1 << 62
        try:
            for _ in range(job.history_limit // 256 + 2):
                watched = await scripts.attach_watcher(
                    state.redis,
                    job.job_id,
                    connection.session.session_id,
                    after=start,
                    attach_id=attach_id,
                )
                if watched.done:
                    return
                start = watched.through
        except LookupError:
            raise JobNotFound(f"job {job.job_id!r} not found") from None
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        raise InternalError("the history replay could not catch up with the job")

    def unwatch(self, session: Session, job_id: str) -> None:
        self._state.spawn(self._state.remove_watcher, job_id, session.session_id)

    async def keep_for_restart(self, job: JobRecord, agent: str, input_: Any) -> None:
        try:
            await self._state.redis.hset(
                keys.job(job.job_id), {"restart": dumps({"agent": agent, "input": input_})}
            )
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None


class ClusterState:
    """``SharedState`` on Redis for one node (``open_cluster_runtime`` builds it)."""

    def __init__(
        self,
        redis: Redis,
        settings: ClusterSettings,
        *,
        config: RuntimeConfig,
        timestamp: Callable[[], str],
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.node_id = settings.node_id
        self._config = config
        self.batcher = EmitBatcher(
            redis, self.node_id, on_fenced=self._on_fenced, retry_sec=settings.retry_sec
        )
        self.delivery = ClusterDelivery(self)
        self.reader = NodeReader(
            redis,
            self.node_id,
            on_frames=self.delivery.frames,
            on_control=self._on_control,
            retry_sec=settings.retry_sec,
        )
        self.lease = NodeLease(
            redis, self.node_id, lease_sec=settings.lease_sec, renew_sec=settings.lease_sec / 3
        )
        self.registry = RedisJobRegistry(self)
        self.sessions = RedisSessionDirectory(self)
        self.router = RedisRouter(self, timestamp=timestamp)
        self.store = ClusterStore(self)
        self._rows = _WriteBehind(settings.retry_sec)
        self._restart: Restarter = lambda _job, _agent, _input: False
        self._nursery: trio.Nursery | None = None
        self._tasks = 0
        self._idle = trio.Event()
        self._idle.set()
        #: Jobs of dead nodes this node ended (``Janitor``), and nodes it saw die.
        self.jobs_taken_over = 0
        self.nodes_seen_dead = 0

    # -- tasks --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.lease.run)
            await nursery.start(self.batcher.run)
            await nursery.start(self.reader.run)
            nursery.start_soon(self._rows.run)
            nursery.start_soon(self._janitor)
            log.info("cluster node joined node=%s", self.node_id)
            task_status.started()

    def bind(self, restart: Restarter) -> None:
        self._restart = restart

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background, retrying while Redis refuses (a write
        the runtime asked for synchronously; ``drain`` waits for them)."""
        nursery = self._nursery
        if nursery is None or nursery.cancel_scope.cancel_called:
            log.error("cluster node stopped; a redis write is lost: %s", fn.__name__)
            return
        self._tasks += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        nursery.start_soon(self._retrying, fn, args)

    async def _retrying(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            for attempt in range(120):
                try:
                    with trio.fail_after(10):
                        await fn(*args)
                    return
                except _REDIS_ERRORS as exc:
                    if attempt == 0:
                        log.warning("redis write failed, retrying %s: %s", fn.__name__, exc)
                    await trio.sleep(self.settings.retry_sec)
                except Exception:
                    # A bug in one background write must not end the node's tasks.
                    log.exception("redis write failed for good: %s", fn.__name__)
                    return
            log.error("redis write abandoned after retries: %s%r", fn.__name__, args[:1])
        finally:
            self._tasks -= 1
            if not self._tasks:
                self._idle.set()

    async def drain(self) -> None:
        with trio.move_on_after(10):
            await self._idle.wait()
            await self._rows.wait_sent()
        with trio.move_on_after(2):
            try:
                await self.lease.leave()
                await self.redis.srem(keys.nodes(), [self.node_id])
            except _REDIS_ERRORS as exc:
                log.warning("cluster node could not leave cleanly node=%s: %s", self.node_id, exc)
        log.info("cluster node left node=%s", self.node_id)

    # -- records ------------------------------------------------------------------------

    def job_of(self, row_json: str, *, status: str) -> JobRecord | None:
        """A job as Redis has it (another node's, or one this node no longer holds)."""
        try:
            row = json.loads(row_json)
            job = job_from_row(row, history_limit=self._config.job_history_limit)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable job row in redis: %.200s", row_json)
            return None
        if status != "running" and job.terminal is None:
            # Ended by another node's janitor: its row was written with the terminal
            # below; until then the status alone says it is over.
            job.status = JobStatus(status)
        return job

    async def load_job(self, job_id: str) -> JobRecord | None:
        try:
            row, status, last = await self.redis.hmget(keys.job(job_id), ["row", "status", "n"])
        except _REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        if row is None:
            return None
        job = self.job_of(str(row), status=str(status))
        if job is not None:
            job.last_event_index = int(last or 0)
            job.history_start = max(1, job.last_event_index - job.history_limit + 1)
        return job

    def session_of(self, session_id: str, found: cluster_sessions.SessionState) -> Session | None:
        try:
            row = SessionRow(**json.loads(found.row_json))
        except (ValueError, TypeError):
            log.warning("unreadable session row in redis session_id=%s", session_id)
            return None
        acked, evicted = found.acked, found.evicted
        return Session(
            session_id=session_id,
            principal=row.principal,
            features=frozenset(row.features),
            dialect=Dialect(row.dialect),
            buffer=EventBuffer.restore(
                [],
                max_events=found.cap or self._config.max_buffered_events,
                acked_through=acked,
                evicted_through=evicted,
                cache_limit=0,
                last_seq=found.seq,
                first_stored_seq=max(acked, evicted) + 1,
            ),
            window=ResumeWindow(window_sec=self._config.resume_window_sec),
            token_hash=row.token_hash,
            confirmed_token_hash=row.confirmed_token_hash,
            client_name=row.client_name,
            submitted=set(row.submitted),
            subscribed=set(row.subscribed),
        )

    def save_job(self, job: JobRecord) -> None:
        epoch = self.router.epoch_of(job.job_id)
        if epoch is None:
            return  # not this node's to write (fenced, or its terminal is written)
        row = dumps(job_to_row(job))

        async def write() -> None:
            await scripts.save_row(self.redis, job.job_id, node=self.node_id, epoch=epoch, row=row)

        self._rows.put(f"j:{job.job_id}", write)

    def save_session(self, session: Session, directory: RedisSessionDirectory) -> None:
        async def write() -> None:
            await self.write_session_row(session, directory)

        self._rows.put(f"s:{session.session_id}", write)

    async def write_session_row(self, session: Session, directory: RedisSessionDirectory) -> None:
        valid, retired = directory.retire_tokens(session)
        await cluster_sessions.save_row(
            self.redis,
            session.session_id,
            dumps(attrs.asdict(session_to_row(session))),
            tokens=valid,
            retired=retired,
        )

    def ack(self, session_id: str, through: int) -> None:
        async def write() -> None:
            await cluster_sessions.ack(self.redis, session_id, through)

        self._rows.put(f"a:{session_id}", write)

    # -- background writes (``spawn``) ----------------------------------------------------

    async def write_terminal(self, job: JobRecord, epoch: int, frame_id: str) -> None:
        """After the job's last event: its terminal to every watcher, in Redis."""
        await self.batcher.flush(job.job_id)
        try:
            await self._write_final(job, epoch, frame_id)
        except scripts.Fenced as fenced:
            log.warning("job taken over before its terminal job=%s: %s", job.job_id, fenced)
            await self._retire(job)
        self.batcher.forget(job.job_id)
        self.registry.finished(job)

    async def _write_final(self, job: JobRecord, epoch: int, frame_id: str) -> None:
        """A job's end in Redis, the same for its owner and for a janitor: the
        terminal to every watcher (``finish``), the final row, then retention.

        Raises:
            scripts.Fenced: not this node's at ``epoch``; nothing was written.
        """
        terminal = job.terminal
        assert terminal is not None
        await scripts.finish(
            self.redis,
            job.job_id,
            node=self.node_id,
            epoch=epoch,
            frame_id=frame_id,
            status=str(terminal.status),
            shapes=terminal_shapes(terminal),
        )
        await scripts.save_row(
            self.redis, job.job_id, node=self.node_id, epoch=epoch, row=dumps(job_to_row(job))
        )
        await self._retire(job)

    async def _retire(self, job: JobRecord) -> None:
        await cluster_jobs.retire(
            self.redis,
            job.job_id,
            retention_sec=self._config.job_retention_sec,
            principal=job.principal,
            idempotency_key=job.idempotency_key,
        )

    async def deliver(
        self, session_id: str, job: JobRecord, message_type: str, frame_id: str, payload: str
    ) -> None:
        await self.batcher.flush(job.job_id)
        try:
            await scripts.deliver(
                self.redis,
                session_id,
                message_type=message_type,
                frame_id=frame_id,
                job_id=job.job_id,
                payload_json=payload,
                number=job.last_event_index,
                trace_id=job.trace_id or "",
            )
        except LookupError:
            log.info("frame for a session that is gone dropped session_id=%s", session_id)

    async def cancel_remote(self, job_id: str, why: Terminal) -> bool:
        """§7.4 across nodes: the request is recorded on the job (a janitor that ends
        it for a dead owner honours it) and sent to the owner's control stream."""
        try:
            owner = await cluster_jobs.request_cancel(self.redis, job_id, why.message or "")
        except LookupError:
            return False
        if owner is None:
            return False
        await self.reader.send_control(
            owner, {"kind": "cancel", "job": job_id, "reason": why.message or ""}
        )
        return True

    async def remove_watcher(self, job_id: str, session_id: str) -> None:
        await self.redis.srem(keys.job_watchers(job_id), [session_id])

    async def delete_job(self, job: JobRecord) -> None:
        """An admit whose accept failed: nothing was acknowledged."""
        await self.redis.delete([keys.job(job.job_id), keys.job_watchers(job.job_id)])
        await self.redis.srem(keys.node_jobs(self.node_id), [job.job_id])
        if job.idempotency_key is not None:
            await self.redis.delete([keys.idempotency(job.principal, job.idempotency_key)])

    async def detach_session(self, session: Session, epoch: int) -> None:
        await cluster_sessions.detach(
            self.redis,
            session.session_id,
            node=self.node_id,
            epoch=epoch,
            window_sec=self._config.resume_window_sec,
            tokens=session.valid_token_hashes(),
        )

    # -- control and fencing ----------------------------------------------------------------

    def _on_control(self, fields: dict[str, str]) -> None:
        kind = fields.get("kind")
        if kind == "cancel":
            why = Terminal(
                status=JobStatus.CANCELLED,
                completed_at="",
                code=ErrorCode.CANCELLED,
                message=fields.get("reason") or "cancelled by client",
            )
            self.router.end_here(fields.get("job", ""), why)
        elif kind == "superseded":
            try:
                epoch = int(fields.get("epoch", "0"))
            except ValueError:
                return
            self.delivery.superseded(fields.get("session", ""), epoch)

    def _on_fenced(self, job_id: str, fenced: scripts.Fenced) -> None:
        """Another node took the job over (this one was away past its lease): it
        stops here, and writes nothing more (its terminal was written there)."""
        self.router.fenced(job_id)
        self.router.end_here(job_id, _internal(f"taken over by {fenced.owner}"))

    # -- node death ---------------------------------------------------------------------------

    async def _janitor(self) -> None:
        """Every ``janitor_sec``: end the running jobs of nodes whose lease expired."""
        while True:
            await trio.sleep(self.settings.janitor_sec)
            if not self.lease.held:
                continue  # this node may be the one that was away: it takes nothing
            try:
                with trio.fail_after(30):
                    await self.reap()
            except _REDIS_ERRORS as exc:
                log.warning("janitor pass failed node=%s: %s", self.node_id, exc)
            except Exception:
                # A bug in one pass must not end the node: the next pass tries again.
                log.exception("janitor pass failed node=%s", self.node_id)

    async def reap(self) -> int:
        """One janitor pass; returns how many jobs it ended."""
        ended = 0
        for dead in await dead_nodes(self.redis, me=self.node_id):
            found = await orphans(self.redis, dead)
            if not found:
                # Nothing of it is left running: it stops being looked at.
                await self.redis.srem(keys.nodes(), [dead])
                self.nodes_seen_dead += 1
                log.warning("cluster node gone node=%s", dead)
                continue
            for orphan in found:
                owner, epoch = await scripts.take_over(
                    self.redis,
                    orphan.job_id,
                    owner=orphan.owner,
                    epoch=orphan.epoch,
                    new_owner=self.node_id,
                )
                if owner != self.node_id:
                    continue  # another node's janitor won it
                ended += 1
                if not orphan.cancel_requested and await self._rerun(orphan.job_id, epoch, dead):
                    continue
                if orphan.cancel_requested:
                    terminal = Terminal(
                        status=JobStatus.CANCELLED,
                        completed_at=self._now(),
                        code=ErrorCode.CANCELLED,
                        message=f"cancelled; node {dead} stopped before it ended the job",
                    )
                else:
                    terminal = attrs.evolve(
                        _internal(f"node {dead} stopped while running the job"),
                        completed_at=self._now(),
                    )
                await self._end_orphan(orphan.job_id, epoch, terminal)
        return ended

    async def _rerun(self, job_id: str, epoch: int, dead: str) -> bool:
        """A restartable agent's job of a dead node: run again here, from scratch
        (at-least-once). Its watchers are told first, with a ``status`` event, that
        what follows starts over; its events number on after the last one written."""
        restart = await self.redis.hget(keys.job(job_id), "restart")
        if restart is None:
            return False
        job = await self.load_job(job_id)
        if job is None or job.is_terminal:
            return False
        try:
            spec = json.loads(str(restart))
            agent, input_ = str(spec["agent"]), spec["input"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable restart record job=%s", job_id)
            return False
        job.status = JobStatus.PENDING  # (the runner moves it to running)
        self.registry.adopt(job)
        self.router.owned(job_id, epoch=epoch)
        if not self._restart(job, agent, input_):
            self.registry.forget(job)
            self.router.fenced(job_id)
            return False
        self.router.publish(job, "status", {"phase": "restarted", "reason": f"node {dead} stopped"})
        self.jobs_taken_over += 1
        log.warning("job of a dead node restarted here job_id=%s agent=%s", job_id, agent)
        return True

    async def _end_orphan(self, job_id: str, epoch: int, terminal: Terminal) -> None:
        job = await self.load_job(job_id)
        if job is None:
            return  # its keys are gone (retention): nothing to end
        frame_id = new_ulid()
        # (Set, not ``finish``ed: the job was running on the dead node, not here.)
        job.status, job.terminal, job.terminal_frame_id = terminal.status, terminal, frame_id
        await self._write_final(job, epoch, frame_id)
        self.jobs_taken_over += 1
        log.warning("job of a dead node ended job_id=%s status=%s", job_id, terminal.status)

    def _now(self) -> str:
        return self.router.timestamp()


def terminal_shapes(terminal: Terminal) -> dict[str, tuple[str, str]]:
    """The terminal's frame in every dialect: (message type, payload JSON)."""
    shapes = {}
    for dialect in Dialect:
        message_type, payload = terminal.render(dialect)
        shapes[dialect.value] = (str(message_type), dumps(payload))
    return shapes


def _internal(message: str) -> Terminal:
    return Terminal(
        status=JobStatus.ERROR,
        completed_at="",
        code=ErrorCode.INTERNAL_ERROR,
        message=message,
        retryable=True,
    )
