"""Hostile input against a live ``arcp-trio serve`` over real WebSockets.

Rules: one ``arcp-trio serve`` subprocess per module on 127.0.0.1 (port 0), the real
clock, every wait bounded. Hypothesis runs in a worker thread and hands each
example to the Trio test through ``trio.from_thread``, so an honest client keeps
its session open across all examples.

* After the handshake, every hostile frame gets ``session.error INVALID_REQUEST``
  correlated with its id (when it had a string one), and the connection keeps
  serving (a ping is answered).
* As the first frame of a connection, it gets the same error, then the connection
  closes.
* WebSocket-level violations (unmasked frames, reserved opcodes and bits, invalid
  UTF-8, oversized or fragmented control frames, bad close codes) get a close frame
  with a protocol-error code, or the connection dropped, promptly.
* Throughout, an honest client runs jobs and sees no disturbance: no reconnect, no
  gap, every result right; and the server process never dies.
"""

from __future__ import annotations

import select
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
from hypothesis import given, settings

from arcp_trio.client import open_client
from arcp_trio.testing import RawPeer
from arcp_trio.testing.strategies import (
    HostileFrame,
    WebSocketViolation,
    hostile_frames,
    request_id_ok,
    websocket_violations,
)
from arcp_trio.transport.base import TransportBroken, TransportError
from arcp_trio.transport.websocket import connect_websocket
from tests.fuzz import stats
from tests.fuzz.budget import budget
from tests.helpers import raw_websocket_upgrade

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SERVE = [
    sys.executable,
    "-m",
    "arcp_trio",
    "serve",
    "--port",
    "0",
    "--token",
    "tok-alice=alice",
    "--token",
    "tok-bob=bob",
    "--log-level",
    "WARNING",
]
TIMEOUT = 20.0


