"""Connections run in a nursery the runtime owns (DESIGN.md's card: each session's
connection gets its own child nursery; the runtime holds them all).

``handle_transport`` is called from whatever task a transport server runs; the
connection itself runs in the runtime's connection nursery, so the runtime's
shutdown flushes and ends it, and the caller's cancellation aborts it. The
transport closes in one place (the connection's task), exactly once.
"""

from __future__ import annotations

from typing import Any

import trio

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.transport.memory import memory_transport_pair
from tests.helpers import TOKENS, Peer, trio_wall_clock


async def test_cancelling_the_caller_ends_the_connection_not_the_job(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_runtime(
        agents=demo_registry(), tokens=TOKENS, wall_clock=trio_wall_clock
    ) as rt:
        client_side, runtime_side = memory_transport_pair()
        peer = Peer(client_side)
        async with trio.open_nursery() as caller:
            caller.start_soon(rt.handle_transport, runtime_side)
            welcome = await peer.hello()
            accepted = await peer.submit("ticker", {"count": 50, "interval": 1})
            assert accepted["type"] == "job.accepted"
            assert rt.statistics().attached_sessions == 1
            caller.cancel_scope.cancel()  # the transport server goes away
        await trio.sleep(1)
        stats = rt.statistics()
        assert stats.attached_sessions == 0  # detached, not forgotten
        assert rt.session(welcome["session_id"]) is not None
        assert stats.jobs_active == 1  # §6.7: the job outlives the connection
        job = rt.job(accepted["job_id"])
        assert job is not None
        assert job.status == "running"


async def test_shutdown_ends_connections_whose_callers_still_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The runtime's exit returns every ``handle_transport`` call, with the
    terminal delivered first, even to a peer that stopped reading."""
    returned: list[str] = []
    frames: list[dict[str, Any]] = []

    async def serve(rt: Any, transport: Any, name: str) -> None:
        await rt.handle_transport(transport)
        returned.append(name)

    config = RuntimeConfig(shutdown_grace_sec=1, backpressure_high_water=4)
    async with trio.open_nursery() as server:  # a transport server outside the runtime
        async with open_runtime(
            agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
        ) as rt:
            reader_side, runtime_reader = memory_transport_pair()
            stuck_side, runtime_stuck = memory_transport_pair()
            server.start_soon(serve, rt, runtime_reader, "reader")
            server.start_soon(serve, rt, runtime_stuck, "stuck")
            reader, stuck = Peer(reader_side), Peer(stuck_side)
            await reader.hello()
            await stuck.hello()
            accepted = await reader.submit("ticker", {"count": 1000, "interval": 0.01})
            stuck_job = await stuck.submit("ticker", {"count": 100_000, "interval": 0})
            assert stuck_job["type"] == "job.accepted"  # then never read again
            start = trio.current_time()

            async def read_all() -> None:
                while True:
                    frame = await reader.recv(timeout=60)
                    frames.append(frame)
                    if frame.get("job_id") == accepted["job_id"] and "event_seq" not in frame:
                        continue
                    if frame["type"] in ("job.result", "job.error"):
                        return

            server.start_soon(read_all)
            await trio.sleep(0.5)
            # Leaving the block shuts the runtime down.
        # Bounded: the grace, the jobs' 5 s, the flushes' 2 s, at most.
        assert trio.current_time() - start <= 1 + 5 + 2 + 1
        # The server nursery's own exit now waits for both calls to return.
    assert sorted(returned) == ["reader", "stuck"]
    terminal = [f for f in frames if f.get("job_id") == accepted["job_id"] and "event_seq" in f]
    assert terminal[-1]["type"] == "job.error"
    assert terminal[-1]["payload"]["message"] == "runtime shutting down"


async def test_a_transport_after_the_runtime_closed_is_closed_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_runtime(agents=demo_registry(), tokens=TOKENS) as rt:
        pass
    client_side, runtime_side = memory_transport_pair()
    with trio.fail_after(1):
        await rt.handle_transport(runtime_side)
    peer = Peer(client_side)
    with trio.fail_after(1):
        try:
            frame = await peer.recv(timeout=1)
        except Exception as exc:  # the transport is closed: nothing comes
            frame = {"closed": type(exc).__name__}
    assert frame.get("type") != "session.welcome"
