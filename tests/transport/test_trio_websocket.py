"""The trio-websocket adapter (``arcp_trio.transport.trio_websocket``) under a real
trio-websocket server.

Rules: ``trio_websocket.serve_websocket`` runs in the test's nursery on 127.0.0.1 port
0, on the real clock under a ``fail_after`` guard; clients are our WebSocket client,
trio-websocket's (binary messages) or a raw upgrade. The conformance checks run with
the adapter on either end of a pair.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio
from trio_websocket import open_websocket_url

from arcp_trio.transport.base import MessageRefused, MessageTooLarge, Transport, TransportBroken
from arcp_trio.transport.trio_websocket import TrioWebSocketTransport, accept_trio_websocket
from arcp_trio.transport.websocket import connect_websocket
from tests.mounts import running_trio_websocket, trio_websocket_pair, upgrade_status
from tests.transport.conformance import CHECKS

if TYPE_CHECKING:
    from trio_websocket import WebSocketRequest

GUARD = 10


@pytest.mark.parametrize("server_first", [False, True], ids=["client-server", "server-client"])
@pytest.mark.parametrize("check_name", list(CHECKS))
async def test_conformance(check_name: str, server_first: bool) -> None:
    with trio.fail_after(GUARD):
        await CHECKS[check_name](partial(trio_websocket_pair, server_first=server_first))


async def echo(transport: Transport) -> None:
    while True:
        try:
            text = await transport.receive_message()
        except (MessageRefused, MessageTooLarge) as exc:
            text = f"refused: {exc}"
        except TransportBroken:
            return
        await transport.send_message(text)


async def test_origins_not_allowed_get_403_before_the_upgrade() -> None:
    accepted: list[Transport] = []

    async def handler(request: WebSocketRequest) -> None:
        transport = await accept_trio_websocket(request, allow_origins=["http://localhost:3000"])
        if transport is not None:
            accepted.append(transport)
            await echo(transport)
            await transport.aclose()

    with trio.fail_after(GUARD):
        async with running_trio_websocket(handler) as port:
            status, _ = await upgrade_status(port, headers=[("Origin", "http://localhost:3001")])
            assert status == 403
            assert not accepted
            status, _ = await upgrade_status(port, headers=[("Origin", "http://LOCALHOST:3000")])
            assert status == 101
            client = await connect_websocket(f"ws://127.0.0.1:{port}/arcp")
            await client.send_message("no origin")
            assert await client.receive_message() == "no origin"
            await client.aclose()
    assert len(accepted) == 2
    assert all(t.description.startswith("trio-websocket 127.0.0.1:") for t in accepted)


async def test_binary_is_utf8_and_an_oversized_message_is_refused_recoverably() -> None:
    async def handler(request: WebSocketRequest) -> None:
        transport = await accept_trio_websocket(request, max_message_size=100)
        assert transport is not None
        await echo(transport)
        await transport.aclose()

    with trio.fail_after(GUARD):
        async with (
            running_trio_websocket(handler) as port,
            open_websocket_url(f"ws://127.0.0.1:{port}/arcp") as ws,
        ):
            await ws.send_message('{"a":"é"}'.encode())
            assert await ws.get_message() == '{"a":"é"}'
            await ws.send_message(b"\xff")
            assert await ws.get_message() == "refused: message is not valid UTF-8 (byte 0)"
            await ws.send_message("x" * 101)
            reply = await ws.get_message()
            assert (
                reply == "refused: inbound message of at least 101 bytes exceeds the limit of 100"
            )
            await ws.send_message("still open")
            assert await ws.get_message() == "still open"


async def test_over_trio_websockets_own_limit_it_closes_with_1009() -> None:
    """The server's own limit comes first (module docstring): give it a larger one."""

    async def handler(request: WebSocketRequest) -> None:
        transport = await accept_trio_websocket(request)
        assert transport is not None
        await echo(transport)
        await transport.aclose()

    with trio.fail_after(GUARD):
        async with running_trio_websocket(handler, max_message_size=1000) as port:
            client = await connect_websocket(f"ws://127.0.0.1:{port}/arcp")
            await client.send_message("x" * 1001)
            with pytest.raises(TransportBroken, match="code 1009"):
                await client.receive_message()
            await client.aclose()


async def test_a_torn_send_breaks_it_and_nothing_follows() -> None:
    """Cancelled part-way through a frame to a peer that does not read: broken, and
    ``aclose`` ends the socket without a close frame (the peer sees no close)."""
    outcome: list[str] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        transport = await accept_trio_websocket(request)
        assert isinstance(transport, TrioWebSocketTransport)
        with trio.move_on_after(0.3):
            await transport.send_message("x" * 32 * 1024 * 1024)  # never all taken
        with pytest.raises(TransportBroken) as info:
            await transport.send_message("after")
        outcome.append(str(info.value))
        await transport.aclose()
        done.set()

    with trio.fail_after(GUARD):
        async with running_trio_websocket(handler) as port:
            client = await connect_websocket(f"ws://127.0.0.1:{port}/arcp")
            await done.wait()
            with pytest.raises(TransportBroken, match="without a WebSocket close frame"):
                await client.receive_message()
            await client.aclose()
    assert len(outcome) == 1
    assert outcome[0].endswith(": a send was interrupted part-way")
