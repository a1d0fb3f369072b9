"""The runtime's half of a graceful drain (issue 17: "SIGTERM drains").

``Runtime.shutdown`` gives jobs their grace, ends the rest with a terminal every
watcher receives, then tells each attached session ``session.closed`` (§6.7) with
reason "runtime shutting down", then closes the transport; a hello that arrives
meanwhile is refused with a clear, retryable error.

Rules: in-memory transports on the autojump clock, plus one run over a real
WebSocket on 127.0.0.1 on the real clock under ``trio.fail_after``; frames are read
raw (``tests.helpers.Peer``) so their order is what is checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from arcp_trio.demo_agents import demo_registry
from arcp_trio.protocol.session import ALL_FEATURES
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.runtime.serve import serve_websocket
from arcp_trio.testing.pairs import MemoryLink, open_test_client
from arcp_trio.transport.base import TransportError
from arcp_trio.transport.memory import memory_transport_pair
from arcp_trio.transport.websocket import connect_websocket
from arcp_trio.wire.errors import ARCPError
from tests.helpers import REFERENCE_FEATURES, TOKENS, Peer, trio_wall_clock

if TYPE_CHECKING:
    from arcp_trio.runtime.runtime import Runtime
    from tests.helpers import Frame


async def read_to_close(peer: Peer, timeout: float = 30) -> list[Frame]:
    """Every frame until the runtime closes the transport (pings left out)."""
    frames: list[Frame] = []
    with trio.fail_after(timeout):
        while True:
            try:
                frame = await peer.recv(timeout)
            except TransportError:
                return frames
            if frame["type"] != "session.ping":
                frames.append(frame)


def attach(rt: Runtime, nursery: trio.Nursery) -> Peer:
    client_side, runtime_side = memory_transport_pair()
    nursery.start_soon(rt.handle_transport, runtime_side)
    return Peer(client_side)


async def test_shutdown_sends_every_terminal_then_session_closed_then_closes(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = RuntimeConfig(heartbeat_interval_sec=1000, shutdown_grace_sec=5)
    async with trio.open_nursery() as server:  # the transport server outlives the runtime
        async with open_runtime(
            agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
        ) as rt:
            reference, spec, idle = attach(rt, server), attach(rt, server), attach(rt, server)
            await reference.hello(features=REFERENCE_FEATURES)
            await spec.hello(features=ALL_FEATURES)
            await idle.hello()
            quick = await reference.submit("ticker", {"count": 3, "interval": 1})
            cut = await reference.submit("slow", {"seconds": 100})
            spec_job = await spec.submit("slow", {"seconds": 100})
            # Leaving the block shuts the runtime down: the ticker ends within the
            # grace, the slow jobs are ended after it.
        frames = {"reference": await read_to_close(reference), "spec": await read_to_close(spec)}
        idle_frames = await read_to_close(idle)

    ref = frames["reference"]
    terminals = [f for f in ref if f["type"] in ("job.result", "job.error")]
    assert [(f["job_id"], f["type"]) for f in terminals] == [
        (quick["job_id"], "job.result"),
        (cut["job_id"], "job.error"),
    ]
    assert terminals[1]["payload"]["message"] == "runtime shutting down"
    assert terminals[1]["payload"]["retryable"] is True
    # The terminals, then session.closed, then nothing: the transport closed.
    assert ref[-1]["type"] == "session.closed"
    assert ref[-1]["payload"] == {"reason": "runtime shutting down"}
    assert ref[-2] is terminals[-1]
    # Spec shapes or not, every attached session is told (WIRE.md "Decisions").
    assert [f["type"] for f in frames["spec"]][-2:] == ["job.error", "session.closed"]
    assert frames["spec"][-2]["job_id"] == spec_job["job_id"]
    assert idle_frames == [
        {
            "arcp": "1.1",
            "id": idle_frames[0]["id"],
            "type": "session.closed",
            "session_id": idle.session_id,
            "payload": {"reason": "runtime shutting down"},
        }
    ]


async def test_a_hello_during_the_drain_is_refused(autojump_clock: trio.abc.Clock) -> None:
    config = RuntimeConfig(heartbeat_interval_sec=1000, shutdown_grace_sec=30)
    async with (
        trio.open_nursery() as server,
        open_runtime(
            agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
        ) as rt,
    ):
        owner = attach(rt, server)
        await owner.hello()
        running = await owner.submit("slow", {"seconds": 100})
        async with trio.open_nursery() as draining:
            draining.start_soon(rt.shutdown)
            await trio.sleep(1)  # within the 30 s grace: the job still runs
            assert not rt.ready
            assert rt.job(running["job_id"]).status == "running"  # type: ignore[union-attr]
            late = attach(rt, server)
            refused = await late.hello()
            assert refused["type"] == "session.error"
            assert refused["payload"]["code"] == "INTERNAL_ERROR"
            assert refused["payload"]["message"] == "runtime is shutting down"
            assert refused["payload"]["retryable"] is True  # another runtime may take it
            assert await read_to_close(late) == []
            stats = rt.statistics()
            assert stats.handshake_failures == {"INTERNAL_ERROR": 1}
            assert stats.sessions_opened == 1
        # The drain ended the job after its grace, then closed the owner's connection.
        owner_frames = await read_to_close(owner)
        assert [f["type"] for f in owner_frames][-2:] == ["job.error", "session.closed"]
        assert trio.current_time() >= 30
        server.cancel_scope.cancel()


async def test_the_drain_over_a_real_websocket() -> None:
    config = RuntimeConfig(heartbeat_interval_sec=10, shutdown_grace_sec=0.2)
    with trio.fail_after(20):
        async with trio.open_nursery() as server:
            async with open_runtime(agents=demo_registry(), tokens=TOKENS, config=config) as rt:
                info = await server.start(serve_websocket, rt, "127.0.0.1", 0)
                peer = Peer(await connect_websocket(info.url))
                await peer.hello()
                job = await peer.submit("slow", {"seconds": 100})
                await rt.shutdown()
                frames = await read_to_close(peer)
                # Closed by the runtime: a hello now is refused, not welcomed.
                late = Peer(await connect_websocket(info.url))
                refused = await late.hello()
                await late.transport.aclose()
            server.cancel_scope.cancel()
    assert [f["type"] for f in frames][-2:] == ["job.error", "session.closed"]
    assert frames[-2]["job_id"] == job["job_id"]
    assert refused["type"] == "session.error"
    assert refused["payload"]["message"] == "runtime is shutting down"


async def test_our_client_takes_a_runtime_initiated_close_in_its_stride(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Our client hears ``session.closed`` it did not ask for as the end of one
    connection, not of the session (§6.7: jobs and sessions stay resumable): its
    handles get their terminals, nothing raises, it keeps trying to resume, and
    ``aclose`` still ends it at once."""
    config = RuntimeConfig(heartbeat_interval_sec=8, resume_window_sec=64, shutdown_grace_sec=1)
    outcome: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        async with open_runtime(
            agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
        ) as rt:
            link = MemoryLink(rt, nursery)
            async with open_test_client(link) as client:
                handle = await client.submit("slow", {"seconds": 100})
                await rt.shutdown()
                try:
                    await handle.result()
                except ARCPError as exc:
                    outcome["error"] = exc
                await trio.sleep(5)
                outcome["state"] = client.statistics().state
                outcome["connects"] = link.connects
                start = trio.current_time()
            outcome["aclose_took"] = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert outcome["error"].message == "runtime shutting down"
    assert outcome["error"].retryable is True
    assert outcome["state"] == "reconnecting"  # the session may live on elsewhere
    assert outcome["connects"] >= 2  # it tried to resume (refused: shutting down)
    assert outcome["aclose_took"] <= 3
