"""The ARCP client and its reconnect supervisor.

Theory of operation
-------------------
``open_client`` opens the client's ``supervisor_nursery`` and runs one task in it,
the supervisor. The supervisor loops: connect, handshake (a fresh ``session.hello``
the first time, a hello with a ``resume`` block afterwards), then run one
*attempt*: receive, send and heartbeat tasks in their own ``attempt_nursery``.
Whatever ends an attempt — the transport failing, heartbeat loss, a heartbeat
ping that races a dropped connection, a bad frame, a gap in ``event_seq`` — is
caught at the attempt's edge and ends only that attempt (the seed PR in
shared/context is what happens otherwise). The supervisor backs off
(exponential, capped, injectable jitter) and resumes with the newest resume token
and ``last_event_seq``; the runtime replays what was missed.

Everything users hold lives on the ``Client``: job handles, subscriptions, pending
requests. The dispatcher feeds them from whichever attempt is live, dropping
duplicates (a frame whose ``event_seq`` was already processed) so a stream runs
through a reconnect with no gap and no duplicate. Requests in flight when an
attempt dies are sent again on the next one: submits carry an idempotency key
(the client adds one when the user gave none), reads are idempotent, and a cancel
is answered by the ack or by the terminal.

Only ``aclose()`` or the end of the resume window ends the session; the runtime's
jobs are never cancelled by the client going away (§6.4, §6.7).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from .._scopes import open_owner_nursery
from .._version import __version__
from ..protocol.session import (
    ALL_FEATURES,
    SPEC_SHAPES_FEATURE,
    HeartbeatAction,
    HeartbeatMonitor,
    negotiate_features,
)
from ..transport.base import Transport, TransportClosed, TransportError
from ..transport.outbox import Outbox
from ..transport.websocket import connect_websocket
from ..wire.codec import Envelope, decode, encode, unstructure_payload
from ..wire.errors import (
    ARCPError,
    HeartbeatLost,
    InvalidRequest,
    PermissionDenied,
    RemoteProtocolError,
    ResumeWindowExpired,
    make_error,
)
from ..wire.ids import new_ulid
from ..wire.messages import MessageType
from ..wire.timestamps import WallClock, format_timestamp, system_wall_clock
from .handles import Event, JobHandle, JobInfo, JobPage, Subscription, _Stream
from .ticket import ResumeTicket, TicketJob

__all__ = [
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientStatistics",
    "Connector",
    "GapDetected",
    "open_client",
]

log = logging.getLogger(__name__)

#: Opens one transport to the runtime; called once per connection attempt.
Connector = Callable[[], Awaitable[Transport]]

#: Job frames kept for jobs whose ``job.accepted`` has not arrived yet (replays
#: after a resume can precede the re-sent submit's reply).
_MAX_ORPHANS = 100_000

#: Jobs of this session whose terminal was delivered, remembered so that a later
#: ``cancel(job_id)`` returns at once (the runtime may say nothing about an ended job).
_MAX_ENDED = 1024


class ClientClosed(TransportClosed):
    """``aclose()`` was called: pending requests and open handles end with this."""


class GapDetected(ARCPError):
    """An ``event_seq`` gap from a runtime that promises none (§8.3): resume."""


@attrs.frozen
class Backoff:
    """Reconnect delays: ``initial * factor**n`` capped at ``cap`` seconds, then jitter."""

    initial: float = 0.25
    factor: float = 2.0
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.initial * self.factor ** min(failures, 64))


def full_jitter(delay: float) -> float:
    """Default jitter: a uniform draw from [delay/2, delay]."""
    return delay * random.uniform(0.5, 1.0)


@attrs.frozen
class ClientStatistics:
    state: str
    session_id: str | None
    reconnects: int
    last_event_seq: int
    pending_requests: int
    open_handles: int
    runtime: str | None


@attrs.define(eq=False)
class _Request:
    type: MessageType
    payload: dict[str, Any]
    id: str = attrs.field(factory=new_ulid)
    job_id: str | None = None
    trace_id: str | None = None
    #: For the client's own re-subscriptions: the stream that fails if it fails.
    stream: _Stream | None = None
    #: For submits: whether the handle keeps the job's events (``submit(keep_events=)``).
    keep_events: bool = True
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: Any = None
    error: ARCPError | None = None

    def resolve(self, reply: Any) -> None:
        if not self.done.is_set():
            self.reply = reply
            self.done.set()

    def fail(self, error: ARCPError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@attrs.define(eq=False)
class _Attempt:
    transport: Transport
    outbox: Outbox
    monitor: HeartbeatMonitor | None
    scope: trio.CancelScope | None = None
    #: Ended by heartbeat loss: the link is half-open, a closing handshake would stall.
    heartbeat_lost: bool = False


class Client:
    """An ARCP session that survives reconnects. Build one with ``open_client``."""

    def __init__(
        self,
        *,
        connect: Connector,
        token: str,
        client_name: str,
        client_version: str,
        features: Sequence[str],
        backoff: Backoff,
        jitter: Callable[[float], float],
        auto_ack_every: int | None,
        auto_ack_interval: float | None,
        handshake_timeout: float,
        wall_clock: WallClock,
        restart_on_session_lost: bool = False,
        url: str | None = None,
        resume: ResumeTicket | None = None,
    ) -> None:
        self._connect = connect
        self._url = url
        self._wall_clock = wall_clock
        self._token = token
        self._client_name = client_name
        self._client_version = client_version
        self._wanted_features = list(features)
        self._backoff = backoff
        self._jitter = jitter
        self._auto_ack_every = auto_ack_every
        self._auto_ack_interval = auto_ack_interval
        self._handshake_timeout = handshake_timeout
        # Session state (survives attempts).
        self.session_id: str | None = None
        self._resume_token: str | None = None
        self.features: frozenset[str] = frozenset()
        self.runtime_info: dict[str, Any] = {}
        self._heartbeat_interval: float | None = None
        self.resume_window_sec: float = 600
        self._strict = False
        self._last_event_seq = 0
        self._last_acked = 0
        self._job_seq: dict[str, int] = {}
        self._submitted: set[str] = set()
        # What users hold.
        self._handles: dict[str, JobHandle] = {}
        self._subscriptions: dict[str, list[Subscription]] = {}
        #: Jobs unsubscribed while disconnected: told to the runtime on reconnect.
        self._unsubscribe_later: set[str] = set()
        self._pending: dict[str, _Request] = {}
        self._orphans: dict[str, list[Envelope]] = {}
        self._orphan_count = 0
        # Supervision.
        self._attempt: _Attempt | None = None
        self._connected = trio.Event()
        self._state = "connecting"
        self.reconnects = 0
        self.sessions_restarted = 0
        self._restart_on_lost = restart_on_session_lost
        self._closed = False
        #: The session.close / session.bye sent by ``aclose()``, while it waits.
        self._closing: _Request | None = None
        self._lost: ARCPError | None = None
        self._supervisor_scope: trio.CancelScope | None = None
        self._closers: trio.Nursery | None = None
        #: A resumed ticket's handles that ``job()`` has not handed out yet: kept even
        #: past their terminal, which may be in the replay that follows the welcome.
        self._unclaimed: dict[str, JobHandle] = {}
        self._ended: dict[str, None] = {}  # insertion-ordered; the oldest go first
        if resume is not None:
            self._adopt(resume)

    # == public API ===========================================================================

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            state=self._state,
            session_id=self.session_id,
            reconnects=self.reconnects,
            last_event_seq=self._last_event_seq,
            pending_requests=len(self._pending),
            open_handles=len(self._handles),
            runtime=self.runtime_info.get("name"),
        )

    def _now_text(self) -> str:
        return format_timestamp(self._wall_clock())

    @property
    def last_event_seq(self) -> int:
        return self._last_event_seq

    def resume_ticket(self) -> ResumeTicket:
        """This session, exported: ``open_client(resume=ticket)`` resumes it, from
        another process too (§6.3). See ``arcp_trio.client.ticket``.

        The ticket's ``last_event_seq`` is the highest ``event_seq`` this client has
        received (and handed to a handle or subscription), so the resumed client gets
        exactly the events after it. Its ``jobs`` are the jobs this client holds
        unfinished handles for. Export when nothing more will be read here: after the
        ``async with open_client(...)`` block has ended is best (the session stays
        resumable for its window, §6.7; nothing arrives after the close). A reconnect
        rotates the token (§6.3), so a ticket exported before a reconnect is stale.

        Raises:
            ResumeWindowExpired: the session is lost (or, with
                ``restart_on_session_lost``, its replacement is not open yet); other
                errors that ended the session are raised as themselves.
        """
        if self._lost is not None:
            raise self._lost
        if self.session_id is None or self._resume_token is None:
            raise ResumeWindowExpired("the session was lost; a new one is not open yet")
        return ResumeTicket(
            url=self._url,
            session_id=self.session_id,
            resume_token=self._resume_token,
            last_event_seq=self._last_event_seq,
            jobs=tuple(
                TicketJob(job_id=job_id, agent=handle.agent, job_events=handle._stream.job_events)
                for job_id, handle in self._handles.items()
            ),
        )

    def job(self, job_id: str) -> JobHandle:
        """The handle of a job this client holds: an unfinished job it submitted, or a
        job of the ticket it resumed (``ResumeTicket.jobs``).

        A ticket's handles exist before the resume's replay arrives, so they hold every
        event after the ticket's ``last_event_seq``, and they stay here until claimed
        even if the job's terminal is in that replay.

        Raises:
            KeyError: no such handle: this session never submitted the job, or the job's
                terminal has been delivered to the handle ``submit`` returned.
        """
        handle = self._handles.get(job_id) or self._unclaimed.get(job_id)
        if handle is None:
            raise KeyError(job_id)
        self._unclaimed.pop(job_id, None)
        return handle

    async def cancel(self, job_id: str, reason: str = "client.cancel") -> None:
        """Ask the runtime to cancel ``job_id`` (§7.4); wait for ``job.cancelled`` or the
        job's terminal.

        With a handle of the job here, this is ``client.job(job_id).cancel(reason)``;
        it returns at once if this client has seen the job end (the last
        1024 such jobs are remembered). Otherwise the request goes out anyway: only
        the submitting session may cancel (§7.4), and another session gets
        ``PermissionDenied``. Bound the wait with ``trio.move_on_after``: a runtime may
        answer nothing when the job has already ended, and a runtime that lets other
        sessions of the principal cancel (the reference SDK) sends those sessions
        neither the ack nor the terminal.

        Raises:
            PermissionDenied: this session did not submit the job.
            JobNotFound: the runtime knows no such job (for this principal).
            ResumeWindowExpired, ClientClosed: the session ended first.

        Cancellation: the cancel may still reach the runtime.
        """
        handle = self._handles.get(job_id) or self._unclaimed.get(job_id)
        if handle is not None:
            await handle.cancel(reason)
        elif job_id in self._ended:
            await trio.lowlevel.checkpoint()  # this session saw it end
        else:
            await self._cancel(job_id, reason)

    async def submit(
        self,
        agent: str,
        input: Any = None,
        *,
        lease_request: dict[str, list[str]] | None = None,
        lease_constraints: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_runtime_sec: int | None = None,
        trace_id: str | None = None,
        keep_events: bool = True,
    ) -> JobHandle:
        """Submit a job (§7.1) and return its handle once the runtime accepts it.

        Without an ``idempotency_key`` the client adds one, so a submit re-sent after
        a reconnect can never start the job twice (§7.2).

        ``keep_events=False``: the handle keeps none of the job's events (its
        ``events()`` raises ``RuntimeError``), so waiting for ``result()`` on a chatty
        job holds no memory per event. Streamed results are still assembled.

        Raises:
            AgentNotAvailable, AgentVersionNotAvailable, DuplicateKey, InvalidRequest:
                the runtime refused the submit.
            ResumeWindowExpired, ClientClosed: the session ended first.

        Cancellation: the submit may still reach the runtime; resubmitting with the
        same ``idempotency_key`` returns the same job.
        """
        payload: dict[str, Any] = {
            "agent": agent,
            "lease_request": lease_request or {},
            "idempotency_key": idempotency_key or f"arcp-trio-{new_ulid()}",
        }
        if input is not None:
            payload["input"] = input
        if lease_constraints is not None:
            payload["lease_constraints"] = lease_constraints
        if max_runtime_sec is not None:
            payload["max_runtime_sec"] = max_runtime_sec
        handle: JobHandle = await self._call(
            _Request(MessageType.JOB_SUBMIT, payload, trace_id=trace_id, keep_events=keep_events)
        )
        return handle

    async def list_jobs(
        self,
        *,
        status: Sequence[str] | None = None,
        agent: str | None = None,
        created_after: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of this principal's jobs (§6.6)."""
        self._require("list_jobs")
        filter_: dict[str, Any] = {}
        if status is not None:
            filter_["status"] = list(status)
        if agent is not None:
            filter_["agent"] = agent
        if created_after is not None:
            filter_["created_after"] = created_after
        payload: dict[str, Any] = {}
        if filter_:
            payload["filter"] = filter_
        if limit is not None:
            payload["limit"] = limit
        if cursor is not None:
            payload["cursor"] = cursor
        reply = await self._call(_Request(MessageType.SESSION_LIST_JOBS, payload))
        jobs = [
            JobInfo(**{k: v for k, v in entry.items() if k in _JOB_INFO_FIELDS})
            for entry in reply["jobs"]
        ]
        return JobPage(jobs=jobs, next_cursor=reply.get("next_cursor"))

    @asynccontextmanager
    async def subscribe(
        self, job_id: str, *, history: bool = False, from_event_seq: int | None = None
    ) -> AsyncIterator[Subscription]:
        """Observe a job submitted elsewhere (§7.6); unsubscribes on exit."""
        self._require("subscribe")
        self._unsubscribe_later.discard(job_id)
        subscription = Subscription(job_id)
        # Registered before the request goes out: a runtime may send history first.
        self._subscriptions.setdefault(job_id, []).append(subscription)
        self._drain_orphans(job_id)
        payload: dict[str, Any] = {"job_id": job_id, "history": history}
        if from_event_seq is not None:
            payload["from_event_seq"] = from_event_seq
        try:
            subscription.subscribed = await self._call(
                _Request(MessageType.JOB_SUBSCRIBE, payload, job_id=job_id)
            )
            yield subscription
        finally:
            subscribers = self._subscriptions.get(job_id, [])
            if subscription in subscribers:
                subscribers.remove(subscription)
            if not subscribers:
                self._subscriptions.pop(job_id, None)
            if not subscription.done and not self._closed:
                self._unsubscribe(job_id)

    async def ack(self, seq: int) -> None:
        """Tell the runtime every event up to ``seq`` is processed (§6.5)."""
        self._require("ack")
        if seq > self._last_event_seq:
            raise InvalidRequest(f"cannot ack {seq}: last event_seq is {self._last_event_seq}")
        self._send_ack(seq)
        await trio.lowlevel.checkpoint()

    async def wait_connected(self) -> None:
        """Wait until an attempt is live (returns at once if one is)."""
        await self._connected.wait()

    async def aclose(self) -> None:
        """Close the session politely; never cancels jobs. Idempotent.

        Sends ``session.close`` (``session.bye`` to a runtime that only knows bye),
        waits briefly for ``session.closed``, then ends the supervisor. Pending
        requests and unfinished handles end with ``ClientClosed``.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        attempt = self._attempt
        if attempt is not None and self.session_id is not None:
            close_type = MessageType.SESSION_CLOSE if self._strict else MessageType.SESSION_BYE
            request = _Request(close_type, {"reason": "client.close"})
            # The reference runtime answers bye by closing the socket: the supervisor
            # then resolves this instead of resuming (and re-sending the bye).
            self._closing = request
            self._pending[request.id] = request
            self._send_request(request)
            with trio.move_on_after(2):
                await request.done.wait()
            self._pending.pop(request.id, None)
        self._closed = True
        self._state = "closed"
        self._fail_everything(ClientClosed("the client was closed"))
        if self._supervisor_scope is not None:
            self._supervisor_scope.cancel()

    # == requests ==================================================================================

    def _require(self, feature: str) -> None:
        # §6.2: "Either peer MUST NOT use a feature outside that intersection."
        if feature not in self.features:
            raise InvalidRequest(f"feature {feature!r} was not negotiated with this runtime")

    async def _call(self, request: _Request) -> Any:
        """Send a request (now, or on the next attempt) and wait for its reply."""
        if self._lost is not None:
            raise self._lost
        if self._closed:
            raise ClientClosed("the client was closed")
        self._pending[request.id] = request
        self._send_request(request)
        try:
            await request.done.wait()
        finally:
            self._pending.pop(request.id, None)
        if request.error is not None:
            raise request.error
        return request.reply

    def _frame(self, request: _Request) -> str:
        return encode(
            Envelope(
                type=request.type,
                id=request.id,
                session_id=self.session_id,
                job_id=request.job_id,
                trace_id=request.trace_id,
                payload=request.payload,
            )
        )

    def _send_request(self, request: _Request) -> None:
        """Queue on the live attempt; otherwise the next attempt sends it."""
        if self._attempt is not None:
            self._attempt.outbox.enqueue(self._frame(request))

    def _send_nowait(
        self, message_type: MessageType, payload: dict[str, Any], *, job_id: str | None = None
    ) -> None:
        if self._attempt is not None:
            self._attempt.outbox.enqueue(
                encode(
                    Envelope(
                        type=message_type,
                        id=new_ulid(),
                        session_id=self.session_id,
                        job_id=job_id,
                        payload=payload,
                    )
                )
            )

    def _unsubscribe(self, job_id: str) -> None:
        """§7.6 unsubscribe; while disconnected it waits for the next connection (the
        session, resumed, still has the subscription)."""
        if self._attempt is not None:
            self._send_nowait(MessageType.JOB_UNSUBSCRIBE, {"job_id": job_id})
        else:
            self._unsubscribe_later.add(job_id)

    def _send_ack(self, seq: int) -> None:
        if seq > self._last_acked and "ack" in self.features:
            self._last_acked = seq
            self._send_nowait(MessageType.SESSION_ACK, {"last_processed_seq": seq})

    async def _cancel(self, job_id: str, reason: str) -> None:
        await self._call(_Request(MessageType.JOB_CANCEL, {"reason": reason}, job_id=job_id))

    # == the supervisor ============================================================================

    async def _supervise(
        self,
        transport: Transport,
        welcome: Envelope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run attempts until the client closes or the session is lost.

        ``task_status.started()`` fires once the first attempt is live.
        """
        with trio.CancelScope() as scope:
            self._supervisor_scope = scope
            async with trio.open_nursery() as self._closers:
                while True:
                    await self._run_attempt(transport, welcome, task_status)
                    task_status = trio.TASK_STATUS_IGNORED
                    if self._closing is not None:
                        self._closing.resolve(None)  # the connection ended: closed
                        return
                    if self._closed:
                        return
                    reconnected = await self._reconnect()
                    if reconnected is None:
                        return
                    transport, welcome = reconnected

    async def _reconnect(self) -> tuple[Transport, Envelope] | None:
        """Back off and resume until it works or the session is gone."""
        self._state = "reconnecting"
        dropped_at = trio.current_time()
        failures = 0
        not_yet_resumable = 0
        while not self._closed:
            if trio.current_time() - dropped_at >= self.resume_window_sec:
                return await self._restart_or_lose(
                    ResumeWindowExpired("could not reconnect within the resume window")
                )
            await trio.sleep(self._jitter(self._backoff.delay(failures)))
            failures += 1
            try:
                transport = await self._connect()
            except (TransportError, OSError) as exc:
                log.info("reconnect failed session_id=%s error=%s", self.session_id, exc)
                continue
            try:
                welcome = await self._handshake(transport)
            except ResumeWindowExpired as exc:
                await _close_quietly(transport)
                return await self._restart_or_lose(exc)
            except PermissionDenied as exc:
                await _close_quietly(transport)
                # The reference runtime answers PERMISSION_DENIED until it notices the
                # drop, and also once the window is over (WIRE.md §18.2): retry briefly.
                not_yet_resumable += 1
                if self._strict or not_yet_resumable > 3:
                    self._session_lost(exc)
                    return None
                continue
            except ARCPError as exc:
                await _close_quietly(transport)
                if isinstance(exc, TransportError | RemoteProtocolError) or exc.retryable:
                    log.info("resume failed session_id=%s error=%s", self.session_id, exc)
                    continue
                self._session_lost(exc)
                return None
            self.reconnects += 1
            return transport, welcome
        return None

    async def _handshake(self, transport: Transport) -> Envelope:
        """Send hello (with ``resume`` after the first session) and read the welcome."""
        payload: dict[str, Any] = {
            "client": {"name": self._client_name, "version": self._client_version},
            "auth": {"scheme": "bearer", "token": self._token},
            "capabilities": {"encodings": ["json"], "features": self._wanted_features},
        }
        if self.session_id is not None and self._resume_token is not None:
            payload["resume"] = {
                "session_id": self.session_id,
                "resume_token": self._resume_token,
                "last_event_seq": self._last_event_seq,
            }
        try:
            with trio.fail_after(self._handshake_timeout):
                await transport.send_message(
                    encode(Envelope(type=MessageType.SESSION_HELLO, id=new_ulid(), payload=payload))
                )
                envelope = decode(await transport.receive_message())
        except trio.TooSlowError:
            await _close_quietly(transport)
            raise TransportClosed("the runtime did not answer session.hello in time") from None
        except BaseException:
            await _close_quietly(transport)
            raise
        if envelope.type == MessageType.SESSION_ERROR:
            error = envelope.payload
            raise make_error(
                error.code, error.message, retryable=error.retryable, details=error.details
            )
        if envelope.type != MessageType.SESSION_WELCOME:
            await _close_quietly(transport)
            raise RemoteProtocolError(f"expected session.welcome, got {envelope.type}")
        welcome = envelope.payload
        resumed = self.session_id is not None
        self.session_id = envelope.session_id or welcome.session_id
        self._resume_token = welcome.resume_token
        self.features = negotiate_features(self._wanted_features, welcome.capabilities.features)
        self._strict = SPEC_SHAPES_FEATURE in self.features
        self.runtime_info = {"name": welcome.runtime.name, "version": welcome.runtime.version}
        self.resume_window_sec = welcome.resume_window_sec
        self._heartbeat_interval = (
            welcome.heartbeat_interval_sec if "heartbeat" in self.features else None
        )
        self._state = "connected"
        log.info(
            "%s session_id=%s runtime=%s",
            "resumed" if resumed else "connected",
            self.session_id,
            self.runtime_info.get("name"),
        )
        return envelope

    async def _run_attempt(
        self, transport: Transport, welcome: Envelope, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run one connection until it ends, for any reason. Never raises."""
        interval = self._heartbeat_interval
        attempt = _Attempt(
            transport=transport,
            outbox=Outbox(),
            monitor=(
                HeartbeatMonitor(interval=interval, last_received=trio.current_time())
                if interval
                else None
            ),
        )
        self._attempt = attempt
        self._state = "connected"
        self._connected.set()
        # Whatever was in flight when the last attempt died goes out again, in order.
        for request in list(self._pending.values()):
            attempt.outbox.enqueue(self._frame(request))
        for job_id in sorted(self._unsubscribe_later):
            self._send_nowait(MessageType.JOB_UNSUBSCRIBE, {"job_id": job_id})
        self._unsubscribe_later.clear()
        try:
            async with trio.open_nursery() as attempt_nursery:
                attempt.scope = attempt_nursery.cancel_scope
                attempt_nursery.start_soon(self._guard, self._send_loop, attempt, "send")
                attempt_nursery.start_soon(self._guard, self._receive_loop, attempt, "receive")
                if attempt.monitor is not None:
                    attempt_nursery.start_soon(
                        self._guard, self._heartbeat_loop, attempt, "heartbeat"
                    )
                if self._auto_ack_interval is not None and "ack" in self.features:
                    attempt_nursery.start_soon(self._guard, self._ack_loop, attempt, "ack")
                task_status.started()
        finally:
            self._attempt = None
            self._connected = trio.Event()
            attempt.outbox.close()
            if attempt.heartbeat_lost and self._closers is not None:
                # Nothing arrives on a half-open link: its closing handshake could only
                # time out, so it must not delay the resume.
                self._closers.start_soon(_close_quietly, transport)
            else:
                await _close_quietly(transport)

    async def _guard(
        self, task: Callable[[_Attempt], Awaitable[None]], attempt: _Attempt, name: str
    ) -> None:
        """The attempt's edge: any task ending, for any reason, ends this attempt only.

        The tasks run until the connection fails, so a task that returns or raises
        means the connection is over; nothing escapes to the supervisor.
        """
        try:
            await task(attempt)
        except TransportError as exc:
            log.info("connection lost session_id=%s task=%s error=%s", self.session_id, name, exc)
        except Exception:
            log.warning(
                "connection task failed session_id=%s task=%s", self.session_id, name, exc_info=True
            )
        finally:
            if attempt.scope is not None:
                attempt.scope.cancel()

    async def _send_loop(self, attempt: _Attempt) -> None:
        await attempt.outbox.run(attempt.transport)

    async def _receive_loop(self, attempt: _Attempt) -> None:
        while True:
            text = await attempt.transport.receive_message()
            if attempt.monitor is not None:
                attempt.monitor.received(trio.current_time())
            self._dispatch(attempt, decode(text))

    async def _heartbeat_loop(self, attempt: _Attempt) -> None:
        monitor = attempt.monitor
        assert monitor is not None
        while True:
            await trio.sleep_until(monitor.next_wakeup())
            action = monitor.poll(trio.current_time())
            if action is HeartbeatAction.SEND_PING:
                self._send_nowait(
                    MessageType.SESSION_PING, {"nonce": new_ulid(), "sent_at": self._now_text()}
                )
            elif action is HeartbeatAction.DEAD:
                # §6.4: two silent intervals; end this attempt and resume.
                attempt.heartbeat_lost = True
                raise HeartbeatLost("no frame from the runtime for two heartbeat intervals")

    async def _ack_loop(self, attempt: _Attempt) -> None:
        interval = self._auto_ack_interval
        assert interval is not None
        while True:
            await trio.sleep(interval)
            self._send_ack(self._last_event_seq)

    # == dispatch ==================================================================================

    def _dispatch(self, attempt: _Attempt, envelope: Envelope) -> None:
        kind = envelope.type
        if kind in _JOB_FRAMES:
            self._on_job_frame(envelope)
        elif kind == MessageType.SESSION_PING:
            self._send_nowait(
                MessageType.SESSION_PONG,
                {"ping_nonce": envelope.payload.nonce, "received_at": self._now_text()},
            )
        elif kind == MessageType.JOB_ACCEPTED:
            self._on_accepted(envelope)
        elif kind in _REPLIES:
            request = self._pending.get(getattr(envelope.payload, "request_id", None) or "")
            if request is not None:
                self._settle(request, reply=unstructure_payload(envelope.payload))
        elif kind == MessageType.SESSION_ERROR:
            self._on_error(envelope)
        elif kind == MessageType.SESSION_BYE:
            self._session_lost(ResumeWindowExpired("the runtime ended the session"))
        else:
            log.debug("ignored frame type=%s", kind)

    def _on_job_frame(self, envelope: Envelope) -> None:
        job_id = envelope.job_id
        seq = envelope.event_seq
        if job_id is None or seq is None:
            raise RemoteProtocolError(f"{envelope.type} without job_id or event_seq")
        if self._strict:
            # §8.3: one gap-free sequence per session, across reconnects.
            if seq <= self._last_event_seq:
                return  # a duplicate (replayed twice); already delivered
            if seq != self._last_event_seq + 1:
                raise GapDetected(
                    f"event_seq jumped from {self._last_event_seq} to {seq}; resuming"
                )
            self._last_event_seq = seq
        else:
            # The reference runtime numbers subscriptions separately, so duplicates
            # are keyed on (job_id, event_seq) (WIRE.md §18.4).
            if seq <= self._job_seq.get(job_id, 0):
                return
            self._job_seq[job_id] = seq
            if job_id in self._submitted:
                self._last_event_seq = max(self._last_event_seq, seq)
        self._route(envelope)
        if (
            self._auto_ack_every is not None
            and self._last_event_seq - self._last_acked >= self._auto_ack_every
        ):
            self._send_ack(self._last_event_seq)

    def _streams(self, job_id: str) -> list[_Stream]:
        streams = [sub._stream for sub in self._subscriptions.get(job_id, ())]
        handle = self._handles.get(job_id)
        if handle is not None:
            streams.append(handle._stream)
        return streams

    def _route(self, envelope: Envelope) -> None:
        job_id = envelope.job_id
        assert job_id is not None
        streams = self._streams(job_id)
        if not streams:
            if envelope.type != MessageType.JOB_EVENT:
                self._settle_cancels(job_id)  # the job ended: a cancel by id is answered
            if self._orphan_count >= _MAX_ORPHANS:
                log.warning("dropping a frame for unknown job job_id=%s", job_id)
                return
            self._orphans.setdefault(job_id, []).append(envelope)
            self._orphan_count += 1
            return
        if envelope.type == MessageType.JOB_EVENT:
            event = Event(
                job_id=job_id,
                event_seq=envelope.event_seq or 0,
                kind=envelope.payload.kind,
                body=envelope.payload.body,
                ts=envelope.payload.ts,
                id=envelope.id,
            )
            for stream in streams:
                stream.push(event)
            return
        payload = unstructure_payload(envelope.payload)
        for stream in streams:
            stream.finish_with_payload(envelope.type, payload)
        if self._handles.pop(job_id, None) is not None:
            self._ended[job_id] = None
            if len(self._ended) > _MAX_ENDED:
                del self._ended[next(iter(self._ended))]
        self._settle_cancels(job_id)

    def _settle_cancels(self, job_id: str) -> None:
        for request in list(self._pending.values()):
            if request.type == MessageType.JOB_CANCEL and request.job_id == job_id:
                self._settle(request)

    def _drain_orphans(self, job_id: str) -> None:
        for envelope in self._orphans.pop(job_id, []):
            self._orphan_count -= 1
            self._route(envelope)

    def _adopt(self, ticket: ResumeTicket) -> None:
        """Take over an exported session: the first handshake resumes it (its ``resume``
        block is the one every reconnect sends), and the handles of its jobs exist
        before the receive task runs, so the replay after the welcome lands in them."""
        self.session_id = ticket.session_id
        self._resume_token = ticket.resume_token
        self._last_event_seq = ticket.last_event_seq
        for job in ticket.jobs:
            handle = JobHandle(job.job_id, {"job_id": job.job_id, "agent": job.agent}, self._cancel)
            handle._stream.job_events = job.job_events
            self._handles[job.job_id] = self._unclaimed[job.job_id] = handle
            self._submitted.add(job.job_id)

    def _on_accepted(self, envelope: Envelope) -> None:
        payload = unstructure_payload(envelope.payload)
        job_id = payload["job_id"]
        self._submitted.add(job_id)
        request = self._pending.get(payload.get("request_id") or "")
        if request is None:
            # The reference runtime correlates by order when request_id is missing.
            request = next(
                (r for r in self._pending.values() if r.type == MessageType.JOB_SUBMIT), None
            )
        handle = self._handles.get(job_id)
        if handle is None:
            keep_events = request.keep_events if request is not None else True
            handle = JobHandle(job_id, payload, self._cancel, keep_events=keep_events)
            self._handles[job_id] = handle
            self._drain_orphans(job_id)
        if request is not None:
            self._settle(request, reply=handle)

    def _on_error(self, envelope: Envelope) -> None:
        error = envelope.payload
        exc = make_error(
            error.code, error.message, retryable=error.retryable, details=error.details
        )
        request = self._pending.get(error.request_id or "")
        if request is None and error.request_id is None:
            # Uncorrelated (reference runtime): the oldest request still waiting.
            request = next(iter(self._pending.values()), None)
        if request is None:
            log.warning("uncorrelated session.error code=%s message=%s", error.code, error.message)
            return
        self._settle(request, error=exc)

    def _settle(
        self, request: _Request, *, reply: Any = None, error: ARCPError | None = None
    ) -> None:
        """Answer a request: it leaves the pending set (never re-sent again)."""
        self._pending.pop(request.id, None)
        if error is None:
            request.resolve(reply)
        else:
            request.fail(error)
            if request.stream is not None:
                request.stream.fail_session(error)

    # == endings ===================================================================================

    async def _restart_or_lose(
        self, cause: ResumeWindowExpired
    ) -> tuple[Transport, Envelope] | None:
        """The session is gone. Optionally open a fresh one and re-subscribe.

        With ``restart_on_session_lost`` (and a runtime with gap-free, job-numbered
        history: arcp_trio), every unfinished handle and subscription continues
        through a subscription in a new session, from the job's next event; handles
        lose cancel authority (§7.7: subscribe carries none). Otherwise every
        handle ends with ``cause``.
        """
        if not (self._restart_on_lost and self._strict):
            self._session_lost(cause)
            return None
        log.warning("session lost session_id=%s; opening a new one (%s)", self.session_id, cause)
        self._forget_session()
        failures = 0
        while not self._closed:
            await trio.sleep(self._jitter(self._backoff.delay(failures)))
            failures += 1
            try:
                transport = await self._connect()
                welcome = await self._handshake(transport)
            except (TransportError, OSError):
                continue
            except ARCPError as exc:
                if exc.retryable:
                    continue
                self._session_lost(exc)
                return None
            self._restarted()
            return transport, welcome
        return None

    def _forget_session(self) -> None:
        """Drop the lost session's state; the next handshake opens a new session."""
        self.session_id = None
        self._resume_token = None
        self._last_event_seq = self._last_acked = 0
        self._job_seq.clear()
        self._unsubscribe_later.clear()  # a new session subscribes to nothing
        self._orphans.clear()
        self._orphan_count = 0

    def _restarted(self) -> None:
        """A new session replaces the lost one: every unfinished stream continues."""
        self.sessions_restarted += 1
        self._resubscribe_all()

    async def _first_connection(self) -> tuple[Transport, Envelope]:
        """The first connection and handshake; its errors reach ``open_client``'s caller.

        With a ticket whose session is gone (``RESUME_WINDOW_EXPIRED``, §6.3) and
        ``restart_on_session_lost``, a new session takes its place and the ticket's
        handles continue through subscriptions, as after a loss later on.
        """
        transport = await self._connect()
        try:
            return transport, await self._handshake(transport)
        except ResumeWindowExpired as exc:
            await _close_quietly(transport)
            if self.session_id is None or not self._restart_on_lost:
                raise
            cause = exc
        except BaseException:
            await _close_quietly(transport)
            raise
        log.warning("cannot resume session_id=%s (%s); opening a new one", self.session_id, cause)
        self._forget_session()
        transport = await self._connect()
        try:
            welcome = await self._handshake(transport)
        except BaseException:
            await _close_quietly(transport)
            raise
        if not self._strict:
            # Only job-numbered history lets a new session continue a job (see
            # _restart_or_lose): this runtime cannot, so the ticket's error stands.
            await _close_quietly(transport)
            raise cause
        self._restarted()
        return transport, welcome

    def _resubscribe_all(self) -> None:
        """Queue a history subscription for every unfinished stream (sent on attach)."""
        streams = [handle._stream for handle in self._handles.values()]
        for subscriptions in self._subscriptions.values():
            streams += [subscription._stream for subscription in subscriptions]
        resumed: set[str] = set()
        for stream in streams:
            if stream.done or stream.job_id in resumed:
                continue
            resumed.add(stream.job_id)
            request = _Request(
                MessageType.JOB_SUBSCRIBE,
                {"job_id": stream.job_id, "history": True, "from_event_seq": stream.job_events},
                job_id=stream.job_id,
                stream=stream,
            )
            self._pending[request.id] = request

    def _session_lost(self, error: ARCPError) -> None:
        """The session cannot be resumed: every handle and request gets ``error``."""
        log.warning("session lost session_id=%s error=%s", self.session_id, error)
        self._lost = error
        self._state = "lost"
        self._fail_everything(error)

    def _fail_everything(self, error: ARCPError) -> None:
        for request in list(self._pending.values()):
            self._settle(request, error=error)
        for handle in list(self._handles.values()):
            handle._stream.fail_session(error)
        for subscriptions in list(self._subscriptions.values()):
            for subscription in subscriptions:
                subscription._stream.fail_session(error)
        self._connected.set()


_JOB_FRAMES = frozenset({MessageType.JOB_EVENT, MessageType.JOB_RESULT, MessageType.JOB_ERROR})
_REPLIES = frozenset(
    {
        MessageType.SESSION_JOBS,
        MessageType.JOB_SUBSCRIBED,
        MessageType.SESSION_CLOSED,
        MessageType.JOB_CANCELLED,
    }
)
_JOB_INFO_FIELDS = frozenset(attrs.fields_dict(JobInfo))


async def _close_quietly(transport: Transport) -> None:
    with trio.move_on_after(2, shield=True):
        await transport.aclose()


def websocket_connector(url: str) -> Connector:
    """A ``Connector`` for ``ws://`` / ``wss://`` URLs."""

    async def connect() -> Transport:
        return await connect_websocket(url)

    return connect


@asynccontextmanager
async def open_client(
    url: str | None = None,
    *,
    token: str,
    client_name: str = "arcp-trio",
    client_version: str = __version__,
    features: Sequence[str] | None = None,
    connect: Connector | None = None,
    backoff: Backoff | None = None,
    jitter: Callable[[float], float] = full_jitter,
    auto_ack_every: int | None = 100,
    auto_ack_interval: float | None = 1.0,
    handshake_timeout: float = 10.0,
    wall_clock: WallClock = system_wall_clock,
    restart_on_session_lost: bool = False,
    resume: ResumeTicket | None = None,
) -> AsyncIterator[Client]:
    """Connect to a runtime and keep the session alive until the block ends.

    Args:
        url: ``ws://host:port/arcp`` (or pass ``connect`` for other transports).
        token: the bearer token (§6.1).
        features: features to ask for (default: all this library implements,
            including spec frame shapes).
        connect: opens one transport per attempt (tests pass an in-memory one).
        backoff, jitter: reconnect delays (jitter is injectable for tests).
        auto_ack_every, auto_ack_interval: acknowledge processed events every N
            events and every T seconds (§6.5); None disables either.
        restart_on_session_lost: when the resume window is over, open a fresh
            session and re-subscribe to every unfinished job instead of failing the
            handles (they continue from the job's next event, without cancel
            authority). Needs a runtime with job-numbered history (arcp_trio).
            Applies to a ``resume`` ticket whose session is gone, too.
        resume: a ``ResumeTicket`` (``Client.resume_ticket()``, maybe from another
            process): the first connection resumes that session instead of opening a
            new one (§6.3), and ``client.job(job_id)`` hands out its jobs' handles,
            fed with every event after the ticket's ``last_event_seq``. ``url``
            defaults to the ticket's. ``token`` must name the session's principal.

    Raises:
        Unauthenticated, TransportError, ...: the *first* connection failed.
        ResumeWindowExpired: the ``resume`` ticket's session is gone (its window is
            over, or the runtime no longer holds the events after its
            ``last_event_seq``), unless ``restart_on_session_lost`` took over.
        PermissionDenied: the ticket's token is stale (a later resume rotated it),
            or ``token`` is another principal's; the reference runtime also answers a
            gone session this way (WIRE.md §5).

    On exit the session is closed politely (jobs keep running) and every handle
    that has not finished ends with ``ClientClosed``.
    """
    if url is None and resume is not None:
        url = resume.url
    if connect is None:
        if url is None:
            raise ValueError("pass a url or a connect function")
        connect = websocket_connector(url)
    client = Client(
        connect=connect,
        token=token,
        client_name=client_name,
        client_version=client_version,
        features=list(ALL_FEATURES if features is None else features),
        backoff=backoff or Backoff(),
        jitter=jitter,
        auto_ack_every=auto_ack_every,
        auto_ack_interval=auto_ack_interval,
        handshake_timeout=handshake_timeout,
        wall_clock=wall_clock,
        restart_on_session_lost=restart_on_session_lost,
        url=url,
        resume=resume,
    )
    # The first connection is made here, outside any nursery, so its errors reach
    # the caller as themselves.
    transport, welcome = await client._first_connection()
    async with open_owner_nursery() as (supervisor_nursery, body):
        await supervisor_nursery.start(client._supervise, transport, welcome)
        try:
            yield client
        except BaseException as exc:
            body.error = exc
            raise
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
            supervisor_nursery.cancel_scope.cancel()
