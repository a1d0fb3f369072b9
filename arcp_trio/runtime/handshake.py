"""The handshake and a session's attachments (§6.1-§6.3, §6.7).

``Handshake.open`` reads a connection's first frame (bounded by
``handshake_timeout_sec``) and answers it: a new session (``session.hello``), a
resumed one (``session.hello`` with ``resume`` or ``session.resume``), or a
``session.error`` before the transport closes. ``attach`` welcomes, replays and
goes live with no checkpoint in between, so the client sees no gap and no
duplicate; a gap that is partly only in the store is read a page at a time by
``catch_up`` before the connection's first read.

``detach`` runs when a connection ends: the session lives on for its resume
window, then ``forget`` drops it (its jobs keep running: DESIGN.md).
"""

from __future__ import annotations

import logging
import math
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ..protocol.eventlog import EventBuffer
from ..protocol.session import Dialect, ResumeWindow, negotiate_features
from ..store.base import StoreError
from ..transport.base import MessageRefused, MessageTooLarge, TransportError
from ..wire.codec import Envelope, decode, encode, recover_id, unstructure_payload
from ..wire.errors import (
    ARCPError,
    InternalError,
    InvalidRequest,
    PermissionDenied,
    RemoteProtocolError,
    ResumeWindowExpired,
    Unauthenticated,
)
from ..wire.ids import new_id, new_ulid
from ..wire.messages import (
    Capabilities,
    MessageType,
    ResumeRequest,
    RuntimeInfo,
    SessionError,
    SessionHello,
    SessionResume,
    SessionWelcome,
)
from .connection import Connection, refusal
from .handlers import PAGE
from .session import Session, hash_token

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..store.base import EventLog
    from ..transport.base import Transport
    from .agents import AgentRegistry
    from .auth import Authenticator
    from .config import RuntimeConfig
    from .handlers import Handlers
    from .routing import SharedDelivery
    from .state import JobRegistry, SessionDirectory
    from .timers import Timers

__all__ = ["Handshake"]

log = logging.getLogger(__name__)


