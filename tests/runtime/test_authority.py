"""Authority the runtime enforces (§9): mediated tool calls, fatal denials, lease
expiry (reactive and proactive), model use.

Rules: in-memory transports, MockClock (autojump); wall-clock time follows Trio's
clock, so ``expires_at`` agrees with MockClock.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import trio

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import Runtime, open_runtime
from arcp_trio.runtime.tools import ToolRegistry, current_trace_id
from arcp_trio.wire.errors import ARCPError
from arcp_trio.wire.timestamps import format_timestamp
from tests.helpers import TOKENS, Peer, connect, trio_wall_clock

if TYPE_CHECKING:
    from arcp_trio.protocol.leases import Lease
    from arcp_trio.runtime.context import JobContext


def registry_with_tooler() -> Any:
    registry = demo_registry()

    @registry.agent("tooler")
    async def tooler(input_: Any, ctx: JobContext) -> Any:
        outcomes = []
        for name in input_["tools"]:
            try:
                outcomes.append(await ctx.call_tool(name, {"q": name}))
            except ARCPError as exc:
                outcomes.append(exc.code)
            if input_.get("cost"):
                await ctx.metric("cost.search", input_["cost"], unit="USD")
        return outcomes

    @registry.agent("modeller")
    async def modeller(input_: Any, ctx: JobContext) -> Any:
        outcomes = []
        for model in input_:
            try:
                ctx.use_model(model)
                outcomes.append("ok")
            except ARCPError as exc:
                outcomes.append(exc.code)
        return outcomes

    return registry


def tools() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool("search")
    async def search(args: Any) -> Any:
        return {"hits": [args["q"]]}

    @registry.tool("trace")
    async def trace(_args: Any) -> Any:
        return current_trace_id.get()

    return registry


async def run(
    nursery: trio.Nursery,
    agent: str,
    input_: Any,
    config: RuntimeConfig | None = None,
    **submit: Any,
) -> list[dict[str, Any]]:
    async with open_runtime(
        agents=registry_with_tooler(),
        tokens=TOKENS,
        config=config or RuntimeConfig(heartbeat_interval_sec=1000),
        wall_clock=trio_wall_clock,
        tools=tools(),
    ) as runtime:
        peer, _ = await connect(runtime, nursery)
        await peer.hello()
        accepted = await peer.submit(agent, input_, **submit)
        assert accepted["type"] == "job.accepted", accepted
        return await peer.recv_terminal(accepted["job_id"])


def bodies(frames: list[dict[str, Any]], kind: str) -> list[Any]:
    return [
        f["payload"]["body"]
        for f in frames
        if f["type"] == "job.event" and f["payload"]["kind"] == kind
    ]


async def test_tool_calls_are_checked_before_dispatch(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    frames = await run(
        nursery,
        "tooler",
        {"tools": ["search", "delete-everything"]},
        lease_request={"tool.call": ["search"]},
    )
    assert frames[-1]["payload"]["result"] == [{"hits": ["search"]}, "PERMISSION_DENIED"]
    calls = bodies(frames, "tool_call")
    results = bodies(frames, "tool_result")
    assert [c["tool"] for c in calls] == ["search", "delete-everything"]
    assert results[0] == {"call_id": calls[0]["call_id"], "result": {"hits": ["search"]}}
    # §9.3: denied operations surface as a tool_result error the agent can handle.
    assert results[1]["call_id"] == calls[1]["call_id"]
    assert results[1]["error"]["code"] == "PERMISSION_DENIED"
    assert results[1]["error"]["retryable"] is False


async def test_unknown_tool_is_an_error_result(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    frames = await run(nursery, "tooler", {"tools": ["nope"]}, lease_request={"tool.call": ["*"]})
    assert frames[-1]["payload"]["result"] == ["INVALID_REQUEST"]


async def test_budget_exhaustion_is_handled_or_fatal_by_policy(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    lease = {"tool.call": ["search"], "cost.budget": ["USD:1.00"]}
    frames = await run(
        nursery, "tooler", {"tools": ["search"] * 4, "cost": 0.6}, lease_request=lease
    )
    # Non-fatal (default): the agent sees BUDGET_EXHAUSTED and carries on.
    assert frames[-1]["payload"]["result"][2:] == ["BUDGET_EXHAUSTED", "BUDGET_EXHAUSTED"]
    fatal = RuntimeConfig(
        heartbeat_interval_sec=1000, fatal_denials=frozenset({"BUDGET_EXHAUSTED"})
    )
    frames = await run(
        nursery,
        "tooler",
        {"tools": ["search"] * 4, "cost": 0.6},
        config=fatal,
        lease_request=lease,
    )
    terminal = frames[-1]
    assert terminal["type"] == "job.error"
    assert terminal["payload"]["code"] == "BUDGET_EXHAUSTED"
    assert terminal["payload"]["retryable"] is False
    # The denial was still reported as a tool_result before the job ended.
    assert bodies(frames, "tool_result")[-1]["error"]["code"] == "BUDGET_EXHAUSTED"


def expires_in(seconds: float) -> dict[str, str]:
    return {"expires_at": format_timestamp(trio_wall_clock() + timedelta(seconds=seconds))}


async def test_an_operation_after_expiry_ends_the_job(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    ok = await run(
        nursery,
        "toucher",
        {"namespace": "fs.read", "target": "/data/a", "delay": 4},
        lease_request={"fs.read": ["/data/**"]},
        lease_constraints=expires_in(5),
    )
    assert ok[-1]["payload"]["result"] == {"allowed": True}
    late = await run(
        nursery,
        "toucher",
        {"namespace": "fs.read", "target": "/data/a", "delay": 6},
        lease_request={"fs.read": ["/data/**"]},
        lease_constraints=expires_in(5),
    )
    # §9.5: "Operations attempted at or after expires_at MUST fail with LEASE_EXPIRED".
    assert late[-1]["type"] == "job.error"
    assert late[-1]["payload"]["code"] == "LEASE_EXPIRED"
    assert late[-1]["payload"]["final_status"] == "error"


async def test_proactive_termination_at_expiry(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    config = RuntimeConfig(heartbeat_interval_sec=1000, lease_expiry="terminate")
    start = trio.current_time()
    frames = await run(
        nursery, "slow", {"seconds": 100}, config=config, lease_constraints=expires_in(5)
    )
    assert trio.current_time() - start == 5
    assert frames[-1]["payload"]["code"] == "LEASE_EXPIRED"


async def test_model_use(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    models = ["tier-fast/small", "tier-slow/huge"]
    frames = await run(nursery, "modeller", models, lease_request={"model.use": ["tier-fast/*"]})
    assert frames[-1]["payload"]["result"] == ["ok", "PERMISSION_DENIED"]
    # §9.7: no model.use in the lease: the deployment default decides.
    frames = await run(nursery, "modeller", models)
    assert frames[-1]["payload"]["result"] == ["ok", "ok"]
    strict = RuntimeConfig(heartbeat_interval_sec=1000, model_use_default_allow=False)
    frames = await run(nursery, "modeller", models, config=strict)
    assert frames[-1]["payload"]["result"] == ["PERMISSION_DENIED", "PERMISSION_DENIED"]


async def test_budget_counters_in_listings_and_subscribe(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.hello()
    accepted = await peer.submit(
        "spender",
        {"steps": 1, "cost": 0.25},
        lease_request={"cost.budget": ["USD:1.00"], "tool.call": ["search"]},
    )
    await peer.recv_terminal(accepted["job_id"])
    await peer.send("session.list_jobs", {})
    page = await peer.recv_type("session.jobs")
    assert page["payload"]["jobs"][0]["budget"] == {"USD": "USD:0.75"}
    other = Peer((await connect(runtime, nursery))[0].transport)
    await other.hello()
    await other.send("job.subscribe", {"job_id": accepted["job_id"]})
    subscribed = await other.recv_type("job.subscribed")
    assert subscribed["payload"]["budget"] == {"USD": "USD:0.75"}


async def test_the_trace_id_reaches_tools(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§11: the inbound trace id is carried to the job's tool calls."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    frames = await run(
        nursery,
        "tooler",
        {"tools": ["trace"]},
        lease_request={"tool.call": ["*"]},
        trace_id=trace,
    )
    assert frames[-1]["payload"]["result"] == [trace]
    assert all(f.get("trace_id") == trace for f in frames if "event_seq" in f)


async def test_a_lease_policy_narrows_what_a_submit_is_granted(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§7.1: job.accepted echoes the *effective* lease, which a deployment may narrow."""
    import attrs

    def no_writes(_principal: str, requested: Lease) -> Lease:
        grants = {ns: p for ns, p in requested.grants.items() if ns != "fs.write"}
        return attrs.evolve(requested, grants=grants)

    def widen(_principal: str, requested: Lease) -> Lease:
        return attrs.evolve(requested, grants={**requested.grants, "fs.write": ("/**",)})

    for policy, expected in ((no_writes, "accepted"), (widen, "refused")):
        async with open_runtime(
            agents=registry_with_tooler(),
            tokens=TOKENS,
            wall_clock=trio_wall_clock,
            lease_policy=policy,
            config=RuntimeConfig(heartbeat_interval_sec=1000),
        ) as runtime:
            peer, _ = await connect(runtime, nursery)
            await peer.hello()
            reply = await peer.submit(
                "echo", 1, lease_request={"fs.read": ["/data/**"], "fs.write": ["/data/**"]}
            )
            if expected == "accepted":
                assert reply["payload"]["lease"] == {"fs.read": ["/data/**"]}
            else:
                assert reply["payload"]["code"] == "LEASE_SUBSET_VIOLATION"
