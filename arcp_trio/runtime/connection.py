"""One transport attach of a session: its receive, send and heartbeat tasks.

Theory of operation
-------------------
``Connection.run`` opens the connection's own nursery (``conn_nursery``) with three
tasks:

* receive: read a frame, note it for liveness, decode it, hand it to the runtime's
  dispatcher. A malformed frame or a failing request is answered with a
  correlated ``session.error`` and the loop goes on (WIRE.md "Errors are
  correlated").
* send: wait until the outbox has frames, take everything queued (up to a batch
  limit) and write it with one ``send_messages`` call, so a chatty job costs a few
  large writes rather than one write per event.
* heartbeat (§6.4, when negotiated): ping an idle peer; after two silent intervals
  declare the connection dead.

Whatever ends one of them — the peer closing, a transport error, heartbeat loss,
``session.close``, a bug in a handler — ends *only this connection*: every task body
runs behind a boundary that catches ``Exception``, logs it and cancels
``conn_nursery``. The runtime then detaches the session, which stays resumable, and
no job is touched (§6.4, §6.7; the C# report in shared/context is what happens
otherwise).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..protocol.session import HeartbeatAction, HeartbeatMonitor
from ..transport.base import MessageTooLarge, Transport, TransportError
from ..transport.outbox import Outbox
from ..wire.codec import Envelope, decode, encode
from ..wire.errors import ARCPError, ErrorCode, RemoteProtocolError
from ..wire.ids import new_ulid
from ..wire.messages import MessageType, SessionError, SessionPing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .session import Session

__all__ = ["Connection"]

log = logging.getLogger(__name__)


class Connection:
    """A session's current transport, with its outbox. Built by the runtime."""

    def __init__(
        self,
        *,
        session: Session,
        transport: Transport,
        dispatch: Callable[[Connection, Envelope], Awaitable[None]],
        heartbeat_interval: float | None,
        high_water: int,
        format_ping_time: Callable[[], str],
    ) -> None:
        self.session = session
        self.transport = transport
        self._dispatch = dispatch
        self._heartbeat_interval = heartbeat_interval
        self._format_ping_time = format_ping_time
        self.outbox = Outbox(high_water=high_water)
        self._scope: trio.CancelScope | None = None
        self.close_reason = ""
        #: The resume token (hashed) this connection's welcome carried, and whether the
        #: client has answered it (see ``Session.confirm_token``).
        self.token_hash = ""
        self.token_confirmed = False
        self.monitor = HeartbeatMonitor(
            interval=heartbeat_interval or 0.0, last_received=trio.current_time()
        )

    @property
    def closed(self) -> bool:
        return self.outbox.closed

    # -- queueing (synchronous: called from handlers and event routing) -----------------

    def enqueue(self, frame: str) -> None:
        self.outbox.enqueue(frame)

    def send(self, envelope: Envelope) -> None:
        self.outbox.enqueue(encode(envelope))

    def reply(
        self, message_type: MessageType, payload: object, *, job_id: str | None = None
    ) -> None:
        """Queue a non-seq frame to the peer, stamped with this session's id."""
        self.send(
            Envelope(
                type=message_type,
                id=new_ulid(),
                session_id=self.session.session_id,
                job_id=job_id,
                payload=payload,
            )
        )

    def send_error(self, error: ARCPError, *, request_id: str | None) -> None:
        self.reply(
            MessageType.SESSION_ERROR,
            SessionError(
                code=str(error.code),
                message=error.message,
                retryable=error.retryable,
                details=error.details,
                request_id=request_id,
            ),
        )

    async def wait_writable(self) -> None:
        """Back-pressure: wait while this live connection is far behind.

        Returns at once if the connection is closed (a job must never stall on a
        connection that is gone).
        """
        await self.outbox.wait_writable()

    @property
    def congested(self) -> bool:
        return self.outbox.congested

    # -- ending -------------------------------------------------------------------------

    def close_after_flush(self, reason: str) -> None:
        """End the connection once everything queued so far has been written."""
        self.close_reason = self.close_reason or reason
        self.outbox.stop_after_flush()

    def abort(self, reason: str) -> None:
        """End the connection now; queued frames stay in the session's buffer."""
        self.close_reason = self.close_reason or reason
        self.outbox.close()
        if self._scope is not None:
            self._scope.cancel()

    # -- the three tasks ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the connection ends; never raises (except cancellation)."""
        try:
            async with trio.open_nursery() as conn_nursery:
                self._scope = conn_nursery.cancel_scope
                if self.closed:
                    conn_nursery.cancel_scope.cancel()
                conn_nursery.start_soon(self._guard, self._send_loop, "send")
                conn_nursery.start_soon(self._guard, self._receive_loop, "receive")
                if self._heartbeat_interval:
                    conn_nursery.start_soon(self._guard, self._heartbeat_loop, "heartbeat")
        finally:
            self.outbox.close()
            with trio.move_on_after(5, shield=True):
                await self.transport.aclose()

    async def _guard(self, task: Callable[[], Awaitable[None]], name: str) -> None:
        """The connection's edge: whatever a task raises ends this connection only."""
        try:
            await task()
        except TransportError as exc:
            self.close_reason = self.close_reason or f"transport: {exc}"
            log.info(
                "connection ended session_id=%s task=%s reason=%s",
                self.session.session_id,
                name,
                exc,
            )
        except Exception:
            self.close_reason = self.close_reason or f"{name} task failed"
            log.error(
                "connection task failed session_id=%s task=%s",
                self.session.session_id,
                name,
                exc_info=True,
            )
        finally:
            self.abort(self.close_reason or f"{name} task ended")

    async def _send_loop(self) -> None:
        await self.outbox.run(self.transport)

    async def _receive_loop(self) -> None:
        while True:
            try:
                text = await self.transport.receive_message()
            except MessageTooLarge as exc:
                self.monitor.received(trio.current_time())
                self.send_error(
                    RemoteProtocolError(
                        f"frame of at least {exc.size} bytes exceeds the limit of {exc.limit}"
                    ),
                    request_id=None,
                )
                continue
            self.monitor.received(trio.current_time())
            try:
                envelope = decode(text)
            except RemoteProtocolError as exc:
                log.info(
                    "malformed frame session_id=%s error=%s", self.session.session_id, exc.message
                )
                self.send_error(exc, request_id=exc.request_id)
                continue
            try:
                await self._dispatch(self, envelope)
            except ARCPError as exc:
                self.send_error(exc, request_id=envelope.id)
            except Exception:
                log.error(
                    "request failed session_id=%s type=%s",
                    self.session.session_id,
                    envelope.type,
                    exc_info=True,
                )
                self.send_error(
                    ARCPError("internal error handling request", code=ErrorCode.INTERNAL_ERROR),
                    request_id=envelope.id,
                )

    async def _heartbeat_loop(self) -> None:
        monitor = self.monitor
        while True:
            await trio.sleep_until(monitor.next_wakeup())
            action = monitor.poll(trio.current_time())
            if action is HeartbeatAction.SEND_PING:
                self.reply(
                    MessageType.SESSION_PING,
                    SessionPing(nonce=new_ulid(), sent_at=self._format_ping_time()),
                )
            elif action is HeartbeatAction.DEAD:
                # §6.4: close the transport and surface HEARTBEAT_LOST — locally; the
                # session stays resumable and no job is touched.
                log.warning(
                    "heartbeat lost session_id=%s interval=%s",
                    self.session.session_id,
                    self._heartbeat_interval,
                )
                self.abort(str(ErrorCode.HEARTBEAT_LOST))
                return
