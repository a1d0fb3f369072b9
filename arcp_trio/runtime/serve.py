"""Serving a runtime over WebSocket (§4: mandatory for network deployments)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..transport.base import TransportBroken
from ..transport.websocket import WebSocketServerInfo, serve_websocket_transport

if TYPE_CHECKING:
    import ssl
    from collections.abc import Sequence

    from trio_websocket import WebSocketRequest

    from ..transport.origin import OriginPolicy
    from .runtime import Runtime

__all__ = ["WebSocketServerInfo", "serve_trio_websocket_request", "serve_websocket"]

log = logging.getLogger(__name__)


async def serve_websocket(
    runtime: Runtime,
    host: str,
    port: int,
    *,
    path: str = "/arcp",
    use_reactor: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    allow_origins: Sequence[str] | OriginPolicy | None = None,
    task_status: trio.TaskStatus[WebSocketServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept ARCP connections on ``ws://host:port/arcp`` until cancelled.

    ``task_status.started`` reports a ``WebSocketServerInfo`` with the bound address
    (port 0 picks a free one). Each connection runs ``runtime.handle_transport``; one
    connection's failure never reaches another or any job.

    ``use_reactor``: on Linux one task reads every connection's socket, so idle
    sessions cost no wake-ups (``transport.reactor``); False (and every platform
    without epoll) gives each connection's task its own socket to read: the portable
    path, which the transport conformance tests also run on Linux.

    ``ssl_context``: serve ``wss://`` with this server context (its certificate chain
    loaded); ``WebSocketServerInfo.url`` then says ``wss://``. TLS connections are read
    by their own tasks.

    ``allow_origins``: the browser pages that may connect, as ``scheme://host[:port]``
    (``"*"``: any); an upgrade with any other ``Origin`` header is refused with HTTP
    403. By default every client that sends no ``Origin`` (every non-browser client)
    and no page (:mod:`arcp_trio.transport.origin`; docs/deploy.md).

    Raises:
        ValueError: an ``allow_origins`` entry is not an origin (before listening).

    Cancellation: stops accepting and ends every connection; jobs are untouched (they
    belong to the runtime).
    """
    await serve_websocket_transport(
        runtime.handle_transport,
        host,
        port,
        path=path,
        max_message_size=runtime.config.max_message_size,
        handshake_timeout=runtime.config.handshake_timeout_sec,
        use_reactor=use_reactor,
        ssl_context=ssl_context,
        allow_origins=allow_origins,
        task_status=task_status,
    )


async def serve_trio_websocket_request(
    runtime: Runtime,
    request: WebSocketRequest,
    *,
    allow_origins: Sequence[str] | OriginPolicy | None = None,
) -> None:
    """Serve one ``trio_websocket.serve_websocket`` request as an ARCP connection.

    For a service that already runs a trio-websocket server (the ``trio-websocket``
    extra): its handler passes each request here (or checks the path first). A page
    whose ``Origin`` ``allow_origins`` does not allow is refused with HTTP 403, as
    ``serve_websocket`` refuses it; otherwise the request is accepted and served by
    ``runtime.handle_transport`` until the connection ends. It never raises for
    anything the peer does.

    trio-websocket applies its own ``max_message_size`` first (closing with 1009 over
    it); serve it with a larger one than the runtime's for the runtime's recoverable
    refusal (``INVALID_REQUEST``) instead (:mod:`arcp_trio.transport.trio_websocket`).

    Raises:
        ValueError: an ``allow_origins`` entry is not an origin.

    Cancellation: ends the connection; jobs are untouched.
    """
    # The optional extra: imported only by those who use it.
    from ..transport.trio_websocket import accept_trio_websocket

    try:
        transport = await accept_trio_websocket(
            request,
            allow_origins=allow_origins,
            max_message_size=runtime.config.max_message_size,
        )
    except TransportBroken as exc:
        log.info("websocket upgrade failed reason=%s", exc)
        return
    if transport is not None:
        await runtime.handle_transport(transport)
