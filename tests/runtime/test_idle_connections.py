"""Idle connections over a real WebSocket: the connection's task parks with nothing
else alive, and everything that needs it wakes it; a heartbeat pong wakes it only to
be noted, and nothing of the runtime ever runs in the read reactor's task.

These run the runtime's WebSocket server on 127.0.0.1 with the read reactor (Linux),
the only transport that reports when input is there (``IdleTransport.receive_ready``).
"""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from wsproto.events import Ping, Pong

import arcp_trio
from arcp_trio.demo_agents import demo_registry
from arcp_trio.protocol.session import HeartbeatMonitor
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.connection import Connection
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.runtime.serve import serve_websocket
from arcp_trio.transport.reactor import reactor_available
from arcp_trio.transport.websocket import WebSocketTransport, connect_websocket
from arcp_trio.wire.codec import encode_ping_frame
from arcp_trio.wire.ids import new_frame_id, new_ulid
from arcp_trio.wire.timestamps import system_timestamp
from tests.helpers import TOKENS, Peer, trio_wall_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from types import FrameType

    from wsproto.connection import Connection as WSFrames

    from arcp_trio.runtime.runtime import Runtime

pytestmark = pytest.mark.skipif(not reactor_available(), reason="the read reactor needs epoll")

GUARD = 10


@asynccontextmanager
async def websocket_runtime(
    config: RuntimeConfig | None = None,
) -> AsyncIterator[tuple[Runtime, str]]:
    async with (
        open_runtime(
            agents=demo_registry(),
            tokens=TOKENS,
            config=config or RuntimeConfig(),
            wall_clock=trio_wall_clock,
        ) as rt,
        trio.open_nursery() as nursery,
    ):
        info = await nursery.start(serve_websocket, rt, "127.0.0.1", 0)
        yield rt, info.url
        nursery.cancel_scope.cancel()


