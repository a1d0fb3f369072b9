"""The ARCP runtime: hosts jobs, sessions and their event streams."""

from __future__ import annotations

from .agents import AgentRegistry as AgentRegistry
from .config import RuntimeConfig as RuntimeConfig
from .context import JobContext as JobContext
from .context import ResultStream as ResultStream
from .runtime import Runtime as Runtime
from .runtime import RuntimeStatistics as RuntimeStatistics
from .runtime import open_runtime as open_runtime
from .serve import serve_websocket as serve_websocket