@attrs.define
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def assert_alive(self) -> None:
        assert self.process.poll() is None, (
            f"arcp-trio serve died (exit {self.process.returncode}):\n"
            + self.log.read_text()[-4000:]
        )

    @property
    def host_port(self) -> tuple[str, int]:
        address = self.url.removeprefix("ws://").split("/")[0]
        host, port = address.rsplit(":", 1)
        return host, int(port)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(SERVE, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "arcp-trio serve did not print READY within 30 s"
        line = process.stdout.readline().decode().strip()
        assert line.startswith("READY "), line
        yield Server(process=process, url=line.removeprefix("READY "), log=log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# -- the honest client ------------------------------------------------------------------------


@attrs.define
class Honest:
    """Runs ticker jobs back to back until told to stop; records any disturbance."""

    url: str
    jobs: int = 0
    problems: list[str] = attrs.field(factory=list)
    reconnects: int = 0

    async def run(self, stop: trio.Event) -> None:
        async with open_client(self.url, token="tok-alice", jitter=lambda d: d) as client:
            while not stop.is_set():
                with trio.fail_after(TIMEOUT):
                    handle = await client.submit("ticker@1.0.0", {"count": 5, "interval": 0.01})
                    ticks = [e.body["current"] async for e in handle.events()]
                    outcome = await handle.result()
                if ticks != [1, 2, 3, 4, 5]:
                    self.problems.append(f"job {handle.job_id}: ticks {ticks}")
                if outcome.result != {"ticks": 5}:
                    self.problems.append(f"job {handle.job_id}: result {outcome.result}")
                self.jobs += 1
            self.reconnects = client.reconnects

    def assert_undisturbed(self) -> None:
        assert not self.problems, self.problems
        assert self.reconnects == 0, "the honest client had to reconnect"
        assert self.jobs >= 1


async def alongside_honest_client(server: Server, fuzz: Any) -> None:
    """Run ``fuzz`` (blocking, in a thread) while an honest client works."""
    honest = Honest(server.url)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(honest.run, stop)
        try:
            await trio.to_thread.run_sync(fuzz)
        finally:
            stop.set()
    honest.assert_undisturbed()
    server.assert_alive()


# -- frames after the handshake ---------------------------------------------------------------


class Attacker:
    """One authenticated connection that sends hostile frames."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peer: RawPeer | None = None

    async def connect(self) -> RawPeer:
        transport = await connect_websocket(self.url)
        peer = RawPeer(transport, receive_timeout=TIMEOUT)
        welcome = await peer.hello("tok-bob")
        assert welcome["type"] == "session.welcome", welcome
        self.peer = peer
        return peer

    async def check(self, frame: HostileFrame) -> None:
        peer = self.peer or await self.connect()
        await peer.send_raw(frame.text)
        reply = await peer.recv()
        assert reply["type"] == "session.error", (frame.kind, reply)
        assert reply["payload"]["code"] == frame.code, (frame.kind, reply)
        assert request_id_ok(frame, reply["payload"].get("request_id")), (frame.kind, reply)
        # Still serving: a ping is answered on the same connection.
        await peer.send("session.ping", {"nonce": "still-here", "sent_at": "2026-01-01T00:00:00Z"})
        pong = await peer.recv()
        assert pong["type"] == "session.pong", (frame.kind, pong)
        assert pong["payload"]["ping_nonce"] == "still-here"

    async def aclose(self) -> None:
        if self.peer is not None:
            await self.peer.aclose()


async def test_hostile_frames_after_the_handshake(server: Server) -> None:
    attacker = Attacker(server.url)
    name = "hostile frames (live, in session)"

    @settings(max_examples=budget(80, 2500))
    @given(frame=hostile_frames())
    def fuzz(frame: HostileFrame) -> None:
        stats.example(name)
        trio.from_thread.run(attacker.check, frame)

    try:
        await alongside_honest_client(server, fuzz)
    finally:
        await attacker.aclose()


# -- frames as the first frame ------------------------------------------------------------------


async def first_frame(url: str, frame: HostileFrame) -> None:
    transport = await connect_websocket(url)
    try:
        peer = RawPeer(transport, receive_timeout=TIMEOUT)
        await peer.send_raw(frame.text)
        reply = await peer.recv()
        assert reply["type"] == "session.error", (frame.kind, reply)
        assert reply["payload"]["code"] == frame.code, (frame.kind, reply)
        assert request_id_ok(frame, reply["payload"].get("request_id")), (frame.kind, reply)
        with pytest.raises(TransportBroken), trio.fail_after(TIMEOUT):
            await transport.receive_message()
    finally:
        await transport.aclose()


async def test_hostile_first_frames(server: Server) -> None:
    name = "hostile frames (live, first frame)"

    @settings(max_examples=budget(30, 600))
    @given(frame=hostile_frames())
    def fuzz(frame: HostileFrame) -> None:
        stats.example(name)
        trio.from_thread.run(first_frame, server.url, frame)

    await alongside_honest_client(server, fuzz)


# -- WebSocket-level violations -------------------------------------------------------------------


def _parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked frame in ``data``."""
    frames = []
    while len(data) >= 2:
        opcode = data[0] & 0x0F
        size = data[1] & 0x7F
        offset = 2
        if size == 126:
            size, offset = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, offset = int.from_bytes(data[2:10], "big"), 10
        if len(data) < offset + size:
            break
        frames.append((opcode, data[offset : offset + size]))
        data = data[offset + size :]
    return frames


async def violate(host: str, port: int, violation: WebSocketViolation) -> None:
    with trio.fail_after(TIMEOUT):
        stream, rest = await raw_websocket_upgrade(host, port)
        async with stream:
            try:
                await stream.send_all(violation.data)
            except trio.BrokenResourceError:
                return  # already closed on us: refused
            received = rest
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break  # reset: refused
                if not chunk:
                    break
                received += chunk
    closes = [payload for opcode, payload in _parse_server_frames(received) if opcode == 0x8]
    if closes:
        code = int.from_bytes(closes[0][:2], "big")
        assert code in violation.close_codes, (violation.kind, code)


async def test_websocket_violations(server: Server) -> None:
    host, port = server.host_port
    name = "websocket violations (live)"

    @settings(max_examples=budget(15, 150))
    @given(violation=websocket_violations())
    def fuzz(violation: WebSocketViolation) -> None:
        stats.example(name)
        trio.from_thread.run(violate, host, port, violation)

    await alongside_honest_client(server, fuzz)


async def test_an_honest_session_still_works_afterwards(server: Server) -> None:
    server.assert_alive()
    transport = await connect_websocket(server.url)
    try:
        peer = RawPeer(transport, receive_timeout=TIMEOUT)
        assert (await peer.hello("tok-alice"))["type"] == "session.welcome"
        accepted = await peer.request("job.submit", {"agent": "echo", "input": {"x": 1}})
        assert accepted["type"] == "job.accepted"
        terminal = await peer.recv_type("job.result", "job.error")
        assert terminal["payload"]["result"]["echo"] == {"x": 1}
    except TransportError:  # pragma: no cover - reported by assert_alive
        server.assert_alive()
        raise
    finally:
        await transport.aclose()
