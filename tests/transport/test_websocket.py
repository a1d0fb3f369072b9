"""WebSocket-specific behaviour: server, client, framing, control frames, interop.

Rules: tests over real sockets bind 127.0.0.1 port 0 and run on the real clock under a
``fail_after`` guard; tests about timeouts run over memory streams with the autojump
clock and assert exact virtual times. The interop tests run the ``websockets`` library
(what the reference SDK uses) in a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from arcp_trio.transport.base import (
    IdleTransport,
    MessageRefused,
    MessageTooLarge,
    Transport,
    TransportBroken,
    TransportClosed,
)
from arcp_trio.transport.websocket import (
    WebSocketServerInfo,
    WebSocketTransport,
    connect_websocket,
    serve_websocket_transport,
    websocket_client_handshake,
    websocket_server_handshake,
)
from tests.tls import make_tls
from tests.transport.streams import (
    RawPeer,
    assert_aclose_bounded_by_a_stuck_write,
    raw_peer_and_server,
)

if TYPE_CHECKING:
    import ssl

GUARD = 10
Handler = Callable[[Transport], Awaitable[None]]


@asynccontextmanager
async def running_server(
    handler: Handler, *, handshake_timeout: float = 10.0
) -> AsyncIterator[WebSocketServerInfo]:
    async with trio.open_nursery() as nursery:
        info = await nursery.start(
            partial(
                serve_websocket_transport,
                handler,
                "127.0.0.1",
                0,
                handshake_timeout=handshake_timeout,
            )
        )
        yield info
        nursery.cancel_scope.cancel()


async def echo_once(transport: Transport) -> None:
    await transport.send_message(await transport.receive_message())


# == server =================================================================================


async def test_server_reports_the_bound_address() -> None:
    with trio.fail_after(GUARD):
        async with running_server(echo_once) as info:
            assert info.host == "127.0.0.1"
            assert info.port > 0
            assert info.url == f"ws://127.0.0.1:{info.port}/arcp"
            client = await connect_websocket(info.url)
            assert client.description == f"ws 127.0.0.1:{info.port}"
            await client.send_message("ping")
            assert await client.receive_message() == "ping"
            await client.aclose()


async def test_wrong_path_is_refused_and_handler_not_called() -> None:
    called: list[Transport] = []

    async def handler(transport: Transport) -> None:
        called.append(transport)

    with trio.fail_after(GUARD):
        async with running_server(handler) as info:
            with pytest.raises(TransportBroken, match="404"):
                await connect_websocket(f"ws://127.0.0.1:{info.port}/not-arcp")
            # A query string does not change the path.
            client = await connect_websocket(f"ws://127.0.0.1:{info.port}/arcp?token=abc")
            await client.aclose()
    assert len(called) == 1


async def test_handler_exception_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    connections = 0

    async def handler(transport: Transport) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            raise ValueError("handler bug")
        await echo_once(transport)

    with trio.fail_after(GUARD), caplog.at_level(logging.ERROR):
        async with running_server(handler) as info:
            first = await connect_websocket(info.url)
            with pytest.raises(TransportBroken, match="1011"):
                await first.receive_message()
            await first.aclose()
            second = await connect_websocket(info.url)
            await second.send_message("still serving")
            assert await second.receive_message() == "still serving"
            await second.aclose()
    failures = [r for r in caplog.records if r.name == "arcp_trio.transport.websocket"]
    assert any(r.levelno == logging.ERROR and r.exc_info for r in failures)


async def test_handshake_timeout_closes_a_silent_connection() -> None:
    with trio.fail_after(GUARD):
        async with running_server(echo_once, handshake_timeout=0.05) as info:
            stream = await trio.open_tcp_stream("127.0.0.1", info.port)
            assert await stream.receive_some(1024) == b""  # the server hung up
            await stream.aclose()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /arcp HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),  # not an upgrade
        (b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", b"400"),  # not HTTP at all (a TLS hello)
    ],
)
async def test_malformed_upgrade_is_refused(request_bytes: bytes, status: bytes) -> None:
    called: list[Transport] = []

    async def handler(transport: Transport) -> None:
        called.append(transport)

    with trio.fail_after(GUARD):
        async with running_server(handler) as info:
            stream = await trio.open_tcp_stream("127.0.0.1", info.port)
            await stream.send_all(request_bytes)
            response = b""
            while chunk := await stream.receive_some(1024):
                response += chunk
            await stream.aclose()
    assert response.startswith(b"HTTP/1.1 " + status), response
    assert not called


async def test_permessage_deflate_declined_over_tcp() -> None:
    with trio.fail_after(GUARD):
        async with running_server(echo_once) as info:
            stream = await trio.open_tcp_stream("127.0.0.1", info.port)
            peer = RawPeer(stream, WSConnection(ConnectionType.CLIENT))
            accepted = await peer.handshake(extensions=[PerMessageDeflate()])
            assert isinstance(accepted, AcceptConnection)
            assert accepted.extensions == []
            await peer.send(TextMessage(data="x"))
            event = await peer.receive_event()
            assert isinstance(event, TextMessage)
            assert event.data == "x"
            await peer.aclose()


# == receiving ==============================================================================


async def test_binary_frames_are_decoded_as_utf8() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        await peer.send(BytesMessage(data='{"a":"é"}'.encode()))
        assert await server.receive_message() == '{"a":"é"}'
        # Invalid UTF-8 in a binary message is refused, not fatal (no RFC 6455 rule
        # covers binary data): the runtime answers it, by the id in its readable start.
        await peer.send(BytesMessage(data=b'{"id":"x",\xff\xfe{'))
        with pytest.raises(MessageRefused) as caught:
            await server.receive_message()
        assert caught.value.prefix == '{"id":"x",'
        assert not caught.value.fatal
        await peer.send(TextMessage(data="next"))
        assert await server.receive_message() == "next"
        await peer.aclose()
        await server.aclose()


async def test_fragmented_messages_are_reassembled() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        await peer.send(
            TextMessage(data="frag", message_finished=False),
            TextMessage(data="ment", message_finished=False),
            Ping(payload=b"between fragments"),
            TextMessage(data="ed 🎉", message_finished=True),
            BytesMessage(data=b"by", message_finished=False),
            BytesMessage(data=b"tes", message_finished=True),
        )
        assert await server.receive_message() == "fragmented 🎉"
        assert await server.receive_message() == "bytes"
        pong = await peer.receive_event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"between fragments"
        await peer.aclose()
        await server.aclose()


async def test_oversized_fragmented_message_is_skipped() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server(max_message_size=100)
        await peer.send(
            BytesMessage(data=b"a" * 60, message_finished=False),
            BytesMessage(data=b"b" * 60, message_finished=False),
            BytesMessage(data=b"c" * 60, message_finished=True),
            TextMessage(data="fits"),
        )
        with pytest.raises(MessageTooLarge) as info:
            await server.receive_message()
        assert (info.value.size, info.value.limit) == (180, 100)
        assert await server.receive_message() == "fits"
        await peer.aclose()
        await server.aclose()


async def test_ping_is_answered() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_message)
            await peer.send(Ping(payload=b"are you there"))
            pong = await peer.receive_event()
            assert isinstance(pong, Pong)
            assert pong.payload == b"are you there"
            nursery.cancel_scope.cancel()
        await peer.aclose()
        await server.aclose()


async def test_pong_does_not_wait_for_a_blocked_sender() -> None:
    """The receive path queues its pong behind a stuck write instead of deadlocking."""
    with trio.fail_after(GUARD):
        peer, server, stream = await raw_peer_and_server()
        stream.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_message, "stuck")
            await stream.blocked.wait()
            await peer.send(Ping(payload=b"p"), TextMessage(data="still receiving"))
            # Receiving goes on while the sender holds the write lock.
            assert await server.receive_message() == "still receiving"
            stream.gate.set()
        first, second = await peer.receive_event(), await peer.receive_event()
        assert isinstance(first, TextMessage)
        assert first.data == "stuck"
        assert isinstance(second, Pong)
        assert second.payload == b"p"
        await peer.aclose()
        await server.aclose()


async def test_peer_close_code_and_reason_are_reported() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        await peer.send(CloseConnection(code=4001, reason="going away now"))
        with pytest.raises(TransportBroken, match=r"4001.*going away now"):
            await server.receive_message()
        reply = await peer.receive_event()
        assert isinstance(reply, CloseConnection)
        assert reply.code == 4001
        with pytest.raises(TransportBroken):
            await server.send_message("too late")
        await server.aclose()
        await peer.aclose()


async def test_protocol_violation_breaks_the_transport() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        await peer.send_bytes(b"\x8f\x80\x00\x00\x00\x00")  # reserved opcode 0xF
        with pytest.raises(TransportBroken, match="protocol error"):
            await server.receive_message()
        close = await peer.receive_event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1002
        await server.aclose()
        await peer.aclose()


@pytest.mark.parametrize("close_by", ["aclose", "receive"])
async def test_text_that_is_not_utf8_is_reported_first_then_fails_1007(close_by: str) -> None:
    """RFC 6455 §8.1: fail the connection, code 1007. The owner hears of the message
    first (``MessageRefused``, fatal, with what was readable) so it can answer it;
    then ``aclose`` or the next receive sends the 1007 close."""
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        # A masked text frame (key 0000) whose payload breaks UTF-8 after '{"i'.
        await peer.send_bytes(b"\x81\x85\x00\x00\x00\x00" + b'{"i\xc3\x28')
        with pytest.raises(MessageRefused) as caught:
            await server.receive_message()
        assert caught.value.fatal
        assert caught.value.prefix == '{"i'
        await server.send_message("the answer")  # still writable until it closes
        if close_by == "receive":
            with pytest.raises(TransportBroken, match="protocol error"):
                await server.receive_message()
        else:
            await server.aclose()
        answer = await peer.receive_event()
        assert isinstance(answer, TextMessage)
        assert answer.data == "the answer"
        close = await peer.receive_event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1007
        await server.aclose()
        await peer.aclose()


async def test_raw_eof_is_broken() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        await peer.aclose()
        with pytest.raises(TransportBroken, match="without a WebSocket close frame"):
            await server.receive_message()
        await server.aclose()


async def test_frames_arriving_with_the_101_are_kept() -> None:
    with trio.fail_after(GUARD):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        ws = WSConnection(ConnectionType.SERVER)

        async def raw_server() -> None:
            while True:
                ws.receive_data(bytes(await server_stream.receive_some(65536)))
                if any(isinstance(event, Request) for event in ws.events()):
                    break
            accept = ws.send(AcceptConnection())
            await server_stream.send_all(accept + ws.send(TextMessage(data="early")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw_server)
            client = await websocket_client_handshake(client_stream, host="example.test")
        assert await client.receive_message() == "early"
        await server_stream.aclose()
        await client.aclose()


# == sending ================================================================================


async def test_send_messages_is_one_stream_write() -> None:
    with trio.fail_after(GUARD):
        peer, server, stream = await raw_peer_and_server()
        messages = [json.dumps({"seq": n}) for n in range(100)]
        before = stream.send_all_calls
        await server.send_messages(messages)
        assert stream.send_all_calls == before + 1
        received = []
        for _ in messages:
            event = await peer.receive_event()
            assert isinstance(event, TextMessage)
            received.append(event.data)
        assert received == messages
        await peer.aclose()
        await server.aclose()


async def test_cancel_before_writing_leaves_the_transport_usable() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.send_message("never sent")
        await server.send_message("sent")
        event = await peer.receive_event()
        assert isinstance(event, TextMessage)
        assert event.data == "sent"
        await peer.aclose()
        await server.aclose()


async def test_cancel_during_a_write_breaks_the_transport(autojump_clock: object) -> None:
    with trio.fail_after(GUARD):
        peer, server, stream = await raw_peer_and_server()
        stream.stall = True
        with trio.move_on_after(1):
            await server.send_messages(["a", "b"])
        with pytest.raises(TransportBroken, match="interrupted"):
            await server.send_message("c")
        with pytest.raises(TransportBroken):
            await server.receive_message()
        await server.aclose()  # does not raise
        await peer.aclose()


async def test_transport_requires_a_finished_handshake() -> None:
    client_stream, _ = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="OPEN"):
        WebSocketTransport(client_stream, WSConnection(ConnectionType.CLIENT))


# == closing ================================================================================


async def test_aclose_sends_the_close_code() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(server.aclose, code=4002, reason="done"))
            close = await peer.receive_event()
            assert isinstance(close, CloseConnection)
            assert (close.code, close.reason) == (4002, "done")
            await peer.send(close.response())
        with pytest.raises(TransportClosed):
            await server.receive_message()
        await peer.aclose()


async def test_aclose_is_bounded_when_the_peer_is_silent(autojump_clock: object) -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server(close_timeout=3)
        start = trio.current_time()
        await server.aclose()  # the peer never answers the close frame
        assert trio.current_time() - start == 3
        await peer.aclose()


async def test_aclose_is_bounded_when_a_write_is_stuck(autojump_clock: object) -> None:
    with trio.fail_after(GUARD):
        peer, server, stream = await raw_peer_and_server(close_timeout=3)
        await assert_aclose_bounded_by_a_stuck_write(server, stream, 3)
        await peer.aclose()


async def test_aclose_is_shielded_from_cancellation() -> None:
    with trio.fail_after(GUARD):
        peer, server, _ = await raw_peer_and_server()
        async with trio.open_nursery() as nursery:

            async def answer_close() -> None:
                close = await peer.receive_event()
                assert isinstance(close, CloseConnection)
                await peer.send(close.response())

            nursery.start_soon(answer_close)
            with trio.CancelScope() as scope:
                scope.cancel()
                await server.aclose()
        with pytest.raises(TransportClosed):
            await server.send_message("x")
        await peer.aclose()


# == client =================================================================================


async def test_connect_refused_is_broken() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(GUARD), pytest.raises(TransportBroken, match="cannot connect"):
        await connect_websocket(f"ws://127.0.0.1:{port}/arcp")


@pytest.mark.parametrize("url", ["http://127.0.0.1/arcp", "ws:///arcp", "127.0.0.1:80"])
async def test_bad_url_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        await connect_websocket(url)


async def test_connect_timeout() -> None:
    # A server that accepts TCP but never answers the upgrade.
    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(TransportBroken, match="timed out"):
                await connect_websocket(f"ws://127.0.0.1:{port}/arcp", connect_timeout=0.05)
            nursery.cancel_scope.cancel()


# == interop with the `websockets` library (what the reference SDK runs on) =================

WEBSOCKETS_CLIENT = """
import asyncio, json, sys
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

