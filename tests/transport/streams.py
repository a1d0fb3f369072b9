"""Test doubles for the transport tests: instrumented streams and a raw wsproto peer."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, Request

from arcp_trio.transport.base import DEFAULT_MAX_MESSAGE_SIZE, Transport, TransportClosed
from arcp_trio.transport.websocket import WebSocketTransport, websocket_server_handshake

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wsproto.extensions import Extension


class InstrumentedStream(trio.abc.Stream):
    """Wraps a stream: counts ``send_all`` calls and can hold writes behind a gate.

    With ``stall`` set, ``send_all`` blocks until the stream is closed (a peer that
    stopped reading);
    with ``gate`` set, it waits for the event before writing.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.send_all_calls = 0
        self.sent = bytearray()
        self.gate: trio.Event | None = None
        self.stall = False
        self.blocked = trio.Event()
        self.closed = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.send_all_calls += 1
        if self.stall:
            # Like a socket whose peer stopped reading: only closing it wakes us.
            self.blocked.set()
            await self.closed.wait()
            raise trio.ClosedResourceError("stream closed while a write was pending")
        if self.gate is not None:
            self.blocked.set()
            await self.gate.wait()
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed.set()
        await self.inner.aclose()


class RawPeer:
    """A WebSocket client driven by hand with wsproto, for frames our client never sends."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.pending: deque[Event] = deque()

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.ws.send(event) for event in events))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive_event(self) -> Event:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(data) if data else None)
            self.pending.extend(self.ws.events())
        return self.pending.popleft()

    async def handshake(
        self, *, target: str = "/arcp", extensions: Sequence[Extension] = ()
    ) -> Event:
        await self.send(Request(host="example.test", target=target, extensions=list(extensions)))
        return await self.receive_event()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def raw_peer_and_server(
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    close_timeout: float = 2.0,
    extensions: Sequence[Extension] = (),
) -> tuple[RawPeer, WebSocketTransport, InstrumentedStream]:
    """A raw wsproto client connected to our server-side transport over memory streams.

    Returns the peer, the server-side transport and the instrumented stream under it.
    """
    client_stream, server_stream = trio.testing.memory_stream_pair()
    instrumented = InstrumentedStream(server_stream)
    peer = RawPeer(client_stream, WSConnection(ConnectionType.CLIENT))
    servers: list[WebSocketTransport | None] = []

    async def serve() -> None:
        servers.append(
            await websocket_server_handshake(
                instrumented,
                max_message_size=max_message_size,
                close_timeout=close_timeout,
                description="ws raw-peer",
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        accepted = await peer.handshake(extensions=extensions)
    assert isinstance(accepted, AcceptConnection), accepted
    server = servers[0]
    assert server is not None
    return peer, server, instrumented


async def assert_aclose_bounded_by_a_stuck_write(
    transport: Transport, stream: InstrumentedStream, close_timeout: float
) -> None:
    """With a write stuck in ``stream``, ``aclose`` takes exactly ``close_timeout``
    (autojump clock) and the stuck send ends with ``TransportClosed``."""
    stream.stall = True
    outcome: list[Exception] = []

    async def send() -> None:
        try:
            await transport.send_message("stuck")
        except TransportClosed as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await stream.blocked.wait()
        start = trio.current_time()
        await transport.aclose()
        assert trio.current_time() - start == close_timeout
    assert len(outcome) == 1
