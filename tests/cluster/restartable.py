"""Agents for the cluster's process tests (``serve --agents tests.cluster.restartable:registry``):
the demo agents, and ``counter``, registered restartable."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import trio

from arcp_trio.demo_agents import demo_registry

if TYPE_CHECKING:
    from arcp_trio.runtime.agents import AgentRegistry
    from arcp_trio.runtime.context import JobContext


async def counter(input_: Any, ctx: JobContext) -> Any:
    """``{"count": N, "interval": S}``: emits ``progress`` 1..N, then returns the pid
    of the process that finished it (a restart shows as another one)."""
    count = int(input_["count"])
    for i in range(1, count + 1):
        await ctx.progress(current=i, total=count)
        await trio.sleep(float(input_["interval"]))
    return {"finished_by": os.getpid()}


def registry() -> AgentRegistry:
    agents = demo_registry()
    agents.register("counter", counter, version="1.0.0", restartable=True)
    return agents
