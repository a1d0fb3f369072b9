"""Tools the runtime mediates (§9.1, §9.3).

A tool is ``async def tool(args) -> result``. Agents call tools through
``ctx.call_tool(name, args)``; the runtime checks the lease (``tool.call``),
expiry and budgets synchronously *before* dispatching, and reports the call and
its outcome as ``tool_call`` / ``tool_result`` events, so authority holds even for
an agent that never checks anything itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

__all__ = ["Tool", "ToolRegistry", "current_trace_id"]

#: §11: "Runtimes MUST forward the trace context to tool servers": while a tool runs,
#: this holds the calling job's trace id (None when the job has none), so a tool can
#: pass it on (e.g. as a ``traceparent`` header).
current_trace_id: ContextVar[str | None] = ContextVar("arcp_trace_id", default=None)

Tool = Callable[[Any], Awaitable[Any]]


class ToolRegistry:
    """Named tools the runtime can dispatch for agents."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, name: str, tool: Tool) -> None:
        """Raises ``ValueError`` on a duplicate name."""
        if name in self._tools:
            raise ValueError(f"tool {name!r} is already registered")
        self._tools[name] = tool

    def tool(self, name: str) -> Callable[[Tool], Tool]:
        """Decorator form of ``register``."""

        def decorate(function: Tool) -> Tool:
            self.register(name, function)
            return function

        return decorate

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)
