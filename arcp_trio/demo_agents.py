"""The demo agents `arcp-trio serve` hosts.

Their behaviour is a contract: the interop tests, the conformance checker and
other runtimes' users depend on it exactly as written here.

* ``echo`` 1.0.0 and 2.0.0 (default 2.0.0): one ``log`` event, returns
  ``{"echo": input, "version": "<resolved version>"}``.
* ``ticker`` 1.0.0: ``{"count": 5, "interval": 0.1}``; for i in 1..count emits
  ``progress {current: i, total: count, units: "ticks"}`` then sleeps ``interval``;
  returns ``{"ticks": count}``.
* ``chunker`` 1.0.0: ``{"chunks": 4, "size": 8}``; streams the result: chunk i is
  ``chr(ord("a") + i % 26) * size``, even chunks utf8, odd chunks base64; the
  terminal carries ``result_id`` and no inline result.
* ``slow`` 1.0.0: ``{"seconds": 5}``; emits ``status {phase: "started"}``, sleeps,
  returns ``{"slept": seconds}``.
* ``spender`` 1.0.0: ``{"steps": 5, "cost": 0.4}``; per step authorises
  ``tool.call`` on ``search`` (raising ``BUDGET_EXHAUSTED`` once a ``cost.budget``
  counter is ≤ 0), then reports ``metric {name: "cost.inference", value: cost,
  unit: "USD"}``; returns ``{"steps": steps}``. The authorisation error is not
  caught.
* ``chatty`` 1.0.0: ``{"n": N, "kind": "log"}``; emits N events of that kind as
  fast as it can; returns ``{"n": N}``.
* ``toucher`` 1.0.0: ``{"namespace": "fs.read", "target": "/data/a", "delay": 0}``;
  sleeps ``delay`` seconds, then ``ctx.authorize(namespace, target)`` (a denial is
  not caught, so it ends the job with that code); returns ``{"allowed": true}``.
* ``delegator`` 1.0.0: ``{"agent": "echo", "input": <any>, "lease": {<child lease>}}``;
  delegates to that agent with that lease (errors not caught), waits for the child,
  returns ``{"child_job_id": <id>, "child_result": <the child's inline result>}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from .runtime.agents import AgentRegistry

if TYPE_CHECKING:
    from .runtime.context import JobContext

__all__ = ["demo_registry"]


def _arg(input_: Any, name: str, default: Any) -> Any:
    if isinstance(input_, Mapping):
        return input_.get(name, default)
    return default


def _make_echo(version: str) -> Any:
    async def echo(input_: Any, ctx: JobContext) -> Any:
        await ctx.log(f"echo {version}")
        return {"echo": input_, "version": version}

    return echo


async def ticker(input_: Any, ctx: JobContext) -> Any:
    count = int(_arg(input_, "count", 5))
    interval = float(_arg(input_, "interval", 0.1))
    for i in range(1, count + 1):
        await ctx.progress(i, count, units="ticks")
        await trio.sleep(interval)
    return {"ticks": count}


async def chunker(input_: Any, ctx: JobContext) -> Any:
    chunks = int(_arg(input_, "chunks", 4))
    size = int(_arg(input_, "size", 8))
    async with ctx.stream_result() as stream:
        for i in range(chunks):
            piece = chr(ord("a") + i % 26) * size
            await stream.write(piece if i % 2 == 0 else piece.encode())
    return None


async def slow(input_: Any, ctx: JobContext) -> Any:
    seconds = float(_arg(input_, "seconds", 5))
    await ctx.status("started")
    await trio.sleep(seconds)
    return {"slept": _arg(input_, "seconds", 5)}


async def spender(input_: Any, ctx: JobContext) -> Any:
    steps = int(_arg(input_, "steps", 5))
    cost = _arg(input_, "cost", 0.4)
    for _ in range(steps):
        ctx.authorize("tool.call", "search")
        await ctx.metric("cost.inference", cost, unit="USD")
    return {"steps": steps}


async def chatty(input_: Any, ctx: JobContext) -> Any:
    n = int(_arg(input_, "n", 100))
    kind = str(_arg(input_, "kind", "log"))
    for i in range(n):
        if kind == "log":
            await ctx.log(f"line {i}")
        elif kind == "thought":
            await ctx.thought(f"thought {i}")
        elif kind == "progress":
            await ctx.progress(i + 1, n)
        elif kind == "status":
            await ctx.status(f"step-{i}")
        elif kind == "metric":
            await ctx.metric("chatty.count", i)
        else:
            await ctx.event(kind, {"i": i})
    return {"n": n}


async def toucher(input_: Any, ctx: JobContext) -> Any:
    await trio.sleep(float(_arg(input_, "delay", 0)))
    ctx.authorize(str(_arg(input_, "namespace", "fs.read")), str(_arg(input_, "target", "/data/a")))
    return {"allowed": True}


async def delegator(input_: Any, ctx: JobContext) -> Any:
    child = await ctx.delegate(
        str(_arg(input_, "agent", "echo")),
        _arg(input_, "input", None),
        lease=_arg(input_, "lease", None) or {},
    )
    return {"child_job_id": child.job_id, "child_result": await child.result()}


def demo_registry() -> AgentRegistry:
    """A registry with the six demo agents."""
    registry = AgentRegistry()
    registry.register("echo", _make_echo("1.0.0"), version="1.0.0")
    registry.register("echo", _make_echo("2.0.0"), version="2.0.0", default=True)
    registry.register("ticker", ticker, version="1.0.0")
    registry.register("chunker", chunker, version="1.0.0")
    registry.register("slow", slow, version="1.0.0")
    registry.register("spender", spender, version="1.0.0")
    registry.register("chatty", chatty, version="1.0.0")
    registry.register("toucher", toucher, version="1.0.0")
    registry.register("delegator", delegator, version="1.0.0")
    return registry
