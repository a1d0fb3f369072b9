"""RAM holds a bounded cache; the store has the rest, read back a page at a time.

With a durable store a detached session and a finished job keep no events in RAM,
an attached session and a running job at most ``event_cache_events``; a resume
(§6.3) and a subscribe with history (§7.6) read the rest from the store in pages
and still deliver exactly the gap, in order, then go live with nothing lost or
repeated (``Peer`` asserts every ``event_seq`` is the last one plus one). Without a
store ``history_memory_events`` caps job histories, and a subscribe says what it
no longer holds (``history_missing``).

Real SQLite files in tmp_path; real clock (the store's writer is a thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import Runtime, open_runtime
from arcp_trio.store.sqlite import SQLiteStore
from tests.helpers import REFERENCE_FEATURES, TOKENS, Peer, connect, trio_wall_clock

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from arcp_trio.runtime.agents import AgentRegistry

CACHE = 16
SECOND_HALF = 500
CONFIG = RuntimeConfig(heartbeat_interval_sec=1000, event_cache_events=CACHE)


def sqlite_runtime(
    path: Path, config: RuntimeConfig = CONFIG, agents: AgentRegistry | None = None
) -> AbstractAsyncContextManager[Runtime]:
    return open_runtime(
        agents=agents or demo_registry(),
        tokens=TOKENS,
        wall_clock=trio_wall_clock,
        store=SQLiteStore(path),
        config=config,
    )


def lines(frames: list[dict[str, Any]]) -> list[str]:
    """The ``log`` lines of ``chatty`` among ``frames``, in order."""
    return [
        f["payload"]["body"]["message"]
        for f in frames
        if f["type"] == "job.event" and f["payload"]["kind"] == "log"
    ]


async def read_events(peer: Peer, count: int) -> None:
    while peer.last_event_seq < count:
        await peer.recv()


async def drop(runtime: Runtime, peer: Peer, transport: Any) -> None:
    """Drop the connection (no close, no bye) and wait until the runtime noticed."""
    await transport.aclose()
    session = runtime.session(peer.session_id or "")
    assert session is not None
    # No event tells a test that the runtime noticed; bounded by the caller's fail_after.
    while session.connection is not None:  # noqa: ASYNC110
        await trio.sleep(0.001)


async def resume(runtime: Runtime, nursery: trio.Nursery, peer: Peer, after: int) -> Peer:
    """A new connection that sends the resume of ``peer``'s session from ``after``
    (§6.3) and returns without waiting for the welcome."""
    again, _ = await connect(runtime, nursery)
    again.last_event_seq = after
    resume = {"session_id": peer.session_id, "resume_token": peer.resume_token}
    await again.send(
        "session.hello",
        {
            "client": {"name": "test-peer", "version": "0"},
            "auth": {"scheme": "bearer", "token": "tok-alice"},
            "capabilities": {"encodings": ["json"], "features": REFERENCE_FEATURES},
            "resume": {**resume, "last_event_seq": after},
        },
    )
    return again


def two_phase(go: trio.Event, n: int, half: trio.Event | None = None) -> AgentRegistry:
    """``phased``: ``n`` log lines at once, ``half`` set, then (once ``go`` is set)
    500 more a millisecond apart, so the second half is emitted while a test's replay
    pages and after it has caught up (the boundary to live is crossed mid-job)."""
    registry = demo_registry()

    @registry.agent("phased")
    async def phased(_input: Any, ctx: Any) -> Any:
        for i in range(n):
            await ctx.log(f"line {i}")
        if half is not None:
            half.set()
        await go.wait()
        for i in range(n, n + SECOND_HALF):
            await ctx.log(f"line {i}")
            await trio.sleep(0.001)
        return None

    return registry


async def test_a_resume_replays_from_the_store_what_ram_let_go(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(30):
        async with sqlite_runtime(tmp_path / "rt.sqlite3") as runtime:
            peer, transport = await connect(runtime, nursery)
            await peer.hello()
            accepted = await peer.submit("chatty", {"n": 2000})
            await read_events(peer, 100)
            await drop(runtime, peer, transport)
            job = await runtime.wait_job_done(accepted["job_id"])
            session = runtime.session(peer.session_id or "")
            assert session is not None
            # Detached and finished: RAM holds none of the 2,000 events or their history.
            assert session.buffer.cached == 0
            assert len(job.history) == 0
            statistics = runtime.statistics()
            assert (statistics.cached_events, statistics.cached_history_events) == (0, 0)
            assert statistics.buffered_events == 2001  # the store has them

            again = await resume(runtime, nursery, peer, 100)
            welcome = await again.recv()
            assert welcome["type"] == "session.welcome"
            frames = await again.recv_terminal(accepted["job_id"])
    assert lines(frames) == [f"line {i}" for i in range(100, 2000)]
    assert frames[-1]["type"] == "job.result"


async def test_a_resume_during_a_running_job_catches_up_then_goes_live(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The replay pages while the job goes on emitting: what arrives meanwhile waits
    in the buffer and follows the replay, so nothing is lost, repeated or reordered."""
    n, go, half = 3000, trio.Event(), trio.Event()
    with trio.fail_after(60):
        async with sqlite_runtime(
            tmp_path / "rt.sqlite3", agents=two_phase(go, n, half)
        ) as runtime:
            peer, transport = await connect(runtime, nursery)
            await peer.hello()
            await peer.submit("phased")
            await read_events(peer, 10)
            await drop(runtime, peer, transport)
            await half.wait()
            again = await resume(runtime, nursery, peer, 10)
            go.set()  # the second half races the replay
            most_cached = 0
            frames: list[dict[str, Any]] = []
            while not frames or frames[-1]["type"] not in ("job.result", "job.error"):
                frames.append(await again.recv())
                most_cached = max(most_cached, runtime.statistics().cached_events)
    assert frames[0]["type"] == "session.welcome"
    assert lines(frames) == [f"line {i}" for i in range(10, n + SECOND_HALF)]
    # RAM never held the gap: the cache of the attached session, nothing more.
    assert most_cached <= CACHE


