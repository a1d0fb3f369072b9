"""Frames the transport refuses before they can be parsed, over a real WebSocket.

A text message that is not UTF-8, a binary one that is not, one over the size limit:
each is still an ARCP frame, so it gets ``session.error INVALID_REQUEST`` with the id
read from its first bytes *before* anything is closed. RFC 6455 §8.1 then requires
failing the connection for bad UTF-8 in a text message: close code 1007, after the
answer. The session stays resumable and other sessions never notice.

Rules: ``arcp_trio.serve_websocket`` on 127.0.0.1 in-process, a client speaking raw
RFC 6455 (our ``FrameConnection`` in the client role parses what the server sends),
real clock under ``fail_after``; both read paths (the reactor and the portable one).
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
from wsproto.events import CloseConnection, TextMessage

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.runtime.serve import serve_websocket
from arcp_trio.testing.strategies import ws_frame
from arcp_trio.transport.wsframes import FrameConnection
from arcp_trio.wire.ids import new_ulid
from tests.helpers import TOKENS, raw_websocket_upgrade

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from arcp_trio.runtime.runtime import Runtime

GUARD = 15
TEXT, BINARY, CONTINUATION = 0x1, 0x2, 0x0


class RawClient:
    """An RFC 6455 client that can send any bytes at all."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.frames = FrameConnection(client=True)
        self.pending: list[Any] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        stream, rest = await raw_websocket_upgrade("127.0.0.1", port)
        client = cls(stream)
        client._feed(rest)
        return client

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stream.aclose()

    def _feed(self, data: bytes | None) -> None:
        self.frames.receive_data(data)
        self.pending.extend(self.frames.events())

    async def next_event(self) -> Any:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            self._feed(data or None)
        return self.pending.pop(0)

    async def next_frame(self) -> dict[str, Any] | int:
        """The next ARCP frame (pings skipped), or the close code when the server closes."""
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                return int(event.code)
            if isinstance(event, TextMessage):
                frame: dict[str, Any] = json.loads(event.data)
                if frame["type"] != "session.ping":
                    return frame

    async def send(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        await self.stream.send_all(ws_frame(opcode, payload, fin=fin))

    async def send_json(self, type_: str, payload: dict[str, Any]) -> str:
        frame_id = new_ulid()
        text = json.dumps({"arcp": "1.1", "id": frame_id, "type": type_, "payload": payload})
        await self.send(TEXT, text.encode())
        return frame_id

    async def hello(self) -> dict[str, Any]:
        await self.send_json(
            "session.hello",
            {"client": {"name": "raw", "version": "0"}, "auth": {"token": "tok-alice"}},
        )
        welcome = await self.next_frame()
        assert isinstance(welcome, dict)
        assert welcome["type"] == "session.welcome"
        return welcome


@asynccontextmanager
async def serving(use_reactor: bool) -> AsyncIterator[tuple[Runtime, int]]:
    async with (
        open_runtime(
            agents=demo_registry(),
            tokens=TOKENS,
            config=RuntimeConfig(max_message_size=64 * 1024, heartbeat_interval_sec=600),
        ) as runtime,
        trio.open_nursery() as nursery,
    ):
        info = await nursery.start(
            partial(serve_websocket, use_reactor=use_reactor), runtime, "127.0.0.1", 0
        )
        yield runtime, info.port
        nursery.cancel_scope.cancel()


def _head(frame_id: str) -> bytes:
    return f'{{"arcp":"1.1","id":"{frame_id}","type":"session.ping","payload":{{"nonce":"'.encode()


def _refusal(frame: dict[str, Any] | int, frame_id: str | None) -> None:
    assert isinstance(frame, dict), f"closed ({frame}) without an answer"
    assert frame["type"] == "session.error"
    assert frame["payload"]["code"] == "INVALID_REQUEST"
    assert frame["payload"]["request_id"] == frame_id


@pytest.mark.parametrize("use_reactor", [True, False], ids=["reactor", "portable"])
@pytest.mark.parametrize("split", [False, True], ids=["one-frame", "fragmented"])
async def test_text_that_is_not_utf8_is_answered_then_closed_1007(
    use_reactor: bool, split: bool
) -> None:
    with trio.fail_after(GUARD):
        async with (
            serving(use_reactor) as (runtime, port),
            await RawClient.connect(port) as client,
        ):
            welcome = await client.hello()
            frame_id = new_ulid()
            bad = _head(frame_id) + b'x\xff"}}'
            if split:
                await client.send(TEXT, bad[:30], fin=False)
                await client.send(CONTINUATION, bad[30:])
            else:
                await client.send(TEXT, bad)
            _refusal(await client.next_frame(), frame_id)
            assert await client.next_frame() == 1007  # RFC 6455 §8.1, after the answer
            # The session is only detached: resumable, as after any drop (§6.4).
            session = runtime.session(welcome["session_id"])
            assert session is not None
            assert not session.forgotten


@pytest.mark.parametrize("use_reactor", [True, False], ids=["reactor", "portable"])
async def test_a_binary_message_that_is_not_utf8_is_refused_and_the_session_goes_on(
    use_reactor: bool,
) -> None:
    with trio.fail_after(GUARD):
        async with (
            serving(use_reactor) as (_runtime, port),
            await RawClient.connect(port) as client,
        ):
            await client.hello()
            frame_id = new_ulid()
            await client.send(BINARY, _head(frame_id) + b'\xc3("}}')
            _refusal(await client.next_frame(), frame_id)
            ping_id = await client.send_json(
                "session.ping", {"nonce": "n", "sent_at": "2026-01-01T00:00:00Z"}
            )
            pong = await client.next_frame()
            assert isinstance(pong, dict)
            assert pong["type"] == "session.pong", (pong, ping_id)


@pytest.mark.parametrize("use_reactor", [True, False], ids=["reactor", "portable"])
@pytest.mark.parametrize("as_first_frame", [False, True], ids=["in-session", "first-frame"])
async def test_an_oversized_frame_is_answered_with_its_id(
    use_reactor: bool, as_first_frame: bool
) -> None:
    with trio.fail_after(GUARD):
        async with (
            serving(use_reactor) as (_runtime, port),
            await RawClient.connect(port) as client,
        ):
            if not as_first_frame:
                await client.hello()
            frame_id = new_ulid()
            await client.send(TEXT, _head(frame_id) + b"x" * (64 * 1024) + b'"}}')
            _refusal(await client.next_frame(), frame_id)
            if as_first_frame:
                assert await client.next_frame() == 1000  # a refused handshake ends
            else:
                await client.send_json(
                    "session.ping", {"nonce": "n", "sent_at": "2026-01-01T00:00:00Z"}
                )
                pong = await client.next_frame()
                assert isinstance(pong, dict)
                assert pong["type"] == "session.pong"


async def test_bad_utf8_as_the_first_frame_is_answered_then_closed_1007() -> None:
    with trio.fail_after(GUARD):
        async with (
            serving(True) as (_runtime, port),
            await RawClient.connect(port) as client,
        ):
            frame_id = new_ulid()
            await client.send(TEXT, _head(frame_id) + b"\xff")
            _refusal(await client.next_frame(), frame_id)
            assert await client.next_frame() == 1007
