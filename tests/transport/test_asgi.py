"""The ASGI WebSocket transport (``arcp_trio.transport.asgi``) under a real ASGI server.

Rules: hypercorn with its trio worker serves the app in the test's nursery on
127.0.0.1 port 0, on the real clock under a ``fail_after`` guard; clients are our
WebSocket client, trio-websocket's (for binary messages and subprotocols) or a raw
upgrade. The conformance checks run with the ASGI transport on either end of a pair.
Two tests call the app directly, for what hypercorn never does (a server without the
``websocket.http.response`` extension; a scope that ends before ``websocket.connect``).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
from trio_websocket import open_websocket_url

from arcp_trio.transport.asgi import ASGIWebSocketTransport, serve_asgi_websocket
from arcp_trio.transport.base import MessageRefused, Transport, TransportBroken
from arcp_trio.transport.websocket import connect_websocket
from tests.mounts import answer_lifespan, asgi_pair, running_hypercorn, upgrade_status
from tests.transport.conformance import CHECKS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

GUARD = 10


@pytest.mark.parametrize("server_first", [False, True], ids=["client-server", "server-client"])
@pytest.mark.parametrize("check_name", list(CHECKS))
async def test_conformance(check_name: str, server_first: bool) -> None:
    with trio.fail_after(GUARD):
        await CHECKS[check_name](partial(asgi_pair, server_first=server_first))


class Served:
    """An ASGI app serving ``handler`` through ``serve_asgi_websocket``; records the
    transports it was given."""

    def __init__(self, handler: Callable[[Transport], Awaitable[None]], **options: Any) -> None:
        self.handler = handler
        self.options = options
        self.transports: list[Transport] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return

        async def handler(transport: Transport) -> None:
            self.transports.append(transport)
            await self.handler(transport)

        await serve_asgi_websocket(handler, scope, receive, send, **self.options)


async def echo(transport: Transport) -> None:
    while True:
        try:
            text = await transport.receive_message()
        except MessageRefused as exc:
            text = f"refused: {exc.reason}"
        except TransportBroken:
            return
        await transport.send_message(text)


@asynccontextmanager
async def serving(
    handler: Callable[[Transport], Awaitable[None]], **options: Any
) -> AsyncIterator[tuple[Served, int]]:
    app = Served(handler, **options)
    async with running_hypercorn(app) as port:
        yield app, port


# == the upgrade ============================================================================


async def test_origins_not_allowed_get_403_before_the_upgrade() -> None:
    with trio.fail_after(GUARD):
        async with serving(echo, allow_origins=["https://app.example"]) as (app, port):
            status, head = await upgrade_status(port, headers=[("Origin", "https://evil.example")])
            assert status == 403, head
            assert not app.transports
            # Allowed: the listed origin (scheme and host in any case, default port),
            # and a client that sends no Origin (not a browser).
            for headers in ([("Origin", "HTTPS://App.Example:443")], []):
                status, head = await upgrade_status(port, headers=headers)
                assert status == 101, head
    assert len(app.transports) == 2


async def test_by_default_no_page_may_connect() -> None:
    with trio.fail_after(GUARD):
        async with serving(echo) as (app, port):
            status, _ = await upgrade_status(port, headers=[("Origin", "http://127.0.0.1")])
            assert status == 403
            client = await connect_websocket(f"ws://127.0.0.1:{port}/arcp")
            await client.send_message("no origin")
            assert await client.receive_message() == "no origin"
            await client.aclose()
    assert len(app.transports) == 1


async def test_another_path_gets_404_when_a_path_is_set() -> None:
    with trio.fail_after(GUARD):
        async with serving(echo, path="/arcp") as (app, port):
            status, _ = await upgrade_status(port, path="/other")
            assert status == 404
            assert not app.transports
            client = await connect_websocket(f"ws://127.0.0.1:{port}/arcp?token=x")
            await client.aclose()
    assert len(app.transports) == 1


async def test_no_subprotocol_is_chosen_and_the_peer_is_described() -> None:
    with trio.fail_after(GUARD):
        async with (
            serving(echo) as (app, port),
            open_websocket_url(f"ws://127.0.0.1:{port}/arcp", subprotocols=["arcp.v1"]) as ws,
        ):
            assert ws.subprotocol is None
            await ws.send_message("x")
            assert await ws.get_message() == "x"
            [transport] = app.transports
            local = ws.local
            assert not isinstance(local, str)
            assert transport.description == f"asgi 127.0.0.1:{local.port}"


# == messages ===============================================================================


async def test_binary_messages_are_decoded_as_utf8_and_bad_ones_refused() -> None:
    with trio.fail_after(GUARD):
        async with (
            serving(echo) as (_, port),
            open_websocket_url(f"ws://127.0.0.1:{port}/arcp") as ws,
        ):
            await ws.send_message('{"a":"é"}'.encode())
            assert await ws.get_message() == '{"a":"é"}'
            # Not UTF-8: refused, and the transport goes on (WIRE.md §1).
            await ws.send_message(b'{"id":"x\xff"}')
            assert await ws.get_message() == "refused: message is not valid UTF-8 (byte 8)"
            await ws.send_message("still open")
            assert await ws.get_message() == "still open"


async def test_a_handler_exception_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(transport: Transport) -> None:
        await transport.receive_message()
        raise RuntimeError("boom")

    with trio.fail_after(GUARD):
        async with serving(handler) as (_, port):
            client = await connect_websocket(f"ws://127.0.0.1:{port}/arcp")
            await client.send_message("go")
            with pytest.raises(TransportBroken, match="code 1011"):
                await client.receive_message()
            await client.aclose()
    failed = [r for r in caplog.records if r.message.startswith("websocket handler failed")]
    assert len(failed) == 1
    assert failed[0].levelno == logging.ERROR


async def test_the_pump_sees_a_disconnect_while_nobody_receives() -> None:
    """The peer goes while the runtime is busy: the next receive (or send) is
    ``TransportBroken``, and ``aclose`` does not wait for a close that cannot come
    (its timeout is far past the guard)."""
    ready = trio.Event()
    outcome: list[str] = []

    async def handler(transport: Transport) -> None:
        ready.set()
        assert isinstance(transport, ASGIWebSocketTransport)
        await transport._disconnected.wait()
        with pytest.raises(TransportBroken) as receiving:
            await transport.receive_message()
        with pytest.raises(TransportBroken):
            await transport.send_message("into the void")
        await transport.aclose()
        outcome.append(str(receiving.value))

    with trio.fail_after(GUARD):
        async with serving(handler, close_timeout=10 * GUARD) as (_, port):
            client = await connect_websocket(f"ws://127.0.0.1:{port}/arcp")
            await ready.wait()
            await client.aclose()
    # hypercorn reports a close the client started as 1006.
    assert len(outcome) == 1
    assert outcome[0].endswith(": the WebSocket was closed (code 1006)")


async def test_a_write_the_server_cannot_finish_holds_only_the_scopes_task() -> None:
    """hypercorn shields its socket writes: to a peer that stopped reading one never
    ends. The sender's cancel still returns (the writer runs in the scope's task),
    the transport is broken, and ``aclose`` is bounded."""
    outcome: list[str] = []
    done = trio.Event()

    async def handler(transport: Transport) -> None:
        with trio.move_on_after(0.5):
            while True:  # until the kernel's buffers are full: then the cancel
                await transport.send_message("x" * 1024 * 1024)
        with pytest.raises(TransportBroken) as info:
            await transport.send_message("after")
        outcome.append(str(info.value))
        await transport.aclose()
        done.set()

    with trio.fail_after(GUARD):
        async with serving(handler, close_timeout=0.2) as (_, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"GET /arcp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await done.wait()  # never reading a byte
            await stream.aclose()  # only now can the server's write end
    assert len(outcome) == 1
    assert outcome[0].endswith(": a send was interrupted part-way")


# == the app without a server ===============================================================


def scripted(events: Sequence[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """A ``receive`` that returns ``events`` in turn, and the list ``send`` fills."""
    queue = list(events)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    return (receive, send), sent


async def test_without_the_response_extension_a_refusal_closes_before_accepting() -> None:
    """ASGI's one refusal: ``websocket.close`` before ``websocket.accept`` (403)."""
    (receive, send), sent = scripted([{"type": "websocket.connect"}])
    scope = {"type": "websocket", "path": "/arcp", "headers": [(b"origin", b"https://x.test")]}
    await serve_asgi_websocket(echo, scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_a_scope_that_ends_before_connecting_is_left_alone() -> None:
    (receive, send), sent = scripted([{"type": "websocket.disconnect", "code": 1006}])
    called: list[Transport] = []

    async def handler(transport: Transport) -> None:
        called.append(transport)

    await serve_asgi_websocket(handler, {"type": "websocket", "path": "/"}, receive, send)
    assert sent == []
    assert called == []
