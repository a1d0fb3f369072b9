"""Serving a runtime over WebSocket (§4: mandatory for network deployments)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..transport.websocket import WebSocketServerInfo, serve_websocket_transport

if TYPE_CHECKING:
    import ssl

    from .runtime import Runtime

__all__ = ["WebSocketServerInfo", "serve_websocket"]


async def serve_websocket(
    runtime: Runtime,
    host: str,
    port: int,
    *,
    path: str = "/arcp",
    use_reactor: bool = True,
    ssl_context: ssl.SSLContext | None = None,
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
        task_status=task_status,
    )