class Handshake:
    """Opens sessions and resumes them; attaches, detaches and expires them."""

    def __init__(
        self,
        *,
        sessions: SessionDirectory,
        registry: JobRegistry,
        event_log: EventLog,
        durable: bool,
        handlers: Handlers,
        auth: Authenticator,
        agents: AgentRegistry,
        config: RuntimeConfig,
        features: tuple[str, ...],
        timers: Timers,
        timestamp: Callable[[], str],
        closing: Callable[[], bool],
        shared: SharedDelivery | None = None,
    ) -> None:
        self._sessions = sessions
        #: Sessions shared by several processes (a cluster): they are claimed and fed
        #: through it, and wait for a resume there (routing.SharedDelivery).
        self._shared = shared
        self._registry = registry
        self._log = event_log
        self._handlers = handlers
        self._auth = auth
        self._agents = agents
        self._config = config
        self._features = features
        self._timers = timers
        self._timestamp = timestamp
        self._closing = closing
        #: With a durable store: the newest events RAM keeps per attached session.
        self._cache: int | None = config.event_cache_events if durable else None
        #: The ``sent_at`` of the pings of the last timer pass, and that pass's ``now``.
        self._ping_time: tuple[float, str] = (math.nan, "")
        #: Counters for ``Runtime.statistics``: refusals by code, timeouts, welcomes.
        self.failures: dict[str, int] = {}
        self.timed_out = self.opened = self.resumed = 0

    async def open(self, transport: Transport) -> Connection | None:
        """The connection's session, or None once the peer has been answered (or
        has gone): the caller then closes the transport."""
        if self._closing():
            await self.refuse_shutting_down(transport)
            return None
        text: str | None = None
        with trio.move_on_after(self._config.handshake_timeout_sec):
            try:
                text = await transport.receive_message()
            except (MessageTooLarge, MessageRefused) as exc:
                await self._refuse(transport, refusal(exc), recover_id(exc.prefix))
                return None
            except TransportError:
                return None
        if text is None:
            self.timed_out += 1
            log.info("handshake timed out peer=%s", transport.description)
            return None
        try:
            envelope = decode(text)
        except RemoteProtocolError as exc:
            await self._refuse(transport, exc, exc.request_id)
            return None
        try:
            if envelope.type == MessageType.SESSION_HELLO:
                return await self._hello(transport, envelope)
            if envelope.type == MessageType.SESSION_RESUME:
                return await self._resume_frame(transport, envelope)
            raise InvalidRequest(f"the first frame must be session.hello, got {envelope.type!r}")
        except ARCPError as exc:
            await self._refuse(transport, exc, envelope.id)
            return None

    async def refuse_shutting_down(self, transport: Transport) -> None:
        """A connection arriving during or after shutdown: told why (retryable: a
        successor may serve it), without waiting for its hello."""
        await self._refuse(transport, InternalError("runtime is shutting down"), None)

    async def _refuse(self, transport: Transport, error: ARCPError, request_id: str | None) -> None:
        """Answer a failed handshake, then let the caller close the transport."""
        code = str(error.code)
        self.failures[code] = self.failures.get(code, 0) + 1
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

    async def _authenticate(self, scheme: str, token: str) -> str:
        """§6.1; never lets anything but ``UNAUTHENTICATED`` out of an authenticator
        (fail closed: a bug in one refuses the hello, it does not end the runtime)."""
        try:
            return await self._auth.authenticate(scheme, token)
        except Unauthenticated:
            raise
        except Exception:
            log.warning("authenticator failed; the hello is refused", exc_info=True)
            raise Unauthenticated("the credentials could not be checked") from None

    async def _hello(self, transport: Transport, envelope: Envelope) -> Connection:
        hello: SessionHello = envelope.payload
        principal = await self._authenticate(hello.auth.scheme, hello.auth.token)
        features = negotiate_features(self._features, hello.capabilities.features)
        resume = hello.resume_request()
        if resume is not None:
            return await self._resume(
                transport, principal, features, Dialect.for_features(features), resume
            )
        config = self._config
        session = Session(
            session_id=new_id("sess"),
            principal=principal,
            features=features,
            dialect=Dialect.for_features(features),
            buffer=EventBuffer(max_events=config.max_buffered_events, cache_limit=self._cache),
            window=ResumeWindow(window_sec=config.resume_window_sec),
            client_name=hello.client.name,
        )
        await self._sessions.add(session)
        self.opened += 1
        log.info(
            "session opened session_id=%s principal=%s client=%s",
            session.session_id,
            principal,
            hello.client.name,
        )
        return await self._go_live(self._attach(transport, session, replay=[]), after=0)

    async def _go_live(self, connection: Connection, *, after: int) -> Connection:
        """A shared session is claimed for this process before its welcome goes out,
        and its frames after ``after`` come from the shared state from then on."""
        if self._shared is not None:
            try:
                await self._shared.attached(connection, after=after)
            except BaseException:
                connection.session.connection = None
                raise
        return connection

    async def _resume_frame(self, transport: Transport, envelope: Envelope) -> Connection:
        """§6.3's ``session.resume`` as the first frame of a connection."""
        resume: SessionResume = envelope.payload
        session = await self._find_resumable(resume.session_id, resume.resume_token)
        principal = session.principal
        if resume.auth is not None:
            principal = await self._authenticate(resume.auth.scheme, resume.auth.token)
        request = ResumeRequest(
            resume_token=resume.resume_token,
            session_id=session.session_id,
            last_event_seq=resume.last_event_seq,
        )
        # A spec-only message is a signal for spec shapes (WIRE.md "Decisions").
        return await self._resume(transport, principal, session.features, Dialect.SPEC, request)

    async def _find_resumable(self, session_id: str | None, token: str | None) -> Session:
        if token is None:
            raise InvalidRequest("resume requires a resume_token")
        session = await self._sessions.find(session_id, hash_token(token))
        if session is None:
            # Unknown and forgotten sessions look the same: the window is over.
            raise ResumeWindowExpired(
                "no resumable session: its resume window has ended or it never existed"
            )
        return session

    async def _resume(
        self,
        transport: Transport,
        principal: str,
        features: frozenset[str],
        dialect: Dialect,
        request: ResumeRequest,
    ) -> Connection:
        session = await self._find_resumable(request.session_id, request.presented_token)
        # From here to the return there is no checkpoint: the session is taken over
        # in one step (an older connection is superseded, §6.3).
        # A wrong token or principal is refused without touching the session, so the
        # rightful client can still resume (WIRE.md "Decisions").
        token = request.presented_token or ""
        if not session.token_matches(token) or session.principal != principal:
            raise PermissionDenied("resume token or principal does not match the session")
        if session.window.expired(trio.current_time()):
            # Its timer may not have fired yet (Timers coalesce): the window is over
            # either way, so the session goes now, as it would have a moment later.
            self.forget(session)
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
        self.resumed += 1
        log.info(
            "session resumed session_id=%s last_event_seq=%s replay=%s",
            session.session_id,
            after,
            session.buffer.last_seq - after,
        )
        if self._shared is not None:
            return await self._go_live(self._attach(transport, session, replay=[]), after=after)
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
            for _ in range(buffer.max_events // PAGE + PAGE):
                # Evicted or acknowledged meanwhile: the stream's own overflow notice
                # says so (§6.5), as it would have live.
                after = max(after, buffer.first_held_seq() - 1)
                cached = buffer.cached_after(after)
                if cached is not None:
                    for event in cached:
                        connection.enqueue(event.frame)
                    return
                upto = buffer.first_cached_seq() - 1
                page = await self._log.read_events(
                    session.session_id, after, min(PAGE, upto - after)
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
        config = self._config
        heartbeat = config.heartbeat_interval_sec if "heartbeat" in session.features else None
        connection = Connection(
            session=session,
            transport=transport,
            dispatch=self._handlers.dispatch,
            welcome_answered=self._handlers.welcome_answered,
            timers=self._timers,
            heartbeat_interval=heartbeat,
            high_water=config.backpressure_high_water,
            format_ping_time=self._ping_timestamp,
            reply_batch=config.ping_reply_batch_sec,
        )
        token = session.rotate_token()
        self._sessions.tokens_changed(session)
        connection.token_hash = session.token_hash
        self._sessions.save(session)
        agents: list[Any]
        if "agent_versions" in session.features:
            agents = [unstructure_payload(info) for info in self._agents.inventory()]
        else:
            agents = self._agents.names()
        connection.reply(
            MessageType.SESSION_WELCOME,
            SessionWelcome(
                runtime=RuntimeInfo(name=config.runtime_name, version=config.runtime_version),
                session_id=session.session_id,
                resume_token=token,
                resume_window_sec=config.resume_window_sec,
                heartbeat_interval_sec=heartbeat,
                capabilities=Capabilities(
                    encodings=["json"], features=list(self._features), agents=agents
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

    def detach(self, connection: Connection) -> None:
        """The connection ended: its session waits for a resume (§6.3, §6.7)."""
        session = connection.session
        if session.connection is not connection:
            return
        session.connection = None
        session.catching_up = False
        if self._shared is not None:
            # The shared state keeps it for its window (any process may resume it).
            self._shared.detached(connection)
            return
        # Detached: the store has its events, RAM keeps none (a durable store only).
        session.buffer.set_cache_limit(0)
        now = trio.current_time()
        session.window.detach(now)
        session.detach_generation += 1
        log.info(
            "session detached session_id=%s reason=%s resumable_for=%s",
            session.session_id,
            connection.close_reason,
            self._config.resume_window_sec,
        )
        if not self._closing():
            self.expire_later(session, now + self._config.resume_window_sec)

    def expire_later(self, session: Session, deadline: float) -> None:
        """Forget the session at ``deadline`` unless it was resumed (or re-detached) since."""
        generation = session.detach_generation

        def expire(_now: float) -> None:
            if session.detach_generation == generation and session.connection is None:
                self.forget(session)

        self._timers.call_at(deadline, expire)

    def forget(self, session: Session) -> None:
        """The resume window ended: drop the session. Its jobs keep running."""
        if session.forgotten:
            return
        session.forgotten = True
        self._sessions.remove(session)
        for job_id in session.watching:
            job = self._registry.get(job_id)
            if job is not None:
                job.watchers.discard(session.session_id)
        log.info("session expired session_id=%s", session.session_id)
