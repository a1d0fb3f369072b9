"""Handlers: what the runtime does with each frame of an established session.

``Handlers.dispatch`` is the connection's ``dispatch``: one entry per client
message type (§6, §7), each a method below. A handler reads and changes state
through the registry and directory (state.py), sends through the router
(routing.py) and starts jobs through the runner (jobs.py); the payloads it sends
are built in shapes.py. An ``ARCPError`` it raises becomes the frame's error
reply (connection.py), and the session goes on.

Two handlers await in the middle and keep their boundary anyway: a submit waits
for its records to be durable before ``job.accepted`` (§7.1), and a subscribe with
history reads the pages a durable store has before it goes live with no
checkpoint between the last replayed event and the watcher (§7.6).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..protocol.job import JobRecord, JobStatus, Terminal, fingerprint
from ..protocol.leases import Budget, Lease, check_subset, parse_lease
from ..protocol.session import CREDENTIALS_FEATURE, Dialect
from ..store.base import StoreError
from ..wire.codec import Envelope, unstructure_payload
from ..wire.errors import ErrorCode, InternalError, InvalidRequest, JobNotFound, PermissionDenied
from ..wire.ids import new_id, new_ulid
from ..wire.messages import (
    JobCancel,
    JobCancelled,
    JobSubmit,
    JobSubscribe,
    JobUnsubscribe,
    MessageType,
    SessionAck,
    SessionClosed,
    SessionListJobs,
    SessionPing,
    SessionPong,
)
from ..wire.timestamps import format_timestamp, parse_timestamp
from .jobs import LiveJob
from .shapes import accepted_payload, jobs_page_payload, subscribed_payload

if TYPE_CHECKING:
    from datetime import datetime

    from ..store.base import Store
    from ..wire.timestamps import WallClock
    from .agents import AgentRegistry
    from .config import RuntimeConfig
    from .connection import Connection
    from .jobs import JobRunner
    from .ledger import CredentialLedger
    from .routing import Router, SharedDelivery
    from .session import Session
    from .state import JobRegistry, SessionDirectory

__all__ = ["PAGE", "Handlers", "LeasePolicy", "ObservePolicy", "same_principal"]

log = logging.getLogger(__name__)

#: Who may observe a job: ``(observer principal, job) -> bool``. §14: the default
#: is "same principal only".
ObservePolicy = Callable[[str, JobRecord], bool]

#: A deployment's say over what a submit is granted: ``(principal, requested) ->
#: granted``. The grant must be a subset of the request (§9.4 rules).
LeasePolicy = Callable[[str, Lease], Lease]

#: Events read from the store at a time (a resume's replay, a subscribe's history).
PAGE = 512


def same_principal(principal: str, job: JobRecord) -> bool:
    return principal == job.principal


class Handlers:
    """The dispatch table and the handler behind each entry."""

    def __init__(
        self,
        *,
        registry: JobRegistry,
        sessions: SessionDirectory,
        router: Router,
        shared: SharedDelivery | None = None,
        runner: JobRunner,
        store: Store,
        ledger: CredentialLedger,
        agents: AgentRegistry,
        config: RuntimeConfig,
        features: tuple[str, ...],
        observe_policy: ObservePolicy,
        lease_policy: LeasePolicy | None,
        wall_clock: WallClock,
        timestamp: Callable[[], str],
        closing: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._router = router
        #: Several processes share the sessions and jobs (a cluster): subscriptions
        #: are made in the shared state, and frames reach sessions through it.
        self._shared = shared
        self._runner = runner
        self._store = store
        self._ledger = ledger
        self._agents = agents
        self._config = config
        self._features = features
        self._observe_policy = observe_policy
        self._lease_policy = lease_policy
        self._wall_clock = wall_clock
        self._timestamp = timestamp
        self._closing = closing
        self._table: dict[str, Callable[[Connection, Envelope], Awaitable[None] | None]] = {
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

    async def dispatch(self, connection: Connection, envelope: Envelope) -> None:
        if not connection.token_confirmed:
            self.welcome_answered(connection)
        handler = self._table.get(envelope.type)
        if handler is None:
            raise InvalidRequest(f"{envelope.type} is sent by runtimes, not clients")
        pending = handler(connection, envelope)
        if pending is not None:
            await pending

    def welcome_answered(self, connection: Connection) -> None:
        """The client's first frame on a connection answers its welcome: the client
        holds the token that welcome carried, and the older ones stop resuming."""
        connection.token_confirmed = True
        session = connection.session
        if session.connection is connection:
            session.confirm_token(connection.token_hash)
            self._sessions.tokens_changed(session)
            self._sessions.save(session)

    def _require(self, session: Session, feature: str) -> None:
        # §6.2: "Either peer MUST NOT use a feature outside that intersection."
        if feature not in session.features:
            raise InvalidRequest(f"feature {feature!r} not negotiated")

    async def _visible_job(self, session: Session, job_id: str) -> JobRecord:
        """The job, wherever it runs, if this session's principal may know it exists
        (§6.6, §14)."""
        job = await self._registry.lookup(job_id)
        if job is None or not self._observe_policy(session.principal, job):
            raise JobNotFound(f"job {job_id!r} not found")
        return job

    # -- session messages (§6) ----------------------------------------------------------

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
            self._sessions.save(session)

    def _on_close(self, connection: Connection, envelope: Envelope) -> None:
        """§6.7: acknowledge, flush, close the transport; jobs and session live on."""
        reason = getattr(envelope.payload, "reason", None)
        if envelope.type == MessageType.SESSION_CLOSE:
            connection.session.dialect = Dialect.SPEC
        connection.reply(
            MessageType.SESSION_CLOSED, SessionClosed(reason=reason, request_id=envelope.id)
        )
        connection.close_after_flush(f"closed by client ({reason or 'no reason'})")

    async def _on_list_jobs(self, connection: Connection, envelope: Envelope) -> None:
        """§6.6."""
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
        jobs, next_cursor = await self._registry.list_for(
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
        payload = jobs_page_payload(
            jobs, request_id=envelope.id, dialect=session.dialect, next_cursor=next_cursor
        )
        connection.reply(MessageType.SESSION_JOBS, payload)

    # -- submit (§7.1, §7.2, §7.5) -----------------------------------------------------------

    async def _on_submit(self, connection: Connection, envelope: Envelope) -> None:
        if self._closing():
            raise InternalError("runtime is shutting down")
        submit: JobSubmit = envelope.payload
        session = connection.session
        print_: str | None = None
        if submit.idempotency_key is not None:
            # §7.2: a retry replays its original accept, before anything about the
            # request is judged again (its lease expiry may have passed meanwhile).
            print_ = fingerprint(unstructure_payload(submit))
            holder = await self._registry.holder(session.principal, submit.idempotency_key, print_)
            if holder is not None:
                await self._replay_submit(connection, holder, envelope.id)
                return
        resolved = self._agents.resolve(submit.agent)
        lease = parse_lease(submit.lease_request)
        constraints: dict[str, Any] | None = None
        if submit.lease_constraints is not None and submit.lease_constraints.expires_at is not None:
            expires_text = submit.lease_constraints.expires_at
            lease = attrs.evolve(lease, expires_at=self._runner.parse_expiry(expires_text))
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
        job = self._runner.new_record(
            job_id=new_id("job"),
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
        )
        live = LiveJob()
        if submit.max_runtime_sec is not None:
            live.deadline = trio.current_time() + submit.max_runtime_sec
        mark = self._store.position()
        holder = await self._registry.admit(job, fingerprint=print_)
        if holder is not job:
            # A racing identical submit got the key first (possible on a networked
            # registry, where the lookup and the claim are two round trips).
            await self._replay_submit(connection, holder, envelope.id)
            return
        job.watchers.add(session.session_id)
        session.submitted.add(job.job_id)
        self._sessions.save(session)
        try:
            if self._shared is not None and resolved.restartable:
                await self._shared.keep_for_restart(job, resolved.ref, submit.input)
            if CREDENTIALS_FEATURE in session.features and CREDENTIALS_FEATURE in self._features:
                await self._ledger.issue(job)
            # Nothing is acknowledged that was not persisted: the job, its idempotency
            # record and its credentials' ledger entries. (Without a durable store
            # there is nothing to wait for, so the accept costs no scheduler pass.)
            if self._store.durable:
                await self._store.flush(since=mark)
        except (StoreError, InternalError):
            self._registry.withdraw(job)
            job.watchers.clear()
            session.submitted.discard(job.job_id)
            self._sessions.save(session)
            raise
        self._send_accepted(connection, job, envelope.id)
        log.info(
            "job accepted job_id=%s agent=%s session_id=%s",
            job.job_id,
            job.agent,
            session.session_id,
        )
        self._runner.start(job, live, resolved.function, submit.input)

    def _send_accepted(self, connection: Connection, job: JobRecord, request_id: str) -> None:
        session = connection.session
        payload = accepted_payload(
            job, request_id=request_id, dialect=session.dialect, observer=session.principal
        )
        connection.send(
            Envelope(
                type=MessageType.JOB_ACCEPTED,
                id=new_ulid(),
                session_id=session.session_id,
                job_id=job.job_id,
                trace_id=job.trace_id,
                payload=payload,
            )
        )

    async def _replay_submit(self, connection: Connection, job: JobRecord, request_id: str) -> None:
        """§7.2: the same ``job.accepted`` again (and the terminal of a finished job)."""
        session = connection.session
        self._send_accepted(connection, job, request_id)
        if self._shared is not None:
            if job.is_terminal or job.job_id not in session.watching:
                if not job.is_terminal:
                    session.subscribed.add(job.job_id)
                    self._sessions.save(session)
                # Live from now on, or the terminal of a finished job (again, to the
                # session that submitted it too), wherever it runs.
                await self._shared.watch(connection, job, after=None)
        elif job.terminal is not None:
            self._router.deliver_terminal(session, job)
        elif session.session_id not in job.watchers:
            job.watchers.add(session.session_id)
            session.subscribed.add(job.job_id)
            self._sessions.save(session)

    # -- cancel (§7.4) ----------------------------------------------------------------------

    async def _on_cancel(self, connection: Connection, envelope: Envelope) -> None:
        cancel: JobCancel = envelope.payload
        job_id = envelope.job_id or cancel.job_id
        if job_id is None:
            raise InvalidRequest("job.cancel requires job_id (on the envelope or in the payload)")
        session = connection.session
        job = await self._visible_job(session, job_id)
        if job.session_id != session.session_id:
            # §7.4/§7.6: "Cancellation is reserved for the session that submitted the job."
            raise PermissionDenied("only the session that submitted the job may cancel it")
        reason = cancel.reason or "cancelled by client"
        why = Terminal(
            status=JobStatus.CANCELLED, completed_at="", code=ErrorCode.CANCELLED, message=reason
        )
        if job.is_terminal or not await self._router.cancel(job.job_id, why):
            # Already over (or already ending): nothing to cancel, nothing to say.
            return
        connection.reply(
            MessageType.JOB_CANCELLED,
            JobCancelled(job_id=job.job_id, reason=reason, request_id=envelope.id),
            job_id=job.job_id,
        )
        log.info("job cancel requested job_id=%s reason=%s", job.job_id, reason)

    # -- subscribe (§7.6) -------------------------------------------------------------------

    async def _on_subscribe(self, connection: Connection, envelope: Envelope) -> None:
        session = connection.session
        self._require(session, "subscribe")
        request: JobSubscribe = envelope.payload
        job = await self._visible_job(session, request.job_id)
        log.info(
            "subscribe session_id=%s principal=%s job_id=%s owner=%s",
            session.session_id,
            session.principal,
            job.job_id,
            job.principal,
        )
        already = session.session_id in job.watchers or (
            self._shared is not None and job.job_id in session.watching
        )
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
        if self._shared is not None:
            session.subscribed.add(job.job_id)
            self._sessions.save(session)
            # The shared state stamps the history and adds the watcher in one step.
            await self._shared.watch(connection, job, after=start - 1 if replay else None)
            return
        if replay:
            await self._replay_history(connection, job, start - 1)
        # No checkpoint from the last replayed event to here: the history→live
        # boundary is exactly-once (§7.6).
        if job.terminal is not None:
            self._router.deliver_terminal(session, job)
        else:
            job.watchers.add(session.session_id)
            session.subscribed.add(job.job_id)
            self._sessions.save(session)

    async def _replay_history(self, connection: Connection, job: JobRecord, after: int) -> None:
        """Deliver the job's held events numbered above ``after`` to the session.

        Pages the store has are read and sent one at a time, each waiting for the
        connection's writer; it returns (without a checkpoint) once it has sent the
        part RAM holds.

        Raises:
            StoreError: the store lost events it should have.
        """
        session = connection.session
        deliver = self._router.deliver
        for _ in range(job.history_limit // PAGE + PAGE):
            after = max(after, job.history_start - 1)
            window = job.history_after(after)
            if window is not None:
                for entry in window[0]:
                    deliver(session, job, MessageType.JOB_EVENT, entry.frame_id, entry.payload_json)
                return
            upto = job.first_cached_index() - 1
            page = await self._store.read_history(job.job_id, after, min(PAGE, upto - after))
            if not page or page[0].number != after + 1:
                raise StoreError(f"job history after {after} is missing from the store")
            for stored in page:
                deliver(session, job, MessageType.JOB_EVENT, stored.frame_id, stored.payload_json)
            after = page[-1].number
            await connection.wait_writable()
        raise InternalError("the history replay could not catch up with the job")

    def _on_unsubscribe(self, connection: Connection, envelope: Envelope) -> None:
        request: JobUnsubscribe = envelope.payload
        session = connection.session
        self._require(session, "subscribe")
        if request.job_id in session.subscribed:
            session.subscribed.discard(request.job_id)
            self._sessions.save(session)
            if self._shared is not None:
                if request.job_id not in session.submitted:
                    self._shared.unwatch(session, request.job_id)
                return
            job = self._registry.get(request.job_id)
            if job is not None and job.job_id not in session.submitted:
                job.watchers.discard(session.session_id)
