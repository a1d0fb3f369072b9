"""Servers a Trio team already runs, started in the test's nursery on 127.0.0.1 port 0:
hypercorn with its trio worker (for ASGI apps) and trio-websocket; and ``mounted``,
a runtime served through any of the ways in (``MOUNTS``).

Also a raw HTTP upgrade (``upgrade_status``) for the refusals a client library hides,
and pair factories for the transport conformance suite over both servers.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from arcp_trio.asgi import ARCPApp
from arcp_trio.runtime.serve import serve_trio_websocket_request, serve_websocket
from arcp_trio.transport.asgi import serve_asgi_websocket
from arcp_trio.transport.base import DEFAULT_MAX_MESSAGE_SIZE, Transport
from arcp_trio.transport.trio_websocket import accept_trio_websocket
from arcp_trio.transport.websocket import connect_websocket
from tests.transport.conformance import close_both

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence

    from trio_websocket import WebSocketRequest

    from arcp_trio.runtime.runtime import Runtime

    Message = MutableMapping[str, Any]
    Pair = tuple[Transport, Transport]

_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


@asynccontextmanager
async def running_hypercorn(app: Any, **options: Any) -> AsyncIterator[int]:
    """Serve ``app`` with hypercorn's trio worker; yields the port. Leaving the block
    shuts the server down gracefully (connections, then the lifespan's shutdown)."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 2.0
    for name, value in options.items():
        setattr(config, name, value)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, app, config, shutdown_trigger=stop.wait)
        )
        try:
            yield int(binds[0].rsplit(":", 1)[1])
        finally:
            stop.set()


@asynccontextmanager
async def running_trio_websocket(
    handler: Callable[[WebSocketRequest], Awaitable[None]], **options: Any
) -> AsyncIterator[int]:
    """Serve ``handler`` with ``trio_websocket.serve_websocket``; yields the port."""
    from trio_websocket import serve_websocket

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, handler, "127.0.0.1", 0, None, **options)
        )
        yield server.port
        nursery.cancel_scope.cancel()


#: The ways a runtime is served: its own server, an ASGI app under hypercorn (alone,
#: and mounted in a Starlette app beside a route), a trio-websocket server's handler.
MOUNTS = ("native", "asgi", "starlette", "trio-websocket")


@asynccontextmanager
async def mounted(
    kind: str, runtime: Runtime, *, allow_origins: Sequence[str] | None = None
) -> AsyncIterator[int]:
    """Serve ``runtime`` on ``ws://127.0.0.1:PORT/arcp`` the ``kind`` way; yields PORT."""
    if kind == "native":
        async with trio.open_nursery() as nursery:
            info = await nursery.start(
                partial(serve_websocket, allow_origins=allow_origins), runtime, "127.0.0.1", 0
            )
            yield info.port
            nursery.cancel_scope.cancel()
    elif kind in ("asgi", "starlette"):
        app: Any = ARCPApp(runtime, path="/arcp", allow_origins=allow_origins)
        if kind == "starlette":
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route, WebSocketRoute

            async def home(request: Any) -> PlainTextResponse:
                return PlainTextResponse("home")

            app = Starlette(routes=[Route("/", home), WebSocketRoute("/arcp", app)])
        async with running_hypercorn(app) as port:
            yield port
    elif kind == "trio-websocket":
        handler = partial(serve_trio_websocket_request, runtime, allow_origins=allow_origins)
        async with running_trio_websocket(handler) as port:
            yield port
    else:
        raise ValueError(f"unknown mount {kind!r}")


async def upgrade_status(
    port: int, path: str = "/arcp", headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, bytes]:
    """Send a WebSocket upgrade by hand; the response's status and head."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {_KEY.decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head += chunk
    finally:
        await stream.aclose()
    return int(head.split(b" ", 2)[1]), head


async def http_get(port: int, path: str = "/") -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET (the connection closed after it); (status, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode("ascii"))
        response = b""
        while chunk := await stream.receive_some(4096):
            response += chunk
    finally:
        await stream.aclose()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def answer_lifespan(receive: Callable[[], Awaitable[Message]], send: Any) -> None:
    """The ASGI lifespan protocol of an app with nothing to start."""
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


# == pairs for the transport conformance suite ===============================================


@asynccontextmanager
async def asgi_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, server_first: bool = False
) -> AsyncIterator[Pair]:
    """Our WebSocket client and the ASGI transport of hypercorn's trio worker."""
    handed_send, handed_receive = trio.open_memory_channel[Transport](1)
    release = trio.Event()

    async def handler(transport: Transport) -> None:
        await handed_send.send(transport)
        await release.wait()

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
        else:
            await serve_asgi_websocket(
                handler, scope, receive, send, max_message_size=max_message_size
            )

    async with running_hypercorn(app) as port:
        client = await connect_websocket(
            f"ws://127.0.0.1:{port}/arcp", max_message_size=max_message_size
        )
        server = await handed_receive.receive()
        try:
            yield (server, client) if server_first else (client, server)
        finally:
            await close_both(client, server)
            release.set()


@asynccontextmanager
async def trio_websocket_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, server_first: bool = False
) -> AsyncIterator[Pair]:
    """Our WebSocket client and the trio-websocket transport of a trio-websocket
    server (whose own limit is above ours, so ours refuses first)."""
    handed_send, handed_receive = trio.open_memory_channel[Transport](1)
    release = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        transport = await accept_trio_websocket(request, max_message_size=max_message_size)
        assert transport is not None
        await handed_send.send(transport)
        await release.wait()

    async with running_trio_websocket(handler, max_message_size=4 * 1024 * 1024) as port:
        client = await connect_websocket(
            f"ws://127.0.0.1:{port}/arcp", max_message_size=max_message_size
        )
        server = await handed_receive.receive()
        try:
            yield (server, client) if server_first else (client, server)
        finally:
            await close_both(client, server)
            release.set()
