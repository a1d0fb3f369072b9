"""The transport interface every ARCP carrier implements, and its errors.

A transport moves complete JSON texts (one ARCP envelope each) between two peers. It
knows nothing about envelopes: framing, size limits, liveness of the carrier and error
mapping live here; decoding lives in ``arcp_trio.wire``.

Error tree (all under :class:`~arcp_trio.wire.errors.ARCPError`)::

    TransportError          something went wrong with the carrier
    ├─ TransportClosed      *we* closed it (``aclose`` was called)
    ├─ TransportBroken      the peer closed it, or the network failed
    ├─ MessageTooLarge      one inbound message was over the limit and was dropped;
    │                       the transport is still usable (recoverable)
    └─ MessageRefused       one inbound message was not text (not UTF-8) and was
                            dropped; usable unless ``fatal`` (a WebSocket text
                            message must be UTF-8, RFC 6455 §8.1)

Both refusals keep the first ``REFUSED_PREFIX`` characters that could be read
(``prefix``), so the owner can answer the message by its id (WIRE.md "Errors are
correlated") before anything is closed.

No trio, wsproto or OS exception type escapes a transport: each implementation maps
them at its edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from arcp_trio.wire.errors import ARCPError
from arcp_trio.wire.limits import ID_SCAN_CHARS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "REFUSED_PREFIX",
    "IdleTransport",
    "MessageRefused",
    "MessageTooLarge",
    "Transport",
    "TransportBroken",
    "TransportClosed",
    "TransportError",
    "TransportState",
    "decode_text",
    "text_prefix",
    "utf8_size",
]

#: Inbound messages larger than this many bytes are refused by default (1 MiB, the
#: ``websockets`` library default the reference SDK runs with; WIRE.md §1).
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

#: Characters of a refused message kept for its owner (``MessageTooLarge.prefix``): as
#: many as ``codec.recover_id`` reads for the message's id.
REFUSED_PREFIX = ID_SCAN_CHARS


class TransportError(ARCPError):
    """The carrier under a session failed or was closed (code ``INTERNAL_ERROR``)."""


class TransportClosed(TransportError):
    """We closed this transport (``aclose`` was called); it cannot be used any more."""


class TransportBroken(TransportError):
    """The peer closed the transport, or the network failed under it."""


class MessageTooLarge(TransportError):
    """An inbound message exceeded the transport's limit and was discarded.

    Recoverable: the transport stays usable and the next ``receive_message`` returns
    the next message.

    Attributes:
        size: bytes of the message seen before giving up (at least ``limit + 1``; the
            whole message when the transport had to read it all to skip it).
        limit: the transport's ``max_message_size``.
        prefix: the message's first characters (up to ``REFUSED_PREFIX``).
    """

    def __init__(self, size: int, limit: int, *, prefix: str = "") -> None:
        super().__init__(f"inbound message of at least {size} bytes exceeds the limit of {limit}")
        self.size = size
        self.limit = limit
        self.prefix = prefix


class MessageRefused(TransportError):
    """An inbound message could not be read as text (invalid UTF-8) and was dropped.

    Attributes:
        reason: what was wrong with it.
        prefix: what decoded before the first bad byte (up to ``REFUSED_PREFIX``).
        fatal: the transport ends after this (a WebSocket peer that sends a text
            message that is not UTF-8 must be failed, RFC 6455 §8.1: the next
            ``receive_message`` and ``aclose`` do it, with close code 1007). The owner
            answers the message first. When False the transport stays usable.
    """

    def __init__(self, reason: str, *, prefix: str = "", fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.prefix = prefix
        self.fatal = fatal


def text_prefix(
    parts: Sequence[str | bytes | bytearray], more: str | bytes | bytearray = b""
) -> str:
    """The first ``REFUSED_PREFIX`` characters of a message being assembled (bytes
    are read as UTF-8, as far as they decode)."""
    out = ""
    for part in [*parts, more]:
        piece = (
            part
            if isinstance(part, str)
            else bytes(part[: REFUSED_PREFIX * 4]).decode("utf-8", "ignore")
        )
        out += piece[: REFUSED_PREFIX - len(out)]
        if len(out) >= REFUSED_PREFIX:
            break
    return out


def decode_text(data: bytes | bytearray, *, fatal: bool = False) -> str:
    """``data`` as UTF-8, strictly.

    Raises:
        MessageRefused: not UTF-8; its ``prefix`` is what decoded before the first bad
            byte.
    """
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        readable = bytes(data[: min(exc.start, REFUSED_PREFIX * 4)]).decode("utf-8", "ignore")
        raise MessageRefused(
            f"message is not valid UTF-8 (byte {exc.start})",
            prefix=readable[:REFUSED_PREFIX],
            fatal=fatal,
        ) from None


@runtime_checkable
class Transport(Protocol):
    """A bidirectional carrier of complete JSON texts.

    Concurrency: one task may call ``receive_message`` in a loop while other tasks call
    ``send_message``/``send_messages``; sends are serialized internally and never
    interleave. Two concurrent ``receive_message`` calls are a bug (``RuntimeError``).
    """

    async def send_message(self, message: str) -> None:
        """Send one complete JSON text.

        Raises:
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer or network failed, now or before.

        Cancellation: if cancelled part-way through a write the transport is broken
        (later calls raise ``TransportBroken``); it never goes on after a torn write.
        """
        ...

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Send several texts, in order, in as few carrier writes as possible.

        Same errors and cancellation semantics as :meth:`send_message`.
        """
        ...

    async def receive_message(self) -> str:
        """Wait for the next complete inbound message.

        Raises:
            MessageTooLarge: a message over the limit was discarded (recoverable).
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer closed the transport or the network failed.
        """
        ...

    async def aclose(self) -> None:
        """Close the transport. Idempotent, bounded in time, never raises."""
        ...

    @property
    def description(self) -> str:
        """A short human-readable name of the peer for logs, e.g. ``ws 127.0.0.1:5555``."""
        ...


