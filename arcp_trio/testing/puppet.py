"""A scriptable agent: a test says when it emits and how it ends.

``PuppetBoard.agent`` is an ordinary agent function. Each job it runs waits for
commands from the board: ``emit(job_id, n)`` makes it emit ``n`` events of kind
``TICK`` numbered 1, 2, ... in the job's own space (body ``{"n": k}``), and
``finish`` / ``fail`` end it. Nothing happens on a timer, so the order of events
in a test is exactly the order of its commands.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..wire.errors import ARCPError

if TYPE_CHECKING:
    from ..runtime.agents import AgentRegistry
    from ..runtime.context import JobContext

__all__ = ["PUPPET", "TICK", "PuppetBoard", "PuppetJob"]

#: The name puppets are registered under.
PUPPET = "arcp-puppet"
#: The event kind puppets emit.
TICK = "x-vendor.arcp-trio.tick"


@attrs.define(eq=False)
class PuppetJob:
    job_id: str
    send: trio.MemorySendChannel[tuple[str, Any]]
    receive: trio.MemoryReceiveChannel[tuple[str, Any]]
    #: Events emitted so far (the last one's ``n``).
    emitted: int = 0
    #: Commanded so far (emitted once the job has processed its queue).
    commanded: int = 0
    ended: bool = False


class PuppetBoard:
    """Commands for every puppet job of one runtime."""

    def __init__(self) -> None:
        self.jobs: dict[str, PuppetJob] = {}

    def register_on(self, registry: AgentRegistry, name: str = PUPPET) -> AgentRegistry:
        """Register the puppet agent on ``registry`` (returned for chaining)."""
        registry.register(name, self.agent)
        return registry

    def _job(self, job_id: str) -> PuppetJob:
        job = self.jobs.get(job_id)
        if job is None:
            send, receive = trio.open_memory_channel[tuple[str, Any]](math.inf)
            job = self.jobs[job_id] = PuppetJob(job_id, send, receive)
        return job

    def emit(self, job_id: str, count: int) -> None:
        """Make the job emit ``count`` more ticks (queued; it runs when scheduled)."""
        job = self._job(job_id)
        if not job.ended:
            job.commanded += count
            job.send.send_nowait(("emit", count))

    def finish(self, job_id: str, result: Any = None) -> None:
        """End the job successfully with ``result`` (default ``{"ticks": n}``)."""
        job = self._job(job_id)
        if not job.ended:
            job.ended = True
            job.send.send_nowait(("finish", result))

    def fail(self, job_id: str, code: str = "INTERNAL_ERROR", message: str = "puppet") -> None:
        """End the job with ``job.error`` of ``code``."""
        job = self._job(job_id)
        if not job.ended:
            job.ended = True
            job.send.send_nowait(("fail", (code, message)))

    async def agent(self, input_: Any, ctx: JobContext) -> Any:
        """The agent function (register it, or use ``register_on``)."""
        job = self._job(ctx.job_id)
        async for command, argument in job.receive:
            if command == "emit":
                for _ in range(argument):
                    job.emitted += 1
                    await ctx.event(TICK, {"n": job.emitted})
            elif command == "finish":
                return argument if argument is not None else {"ticks": job.emitted}
            else:
                code, message = argument
                raise ARCPError(message, code=code)
        return None  # pragma: no cover - the board never closes the channel
