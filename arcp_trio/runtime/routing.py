"""Routing: the flow of one event from a job to every session that watches it.

``EventRouter.publish`` records the event in the job's history (RAM's bounded
cache and the event log) and stamps it into each watching session's stream
(``Session.deliver``: the next ``event_seq``, the buffer, the attached connection's
outbox), synchronously: the order events are published is the order every session
sees them (§8.3). The send tasks take their turn at the agent's next ``await``.

It also carries the other two deliveries: a terminal to every watcher, and one
frame to one session (a replay, a rotated credential), and the cancel requests
that reach the process running a job (``request_cancel``). In one process that is
a call; on a cluster it is the message to the job's owner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..protocol.job import JobRecord, Terminal
from ..wire.codec import dumps
from ..wire.ids import new_frame_id, new_ulid
from ..wire.messages import MessageType
from .shapes import overflow_body

if TYPE_CHECKING:
    import trio

    from ..protocol.eventlog import OverflowNotice
    from ..protocol.session import Dialect
    from ..store.base import EventLog, Store
    from .connection import Connection
    from .session import Session
    from .state import JobRegistry, SessionDirectory

__all__ = ["EventRouter", "Router", "SharedDelivery", "SharedState"]

log = logging.getLogger(__name__)

#: ``(job_id, why) -> whether the job was running and is now ending``.
Canceller = Callable[[str, Terminal], bool]
#: ``(job, agent ref, input) -> whether it was started`` (a restartable agent's job,
#: run again here after the process that ran it died).
Restarter = Callable[[JobRecord, str, Any], bool]


class Router(Protocol):
    """Delivery of a job's events and terminal, and of cancel requests."""

    # Counters for ``Runtime.statistics`` (plain ints, read at scrape time).
    events_published: int
    events_delivered: int
    overflows: int
    events_evicted: int
    #: Job-history events RAM holds, across all jobs.
    history_ram_total: int

    def publish(self, job: JobRecord, kind: str, body: Any) -> None:
        """One event (§8.2): into the job's history and every watcher's stream, in
        order, exactly once each. Never waits."""
        ...

    def publish_terminal(self, job: JobRecord) -> None:
        """The job's terminal (``job.terminal``) to every watcher; the same frame id
        to all, and again to a later subscriber (``deliver_terminal``)."""
        ...

    def deliver(
        self,
        session: Session,
        job: JobRecord,
        message_type: MessageType,
        frame_id: str,
        payload_json: str,
    ) -> None:
        """One seq-bearing frame to one session (a history replay, a credential)."""
        ...

    def deliver_terminal(self, session: Session, job: JobRecord) -> None: ...

    def watching(self, job: JobRecord) -> list[Session]:
        """The sessions the job's events go to (forgotten ones are dropped)."""
        ...

    def request_cancel(self, job_id: str, why: Terminal) -> bool:
        """Ask whichever process runs the job to end it with ``why``. True: it was
        running and now ends (a job already ending keeps its first reason). Never
        waits: a request to another process is sent in the background."""
        ...

    async def cancel(self, job_id: str, why: Terminal) -> bool:
        """``request_cancel``, waiting for the answer of the process that runs the
        job: True when it was running and is now asked to end (§7.4)."""
        ...

    def set_canceller(self, canceller: Canceller) -> None:
        """The job runner of this process: where requests for its jobs go."""
        ...

    def uncache(self, job: JobRecord) -> None:
        """RAM lets go of the job's history (the store has it, or it is forgotten)."""
        ...


