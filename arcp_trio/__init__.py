"""arcp_trio: a Trio-native runtime and client for ARCP v1.1.

The everyday surface is re-exported here; see ``docs/`` for the guide.
"""

from __future__ import annotations

from ._version import __version__ as __version__
from .client import Client as Client
from .client import JobHandle as JobHandle
from .client import open_client as open_client
from .runtime import AgentRegistry as AgentRegistry
from .runtime import JobContext as JobContext
from .runtime import Runtime as Runtime
from .runtime import RuntimeConfig as RuntimeConfig
from .runtime import open_runtime as open_runtime
from .runtime import serve_websocket as serve_websocket
from .wire.errors import ARCPError as ARCPError
from .wire.errors import ErrorCode as ErrorCode
