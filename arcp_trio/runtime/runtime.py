"""The runtime: owner of every job and every session (DESIGN.md, "the one rule").

Theory of operation
-------------------
``open_runtime`` opens two nurseries and hands back a ``Runtime``::

    job_nursery                 every job's task; only ``_start_job`` starts tasks here
      └─ session_nursery        resume-window timers
    (connections run wherever their transport server runs them, each in its own
     conn_nursery; see connection.py)

A job runs in ``job_nursery`` inside its own ``CancelScope``, which only the
runtime holds. It ends by returning or raising, by ``job.cancel`` from the
submitting session (§7.4), by ``max_runtime_sec`` (the scope's deadline, §7.3), or
by runtime shutdown. Before cancelling, the runtime records *why* in the job's
``ending``, so the terminal says cancelled, not timed out.

A session holds job ids. When a job emits, ``_route_event`` stamps the frame into
each watching session's buffer (``Session.deliver``), synchronously, then the
agent's ``await`` gives the connections' send tasks their turn. Every handler is
synchronous between checkpoints, which is what makes idempotency atomic across
sessions and the history→live boundary of a subscription exactly-once.

Two handlers await in the middle, and each keeps the boundary anyway. A
subscribe with history reads the pages a durable store has (``_replay_history``)
before the watcher is added, and the last stretch, from RAM to live, has no
checkpoint. A resume whose gap is partly in the store marks the session
``catching_up`` (new frames wait in its buffer), and ``_catch_up`` sends the
store's pages and then, synchronously, the rest. RAM holds a bounded cache of
both (``RuntimeConfig.event_cache_events``; docs/store.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._scopes import open_owner_nursery
from .._util import NoPublicConstructor
from ..protocol.eventlog import EventBuffer, OverflowNotice
from ..protocol.job import JobRecord, JobStatus, JobTable, Terminal, fingerprint
from ..protocol.leases import Budget, Lease, check_subset, child_lease, parse_lease
from ..protocol.session import (
    ALL_FEATURES,
    CREDENTIALS_FEATURE,
    Dialect,
    ResumeWindow,
    negotiate_features,
)
from ..store.base import MemoryStore, Recovered, Store, StoreError
from ..transport.base import MessageRefused, MessageTooLarge, Transport, TransportError
from ..wire.codec import Envelope, decode, dumps, encode, recover_id, unstructure_payload
from ..wire.errors import (
    ARCPError,
    ErrorCode,
    InternalError,
    InvalidRequest,
    JobNotFound,
    LeaseExpired,
    PermissionDenied,
    RemoteProtocolError,
    ResumeWindowExpired,
    Unauthenticated,
    make_error,
)
from ..wire.ids import new_frame_id, new_id, new_ulid
from ..wire.messages import (
    Capabilities,
    JobCancel,
    JobCancelled,
    JobSubmit,
    JobSubscribe,
    JobUnsubscribe,
    MessageType,
    ResumeRequest,
    RuntimeInfo,
    SessionAck,
    SessionClosed,
    SessionError,
    SessionHello,
    SessionListJobs,
    SessionPing,
    SessionPong,
    SessionResume,
    SessionWelcome,
)
from ..wire.timestamps import (
    WallClock,
    format_timestamp,
    parse_timestamp,
    system_timestamp,
    system_wall_clock,
)
from .auth import BearerAuth
from .config import LeaseExpiry, RuntimeConfig
from .connection import Connection, refusal
from .context import JobContext
from .ledger import CredentialLedger
from .otel import NoTelemetry, Telemetry
from .recovery import job_to_row, restored_job, restored_session, session_to_row
from .session import Session, SessionDirectory, hash_token
from .shapes import (
    accepted_payload,
    job_summary,
    overflow_body,
    rotation_body,
    subscribed_payload,
)
from .timers import Timer, Timers
from .tools import ToolRegistry, current_trace_id

if TYPE_CHECKING:
    from datetime import datetime
    from decimal import Decimal

    from .agents import Agent, AgentRegistry
    from .credentials import CredentialProvisioner

__all__ = [
    "LeasePolicy",
    "ObservePolicy",
    "Runtime",
    "RuntimeStatistics",
    "open_runtime",
    "same_principal",
]

log = logging.getLogger(__name__)


@attrs.frozen
class RuntimeStatistics:
    sessions: int
    attached_sessions: int
    jobs_total: int
    jobs_active: int
    #: Events sessions hold for resume (in RAM, or in the store with a durable one).
    buffered_events: int
    #: Of those, how many RAM holds (all of them without a durable store).
    cached_events: int
    #: Job-history events RAM holds, across all jobs (``history_memory_events``).
    cached_history_events: int
    #: Ids of credentials whose revocation failed for good (§9.8.2, §14: surfaced
    #: to operators; each was logged at ERROR).
    unrevoked_credentials: tuple[str, ...] = ()


@attrs.define(eq=False)
class _LiveJob:
    """Runtime-side state of a job that may still run (never exposed to sessions)."""

    scope: trio.CancelScope | None = None
    #: ``max_runtime_sec`` as a Trio deadline (§7.3).
    deadline: float = math.inf
    #: The lease's ``expires_at`` as a Trio deadline, when proactive (§9.5).
    expiry_deadline: float = math.inf
    #: Revokes the job's credentials at expiry even if the agent does not unwind then.
    expiry_timer: Timer | None = None
    #: Its credentials' revocation has been scheduled (at expiry, or at the terminal).
    revoked: bool = False
    #: Jobs this one delegated to (§10); they end when it ends.
    children: set[str] = attrs.field(factory=set)
    emits_since_yield: int = 0
    #: Why the runtime is ending the job (set before the scope is cancelled).
    ending: Terminal | None = None
    stream_result_id: str | None = None
    stream_open: bool = False
    stream_size: int | None = None
    stream_summary: str | None = None
    done: trio.Event = attrs.field(factory=trio.Event)


#: Who may observe a job: ``(observer principal, job) -> bool``. §14: the default
#: is "same principal only".
ObservePolicy = Callable[[str, JobRecord], bool]

#: A deployment's say over what a submit is granted: ``(principal, requested) ->
#: granted``. The grant must be a subset of the request (§9.4 rules).
LeasePolicy = Callable[[str, Lease], Lease]

#: Events an agent may emit between two scheduling points (see ``_emit``).
_EMITS_PER_YIELD = 32

#: Events read from the store at a time (a resume's replay, a subscribe's history).
_PAGE = 512


def same_principal(principal: str, job: JobRecord) -> bool:
    return principal == job.principal


class Runtime(metaclass=NoPublicConstructor):
    """Hosts jobs and sessions. Build one with ``open_runtime`` (which owns its
    nurseries: there is no public constructor)."""

    def __init__(
        self,
        *,
        agents: AgentRegistry,
        auth: BearerAuth,
        config: RuntimeConfig,
        wall_clock: WallClock,
        observe_policy: ObservePolicy,
        tools: ToolRegistry,
        store: Store,
        provisioner: CredentialProvisioner | None,
        telemetry: Telemetry,
        lease_policy: LeasePolicy | None,
        job_nursery: trio.Nursery,
        session_nursery: trio.Nursery,
    ) -> None:
        self.agents = agents
        self.tools = tools
        self._store = store
        self._telemetry = telemetry
        self._lease_policy = lease_policy
        # §14: "A runtime that cannot guarantee revocation MUST NOT advertise
        # provisioned_credentials": it needs a provisioner and a durable ledger.
        self.features: tuple[str, ...] = ALL_FEATURES + (
            (CREDENTIALS_FEATURE,) if provisioner is not None and store.durable else ()
        )
        #: Issue, rotate, revoke (§9.8), with the store's revocation ledger (§14).
        self._ledger = CredentialLedger(provisioner, store, session_nursery)
        self.config = config
        self._auth = auth
        self._wall_clock = wall_clock
        #: ``format_timestamp(wall_clock())``: every event carries one, so the system
        #: clock gets the fast path.
        self._timestamp: Callable[[], str] = (
            system_timestamp
            if wall_clock is system_wall_clock
            else lambda: format_timestamp(wall_clock())
        )
        #: The ``sent_at`` of the pings of the last timer pass, and that pass's ``now``.
        self._ping_time: tuple[float, str] = (math.nan, "")
        self._observe_policy = observe_policy
        self._job_nursery = job_nursery
        self._session_nursery = session_nursery
        #: Heartbeats and resume windows: one task for every deadline (``run`` is
        #: started by ``open_runtime``). A ping may go out one granularity early.
        self._timers = Timers(granularity=min(1.0, config.heartbeat_interval_sec / 20))
        self.jobs = JobTable()
        #: With a durable store: the newest events RAM keeps per attached session and
        #: per running job (None: RAM is the only copy, bounded by the caps).
        self._cache: int | None = config.event_cache_events if store.durable else None
        #: Jobs whose history RAM holds events of, oldest first, and how many in all
        #: (at most ``history_memory_events``: ``_shed_history``).
        self._history_ram: dict[str, JobRecord] = {}
        self._history_ram_total = 0
        self._live: dict[str, _LiveJob] = {}
        self._sessions = SessionDirectory()
        self._connections: set[Connection] = set()
        self._connections_changed = trio.Event()
        self._limiter = (
            trio.CapacityLimiter(config.max_concurrent_jobs)
            if config.max_concurrent_jobs is not None
            else None
        )
        self._closing = False
        self._shutdown_done = trio.Event()
        self._dispatch_table: dict[
            str, Callable[[Connection, Envelope], Awaitable[None] | None]
        ] = {
            MessageType.SESSION_HELLO: self._on_second_hello,
            MessageType.SESSION_RESUME: self._on_late_resume,
            MessageType.SESSION_PING: self._on_ping,
            MessageType.SESSION_PONG: self._on_pong,
            MessageType.SESSION_ACK: self._on_ack,
            MessageType.SESSION_LIST_JOBS: self._on_list_jobs,
            MessageType.SESSION_CLOSE: self._on_close,
            MessageType.SESSION_BYE: self._on_close,
            MessageType.JOB_SUBMIT: self._on_submit,
            MessageType.JOB_CANCEL: self._on_cancel,
            MessageType.JOB_SUBSCRIBE: self._on_subscribe,
            MessageType.JOB_UNSUBSCRIBE: self._on_unsubscribe,
        }

    # == public surface ==========================================================================

    def statistics(self) -> RuntimeStatistics:
        return RuntimeStatistics(
            sessions=len(self._sessions),
            attached_sessions=sum(1 for s in self._sessions if s.connection is not None),
            jobs_total=len(self.jobs),
            jobs_active=sum(1 for live in self._live.values() if not live.done.is_set()),
            buffered_events=sum(len(s.buffer) for s in self._sessions),
            cached_events=sum(s.buffer.cached for s in self._sessions),
            cached_history_events=self._history_ram_total,
            unrevoked_credentials=self._ledger.unrevoked,
        )

    def session(self, session_id: str) -> Session | None:
        """The live session record (for tests and introspection)."""
        return self._sessions.get(session_id)

    async def wait_job_done(self, job_id: str) -> JobRecord:
        """Wait until the job has reached a terminal state.

        Raises:
            JobNotFound: no such job.

        Cancellation: safe; nothing changes.
        """
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id!r} not found")
        live = self._live.get(job_id)
        if live is not None:
            await live.done.wait()
        else:
            await trio.lowlevel.checkpoint()
        return job

    async def handle_transport(self, transport: Transport) -> None:
        """Serve one connection: handshake, then the session until the transport ends.

        Never raises for anything the peer does; the transport is closed on return.
        """
        try:
            connection = await self._handshake(transport)
            if connection is None:
                return
            self._connections.add(connection)
            try:
                await connection.run()
            finally:
                self._connections.discard(connection)
                self._connections_changed.set()
                self._detach(connection)
        finally:
            with trio.move_on_after(5, shield=True):
                await transport.aclose()

    async def shutdown(self) -> None:
        """Stop accepting, give jobs a bounded grace, then end them with a terminal.

        Idempotent. Watchers receive every terminal: connections are flushed (for a
        bounded time) before they are closed.

        Cancellation: shielded internally and bounded by the configured grace plus a
        few seconds.
        """
        if self._closing:
            await self._shutdown_done.wait()
            return
        self._closing = True
        with trio.CancelScope(shield=True):
            grace = self.config.shutdown_grace_sec
            with trio.move_on_after(grace):
                for live in list(self._live.values()):
                    await live.done.wait()
            for job_id, live in list(self._live.items()):
                if live.done.is_set():
                    continue
                if live.ending is None:
                    live.ending = Terminal(
                        status=JobStatus.ERROR,
                        completed_at="",
                        code=ErrorCode.INTERNAL_ERROR,
                        message="runtime shutting down",
                        retryable=True,
                    )
                log.info("cancelling job on shutdown job_id=%s", job_id)
                if live.scope is not None:
                    live.scope.cancel()
            with trio.move_on_after(5):
                for live in list(self._live.values()):
                    await live.done.wait()
            for connection in list(self._connections):
                connection.close_after_flush("runtime shutting down")
            with trio.move_on_after(2):
                while self._connections:
                    self._connections_changed = trio.Event()
                    await self._connections_changed.wait()
            for connection in list(self._connections):
                connection.abort("runtime shutting down")
            self._session_nursery.cancel_scope.cancel()
        self._shutdown_done.set()

    # == handshake (§6.1-§6.3) ===================================================================

    async def _handshake(self, transport: Transport) -> Connection | None:
        if self._closing:
            await self._refuse(transport, InternalError("runtime is shutting down"), None)
            return None
        text: str | None = None
        with trio.move_on_after(self.config.handshake_timeout_sec):
            try:
                text = await transport.receive_message()
            except (MessageTooLarge, MessageRefused) as exc:
                await self._refuse(transport, refusal(exc), recover_id(exc.prefix))
                return None
            except TransportError:
                return None
        if text is None:
            log.info("handshake timed out peer=%s", transport.description)
            return None
        try:
            envelope = decode(text)
        except RemoteProtocolError as exc:
            await self._refuse(transport, exc, exc.request_id)
            return None
        try:
            if envelope.type == MessageType.SESSION_HELLO:
                return self._hello(transport, envelope)
            if envelope.type == MessageType.SESSION_RESUME:
                return self._resume_frame(transport, envelope)
            raise InvalidRequest(f"the first frame must be session.hello, got {envelope.type!r}")
        except ARCPError as exc:
            await self._refuse(transport, exc, envelope.id)
            return None

    async def _refuse(self, transport: Transport, error: ARCPError, request_id: str | None) -> None:
        """Answer a failed handshake, then let the caller close the transport."""
        frame = Envelope(
            type=MessageType.SESSION_ERROR,
            id=new_ulid(),
            payload=SessionError(
                code=str(error.code),
                message=error.message,
                retryable=error.retryable,
                details=error.details,
                request_id=request_id,
            ),
        )
        with trio.move_on_after(5):
            with suppress(TransportError):
                await transport.send_message(encode(frame))

    def _authenticate(self, scheme: str, token: str) -> str:
        principal = self._auth.authenticate(token) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Unauthenticated("invalid bearer token")
        return principal

    def _hello(self, transport: Transport, envelope: Envelope) -> Connection:
        hello: SessionHello = envelope.payload
        principal = self._authenticate(hello.auth.scheme, hello.auth.token)
        features = negotiate_features(self.features, hello.capabilities.features)
        resume = hello.resume_request()
        if resume is not None:
            return self._resume(
                transport, principal, features, Dialect.for_features(features), resume
            )
        session = Session(
            session_id=new_id("sess"),
            principal=principal,
            features=features,
            dialect=Dialect.for_features(features),
            buffer=EventBuffer(max_events=self.config.max_buffered_events, cache_limit=self._cache),
            window=ResumeWindow(window_sec=self.config.resume_window_sec),
            client_name=hello.client.name,
        )
        self._sessions.add(session)
        log.info(
            "session opened session_id=%s principal=%s client=%s",
            session.session_id,
            principal,
            hello.client.name,
        )
        return self._attach(transport, session, replay=[])

    def _resume_frame(self, transport: Transport, envelope: Envelope) -> Connection:
        """§6.3's ``session.resume`` as the first frame of a connection."""
        resume: SessionResume = envelope.payload
        session = self._find_resumable(resume.session_id, resume.resume_token)
        principal = session.principal
        if resume.auth is not None:
            principal = self._authenticate(resume.auth.scheme, resume.auth.token)
        request = ResumeRequest(
            resume_token=resume.resume_token,
            session_id=session.session_id,
            last_event_seq=resume.last_event_seq,
        )
        # A spec-only message is a signal for spec shapes (WIRE.md "Decisions").
        return self._resume(transport, principal, session.features, Dialect.SPEC, request)

    def _find_resumable(self, session_id: str | None, token: str | None) -> Session:
        if token is None:
            raise InvalidRequest("resume requires a resume_token")
        session: Session | None = None
        if session_id is not None:
            session = self._sessions.get(session_id)
        else:
            session = self._sessions.find_by_token(hash_token(token))
        if session is None:
            # Unknown and forgotten sessions look the same: the window is over.
            raise ResumeWindowExpired(
                "no resumable session: its resume window has ended or it never existed"
            )
        return session

    def _resume(
        self,
        transport: Transport,
        principal: str,
        features: frozenset[str],
        dialect: Dialect,
        request: ResumeRequest,
    ) -> Connection:
        session = self._find_resumable(request.session_id, request.presented_token)
        # A wrong token or principal is refused without touching the session, so the
        # rightful client can still resume (WIRE.md "Decisions").
        token = request.presented_token or ""
        if not session.token_matches(token) or session.principal != principal:
            raise PermissionDenied("resume token or principal does not match the session")
        if session.window.expired(trio.current_time()):
            # Its timer may not have fired yet (Timers coalesce): the window is over
            # either way, so the session goes now, as it would have a moment later.
            self._forget(session)
            raise ResumeWindowExpired("the session's resume window has ended")
        # §6.3: RESUME_WINDOW_EXPIRED "if the buffer no longer covers last_event_seq".
        after = request.last_event_seq
        session.buffer.check_covers(after)
        cached = session.buffer.cached_after(after)
        session.presented(hash_token(token))  # accepted: older tokens retire
        self._sessions.tokens_changed(session)
        if session.connection is not None:
            # The old connection is half-open or slow to notice; the token holder wins.
            session.connection.abort("superseded by a resume")
            session.connection = None
        session.features = features
        session.dialect = dialect
        log.info(
            "session resumed session_id=%s last_event_seq=%s replay=%s",
            session.session_id,
            after,
            session.buffer.last_seq - after,
        )
        if cached is not None:
            return self._attach(transport, session, replay=[event.frame for event in cached])
        # Part of the gap is only in the store: the connection reads it a page at a
        # time before its first frame, and sends what arrives meanwhile after it.
        connection = self._attach(transport, session, replay=[])
        session.catching_up = True
        connection.catch_up = partial(self._catch_up, connection, after)
        return connection

    async def _catch_up(self, connection: Connection, after: int) -> None:
        """Send a resumed session the events after ``after``, from the store then RAM.

        Ends synchronously with the RAM part and ``catching_up = False``, so the
        next event goes straight to the connection, after all of these (§6.3).
        """
        session = connection.session
        buffer = session.buffer
        try:
            for _ in range(buffer.max_events // _PAGE + _PAGE):
                # Evicted or acknowledged meanwhile: the stream's own overflow notice
                # says so (§6.5), as it would have live.
                after = max(after, buffer.first_held_seq() - 1)
                cached = buffer.cached_after(after)
                if cached is not None:
                    for event in cached:
                        connection.enqueue(event.frame)
                    return
                upto = buffer.first_cached_seq() - 1
                page = await self._store.read_events(
                    session.session_id, after, min(_PAGE, upto - after)
                )
                if not page or page[0].seq != after + 1:
                    raise StoreError(f"session events after {after} are missing from the store")
                for stored in page:
                    connection.enqueue(stored.frame)
                after = page[-1].seq
                await connection.wait_writable()
            raise InternalError("the replay could not catch up with the session's events")
        finally:
            session.catching_up = False

    def _attach(self, transport: Transport, session: Session, *, replay: list[str]) -> Connection:
        """Welcome, replay and go live, with no checkpoint in between (no gap, no dup)."""
        heartbeat = self.config.heartbeat_interval_sec if "heartbeat" in session.features else None
        connection = Connection(
            session=session,
            transport=transport,
            dispatch=self._dispatch,
            welcome_answered=self._welcome_answered,
            timers=self._timers,
            heartbeat_interval=heartbeat,
            high_water=self.config.backpressure_high_water,
            format_ping_time=self._ping_timestamp,
            reply_batch=self.config.ping_reply_batch_sec,
        )
        token = session.rotate_token()
        self._sessions.tokens_changed(session)
        connection.token_hash = session.token_hash
        self._save_session(session)
        agents: list[Any]
        if "agent_versions" in session.features:
            agents = [unstructure_payload(info) for info in self.agents.inventory()]
        else:
            agents = self.agents.names()
        connection.reply(
            MessageType.SESSION_WELCOME,
            SessionWelcome(
                runtime=RuntimeInfo(
                    name=self.config.runtime_name, version=self.config.runtime_version
                ),
                session_id=session.session_id,
                resume_token=token,
                resume_window_sec=self.config.resume_window_sec,
                heartbeat_interval_sec=heartbeat,
                capabilities=Capabilities(
                    encodings=["json"], features=list(self.features), agents=agents
                ),
                accepted_at=self._timestamp(),
            ),
        )
        for frame in replay:
            connection.enqueue(frame)
        session.connection = connection
        session.window.attach()
        if self._cache is not None:
            session.buffer.set_cache_limit(self._cache)
        return connection

    def _ping_timestamp(self, now: float) -> str:
        """A ping's ``sent_at`` (§6.4) when the timer fires at Trio time ``now``.

        Formatted once per timer pass: every ping of a pass goes out at that moment.
        """
        at, text = self._ping_time
        if at != now:
            text = self._timestamp()
            self._ping_time = (now, text)
        return text

    def _detach(self, connection: Connection) -> None:
        session = connection.session
        if session.connection is not connection:
            return
        session.connection = None
        session.catching_up = False
        # Detached: the store has its events, RAM keeps none (a durable store only).
        session.buffer.set_cache_limit(0)
        now = trio.current_time()
        session.window.detach(now)
        session.detach_generation += 1
        log.info(
            "session detached session_id=%s reason=%s resumable_for=%s",
            session.session_id,
            connection.close_reason,
            self.config.resume_window_sec,
        )
        if not self._closing:
            self._expire_later(session, now + self.config.resume_window_sec)

    def _expire_later(self, session: Session, deadline: float) -> None:
        """Forget the session at ``deadline`` unless it was resumed (or re-detached) since."""
        generation = session.detach_generation

        def expire(_now: float) -> None:
            if session.detach_generation == generation and session.connection is None:
                self._forget(session)

        self._timers.call_at(deadline, expire)

    def _forget(self, session: Session) -> None:
        """The resume window ended: drop the session. Its jobs keep running."""
        if session.forgotten:
            return
        session.forgotten = True
        self._sessions.remove(session)
        self._store.delete_session(session.session_id)
        for job_id in session.watching:
            job = self.jobs.get(job_id)
            if job is not None:
                job.watchers.discard(session.session_id)
        log.info("session expired session_id=%s", session.session_id)

    # == dispatch ================================================================================

    def _welcome_answered(self, connection: Connection) -> None:
        """The client's first frame on a connection answers its welcome: the client
        holds the token that welcome carried, and the older ones stop resuming."""
        connection.token_confirmed = True
        session = connection.session
        if session.connection is connection:
            session.confirm_token(connection.token_hash)
            self._sessions.tokens_changed(session)
            self._save_session(session)

    async def _dispatch(self, connection: Connection, envelope: Envelope) -> None:
        if not connection.token_confirmed:
            self._welcome_answered(connection)
        handler = self._dispatch_table.get(envelope.type)
        if handler is None:
            raise InvalidRequest(f"{envelope.type} is sent by runtimes, not clients")
        pending = handler(connection, envelope)
        if pending is not None:
            await pending

    def _require(self, session: Session, feature: str) -> None:
        # §6.2: "Either peer MUST NOT use a feature outside that intersection."
        if feature not in session.features:
            raise InvalidRequest(f"feature {feature!r} not negotiated")

    def _visible_job(self, session: Session, job_id: str) -> JobRecord:
        """The job, if this session's principal may know it exists (§6.6, §14)."""
        job = self.jobs.get(job_id)
        if job is None or not self._observe_policy(session.principal, job):
            raise JobNotFound(f"job {job_id!r} not found")
        return job

    def _on_second_hello(self, connection: Connection, envelope: Envelope) -> None:
        raise InvalidRequest("session already established on this connection")

    def _on_late_resume(self, connection: Connection, envelope: Envelope) -> None:
        raise InvalidRequest("session.resume must be the first frame of a new connection")

    def _on_ping(self, connection: Connection, envelope: Envelope) -> None:
        ping: SessionPing = envelope.payload
        connection.reply(
            MessageType.SESSION_PONG,
            SessionPong(ping_nonce=ping.nonce, received_at=self._timestamp()),
        )

    def _on_pong(self, connection: Connection, envelope: Envelope) -> None:
        """Liveness was already noted when the frame arrived (§6.4)."""

    def _on_ack(self, connection: Connection, envelope: Envelope) -> None:
        ack: SessionAck = envelope.payload
        session = connection.session
        self._require(session, "ack")
        if session.buffer.ack(ack.last_processed_seq):
            self._store.trim_events(session.session_id, session.buffer.acked_through)
            self._save_session(session)

    def _on_close(self, connection: Connection, envelope: Envelope) -> None:
        """§6.7: acknowledge, flush, close the transport; jobs and session live on."""
        reason = getattr(envelope.payload, "reason", None)
        if envelope.type == MessageType.SESSION_CLOSE:
            connection.session.dialect = Dialect.SPEC
        connection.reply(
            MessageType.SESSION_CLOSED, SessionClosed(reason=reason, request_id=envelope.id)
        )
        connection.close_after_flush(f"closed by client ({reason or 'no reason'})")

    # -- list_jobs (§6.6) ------------------------------------------------------------------

    def _on_list_jobs(self, connection: Connection, envelope: Envelope) -> None:
        session = connection.session
        self._require(session, "list_jobs")
        request: SessionListJobs = envelope.payload
        filter_ = request.filter
        created_after: datetime | None = None
        if filter_ is not None and filter_.created_after is not None:
            try:
                created_after = parse_timestamp(filter_.created_after)
            except ValueError as exc:
                raise InvalidRequest.at("$.payload.filter.created_after", str(exc)) from None
        jobs, next_cursor = self.jobs.list_for(
            session.principal,
            statuses=frozenset(filter_.status) if filter_ and filter_.status is not None else None,
            agent=filter_.agent if filter_ else None,
            created_after=created_after,
            limit=request.limit or 100,
            cursor=request.cursor,
            visible=(
                None
                if self._observe_policy is same_principal
                else lambda job: self._observe_policy(session.principal, job)
            ),
        )
        connection.reply(
            MessageType.SESSION_JOBS,
            {
                "request_id": envelope.id,
                "jobs": [job_summary(job, session.dialect) for job in jobs],
                **({"next_cursor": next_cursor} if next_cursor is not None else {}),
            },
        )

    # -- submit (§7.1, §7.2, §7.5) -----------------------------------------------------------

    async def _on_submit(self, connection: Connection, envelope: Envelope) -> None:
        if self._closing:
            raise InternalError("runtime is shutting down")
        submit: JobSubmit = envelope.payload
        session = connection.session
        print_: str | None = None
        if submit.idempotency_key is not None:
            print_ = fingerprint(unstructure_payload(submit))
            existing = self.jobs.find_idempotent(session.principal, submit.idempotency_key, print_)
            if existing is not None:
                # Its record may still be on its way to the disk: wait for it.
                await self._store.flush(since=self._store.position())
                if self.jobs.get(existing.job_id) is not existing:
                    raise InternalError("the original submit could not be stored; retry")
                self._replay_submit(connection, existing, envelope.id)
                return
        resolved = self.agents.resolve(submit.agent)
        lease = parse_lease(submit.lease_request)
        constraints: dict[str, Any] | None = None
        if submit.lease_constraints is not None and submit.lease_constraints.expires_at is not None:
            expires_text = submit.lease_constraints.expires_at
            lease = attrs.evolve(lease, expires_at=self._parse_expiry(expires_text))
            constraints = {"expires_at": expires_text}
        if self._lease_policy is not None:
            # The effective lease is what the runtime grants (§7.1): a deployment
            # policy may narrow the request, never widen it (checked as a §9.4 subset).
            granted = self._lease_policy(session.principal, lease)
            check_subset(lease, granted, model_default_allow=True)
            lease = granted
        budget = (
            Budget.from_patterns(lease.grants["cost.budget"])
            if "cost.budget" in lease.grants
            else None
        )
        now = self._wall_clock()
        job = JobRecord(
            job_id=new_id("job"),
            ordinal=self.jobs.next_ordinal(),
            principal=session.principal,
            session_id=session.session_id,
            agent_name=resolved.name,
            agent_version=resolved.version,
            lease=lease,
            lease_constraints=constraints,
            budget=budget,
            trace_id=envelope.trace_id,
            parent_job_id=submit.parent_job_id,
            delegate_id=submit.delegate_id,
            created_at=now,
            accepted_at=format_timestamp(now),
            idempotency_key=submit.idempotency_key,
            **self._history_settings(),
        )
        live = _LiveJob()
        if submit.max_runtime_sec is not None:
            live.deadline = trio.current_time() + submit.max_runtime_sec
        mark = self._store.position()
        self.jobs.add(job, fingerprint_=print_)
        job.watchers.add(session.session_id)
        session.submitted.add(job.job_id)
        self._store.save_job(job_to_row(job))
        if print_ is not None and submit.idempotency_key is not None:
            self._store.save_idempotency(
                session.principal, submit.idempotency_key, print_, job.job_id
            )
        self._save_session(session)
        try:
            if CREDENTIALS_FEATURE in session.features and CREDENTIALS_FEATURE in self.features:
                await self._ledger.issue(job)
            # Nothing is acknowledged that was not persisted: the job, its idempotency
            # record and its credentials' ledger entries. (Without a durable store
            # there is nothing to wait for, so the accept costs no scheduler pass.)
            if self._store.durable:
                await self._store.flush(since=mark)
        except (StoreError, InternalError):
            self.jobs.remove(job)
            job.watchers.clear()
            session.submitted.discard(job.job_id)
            raise
        self._send_accepted(connection, job, envelope.id)
        log.info(
            "job accepted job_id=%s agent=%s session_id=%s",
            job.job_id,
            job.agent,
            session.session_id,
        )
        self._start_job(job, live, resolved.function, submit.input)

    def _start_job(self, job: JobRecord, live: _LiveJob, function: Agent, input_: Any) -> None:
        """The one place jobs enter the job nursery."""
        if self.config.lease_expiry is LeaseExpiry.TERMINATE and job.lease.expires_at is not None:
            # §9.5 "MAY proactively terminate": the job's scope ends at the instant; the
            # timer (at most one timer granularity later) revokes its credentials even
            # if the agent does not unwind, so no credential outlives its lease (§9.8).
            live.expiry_deadline = self._trio_deadline(job.lease.expires_at)
            live.expiry_timer = self._timers.call_at(
                live.expiry_deadline, lambda _now: self._lease_expired(job, live)
            )
        self._live[job.job_id] = live
        self._job_nursery.start_soon(self._run_job, job, function, input_)

    def _lease_expired(self, job: JobRecord, live: _LiveJob) -> None:
        """The lease's ``expires_at`` has passed (§9.5) and the job has not ended."""
        live.expiry_timer = None
        if live.done.is_set():
            return
        log.info("lease expired job_id=%s expires_at=%s", job.job_id, job.lease.expires_at)
        if live.ending is None:
            live.ending = _lease_expired_terminal()
        if live.scope is not None:
            live.scope.cancel()
        self._revoke_all(job, live)

    def _revoke_all(self, job: JobRecord, live: _LiveJob) -> None:
        """§9.8.2: revoke every credential of the job, once."""
        if live.revoked:
            return
        live.revoked = True
        for credential in job.credentials:
            self._ledger.revoke(job.job_id, credential)

    def _trio_deadline(self, moment: datetime) -> float:
        """A wall-clock instant on the wire as a Trio deadline (STYLE: one converter)."""
        return trio.current_time() + (moment - self._wall_clock()).total_seconds()

    def _send_accepted(self, connection: Connection, job: JobRecord, request_id: str) -> None:
        session = connection.session
        payload = accepted_payload(
            job, request_id=request_id, dialect=session.dialect, observer=session.principal
        )
        connection.send(
            Envelope(
                type=MessageType.JOB_ACCEPTED,
                id=new_ulid(),
                session_id=connection.session.session_id,
                job_id=job.job_id,
                trace_id=job.trace_id,
                payload=payload,
            )
        )

    def _replay_submit(self, connection: Connection, job: JobRecord, request_id: str) -> None:
        """§7.2: the same ``job.accepted`` again (and the terminal of a finished job)."""
        session = connection.session
        self._send_accepted(connection, job, request_id)
        if job.terminal is not None:
            self._deliver_terminal(session, job)
        elif session.session_id not in job.watchers:
            job.watchers.add(session.session_id)
            session.subscribed.add(job.job_id)
            self._save_session(session)

    # -- cancel (§7.4) ----------------------------------------------------------------------

    def _on_cancel(self, connection: Connection, envelope: Envelope) -> None:
        cancel: JobCancel = envelope.payload
        job_id = envelope.job_id or cancel.job_id
        if job_id is None:
            raise InvalidRequest("job.cancel requires job_id (on the envelope or in the payload)")
        session = connection.session
        job = self._visible_job(session, job_id)
        if job.session_id != session.session_id:
            # §7.4/§7.6: "Cancellation is reserved for the session that submitted the job."
            raise PermissionDenied("only the session that submitted the job may cancel it")
        live = self._live.get(job.job_id)
        if job.is_terminal or live is None or live.ending is not None:
            # Already over (or already ending): nothing to cancel, nothing to say.
            return
        reason = cancel.reason or "cancelled by client"
        live.ending = Terminal(
            status=JobStatus.CANCELLED,
            completed_at="",
            code=ErrorCode.CANCELLED,
            message=reason,
        )
        connection.reply(
            MessageType.JOB_CANCELLED,
            JobCancelled(job_id=job.job_id, reason=reason, request_id=envelope.id),
            job_id=job.job_id,
        )
        log.info("job cancel requested job_id=%s reason=%s", job.job_id, reason)
        if live.scope is not None:
            live.scope.cancel()

    # -- subscribe (§7.6) -------------------------------------------------------------------

    async def _on_subscribe(self, connection: Connection, envelope: Envelope) -> None:
        session = connection.session
        self._require(session, "subscribe")
        request: JobSubscribe = envelope.payload
        job = self._visible_job(session, request.job_id)
        log.info(
            "subscribe session_id=%s principal=%s job_id=%s owner=%s",
            session.session_id,
            session.principal,
            job.job_id,
            job.principal,
        )
        already = session.session_id in job.watchers
        replay = bool(request.history) and not already
        after = request.from_event_seq or 0
        # The history replayed: what is held of (after, last_event_index] now. What the
        # job emits while it is sent is live (after ``subscribed_from``).
        start = max(after + 1, job.history_start)
        count = max(0, job.last_event_index - start + 1) if replay else 0
        payload = subscribed_payload(
            job,
            request_id=envelope.id,
            dialect=session.dialect,
            observer=session.principal,
            replayed=count,
            missing=start - after - 1 if replay else 0,
        )
        connection.reply(MessageType.JOB_SUBSCRIBED, payload, job_id=job.job_id)
        if already:
            return
        if replay:
            await self._replay_history(connection, job, start - 1)
        # No checkpoint from the last replayed event to here: the history→live
        # boundary is exactly-once (§7.6).
        if job.terminal is not None:
            self._deliver_terminal(session, job)
        else:
            job.watchers.add(session.session_id)
            session.subscribed.add(job.job_id)
            self._save_session(session)

    async def _replay_history(self, connection: Connection, job: JobRecord, after: int) -> None:
        """Deliver the job's held events numbered above ``after`` to the session.

        Pages the store has are read and sent one at a time, each waiting for the
        connection's writer; it returns (without a checkpoint) once it has sent the
        part RAM holds.

        Raises:
            StoreError: the store lost events it should have.
        """
        session = connection.session
        for _ in range(job.history_limit // _PAGE + _PAGE):
            after = max(after, job.history_start - 1)
            window = job.history_after(after)
            if window is not None:
                for entry in window[0]:
                    self._deliver_one(
                        session, job, MessageType.JOB_EVENT, entry.frame_id, entry.payload_json
                    )
                return
            upto = job.first_cached_index() - 1
            page = await self._store.read_history(job.job_id, after, min(_PAGE, upto - after))
            if not page or page[0].number != after + 1:
                raise StoreError(f"job history after {after} is missing from the store")
            for stored in page:
                self._deliver_one(
                    session, job, MessageType.JOB_EVENT, stored.frame_id, stored.payload_json
                )
            after = page[-1].number
            await connection.wait_writable()
        raise InternalError("the history replay could not catch up with the job")

    def _on_unsubscribe(self, connection: Connection, envelope: Envelope) -> None:
        request: JobUnsubscribe = envelope.payload
        session = connection.session
        self._require(session, "subscribe")
        if request.job_id in session.subscribed:
            session.subscribed.discard(request.job_id)
            self._save_session(session)
            job = self.jobs.get(request.job_id)
            if job is not None and job.job_id not in session.submitted:
                job.watchers.discard(session.session_id)

    # == jobs ====================================================================================

    async def _run_job(self, job: JobRecord, function: Agent, input_: Any) -> None:
        with self._telemetry.job(job):
            await self._run_job_body(job, function, input_)

    async def _run_job_body(self, job: JobRecord, function: Agent, input_: Any) -> None:
        live = self._live[job.job_id]
        terminal: Terminal | None = None
        try:
            with trio.CancelScope(deadline=min(live.deadline, live.expiry_deadline)) as scope:
                live.scope = scope
                if live.ending is not None:
                    scope.cancel()
                if self._limiter is not None:
                    await self._limiter.acquire_on_behalf_of(job.job_id)
                try:
                    job.transition(JobStatus.RUNNING)
                    self._store.save_job(job_to_row(job))
                    terminal = await self._invoke(job, live, function, input_)
                finally:
                    if self._limiter is not None:
                        self._limiter.release_on_behalf_of(job.job_id)
            if live.ending is not None:
                # A cancel that was acknowledged wins, even over a late return.
                terminal = live.ending
            elif terminal is None and live.expiry_deadline <= live.deadline:
                # §9.5: proactive termination at the lease's expires_at.
                terminal = _lease_expired_terminal()
            elif terminal is None:
                terminal = Terminal(
                    status=JobStatus.TIMED_OUT,
                    completed_at="",
                    code=ErrorCode.TIMEOUT,
                    message="job exceeded max_runtime_sec",
                )
        finally:
            if terminal is None:
                # Cancelled from outside the runtime's control (the job nursery
                # itself is going away): still end the job visibly.
                terminal = live.ending or Terminal(
                    status=JobStatus.ERROR,
                    completed_at="",
                    code=ErrorCode.INTERNAL_ERROR,
                    message="runtime stopped",
                    retryable=True,
                )
            self._finish(job, live, terminal)

    async def _invoke(
        self, job: JobRecord, live: _LiveJob, function: Agent, input_: Any
    ) -> Terminal:
        """Run the agent; its exceptions stop here and become the terminal."""
        try:
            result = await function(input_, JobContext(self, job))
        except ARCPError as exc:
            return Terminal(
                status=JobStatus.ERROR,
                completed_at="",
                code=str(exc.code),
                message=exc.message,
                retryable=exc.retryable,
                details=exc.details,
            )
        except Exception as exc:
            log.warning("agent raised job_id=%s agent=%s", job.job_id, job.agent, exc_info=True)
            return Terminal(
                status=JobStatus.ERROR,
                completed_at="",
                code=ErrorCode.INTERNAL_ERROR,
                message=f"{type(exc).__name__}: {exc}",
                retryable=True,
            )
        if live.stream_result_id is not None:
            if live.stream_open or live.stream_size is None:
                return _internal("agent returned while its result stream was still open")
            if result is not None:
                # §8.4: "MUST NOT mix inline result and result_chunk in the same job".
                return _internal("agent returned an inline result after streaming one")
            return Terminal(
                status=JobStatus.SUCCESS,
                completed_at="",
                result_id=live.stream_result_id,
                result_size=live.stream_size,
                summary=live.stream_summary,
            )
        try:
            dumps(result)
        except (TypeError, ValueError, RecursionError) as exc:
            # RecursionError too: a result nested too deeply to serialise must end
            # this job, not escape into the job nursery (found by fuzzing).
            return _internal(f"agent result is not JSON-serialisable: {exc!r}"[:500])
        return Terminal(status=JobStatus.SUCCESS, completed_at="", result=result)

    def _finish(self, job: JobRecord, live: _LiveJob, terminal: Terminal) -> None:
        terminal = attrs.evolve(terminal, completed_at=self._timestamp())
        job.finish(terminal)
        self._store.save_job(job_to_row(job))
        # §9.8.2: revoke at every terminal state, however it ended.
        self._revoke_all(job, live)
        if live.expiry_timer is not None:
            live.expiry_timer.cancel()
            live.expiry_timer = None
        live.done.set()
        self._live.pop(job.job_id, None)
        if job.history_spills:
            self._uncache_history(job)  # the store has it; RAM keeps running jobs' only
        parent = self.jobs.get(job.parent_job_id) if job.parent_job_id else None
        if (
            parent is not None
            and parent.budget is not None
            and job.budget is not None
            and job.budget is not parent.budget
        ):
            parent.budget.release(job.budget.remaining)
        for child_id in live.children:
            # §10: a child never outlives its parent's authority.
            self._end_job(child_id, ErrorCode.CANCELLED, f"parent job {job.job_id} ended")
        log.info(
            "job finished job_id=%s status=%s code=%s", job.job_id, terminal.status, terminal.code
        )
        frame_id = new_ulid()
        rendered: dict[Dialect, tuple[MessageType, str]] = {}
        for session in self._watching_sessions(job):
            if session.dialect not in rendered:
                message_type, payload = terminal.render(session.dialect)
                rendered[session.dialect] = (message_type, dumps(payload))
            message_type, payload_json = rendered[session.dialect]
            self._deliver_one(session, job, message_type, frame_id, payload_json)
        job.terminal_frame_id = frame_id

    def _deliver_terminal(self, session: Session, job: JobRecord) -> None:
        assert job.terminal is not None
        message_type, payload = job.terminal.render(session.dialect)
        self._deliver_one(
            session, job, message_type, job.terminal_frame_id or new_ulid(), dumps(payload)
        )

    def _watching_sessions(self, job: JobRecord) -> list[Session]:
        sessions = []
        for session_id in list(job.watchers):
            session = self._sessions.get(session_id)
            if session is None:
                job.watchers.discard(session_id)
            else:
                sessions.append(session)
        return sessions

    def _deliver_one(
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
        """``Session.deliver``, plus the store: the stamped frame outlives a crash."""
        frame = session.deliver(
            message_type,
            job_id=job.job_id,
            trace_id=job.trace_id,
            frame_id=frame_id,
            payload_json=payload_json,
        )
        buffer = session.buffer
        if self._store.durable:
            seq = buffer.last_seq
            self._store.append_event(session.session_id, seq, job.job_id, frame)
            if seq % 1024 == 0 and len(buffer) >= buffer.max_events:
                # At the cap the oldest events are evicted; keep the file bounded.
                self._store.trim_events(session.session_id, buffer.first_held_seq() - 1)
        return buffer.take_overflow_notice()

    def _notify_overflow(self, session: Session, job: JobRecord, notice: OverflowNotice) -> None:
        """§6.5 back-pressure signal: the buffer cap evicted unacknowledged events."""
        log.warning(
            "event buffer overflow session_id=%s evicted_through=%s evicted=%s",
            session.session_id,
            notice.evicted_through,
            notice.evicted_count,
        )
        body = overflow_body(notice)
        payload_json = dumps({"kind": "status", "ts": self._timestamp(), "body": body})
        self._stamp(session, job, MessageType.JOB_EVENT, new_ulid(), payload_json)

    # == the JobContext's host interface =========================================================

    async def _emit(self, job: JobRecord, kind: str, body: Any) -> None:
        """An agent's emitter: back-pressure (live connections only), then route."""
        if job.is_terminal:
            raise RuntimeError(f"job {job.job_id} has already ended")
        congested = [
            session.connection
            for session in self._watching_sessions(job)
            if session.connection is not None and session.connection.congested
        ]
        live = self._live[job.job_id]
        if congested:
            # Only live connections slow an agent down, never a detached session
            # (DESIGN.md "The flow of one event").
            for connection in congested:
                await connection.wait_writable()
            live.emits_since_yield = 0
        elif live.emits_since_yield >= _EMITS_PER_YIELD:
            live.emits_since_yield = 0
            # Write-behind is bounded too: past the store's bound the writer catches up
            # before more is queued (looked at once a batch: a bound, not a cliff).
            await self._store.wait_writable()
        else:
            # A cancellation point on every emit; a full scheduling point only every
            # few, so a chatty agent pays one scheduler pass per batch, not per event,
            # and the send task still drains the batch promptly.
            live.emits_since_yield += 1
            await trio.lowlevel.checkpoint_if_cancelled()
        self._route_event(job, kind, body)

    def _route_event(self, job: JobRecord, kind: str, body: Any) -> None:
        """Record one event in the job's history and stamp it into every watcher."""
        frame_id = new_frame_id()
        payload_json = dumps({"kind": kind, "ts": self._timestamp(), "body": body})
        history = job.history
        before = len(history)
        entry = job.record_event(frame_id, kind, payload_json)
        if not before:
            self._history_ram[job.job_id] = job
        self._history_ram_total += len(history) - before
        if self._history_ram_total > self.config.history_memory_events:
            self._shed_history()
        if self._store.durable:
            self._store.append_history(job.job_id, entry.number, frame_id, kind, payload_json)
            if entry.number > job.history_limit and entry.number % 1024 == 0:
                # Keep the file's copy of the history as bounded as the memory one.
                self._store.trim_history(job.job_id, entry.number - job.history_limit)
        for session in self._watching_sessions(job):
            self._deliver_one(session, job, MessageType.JOB_EVENT, frame_id, payload_json)

    def _history_settings(self) -> dict[str, Any]:
        """How a new job keeps its history (see ``RuntimeConfig.event_cache_events``)."""
        return {
            "history_limit": self.config.job_history_limit,
            "history_spills": self._store.durable,
            "history_cache_limit": self._cache,
        }

    def _shed_history(self) -> None:
        """Over ``history_memory_events``: RAM lets go of the oldest jobs' oldest events
        (down to 15/16 of the cap, so this runs once per many events). With a durable
        store the store still has them; without one they are gone, and a subscribe
        says so (``history_missing``)."""
        cap = self.config.history_memory_events
        target = cap - cap // 16
        ram = self._history_ram
        while self._history_ram_total > target and ram:
            job = next(iter(ram.values()))
            self._history_ram_total -= job.drop_cached(self._history_ram_total - target)
            if not job.history:
                del ram[job.job_id]

    def _uncache_history(self, job: JobRecord) -> None:
        self._history_ram_total -= job.drop_cached(len(job.history))
        self._history_ram.pop(job.job_id, None)

    async def _janitor(self) -> None:
        """Retention: forget finished jobs older than ``job_retention_sec``."""
        while True:
            await trio.sleep(self.config.janitor_interval_sec)
            self.reclaim()

    def reclaim(self) -> int:
        """Forget finished jobs past retention now; returns how many went."""
        horizon = self._wall_clock() - timedelta(seconds=self.config.job_retention_sec)
        expired = [
            job
            for job in self.jobs
            if job.terminal is not None
            and job.job_id not in self._live
            and parse_timestamp(job.terminal.completed_at) < horizon
        ]
        for job in expired:
            self.jobs.remove(job)
            self._uncache_history(job)
            self._store.delete_job(job.job_id)
            if job.idempotency_key is not None:
                self._store.delete_idempotency(job.principal, job.idempotency_key)
        if expired:
            log.info("janitor reclaimed jobs=%s", len(expired))
        return len(expired)

    # == credentials (§9.8) ==============================================================

    async def _rotate_credential(self, job: JobRecord, credential_id: str) -> dict[str, Any]:
        """§9.8.2 rotation: new value to the submitter only, then revoke the old one."""
        if not self._ledger.configured:
            raise InvalidRequest("no credential provisioner is configured")
        index = next((i for i, c in enumerate(job.credentials) if c["id"] == credential_id), None)
        if index is None:
            raise InvalidRequest(f"job has no credential {credential_id!r}")
        live = self._live.get(job.job_id)
        if live is None or live.revoked:
            # Its credentials went with its lease (§9.5, §9.8): none is issued again.
            raise LeaseExpired("the job's credentials have been revoked")
        old = job.credentials[index]
        fresh = await self._ledger.rotate(old)
        if _revoked(live):  # (re-read after the await)
            # Revoked while the upstream rotated: the new value must not outlive them.
            self._ledger.revoke(job.job_id, fresh)
            raise LeaseExpired("the job's credentials have been revoked")
        job.credentials[index] = fresh
        self._ledger.record_live(job.job_id, fresh)
        submitter = self._sessions.get(job.session_id)
        if submitter is not None:
            # Not in the job's history and not to subscribers (§14): the submitter only.
            body = rotation_body(credential_id, fresh["value"])
            payload_json = dumps({"kind": "status", "ts": self._timestamp(), "body": body})
            self._deliver_one(submitter, job, MessageType.JOB_EVENT, new_frame_id(), payload_json)
        self._ledger.revoke(job.job_id, old)
        await trio.lowlevel.checkpoint()
        return fresh

    def _save_session(self, session: Session) -> None:
        if self._store.durable:
            self._store.save_session(session_to_row(session))

    def _restore(self, recovered: Recovered) -> None:
        """Rebuild state from the store after a restart (before serving anything).

        Jobs that were running when the process died cannot be resumed (§1.2: agent
        state across restarts is out of scope); they end now with a retryable
        ``INTERNAL_ERROR``, delivered to every session that watched them, so a client
        that resumes receives the missing events and that terminal.
        """
        for row in recovered.jobs:
            self.jobs.restore(restored_job(row, recovered, **self._history_settings()))
        for principal, key, print_, job_id in recovered.idempotency:
            if self.jobs.get(job_id) is not None:
                self.jobs.restore_idempotency(principal, key, print_, job_id)
        now = trio.current_time()
        for saved in recovered.sessions:
            session = restored_session(
                saved,
                recovered,
                max_buffered_events=self.config.max_buffered_events,
                resume_window_sec=self.config.resume_window_sec,
            )
            self._sessions.add(session)
            for job_id in session.watching:
                watched = self.jobs.get(job_id)
                if watched is not None:
                    watched.watchers.add(session.session_id)
            # Detached since the restart: resumable for a whole window from now.
            session.window.detach(now)
            session.detach_generation += 1
            self._expire_later(session, now + self.config.resume_window_sec)
        self._ledger.restore(recovered.credentials)
        interrupted = [job for job in self.jobs if not job.is_terminal]
        for job in interrupted:
            self._finish(
                job,
                _LiveJob(),
                Terminal(
                    status=JobStatus.ERROR,
                    completed_at="",
                    code=ErrorCode.INTERNAL_ERROR,
                    message="runtime restarted",
                    retryable=True,
                ),
            )
        log.info(
            "store restored jobs=%s interrupted=%s sessions=%s events=%s",
            len(recovered.jobs),
            len(interrupted),
            len(recovered.sessions),
            sum(high - low + 1 for low, high in recovered.event_bounds.values()),
        )

    def _end_job(self, job_id: str, code: str, message: str) -> None:
        """Record why the runtime ends a running job, then cancel it."""
        live = self._live.get(job_id)
        if live is None or live.done.is_set() or live.ending is not None:
            return
        status = JobStatus.CANCELLED if code == ErrorCode.CANCELLED else JobStatus.ERROR
        live.ending = Terminal(status=status, completed_at="", code=code, message=message)
        if live.scope is not None:
            live.scope.cancel()

    def _authorize(self, job: JobRecord, namespace: str, target: str) -> None:
        """§9.3: synchronous, before dispatch; a fatal denial also ends the job."""
        try:
            job.lease.authorize(namespace, target, now=self._wall_clock(), budget=job.budget)
        except ARCPError as denial:
            self._on_denial(job, denial)
            raise

    def _authorize_model(self, job: JobRecord, model: str) -> None:
        try:
            job.lease.authorize_model(
                model,
                now=self._wall_clock(),
                budget=job.budget,
                default_allow=self.config.model_use_default_allow,
            )
        except ARCPError as denial:
            self._on_denial(job, denial)
            raise

    async def _delegate(
        self,
        parent: JobRecord,
        agent: str,
        input_: Any,
        lease_request: dict[str, list[str]] | None,
        lease_constraints: dict[str, Any] | None,
    ) -> _Child:
        """§10: start a child job under a subset of ``parent``'s authority."""
        resolved = self.agents.resolve(agent)
        # Delegating is itself authority-bearing (§9.2 ``agent.delegate``).
        self._authorize(parent, "agent.delegate", resolved.name)
        requested = parse_lease(lease_request or {})
        constraints = dict(lease_constraints or {})
        if constraints.get("expires_at") is not None:
            requested = attrs.evolve(
                requested, expires_at=self._parse_expiry(str(constraints["expires_at"]))
            )
        # §9.4: the child's lease must be a subset of the parent's, its budget within
        # the parent's remaining budget, its expiry no later than the parent's.
        lease = child_lease(
            parent.lease,
            requested,
            parent_budget=parent.budget,
            model_default_allow=self.config.model_use_default_allow,
        )
        budget: Budget | None
        if "cost.budget" in requested.grants:
            budget = Budget.from_lease(lease)
            if budget is not None and parent.budget is not None:
                # A child's own budget is reserved from the parent's, so authority cannot
                # be multiplied by delegating the same remainder twice; what it leaves
                # unspent comes back when it ends.
                parent.budget.reserve(budget.initial)
        else:
            # No budget named: the child spends from the parent's counters.
            budget = parent.budget
        if lease.expires_at is not None:
            constraints["expires_at"] = format_timestamp(lease.expires_at)
        parent_live = self._live[parent.job_id]
        now = self._wall_clock()
        child = JobRecord(
            job_id=new_id("job"),
            ordinal=self.jobs.next_ordinal(),
            principal=parent.principal,
            session_id=parent.session_id,
            agent_name=resolved.name,
            agent_version=resolved.version,
            lease=lease,
            lease_constraints=constraints or None,
            budget=budget,
            trace_id=parent.trace_id,  # §11: trace context flows to sub-agents
            parent_job_id=parent.job_id,
            delegate_id=None,
            created_at=now,
            accepted_at=format_timestamp(now),
            **self._history_settings(),
        )
        self.jobs.add(child)
        self._store.save_job(job_to_row(child))
        parent_live.children.add(child.job_id)
        # A child never outlives its parent: same max_runtime deadline at most.
        self._start_job(child, _LiveJob(deadline=parent_live.deadline), resolved.function, input_)
        self._route_event(
            parent,
            "delegate",
            {"child_job_id": child.job_id, "agent": child.agent, "lease": lease.as_wire()},
        )
        log.info(
            "job delegated parent_job_id=%s job_id=%s agent=%s",
            parent.job_id,
            child.job_id,
            child.agent,
        )
        await trio.lowlevel.checkpoint()
        return _Child(child.job_id, self)

    def _parse_expiry(self, text: str) -> datetime:
        """§9.5: UTC with ``Z``, in the future at submission time."""
        where = "$.payload.lease_constraints.expires_at"
        try:
            moment = parse_timestamp(text, require_utc=True)
        except ValueError as exc:
            raise InvalidRequest.at(where, str(exc)) from None
        if moment <= self._wall_clock():
            raise InvalidRequest.at(where, "must be in the future (§9.5)")
        return moment

    def _on_denial(self, job: JobRecord, denial: ARCPError) -> None:
        log.info("operation denied job_id=%s code=%s %s", job.job_id, denial.code, denial.message)
        if denial.code in self.config.fatal_denials:
            self._end_job(job.job_id, denial.code, denial.message)

    async def _call_tool(self, job: JobRecord, name: str, args: Any) -> Any:
        call_id = new_id("call")
        await self._emit(job, "tool_call", {"tool": name, "args": args, "call_id": call_id})
        try:
            self._authorize(job, "tool.call", name)
            tool = self.tools.get(name)
            if tool is None:
                raise InvalidRequest(f"no tool named {name!r} is registered")
            reset = current_trace_id.set(job.trace_id)
            try:
                with self._telemetry.tool(job, name):
                    result = await tool(args)
            finally:
                current_trace_id.reset(reset)
        except ARCPError as exc:
            await self._tool_error(job, call_id, exc)
            raise
        except Exception as exc:
            error = InternalError(f"tool {name!r} failed: {type(exc).__name__}: {exc}")
            await self._tool_error(job, call_id, error)
            raise error from exc
        await self._emit(job, "tool_result", {"call_id": call_id, "result": result})
        return result

    async def _tool_error(self, job: JobRecord, call_id: str, error: ARCPError) -> None:
        """§9.5, §9.6: a denial "surfaced via ... a tool_result event with the error code"."""
        body = {"code": str(error.code), "message": error.message, "retryable": error.retryable}
        # Routed without a checkpoint, so it is recorded even when the denial was fatal
        # and the job's scope is already cancelled.
        self._route_event(job, "tool_result", {"call_id": call_id, "error": body})
        await trio.lowlevel.checkpoint()

    def _charge(self, job: JobRecord, currency: str, value: Decimal) -> Decimal | None:
        if job.budget is None:
            return None
        return job.budget.charge(currency, value)

    def _begin_stream(self, job: JobRecord, result_id: str) -> None:
        live = self._live[job.job_id]
        if live.stream_result_id is not None:
            raise RuntimeError("a job streams at most one result")
        live.stream_result_id = result_id
        live.stream_open = True

    def _end_stream(self, job: JobRecord, result_id: str, size: int, summary: str | None) -> None:
        live = self._live[job.job_id]
        live.stream_open = False
        live.stream_size = size
        live.stream_summary = summary

    @property
    def _result_chunk_bytes(self) -> int:
        return self.config.result_chunk_bytes

    @property
    def _max_result_bytes(self) -> int:
        return self.config.max_result_bytes


class _Child:
    """A delegated job, as the delegating agent sees it (``ctx.delegate``)."""

    def __init__(self, job_id: str, runtime: Runtime) -> None:
        self.job_id = job_id
        self._runtime = runtime

    async def result(self) -> Any:
        job = await self._runtime.wait_job_done(self.job_id)
        terminal = job.terminal
        assert terminal is not None
        if terminal.status is JobStatus.SUCCESS:
            if terminal.result_id is not None:
                return {"result_id": terminal.result_id, "result_size": terminal.result_size}
            return terminal.result
        raise make_error(
            terminal.error_code,
            terminal.message or str(terminal.status),
            retryable=terminal.retryable,
            details=terminal.details,
        )


def _revoked(live: _LiveJob) -> bool:
    return live.revoked


def _lease_expired_terminal() -> Terminal:
    # §12: LEASE_EXPIRED is never retryable; §9.5: final_status "error".
    return Terminal(
        status=JobStatus.ERROR,
        completed_at="",
        code=ErrorCode.LEASE_EXPIRED,
        message="the lease expired while the job was running",
    )


def _internal(message: str) -> Terminal:
    return Terminal(
        status=JobStatus.ERROR,
        completed_at="",
        code=ErrorCode.INTERNAL_ERROR,
        message=message,
        retryable=True,
    )


@asynccontextmanager
async def open_runtime(
    *,
    agents: AgentRegistry,
    tokens: Mapping[str, str],
    config: RuntimeConfig | None = None,
    wall_clock: WallClock = system_wall_clock,
    observe_policy: ObservePolicy = same_principal,
    tools: ToolRegistry | None = None,
    store: Store | None = None,
    provisioner: CredentialProvisioner | None = None,
    telemetry: Telemetry | None = None,
    lease_policy: LeasePolicy | None = None,
) -> AsyncIterator[Runtime]:
    """Open a runtime that owns its job nursery; shut it down on exit.

    Args:
        agents: the agents it hosts.
        tokens: bearer token → principal (§6.1).
        config: limits and timings (``RuntimeConfig()`` defaults).
        wall_clock: source of wire timestamps and lease expiry; tests pass one tied
            to Trio's clock.
        observe_policy: who may list/subscribe to whose jobs (§14: same principal by
            default).
        tools: tools agents may call through ``ctx.call_tool`` (§9.3).
        provisioner: issues per-job credentials (§9.8); with a durable store the
            runtime advertises ``provisioned_credentials``.
        lease_policy: ``(principal, requested lease) -> granted lease``; narrows what
            a submit asks for (a wider grant is refused as a subset violation).
        telemetry: span hooks around jobs and tool calls (``runtime.otel.OpenTelemetry``
            for OpenTelemetry, §11); none by default.
        store: persistence (``SQLiteStore``); default ``MemoryStore``, nothing
            survives the process. A durable store is loaded first: jobs, sessions
            and event buffers come back, and jobs that were running end with a
            retryable ``INTERNAL_ERROR`` ("runtime restarted").

    Raises:
        StoreError: the store's file is corrupt or has a newer schema.

    On exit (normal or not) the runtime stops accepting, gives running jobs
    ``shutdown_grace_sec`` to finish, then cancels them with a terminal that every
    watcher receives.
    """
    store = store or MemoryStore()
    recovered = await store.load()
    try:
        async with open_owner_nursery() as (store_nursery, body):
            # The writer outlives jobs and sessions, so their last words are written.
            await store_nursery.start(store.run)
            async with trio.open_nursery() as job_nursery, trio.open_nursery() as session_nursery:
                runtime = Runtime._create(
                    agents=agents,
                    auth=BearerAuth(tokens),
                    config=config or RuntimeConfig(),
                    wall_clock=wall_clock,
                    observe_policy=observe_policy,
                    tools=tools or ToolRegistry(),
                    store=store,
                    provisioner=provisioner,
                    telemetry=telemetry or NoTelemetry(),
                    lease_policy=lease_policy,
                    job_nursery=job_nursery,
                    session_nursery=session_nursery,
                )
                runtime._restore(recovered)
                session_nursery.start_soon(runtime._janitor)
                session_nursery.start_soon(runtime._timers.run)
                try:
                    yield runtime
                except BaseException as exc:
                    body.error = exc
                    raise
                finally:
                    await runtime.shutdown()
            store_nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
