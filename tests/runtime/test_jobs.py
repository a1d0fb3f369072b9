"""Jobs end to end over the in-memory transport (§7, §8): demo agents, versions,
idempotency, cancel, timeout, subscribe, listing, acks, budgets, streaming.

Rules: in-memory transports, MockClock (autojump).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest
import trio

from arcp_trio.protocol.session import SPEC_SHAPES_FEATURE
from arcp_trio.runtime.agents import AgentRegistry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import Runtime, open_runtime
from tests.helpers import REFERENCE_FEATURES, TOKENS, Peer, connect, events_of, trio_wall_clock

if TYPE_CHECKING:
    from arcp_trio.runtime.context import JobContext

SPEC = [*REFERENCE_FEATURES, SPEC_SHAPES_FEATURE]


async def session(runtime: Runtime, nursery: trio.Nursery, **hello: Any) -> Peer:
    peer, _ = await connect(runtime, nursery)
    welcome = await peer.hello(**hello)
    assert welcome["type"] == "session.welcome", welcome
    return peer


async def run_job(
    peer: Peer, agent: str, input_: Any = None, **payload: Any
) -> list[dict[str, Any]]:
    accepted = await peer.submit(agent, input_, **payload)
    assert accepted["type"] == "job.accepted", accepted
    return [accepted, *await peer.recv_terminal(accepted["job_id"])]


# -- demo agents and versions (§7.5) -------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "version"), [("echo", "2.0.0"), ("echo@1.0.0", "1.0.0"), ("echo@2.0.0", "2.0.0")]
)
async def test_echo_versions(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock, ref: str, version: str
) -> None:
    peer = await session(runtime, nursery)
    frames = await run_job(peer, ref, {"hi": 1})
    accepted, *events, terminal = frames
    assert accepted["payload"]["agent"] == f"echo@{version}"
    assert accepted["job_id"] == accepted["payload"]["job_id"]
    assert [e["payload"]["kind"] for e in events] == ["log"]
    assert terminal["payload"] == {
        "final_status": "success",
        "completed_at": terminal["payload"]["completed_at"],
        "result": {"echo": {"hi": 1}, "version": version},
    }


async def test_unknown_agent_and_version(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    reply = await peer.submit("nobody")
    assert reply["payload"]["code"] == "AGENT_NOT_AVAILABLE"
    reply = await peer.submit("echo@9.9.9")
    assert reply["payload"]["code"] == "AGENT_VERSION_NOT_AVAILABLE"
    assert "1.0.0" in reply["payload"]["message"]


async def test_ticker(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    start = trio.current_time()
    _accepted, *events, terminal = await run_job(peer, "ticker", {"count": 3, "interval": 2})
    assert [e["payload"]["body"] for e in events] == [
        {"current": i, "total": 3, "units": "ticks"} for i in (1, 2, 3)
    ]
    assert terminal["payload"]["result"] == {"ticks": 3}
    assert trio.current_time() - start == 6


async def test_chunker_streams_a_result(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    _accepted, *chunks, terminal = await run_job(peer, "chunker", {"chunks": 4, "size": 8})
    bodies = [c["payload"]["body"] for c in chunks]
    assert [b["chunk_seq"] for b in bodies] == [0, 1, 2, 3, 4]
    assert [b["encoding"] for b in bodies] == ["utf8", "base64", "utf8", "base64", "utf8"]
    assert [b["more"] for b in bodies] == [True, True, True, True, False]
    assert len({b["result_id"] for b in bodies}) == 1
    assembled = b"".join(
        base64.b64decode(b["data"]) if b["encoding"] == "base64" else b["data"].encode()
        for b in bodies
    )
    assert assembled == b"aaaaaaaabbbbbbbbccccccccdddddddd"
    # §8.4: the terminal references the stream and carries no inline result.
    assert terminal["type"] == "job.result"
    assert terminal["payload"]["result_id"] == bodies[0]["result_id"]
    assert terminal["payload"]["result_size"] == 32
    assert "result" not in terminal["payload"]


async def test_slow(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    _, status, terminal = await run_job(peer, "slow", {"seconds": 3})
    assert status["payload"]["body"] == {"phase": "started"}
    assert terminal["payload"]["result"] == {"slept": 3}


async def test_spender_exhausts_its_budget(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    accepted, *events, terminal = await run_job(
        peer,
        "spender",
        {"steps": 5, "cost": 0.4},
        lease_request={"cost.budget": ["USD:1.00"], "tool.call": ["search"]},
    )
    # WIRE.md §17.4: budget values are strings for the reference dialect.
    assert accepted["payload"]["budget"] == {"USD": "USD:1.00"}
    metrics = [(e["payload"]["body"]["name"], e["payload"]["body"]["value"]) for e in events]
    assert metrics == [
        ("cost.inference", 0.4),
        ("cost.budget.remaining", 0.6),
        ("cost.inference", 0.4),
        ("cost.budget.remaining", 0.2),
        ("cost.inference", 0.4),
        ("cost.budget.remaining", 0.0),
    ]
    assert events[-1]["payload"]["body"]["dimensions"] == {"overspent": 0.2}
    assert terminal["type"] == "job.error"
    assert terminal["payload"]["code"] == "BUDGET_EXHAUSTED"
    assert terminal["payload"]["retryable"] is False  # §12
    assert terminal["payload"]["final_status"] == "error"


async def test_spender_without_a_tool_grant_is_denied(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    *_, terminal = await run_job(peer, "spender", {}, lease_request={"cost.budget": ["USD:1"]})
    assert terminal["payload"]["code"] == "PERMISSION_DENIED"


async def test_spec_dialect_budget_is_numeric(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery, features=SPEC)
    accepted = await peer.submit("echo", lease_request={"cost.budget": ["USD:5.00", "EUR:1"]})
    assert accepted["payload"]["budget"] == {"USD": 5.0, "EUR": 1.0}


async def test_chatty_every_event_kind(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    for kind in ("log", "thought", "progress", "status", "metric", "x-vendor.demo"):
        _accepted, *events, terminal = await run_job(peer, "chatty", {"n": 3, "kind": kind})
        assert [e["payload"]["kind"] for e in events] == [kind] * 3
        assert terminal["payload"]["result"] == {"n": 3}


async def test_all_ten_event_kinds_reach_the_client(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§8.2: every defined kind, emitted through the context's typed emitters."""
    registry = AgentRegistry()

    @registry.agent("kinds")
    async def kinds(_input: Any, ctx: JobContext) -> Any:
        await ctx.log("hello", level="warn")
        await ctx.thought("hmm")
        call_id = await ctx.tool_call("search", {"q": "trio"})
        await ctx.tool_result(call_id, {"hits": 3})
        await ctx.status("working", "halfway")
        await ctx.metric("latency", 12.5, unit="ms", dimensions={"host": "a"})
        await ctx.artifact_ref("file:///tmp/x", "text/plain", byte_size=3, sha256="ab")
        await ctx.event("delegate", {"child_job_id": "job_child", "agent": "echo@1.0.0"})
        await ctx.progress(1, 2, units="steps", message="one")
        async with ctx.stream_result() as stream:
            await stream.write("done")
        return None

    async with open_runtime(agents=registry, tokens=TOKENS, wall_clock=trio_wall_clock) as rt:
        peer = await session(rt, nursery)
        _, *events, terminal = await run_job(peer, "kinds")
        assert [e["payload"]["kind"] for e in events] == [
            "log",
            "thought",
            "tool_call",
            "tool_result",
            "status",
            "metric",
            "artifact_ref",
            "delegate",
            "progress",
            "result_chunk",
            "result_chunk",
        ]
        assert all(e["payload"]["ts"].endswith("Z") for e in events)
        assert events[2]["payload"]["body"]["call_id"] == events[3]["payload"]["body"]["call_id"]
        assert terminal["payload"]["result_size"] == 4


