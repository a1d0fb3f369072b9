"""WebSocket transport: RFC 6455 over any Trio stream.

Theory of operation
-------------------
A :class:`WebSocketTransport` pairs one ``trio.abc.Stream`` with one sans-IO frame
layer whose opening handshake is complete: it turns bytes into events and events into
bytes; this module owns every read and write. wsproto does both opening handshakes
and the client's frames; a server's frames go through our own ``FrameConnection``
(:mod:`arcp_trio.transport.wsframes`, the same events and states at a fraction of
the cost: a server carries thousands of connections).

*Sending.* Every write to the stream happens under ``_send_lock`` (a
``StrictFIFOLock``), so frames from concurrent senders never interleave — except
``send_nowait``, the write-through path for one-off replies: when the lock is free
and nothing is owed to the stream, a server transport on a socket writes the frame
straight to the non-blocking socket (as asyncio's transports do); whatever the
kernel does not take is kept in ``_control`` and written first by the next
``send_messages``.
``send_messages`` encodes the whole batch with wsproto, joins the bytes and hands them
to the stream in **one** ``send_all``: a chatty job costs one socket write per batch,
not one per event. The receive path also writes (pong, close reply); when a sender
holds the lock it does not wait (two peers both blocked writing and both waiting to
pong would deadlock) but appends the control frame to ``_control``, which the lock
holder flushes right after its own write. A write interrupted part-way (cancellation)
may have left a torn frame on the wire, so the transport is marked broken and the
stream closed: nothing is ever written after a torn frame.

*Receiving.* One task at a time reads 64 KiB chunks, feeds the frame layer and queues
the resulting events in ``_events``. A server transport given a ``ReadReactor`` does
not read in its task: the reactor reads for it when the socket is readable and
queues the events; a WebSocket ping it can answer at once never wakes the receiving
task, and nothing else is handled in the reactor's task. The owner is told through
``set_receive_waker`` (``IdleTransport``: an idle connection parks its task instead
of waiting in ``receive_message``, and takes the whole messages queued with
``receive_nowait`` when woken); ``defer_receive`` has the reactor read the socket only
when a short window ends, with the other deferred ones (the pongs to a batch of
pings, read in one wake-up). Message fragments are joined until
``message_finished``; once a message's size passes ``max_message_size`` its bytes are
counted and dropped instead of buffered, and ``MessageTooLarge`` is raised when it
ends, leaving the transport usable. Pings are answered; a close frame from the peer is
answered and ends the transport (``TransportBroken``); bytes the frame layer cannot
parse end it too, after a close frame with its code (1002, 1007, ...).

*Closing.* ``aclose`` sends a close frame, then waits for the peer's close frame (or
EOF) before closing the stream (RFC 6455 §7.1.1): closing a socket with unread data
makes the kernel send RST, which can destroy the last frames we sent before the peer
reads them. If a receive is in progress its task drains on our behalf; otherwise
``aclose`` drains itself. All of it runs shielded under ``close_timeout``, then the
stream is closed unconditionally.

Every trio, wsproto and OS error is mapped to ``TransportClosed`` (we closed it) or
``TransportBroken`` (the peer or network did) here; none escapes.
"""

from __future__ import annotations

import contextlib
import http
import logging
import signal
import socket
import ssl
import urllib.parse
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from arcp_trio.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MessageRefused,
    MessageTooLarge,
    Transport,
    TransportBroken,
    TransportError,
    TransportState,
    decode_text,
    text_prefix,
    utf8_size,
)
from arcp_trio.transport.origin import OriginPolicy
from arcp_trio.transport.reactor import ReadReactor, Registration, reactor_available
from arcp_trio.transport.wsframes import FrameConnection, server_text_frame, server_text_frames

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "WebSocketServerInfo",
    "WebSocketTransport",
    "connect_websocket",
    "serve_websocket_transport",
    "websocket_client_handshake",
    "websocket_server_handshake",
]

log = logging.getLogger(__name__)

#: Bytes requested from the stream per read.
RECEIVE_CHUNK = 64 * 1024
#: Seconds ``aclose`` waits for the closing handshake (and a busy sender) at most.
DEFAULT_CLOSE_TIMEOUT = 2.0

_NORMAL_CLOSURE = 1000
_CAN_SEND = frozenset({ConnectionState.OPEN})
_CAN_CLOSE = frozenset({ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING})
_INTERNAL_ERROR = 1011
#: ``send`` flag: a write to a reset peer fails with EPIPE instead of raising SIGPIPE
#: (Linux, BSDs). 0 where the platform has none.
_MSG_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)


