"""The runtime: owner of every job and every session (DESIGN.md, "the one rule").

Theory of operation
-------------------
``open_runtime`` opens the nurseries and hands back a ``Runtime``, the facade
over the rooms of ``runtime/`` (docs/architecture.md)::

    store_nursery               the store's writer (outlives everything below)
      connection_nursery        every connection (``handle_transport``), each with
                                its own conn_nursery inside (connection.py)
      session_nursery           timers (heartbeats, resume windows), janitor, ledger
      job_nursery               every job's task; only jobs.py starts tasks here;
                                the caller's ``async with`` body runs inside it

The connection and session nurseries are each opened by a task of their own
(``_Area``), outside the caller's body, so that shutdown's cancelling them never
reaches the caller's code: a signal handler in the body can ``await
runtime.shutdown()`` (the drain) and go on.

Rooms, and the one-way arrows between them (tests/test_layers.py keeps them)::

    runtime ─→ handshake ─→ handlers ─→ jobs ─→ routing ─→ state
                   └──────→ connection, session      (shapes: payloads; recovery: rows)

A frame arrives on a connection, which hands it to ``Handlers.dispatch``; a job
runs in ``JobRunner``; each event it emits goes through ``EventRouter.publish``
into the job's history and every watching session's stream, synchronously, and
the connections' send tasks take their turn at the agent's next ``await``. Each
step that must be atomic is one call on the state interfaces (state.py), which
never checkpoint inside a call in this process: that is what makes idempotency
atomic across sessions and the history→live boundary of a subscription
exactly-once. A subscribe with history and a resume whose gap is partly in the
store await the store's pages and keep the boundary anyway (handlers.py,
handshake.py); RAM holds a bounded cache of both
(``RuntimeConfig.event_cache_events``; docs/store.md).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._scopes import open_owner_nursery
from .._util import NoPublicConstructor
from ..protocol.job import JobStatus
from ..protocol.session import ALL_FEATURES, CREDENTIALS_FEATURE
from ..store.base import MemoryStore, Recovered, Store
from ..wire.errors import ARCPError
from ..wire.messages import MessageType, SessionClosed
from ..wire.timestamps import (
    WallClock,
    format_timestamp,
    system_timestamp,
    system_wall_clock,
)
from .auth import AnyOf, Authenticator, BearerAuth
from .config import RuntimeConfig
from .handlers import Handlers, LeasePolicy, ObservePolicy, same_principal
from .handshake import Handshake
from .jobs import JobRunner, LiveJob
from .ledger import CredentialLedger
from .otel import NoTelemetry, Telemetry
from .routing import EventRouter, Router, SharedState
from .state import open_state
from .timers import Timers
from .tools import ToolRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from ..protocol.job import JobRecord
    from ..transport.base import Transport
    from .agents import AgentRegistry
    from .connection import Connection
    from .credentials import CredentialProvisioner
    from .session import Session

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
    #: ``Runtime.ready``: the store is open, recovery is done, shutdown has not begun.
    ready: bool = False
    #: Transports the runtime serves now: in the handshake or attached to a session.
    connections: int = 0
    #: Every job the runtime knows (finished ones until retention), by status (§7.3);
    #: every status is present.
    jobs_by_status: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    #: The largest ``buffered_events`` of any one session.
    max_session_buffered_events: int = 0
    #: Frames queued on connections and not yet written to their transports.
    queued_frames: int = 0
    # -- counters, since the runtime opened (they only grow) --
    #: Events agents emitted (each once, however many sessions watch the job).
    events_published: int = 0
    #: Job frames (events, terminals, notices) stamped into a session's stream (§8.3):
    #: an event watched by two sessions counts twice.
    events_delivered: int = 0
    #: Frames written to transports (every kind, by every connection).
    frames_written: int = 0
    #: Times a live connection was so far behind that a producer had to wait for it
    #: (an agent's emit, a replay): one per congested episode of a connection.
    backpressure_episodes: int = 0
    #: §6.5 overflow episodes: the buffer cap evicted unacknowledged events and a
    #: ``status {phase: "back_pressure"}`` told the session.
    buffer_overflows: int = 0
    #: Unacknowledged events those episodes evicted.
    events_evicted: int = 0
    #: Sessions welcomed new, and resumed (§6.3).
    sessions_opened: int = 0
    sessions_resumed: int = 0
    #: Handshakes refused with a ``session.error``, by its code (§12).
    handshake_failures: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    #: Handshakes whose first frame did not arrive within ``handshake_timeout_sec``.
    handshake_timeouts: int = 0


class Runtime(metaclass=NoPublicConstructor):
    """Hosts jobs and sessions. Build one with ``open_runtime`` (which owns its
    nurseries: there is no public constructor)."""

    def __init__(
        self,
        *,
        agents: AgentRegistry,
        auth: Authenticator,
        config: RuntimeConfig,
        wall_clock: WallClock,
        observe_policy: ObservePolicy,
        tools: ToolRegistry,
        store: Store,
        provisioner: CredentialProvisioner | None,
        telemetry: Telemetry,
        lease_policy: LeasePolicy | None,
        job_nursery: trio.Nursery,
        session_area: _Area,
        connection_area: _Area,
        shared: SharedState | None,
    ) -> None:
        self.agents = agents
        self.tools = tools
        self.config = config
        self._store = store
        # §14: "A runtime that cannot guarantee revocation MUST NOT advertise
        # provisioned_credentials": it needs a provisioner and a durable ledger.
        self.features: tuple[str, ...] = ALL_FEATURES + (
            (CREDENTIALS_FEATURE,) if provisioner is not None and store.durable else ()
        )
        #: ``format_timestamp(wall_clock())``: every event carries one, so the system
        #: clock gets the fast path.
        timestamp: Callable[[], str] = (
            system_timestamp
            if wall_clock is system_wall_clock
            else lambda: format_timestamp(wall_clock())
        )
        self._session_area, self._connection_area = session_area, connection_area
        session_nursery = session_area.nursery
        self._connection_nursery = connection_area.nursery
        #: Heartbeats and resume windows: one task for every deadline (``run`` is
        #: started by ``open_runtime``). A ping may go out one granularity early.
        self._timers = Timers(granularity=min(1.0, config.heartbeat_interval_sec / 20))
        self._closing = False
        #: Set by ``open_runtime`` once the store is loaded and restored (``ready``).
        self._restored = False
        self._shutdown_done = trio.Event()
        self._connections: set[Connection] = set()
        #: Transports in ``_serve_connection`` (handshaking or attached).
        self._serving = 0
        #: What the connections that have ended wrote and waited for (``statistics``
        #: adds the live ones': nothing is counted per frame here).
        self._ended_frames_written = 0
        self._ended_backpressure = 0
        # -- the rooms, wired one way --
        #: Issue, rotate, revoke (§9.8), with the store's revocation ledger (§14).
        self._ledger = CredentialLedger(provisioner, store, session_nursery)
        self._router: Router
        if shared is not None:
            # State several processes share (a cluster): its registry, directory and
            # router stand in for this process's own.
            self._jobs, self._sessions = shared.registry, shared.sessions
            self._router = shared.router
        else:
            self._jobs, self._sessions = open_state(store)
            self._router = EventRouter(
                sessions=self._sessions,
                event_log=store,
                durable=store.durable,
                timestamp=timestamp,
                history_memory_events=config.history_memory_events,
            )
        delivery = shared.delivery if shared is not None else None
        self._runner = JobRunner(
            job_nursery=job_nursery,
            registry=self._jobs,
            sessions=self._sessions,
            router=self._router,
            store=store,
            ledger=self._ledger,
            config=config,
            timers=self._timers,
            telemetry=telemetry,
            agents=agents,
            tools=tools,
            wall_clock=wall_clock,
            timestamp=timestamp,
        )
        closing = self._is_closing
        handlers = Handlers(
            registry=self._jobs,
            sessions=self._sessions,
            router=self._router,
            runner=self._runner,
            store=store,
            ledger=self._ledger,
            agents=agents,
            config=config,
            features=self.features,
            observe_policy=observe_policy,
            lease_policy=lease_policy,
            wall_clock=wall_clock,
            timestamp=timestamp,
            closing=closing,
            shared=delivery,
        )
        self._handshake = Handshake(
            sessions=self._sessions,
            registry=self._jobs,
            event_log=store,
            durable=store.durable,
            handlers=handlers,
            auth=auth,
            agents=agents,
            config=config,
            features=self.features,
            timers=self._timers,
            timestamp=timestamp,
            closing=closing,
            shared=delivery,
        )
        if shared is not None:
            shared.bind(self._restart)

    def _restart(self, job: JobRecord, agent: str, input_: Any) -> bool:
        """Run a restartable agent's job again here, from scratch: its process died
        (the shared state took the job over for this one)."""
        try:
            resolved = self.agents.resolve(agent)
        except ARCPError:
            return False  # not hosted here: the caller ends the job instead
        self._runner.start(job, LiveJob(), resolved.function, input_)
        return True

    def _is_closing(self) -> bool:
        return self._closing

    # == public surface ==========================================================================

    @property
    def ready(self) -> bool:
        """Serving: the store is open, recovery is done and shutdown has not begun
        (what a readiness probe asks; ``runtime.metrics`` serves it as ``/readyz``)."""
        return self._restored and not self._closing

    def statistics(self) -> RuntimeStatistics:
        """A snapshot of what the runtime holds and has done (``RuntimeStatistics``).

        Costs a pass over the sessions, jobs and connections: read it when asked (a
        metrics scrape), not per event. The runtime's own counting is plain integers.
        """
        attached = buffered = cached = largest = 0
        for session in self._sessions:
            held = len(session.buffer)
            buffered += held
            cached += session.buffer.cached
            largest = max(largest, held)
            if session.connection is not None:
                attached += 1
        by_status = dict.fromkeys(map(str, JobStatus), 0)
        for job in self._jobs:
            by_status[job.status] += 1
        connections = self._connections
        handshake, router = self._handshake, self._router
        return RuntimeStatistics(
            sessions=len(self._sessions),
            attached_sessions=attached,
            jobs_total=len(self._jobs),
            jobs_active=self._runner.active,
            buffered_events=buffered,
            cached_events=cached,
            cached_history_events=router.history_ram_total,
            unrevoked_credentials=self._ledger.unrevoked,
            ready=self.ready,
            connections=self._serving,
            jobs_by_status=by_status,
            max_session_buffered_events=largest,
            queued_frames=sum(len(c.outbox.frames) for c in connections),
            events_published=router.events_published,
            events_delivered=router.events_delivered,
            frames_written=self._ended_frames_written
            + sum(c.outbox.frames_written for c in connections),
            backpressure_episodes=self._ended_backpressure
            + sum(c.outbox.congestion_episodes for c in connections),
            buffer_overflows=router.overflows,
            events_evicted=router.events_evicted,
            sessions_opened=handshake.opened,
            sessions_resumed=handshake.resumed,
            handshake_failures=dict(handshake.failures),
            handshake_timeouts=handshake.timed_out,
        )

    def session(self, session_id: str) -> Session | None:
        """The live session record (for tests and introspection)."""
        return self._sessions.get(session_id)

    def job(self, job_id: str) -> JobRecord | None:
        """The job's record, for tests and introspection: read it, never change it
        (the runtime's rooms own every change; nothing outside runtime/ writes it)."""
        return self._jobs.get(job_id)

    def job_ids(self) -> list[str]:
        """Every job the runtime knows (finished ones until retention), oldest first."""
        return [job.job_id for job in sorted(self._jobs, key=lambda job: job.ordinal)]

    async def wait_job_done(self, job_id: str) -> JobRecord:
        """Wait until the job has reached a terminal state.

        Raises:
            JobNotFound: no such job.

        Cancellation: safe; nothing changes.
        """
        return await self._runner.wait_done(job_id)

    def reclaim(self) -> int:
        """Forget finished jobs past retention now; returns how many went."""
        return self._runner.reclaim()

    async def handle_transport(self, transport: Transport) -> None:
        """Serve one connection until it ends: handshake, then the session.

        The connection runs in the runtime's connection nursery, not the caller's
        task, so the runtime's shutdown flushes and closes it. The caller's task
        waits for it; cancelling the caller aborts the connection. Never raises for
        anything the peer does. The connection's task closes the transport: before
        this returns, except on cancellation (then a moment after).
        """
        done = trio.Event()
        scope = trio.CancelScope()
        try:
            if self._connection_nursery.cancel_scope.cancel_called:
                # Shut down: a connection started there now would be cancelled before
                # it could say why; refuse it here instead.
                raise RuntimeError("the connection nursery is closing")
            self._connection_nursery.start_soon(self._serve_connection, transport, scope, done)
        except RuntimeError:
            # The runtime has closed its connection nursery: refuse, then close.
            await self._handshake.refuse_shutting_down(transport)
            await _close(transport)
            return
        try:
            await done.wait()
        finally:
            if not done.is_set():
                scope.cancel()

    async def _serve_connection(
        self, transport: Transport, scope: trio.CancelScope, done: trio.Event
    ) -> None:
        """The one place a connection runs, and the one place its transport closes."""
        self._serving += 1
        try:
            with scope:
                connection = await self._handshake.open(transport)
                if connection is None:
                    return
                self._connections.add(connection)
                if self._closing:
                    # Welcomed while the runtime began to shut down: drained like the rest.
                    self._drain(connection)
                try:
                    await connection.run()
                finally:
                    self._connections.discard(connection)
                    self._ended_frames_written += connection.outbox.frames_written
                    self._ended_backpressure += connection.outbox.congestion_episodes
                    self._handshake.detach(connection)
        finally:
            self._serving -= 1
            await _close(transport)
            done.set()

    @staticmethod
    def _drain(connection: Connection) -> None:
        """Shutdown's end of one connection: what is queued (the terminals among it),
        then a runtime-initiated ``session.closed``, then the close.

        §6.7 defines ``session.closed`` as the acknowledgement of a close; sent
        unasked it tells the client the runtime ended the connection on purpose (not
        a network fault), and its jobs and session stay resumable within the window,
        on this runtime's successor with a durable store. Sent to every session: the
        reference client ignores types it does not know (WIRE.md, "Decisions" and
        §17.9), and ``session.bye`` would make it close itself for good (§17.11).
        A session still catching up on a replay from the store gets no notice: it
        would land in the middle of that replay.
        """
        if not connection.closed and not connection.session.catching_up:
            connection.reply(MessageType.SESSION_CLOSED, SessionClosed(reason=_SHUTDOWN_REASON))
        connection.close_after_flush(_SHUTDOWN_REASON)

    async def shutdown(self) -> None:
        """Stop accepting, give jobs a bounded grace, then end them with a terminal.

        Idempotent. From the first call ``ready`` is False, and a new connection's
        hello is refused (``INTERNAL_ERROR``, retryable: "runtime is shutting down").
        Watchers receive every terminal, then a ``session.closed`` with reason
        "runtime shutting down" (§6.7), then the transport closes: connections are
        flushed (for a bounded time) before the connection nursery is cancelled.
        Returns once every connection is over, so the transport servers can be
        stopped after it without cutting a drain short. It never cancels the
        caller: a task inside ``open_runtime``'s body may await it and go on.

        Cancellation: shielded internally and bounded by the configured grace plus a
        few seconds.
        """
        if self._closing:
            await self._shutdown_done.wait()
            return
        self._closing = True
        log.info(
            "runtime shutting down connections=%s jobs_active=%s grace=%s",
            len(self._connections),
            self._runner.active,
            self.config.shutdown_grace_sec,
        )
        with trio.CancelScope(shield=True):
            await self._runner.shutdown(self.config.shutdown_grace_sec)
            for connection in list(self._connections):
                self._drain(connection)
            # The flushes get two seconds; then the connection nursery ends them.
            self._connection_nursery.cancel_scope.deadline = trio.current_time() + 2
            self._connection_area.release.set()  # it closes once they are done
            self._session_area.nursery.cancel_scope.cancel()
            # Returns once every connection is over: whoever serves the transports
            # may stop now without cutting a drain short. Bounded: 2 s of flushes,
            # then each transport's own bounded close.
            with trio.move_on_after(10):
                await self._connection_area.closed.wait()
                await self._session_area.closed.wait()
        self._shutdown_done.set()

    def _restore(self, recovered: Recovered) -> None:
        """Rebuild state from the store after a restart (before serving anything).

        Jobs that were running when the process died cannot be resumed (§1.2: agent
        state across restarts is out of scope); they end now with a retryable
        ``INTERNAL_ERROR``, delivered to every session that watched them, so a client
        that resumes receives the missing events and that terminal.
        """
        self._jobs.restore(recovered, **self._runner.history_settings())
        sessions = self._sessions.restore(
            recovered,
            max_buffered_events=self.config.max_buffered_events,
            resume_window_sec=self.config.resume_window_sec,
        )
        now = trio.current_time()
        for session in sessions:
            for job_id in session.watching:
                watched = self._jobs.get(job_id)
                if watched is not None:
                    watched.watchers.add(session.session_id)
            # Detached since the restart: resumable for a whole window from now.
            session.window.detach(now)
            session.detach_generation += 1
            self._handshake.expire_later(session, now + self.config.resume_window_sec)
        self._ledger.restore(recovered.credentials)
        interrupted = [job for job in self._jobs if not job.is_terminal]
        for job in interrupted:
            self._runner.interrupted(job)
        log.info(
            "store restored jobs=%s interrupted=%s sessions=%s events=%s",
            len(recovered.jobs),
            len(interrupted),
            len(recovered.sessions),
            sum(high - low + 1 for low, high in recovered.event_bounds.values()),
        )


#: Why shutdown ends a connection: the ``session.closed`` reason and the log's.
_SHUTDOWN_REASON = "runtime shutting down"


class _Area:
    """A nursery opened by a task of its own (``run``), outside the caller's body,
    so that cancelling it never cancels the caller's code. It closes once
    ``release`` is set (or it is cancelled) and its tasks are done; then ``closed``."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.closed = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "the area's task has not started"
        return self._nursery

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self.release.wait()
        finally:
            self.closed.set()


async def _close(transport: Transport) -> None:
    with trio.move_on_after(5, shield=True):
        await transport.aclose()


@asynccontextmanager
async def open_runtime(
    *,
    agents: AgentRegistry,
    tokens: Mapping[str, str] | None = None,
    authenticator: Authenticator | None = None,
    config: RuntimeConfig | None = None,
    wall_clock: WallClock = system_wall_clock,
    observe_policy: ObservePolicy = same_principal,
    tools: ToolRegistry | None = None,
    store: Store | None = None,
    provisioner: CredentialProvisioner | None = None,
    telemetry: Telemetry | None = None,
    lease_policy: LeasePolicy | None = None,
    shared: SharedState | None = None,
) -> AsyncIterator[Runtime]:
    """Open a runtime that owns its job nursery; shut it down on exit.

    Args:
        agents: the agents it hosts.
        tokens: static bearer token → principal (§6.1).
        authenticator: another way in (``jwt_auth.JWTAuth``, or your own
            ``auth.Authenticator``); with ``tokens`` too, either may prove a principal.
            At least one of the two is required.
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
        shared: state several processes share (``arcp_trio.cluster.open_cluster_runtime``
            builds one on Redis); its store replaces ``store``.

    Raises:
        StoreError: the store's file is corrupt or has a newer schema.
        ValueError: neither ``tokens`` nor an ``authenticator`` was given.

    On exit (normal or not) the runtime stops accepting, gives running jobs
    ``shutdown_grace_sec`` to finish, then cancels them with a terminal that every
    watcher receives.
    """
    auth: Authenticator
    if authenticator is None:
        auth = BearerAuth(tokens or {})  # (refuses an empty table: nobody could log in)
    elif tokens:
        auth = AnyOf(BearerAuth(tokens), authenticator)
    else:
        auth = authenticator
    if shared is not None:
        if store is not None:
            raise ValueError("a runtime on shared state keeps its state there: no store")
        store = shared.store
    store = store or MemoryStore()
    recovered = await store.load()
    try:
        async with open_owner_nursery() as (store_nursery, body):
            # The writer outlives jobs and sessions, so their last words are written.
            await store_nursery.start(store.run)
            if shared is not None:
                # Like the store's writer, the shared state's writers outlive the jobs.
                await store_nursery.start(shared.run)
            # Connections and the timers in areas of their own (``_Area``): shutdown
            # ends them without cancelling the body, and waits for them. The job
            # nursery, which nothing cancels, holds the body.
            connection_area, session_area = _Area(), _Area()
            await store_nursery.start(connection_area.run)
            await store_nursery.start(session_area.run)
            async with trio.open_nursery() as job_nursery:
                session_nursery = session_area.nursery
                runtime = Runtime._create(
                    agents=agents,
                    auth=auth,
                    config=config or RuntimeConfig(),
                    wall_clock=wall_clock,
                    observe_policy=observe_policy,
                    tools=tools or ToolRegistry(),
                    store=store,
                    provisioner=provisioner,
                    telemetry=telemetry or NoTelemetry(),
                    lease_policy=lease_policy,
                    job_nursery=job_nursery,
                    session_area=session_area,
                    connection_area=connection_area,
                    shared=shared,
                )
                runtime._restore(recovered)
                session_nursery.start_soon(runtime._runner.janitor)
                session_nursery.start_soon(runtime._timers.run)
                runtime._restored = True  # ready: the store is open, recovery done
                try:
                    yield runtime
                except BaseException as exc:
                    body.error = exc
                    raise
                finally:
                    await runtime.shutdown()
            if shared is not None:
                with trio.CancelScope(shield=True):
                    await shared.drain()
            store_nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
