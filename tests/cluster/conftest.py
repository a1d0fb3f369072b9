from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.redis_server import RedisServer, running_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytest.importorskip("coredis", reason="the cluster tests need the redis extra")


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A fresh ``redis-server`` of this test's own (no persistence), killed after."""
    async with running_redis(tmp_path) as server:
        yield server
