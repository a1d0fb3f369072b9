"""A transport conformance suite, in the spirit of trio's ``check_two_way_stream``.

``check_transport(make_pair)`` runs every check in ``CHECKS`` against a factory of
connected transport pairs; ``test_transports.py`` runs each check against each
transport separately so a failure names both.

Rules for the checks: sends and receives of one exchange run in different tasks (a
lockstep or rendezvous carrier blocks a send until the peer reads), background tasks
catch their own expected errors so no ExceptionGroup hides a failure, and nothing
waits on wall-clock time except ``fail_after`` guards set by the caller.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Protocol

import pytest
import trio
import trio.testing

from arcp_trio.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MessageTooLarge,
    Transport,
    TransportBroken,
    TransportClosed,
)
from arcp_trio.transport.memory import memory_transport_pair
from arcp_trio.transport.stdio import StreamTransport
from arcp_trio.transport.websocket import (
    connect_websocket,
    serve_websocket_transport,
    websocket_client_handshake,
    websocket_server_handshake,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

Pair = tuple[Transport, Transport]


class MakePair(Protocol):
    def __call__(
        self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> AbstractAsyncContextManager[Pair]: ...


# == pair factories =======================================================================


async def close_both(a: Transport, b: Transport) -> None:
    """Close both sides at once (a WebSocket close waits for the peer's close frame)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.aclose)
        nursery.start_soon(b.aclose)


@asynccontextmanager
async def memory_pair(*, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> AsyncIterator[Pair]:
    a, b = memory_transport_pair(max_message_size=max_message_size)
    try:
        yield a, b
    finally:
        await close_both(a, b)


@asynccontextmanager
async def memory_rendezvous_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> AsyncIterator[Pair]:
    a, b = memory_transport_pair(max_message_size=max_message_size, buffer=0)
    try:
        yield a, b
    finally:
        await close_both(a, b)


def ws_tcp_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> AbstractAsyncContextManager[Pair]:
    """A client from ``connect_websocket`` and its server-side transport, over TCP,
    read through the read reactor (Linux)."""
    return _ws_tcp_pair(max_message_size=max_message_size, use_reactor=True)


def ws_tcp_portable_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> AbstractAsyncContextManager[Pair]:
    """The same without the reactor: each connection's task reads its own socket, the
    path macOS and Windows run (``serve_websocket(..., use_reactor=False)``)."""
    return _ws_tcp_pair(max_message_size=max_message_size, use_reactor=False)


@asynccontextmanager
async def _ws_tcp_pair(*, max_message_size: int, use_reactor: bool) -> AsyncIterator[Pair]:
    async with trio.open_nursery() as nursery:
        handed_send, handed_receive = trio.open_memory_channel[Transport](1)
        release = trio.Event()

        async def handler(transport: Transport) -> None:
            await handed_send.send(transport)
            await release.wait()

        info = await nursery.start(
            partial(
                serve_websocket_transport,
                handler,
                "127.0.0.1",
                0,
                max_message_size=max_message_size,
                use_reactor=use_reactor,
            )
        )
        client = await connect_websocket(info.url, max_message_size=max_message_size)
        server_side = await handed_receive.receive()
        try:
            yield client, server_side
        finally:
            await close_both(client, server_side)
            release.set()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def ws_memory_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> AsyncIterator[Pair]:
    """A WebSocket pair over ``trio.testing.memory_stream_pair`` (handshake helpers)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client, server = await ws_handshake_over(client_stream, server_stream, max_message_size)
    try:
        yield client, server
    finally:
        await close_both(client, server)


async def ws_handshake_over(
    client_stream: trio.abc.Stream,
    server_stream: trio.abc.Stream,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    close_timeout: float = 2.0,
) -> Pair:
    """Run both opening handshakes over two connected streams."""
    servers: list[Transport | None] = []

    async def serve() -> None:
        servers.append(
            await websocket_server_handshake(
                server_stream,
                max_message_size=max_message_size,
                close_timeout=close_timeout,
                description="ws server",
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        client = await websocket_client_handshake(
            client_stream,
            host="example.test",
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            description="ws client",
        )
    server = servers[0]
    assert server is not None
    return client, server


@asynccontextmanager
async def _stdio_pair(
    left: trio.abc.Stream, right: trio.abc.Stream, max_message_size: int
) -> AsyncIterator[Pair]:
    """Two stdio transports, each reading and writing one end of a stream pair."""
    a = StreamTransport(left, left, max_message_size=max_message_size, description="left")
    b = StreamTransport(right, right, max_message_size=max_message_size, description="right")
    try:
        yield a, b
    finally:
        await close_both(a, b)


def stdio_memory_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> AbstractAsyncContextManager[Pair]:
    return _stdio_pair(*trio.testing.memory_stream_pair(), max_message_size)


def stdio_lockstep_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> AbstractAsyncContextManager[Pair]:
    return _stdio_pair(*trio.testing.lockstep_stream_pair(), max_message_size)


def stdio_socket_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> AbstractAsyncContextManager[Pair]:
    left, right = trio.socket.socketpair()
    return _stdio_pair(trio.SocketStream(left), trio.SocketStream(right), max_message_size)


PAIRS: dict[str, MakePair] = {
    "memory": memory_pair,
    "memory-rendezvous": memory_rendezvous_pair,
    "ws-tcp": ws_tcp_pair,
    "ws-tcp-portable": ws_tcp_portable_pair,
    "ws-memory-stream": ws_memory_pair,
    "stdio-memory-stream": stdio_memory_pair,
    "stdio-lockstep": stdio_lockstep_pair,
    "stdio-socketpair": stdio_socket_pair,
}


# == helpers ==============================================================================


async def exchange(
    sender: Transport, receiver: Transport, messages: Sequence[str], *, batch: bool = False
) -> list[str]:
    """Send ``messages`` from one task while another receives as many; return them."""
    received: list[str] = []
    async with trio.open_nursery() as nursery:
        if batch:
            nursery.start_soon(sender.send_messages, list(messages))
        else:

            async def send_each() -> None:
                for message in messages:
                    await sender.send_message(message)

            nursery.start_soon(send_each)
        for _ in messages:
            received.append(await receiver.receive_message())
    return received


async def expect_broken(transport: Transport) -> None:
    with pytest.raises(TransportBroken):
        await transport.receive_message()


# == checks ===============================================================================


async def check_is_transport(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        for side in (a, b):
            assert isinstance(side, Transport)
            assert isinstance(side.description, str)
            assert side.description


async def check_round_trip(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        assert await exchange(a, b, ["hello"]) == ["hello"]
        assert await exchange(b, a, ["world"]) == ["world"]
        assert await exchange(a, b, ['{"a":1}', '{"b":2}']) == ['{"a":1}', '{"b":2}']


async def check_batch_order(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        messages = [json.dumps({"n": n}, separators=(",", ":")) for n in range(50)]
        assert await exchange(a, b, messages, batch=True) == messages
        assert await exchange(b, a, messages, batch=True) == messages


async def check_empty_batch(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        await a.send_messages([])
        assert await exchange(a, b, ["after"]) == ["after"]


async def check_many_messages(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        messages = [f'{{"seq":{n},"pad":"{"x" * (n % 97)}"}}' for n in range(2000)]

        async def send_all() -> None:
            position, size = 0, 1
            while position < len(messages):
                chunk = messages[position : position + size]
                if len(chunk) == 1:
                    await a.send_message(chunk[0])
                else:
                    await a.send_messages(chunk)
                position += len(chunk)
                size = size % 37 + 1

        received: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            for _ in messages:
                received.append(await b.receive_message())
        assert received == messages


UNICODE_MESSAGES = [
    "héllo wörld",
    "日本語のテキスト",
    "emoji 🎉🚀 and a ZWJ sequence 👩‍💻",
    "line separators \u2028 and \u2029 are not newlines",
    json.dumps({"name": "Zoë", "text": "a\nb"}, ensure_ascii=False, separators=(",", ":")),
    "\x00 nul and \x7f del",
]


async def check_unicode(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        assert await exchange(a, b, UNICODE_MESSAGES) == UNICODE_MESSAGES
        assert await exchange(b, a, UNICODE_MESSAGES, batch=True) == UNICODE_MESSAGES


async def check_message_at_limit(make_pair: MakePair) -> None:
    async with make_pair(max_message_size=1000) as (a, b):
        exact = ["x" * 1000, "é" * 500, "🎉" * 250]
        assert await exchange(a, b, exact) == exact


async def check_oversize_recovers(make_pair: MakePair) -> None:
    limit = 1000
    async with make_pair(max_message_size=limit) as (a, b):
        oversized = [
            "x" * (limit + 1),
            "é" * (limit // 2 + 1),  # 501 characters, 1002 bytes
            "y" * 300_000,  # many reads and frames' worth
        ]
        errors: list[MessageTooLarge] = []
        received: list[str] = []
        async with trio.open_nursery() as nursery:
            for message in oversized:
                nursery.start_soon(a.send_messages, [message, "ok"])
                with pytest.raises(MessageTooLarge) as info:
                    await b.receive_message()
                errors.append(info.value)
                received.append(await b.receive_message())
        assert received == ["ok"] * len(oversized)
        for error in errors:
            assert error.limit == limit
            assert error.size > limit
        # Still usable in the other direction too.
        assert await exchange(b, a, ["still here"]) == ["still here"]


async def check_peer_close(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):

        async def last_words() -> None:
            await a.send_message("last")
            await a.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(last_words)
            assert await b.receive_message() == "last"
            await expect_broken(b)
        # Broken stays broken, for both directions.
        await expect_broken(b)
        with pytest.raises(TransportBroken):
            await b.send_message("into the void")
        await b.aclose()


async def check_own_close(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_broken, b)
            await a.aclose()
        with pytest.raises(TransportClosed):
            await a.send_message("x")
        with pytest.raises(TransportClosed):
            await a.send_messages(["x", "y"])
        with pytest.raises(TransportClosed):
            await a.receive_message()
        await a.aclose()
        await a.aclose()


async def check_concurrent_aclose(make_pair: MakePair) -> None:
    async with make_pair() as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(expect_broken, b)
        nursery.start_soon(a.aclose)
        nursery.start_soon(a.aclose)


async def check_close_while_receiving(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        outcome: list[BaseException] = []

        async def receive() -> None:
            try:
                await a.receive_message()
            except TransportClosed as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_broken, b)
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            await a.aclose()
        assert len(outcome) == 1


async def check_receive_cancel_is_safe(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.receive_message)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert await exchange(a, b, ["after cancel"]) == ["after cancel"]


async def check_concurrent_receive_is_an_error(make_pair: MakePair) -> None:
    async with make_pair() as (a, b):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.receive_message)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError):
                await b.receive_message()
            nursery.cancel_scope.cancel()
        assert await exchange(a, b, ["fine"]) == ["fine"]


async def check_concurrent_senders_do_not_interleave(make_pair: MakePair) -> None:
    body = 40_000  # large enough that a socket write blocks part-way

    def message(sender: int, n: int) -> str:
        return f"{sender}:{n}:" + chr(ord("a") + sender) * body

    async with make_pair() as (a, b):

        async def send_batches(sender: int) -> None:
            for batch in range(10):
                await a.send_messages([message(sender, batch * 3 + i) for i in range(3)])
                await a.send_message(message(sender, 1000 + batch))

        received: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_batches, 0)
            nursery.start_soon(send_batches, 1)
            for _ in range(2 * 10 * 4):
                received.append(await b.receive_message())
        for sender in (0, 1):
            mine = [text for text in received if text.startswith(f"{sender}:")]
            expected = []
            for batch in range(10):
                expected += [message(sender, batch * 3 + i) for i in range(3)]
                expected.append(message(sender, 1000 + batch))
            assert mine == expected
        assert len(received) == 80


CHECKS: dict[str, Callable[[MakePair], Awaitable[None]]] = {
    "is_transport": check_is_transport,
    "round_trip": check_round_trip,
    "batch_order": check_batch_order,
    "empty_batch": check_empty_batch,
    "many_messages": check_many_messages,
    "unicode": check_unicode,
    "message_at_limit": check_message_at_limit,
    "oversize_recovers": check_oversize_recovers,
    "peer_close": check_peer_close,
    "own_close": check_own_close,
    "concurrent_aclose": check_concurrent_aclose,
    "close_while_receiving": check_close_while_receiving,
    "receive_cancel_is_safe": check_receive_cancel_is_safe,
    "concurrent_receive_is_an_error": check_concurrent_receive_is_an_error,
    "concurrent_senders_do_not_interleave": check_concurrent_senders_do_not_interleave,
}


async def check_transport(make_pair: MakePair) -> None:
    """Run every conformance check against ``make_pair``."""
    for check in CHECKS.values():
        await check(make_pair)
