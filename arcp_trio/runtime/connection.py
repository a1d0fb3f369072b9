"""One transport attach of a session: its receive loop, writer and heartbeat.

Theory of operation
-------------------
``Connection.run`` serves the connection in the task that called it (the
connection's task) until the connection ends. While there is work it opens the
connection's own nursery (``conn_nursery``):

* receive (the nursery's body): read a frame, note it for liveness, decode it, hand
  it to the runtime's dispatcher. A malformed frame or a failing request is answered
  with a correlated ``session.error`` and the loop goes on (WIRE.md "Errors are
  correlated").
* writer (a task in ``conn_nursery``, started on demand): when frames are queued and
  no writer is running, one is started; it takes everything queued (up to a batch
  limit), writes it with one ``send_messages`` call, and returns once the queue is
  empty, so a chatty job costs a few large writes. One-off replies (pong,
  acknowledgements, pings) written while nothing is queued go straight to an
  ``IdleTransport`` (``send_nowait``) without any task.
* heartbeat (§6.4, when negotiated): a deadline in the runtime's ``Timers``, not a
  task: ping an idle peer; after two silent intervals declare the connection dead.
  A ``session.pong`` is checked without a full decode and only noted for liveness.

*Idle.* An ``IdleTransport`` that can tell when input is there (``receive_ready``: a
server WebSocket read by the ``ReadReactor``) lets the connection go idle: once
nothing is queued to read or to write, the body returns, the nursery closes, and the
task parks in a single wait (``_spot.park``) with nothing else alive. A queued frame
or the end of the connection wakes it (``_wake``), and so does input: the
transport's waker is ``_spot.wake`` itself, which only reschedules the task, so
nothing of the runtime runs in the reactor's task. Woken for input, the task first
takes the heartbeat pongs queued (``receive_nowait``), notes them and parks again if
that was all; any other frame it took is kept (``_held``) and is the first the
receive loop of a new nursery handles. After a ping the transport may put off
noticing the peer's input for ``reply_batch`` seconds (``defer_receive``), so the
pongs to one timer pass's pings are read in one pass of the reactor, and each
connection's task wakes once for its own. Transports that cannot tell (or are not an
``IdleTransport``) keep one nursery for the connection's whole life, the body waiting
in ``receive_message``.

Whatever ends one of them — the peer closing, a transport error, heartbeat loss,
``session.close``, a bug in a handler or in the heartbeat callback — ends *only this
connection*: each runs behind a boundary that catches ``Exception``, logs it and
ends the connection (``abort``: cancels ``conn_nursery``, or wakes the parked task).
The runtime then detaches the session, which stays resumable, and no job is touched
(§6.4, §6.7; the C# report in shared/context is what happens otherwise).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .._util import ParkingSpot
from ..protocol.session import HeartbeatAction, HeartbeatMonitor
from ..transport.base import (
    IdleTransport,
    MessageRefused,
    MessageTooLarge,
    Transport,
    TransportError,
)
from ..transport.outbox import Outbox
from ..wire.codec import (
    Envelope,
    decode,
    encode,
    encode_ping_frame,
    is_session_pong,
    recover_id,
)
from ..wire.errors import ARCPError, ErrorCode, RemoteProtocolError
from ..wire.ids import new_frame_id
from ..wire.messages import MessageType, SessionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .session import Session
    from .timers import Timer, Timers

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_DEAD, _SEND_PING = HeartbeatAction.DEAD, HeartbeatAction.SEND_PING

#: What every ``session.pong`` frame contains (a cheap test before decoding one).
_PONG_TYPE = '"session.pong"'


def refusal(exc: MessageTooLarge | MessageRefused) -> RemoteProtocolError:
    """The ``INVALID_REQUEST`` that answers a message the transport refused."""
    if isinstance(exc, MessageTooLarge):
        message = f"frame of at least {exc.size} bytes exceeds the limit of {exc.limit}"
    else:
        message = f"frame refused: {exc.reason}"
    return RemoteProtocolError(message, details={"errors": [f"{message} @ $"]})


class Connection:
    """A session's current transport, with its outbox. Built by the runtime."""

    __slots__ = (
        "_defer",
        "_dispatch",
        "_format_ping_time",
        "_heartbeat",
        "_held",
        "_idle",
        "_nursery",
        "_reply_batch",
        "_running",
        "_scope",
        "_spot",
        "_timers",
        "_welcome_answered",
        "_writer_active",
        "catch_up",
        "close_reason",
        "monitor",
        "outbox",
        "session",
        "token_confirmed",
        "token_hash",
        "transport",
    )

    def __init__(
        self,
        *,
        session: Session,
        transport: Transport,
        dispatch: Callable[[Connection, Envelope], Awaitable[None]],
        welcome_answered: Callable[[Connection], None],
        timers: Timers,
        heartbeat_interval: float | None,
        high_water: int,
        format_ping_time: Callable[[float], str],
        reply_batch: float = 0.0,
    ) -> None:
        self.session = session
        self.transport = transport
        self._dispatch = dispatch
        self._welcome_answered = welcome_answered
        self._timers = timers
        self._format_ping_time = format_ping_time
        self.outbox = Outbox(high_water=high_water)
        #: The transport's idle capability, probed once (None: the general path).
        self._idle = transport if isinstance(transport, IdleTransport) else None
        #: After a ping, the peer's input may wait this long to be read, so that the
        #: pongs to one timer pass's pings are read in one pass (``defer_receive``).
        self._reply_batch = reply_batch
        self._defer = (
            self._idle.defer_receive
            if reply_batch > 0 and heartbeat_interval and self._idle is not None
            else None
        )
        #: A frame the parked task took (``receive_nowait``) that is not a pong: the
        #: receive loop handles it first.
        self._held: str | None = None
        #: The connection's nursery and its cancel scope, while it has work.
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        #: Where the connection's task waits while idle (see ``_wake``). Its ``wake``
        #: is the transport's waker: that, and nothing of the runtime's, is what runs
        #: in the reactor's task when input arrives.
        self._spot = ParkingSpot()
        #: ``run`` has started: frames may be written through (``send_now``).
        self._running = False
        self._writer_active = False
        self._heartbeat: Timer | None = None
        #: Run once, before the first frame is read: a resume's replay from the store
        #: (its pages wait for the writer, so RAM holds a page, not the whole gap).
        self.catch_up: Callable[[], Awaitable[None]] | None = None
        self.close_reason = ""
        #: The resume token (hashed) this connection's welcome carried, and whether the
        #: client has answered it (see ``Session.confirm_token``).
        self.token_hash = ""
        self.token_confirmed = False
        #: §6.4 liveness (None: heartbeats not negotiated). Pings may go out one timer
        #: granularity early, so a late timer still pings within the interval.
        self.monitor = (
            HeartbeatMonitor(
                interval=heartbeat_interval,
                last_received=trio.current_time(),
                slack=min(timers.granularity, heartbeat_interval / 2),
            )
            if heartbeat_interval
            else None
        )

    @property
    def closed(self) -> bool:
        return self.outbox.closed

    # -- queueing (synchronous: called from handlers and event routing) -----------------

    def enqueue(self, frame: str) -> None:
        """Queue a frame behind everything queued before it; a writer takes it."""
        self.outbox.enqueue(frame)
        if not self._writer_active:
            self._start_writer()

    def send_now(self, frame: str) -> None:
        """Write a one-off frame at once when nothing is queued, else queue it."""
        idle = self._idle
        if (
            idle is not None
            and self._running
            and not self._writer_active
            and not self.outbox.frames
            and not self.outbox.closed
            and idle.send_nowait(frame)
        ):
            self.outbox.frames_written += 1  # written past the outbox: counted with it
            if idle.write_pending:
                self._start_writer()
            return
        self.enqueue(frame)

    def send(self, envelope: Envelope) -> None:
        self.send_now(encode(envelope))

    def reply(
        self, message_type: MessageType, payload: object, *, job_id: str | None = None
    ) -> None:
        """Send a non-seq frame to the peer, stamped with this session's id."""
        self.send(
            Envelope(
                type=message_type,
                id=new_frame_id(),
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
        if not self._writer_active and not self.outbox.frames:
            self.abort(self.close_reason)

    def abort(self, reason: str) -> None:
        """End the connection now; queued frames stay in the session's buffer."""
        self.close_reason = self.close_reason or reason
        self.outbox.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._scope is not None:
            self._scope.cancel()
        self._wake()

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the connection ends; never raises (except cancellation).

        The transport stays open: whoever runs the connection closes it (the
        runtime's ``_serve_connection``, the one place a transport is closed)."""
        idle = self._idle
        try:
            if self.monitor is not None and not self.closed:
                self._heartbeat = self._timers.call_at(
                    self.monitor.next_wakeup(), self._on_heartbeat
                )
            if idle is not None:
                idle.set_receive_waker(self._spot.wake)
            self._running = True
            while not self.closed:
                if idle is not None and not self._has_work(idle):
                    await self._spot.park()
                    continue
                await self._serve_work()
        finally:
            self._running = False
            if idle is not None:
                idle.set_receive_waker(None)
            self.abort(self.close_reason or "connection ended")

    async def _serve_work(self) -> None:
        """Run the connection's nursery until it is idle (or for good, see ``run``).

        A method of its own, so that nothing of a finished nursery stays referenced
        from ``run``'s frame while the task is parked.
        """
        async with trio.open_nursery() as conn_nursery:
            self._scope = conn_nursery.cancel_scope
            self._nursery = conn_nursery
            if self.outbox.frames or self.outbox.stopping or self._write_pending:
                # The welcome (and any replay) was queued before we started.
                self._start_writer()
            try:
                catch_up, self.catch_up = self.catch_up, None
                if catch_up is not None:
                    await self._guard(catch_up, "replay")
                await self._guard(self._receive_loop, "receive")
            finally:
                # No nursery from here: a frame queued now (by a job task, which must
                # never meet a closing nursery) wakes the task instead of starting a
                # writer, and ``run`` comes back.
                self._nursery = None
        self._scope = None

    @property
    def _write_pending(self) -> bool:
        return self._idle is not None and self._idle.write_pending

    def _has_work(self, idle: IdleTransport) -> bool:
        """Whether the task needs its nursery (else the transport will wake it).

        Heartbeat pongs queued ahead of anything else are taken here, without one.
        """
        return (
            self.closed
            or self.catch_up is not None
            or bool(self.outbox.frames)
            or self.outbox.stopping
            or idle.write_pending
            or self._input_waiting(idle)
        )

    def _input_waiting(self, idle: IdleTransport) -> bool:
        """Whether input waits for the receive loop, after taking the pongs queued
        ahead of it (§6.4: noted for liveness, nothing more, in this task)."""
        if self._held is not None:
            return True
        while (text := idle.receive_nowait()) is not None:
            if not self._take_pong(text):
                self._held = text  # in order: the loop handles it first
                return True
        return idle.receive_ready()

    def _wake(self) -> None:
        """Reschedule the parked task, if it is parked (spurious calls are harmless).

        The task parks with ``_spot.park()``, holding nothing; this, the transport's
        waker (``_spot.wake`` itself) or cancellation wakes it.
        """
        self._spot.wake()

    async def _guard(self, task: Callable[[], Awaitable[None]], name: str) -> None:
        """The connection's edge: whatever a task raises ends this connection only.

        A task that returns has done its part: the writer, once drained; the receive
        loop, once idle (``run`` then parks, or ends the connection if it is closed).
        """
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
        else:
            return
        self.abort(self.close_reason or f"{name} task ended")

    def _start_writer(self) -> None:
        if self._writer_active or self.outbox.closed:
            return  # one is running; or the connection is over
        if self._nursery is None:
            self._wake()  # ``run`` starts it (before it runs, or when idle)
            return
        self._writer_active = True
        self._nursery.start_soon(self._guard, self._write, "send")

    async def _write(self) -> None:
        try:
            if self._write_pending:
                await self.transport.send_messages(())
            await self.outbox.drain(self.transport)
        finally:
            self._writer_active = False
            self._wake()  # the receive loop may be waiting for the writer to finish
        if self.outbox.stopping:
            self.abort(self.close_reason or "closed after flush")

    async def _receive_loop(self) -> None:
        """Receive and dispatch; returns when idle (``IdleTransport`` only)."""
        monitor = self.monitor
        idle = self._idle
        checkpoint = trio.lowlevel.checkpoint
        while await self._receive_one(monitor, idle):
            # One frame, then a scheduling point, whatever the frame was: a transport
            # with many frames queued (a burst in one read) hands them over without
            # waiting, and one connection must not keep every other one waiting.
            await checkpoint()

    async def _receive_one(
        self, monitor: HeartbeatMonitor | None, idle: IdleTransport | None
    ) -> bool:
        """Receive one frame and handle it; False: the loop is over (idle, or the
        transport must end)."""
        text = self._held
        if text is not None:
            self._held = None
            return await self._handle(monitor, text)
        while idle is not None and not idle.receive_ready():
            if not self._writer_active and not self.outbox.frames:
                self._nursery = None  # nothing may start in a closing nursery
                return False
            await self._spot.park()  # until input, the writer's end, or an abort
        try:
            text = await self.transport.receive_message()
        except (MessageTooLarge, MessageRefused) as exc:
            # Refused before it could be parsed: still answered, by the id in its
            # first bytes (WIRE.md "Errors are correlated").
            if monitor is not None:
                monitor.received(trio.current_time())
            self.send_error(refusal(exc), request_id=recover_id(exc.prefix))
            if isinstance(exc, MessageRefused) and exc.fatal:
                # The transport must end (a WebSocket text message that is not
                # UTF-8): the answer goes out first, then the close.
                self.close_after_flush(f"refused: {exc.reason}")
                while not self.closed:
                    await self._spot.park()  # the writer's end (or an abort) wakes it
                return False
            return True
        return await self._handle(monitor, text)

    async def _handle(self, monitor: HeartbeatMonitor | None, text: str) -> bool:
        """Note one frame for liveness and handle it (True: the loop goes on)."""
        if self._take_pong(text):
            return True
        if monitor is not None:
            monitor.received(trio.current_time())
        try:
            envelope = decode(text)
        except RemoteProtocolError as exc:
            log.info("malformed frame session_id=%s error=%s", self.session.session_id, exc.message)
            self.send_error(exc, request_id=exc.request_id)
            return True
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
        return True

    def _take_pong(self, text: str) -> bool:
        """Take a ``session.pong`` whole: §6.4 asks nothing more of it than a note
        that the peer is alive (which keeps the next ping's time), so it is neither
        decoded nor dispatched. False for every other frame, and for a pong that
        does not decode (INVALID_REQUEST from the loop). Never raises.
        """
        if _PONG_TYPE not in text or not is_session_pong(text):
            return False
        if self.monitor is not None:
            self.monitor.answered(trio.current_time())
        if not self.token_confirmed:
            try:
                self._welcome_answered(self)  # as the dispatcher does for any first frame
            except Exception:
                log.error(
                    "confirming the welcome failed session_id=%s",
                    self.session.session_id,
                    exc_info=True,
                )
        return True

    # -- heartbeat (a callback of the runtime's Timers) ----------------------------------

    def _on_heartbeat(self, now: float) -> None:
        self._heartbeat = None
        monitor = self.monitor
        if monitor is None or self.closed:
            return
        try:
            action = monitor.poll(now)
            if action is _DEAD:
                # §6.4: close the transport and surface HEARTBEAT_LOST — locally; the
                # session stays resumable and no job is touched. Expected (the client
                # reconnects by design): INFO, one line.
                log.info(
                    "heartbeat lost session_id=%s interval=%s",
                    self.session.session_id,
                    monitor.interval,
                )
                self.abort(str(ErrorCode.HEARTBEAT_LOST))
                return
            if action is _SEND_PING:
                # The ping's own id is its nonce: unique per ping, which is all the
                # nonce is for (§6.4: the pong echoes it).
                frame_id = new_frame_id()
                self.send_now(
                    encode_ping_frame(
                        frame_id=frame_id,
                        session_id=self.session.session_id,
                        nonce=frame_id,
                        sent_at=self._format_ping_time(now),
                    )
                )
                if self._defer is not None:
                    # Its pong is read with the others of this pass (see ``__init__``).
                    self._defer(now, self._reply_batch)
            self._heartbeat = self._timers.call_at(monitor.next_wakeup(), self._on_heartbeat)
        except Exception:
            # A heartbeat that cannot run would leave a dead peer undetected: end this
            # connection (the session stays resumable), never the timer or the runtime.
            log.error("heartbeat failed session_id=%s", self.session.session_id, exc_info=True)
            self.abort("heartbeat task failed")