class EventRouter:
    """The in-process ``Router``, over a session directory and an event log."""

    def __init__(
        self,
        *,
        sessions: SessionDirectory,
        event_log: EventLog,
        durable: bool,
        timestamp: Callable[[], str],
        history_memory_events: int,
    ) -> None:
        self._sessions = sessions
        self._log = event_log
        self._durable = durable
        self._timestamp = timestamp
        self._history_cap = history_memory_events
        #: Jobs whose history RAM holds events of, oldest first, and how many in all
        #: (at most ``history_memory_events``: ``_shed_history``).
        self._history_ram: dict[str, JobRecord] = {}
        self.history_ram_total = 0
        self._canceller: Canceller = lambda _job_id, _why: False
        #: Counters for ``Runtime.statistics`` (plain ints: read at scrape time).
        self.events_published = self.events_delivered = self.overflows = self.events_evicted = 0

    def set_canceller(self, canceller: Canceller) -> None:
        """The job runner: where ``request_cancel`` goes in this process."""
        self._canceller = canceller

    def request_cancel(self, job_id: str, why: Terminal) -> bool:
        return self._canceller(job_id, why)

    async def cancel(self, job_id: str, why: Terminal) -> bool:
        return self._canceller(job_id, why)

    def publish(self, job: JobRecord, kind: str, body: Any) -> None:
        self.events_published += 1
        frame_id = new_frame_id()
        payload_json = dumps({"kind": kind, "ts": self._timestamp(), "body": body})
        history = job.history
        before = len(history)
        entry = job.record_event(frame_id, kind, payload_json)
        if not before:
            self._history_ram[job.job_id] = job
        self.history_ram_total += len(history) - before
        if self.history_ram_total > self._history_cap:
            self._shed_history()
        if self._durable:
            self._log.append_history(job.job_id, entry.number, frame_id, kind, payload_json)
            if entry.number > job.history_limit and entry.number % 1024 == 0:
                # Keep the log's copy of the history as bounded as the memory one.
                self._log.trim_history(job.job_id, entry.number - job.history_limit)
        for session in self.watching(job):
            self.deliver(session, job, MessageType.JOB_EVENT, frame_id, payload_json)

    def publish_terminal(self, job: JobRecord) -> None:
        terminal = job.terminal
        assert terminal is not None
        frame_id = new_ulid()
        rendered: dict[Dialect, tuple[MessageType, str]] = {}
        for session in self.watching(job):
            if session.dialect not in rendered:
                message_type, payload = terminal.render(session.dialect)
                rendered[session.dialect] = (message_type, dumps(payload))
            message_type, payload_json = rendered[session.dialect]
            self.deliver(session, job, message_type, frame_id, payload_json)
        job.terminal_frame_id = frame_id

    def deliver_terminal(self, session: Session, job: JobRecord) -> None:
        assert job.terminal is not None
        message_type, payload = job.terminal.render(session.dialect)
        self.deliver(
            session, job, message_type, job.terminal_frame_id or new_ulid(), dumps(payload)
        )

    def watching(self, job: JobRecord) -> list[Session]:
        sessions = []
        for session_id in list(job.watchers):
            session = self._sessions.get(session_id)
            if session is None:
                job.watchers.discard(session_id)
            else:
                sessions.append(session)
        return sessions

    def deliver(
        self,
        session: Session,
        job: JobRecord,
        message_type: MessageType,
        frame_id: str,
        payload_json: str,
    ) -> None:
        notice = self._stamp(session, job, message_type, frame_id, payload_json)
        if notice is None:
            return
        if message_type == MessageType.JOB_EVENT:
            self._notify_overflow(session, job, notice)
        else:
            # Nothing may follow a job's terminal; the next event (of any job) says it.
            session.buffer.defer_notice(notice)

    def _stamp(
        self,
        session: Session,
        job: JobRecord,
        message_type: MessageType,
        frame_id: str,
        payload_json: str,
    ) -> OverflowNotice | None:
        """``Session.deliver``, plus the event log: the stamped frame outlives a crash."""
        frame = session.deliver(
            message_type,
            job_id=job.job_id,
            trace_id=job.trace_id,
            frame_id=frame_id,
            payload_json=payload_json,
        )
        self.events_delivered += 1
        buffer = session.buffer
        if self._durable:
            seq = buffer.last_seq
            self._log.append_event(session.session_id, seq, job.job_id, frame)
            if seq % 1024 == 0 and len(buffer) >= buffer.max_events:
                # At the cap the oldest events are evicted; keep the log bounded.
                self._log.trim_events(session.session_id, buffer.first_held_seq() - 1)
        return buffer.take_overflow_notice()

    def _notify_overflow(self, session: Session, job: JobRecord, notice: OverflowNotice) -> None:
        """§6.5 back-pressure signal: the buffer cap evicted unacknowledged events."""
        self.overflows += 1
        self.events_evicted += notice.evicted_count
        log.warning(
            "event buffer overflow session_id=%s evicted_through=%s evicted=%s",
            session.session_id,
            notice.evicted_through,
            notice.evicted_count,
        )
        body = overflow_body(notice)
        payload_json = dumps({"kind": "status", "ts": self._timestamp(), "body": body})
        self._stamp(session, job, MessageType.JOB_EVENT, new_ulid(), payload_json)

    def _shed_history(self) -> None:
        """Over ``history_memory_events``: RAM lets go of the oldest jobs' oldest events
        (down to 15/16 of the cap, so this runs once per many events). With a durable
        store the store still has them; without one they are gone, and a subscribe
        says so (``history_missing``)."""
        cap = self._history_cap
        target = cap - cap // 16
        ram = self._history_ram
        while self.history_ram_total > target and ram:
            job = next(iter(ram.values()))
            self.history_ram_total -= job.drop_cached(self.history_ram_total - target)
            if not job.history:
                del ram[job.job_id]

    def uncache(self, job: JobRecord) -> None:
        self.history_ram_total -= job.drop_cached(len(job.history))
        self._history_ram.pop(job.job_id, None)


