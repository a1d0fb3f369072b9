"""Delegation (§10, §9.4): child jobs under a subset of the parent's authority, in the
runtime's job nursery, never outliving the parent.

Rules: in-memory transports, MockClock (autojump).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import Runtime, open_runtime
from arcp_trio.wire.errors import ARCPError
from arcp_trio.wire.timestamps import format_timestamp
from tests.helpers import TOKENS, Peer, connect, trio_wall_clock

if TYPE_CHECKING:
    import trio

    from arcp_trio.runtime.context import JobContext


def registry() -> Any:
    agents = demo_registry()

    @agents.agent("spend-then-delegate")
    async def spend_then_delegate(input_: Any, ctx: JobContext) -> Any:
        await ctx.metric("cost.inference", input_["spend"], unit="USD")
        try:
            child = await ctx.delegate("echo", "hi", lease=input_["lease"])
        except ARCPError as exc:
            return {"refused": exc.code, "budget": str(ctx.budget["USD"])}
        await child.result()
        return {"budget": str(ctx.budget["USD"])}

    @agents.agent("parent-of-slow")
    async def parent_of_slow(input_: Any, ctx: JobContext) -> Any:
        child = await ctx.delegate("slow", {"seconds": 100}, lease={})
        await ctx.status("delegated", child_job_id=child.job_id)
        return await child.result()

    return agents


async def session(runtime: Runtime, nursery: trio.Nursery) -> Peer:
    peer, _ = await connect(runtime, nursery)
    await peer.hello()
    return peer


async def run(peer: Peer, agent: str, input_: Any, **submit: Any) -> list[dict[str, Any]]:
    accepted = await peer.submit(agent, input_, **submit)
    assert accepted["type"] == "job.accepted", accepted
    return await peer.recv_terminal(accepted["job_id"])


async def open_rt(**config: Any) -> Any:
    return open_runtime(
        agents=registry(),
        tokens=TOKENS,
        config=RuntimeConfig(heartbeat_interval_sec=1000, **config),
        wall_clock=trio_wall_clock,
    )


async def test_delegator_runs_a_child_with_a_narrower_lease(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async with await open_rt() as runtime:
        peer = await session(runtime, nursery)
        frames = await run(
            peer,
            "delegator",
            {"agent": "echo@1.0.0", "input": {"x": 1}, "lease": {"fs.read": ["/data/a/**"]}},
            lease_request={"agent.delegate": ["echo"], "fs.read": ["/data/**"]},
        )
        result = frames[-1]["payload"]["result"]
        assert result["child_result"] == {"echo": {"x": 1}, "version": "1.0.0"}
        delegate = next(f for f in frames if f["type"] == "job.event")["payload"]
        assert delegate["kind"] == "delegate"
        assert delegate["body"]["child_job_id"] == result["child_job_id"]
        assert delegate["body"]["lease"] == {"fs.read": ["/data/a/**"]}
        child = runtime.job(result["child_job_id"])
        assert child is not None
        assert child.parent_job_id == frames[-1]["job_id"]
        assert child.principal == "alice"
        await peer.send("session.list_jobs", {})
        listing = await peer.recv_type("session.jobs")
        parents = {j["job_id"]: j.get("parent_job_id") for j in listing["payload"]["jobs"]}
        assert parents[child.job_id] == frames[-1]["job_id"]


async def test_a_wider_child_lease_is_a_subset_violation(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async with await open_rt() as runtime:
        peer = await session(runtime, nursery)
        frames = await run(
            peer,
            "delegator",
            {"agent": "echo", "lease": {"fs.read": ["/database/**"]}},
            lease_request={"agent.delegate": ["echo"], "fs.read": ["/data/**"]},
        )
        assert frames[-1]["type"] == "job.error"
        assert frames[-1]["payload"]["code"] == "LEASE_SUBSET_VIOLATION"
        assert len(runtime.job_ids()) == 1  # no child was started


async def test_delegating_needs_agent_delegate(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async with await open_rt() as runtime:
        peer = await session(runtime, nursery)
        frames = await run(
            peer,
            "delegator",
            {"agent": "echo", "lease": {}},
            lease_request={"agent.delegate": ["ticker"]},
        )
        assert frames[-1]["payload"]["code"] == "PERMISSION_DENIED"


async def test_child_budget_is_bounded_by_and_reserved_from_the_parents_remainder(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    lease = {"agent.delegate": ["echo"], "cost.budget": ["USD:1.00"]}
    async with await open_rt() as runtime:
        peer = await session(runtime, nursery)
        # §9.4: spent 0.60 of 1.00, so a child may have at most 0.40.
        frames = await run(
            peer,
            "spend-then-delegate",
            {"spend": 0.6, "lease": {"cost.budget": ["USD:0.50"]}},
            lease_request=lease,
        )
        assert frames[-1]["payload"]["result"]["refused"] == "LEASE_SUBSET_VIOLATION"
        frames = await run(
            peer,
            "spend-then-delegate",
            {"spend": 0.6, "lease": {"cost.budget": ["USD:0.40"]}},
            lease_request=lease,
        )
        # The child's 0.40 was reserved and, unspent, given back when it ended.
        assert Decimal(frames[-1]["payload"]["result"]["budget"]) == Decimal("0.40")


async def test_cancelling_the_parent_cancels_its_children(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async with await open_rt() as runtime:
        peer = await session(runtime, nursery)
        accepted = await peer.submit(
            "parent-of-slow", None, lease_request={"agent.delegate": ["slow"]}
        )
        status = await peer.recv_until(
            lambda f: f["type"] == "job.event" and f["payload"]["kind"] == "status"
        )
        child_id = status[-1]["payload"]["body"]["child_job_id"]
        await peer.send("job.cancel", {"reason": "stop"}, job_id=accepted["job_id"])
        await peer.recv_terminal(accepted["job_id"])
        child = await runtime.wait_job_done(child_id)
        assert child.status == "cancelled"
        assert child.terminal is not None
        assert "parent" in (child.terminal.message or "")


async def test_a_child_inherits_the_parents_expiry(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async with await open_rt(lease_expiry="terminate") as runtime:
        peer = await session(runtime, nursery)
        expires = format_timestamp(trio_wall_clock() + timedelta(seconds=5))
        accepted = await peer.submit(
            "parent-of-slow",
            None,
            lease_request={"agent.delegate": ["slow"]},
            lease_constraints={"expires_at": expires},
        )
        status = await peer.recv_until(
            lambda f: f["type"] == "job.event" and f["payload"]["kind"] == "status"
        )
        child = runtime.job(status[-1]["payload"]["body"]["child_job_id"])
        assert child is not None
        parent = runtime.job(accepted["job_id"])
        assert parent is not None
        assert child.lease.expires_at == parent.lease.expires_at
        done = await runtime.wait_job_done(child.job_id)
        assert done.terminal is not None
        assert done.terminal.code in ("LEASE_EXPIRED", "CANCELLED")