def _no_sigpipe(sock: socket.socket) -> bool:
    """Whether a write to ``sock`` after the peer reset it raises instead of killing
    the process with SIGPIPE: always with ``MSG_NOSIGNAL`` (Linux, BSDs) or
    ``SO_NOSIGPIPE`` (set here, where the platform has it), and where there is no
    SIGPIPE (Windows); elsewhere only while SIGPIPE is ignored (Python's default)."""
    if _MSG_NOSIGNAL:
        return True
    nosigpipe = getattr(socket, "SO_NOSIGPIPE", None)
    if nosigpipe is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, nosigpipe, 1)
        except OSError:
            pass
        else:
            return True
    sigpipe = getattr(signal, "SIGPIPE", None)
    return sigpipe is None or signal.getsignal(sigpipe) == signal.SIG_IGN


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a ``trio.SocketStream`` (non-blocking, owned by trio).

    The fast paths (``send_nowait``, reactor reads) act on the socket object itself,
    never on a bare descriptor number. trio keeps it as ``_sock``; if a future trio
    does not, the transport runs without the fast paths (still correct).
    """
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = getattr(stream.socket, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


class WebSocketTransport(TransportState):
    _ended = "connection closed"

    """The :class:`~arcp_trio.transport.base.Transport` interface over one WebSocket.

    Built by :func:`connect_websocket`, :func:`serve_websocket_transport` or the two
    handshake helpers; the constructor takes a stream and a ``WSConnection`` whose
    opening handshake is already complete.

    Args:
        stream: the byte stream under the WebSocket (owned from now on).
        connection: the frame layer, in state ``OPEN``: our ``FrameConnection`` (what
            the server handshake gives), or wsproto's connection (the client's).
        max_message_size: inbound limit per message, in bytes.
        close_timeout: seconds ``aclose`` spends on the closing handshake at most.
        description: peer description for logs.
        pending_events: events wsproto produced during the handshake that belong to
            the connection (frames that arrived in the same read as the 101).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: WSConnection | Connection | FrameConnection,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        description: str = "ws",
        pending_events: Iterable[Event] = (),
        reactor: ReadReactor | None = None,
    ) -> None:
        if connection.state is not ConnectionState.OPEN:
            raise ValueError(f"the WebSocket must be OPEN, not {connection.state.name}")
        self._stream = stream
        # After the handshake only the frame layer is needed: dropping the HTTP
        # handshake objects saves about 2 KiB per connection.
        ws = connection.connection if isinstance(connection, WSConnection) else connection
        assert ws is not None  # an OPEN WSConnection has its frame connection
        self._ws: Connection | FrameConnection = ws
        #: The stream's own socket, for writes that need no waiting (``send_nowait``)
        #: and the reactor's reads; None where there is none (not a socket stream,
        #: or a client: clients mask their frames, through wsproto).
        self._sock = _raw_socket(stream) if not ws.client else None
        #: ``send_nowait`` may write: a reset peer must be an error, never a SIGPIPE,
        #: whatever the process's disposition is later (``_no_sigpipe``).
        self._nowait_ok = self._sock is not None and _no_sigpipe(self._sock)
        self._max_message_size = max_message_size
        self._close_timeout = close_timeout
        super().__init__(description)
        #: Created at the first write that needs it (``_lock``): idle connections that
        #: only ever write through ``send_nowait`` never do.
        self._send_lock: trio.StrictFIFOLock | None = None
        self._control = bytearray()
        # Parsed events not handled yet, *newest first* (the next is ``pop()``): a list
        # costs an idle connection 56 bytes where a deque costs over 600.
        self._events: list[Event] = list(pending_events)[::-1]
        # The message being assembled (text or binary parts).
        self._text_parts: list[str] = []
        self._byte_parts: list[bytes | bytearray] = []
        self._buffered = 0
        self._discarding = False
        #: The start of the oversized message being discarded (``MessageTooLarge``).
        self._prefix = ""
        #: The close a protocol error calls for, once its message has been reported
        #: (``MessageRefused``): ``aclose`` sends this code instead of 1000.
        self._closing_code: tuple[int, str] | None = None
        # Lifecycle.
        self._stream_closed = False
        self._eof = False
        self._receiving = False
        #: The peer's close frame (or the end) was seen; the event exists only while
        #: ``aclose`` waits for a receiving task to see it.
        self._close_was_seen = False
        self._close_seen: trio.Event | None = None
        # Reads by the reactor (server sockets only): see the module docstring.
        self._reactor: ReadReactor | None = None
        self._waker: Callable[[], object] | None = None
        self._data_ready: trio.Event | None = None
        self._read_error: str | None = None
        self._registration: Registration | None = None
        if reactor is not None and self._sock is not None:
            self._reactor = reactor
            self._registration = reactor.register(self._sock.fileno(), self._on_readable)

    @property
    def _reg(self) -> Registration:
        assert self._registration is not None  # only called with a reactor
        return self._registration

    @property
    def _reg_sock(self) -> socket.socket:
        assert self._sock is not None  # a reactor reads only real sockets
        return self._sock

    def _send_raw(self, data: bytes) -> int:
        """One non-blocking write to the socket (``_nowait_ok`` only). Raises OSError
        (``BlockingIOError`` when full)."""
        assert self._sock is not None
        return self._sock.send(data, _MSG_NOSIGNAL)

    # -- errors ---------------------------------------------------------------------------

    def _mark_broken(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
            log.info("websocket ended peer=%s reason=%s", self._description, reason)
        self._note_close_seen()

    async def _fail(self, reason: str) -> NoReturn:
        """Mark the transport broken, close the stream, raise ``TransportBroken``."""
        self._mark_broken(reason)
        await self._close_stream()
        raise self._unusable_error()

    def _note_close_seen(self) -> None:
        self._close_was_seen = True
        if self._close_seen is not None:
            self._close_seen.set()

    def _lock(self) -> trio.StrictFIFOLock:
        """The send lock (see the module docstring), created on first use."""
        if self._send_lock is None:
            self._send_lock = trio.StrictFIFOLock()
        return self._send_lock

    @property
    def _sending(self) -> bool:
        """A write holds the send lock."""
        return self._send_lock is not None and self._send_lock.locked()

    def _writable(self, states: frozenset[ConnectionState] = _CAN_SEND) -> bool:
        """Whether a frame may be written now (re-read after every await)."""
        return self._broken is None and not self._stream_closed and self._ws.state in states

    async def _close_stream(self) -> None:
        if not self._stream_closed:
            self._stream_closed = True
            if self._reactor is not None:
                self._reactor.unregister(self._reg)
                self._wake_reader()
            await trio.aclose_forcefully(self._stream)

    # -- sending --------------------------------------------------------------------------

    async def send_message(self, message: str) -> None:
        """Send one text frame (see :meth:`send_messages`)."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Send one text frame per message, all of them in a single stream write.

        Raises:
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer closed the WebSocket or the network failed.

        Cancellation: cancelled before the write starts, nothing is sent and the
        transport stays usable; cancelled part-way through it, the transport is broken
        and closed (later calls raise ``TransportBroken``).
        """
        self._check_usable()
        async with self._lock():
            self._check_usable()
            try:
                if not self._ws.client and self._ws.state is ConnectionState.OPEN:
                    data = server_text_frames(messages)
                else:
                    data = b"".join([self._ws.send(TextMessage(data=text)) for text in messages])
            except LocalProtocolError as exc:
                # wsproto refuses data frames once either side has begun closing.
                raise TransportBroken(
                    f"{self._description}: cannot send, the WebSocket is {self._ws.state.name}"
                ) from exc
            if data or self._control:
                await self._write(data)
            else:
                await trio.lowlevel.checkpoint()

    def send_nowait(self, message: str) -> bool:
        """Write one text frame now if the socket takes it without waiting.

        ``IdleTransport``: True when the frame is taken (any part the kernel did not
        accept waits in ``_control`` for the next ``send_messages``); False, with
        nothing written, when this transport cannot (client side, not a socket,
        busy, owed bytes, not open) or the kernel takes nothing.
        """
        if (
            not self._nowait_ok
            or self._control
            or self._closed
            or self._broken is not None
            or self._stream_closed
            or self._sending
            or self._ws.state is not ConnectionState.OPEN
        ):
            return False
        data = server_text_frame(message)
        try:
            sent = self._send_raw(data)
        except OSError:
            # Full (EAGAIN) or failed: the regular path waits, or reports the error.
            return False
        if sent < len(data):
            self._control += data[sent:]
        return True

    @property
    def write_pending(self) -> bool:
        return bool(self._control)

    async def _write(self, data: bytes) -> None:
        """Write ``data`` (plus queued control frames) to the stream. Lock held."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._control:
            data = bytes(self._control) + data
            self._control.clear()
        try:
            await self._stream.send_all(data)
            while self._control:
                # Control frames the receive path queued while we were writing.
                data = bytes(self._control)
                self._control.clear()
                await self._stream.send_all(data)
        except trio.ClosedResourceError as exc:
            raise self._unusable_error() from exc
        except (trio.BrokenResourceError, trio.BusyResourceError, OSError) as exc:
            await self._fail(f"{self._description}: send failed: {exc!r}")
        except BaseException:
            # Cancelled (or interrupted) inside send_all: part of a frame may be on the
            # wire. Nothing may follow it, so this connection is over.
            self._mark_broken(f"{self._description}: a send was interrupted part-way")
            await self._close_stream()
            raise

    async def _send_control(self, event: Event) -> None:
        """Send a control frame from the receive path without waiting on a sender."""
        if not self._writable():
            return
        if self._sending:
            self._control += self._ws.send(event)
            return
        async with self._lock():
            if self._writable():
                await self._write(self._ws.send(event))

    # -- receiving ------------------------------------------------------------------------

    async def receive_message(self) -> str:
        """Return the next complete message (text, or binary decoded as UTF-8).

        Raises:
            MessageTooLarge: a message over ``max_message_size`` was discarded (its
                ``prefix`` kept).
            MessageRefused: a message was not valid UTF-8 and was dropped: a binary
                one leaves the transport usable; a text one is ``fatal`` (RFC 6455
                §8.1): the next call, or ``aclose``, closes with code 1007.
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer closed the WebSocket, sent bytes that are not
                WebSocket, or the network failed.
            RuntimeError: another task is already in ``receive_message``.

        Cancellation: safe; no data is lost and the transport stays usable.
        """
        self._check_usable()
        if self._receiving:
            raise RuntimeError("another task is already receiving on this transport")
        self._receiving = True
        try:
            while True:
                while self._events and not self._closed:
                    message = await self._handle_event(self._events.pop())
                    if message is not None:
                        return message
                if self._closed:
                    # aclose is waiting for the peer's close frame: read it for it.
                    await self._drain_until_close()
                    raise self._unusable_error()
                await self._read_more()
        finally:
            self._receiving = False

    async def _read_more(self) -> None:
        """Read one chunk and queue the events it produces."""
        if self._reactor is not None and not self._reactor.closed:
            await self._reactor_read()
            return
        try:
            data = await self._stream.receive_some(RECEIVE_CHUNK)
        except trio.ClosedResourceError as exc:
            raise self._unusable_error() from exc
        except (trio.BrokenResourceError, trio.BusyResourceError, OSError) as exc:
            await self._fail(f"{self._description}: receive failed: {exc!r}")
        if not data:
            self._eof = True
        try:
            # None tells wsproto the stream ended: it queues CloseConnection(1006).
            self._ws.receive_data(bytes(data) if data else None)
            self._events[:0] = list(self._ws.events())[::-1]
        except (LocalProtocolError, RemoteProtocolError) as exc:
            await self._fail(f"{self._description}: WebSocket protocol error: {exc}")

    # -- receiving through the reactor ------------------------------------------------------

    def set_receive_waker(self, waker: Callable[[], object] | None) -> None:
        """``IdleTransport``: called (from the reactor's task) when input arrives
        after ``receive_ready`` said there was none."""
        self._waker = waker

    def receive_ready(self) -> bool:
        """``IdleTransport``: whether ``receive_message`` would act without waiting.

        Always True without a reactor (the receiving task reads the socket itself).
        False resumes reading through the reactor, which calls the waker once
        something is queued.
        """
        if (
            self._events
            or self._closed
            or self._stream_closed
            or self._eof
            or self._read_error is not None
        ):
            return True
        reactor = self._reactor
        if reactor is None or reactor.closed:
            return True
        reactor.resume(self._reg)
        return False

    def receive_nowait(self) -> str | None:
        """``IdleTransport``: the next queued event's text, if it is a whole text
        message within the limit, with nothing else to do first; else None."""
        events = self._events
        if (
            not events
            or self._receiving
            or self._closed
            or self._broken is not None
            or self._text_parts
            or self._byte_parts
            or self._discarding
        ):
            return None
        event = events[-1]
        if (
            not isinstance(event, TextMessage)
            or not event.message_finished
            or utf8_size(event.data) > self._max_message_size
        ):
            return None  # for ``receive_message`` (joined, refused, handled)
        events.pop()
        return event.data

    def defer_receive(self, start: float, window: float) -> None:
        """``IdleTransport``: through the reactor (``ReadReactor.defer``), notice input
        at the end of the window it arrives in, with the other deferred sockets."""
        reactor = self._reactor
        if reactor is not None:
            reactor.defer(self._reg, start, window)

    def _wake_reader(self) -> None:
        """Tell the receiving task (or the owner, parked) that there is something to
        act on, and stop reading for it (an error, the end)."""
        if self._reactor is not None:
            self._reactor.pause(self._reg)
        self._notify()

    def _notify(self) -> None:
        """Tell the receiving task, or the owner parked for input, that messages
        are queued. The socket stays in the reactor's set: paused only if it is
        readable again before they are taken (``_read_ready``), so a request or a
        pong costs no ``epoll_ctl`` call."""
        if self._data_ready is not None:
            self._data_ready.set()
        if self._waker is not None:
            self._waker()

    async def _reactor_read(self) -> None:
        """Wait for the reactor to queue events (or record why it cannot)."""
        if self._stream_closed:
            raise self._unusable_error()
        reactor = self._reactor
        assert reactor is not None
        if self._read_error is None and not self._eof:
            ready = self._data_ready = trio.Event()
            reactor.resume(self._reg)
            try:
                await ready.wait()
            finally:
                self._data_ready = None
            if reactor.closed and not self._events:
                return  # the caller reads again, from the socket this time
        if self._stream_closed:
            raise self._unusable_error()
        if self._read_error is not None:
            await self._fail(self._read_error)
        if self._eof and not self._events:
            await self._fail(f"{self._description}: {self._ended}")

    def _on_readable(self) -> int:
        """The reactor's callback: read what is there, parse it, route it; returns
        the bytes read (the reactor's budget per pass).

        Never raises: whatever goes wrong is recorded for the receiving task, which
        it wakes (a reactor that had to catch it could only stop reading).
        """
        try:
            return self._read_ready()
        except Exception as exc:
            log.error("websocket read failed peer=%s", self._description, exc_info=True)
            self._read_error = f"{self._description}: read failed: {exc!r}"
            self._wake_reader()
            return 0

    def _read_ready(self) -> int:
        if self._reactor is None or self._reactor.closed:
            self._wake_reader()  # the reader reads for itself from now on
            return 0
        if self._events:
            # What was read before is not taken yet: read no more until it is (memory
            # stays bounded by one read); ``receive_ready`` or a receive resumes it.
            self._reactor.pause(self._reg)
            return 0
        try:
            data = self._reg_sock.recv(RECEIVE_CHUNK)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._read_error = f"{self._description}: receive failed: {exc!r}"
            self._wake_reader()
            return 0
        ws = self._ws
        if (
            data
            and isinstance(ws, FrameConnection)
            and not (self._text_parts or self._byte_parts or self._discarding)
        ):
            # The common case, a whole message in one read with nothing ahead of it
            # (a heartbeat pong, a request): no events to build and sort.
            text = ws.receive_text(data)
            if text is not None:
                self._events.append(TextMessage(data=text))
                self._notify()
                return len(data)
        if not data:
            self._eof = True
        try:
            # None tells the frame layer the stream ended: it queues CloseConnection(1006).
            ws.receive_data(data or None)
            events = list(ws.events())
        except (LocalProtocolError, RemoteProtocolError) as exc:
            self._read_error = f"{self._description}: WebSocket protocol error: {exc}"
            self._wake_reader()
            return len(data)
        # Control frames never need the receiving task when they can be dealt with here.
        queued: list[Event] = []
        for event in events:
            if isinstance(event, Pong):
                continue  # nothing to do (we never send pings)
            if isinstance(event, Ping) and self._pong_nowait(event):
                continue
            queued.append(event)
        if queued:
            self._events[:0] = queued[::-1]
        if self._eof:
            self._wake_reader()  # nothing more to read
        elif queued:
            self._notify()
        return len(data)

    def _pong_nowait(self, ping: Ping) -> bool:
        """Answer a ping from the reactor if the socket takes the pong whole, now."""
        if not self._nowait_ok or self._control or self._sending or not self._writable():
            return False
        data = self._ws.send(ping.response())
        try:
            sent = self._send_raw(data)
        except OSError:
            return False  # full or failed: the receiving task answers it
        if sent < len(data):
            # Flushed first by the next write; the owner learns of it through
            # ``write_pending`` (``IdleTransport``) when woken.
            self._control += data[sent:]
            if self._waker is not None:
                self._waker()
        return True

    async def _handle_event(self, event: Event) -> str | None:
        if isinstance(event, (TextMessage, BytesMessage)):
            return self._on_data(event)
        if isinstance(event, Ping):
            await self._send_control(event.response())
        elif isinstance(event, CloseConnection):
            await self._on_close(event)
        # Pong and anything else: nothing to do.
        return None

    def _on_data(self, event: TextMessage | BytesMessage) -> str | None:
        data = event.data
        size = utf8_size(data) if isinstance(data, str) else len(data)
        limit = self._max_message_size
        if self._discarding:
            self._buffered += size
        elif (
            event.message_finished
            and size <= limit
            and not self._text_parts
            and not self._byte_parts
        ):
            # Fast path: the whole message arrived in one piece.
            return data if isinstance(data, str) else decode_text(data)
        else:
            self._buffered += size
            if self._buffered > limit:
                # Its first characters stay: the owner answers it by its id.
                self._prefix = text_prefix([*self._text_parts, *self._byte_parts], data)
                self._discarding = True
                self._text_parts.clear()
                self._byte_parts.clear()
            elif isinstance(data, str):
                self._text_parts.append(data)
            else:
                self._byte_parts.append(data)
        if not event.message_finished:
            return None
        seen, self._buffered = self._buffered, 0
        if self._discarding:
            self._discarding = False
            log.info(
                "discarded oversized message peer=%s size=%d limit=%d",
                self._description,
                seen,
                limit,
            )
            prefix, self._prefix = self._prefix, ""
            raise MessageTooLarge(seen, limit, prefix=prefix)
        if isinstance(event, TextMessage):
            text = "".join(self._text_parts)
            self._text_parts.clear()
            return text
        joined = b"".join(self._byte_parts)
        self._byte_parts.clear()
        return decode_text(joined)

    async def _on_close(self, event: CloseConnection) -> NoReturn:
        reply: CloseConnection | None = None
        if self._eof:
            reason = "the peer closed the connection without a WebSocket close frame"
        elif self._ws.state is ConnectionState.REMOTE_CLOSING:
            reason = f"the peer closed the WebSocket (code {event.code}"
            reason += f", reason {event.reason!r})" if event.reason else ")"
            reply = event.response()
        elif self._ws.state is ConnectionState.CLOSED:
            # We had sent a close frame already; this one completes the handshake.
            reason = f"the WebSocket was closed (code {event.code})"
        else:
            if event.code == CloseReason.INVALID_FRAME_PAYLOAD_DATA and self._closing_code is None:
                # A text message that is not UTF-8 (RFC 6455 §8.1: fail the connection,
                # 1007). It is still an ARCP frame: its owner answers it first, by the
                # id in what was readable; the next receive (or aclose) closes.
                self._closing_code = (event.code, event.reason or "")
                prefix = text_prefix(self._text_parts)
                self._text_parts.clear()
                self._buffered = 0
                self._discarding = False
                self._events.append(event)
                raise MessageRefused("text message is not valid UTF-8", prefix=prefix, fatal=True)
            # wsproto could not parse what the peer sent; it suggests a close code.
            reason = f"WebSocket protocol error from the peer: {event.reason} (code {event.code})"
            reply = CloseConnection(code=event.code, reason=event.reason)
        # Broken first: a cancel while we answer must not leave the transport usable.
        self._mark_broken(f"{self._description}: {reason}")
        try:
            if reply is not None:
                with trio.move_on_after(self._close_timeout):
                    async with self._lock():
                        if not self._stream_closed and self._ws.state in _CAN_CLOSE:
                            with contextlib.suppress(TransportError):
                                await self._write(self._ws.send(reply))
        finally:
            await self._close_stream()
        raise self._unusable_error()

    async def _drain_until_close(self) -> None:
        """Read and discard until the peer's close frame or EOF (we sent ours)."""
        try:
            while True:
                while self._events:
                    if isinstance(self._events.pop(), CloseConnection):
                        return
                if self._broken is not None or self._stream_closed:
                    return
                await self._read_more()
        except TransportError:
            pass
        finally:
            # Also when cancelled: nobody is reading for aclose any more.
            self._note_close_seen()

    # -- closing --------------------------------------------------------------------------

    async def aclose(self, *, code: int = _NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the WebSocket: close frame, wait for the peer's, close the stream.

        Idempotent; never raises because of the peer. Bounded by ``close_timeout``.

        Args:
            code: the close code to send (1000 normal closure; 1011 internal error).
            reason: the close reason to send (truncated to fit a control frame).

        Cancellation: shielded; the stream is closed in every case.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._closing_code is not None:
            code, reason = self._closing_code  # the protocol error's own code (1007)
        try:
            with trio.move_on_after(self._close_timeout, shield=True):
                await self._closing_handshake(code, reason)
        finally:
            await self._close_stream()

    async def _closing_handshake(self, code: int, reason: str) -> None:
        if self._broken is not None or self._stream_closed:
            return
        try:
            async with self._lock():
                if self._writable(_CAN_CLOSE):
                    await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
        except (TransportError, LocalProtocolError):
            return
        if self._ws.state is not ConnectionState.LOCAL_CLOSING:
            return
        if self._receiving:
            # The receiving task reads the peer's close frame for us.
            if not self._close_was_seen:
                self._close_seen = self._close_seen or trio.Event()
                await self._close_seen.wait()
            return
        self._receiving = True
        try:
            await self._drain_until_close()
        finally:
            self._receiving = False


# == handshakes ===========================================================================


def _http_rejection(status: int, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A complete bodiless HTTP/1.1 error response that closes the connection."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [f"HTTP/1.1 {status} {phrase}".encode("ascii")]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"content-length: 0", b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def websocket_server_handshake(
    stream: trio.abc.Stream,
    *,
    path: str = "/arcp",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    description: str = "ws",
    reactor: ReadReactor | None = None,
    allow_origins: Sequence[str] | OriginPolicy | None = None,
) -> WebSocketTransport | None:
    """Answer a client's opening handshake on ``stream``.

    A request for another path (the query string is ignored) is refused with HTTP 404,
    a malformed upgrade with wsproto's suggested 4xx, a browser page whose ``Origin``
    ``allow_origins`` does not allow with HTTP 403 (:mod:`arcp_trio.transport.origin`:
    by default requests without an ``Origin`` only). No subprotocol and no extension
    is accepted (in particular not permessage-deflate, which ``websockets`` offers).

    Returns:
        The transport (reading through ``reactor`` when one is given and ``stream``
        is a socket), or ``None`` if the request was refused (the caller closes the
        stream).

    Raises:
        TransportBroken: the stream failed or ended during the handshake.

    Cancellation: unbounded on its own; callers wrap it in a timeout. The stream is
    not closed here.
    """
    policy = OriginPolicy.of(allow_origins)
    ws = WSConnection(ConnectionType.SERVER)
    request: Request | None = None
    try:
        while request is None:
            data = await stream.receive_some(RECEIVE_CHUNK)
            if not data:
                raise TransportBroken(f"{description}: peer closed during the WebSocket handshake")
            try:
                ws.receive_data(bytes(data))
            except RemoteProtocolError as exc:
                hint = exc.event_hint
                status = hint.status_code if isinstance(hint, RejectConnection) else 400
                headers = hint.headers if isinstance(hint, RejectConnection) else []
                log.info("refused malformed upgrade peer=%s error=%s", description, exc)
                await stream.send_all(_http_rejection(status, headers))
                return None
            for event in ws.events():
                if isinstance(event, Request):
                    request = event
                    break
        requested = urllib.parse.urlsplit(request.target).path
        if requested != path:
            log.info("refused upgrade peer=%s path=%r status=404", description, requested)
            await stream.send_all(_http_rejection(404))
            return None
        refusal = policy.check(request.extra_headers)
        if refusal is not None:
            # RFC 6455 §10.2 (check the origin), §4.2.2 (refuse with an HTTP error).
            log.info("refused upgrade peer=%s reason=%s status=403", description, refusal)
            await stream.send_all(_http_rejection(403))
            return None
        await stream.send_all(ws.send(AcceptConnection()))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise TransportBroken(f"{description}: WebSocket handshake failed: {exc!r}") from exc
    log.debug("accepted websocket peer=%s path=%s", description, path)
    # From here our own frame layer (wsframes): wsproto's costs several times the
    # CPU per frame and 1.5 KiB per connection. Like wsproto's server, it starts
    # with nothing buffered: a client sends no frame before the 101 (RFC 6455 §4.1).
    return WebSocketTransport(
        stream,
        FrameConnection(client=False),
        max_message_size=max_message_size,
        close_timeout=close_timeout,
        description=description,
        reactor=reactor,
    )


async def websocket_client_handshake(
    stream: trio.abc.Stream,
    *,
    host: str,
    resource: str = "/arcp",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    description: str = "ws",
) -> WebSocketTransport:
    """Perform the client's opening handshake on ``stream``.

    Args:
        stream: a connected byte stream (TCP, TLS or in-memory).
        host: the ``Host`` header value (``host`` or ``host:port``).
        resource: the request target, path plus optional query.

    Raises:
        TransportBroken: the server refused the upgrade (the message names the HTTP
            status), answered with something that is not a valid upgrade, or the
            stream failed.

    Cancellation: unbounded on its own; callers wrap it in a timeout. The stream is
    not closed here.
    """
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        await stream.send_all(ws.send(Request(host=host, target=resource)))
        while True:
            data = await stream.receive_some(RECEIVE_CHUNK)
            if not data:
                raise TransportBroken(
                    f"{description}: server closed the connection during the WebSocket handshake"
                )
            ws.receive_data(bytes(data))
            events = list(ws.events())
            for index, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    return WebSocketTransport(
                        stream,
                        ws,
                        max_message_size=max_message_size,
                        close_timeout=close_timeout,
                        description=description,
                        pending_events=events[index + 1 :],
                    )
                if isinstance(event, RejectConnection):
                    raise TransportBroken(
                        f"{description}: WebSocket upgrade of {resource!r} rejected "
                        f"with HTTP {event.status_code}"
                    )
    except RemoteProtocolError as exc:
        raise TransportBroken(f"{description}: invalid WebSocket handshake: {exc}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise TransportBroken(f"{description}: WebSocket handshake failed: {exc!r}") from exc


# == client ===============================================================================


@attrs.frozen
class _WebSocketURL:
    secure: bool
    host: str
    port: int
    resource: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def _parse_url(url: str) -> _WebSocketURL:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port if parts.port is not None else (443 if secure else 80)
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return _WebSocketURL(secure=secure, host=parts.hostname, port=port, resource=resource)


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


async def connect_websocket(
    url: str,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    connect_timeout: float = 10.0,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocketTransport:
    """Open a WebSocket to ``url`` (``ws://host:port/arcp``; ``wss://`` uses TLS).

    Args:
        url: the endpoint; path and query are sent as the request target.
        max_message_size: inbound limit per message, in bytes.
        connect_timeout: seconds for TCP connect, TLS and the upgrade together.
        close_timeout: seconds ``aclose`` spends on the closing handshake at most.
        ssl_context: for ``wss://``; defaults to ``ssl.create_default_context()``.

    Raises:
        ValueError: ``url`` is not a ws:// or wss:// URL.
        TransportBroken: the connection failed, timed out or the upgrade was refused.

    Cancellation: the half-open connection is closed.
    """
    target = _parse_url(url)
    description = f"ws {_format_address((target.host, target.port))}"
    with trio.move_on_after(connect_timeout):
        try:
            tcp = await trio.open_tcp_stream(target.host, target.port)
        except OSError as exc:
            raise TransportBroken(f"{description}: cannot connect to {url}: {exc}") from exc
        stream: trio.abc.Stream = tcp
        try:
            if target.secure:
                tls = trio.SSLStream(
                    tcp, ssl_context or ssl.create_default_context(), server_hostname=target.host
                )
                stream = tls
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    raise TransportBroken(f"{description}: TLS handshake failed: {exc}") from exc
            return await websocket_client_handshake(
                stream,
                host=target.host_header,
                resource=target.resource,
                max_message_size=max_message_size,
                close_timeout=close_timeout,
                description=description,
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    raise TransportBroken(f"{description}: timed out after {connect_timeout} s connecting to {url}")


# == server ===============================================================================


@attrs.frozen
class WebSocketServerInfo:
    """Where :func:`serve_websocket_transport` listens (reported via ``task_status``).

    Attributes:
        host: the bound address (as the socket reports it).
        port: the bound port (the real one when 0 was asked for).
        path: the endpoint path.
        secure: served over TLS (``wss://``).
    """

    host: str
    port: int
    path: str = "/arcp"
    #: Served over TLS (``wss://``).
    secure: bool = False

    @property
    def url(self) -> str:
        """``ws://host:port/path`` (``wss://`` when ``secure``)."""
        scheme = "wss" if self.secure else "ws"
        return f"{scheme}://{_format_address((self.host, self.port))}{self.path}"


async def serve_websocket_transport(
    handler: Callable[[Transport], Awaitable[None]],
    host: str,
    port: int,
    *,
    path: str = "/arcp",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    handshake_timeout: float = 10.0,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    use_reactor: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    allow_origins: Sequence[str] | OriginPolicy | None = None,
    task_status: trio.TaskStatus[WebSocketServerInfo] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept WebSocket connections on ``ws://host:port{path}`` until cancelled.

    Each connection gets its own task: the opening handshake (bounded by
    ``handshake_timeout``; any other path is refused with HTTP 404 and ``handler`` is
    not called), then ``await handler(transport)``, then ``transport.aclose()``.
    An exception from ``handler`` is logged at ERROR and closes that connection with
    code 1011; it never reaches the server or another connection.

    ``task_status.started`` receives a :class:`WebSocketServerInfo` with the bound
    port (``port=0`` picks a free one).

    ``use_reactor``: on Linux one task reads every connection's socket
    (:mod:`arcp_trio.transport.reactor`), so idle connections cost no wake-ups; False
    makes each connection's task read its own socket.

    ``ssl_context``: serve ``wss://`` (TLS, a server context with its certificate
    chain loaded). The TLS handshake counts towards ``handshake_timeout``. TLS
    connections are read by their own task (the reactor reads only plain sockets).

    ``allow_origins``: the browser pages that may connect
    (:class:`~arcp_trio.transport.origin.OriginPolicy`); others get HTTP 403 and
    ``handler`` is not called. By default only clients that send no ``Origin``.

    Raises:
        ValueError: an ``allow_origins`` entry is not an origin (before listening).

    Cancellation: stops accepting and cancels every connection's task.
    """
    policy = OriginPolicy.of(allow_origins)
    tcp_listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        bound = tcp_listeners[0].socket.getsockname()
        info = WebSocketServerInfo(
            host=str(bound[0]), port=int(bound[1]), path=path, secure=ssl_context is not None
        )
    except BaseException:
        for tcp_listener in tcp_listeners:
            await trio.aclose_forcefully(tcp_listener)
        raise
    listeners: list[trio.abc.Listener[Any]] = (
        list(tcp_listeners)
        if ssl_context is None
        else [
            # https_compatible: a peer may end TLS without close_notify (the WebSocket
            # closing handshake is what says the conversation is over).
            trio.SSLListener(listener, ssl_context, https_compatible=True)
            for listener in tcp_listeners
        ]
    )

    async def serve_connection(stream: trio.abc.Stream) -> None:
        tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        try:
            peer = (
                _format_address(tcp.socket.getpeername())
                if isinstance(tcp, trio.SocketStream)
                else "?"
            )
        except OSError:
            peer = "?"
        description = f"{'wss' if ssl_context is not None else 'ws'} {peer}"
        try:
            transport: WebSocketTransport | None = None
            with trio.move_on_after(handshake_timeout):
                transport = await websocket_server_handshake(
                    stream,
                    path=path,
                    max_message_size=max_message_size,
                    close_timeout=close_timeout,
                    description=description,
                    reactor=reactor,
                    allow_origins=policy,
                )
            if transport is None:
                log.info("websocket handshake timed out or refused peer=%s", peer)
                return
            try:
                await handler(transport)
            except Exception:
                log.error("websocket handler failed peer=%s", peer, exc_info=True)
                await transport.aclose(code=_INTERNAL_ERROR, reason="internal error")
            finally:
                await transport.aclose()
        except TransportError as exc:
            log.info("websocket handshake failed peer=%s reason=%s", peer, exc)
        except Exception:
            log.error("websocket connection failed peer=%s", peer, exc_info=True)
        finally:
            await trio.aclose_forcefully(stream)

    # One task reads every connection's socket (Linux); elsewhere each reads its own.
    reactor = ReadReactor() if use_reactor and reactor_available() else None
    log.info("serving websocket url=%s", info.url)
    async with trio.open_nursery() as nursery:
        if reactor is not None:
            nursery.start_soon(reactor.run)
        task_status.started(info)
        await trio.serve_listeners(serve_connection, listeners)