async def attach(rt: Runtime, url: str) -> tuple[Peer, Connection]:
    peer = Peer(await connect_websocket(url))
    await peer.hello()
    session = rt.session(peer.session_id)  # type: ignore[arg-type]
    assert session is not None
    assert session.connection is not None
    return peer, session.connection


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll state that real socket I/O changes (the caller's guard bounds the wait)."""
    while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
        await trio.sleep(0.005)


async def until_parked(connection: Connection) -> None:
    """Wait until the connection's task is parked idle (not waiting for its writer
    inside the nursery)."""
    await wait_until(lambda: is_parked(connection) and connection._nursery is None)


def is_parked(connection: Connection) -> bool:
    return connection._spot.parked


def count_wakes(connection: Connection) -> list[int]:
    """Count the transport's calls of the connection's waker."""
    calls = [0]
    transport = connection.transport
    assert isinstance(transport, WebSocketTransport)

    def counting() -> None:
        calls[0] += 1
        connection._wake()

    transport.set_receive_waker(counting)
    return calls


def count_nurseries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the times any connection opens its nursery (``_serve_work``)."""
    opened = [0]
    original = Connection._serve_work

    async def counting(self: Connection) -> None:
        opened[0] += 1
        await original(self)

    monkeypatch.setattr(Connection, "_serve_work", counting)
    return opened


def pong_text(peer: Peer, nonce: str) -> str:
    return json.dumps(
        {
            "arcp": "1.1",
            "id": new_ulid(),
            "type": "session.pong",
            "session_id": peer.session_id,
            "payload": {"ping_nonce": nonce},
        }
    )


async def test_an_idle_connection_parks_with_no_nursery_and_wakes_for_a_request() -> None:
    with trio.fail_after(GUARD):
        async with websocket_runtime() as (rt, url):
            peer, connection = await attach(rt, url)
            await until_parked(connection)
            assert connection._nursery is None
            assert connection._scope is None
            # A request wakes it; it answers, runs the job, and parks again.
            submit_id = await peer.send("job.submit", {"agent": "echo", "input": {"n": 1}})
            accepted = await peer.recv_type("job.accepted")
            assert accepted["payload"]["request_id"] == submit_id
            frames = await peer.recv_terminal(accepted["job_id"])
            assert frames[-1]["type"] == "job.result"
            await until_parked(connection)
            assert connection._nursery is None
            assert rt.session(peer.session_id).connection is connection  # type: ignore[arg-type, union-attr]
            await peer.transport.aclose()


async def test_events_of_a_running_job_wake_a_parked_connection() -> None:
    """A job's events are queued from the job's task; the parked connection's task
    wakes, writes them and parks again between ticks."""
    with trio.fail_after(GUARD):
        async with websocket_runtime() as (rt, url):
            peer, connection = await attach(rt, url)
            ticker_input = {"count": 3, "interval": 0.2}
            await peer.send("job.submit", {"agent": "ticker", "input": ticker_input})
            accepted = await peer.recv_type("job.accepted")
            first = await peer.recv_type("job.event")
            assert first["payload"]["body"]["current"] == 1
            await until_parked(connection)  # between two ticks
            frames = await peer.recv_terminal(accepted["job_id"])
            ticks = [f["payload"]["body"]["current"] for f in frames if f["type"] == "job.event"]
            assert ticks == [2, 3]
            assert frames[-1]["type"] == "job.result"
            seqs = [first["event_seq"]] + [f["event_seq"] for f in frames]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gap-free (§8.3)
            await peer.transport.aclose()


async def test_ending_a_parked_connection_detaches_its_session() -> None:
    with trio.fail_after(GUARD):
        async with websocket_runtime(RuntimeConfig(resume_window_sec=60)) as (rt, url):
            peer, connection = await attach(rt, url)
            session = connection.session
            await until_parked(connection)
            connection.abort("test: ended while parked")
            with pytest.raises(Exception, match="closed"):
                await peer.recv(timeout=GUARD)
            await wait_until(lambda: session.connection is None)
            assert rt.session(peer.session_id) is session  # type: ignore[arg-type]  # resumable


async def test_heartbeat_loss_ends_a_parked_connection() -> None:
    """§6.4: two silent intervals end the connection even while its task is parked."""
    config = RuntimeConfig(heartbeat_interval_sec=1, resume_window_sec=60)
    with trio.fail_after(GUARD):
        async with websocket_runtime(config) as (rt, url):
            peer, connection = await attach(rt, url)
            session = connection.session
            await until_parked(connection)
            await wait_until(lambda: session.connection is None)  # we never answer pings
            assert connection.close_reason == "HEARTBEAT_LOST"
            assert rt.session(peer.session_id) is session  # type: ignore[arg-type]
            await peer.transport.aclose()


async def test_a_pong_wakes_the_parked_task_only_to_be_noted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A heartbeat pong (§6.4) wakes the parked connection's task once: it takes the
    pong, notes the peer alive and parks again, without opening its nursery or
    dispatching anything. A WebSocket ping is answered by the transport (RFC 6455
    §5.5.2) and does not wake it at all."""
    config = RuntimeConfig(heartbeat_interval_sec=1, resume_window_sec=60)
    with trio.fail_after(GUARD):
        async with websocket_runtime(config) as (rt, url):
            peer, connection = await attach(rt, url)
            monitor = connection.monitor
            assert monitor is not None
            await until_parked(connection)
            wakes = count_wakes(connection)
            opened = count_nurseries(monkeypatch)
            for round_ in range(1, 3):
                ping = await peer.recv()
                assert ping["type"] == "session.ping"
                sent = trio.current_time()
                await peer.send("session.pong", {"ping_nonce": ping["payload"]["nonce"]})
                await wait_until(lambda s=sent: monitor.last_received >= s)  # type: ignore[misc]
                assert monitor.last_heard < sent  # a pong keeps the next ping's time
                await until_parked(connection)
                assert wakes == [round_]
            # A WebSocket-level ping, written by hand on the client's stream.
            client: Any = peer.transport
            frames: WSFrames = client._ws
            await client._stream.send_all(frames.send(Ping(payload=b"are you there")))
            pongs: list[bytes] = []
            while not pongs:
                data = await client._stream.receive_some(4096)
                frames.receive_data(data)
                pongs += [e.payload for e in frames.events() if isinstance(e, Pong)]
            assert pongs == [b"are you there"]
            assert wakes == [2]
            assert opened == [0]
            assert is_parked(connection)
            assert session_is_live(rt, peer, connection)
            await peer.transport.aclose()


async def test_a_batch_of_pongs_costs_one_reactor_pass_and_one_wake_up_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pongs that arrive while their sockets are deferred (``defer_receive``, as
    after a timer pass's pings) are read in one pass of the reactor, and each
    connection's task wakes once for all of its own, however many."""
    config = RuntimeConfig(heartbeat_interval_sec=60, resume_window_sec=60)
    with trio.fail_after(GUARD):
        async with websocket_runtime(config) as (rt, url):
            attached = [await attach(rt, url) for _ in range(3)]
            for _peer, connection in attached:
                await until_parked(connection)
            transports = [connection.transport for _peer, connection in attached]
            assert all(isinstance(t, WebSocketTransport) for t in transports)
            reactor = transports[0]._reactor  # type: ignore[attr-defined]
            assert reactor is not None
            wakes = [count_wakes(connection) for _peer, connection in attached]
            opened = count_nurseries(monkeypatch)
            start = trio.current_time()
            for transport in transports:
                transport.defer_receive(start, 0.5)  # type: ignore[attr-defined]
            passes = reactor.statistics().wakeups
            for peer, _connection in attached:
                for i in range(2):  # two writes each
                    await peer.send_raw(pong_text(peer, f"n{i}"))
            for _peer, connection in attached:
                monitor = connection.monitor
                assert monitor is not None
                await wait_until(lambda m=monitor: m.last_received >= start)  # type: ignore[misc]
                await until_parked(connection)
            assert trio.current_time() - start >= 0.5  # not noticed before the window ended
            assert reactor.statistics().wakeups - passes == 1
            assert wakes == [[1], [1], [1]]
            assert opened == [0]
            for peer, connection in attached:
                assert session_is_live(rt, peer, connection)
                await peer.transport.aclose()


async def test_a_request_behind_a_pong_opens_the_nursery_in_order() -> None:
    """A pong and a request read together: the parked task takes the pong, and the
    request it read after it is the receive loop's first frame (nothing is lost or
    reordered); then the task parks again."""
    config = RuntimeConfig(heartbeat_interval_sec=60, resume_window_sec=60)
    with trio.fail_after(GUARD):
        async with websocket_runtime(config) as (rt, url):
            peer, connection = await attach(rt, url)
            monitor = connection.monitor
            assert monitor is not None
            await until_parked(connection)
            request_id = new_ulid()
            request = json.dumps(
                {
                    "arcp": "1.1",
                    "id": request_id,
                    "type": "session.list_jobs",
                    "session_id": peer.session_id,
                    "payload": {},
                }
            )
            sent = trio.current_time()
            await peer.transport.send_messages([pong_text(peer, "n"), request])
            jobs = await peer.recv_type("session.jobs")
            assert jobs["payload"]["request_id"] == request_id
            assert monitor.last_heard >= sent  # the request, noted by the loop
            await until_parked(connection)
            assert connection._held is None
            assert session_is_live(rt, peer, connection)
            await peer.transport.aclose()


_OWN_CODE = tuple(
    str(Path(arcp_trio.__file__).parent / layer) for layer in ("runtime", "protocol", "store")
)


async def test_no_runtime_code_runs_in_the_reactors_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reactor reads every server socket, but what it reads is handled in each
    connection's own task: every Python function the reactor's task calls while a
    session pings, pongs, runs a job and is pinged at the WebSocket level is
    recorded, and none is runtime (or protocol, or store) code. The pongs are noted
    in the connection's task."""
    config = RuntimeConfig(heartbeat_interval_sec=1, resume_window_sec=60)
    stepping: list[trio.lowlevel.Task | None] = [None]
    in_reactor: set[str] = set()
    noted_in: list[trio.lowlevel.Task] = []

    class Stepping(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            stepping[0] = task if task.name.endswith("ReadReactor.run") else None

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            stepping[0] = None

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call" and stepping[0] is not None:
            code = frame.f_code
            if code.co_filename.startswith(_OWN_CODE):
                in_reactor.add(f"{code.co_filename}:{code.co_qualname}")

    answered = HeartbeatMonitor.answered

    def noting(self: HeartbeatMonitor, now: float) -> None:
        noted_in.append(trio.lowlevel.current_task())
        answered(self, now)

    monkeypatch.setattr(HeartbeatMonitor, "answered", noting)
    with trio.fail_after(GUARD):
        async with websocket_runtime(config) as (rt, url):
            peer, connection = await attach(rt, url)
            transport = connection.transport
            assert isinstance(transport, WebSocketTransport)
            reactor = transport._reactor
            assert reactor is not None
            await until_parked(connection)
            callbacks = reactor.callbacks_run
            instrument = Stepping()
            trio.lowlevel.add_instrument(instrument)
            sys.setprofile(profile)
            try:
                for _ in range(2):
                    ping = await peer.recv_type("session.ping")
                    await peer.send("session.pong", {"ping_nonce": ping["payload"]["nonce"]})
                await peer.send("job.submit", {"agent": "echo", "input": {"n": 1}})
                accepted = await peer.recv_type("job.accepted")
                frames = await peer.recv_terminal(accepted["job_id"])
                assert frames[-1]["type"] == "job.result"
                client: Any = peer.transport
                ws: WSFrames = client._ws
                await client._stream.send_all(ws.send(Ping(payload=b"ping")))
                ping = await peer.recv_type("session.ping")
                await peer.send("session.pong", {"ping_nonce": ping["payload"]["nonce"]})
                await wait_until(lambda: len(noted_in) >= 3)
            finally:
                sys.setprofile(None)
                trio.lowlevel.remove_instrument(instrument)
            assert reactor.callbacks_run > callbacks  # the reactor did read for it
            assert in_reactor == set()
            assert noted_in
            assert all(not task.name.endswith("ReadReactor.run") for task in noted_in)
            assert session_is_live(rt, peer, connection)
            await peer.transport.aclose()


def session_is_live(rt: Runtime, peer: Peer, connection: Connection) -> bool:
    session = rt.session(peer.session_id)  # type: ignore[arg-type]
    return session is not None and session.connection is connection and not connection.closed


async def test_a_frame_queued_while_the_nursery_closes_is_written() -> None:
    """The race the idle switch must not lose: a frame queued in the scheduling steps
    between the receive loop going idle and the task parking is still written."""
    with trio.fail_after(GUARD):
        async with websocket_runtime() as (rt, url):
            peer, connection = await attach(rt, url)
            for i in range(30):
                await until_parked(connection)
                await peer.send("session.list_jobs", {})  # wakes it; it goes idle again
                for _ in range(i % 6):
                    await trio.lowlevel.cancel_shielded_checkpoint()
                nonce = new_frame_id()
                connection.enqueue(
                    encode_ping_frame(
                        frame_id=new_frame_id(),
                        session_id=connection.session.session_id,
                        nonce=nonce,
                        sent_at=system_timestamp(),
                    )
                )
                got = {f["type"]: f for f in [await peer.recv(), await peer.recv()]}
                assert set(got) == {"session.jobs", "session.ping"}
                assert got["session.ping"]["payload"]["nonce"] == nonce
            await peer.transport.aclose()


@pytest.mark.parametrize("batch", [0.3, 0.0])
async def test_input_after_a_ping_waits_for_the_batch_of_pongs(
    batch: float, autojump_clock: trio.abc.Clock
) -> None:
    """After a heartbeat ping (§6.4) the reactor reads the peer's socket only once
    ``ping_reply_batch_sec`` is over, so the pongs to one timer pass's pings are read
    in one pass. A pong and a request sent at once are both taken, in order, exactly
    then; with 0 nothing is deferred. (MockClock: loopback data is readable as soon as
    it is sent, so the clock jumps only to deadlines.)"""
    config = RuntimeConfig(
        heartbeat_interval_sec=1, resume_window_sec=60, ping_reply_batch_sec=batch
    )
    with trio.fail_after(GUARD):
        async with websocket_runtime(config) as (rt, url):
            peer, connection = await attach(rt, url)
            transport = connection.transport
            assert isinstance(transport, WebSocketTransport)
            reactor = transport._reactor
            assert reactor is not None
            ping = await peer.recv()
            pinged = trio.current_time()
            assert ping["type"] == "session.ping"
            assert (transport._reg.fd in reactor._deferred) == (batch > 0)
            await peer.send("session.pong", {"ping_nonce": ping["payload"]["nonce"]})
            request_id = await peer.send("session.list_jobs", {})
            jobs = await peer.recv_type("session.jobs")
            assert jobs["payload"]["request_id"] == request_id
            assert trio.current_time() - pinged == pytest.approx(batch)
            assert transport._reg.fd not in reactor._deferred
            assert connection.monitor is not None
            assert connection.monitor.last_received >= pinged  # the pong (and request) read
            assert session_is_live(rt, peer, connection)
            await peer.transport.aclose()
