"""A raw ARCP peer for runtime tests: sends and reads frames as JSON dicts.

It speaks over a real transport (the in-memory pair, or WebSocket) and checks that
every frame the runtime sends decodes with our own codec.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from arcp_trio.protocol.job import JobRecord
from arcp_trio.protocol.leases import parse_lease
from arcp_trio.protocol.session import ALL_FEATURES
from arcp_trio.transport.memory import memory_transport_pair
from arcp_trio.wire.codec import decode
from arcp_trio.wire.ids import new_ulid
from arcp_trio.wire.timestamps import trio_wall_clock_at

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from arcp_trio.runtime.runtime import Runtime
    from arcp_trio.transport.base import Transport


def trio_wall_clock() -> datetime:
    """Wall-clock time that follows Trio's (Mock)Clock, so leases agree with it."""
    return trio_wall_clock_at(trio.current_time())


REFERENCE_FEATURES = [f for f in ALL_FEATURES if not f.startswith("x-vendor.")]
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}

Frame = dict[str, Any]


class Peer:
    """One client connection, driven by hand."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.received: list[Frame] = []
        self.last_event_seq = 0
        self.backlog: list[Frame] = []

    async def send(self, type_: str, payload: dict[str, Any] | None = None, **envelope: Any) -> str:
        frame_id = envelope.pop("id", None) or new_ulid()
        frame: Frame = {"arcp": "1.1", "id": frame_id, "type": type_, "payload": payload or {}}
        if self.session_id is not None:
            frame["session_id"] = self.session_id
        frame.update(envelope)
        await self.transport.send_message(json.dumps(frame))
        return frame_id

    async def send_raw(self, text: str) -> None:
        await self.transport.send_message(text)

    async def recv(self, timeout: float = 30) -> Frame:
        """The next frame (frames set aside by ``recv_type`` come first)."""
        if self.backlog:
            return self.backlog.pop(0)
        return await self._read(timeout)

    async def _read(self, timeout: float) -> Frame:
        with trio.fail_after(timeout):
            text = await self.transport.receive_message()
        decode(text)  # every frame we send must parse with our own codec
        frame: Frame = json.loads(text)
        self.received.append(frame)
        seq = frame.get("event_seq")
        if seq is not None:
            assert seq == self.last_event_seq + 1, (
                f"gap or duplicate: {self.last_event_seq} -> {seq}"
            )
            self.last_event_seq = seq
        return frame

    async def recv_type(self, *types: str, timeout: float = 30) -> Frame:
        """The next frame of one of ``types``; other frames are set aside for ``recv``."""
        for index, frame in enumerate(self.backlog):
            if frame["type"] in types:
                return self.backlog.pop(index)
        while True:
            frame = await self._read(timeout)
            if frame["type"] in types:
                return frame
            if frame["type"] != "session.ping":
                self.backlog.append(frame)

    async def recv_until(
        self, predicate: Callable[[Frame], bool], timeout: float = 30
    ) -> list[Frame]:
        frames: list[Frame] = []
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == "session.ping":
                continue
            frames.append(frame)
            if predicate(frame):
                return frames

    async def recv_terminal(self, job_id: str, timeout: float = 30) -> list[Frame]:
        """Frames up to and including ``job_id``'s terminal."""
        return await self.recv_until(
            lambda f: f["type"] in ("job.result", "job.error") and f.get("job_id") == job_id,
            timeout,
        )

    async def hello(
        self,
        token: str = "tok-alice",
        features: Sequence[str] = REFERENCE_FEATURES,
        resume: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Frame:
        payload: dict[str, Any] = {
            "client": {"name": "test-peer", "version": "0"},
            "auth": {"scheme": "bearer", "token": token},
            "capabilities": {"encodings": ["json"], "features": list(features)},
            **extra,
        }
        if resume is not None:
            payload["resume"] = resume
        await self.send("session.hello", payload)
        welcome = await self.recv()
        if welcome["type"] == "session.welcome":
            self.session_id = welcome["session_id"]
            self.resume_token = welcome["payload"]["resume_token"]
        return welcome

    async def submit(
        self, agent: str, input_: Any = None, *, trace_id: str | None = None, **payload: Any
    ) -> Frame:
        envelope = {} if trace_id is None else {"trace_id": trace_id}
        request_id = await self.send(
            "job.submit", {"agent": agent, "input": input_, **payload}, **envelope
        )
        accepted = await self.recv_type("job.accepted", "session.error")
        assert accepted["payload"].get("request_id") == request_id, accepted
        return accepted


async def connect(runtime: Runtime, nursery: trio.Nursery) -> tuple[Peer, Any]:
    """A peer attached to ``runtime`` over the in-memory transport pair.

    Returns the peer and the runtime-side transport (``.abort()`` simulates a drop).
    """
    client_side, runtime_side = memory_transport_pair()
    nursery.start_soon(runtime.handle_transport, runtime_side)
    return Peer(client_side), client_side


def events_of(frames: Sequence[Frame], job_id: str) -> list[Frame]:
    return [f for f in frames if f.get("job_id") == job_id and "event_seq" in f]


async def raw_websocket_upgrade(host: str, port: int) -> tuple[trio.SocketStream, bytes]:
    """A TCP connection upgraded to WebSocket by hand (RFC 6455 §4.1), for tests that
    must send bytes no client library would. Returns the stream and whatever arrived
    after the 101 response."""
    stream = await trio.open_tcp_stream(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            f"GET /arcp HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        assert chunk, "the server closed during the opening handshake"
        head += chunk
    response, _, rest = head.partition(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101"), response
    return stream, rest


def job_record(**fields: Any) -> JobRecord:
    """A ``JobRecord`` of alice's ``ticker`` job ``job_1``, with ``fields`` replaced."""
    base: dict[str, Any] = {
        "job_id": "job_1",
        "ordinal": 1,
        "principal": "alice",
        "session_id": "sess_1",
        "agent_name": "ticker",
        "agent_version": None,
        "lease": parse_lease({}),
        "lease_constraints": None,
        "budget": None,
        "trace_id": None,
        "parent_job_id": None,
        "delegate_id": None,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "accepted_at": "2026-01-01T00:00:00Z",
    }
    return JobRecord(**(base | fields))
