"""``open_cluster_runtime``: a runtime node whose state is in Redis, so that any number
of nodes on the same Redis are one runtime (docs/cluster.md). ``arcp-trio serve
--redis URL --node-id NAME`` runs one."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..runtime.config import RuntimeConfig
from ..runtime.runtime import open_runtime
from ..wire.timestamps import format_timestamp, system_timestamp, system_wall_clock
from .redis import open_redis
from .shared import ClusterSettings, ClusterState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..runtime.runtime import Runtime
    from ..wire.timestamps import WallClock

__all__ = ["open_cluster_runtime"]


@asynccontextmanager
async def open_cluster_runtime(
    redis_url: str,
    *,
    settings: ClusterSettings | None = None,
    config: RuntimeConfig | None = None,
    wall_clock: WallClock = system_wall_clock,
    max_connections: int = 64,
    **runtime_options: Any,
) -> AsyncIterator[Runtime]:
    """Open a runtime node on the Redis at ``redis_url`` (Redis 7 or Valkey, one
    primary); ``runtime_options`` as ``open_runtime`` (agents, tokens, ...; every node
    of a cluster must be given the same). On exit the node drains: its jobs end with
    their terminal written to Redis, then it leaves the cluster.

    Raises:
        RedisUnavailable: Redis does not answer (retryable).
        ValueError: ``store`` was given (the node keeps its state in Redis).
    """
    settings = settings or ClusterSettings()
    config = config or RuntimeConfig()
    timestamp = (
        system_timestamp
        if wall_clock is system_wall_clock
        else lambda: format_timestamp(wall_clock())
    )
    async with open_redis(
        redis_url, max_connections=max_connections, client_name=f"arcp-{settings.node_id}"
    ) as redis:
        state = ClusterState(redis, settings, config=config, timestamp=timestamp)
        async with open_runtime(
            shared=state, config=config, wall_clock=wall_clock, **runtime_options
        ) as runtime:
            yield runtime
