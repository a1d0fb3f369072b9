"""An ARCP transport over a trio-websocket connection (the ``trio-websocket`` extra:
``pip install 'arcp-trio[trio-websocket]'``).

For a service that already runs ``trio_websocket.serve_websocket``: its handler
accepts the request and hands the connection to the runtime::

    async def handler(request: WebSocketRequest) -> None:
        transport = await accept_trio_websocket(request, allow_origins=[...])
        if transport is not None:
            await runtime.handle_transport(transport)

(``arcp_trio.runtime.serve.serve_trio_websocket_request`` is exactly that.) Or, with
a connection accepted some other way: ``TrioWebSocketTransport(ws)``.

trio-websocket owns the socket: it answers pings, runs the closing handshake and
reads in its own task, queueing whole messages (``message_queue_size``, 1 by
default). This module maps its events and errors onto the
:class:`~arcp_trio.transport.base.Transport` interface: text and binary messages
(binary ones decoded as UTF-8, as the native transport does), a message over
``max_message_size`` refused with ``MessageTooLarge`` (recoverable), and
``ConnectionClosed`` as ``TransportBroken`` (the peer) or ``TransportClosed`` (us).

trio-websocket has its own limit (``serve_websocket(max_message_size=)``, 1 MiB of
``len()`` by default): a message over *that* one makes it close the connection with
code 1009 before this module sees it, as the reference SDK's server does. Give it a
larger limit than the runtime's for the runtime's recoverable refusal instead; it
still bounds what trio-websocket buffers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

try:
    from trio_websocket import ConnectionClosed, WebSocketConnection
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the trio-websocket adapter needs its extra: pip install 'arcp-trio[trio-websocket]'"
    ) from exc

from arcp_trio.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MessageTooLarge,
    TransportBroken,
    TransportError,
    TransportState,
    decode_text,
    text_prefix,
    utf8_size,
)
from arcp_trio.transport.origin import OriginPolicy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from trio_websocket import WebSocketRequest

__all__ = ["TrioWebSocketTransport", "accept_trio_websocket"]

log = logging.getLogger(__name__)

#: Seconds ``aclose`` waits for the closing handshake at most.
DEFAULT_CLOSE_TIMEOUT = 2.0
_NORMAL_CLOSURE = 1000


def _describe(peer: WebSocketConnection | WebSocketRequest) -> str:
    """``trio-websocket HOST:PORT`` for logs (``?`` once the socket is gone)."""
    try:
        remote = peer.remote
    except OSError:
        return "trio-websocket ?"
    if isinstance(remote, str):
        return f"trio-websocket {remote}"
    host = str(remote.address)
    host = f"[{host}]" if ":" in host else host
    return f"trio-websocket {host}:{remote.port}"


class TrioWebSocketTransport(TransportState):
    _ended = "connection closed"

    """The :class:`~arcp_trio.transport.base.Transport` interface over an open
    ``trio_websocket.WebSocketConnection``.

    Args:
        ws: the connection, accepted (owned from now on: ``aclose`` closes it).
        max_message_size: inbound limit per message, in bytes (UTF-8).
        close_timeout: seconds ``aclose`` spends on the closing handshake at most.
        description: peer description for logs (default: the remote address).
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        description: str | None = None,
    ) -> None:
        super().__init__(description or _describe(ws))
        self._ws = ws
        self._max_message_size = max_message_size
        self._close_timeout = close_timeout
        self._receiving = False
        #: A send was interrupted part-way: nothing more may be written, not even a
        #: close frame (the peer would read it as the rest of the torn frame).
        self._torn = False

    def _closed_error(self, exc: ConnectionClosed) -> TransportError:
        """The error for a ``ConnectionClosed`` from trio-websocket."""
        if not self._closed and self._broken is None:
            reason = exc.reason
            if reason is None:
                self._broken = f"{self._description}: {self._ended}"
            else:
                self._broken = f"{self._description}: the WebSocket was closed (code {reason.code}"
                self._broken += f", reason {reason.reason!r})" if reason.reason else ")"
            log.info("websocket ended peer=%s reason=%s", self._description, self._broken)
        return self._unusable_error()

    # -- sending --------------------------------------------------------------------------

    async def send_message(self, message: str) -> None:
        """Send one text message (see :meth:`send_messages`)."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Send one text message per item, in order (trio-websocket writes each
        frame itself, under its own lock, so concurrent senders never interleave).

        Raises:
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer closed the WebSocket or the network failed.

        Cancellation: cancelled before a write starts, nothing more is sent and the
        transport stays usable; cancelled part-way through one, the transport is
        broken and ``aclose`` closes the socket without another frame.
        """
        self._check_usable()
        await trio.lowlevel.checkpoint_if_cancelled()
        for text in messages:
            self._check_usable()
            try:
                await self._ws.send_message(text)
            except ConnectionClosed as exc:
                raise self._closed_error(exc) from None
            except BaseException:
                # Cancelled inside trio-websocket's write: part of a frame may be out.
                self._torn = True
                if self._broken is None:
                    self._broken = f"{self._description}: a send was interrupted part-way"
                raise

    # -- receiving ------------------------------------------------------------------------

    async def receive_message(self) -> str:
        """Return the next message (text, or binary decoded as UTF-8).

        Raises:
            MessageTooLarge: a message over ``max_message_size`` was dropped.
            MessageRefused: a binary message was not UTF-8 (dropped; still usable).
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer closed the WebSocket, or the network failed.
            RuntimeError: another task is already in ``receive_message``.

        Cancellation: safe (trio-websocket queues whole messages); nothing is lost.
        """
        self._check_usable()
        if self._receiving:
            raise RuntimeError("another task is already receiving on this transport")
        self._receiving = True
        try:
            message = await self._ws.get_message()
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from None
        finally:
            self._receiving = False
        size = utf8_size(message) if isinstance(message, str) else len(message)
        if size > self._max_message_size:
            log.info(
                "discarded oversized message peer=%s size=%d limit=%d",
                self._description,
                size,
                self._max_message_size,
            )
            raise MessageTooLarge(size, self._max_message_size, prefix=text_prefix([message]))
        return message if isinstance(message, str) else decode_text(message)

    # -- closing --------------------------------------------------------------------------

    async def aclose(self, *, code: int = _NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the WebSocket: close frame, the peer's reply, then the socket.

        Idempotent; never raises. Bounded by ``close_timeout``: then (and after a torn
        write) the socket is closed without waiting.

        Cancellation: shielded; the connection is closed in every case.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            done = False
            if not self._torn:
                with trio.move_on_after(self._close_timeout):
                    await self._ws.aclose(code=code, reason=reason or None)
                    done = True
            if not done:
                # Closes the socket without writing: under a cancelled scope
                # trio-websocket's own aclose sends nothing and closes its stream.
                await trio.aclose_forcefully(self._ws)


async def accept_trio_websocket(
    request: WebSocketRequest,
    *,
    allow_origins: Sequence[str] | OriginPolicy | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> TrioWebSocketTransport | None:
    """Accept a trio-websocket upgrade request as an ARCP transport.

    A browser page whose ``Origin`` ``allow_origins`` does not allow
    (:mod:`arcp_trio.transport.origin`) is refused with HTTP 403 and None is
    returned. No subprotocol is chosen.

    Raises:
        ValueError: an ``allow_origins`` entry is not an origin.
        TransportBroken: the connection failed while answering.
    """
    policy = OriginPolicy.of(allow_origins)
    description = _describe(request)
    refusal = policy.check(request.headers)
    try:
        if refusal is not None:
            # RFC 6455 §10.2 (check the origin), §4.2.2 (refuse with an HTTP error).
            log.info("refused upgrade peer=%s reason=%s status=403", description, refusal)
            await request.reject(403)
            return None
        ws = await request.accept()
    except ConnectionClosed as exc:
        raise TransportBroken(f"{description}: the upgrade failed: {exc!r}") from exc
    return TrioWebSocketTransport(
        ws,
        max_message_size=max_message_size,
        close_timeout=close_timeout,
        description=description,
    )