async def main():
    async with connect(sys.argv[1]) as ws:  # default settings: offers permessage-deflate
        print(json.dumps({"extensions": len(ws.protocol.extensions)}), flush=True)
        await ws.send(sys.argv[2])
        print(json.dumps({"echo": await ws.recv()}), flush=True)
        try:
            await ws.recv()
        except ConnectionClosedOK as exc:
            print(json.dumps({"closed": exc.rcvd.code}), flush=True)

asyncio.run(main())
"""

WEBSOCKETS_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        if message == "ping me":
            await (await ws.ping(b"from server"))
            await ws.send("pong received")
        else:
            await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


async def test_websockets_client_talks_to_our_server() -> None:
    async def handler(transport: Transport) -> None:
        await echo_once(transport)  # then return: the server closes with 1000

    message = json.dumps({"type": "session.hello", "text": "héllo"}, separators=(",", ":"))
    with trio.fail_after(30):
        async with running_server(handler) as info:
            result = await trio.run_process(
                [sys.executable, "-c", WEBSOCKETS_CLIENT, info.url, message],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert lines == [{"extensions": 0}, {"echo": message}, {"closed": 1000}]


async def test_our_client_talks_to_a_websockets_server() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [sys.executable, "-c", WEBSOCKETS_SERVER],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    check=False,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )
            assert process.stdout is not None
            assert process.stdin is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(64)
                assert chunk, "server exited before reporting its port"
                line += chunk
            client = await connect_websocket(f"ws://127.0.0.1:{int(line)}/")
            await client.send_messages(['{"n":1}', '{"n":2}'])
            assert [await client.receive_message() for _ in range(2)] == ['{"n":1}', '{"n":2}']
            await client.send_message("ping me")  # the server pings us; we must pong
            assert await client.receive_message() == "pong received"
            await client.aclose()
            await process.stdin.aclose()
    assert process.returncode == 0


# == TLS ====================================================================================


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 from a CA made here, and a
    client context that trusts exactly that CA."""
    with tempfile.TemporaryDirectory() as directory:
        tls = make_tls(Path(directory))
        return tls.server_context(), tls.client_context()


