"""The runtime's shared timer (heartbeats §6.4, resume windows §6.3) and what a
connection keeps while idle.

Rules: MockClock (autojump); in-memory transports for the runtime tests.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, TypeVar

import pytest
import trio
import trio.testing

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.runtime.serve import serve_websocket
from arcp_trio.runtime.session import hash_token
from arcp_trio.runtime.timers import Timers
from arcp_trio.transport.base import TransportBroken
from arcp_trio.transport.memory import MemoryTransport, memory_transport_pair
from arcp_trio.transport.reactor import reactor_available
from arcp_trio.transport.websocket import connect_websocket
from tests.helpers import TOKENS, Peer, connect, trio_wall_clock

if TYPE_CHECKING:
    from arcp_trio.runtime.connection import Connection
    from arcp_trio.runtime.runtime import Runtime

GUARD = 1000
T = TypeVar("T")


def record(log: list[tuple[T, float]], label: T, now: float) -> None:
    log.append((label, now))


async def test_deadlines_fire_in_order_at_their_time(autojump_clock: trio.abc.Clock) -> None:
    timers = Timers()
    fired: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        start = trio.current_time()
        for name, delay in [("c", 3.0), ("a", 1.0), ("b", 2.0)]:
            timers.call_at(start + delay, partial(record, fired, name))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert fired == [("a", start + 1), ("b", start + 2), ("c", start + 3)]
    assert len(timers) == 0


async def test_an_earlier_deadline_wakes_the_sleeping_task(autojump_clock: trio.abc.Clock) -> None:
    timers = Timers()
    fired: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        start = trio.current_time()
        timers.call_at(start + 100, fired.append)
        await trio.sleep(1)  # the task now sleeps until start + 100
        timers.call_at(start + 2, fired.append)
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert fired == [start + 2, start + 100]


async def test_coalescing_serves_close_deadlines_in_one_pass(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After a wake-up the task sleeps at least ``granularity``: late, never early."""
    timers = Timers(granularity=0.5)
    fired: list[tuple[float, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        start = trio.current_time()
        for offset in (1.0, 1.1, 1.3, 1.6):
            timers.call_at(start + offset, partial(record, fired, start + offset))
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert [now - start for _due, now in fired] == [1.0, 1.5, 1.5, 2.0]
    assert all(now >= due for due, now in fired)


async def test_cancelled_timers_do_not_fire_and_the_heap_stays_bounded(
    autojump_clock: trio.abc.Clock,
) -> None:
    timers = Timers()
    fired: list[float] = []
    start = trio.current_time()
    cancelled = [timers.call_at(start + 10 + i, fired.append) for i in range(1000)]
    kept = timers.call_at(start + 5, fired.append)
    for timer in cancelled:
        timer.cancel()
        timer.cancel()  # idempotent
    assert len(timers) == 1
    assert len(timers._heap) < 100  # rebuilt once cancelled entries were the majority
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.sleep(2000)
        nursery.cancel_scope.cancel()
    assert fired == [start + 5]
    kept.cancel()  # after firing: a no-op
    assert len(timers) == 0


async def test_a_failing_callback_is_logged_and_the_rest_still_fire(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    timers = Timers()
    fired: list[str] = []

    def explode(_now: float) -> None:
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        start = trio.current_time()
        timers.call_at(start + 1, explode)
        timers.call_at(start + 1, lambda _now: fired.append("same pass"))
        timers.call_at(start + 2, lambda _now: fired.append("later"))
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert fired == ["same pass", "later"]
    assert any("timer callback failed" in r.message for r in caplog.records)


def test_granularity_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="granularity"):
        Timers(granularity=-1)


# -- connections on the shared timer -----------------------------------------------------


async def attach(rt: Runtime, nursery: trio.Nursery) -> tuple[Peer, Connection]:
    """A peer in a new session, and the runtime's live connection for it."""
    peer, _ = await connect(rt, nursery)
    await peer.hello()
    return peer, live_connection(rt, peer)


def live_connection(rt: Runtime, peer: Peer) -> Connection:
    session = rt.session(peer.session_id)  # type: ignore[arg-type]
    assert session is not None
    assert session.connection is not None
    return session.connection


async def test_an_idle_connection_keeps_no_task_but_its_own(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """Receive runs in the connection's task; the writer only while frames wait; the
    heartbeat is a deadline in the runtime's timer — and pings still flow (§6.4)."""
    peer, connection = await attach(runtime, nursery)
    await trio.sleep(1)
    assert connection._nursery is not None
    assert connection._nursery.child_tasks == frozenset()
    for _ in range(3):
        ping = await peer.recv()
        assert ping["type"] == "session.ping"
        await peer.send("session.pong", {"ping_nonce": ping["payload"]["nonce"]})
        assert connection._nursery.child_tasks == frozenset()
    assert live_connection(runtime, peer) is connection


async def test_a_failing_heartbeat_ends_only_its_connection(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """The seed bug's lesson on the runtime side: an exception in one connection's
    heartbeat ends that connection (its session stays resumable), never the timer,
    another session or the runtime."""
    config = RuntimeConfig(heartbeat_interval_sec=10, resume_window_sec=60)
    async with open_runtime(
        agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        victim, connection = await attach(rt, nursery)
        bystander, _ = await attach(rt, nursery)
        victim_session = connection.session

        def failing(now: float) -> str:
            raise OSError("clock unavailable")

        connection._format_ping_time = failing  # the ping's sent_at cannot be read
        with trio.fail_after(GUARD), pytest.raises(TransportBroken):
            await victim.recv(timeout=GUARD)  # no ping ever comes: the connection ends
        await trio.testing.wait_all_tasks_blocked()  # the runtime detaches the session
        detached = rt.session(victim.session_id)  # type: ignore[arg-type]
        assert detached is victim_session
        assert detached.connection is None
        assert connection.close_reason == "heartbeat task failed"
        assert any("heartbeat failed" in r.message for r in caplog.records)
        # The bystander is pinged on as before, and keeps its connection.
        for _ in range(3):
            ping = await bystander.recv()
            assert ping["type"] == "session.ping"
            await bystander.send("session.pong", {"ping_nonce": ping["payload"]["nonce"]})
        # The victim's session resumes (§6.4: it lives on for the resume window).
        again, _ = await connect(rt, nursery)
        welcome = await again.hello(
            resume={"session_id": victim.session_id, "resume_token": victim.resume_token}
        )
        assert welcome["type"] == "session.welcome"
        assert welcome["session_id"] == victim.session_id


async def test_a_resume_as_the_window_ends_finds_the_session_gone(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§6.3 with a coalescing timer: a window's expiry may fire a moment after the
    window ends. A resume in that moment is refused *and* forgets the session, as the
    timer would have (found by the end-to-end fuzzer)."""
    peer, raw = await connect(runtime, nursery)
    await peer.hello()
    raw.abort()
    await trio.testing.wait_all_tasks_blocked()
    session = runtime.session(peer.session_id)  # type: ignore[arg-type]
    assert session is not None
    deadline = session.window.deadline
    assert deadline is not None
    # Another deadline just before makes the shared timer's next pass come late.
    timers = runtime._timers
    timers.call_at(deadline - timers.granularity / 5, lambda _now: None)
    await trio.sleep_until(deadline)
    assert runtime.session(peer.session_id) is session  # type: ignore[arg-type]
    again, _ = await connect(runtime, nursery)
    reply = await again.hello(
        resume={"session_id": peer.session_id, "resume_token": peer.resume_token}
    )
    assert reply["type"] == "session.error"
    assert reply["payload"]["code"] == "RESUME_WINDOW_EXPIRED"
    assert runtime.session(peer.session_id) is None  # type: ignore[arg-type]
    assert session.forgotten
    await trio.sleep(timers.granularity * 2)  # the timer's late expiry is a no-op now


async def test_frames_routed_while_a_connection_ends_are_dropped_not_raised(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """Job tasks queue frames at any moment, also while a connection's nursery is
    closing: such a frame is dropped (the session's buffer keeps it for resume), and
    no job ever sees the connection's end (found by the chaos fuzzer)."""
    for attempt in range(20):
        client_side, runtime_side = memory_transport_pair(buffer=0)
        peer = Peer(client_side)
        done = trio.Event()

        async def serve(transport: MemoryTransport = runtime_side, done: trio.Event = done) -> None:
            await runtime.handle_transport(transport)
            done.set()

        nursery.start_soon(serve)
        await peer.hello()
        connection = live_connection(runtime, peer)
        for i in range(3):
            connection.enqueue(f'{{"filler":{i}}}')  # the writer blocks: nobody reads
        await trio.testing.wait_all_tasks_blocked()
        client_side.abort()
        for _ in range(50 + attempt):  # every scheduling step of the connection's end
            connection.enqueue('{"late":true}')
            if done.is_set():
                break
            await trio.lowlevel.cancel_shielded_checkpoint()
        with trio.fail_after(GUARD):
            await done.wait()
        assert connection.closed


@pytest.mark.skipif(not reactor_available(), reason="the read reactor needs epoll")
async def test_a_pong_answers_the_welcome_and_a_malformed_one_is_refused() -> None:
    """§6.4 over a real WebSocket: a pong, taken by the parked connection's task
    without a dispatch, is noted for liveness and, as the client's first frame,
    confirms the resume token the welcome carried (§6.3); a malformed pong still gets
    INVALID_REQUEST from the receive loop."""
    config = RuntimeConfig(heartbeat_interval_sec=1, resume_window_sec=60)
    with trio.fail_after(10):
        async with (
            open_runtime(
                agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
            ) as rt,
            trio.open_nursery() as nursery,
        ):
            info = await nursery.start(serve_websocket, rt, "127.0.0.1", 0)
            client = await connect_websocket(info.url)
            peer = Peer(client)
            await peer.hello()
            session = rt.session(peer.session_id)  # type: ignore[arg-type]
            assert session is not None
            connection = session.connection
            assert connection is not None
            assert session.confirmed_token_hash == ""
            ping = await peer.recv()
            assert ping["type"] == "session.ping"
            monitor = connection.monitor
            assert monitor is not None
            sent = trio.current_time()
            await peer.send("session.pong", {"ping_nonce": ping["payload"]["nonce"]})
            while monitor.last_received < sent:  # noqa: ASYNC110 - real socket I/O
                await trio.sleep(0.005)
            assert monitor.last_heard < sent  # a pong: the next ping keeps its time
            assert session.confirmed_token_hash == hash_token(peer.resume_token or "")
            await peer.send_raw('{"type":"session.pong","id":"nope","payload":{}}')
            error = await peer.recv_type("session.error")
            assert error["payload"]["code"] == "INVALID_REQUEST"
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_a_callback_may_cancel_another_timer_of_the_same_pass(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The cancelled one does not fire, and the live count stays exact."""
    timers = Timers()
    fired: list[str] = []
    start = trio.current_time()

    def first(_now: float) -> None:
        fired.append("first")
        victim.cancel()

    timers.call_at(start + 1, first)  # same deadline, queued first: runs first
    victim = timers.call_at(start + 1, lambda _now: fired.append("victim"))
    later = timers.call_at(start + 2, lambda _now: fired.append("later"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.sleep(1.5)
        assert len(timers) == 1  # only ``later`` is pending
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert fired == ["first", "later"]
    assert len(timers) == 0
    assert later.cancelled