async def test_subscribe_with_history_pages_a_finished_job_from_the_store(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(30):
        async with sqlite_runtime(tmp_path / "rt.sqlite3") as runtime:
            owner, _ = await connect(runtime, nursery)
            await owner.hello()
            accepted = await owner.submit("chatty", {"n": 3000})
            await owner.recv_terminal(accepted["job_id"])
            watcher, _ = await connect(runtime, nursery)
            await watcher.hello()
            await watcher.send("job.subscribe", {"job_id": accepted["job_id"], "history": True})
            subscribed = await watcher.recv_type("job.subscribed")
            frames = await watcher.recv_terminal(accepted["job_id"])
    assert subscribed["payload"]["replayed"] == 3000
    assert "history_missing" not in subscribed["payload"]
    assert lines(frames) == [f"line {i}" for i in range(3000)]


async def test_subscribe_with_history_to_a_running_job_is_exactly_once(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """§7.6: history then live, with the boundary crossed while the store is read."""
    n, go = 3000, trio.Event()
    with trio.fail_after(60):
        async with sqlite_runtime(tmp_path / "rt.sqlite3", agents=two_phase(go, n)) as runtime:
            owner, _ = await connect(runtime, nursery)
            await owner.hello()
            accepted = await owner.submit("phased")
            await read_events(owner, n)
            watcher, _ = await connect(runtime, nursery)
            await watcher.hello()
            await watcher.send("job.subscribe", {"job_id": accepted["job_id"], "history": True})
            go.set()  # the second half races the history's pages
            subscribed = await watcher.recv_type("job.subscribed")
            frames = await watcher.recv_terminal(accepted["job_id"], timeout=60)
    assert n <= subscribed["payload"]["replayed"] < n + SECOND_HALF
    assert lines(frames) == [f"line {i}" for i in range(n + SECOND_HALF)]


async def test_a_restarted_runtime_resumes_from_the_file_without_loading_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "rt.sqlite3"
    with trio.fail_after(30):
        async with sqlite_runtime(path) as runtime:
            peer, transport = await connect(runtime, nursery)
            await peer.hello()
            accepted = await peer.submit("chatty", {"n": 1500})
            await read_events(peer, 5)
            await drop(runtime, peer, transport)
            await runtime.wait_job_done(accepted["job_id"])
        async with sqlite_runtime(path) as restarted:
            statistics = restarted.statistics()
            assert (statistics.cached_events, statistics.cached_history_events) == (0, 0)
            again = await resume(restarted, nursery, peer, 5)
            assert (await again.recv())["type"] == "session.welcome"
            frames = await again.recv_terminal(accepted["job_id"])
            # And the history of the finished job pages back too.
            other, _ = await connect(restarted, nursery)
            await other.hello()
            await other.send("job.subscribe", {"job_id": accepted["job_id"], "history": True})
            subscribed = await other.recv_type("job.subscribed")
            history = await other.recv_terminal(accepted["job_id"])
    assert lines(frames) == [f"line {i}" for i in range(5, 1500)]
    assert subscribed["payload"]["replayed"] == 1500
    assert lines(history) == [f"line {i}" for i in range(1500)]


async def test_without_a_store_job_histories_are_capped_and_say_so(
    nursery: trio.Nursery,
) -> None:
    config = RuntimeConfig(heartbeat_interval_sec=1000, history_memory_events=320)
    with trio.fail_after(30):
        async with open_runtime(
            agents=demo_registry(), tokens=TOKENS, wall_clock=trio_wall_clock, config=config
        ) as runtime:
            peer, _ = await connect(runtime, nursery)
            await peer.hello()
            first = await peer.submit("chatty", {"n": 1000})
            await peer.recv_terminal(first["job_id"])
            second = await peer.submit("chatty", {"n": 200})
            await peer.recv_terminal(second["job_id"])
            cached = runtime.statistics().cached_history_events
            watcher, _ = await connect(runtime, nursery)
            await watcher.hello()
            await watcher.send("job.subscribe", {"job_id": first["job_id"], "history": True})
            subscribed = await watcher.recv_type("job.subscribed")
            frames = await watcher.recv_terminal(first["job_id"])
            await watcher.send("job.subscribe", {"job_id": second["job_id"], "history": True})
            whole = await watcher.recv_type("job.subscribed")
    assert cached <= 320
    held = subscribed["payload"]["replayed"]
    # The oldest went first: the first job lost its oldest events, the second none.
    assert held + subscribed["payload"]["history_missing"] == 1000
    assert held < 1000
    assert lines(frames) == [f"line {i}" for i in range(1000 - held, 1000)]
    assert whole["payload"]["replayed"] == 200
    assert "history_missing" not in whole["payload"]


class _Watched(SQLiteStore):
    """A real SQLite store that remembers the most writes it ever had pending."""

    most_pending = 0

    def append_event(self, session_id: str, seq: int, job_id: str, frame: str) -> None:
        super().append_event(session_id, seq, job_id, frame)
        self.most_pending = max(self.most_pending, self._queued - self._committed)


async def test_an_agent_waits_for_the_writer_past_the_write_behind_bound(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The agent's batch point waits while the store is congested, so what is queued
    in RAM stays near the bound (an emit is two writes; the store is looked at once
    every 33 emits), instead of growing with the job."""
    store = _Watched(tmp_path / "rt.sqlite3", max_pending_writes=200)
    with trio.fail_after(60):
        async with open_runtime(
            agents=demo_registry(),
            tokens=TOKENS,
            wall_clock=trio_wall_clock,
            store=store,
            config=CONFIG,
        ) as runtime:
            peer, _ = await connect(runtime, nursery)
            await peer.hello()
            accepted = await peer.submit("chatty", {"n": 20_000})
            frames = await peer.recv_terminal(accepted["job_id"], timeout=60)
    assert len(lines(frames)) == 20_000
    assert store.most_pending <= 200 + 2 * 33 + 10