async def test_wss_client() -> None:
    server_context, client_context = _tls_contexts()

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            transport = await websocket_server_handshake(stream, description="wss server")
        except TransportBroken:
            await trio.aclose_forcefully(stream)  # the client refused our certificate
            return
        assert transport is not None
        await echo_once(transport)
        await transport.aclose()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_ssl_over_tcp, handle, 0, server_context, host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            client = await connect_websocket(
                f"wss://127.0.0.1:{port}/arcp", ssl_context=client_context
            )
            await client.send_message("over tls")
            assert await client.receive_message() == "over tls"
            with pytest.raises(TransportBroken, match="1000"):
                await client.receive_message()
            await client.aclose()
            with pytest.raises(TransportBroken, match="TLS"):
                await connect_websocket(f"wss://127.0.0.1:{port}/arcp")  # untrusted cert
            nursery.cancel_scope.cancel()


# == write-through (send_nowait) ============================================================


async def test_send_nowait_writes_through_then_defers_to_send_messages() -> None:
    """A server transport on a socket writes one-off frames straight to the socket.

    The peer does not read, so the socket fills: a frame the kernel takes only part of
    is kept (``write_pending``), later ``send_nowait`` calls refuse, and the next
    ``send_messages`` writes the kept bytes before its own. The peer then reads every
    frame whole and in order.
    """
    sent: list[str] = []
    filled = trio.Event()
    received: list[str] = []
    pending: list[bool] = []

    async def handler(transport: Transport) -> None:
        assert isinstance(transport, IdleTransport)
        for i in range(10_000):  # bounded: a loopback socket holds a few MiB at most
            message = json.dumps({"i": i, "pad": "x" * 65_537})
            if not transport.send_nowait(message):
                break
            sent.append(message)
        pending_after_filling = transport.write_pending  # the last frame went in part-way
        filled.set()
        await transport.send_messages(())  # writes the kept part (waits for the reader)
        pending.extend([pending_after_filling, transport.write_pending])
        sent.append("tail")
        await transport.send_messages(["tail"])
        await transport.receive_message()  # until the client is done

    with trio.fail_after(GUARD * 3):
        async with running_server(handler) as info:
            client = await connect_websocket(info.url, max_message_size=1 << 20)
            assert isinstance(client, IdleTransport)
            assert not client.send_nowait("clients mask their frames: never written through")
            await filled.wait()
            while not received or received[-1] != "tail":
                received.append(await client.receive_message())
            await client.send_message("done")
            await client.aclose()
    assert len(sent) > 2
    assert pending == [True, False]
    assert received == sent


async def test_send_nowait_refuses_when_closed_or_not_a_socket() -> None:
    async def handler(transport: Transport) -> None:
        assert isinstance(transport, WebSocketTransport)
        assert transport.send_nowait("open: written through")
        await transport.aclose()
        assert not transport.send_nowait("closed: refused")

    with trio.fail_after(GUARD):
        async with running_server(handler) as info:
            client = await connect_websocket(info.url)
            assert await client.receive_message() == "open: written through"
            with pytest.raises(TransportBroken):
                await client.receive_message()
            await client.aclose()
        # Over a memory stream there is no descriptor to write to: always refused.
        _peer, server, _stream = await raw_peer_and_server()
        assert not server.send_nowait("no socket")
