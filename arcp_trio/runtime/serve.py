"""Serving a runtime over WebSocket (§4: mandatory for network deployments)."""

from __future__ import annotations

import trio

# TEMP-LAZY
from .runtime import Runtime

__all__ = ["serve_websocket"]


async def serve_websocket(
    runtime: Runtime,
    host: str,
    port: int,
    *,
    path: str = "/arcp",
    task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept ARCP connections on ``ws://host:port/arcp`` until cancelled.

    ``task_status.started`` reports the bound address (port 0 picks a free one).
    Each connection runs ``runtime.handle_transport``; one connection's failure
    never reaches another or any job.
    """
    from ..transport.websocket import serve_websocket_transport  # TEMP

    await serve_websocket_transport(
        runtime.handle_transport,
        host,
        port,
        path=path,
        max_message_size=runtime.config.max_message_size,
        handshake_timeout=runtime.config.handshake_timeout_sec,
        task_status=task_status,
    )
