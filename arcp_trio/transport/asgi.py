"""ARCP over the WebSocket of an ASGI server: the transport, and an app's body for it.

For mounting the runtime inside a web service (``arcp_trio.asgi.ARCPApp`` is the
application; this module is the part that knows nothing of runtimes). It needs a
Trio event loop: hypercorn's trio worker, or any server that runs ASGI apps on Trio.

Theory of operation
-------------------
An ASGI server gives a ``websocket`` scope two callables, ``receive`` and ``send``.
:func:`serve_asgi_websocket` is what an app does with them: wait for
``websocket.connect``, check the request (path, ``Origin``:
:mod:`arcp_trio.transport.origin`), accept it with no subprotocol, then run
``handler(transport)`` with an :class:`ASGIWebSocketTransport` until it returns, and
close.

Every call to the server's ``receive`` and ``send`` is made by the scope's own task
(the one the server started the app in) and its children: the transport's
:meth:`~ASGIWebSocketTransport.run`, which :func:`serve_asgi_websocket` starts beside
the handler. The runtime's connection task only hands messages over and waits. So no
server sees its callables used from a task it does not know, and a write the server
cannot finish (hypercorn shields its socket writes: a peer that stops reading holds
one forever) holds the scope's task, never the runtime's: the runtime's connection
still ends when it must, and with it its nursery and the runtime's shutdown.

*Receiving.* The pump awaits ``receive()`` and hands each ``websocket.receive``
through a channel of capacity zero to whoever calls ``receive_message``, so at most
one message waits here on top of the server's own queue, and the server's reads wait
while the runtime does (back-pressure down to TCP). ``receive_message`` waits on that
channel: it is cancel-safe whatever the server's ``receive`` is, and ``aclose`` can
wake it. ``websocket.disconnect`` (the peer's close frame, or a lost connection) ends
the channel after the messages before it, and the transport is broken.

*Messages.* Text as it comes; binary decoded as UTF-8 (WIRE.md §1, as the native
transport does: invalid UTF-8 is ``MessageRefused`` and the transport stays usable).
A message over ``max_message_size`` is ``MessageTooLarge`` (recoverable), but only
after the server has assembled it: the server's own limit (hypercorn's
``websocket_max_message_size``, 16 MiB by default) bounds what it buffers, and it
closes the connection with 1009 above it. A text message that is not UTF-8 never
gets here: the server fails the connection with 1007 (RFC 6455 §8.1).

*Sending.* ``send_messages`` hands its batch to the writer (one ``websocket.send``
per message: ASGI cannot coalesce them, the server frames each) and waits until the
server has taken all of it, under a FIFO lock so batches never interleave. Cancelled
while the server writes, it cannot know what went out: the transport is broken and
nothing more is sent, not even the close.

*Closing.* ``aclose`` has the writer send ``websocket.close`` with its code, then
waits (bounded by ``close_timeout``) for ``websocket.disconnect``, which the server
reports once the peer has answered the close: returning earlier would let the server
drop the TCP connection, and the kernel's reset could destroy the last frames before
the peer reads them (RFC 6455 §7.1.1; the native transport waits the same way).

Errors of the server's callables are mapped here, as every transport maps its own:
``TransportBroken``, never the server's exception.
"""

from __future__ import annotations

import contextlib
import http
import logging
from typing import TYPE_CHECKING, Any

import trio

from arcp_trio.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MessageRefused,
    MessageTooLarge,
    TransportError,
    TransportState,
    decode_text,
    text_prefix,
    utf8_size,
)
from arcp_trio.transport.origin import OriginPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping, Sequence
    from typing import TypeAlias

    from arcp_trio.transport.base import Transport

    #: The ASGI 3 shapes, as Starlette spells them (any mapping is accepted).
    Scope: TypeAlias = MutableMapping[str, Any]
    Message: TypeAlias = MutableMapping[str, Any]
    Receive: TypeAlias = Callable[[], Awaitable[Message]]
    Send: TypeAlias = Callable[[Message], Awaitable[None]]

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "ASGIWebSocketTransport",
    "reject_asgi_websocket",
    "serve_asgi_websocket",
]

