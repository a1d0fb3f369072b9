"""NDJSON transport: one compact JSON text per line, UTF-8, over any Trio byte streams.

Used for stdio (``arcp-trio serve --stdio``, a runtime as a subprocess) and works over
any ``trio.abc.ReceiveStream`` / ``trio.abc.SendStream`` pair: pipes, sockets,
``trio.testing.memory_stream_pair``.

Framing: messages are separated by ``b"\\n"``; a trailing ``b"\\r"`` is dropped and
blank lines are skipped. Compact JSON never contains a raw newline, so a message that
does is refused on send (``ValueError``). A line longer than ``max_message_size`` is
skipped without being buffered (the transport reads on to the next newline) and
reported as ``MessageTooLarge``; the transport stays usable. End of input is
``TransportBroken``: a partial line at EOF is dropped, since it is most likely a write
torn by the peer's death.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, NoReturn

import trio

from arcp_trio.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MessageTooLarge,
    TransportState,
    decode_text,
    text_prefix,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["StreamTransport", "open_stdio_transport"]

log = logging.getLogger(__name__)

#: Bytes requested from the receive stream per read.
RECEIVE_CHUNK = 64 * 1024
#: Seconds ``aclose`` waits for a send in progress to finish at most.
DEFAULT_CLOSE_TIMEOUT = 2.0


class StreamTransport(TransportState):
    _ended = "stream closed"

    """The :class:`~arcp_trio.transport.base.Transport` interface as NDJSON over streams.

    Args:
        receive_stream: where inbound lines come from (owned from now on).
        send_stream: where outbound lines go (owned from now on; may be the same
            object as ``receive_stream`` for a bidirectional stream).
        max_message_size: inbound limit per line, in bytes (terminator excluded).
        close_timeout: seconds ``aclose`` lets a send in progress finish.
        description: peer description for logs.
    """

    def __init__(
        self,
        receive_stream: trio.abc.ReceiveStream,
        send_stream: trio.abc.SendStream,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        description: str = "stream",
    ) -> None:
        self._receive_stream = receive_stream
        self._send_stream = send_stream
        self._max_message_size = max_message_size
        self._close_timeout = close_timeout
        super().__init__(description)
        self._send_lock = trio.StrictFIFOLock()
        self._buffer = bytearray()
        # Where to resume looking for b"\n" in _buffer (everything before has none).
        self._scan_from = 0
        # Bytes of an oversized line skipped so far, or -1 when not skipping.
        self._skipped = -1
        #: The start of the oversized line being skipped (``MessageTooLarge.prefix``).
        self._prefix = ""
        self._streams_closed = False
        self._receiving = False

    # -- errors ---------------------------------------------------------------------------

    async def _fail(self, reason: str) -> NoReturn:
        """Mark the transport broken, close the streams, raise ``TransportBroken``."""
        if self._broken is None:
            self._broken = reason
            log.info("stream transport ended peer=%s reason=%s", self._description, reason)
        await self._close_streams()
        raise self._unusable_error()

    async def _close_streams(self) -> None:
        if not self._streams_closed:
            self._streams_closed = True
            # Twice for one bidirectional stream is fine: trio's aclose is idempotent.
            await trio.aclose_forcefully(self._send_stream)
            await trio.aclose_forcefully(self._receive_stream)

    # -- sending --------------------------------------------------------------------------

    async def send_message(self, message: str) -> None:
        """Send one line (see :meth:`send_messages`)."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Write every message as a line, all in one ``send_all``.

        Raises:
            ValueError: a message is empty or contains a newline (nothing is sent).
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer went away or the stream failed.

        Cancellation: cancelled before the write starts, nothing is sent; cancelled
        part-way through it, the transport is broken and its streams closed.
        """
        for message in messages:
            if not message or "\n" in message:
                raise ValueError("an NDJSON message must be non-empty and contain no newline")
        self._check_usable()
        data = ("\n".join(messages) + "\n").encode("utf-8") if messages else b""
        async with self._send_lock:
            self._check_usable()
            if not data:
                return
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                await self._send_stream.send_all(data)
            except trio.ClosedResourceError as exc:
                raise self._unusable_error() from exc
            except (trio.BrokenResourceError, trio.BusyResourceError, OSError) as exc:
                await self._fail(f"{self._description}: send failed: {exc!r}")
            except BaseException:
                # Interrupted inside send_all: the peer may hold half a line, so nothing
                # else may be written on this stream.
                if self._broken is None:
                    self._broken = f"{self._description}: a send was interrupted part-way"
                await self._close_streams()
                raise

    # -- receiving ------------------------------------------------------------------------

    async def receive_message(self) -> str:
        """Return the next non-blank line, decoded as UTF-8.

        Raises:
            MessageTooLarge: a line over ``max_message_size`` was skipped (its first
                characters kept as ``prefix``).
            MessageRefused: a line was not valid UTF-8 and was skipped (the transport
                stays usable: every line is a message of its own).
            TransportClosed: ``aclose`` was called.
            TransportBroken: end of input, or the stream failed.
            RuntimeError: another task is already in ``receive_message``.

        Cancellation: safe; no data is lost and the transport stays usable.
        """
        self._check_usable()
        if self._receiving:
            raise RuntimeError("another task is already receiving on this transport")
        self._receiving = True
        try:
            while True:
                message = self._next_line()
                if message is not None:
                    return message
                await self._read_more()
        finally:
            self._receiving = False

    def _next_line(self) -> str | None:
        """The next complete message in the buffer, or None if more input is needed."""
        buffer = self._buffer
        limit = self._max_message_size
        while True:
            if self._skipped >= 0:
                end = buffer.find(b"\n")
                if end < 0:
                    self._skipped += len(buffer)
                    buffer.clear()
                    return None
                size = self._skipped + end
                self._skipped = -1
                del buffer[: end + 1]
                self._too_large(size)
            end = buffer.find(b"\n", self._scan_from)
            if end < 0:
                # One byte of slack for a "\r" that may precede the newline.
                if len(buffer) > limit + 1:
                    self._skipped = len(buffer)
                    self._prefix = text_prefix([], buffer)
                    buffer.clear()
                    self._scan_from = 0
                else:
                    self._scan_from = len(buffer)
                return None
            line = buffer[:end]
            del buffer[: end + 1]
            self._scan_from = 0
            if line.endswith(b"\r"):
                del line[-1:]
            if len(line) > limit:
                self._prefix = text_prefix([], line)
                self._too_large(len(line))
            if line and not line.isspace():
                return decode_text(line)

    def _too_large(self, size: int) -> NoReturn:
        log.info(
            "discarded oversized line peer=%s size=%d limit=%d",
            self._description,
            size,
            self._max_message_size,
        )
        prefix, self._prefix = self._prefix, ""
        raise MessageTooLarge(size, self._max_message_size, prefix=prefix)

    async def _read_more(self) -> None:
        try:
            data = await self._receive_stream.receive_some(RECEIVE_CHUNK)
        except trio.ClosedResourceError as exc:
            raise self._unusable_error() from exc
        except (trio.BrokenResourceError, trio.BusyResourceError, OSError) as exc:
            await self._fail(f"{self._description}: receive failed: {exc!r}")
        if not data:
            if self._closed:
                raise self._unusable_error()
            if self._buffer or self._skipped >= 0:
                log.debug(
                    "dropping an unterminated line at end of input peer=%s size=%d",
                    self._description,
                    len(self._buffer) + max(self._skipped, 0),
                )
            await self._fail(f"{self._description}: end of input (the peer closed the stream)")
        self._buffer += data

    # -- closing --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close both streams (the peer sees end of input).

        Idempotent; never raises because of the peer. Waits at most ``close_timeout``
        for a send in progress to finish so no line is cut in half.

        Cancellation: shielded; the streams are closed in every case.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        acquired = False
        try:
            with trio.move_on_after(self._close_timeout, shield=True):
                await self._send_lock.acquire()
                acquired = True
        finally:
            try:
                await self._close_streams()
            finally:
                if acquired:
                    self._send_lock.release()


def open_stdio_transport(
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> StreamTransport:
    """An NDJSON transport over this process's stdin and stdout.

    The file descriptors are duplicated, so closing the transport leaves fds 0 and 1
    open. Trio puts the underlying open files in non-blocking mode while the transport
    is open (restored on close): nothing else should read stdin or write stdout
    meanwhile (log to stderr). Pipes, sockets and TTYs work; not on Windows.
    """
    if sys.platform == "win32":  # pragma: no cover
        raise NotImplementedError("the stdio transport needs a Unix-like platform")
    receive_stream = trio.lowlevel.FdStream(os.dup(0))
    try:
        send_stream = trio.lowlevel.FdStream(os.dup(1))
    except BaseException:
        receive_stream.close()
        raise
    return StreamTransport(
        receive_stream,
        send_stream,
        max_message_size=max_message_size,
        close_timeout=close_timeout,
        description="stdio",
    )