# -- failure terminals ---------------------------------------------------------------------


async def test_agent_exceptions_become_job_errors(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    registry = AgentRegistry()

    @registry.agent("boom")
    async def boom(_input: Any, _ctx: JobContext) -> Any:
        raise KeyError("missing")

    @registry.agent("stream-boom")
    async def stream_boom(_input: Any, ctx: JobContext) -> Any:
        async with ctx.stream_result() as stream:
            await stream.write("partial")
            raise RuntimeError("died mid-stream")

    async with open_runtime(agents=registry, tokens=TOKENS, wall_clock=trio_wall_clock) as rt:
        peer = await session(rt, nursery)
        *_, terminal = await run_job(peer, "boom")
        assert terminal["type"] == "job.error"
        assert terminal["payload"]["code"] == "INTERNAL_ERROR"
        assert terminal["payload"]["retryable"] is True
        assert "missing" in terminal["payload"]["message"]
        # The reference SDK emits a success *and* an error here; we emit one error.
        _, *events, terminal = await run_job(peer, "stream-boom")
        assert [e["payload"]["body"]["more"] for e in events] == [True]
        assert terminal["type"] == "job.error"
        assert "died mid-stream" in terminal["payload"]["message"]
        assert sum(1 for f in peer.received if f["type"] in ("job.result", "job.error")) == 2


async def test_max_runtime_sec_times_out(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    start = trio.current_time()
    *_, terminal = await run_job(peer, "slow", {"seconds": 100}, max_runtime_sec=5)
    assert trio.current_time() - start == 5
    # Reference dialect (WIRE.md §14.10).
    assert terminal["type"] == "job.result"
    assert terminal["payload"]["final_status"] == "timed_out"


async def test_max_runtime_sec_times_out_spec_dialect(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery, features=SPEC)
    *_, terminal = await run_job(peer, "slow", {"seconds": 100}, max_runtime_sec=5)
    # §7.3, §12: TIMEOUT, final_status timed_out.
    assert terminal["type"] == "job.error"
    assert terminal["payload"]["code"] == "TIMEOUT"
    assert terminal["payload"]["final_status"] == "timed_out"


# -- cancel (§7.4) -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [False, True])
async def test_cancel_by_the_submitter(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock, spec: bool
) -> None:
    peer = await session(runtime, nursery, features=SPEC if spec else REFERENCE_FEATURES)
    accepted = await peer.submit("slow", {"seconds": 100})
    job_id = accepted["job_id"]
    await peer.recv_type("job.event")
    cancel_id = await peer.send("job.cancel", {"reason": "enough"}, job_id=job_id)
    ack = await peer.recv_type("job.cancelled")
    assert ack["payload"] == {"job_id": job_id, "reason": "enough", "request_id": cancel_id}
    terminal = await peer.recv_type("job.result", "job.error")
    if spec:
        assert terminal["type"] == "job.error"
        assert terminal["payload"]["code"] == "CANCELLED"
        assert terminal["payload"]["final_status"] == "cancelled"
    else:
        assert terminal["type"] == "job.result"
        assert terminal["payload"]["final_status"] == "cancelled"
    assert runtime.job(job_id).status == "cancelled"  # type: ignore[union-attr]


async def test_cancel_authority_survives_resume(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, raw = await connect(runtime, nursery)
    await peer.hello()
    accepted = await peer.submit("slow", {"seconds": 100})
    await peer.recv_type("job.event")
    raw.abort()
    resumed, _ = await connect(runtime, nursery)
    resumed.last_event_seq = 1
    await resumed.hello(
        resume={
            "session_id": peer.session_id,
            "resume_token": peer.resume_token,
            "last_event_seq": 1,
        }
    )
    await resumed.send("job.cancel", {"reason": "after resume"}, job_id=accepted["job_id"])
    await resumed.recv_type("job.cancelled")
    terminal = await resumed.recv_type("job.result")
    assert terminal["payload"]["final_status"] == "cancelled"


async def test_only_the_submitting_session_may_cancel(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    owner = await session(runtime, nursery)
    accepted = await owner.submit("slow", {"seconds": 100})
    job_id = accepted["job_id"]
    sibling = await session(runtime, nursery)  # same principal, another session
    request_id = await sibling.send("job.cancel", {"reason": "x"}, job_id=job_id)
    reply = await sibling.recv_type("session.error")
    assert reply["payload"]["code"] == "PERMISSION_DENIED"
    assert reply["payload"]["request_id"] == request_id
    stranger = await session(runtime, nursery, token="tok-bob")
    await stranger.send("job.cancel", {"reason": "x"}, job_id=job_id)
    reply = await stranger.recv_type("session.error")
    # No existence leak across principals (§6.6, §14).
    assert reply["payload"]["code"] == "JOB_NOT_FOUND"
    assert runtime.job(job_id).status == "running"  # type: ignore[union-attr]


async def test_cancel_unknown_job(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    await peer.send("job.cancel", {"reason": "x"}, job_id="job_nope")
    reply = await peer.recv_type("session.error")
    assert reply["payload"]["code"] == "JOB_NOT_FOUND"
    await peer.send("job.cancel", {"reason": "x"})
    reply = await peer.recv_type("session.error")
    assert reply["payload"]["code"] == "INVALID_REQUEST"


# -- idempotency (§7.2) --------------------------------------------------------------------


async def test_idempotent_resubmit_replays_accepted_and_terminal(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery)
    first = await run_job(peer, "echo", {"n": 1}, idempotency_key="k1")
    again = await peer.submit("echo", {"n": 1}, idempotency_key="k1")
    assert again["payload"]["job_id"] == first[0]["payload"]["job_id"]
    assert again["payload"]["accepted_at"] == first[0]["payload"]["accepted_at"]
    terminal = await peer.recv_type("job.result")
    assert terminal["payload"]["result"] == first[-1]["payload"]["result"]
    conflict = await peer.submit("echo", {"n": 2}, idempotency_key="k1")
    assert conflict["payload"]["code"] == "DUPLICATE_KEY"
    # Keys are per principal.
    bob = await session(runtime, nursery, token="tok-bob")
    other = await bob.submit("echo", {"n": 2}, idempotency_key="k1")
    assert other["type"] == "job.accepted"
    assert other["payload"]["job_id"] != first[0]["payload"]["job_id"]


async def test_idempotency_is_atomic_across_sessions(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peers = [await session(runtime, nursery) for _ in range(5)]
    replies: list[dict[str, Any]] = []

    async def submit(peer: Peer) -> None:
        replies.append(await peer.submit("slow", {"seconds": 1}, idempotency_key="same"))

    async with trio.open_nursery() as inner:
        for peer in peers:
            inner.start_soon(submit, peer)
    assert len({r["payload"]["job_id"] for r in replies}) == 1
    assert len(runtime.job_ids()) == 1
    # Every session that resubmitted watches the job and sees its terminal.
    for peer in peers:
        terminal = await peer.recv_type("job.result")
        assert terminal["payload"]["result"] == {"slept": 1}


# -- subscribe (§7.6) ----------------------------------------------------------------------


async def test_subscribe_with_history_is_exactly_once(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    owner = await session(runtime, nursery)
    accepted = await owner.submit("ticker", {"count": 6, "interval": 1})
    job_id = accepted["job_id"]
    await owner.recv_until(lambda f: f.get("event_seq") == 3)
    watcher = await session(runtime, nursery)
    request_id = await watcher.send("job.subscribe", {"job_id": job_id, "history": True})
    subscribed = await watcher.recv_type("job.subscribed")
    assert subscribed["payload"]["request_id"] == request_id
    assert subscribed["payload"]["current_status"] == "running"
    assert subscribed["payload"]["agent"] == "ticker@1.0.0"
    frames = await watcher.recv_terminal(job_id)
    currents = [f["payload"]["body"]["current"] for f in frames if f["type"] == "job.event"]
    # History (1..n) then live (n+1..6), no duplicate across the boundary.
    assert currents == [1, 2, 3, 4, 5, 6]
    assert subscribed["payload"]["replayed"] == subscribed["payload"]["subscribed_from"]
    assert frames[-1]["payload"]["result"] == {"ticks": 6}


async def test_subscribe_from_event_seq_and_without_history(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    owner = await session(runtime, nursery)
    job_id = (await owner.submit("ticker", {"count": 6, "interval": 1}))["job_id"]
    await owner.recv_until(lambda f: f.get("event_seq") == 4)
    partial = await session(runtime, nursery)
    await partial.send("job.subscribe", {"job_id": job_id, "history": True, "from_event_seq": 2})
    await partial.recv_type("job.subscribed")
    frames = await partial.recv_terminal(job_id)
    assert [f["payload"]["body"]["current"] for f in frames[:-1]] == [3, 4, 5, 6]
    live = await session(runtime, nursery)
    await live.send("job.subscribe", {"job_id": job_id})
    subscribed = await live.recv_type("job.subscribed")
    assert subscribed["payload"]["replayed"] == 0


async def test_submit_and_subscribe_share_one_gap_free_sequence(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§8.3: one session, its own job and a subscribed job: one event_seq space."""
    other = await session(runtime, nursery)
    theirs = (await other.submit("ticker", {"count": 5, "interval": 1}))["job_id"]
    peer = await session(runtime, nursery)
    mine = (await peer.submit("ticker", {"count": 5, "interval": 1}))["job_id"]
    await peer.send("job.subscribe", {"job_id": theirs, "history": True})
    done: set[str] = set()

    def both_ended(frame: dict[str, Any]) -> bool:
        if frame["type"] in ("job.result", "job.error"):
            done.add(frame["job_id"])
        return done == {mine, theirs}

    frames = await peer.recv_until(both_ended)
    seqs = [f["event_seq"] for f in frames if "event_seq" in f]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(events_of(frames, mine)) == 6
    assert len(events_of(frames, theirs)) == 6


async def test_subscribe_isolation(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    alice = await session(runtime, nursery)
    job_id = (await alice.submit("slow", {"seconds": 10}))["job_id"]
    bob = await session(runtime, nursery, token="tok-bob")
    await bob.send("job.subscribe", {"job_id": job_id, "history": True})
    reply = await bob.recv_type("session.error")
    assert reply["payload"]["code"] == "JOB_NOT_FOUND"


async def test_subscribe_to_a_finished_job_delivers_its_terminal(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    owner = await session(runtime, nursery)
    frames = await run_job(owner, "echo", "x")
    job_id = frames[0]["job_id"]
    late = await session(runtime, nursery)
    await late.send("job.subscribe", {"job_id": job_id, "history": True})
    subscribed = await late.recv_type("job.subscribed")
    assert subscribed["payload"]["current_status"] == "success"
    replay = await late.recv_terminal(job_id)
    assert [f["type"] for f in replay] == ["job.event", "job.result"]


async def test_unsubscribe_stops_events(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    owner = await session(runtime, nursery)
    job_id = (await owner.submit("ticker", {"count": 5, "interval": 1}))["job_id"]
    watcher = await session(runtime, nursery)
    await watcher.send("job.subscribe", {"job_id": job_id})
    await watcher.recv_type("job.subscribed")
    await watcher.send("job.unsubscribe", {"job_id": job_id})
    await owner.recv_terminal(job_id)
    await watcher.send("session.ping", {"nonce": "after", "sent_at": "2026-01-01T00:00:00Z"})
    pong = await watcher.recv_until(lambda f: f["type"] == "session.pong")
    assert all(f.get("job_id") != job_id for f in pong[:-1] if f["type"] == "job.event")


# -- list_jobs (§6.6) ----------------------------------------------------------------------


async def test_list_jobs_scoped_and_paginated(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    alice = await session(runtime, nursery)
    ids = [(await run_job(alice, "echo", i))[0]["job_id"] for i in range(5)]
    running = (await alice.submit("slow", {"seconds": 50}))["job_id"]
    await alice.send("session.list_jobs", {"limit": 2})
    page = await alice.recv_type("session.jobs")
    assert [j["job_id"] for j in page["payload"]["jobs"]] == ids[:2]
    entry = page["payload"]["jobs"][0]
    assert entry["agent"] == "echo@2.0.0"
    assert entry["status"] == "success"
    assert entry["submitted_at"].endswith("Z")
    seen = [j["job_id"] for j in page["payload"]["jobs"]]
    while "next_cursor" in page["payload"]:
        await alice.send(
            "session.list_jobs", {"limit": 2, "cursor": page["payload"]["next_cursor"]}
        )
        page = await alice.recv_type("session.jobs")
        seen += [j["job_id"] for j in page["payload"]["jobs"]]
    assert seen == [*ids, running]
    await alice.send("session.list_jobs", {"filter": {"status": ["running"]}})
    page = await alice.recv_type("session.jobs")
    assert [j["job_id"] for j in page["payload"]["jobs"]] == [running]
    await alice.send("session.list_jobs", {"filter": {"agent": "slow@1.0.0"}})
    page = await alice.recv_type("session.jobs")
    assert [j["job_id"] for j in page["payload"]["jobs"]] == [running]
    bob = await session(runtime, nursery, token="tok-bob")
    await bob.send("session.list_jobs", {})
    page = await bob.recv_type("session.jobs")
    assert page["payload"]["jobs"] == []
    await alice.send("session.list_jobs", {"cursor": "garbage"})
    assert (await alice.recv_type("session.error"))["payload"]["code"] == "INVALID_REQUEST"
    await alice.send("session.list_jobs", {"filter": {"created_after": "yesterday"}})
    assert (await alice.recv_type("session.error"))["payload"]["code"] == "INVALID_REQUEST"


# -- acks and the buffer cap (§6.5) ---------------------------------------------------------


async def test_ack_frees_events_and_resume_below_the_ack_expires(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, raw = await connect(runtime, nursery)
    await peer.hello()
    accepted = await peer.submit("chatty", {"n": 10})
    frames = await peer.recv_terminal(accepted["job_id"])
    assert frames[-1]["event_seq"] == 11
    await peer.send("session.ack", {"last_processed_seq": 8})
    await trio.sleep(0.1)
    state = runtime.session(peer.session_id)  # type: ignore[arg-type]
    assert state is not None
    assert [e.seq for e in state.buffer] == [9, 10, 11]  # §6.5: acked events freed
    await peer.send("session.ack", {"last_processed_seq": 99})
    assert (await peer.recv_type("session.error"))["payload"]["code"] == "INVALID_REQUEST"
    raw.abort()
    below, _ = await connect(runtime, nursery)
    reply = await below.hello(
        resume={
            "session_id": peer.session_id,
            "resume_token": peer.resume_token,
            "last_event_seq": 7,
        }
    )
    assert reply["payload"]["code"] == "RESUME_WINDOW_EXPIRED"
    ok, _ = await connect(runtime, nursery)
    ok.last_event_seq = 8
    welcome = await ok.hello(
        resume={
            "session_id": peer.session_id,
            "resume_token": peer.resume_token,
            "last_event_seq": 8,
        }
    )
    assert welcome["type"] == "session.welcome"
    replay = await ok.recv_terminal(accepted["job_id"])
    assert [f["event_seq"] for f in replay] == [9, 10, 11]


def _registry() -> AgentRegistry:
    from arcp_trio.demo_agents import demo_registry

    return demo_registry()


async def test_overflow_is_reported_and_resume_below_it_expires(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    config = RuntimeConfig(max_buffered_events=10, heartbeat_interval_sec=1000)
    async with open_runtime(
        agents=_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        peer, raw = await connect(rt, nursery)
        await peer.hello()
        accepted = await peer.submit("ticker", {"count": 30, "interval": 1})
        await peer.recv_until(lambda f: f.get("event_seq") == 2)
        raw.abort()
        await rt.wait_job_done(accepted["job_id"])
        late, _ = await connect(rt, nursery)
        reply = await late.hello(
            resume={
                "session_id": peer.session_id,
                "resume_token": peer.resume_token,
                "last_event_seq": 2,
            }
        )
        assert reply["payload"]["code"] == "RESUME_WINDOW_EXPIRED"
        # The session survives the refusal: a resume from what is still held works.
        held = rt.session(peer.session_id)  # type: ignore[arg-type]
        assert held is not None
        first = held.buffer.first_held_seq() - 1
        ok, _ = await connect(rt, nursery)
        ok.last_event_seq = first
        welcome = await ok.hello(
            resume={
                "session_id": peer.session_id,
                "resume_token": peer.resume_token,
                "last_event_seq": first,
            }
        )
        assert welcome["type"] == "session.welcome"
        await ok.recv_terminal(accepted["job_id"])


async def test_overflow_notices_reach_a_reader_that_never_acks(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§6.5: back-pressure is signalled once per episode, never after a terminal."""
    config = RuntimeConfig(max_buffered_events=10, heartbeat_interval_sec=1000)
    async with open_runtime(
        agents=_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        peer = await session(rt, nursery)
        accepted = await peer.submit("ticker", {"count": 40, "interval": 1})
        frames = await peer.recv_terminal(accepted["job_id"])
        notices = [
            f
            for f in frames
            if f["type"] == "job.event" and f["payload"]["body"].get("phase") == "back_pressure"
        ]
        # One per episode: an episode ends when the notice itself is evicted (10 events).
        assert 2 <= len(notices) <= 5
        assert all("evicted_through" in n["payload"]["body"] for n in notices)
        ticks = [
            f for f in frames if f["type"] == "job.event" and "current" in f["payload"]["body"]
        ]
        assert len(ticks) == 40
        assert frames[-1]["type"] == "job.result"


# -- shutdown --------------------------------------------------------------------------------


async def test_shutdown_ends_jobs_with_a_terminal_watchers_receive(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    config = RuntimeConfig(shutdown_grace_sec=2, heartbeat_interval_sec=1000)
    async with open_runtime(
        agents=_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        peer = await session(rt, nursery)
        quick = (await peer.submit("slow", {"seconds": 1}))["job_id"]
        stuck = (await peer.submit("slow", {"seconds": 1000}))["job_id"]
        start = trio.current_time()
        async with trio.open_nursery() as inner:
            inner.start_soon(rt.shutdown)
            frames = await peer.recv_until(
                lambda f: f.get("job_id") == stuck and f["type"] == "job.error"
            )
        assert trio.current_time() - start == 2  # the grace, then cancellation
        terminals = {f["job_id"]: f for f in frames if f["type"] in ("job.result", "job.error")}
        assert terminals[quick]["payload"]["final_status"] == "success"
        assert terminals[stuck]["payload"]["code"] == "INTERNAL_ERROR"
        assert terminals[stuck]["payload"]["retryable"] is True
        # New work is refused while shutting down.
        fresh, _ = await connect(rt, nursery)
        reply = await fresh.hello()
        assert reply["type"] == "session.error"


# -- result caps and job concurrency -----------------------------------------------------------


async def test_large_writes_are_split_and_the_total_is_capped(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    registry = AgentRegistry()

    @registry.agent("big")
    async def big(input_: Any, ctx: JobContext) -> Any:
        async with ctx.stream_result() as stream:
            await stream.write("é" * input_["chars"])
            await stream.write(b"\x00" * input_["bytes"])
        return None

    config = RuntimeConfig(result_chunk_bytes=1000, max_result_bytes=10_000)
    async with open_runtime(
        agents=registry, tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        peer = await session(rt, nursery)
        _, *chunks, terminal = await run_job(peer, "big", {"chars": 1500, "bytes": 2000})
        bodies = [c["payload"]["body"] for c in chunks]
        assert all(len(b["data"].encode()) <= 1000 for b in bodies)
        text = "".join(b["data"] for b in bodies if b["encoding"] == "utf8")
        raw = b"".join(base64.b64decode(b["data"]) for b in bodies if b["encoding"] == "base64")
        assert text == "é" * 1500
        assert raw == b"\x00" * 2000
        assert terminal["payload"]["result_size"] == 3000 + 2000
        # §14: exceeding the total cap MUST result in INTERNAL_ERROR.
        *_, terminal = await run_job(peer, "big", {"chars": 6000, "bytes": 0})
        assert terminal["type"] == "job.error"
        assert terminal["payload"]["code"] == "INTERNAL_ERROR"


async def test_jobs_beyond_the_concurrency_limit_wait_as_pending(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    config = RuntimeConfig(max_concurrent_jobs=1)
    async with open_runtime(
        agents=_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        peer = await session(rt, nursery)
        first = (await peer.submit("slow", {"seconds": 5}))["job_id"]
        second = (await peer.submit("slow", {"seconds": 5}))["job_id"]
        await trio.sleep(1)
        assert rt.job(first).status == "running"  # type: ignore[union-attr]
        assert rt.job(second).status == "pending"  # type: ignore[union-attr]
        assert rt.statistics().jobs_active == 2
        start = trio.current_time()
        await rt.wait_job_done(second)
        assert trio.current_time() - start == 9


async def test_ack_is_ignored_unless_negotiated(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await session(runtime, nursery, features=["heartbeat"])
    accepted = await peer.submit("echo", 1)
    await peer.recv_terminal(accepted["job_id"])
    await peer.send("session.ack", {"last_processed_seq": 2})
    await trio.sleep(0.1)
    state = runtime.session(peer.session_id)  # type: ignore[arg-type]
    assert state is not None
    assert len(state.buffer) == 2


async def test_one_policy_hook_widens_listing_and_subscribe_but_never_cancel(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§6.6/§14: a deployment policy may let an auditor observe others' jobs; it
    never confers cancel authority (§7.6)."""

    def auditors_see_all(principal: str, job: Any) -> bool:
        return principal in ("bob", job.principal)

    async with open_runtime(
        agents=_registry(),
        tokens=TOKENS,
        wall_clock=trio_wall_clock,
        observe_policy=auditors_see_all,
    ) as rt:
        alice = await session(rt, nursery)
        job_id = (await alice.submit("slow", {"seconds": 5}))["job_id"]
        bob = await session(rt, nursery, token="tok-bob")
        await bob.send("session.list_jobs", {})
        listing = await bob.recv_type("session.jobs")
        assert [j["job_id"] for j in listing["payload"]["jobs"]] == [job_id]
        await bob.send("job.subscribe", {"job_id": job_id})
        assert (await bob.recv_type("job.subscribed"))["payload"]["job_id"] == job_id
        await bob.send("job.cancel", {"reason": "no"}, job_id=job_id)
        assert (await bob.recv_type("session.error"))["payload"]["code"] == "PERMISSION_DENIED"
        terminal = await bob.recv_type("job.result")
        assert terminal["payload"]["result"] == {"slept": 5}


async def test_subscribe_while_the_emitter_waits_on_back_pressure_is_exactly_once(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """Regression (found by the benchmarks): an event whose emitter was blocked on a
    congested connection when a subscriber joined was recorded after the history
    snapshot but routed to the watchers of before: the subscriber missed it."""
    from arcp_trio.transport.memory import memory_transport_pair

    config = RuntimeConfig(backpressure_high_water=4, heartbeat_interval_sec=1000)
    async with open_runtime(
        agents=_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        client_side, runtime_side = memory_transport_pair(buffer=0)
        nursery.start_soon(rt.handle_transport, runtime_side)
        owner = Peer(client_side)
        await owner.hello()
        accepted = await owner.submit("chatty", {"n": 60})
        await trio.sleep(1)  # the owner reads nothing: the agent is now blocked
        assert rt.job(accepted["job_id"]).status == "running"  # type: ignore[union-attr]
        watcher = await session(rt, nursery)
        await watcher.send("job.subscribe", {"job_id": accepted["job_id"], "history": True})
        await watcher.recv_type("job.subscribed")
        owner_frames = await owner.recv_terminal(accepted["job_id"])
        frames = await watcher.recv_terminal(accepted["job_id"])
        lines = [f["payload"]["body"]["message"] for f in frames if f["type"] == "job.event"]
        assert lines == [f"line {i}" for i in range(60)]
        assert len([f for f in owner_frames if f["type"] == "job.event"]) == 60


async def test_cancelling_a_finished_job_is_a_quiet_no_op(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """Regression (fuzzing): the submitter's cancel of a finished job raised KeyError
    inside the runtime and was answered INTERNAL_ERROR."""
    peer = await session(runtime, nursery)
    frames = await run_job(peer, "echo", 1)
    await peer.send("job.cancel", {"reason": "late"}, job_id=frames[0]["job_id"])
    await peer.send("session.ping", {"nonce": "after", "sent_at": "2026-01-01T00:00:00Z"})
    answered = await peer.recv_until(lambda f: f["type"] == "session.pong")
    assert [f["type"] for f in answered] == ["session.pong"]


async def test_a_result_too_deep_to_serialise_ends_only_its_job(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """Regression (fuzzing): a deeply nested agent result raised RecursionError
    outside every boundary and crashed the job nursery, i.e. the whole runtime."""
    registry = AgentRegistry()

    @registry.agent("deep")
    async def deep(_input: Any, _ctx: JobContext) -> Any:
        value: Any = 0
        for _ in range(5000):
            value = [value]
        return value

    async with open_runtime(agents=registry, tokens=TOKENS, wall_clock=trio_wall_clock) as rt:
        peer = await session(rt, nursery)
        *_, terminal = await run_job(peer, "deep")
        assert terminal["type"] == "job.error"
        assert terminal["payload"]["code"] == "INTERNAL_ERROR"
        # The runtime is still serving: another job runs to its terminal.
        *_, again = await run_job(peer, "deep")
        assert again["payload"]["code"] == "INTERNAL_ERROR"