@runtime_checkable
class IdleTransport(Protocol):
    """A transport an idle connection costs next to nothing on (optional).

    The runtime's connections check for it once. With it, a connection with nothing to
    read or write holds no task in ``receive_message`` and no nursery: its task parks
    until the waker is called, and one-off frames (heartbeat pings, pongs,
    acknowledgements) go out without waking it. On a server reading through a
    ``ReadReactor`` nothing in that task waits on the socket, and the reactor runs no
    code of the transport's owner: it only calls the waker.

    Wrappers (chaos, recording) need not implement it: their connections keep a task
    waiting in ``receive_message`` and write every frame through ``send_messages``.
    A transport that cannot tell when input is there may still implement it:
    ``receive_ready`` then always returns True (the connection keeps a task waiting
    in ``receive_message``), and ``defer_receive`` and ``set_receive_waker`` do nothing.

    Every method is synchronous and never raises; errors are reported by
    ``send_messages`` and ``receive_message``.
    """

    def send_nowait(self, message: str) -> bool:
        """Take ``message`` now if that needs no waiting.

        True: the message is taken, in order after everything sent before. Part of it
        may still wait in the transport (``write_pending``); the next
        ``send_messages`` call, even with no messages, writes that first.
        False: nothing was taken (busy, full, closed or broken); send it with
        ``send_messages``, which reports any error.
        """
        ...

    @property
    def write_pending(self) -> bool:
        """Bytes taken by ``send_nowait`` wait for the next ``send_messages`` call.

        So may bytes the transport wrote on its own (the answer to a WebSocket ping,
        read by a ``ReadReactor``): then it also calls the waker."""
        ...

    def receive_ready(self) -> bool:
        """True: ``receive_message`` has something to act on without waiting for the
        network (a queued message, an error, the end of the stream), or this transport
        cannot tell. False: nothing is there; the waker will be called when it is."""
        ...

    def receive_nowait(self) -> str | None:
        """The next message, if it is queued whole and returning it needs nothing
        else (no waiting, no reply, no error): exactly what ``receive_message`` would
        return next. None otherwise: nothing is queued, or what is queued needs
        ``receive_message`` (an error, a control frame, the end), or a
        ``receive_message`` call is in progress."""
        ...

    def set_receive_waker(self, waker: Callable[[], object] | None) -> None:
        """``waker()`` is called, synchronously and from any task, when input arrives
        after ``receive_ready`` returned False (what it returns is ignored). It
        should only reschedule its owner's task, reading and handling nothing (on a
        server it runs in the ``ReadReactor``'s task); it must not raise. Spurious
        calls are allowed."""
        ...

    def defer_receive(self, start: float, window: float) -> None:
        """From Trio time ``start`` on, input may be noticed up to ``window`` seconds
        after it arrives (never later), so that it is read in a batch with other
        deferred input; nothing is lost or reordered.

        The runtime's connections call it right after sending a heartbeat ping
        (§6.4): the pong needs no prompt handling, and a server reading through a
        ``ReadReactor`` then wakes once for the pongs to one batch of pings.
        """
        ...


class TransportState:
    """The closed/broken bookkeeping every transport keeps, and the errors it maps to.

    ``_closed``: *we* called ``aclose``. ``_broken``: why the peer or the network ended
    it (None while it works). Subclasses set ``_ended`` to what ``TransportBroken`` says
    when no reason was recorded.
    """

    _ended = "transport ended"

    def __init__(self, description: str) -> None:
        self._description = description
        self._closed = False
        self._broken: str | None = None

    @property
    def description(self) -> str:
        """A short name of the peer for logs (as passed to the constructor)."""
        return self._description

    def _unusable_error(self) -> TransportError:
        if self._closed:
            return TransportClosed(f"{self._description}: transport closed")
        return TransportBroken(self._broken or f"{self._description}: {self._ended}")

    def _check_usable(self) -> None:
        if self._closed or self._broken is not None:
            raise self._unusable_error()


def utf8_size(text: str) -> int:
    """Length of ``text`` encoded as UTF-8, without encoding ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
