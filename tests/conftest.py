from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import Runtime, open_runtime
from arcp_trio.wire.timestamps import trio_wall_clock_at
from tests.helpers import TOKENS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def trio_wall_clock():  # type: ignore[no-untyped-def]
    return trio_wall_clock_at(trio.current_time())


@pytest.fixture
def config() -> RuntimeConfig:
    return RuntimeConfig(heartbeat_interval_sec=10, resume_window_sec=60, shutdown_grace_sec=1)


@pytest.fixture
async def runtime(config: RuntimeConfig) -> AsyncIterator[Runtime]:
    async with open_runtime(
        agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        yield rt