log = logging.getLogger(__name__)

#: Seconds ``aclose`` waits for the peer's close (and a send in progress) at most.
DEFAULT_CLOSE_TIMEOUT = 2.0

_NORMAL_CLOSURE = 1000
_POLICY_VIOLATION = 1008
_INTERNAL_ERROR = 1011
#: The ASGI extension that lets a websocket app answer with an HTTP response.
_HTTP_RESPONSE = "websocket.http.response"


class _Job:
    """One hand-over to the writer: ASGI send events, done when the server took them."""

    __slots__ = ("done", "events", "sent")

    def __init__(self, events: list[Message]) -> None:
        self.events = events
        self.done = trio.Event()
        #: All of ``events`` were taken by the server's ``send``.
        self.sent = False


class ASGIWebSocketTransport(TransportState):
    _ended = "the WebSocket was disconnected"

    """The :class:`~arcp_trio.transport.base.Transport` interface over an accepted
    ASGI WebSocket (see the module docstring).

    Built by :func:`serve_asgi_websocket`. Whoever builds one runs :meth:`run` with the
    scope's ``receive`` and ``send`` in the scope's task while it is in use: nothing
    moves otherwise.

    Args:
        max_message_size: inbound limit per message, in bytes.
        close_timeout: seconds ``aclose`` spends on the closing handshake at most.
        description: peer description for logs.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        description: str = "asgi",
    ) -> None:
        super().__init__(description)
        self._max_message_size = max_message_size
        self._close_timeout = close_timeout
        self._send_lock = trio.StrictFIFOLock()
        # Capacity zero both ways: the pump holds at most the one message it is
        # handing over, and a batch is the writer's only when it is idle.
        self._inbound: trio.MemorySendChannel[Message]
        self._received: trio.MemoryReceiveChannel[Message]
        self._inbound, self._received = trio.open_memory_channel(0)
        self._jobs_out: trio.MemorySendChannel[_Job]
        self._jobs_in: trio.MemoryReceiveChannel[_Job]
        self._jobs_out, self._jobs_in = trio.open_memory_channel(0)
        self._receiving = False
        #: The server said ``websocket.disconnect`` (or the pump ended).
        self._disconnected = trio.Event()

    def _done(self) -> bool:
        """Broken, or disconnected: nothing more can be sent."""
        return self._broken is not None or self._disconnected.is_set()

    def _mark_broken(self, reason: str) -> None:
        if self._broken is None and not self._closed:
            self._broken = reason
            log.info("websocket ended peer=%s reason=%s", self._description, reason)

    # -- the scope's side -----------------------------------------------------------------

    async def run(self, receive: Receive, send: Send) -> None:
        """Talk to the server for this transport until the WebSocket ends: read
        ``receive`` (the pump) and make the ``send`` calls handed over (the writer).
        Run it in the scope's own task or a child of it; it returns after
        ``websocket.disconnect``.

        Cancellation: the transport is broken (the server is ending the scope).
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, send)
            await self._pump(receive)
            nursery.cancel_scope.cancel()  # nothing can go out any more

    async def _pump(self, receive: Receive) -> None:
        reason = f"{self._description}: the ASGI app was cancelled"
        try:
            while True:
                event = await receive()
                kind = event.get("type")
                if kind == "websocket.receive":
                    # Closed by us: dropped while the peer answers the close.
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self._inbound.send(event)
                elif kind == "websocket.disconnect":
                    code = event.get("code", 1005)
                    reason = f"{self._description}: the WebSocket was closed (code {code})"
                    return
                # Anything else is not for a connected WebSocket: ignored.
        except Exception as exc:
            reason = f"{self._description}: the ASGI server's receive failed: {exc!r}"
        finally:
            self._mark_broken(reason)
            self._disconnected.set()
            # After the messages before it: receive_message raises from here on.
            self._inbound.close()

    async def _write(self, send: Send) -> None:
        try:
            async for job in self._jobs_in:
                try:
                    await self._perform(job, send)
                finally:
                    job.done.set()
        finally:
            self._jobs_in.close()  # later hand-overs fail at once

    async def _perform(self, job: _Job, send: Send) -> None:
        for event in job.events:
            if self._done():
                return
            try:
                await send(event)
            except Exception as exc:
                self._mark_broken(f"{self._description}: the ASGI server's send failed: {exc!r}")
                return
            except BaseException:
                self._mark_broken(f"{self._description}: the ASGI app was cancelled")
                raise
        job.sent = True

    async def _hand_over(self, events: list[Message]) -> None:
        """Have the writer send ``events`` and wait until the server took them.

        Raises:
            TransportBroken: they were not all sent (disconnected, or the server's
                ``send`` failed).
        """
        job = _Job(events)
        try:
            await self._jobs_out.send(job)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._unusable_error() from None
        try:
            await job.done.wait()
        except BaseException:
            # Cancelled while the server writes: what went out is unknown, so
            # nothing may follow it.
            self._mark_broken(f"{self._description}: a send was interrupted part-way")
            raise
        if not job.sent:
            raise self._unusable_error()

    # -- receiving ------------------------------------------------------------------------

    async def receive_message(self) -> str:
        """Return the next message (text, or binary decoded as UTF-8).

        Raises:
            MessageTooLarge: a message over ``max_message_size`` was dropped.
            MessageRefused: a binary message was not UTF-8 (dropped; still usable).
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer closed the WebSocket or the connection was lost.
            RuntimeError: another task is already in ``receive_message``.

        Cancellation: safe; no message is lost and the transport stays usable.
        """
        self._check_usable()
        if self._receiving:
            raise RuntimeError("another task is already receiving on this transport")
        self._receiving = True
        try:
            event = await self._received.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._unusable_error() from None
        finally:
            self._receiving = False
        return self._text_of(event)

    def _text_of(self, event: Message) -> str:
        limit = self._max_message_size
        text, data = event.get("text"), event.get("bytes")
        message: str | bytes
        if text is not None:
            message, size = str(text), utf8_size(text)
        elif data is not None:
            message = bytes(data)
            size = len(message)
        else:
            raise MessageRefused("a websocket.receive event with neither text nor bytes")
        if size > limit:
            log.info(
                "discarded oversized message peer=%s size=%d limit=%d",
                self._description,
                size,
                limit,
            )
            raise MessageTooLarge(size, limit, prefix=text_prefix([message]))
        return message if isinstance(message, str) else decode_text(message)

    # -- sending --------------------------------------------------------------------------

    async def send_message(self, message: str) -> None:
        """Send one text message (see :meth:`send_messages`)."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Send one ``websocket.send`` per message, in order; return once the server
        has taken them all. Concurrent batches never interleave.

        Raises:
            TransportClosed: ``aclose`` was called.
            TransportBroken: the peer closed the WebSocket, or the server's ``send``
                failed.

        Cancellation: cancelled before the server takes the batch, nothing is sent
        and the transport stays usable; cancelled while it writes, the transport is
        broken.
        """
        self._check_usable()
        async with self._send_lock:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_usable()
            if messages:
                await self._hand_over([{"type": "websocket.send", "text": t} for t in messages])

    # -- closing --------------------------------------------------------------------------

    async def aclose(self, *, code: int = _NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the WebSocket: ``websocket.close``, then wait for the disconnect.

        Idempotent; never raises. Bounded by ``close_timeout`` (a send in progress
        counts towards it).

        Args:
            code: the close code (1000 normal closure; 1011 internal error).
            reason: the close reason (sent where the server supports it).

        Cancellation: shielded; bounded by ``close_timeout``.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        # receive_message raises TransportClosed; the pump drops what still comes.
        self._received.close()
        with trio.move_on_after(self._close_timeout, shield=True):
            if self._done():
                return
            async with self._send_lock:
                if self._done():  # re-read: a send or the pump may have ended it
                    return
                close: Message = {"type": "websocket.close", "code": code}
                if reason:
                    close["reason"] = reason[:120]
                try:
                    await self._hand_over([close])
                except TransportError as exc:
                    log.info("websocket close failed peer=%s error=%s", self._description, exc)
                    return
            await self._disconnected.wait()


def _describe(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "asgi ?"
    host, port = client[0], client[1]
    return f"asgi [{host}]:{port}" if ":" in str(host) else f"asgi {host}:{port}"


def _route_path(scope: Scope) -> str:
    """The request path below the app's mount point (ASGI: ``path`` includes
    ``root_path``)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


async def _deny(scope: Scope, send: Send, status: int) -> None:
    """Refuse the upgrade (before ``websocket.accept``) with HTTP ``status``."""
    if _HTTP_RESPONSE in (scope.get("extensions") or {}):
        body = http.HTTPStatus(status).phrase.encode("ascii") + b"\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # Without the extension the only refusal ASGI has: the server answers 403.
        await send({"type": "websocket.close", "code": _POLICY_VIOLATION})


async def reject_asgi_websocket(scope: Scope, receive: Receive, send: Send, status: int) -> None:
    """Refuse a ``websocket`` scope's upgrade with HTTP ``status``.

    With the ``websocket.http.response`` ASGI extension (hypercorn, uvicorn) the
    client gets ``status``; without it, 403 (``websocket.close`` before accepting,
    the one refusal plain ASGI has).
    """
    event = await receive()
    if event.get("type") == "websocket.connect":
        await _deny(scope, send, status)


async def serve_asgi_websocket(
    handler: Callable[[Transport], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    path: str | None = None,
    allow_origins: Sequence[str] | OriginPolicy | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> None:
    """Serve one ASGI ``websocket`` scope: check, accept, ``await handler(transport)``,
    close.

    Refused before the upgrade (``handler`` is not called): another path than
    ``path`` (below ``root_path``; None accepts any, the host app routes) with 404;
    a browser page whose ``Origin`` ``allow_origins`` does not allow with 403
    (:mod:`arcp_trio.transport.origin`; by default no page, every client that sends
    no ``Origin``). No subprotocol is chosen. An exception from ``handler`` is logged
    at ERROR and closes the WebSocket with 1011; it does not reach the server.

    Cancellation: the WebSocket is closed (bounded by ``close_timeout``).
    """
    policy = OriginPolicy.of(allow_origins)
    description = _describe(scope)
    event = await receive()
    if event.get("type") != "websocket.connect":
        return  # gone before it could be accepted
    if path is not None and _route_path(scope) != path:
        log.info("refused upgrade peer=%s path=%r status=404", description, _route_path(scope))
        await _deny(scope, send, 404)
        return
    refusal = policy.check(scope.get("headers") or ())
    if refusal is not None:
        # RFC 6455 §10.2 (check the origin), §4.2.2 (refuse with an HTTP error).
        log.info("refused upgrade peer=%s reason=%s status=403", description, refusal)
        await _deny(scope, send, 403)
        return
    await send({"type": "websocket.accept"})
    log.debug("accepted websocket peer=%s path=%s", description, scope.get("path"))
    transport = ASGIWebSocketTransport(
        max_message_size=max_message_size,
        close_timeout=close_timeout,
        description=description,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.run, receive, send)
        try:
            await handler(transport)
        except Exception:
            log.error("websocket handler failed peer=%s", description, exc_info=True)
            await transport.aclose(code=_INTERNAL_ERROR, reason="internal error")
        finally:
            await transport.aclose()
            nursery.cancel_scope.cancel()