class SharedDelivery(Protocol):
    """Sessions and jobs shared by several processes (a cluster, docs/cluster.md).

    Events are stamped into a session's stream in the shared state by whichever
    process runs the job, and reach the session's connection from there, wherever
    it is attached now; so the handshake and the handlers hand these steps to it
    instead of stamping into RAM (``Session.deliver`` is not used).
    """

    async def attached(self, connection: Connection, *, after: int) -> None:
        """The connection now holds its session (a welcome, or a resume from
        ``after``): claim it for this process, record its new token, then send it
        every frame with ``event_seq > after`` and what follows, live. Called
        before the welcome is sent.

        Raises:
            ResumeWindowExpired: the session is gone meanwhile.
        """
        ...

    def detached(self, connection: Connection) -> None:
        """The connection ended: its session waits for a resume, on any process."""
        ...

    async def watch(self, connection: Connection, job: JobRecord, *, after: int | None) -> None:
        """Subscribe the session to the job (§7.6): its history numbered above
        ``after`` (None: none), then live, exactly once; a finished job's terminal
        instead of live."""
        ...

    def unwatch(self, session: Session, job_id: str) -> None:
        """The session no longer watches the job (``job.unsubscribe``)."""
        ...

    async def keep_for_restart(self, job: JobRecord, agent: str, input_: Any) -> None:
        """Record what another process needs to run the job again from scratch if
        this one dies (its agent is ``restartable``). Before its accept is sent."""
        ...


class SharedState(Protocol):
    """The runtime's state in a store several processes share: ``open_runtime``
    uses these in place of its own (``arcp_trio.cluster`` builds one on Redis)."""

    @property
    def registry(self) -> JobRegistry: ...

    @property
    def sessions(self) -> SessionDirectory: ...

    @property
    def router(self) -> Router: ...

    @property
    def delivery(self) -> SharedDelivery: ...

    @property
    def store(self) -> Store:
        """Local persistence, and the write-behind's back-pressure (``wait_writable``)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The shared state's own tasks (writers, readers, liveness) until cancelled;
        started before the runtime serves anything, stopped after its jobs."""
        ...

    def bind(self, restart: Restarter) -> None:
        """How this process runs a job again that another, dead, process ran."""
        ...

    async def drain(self) -> None:
        """Until every write queued so far has reached the shared store (bounded):
        the runtime's last step before ``run`` is cancelled."""
        ...
