from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import Runtime, open_runtime
from tests.fuzz.budget import register_profiles
from tests.helpers import TOKENS, trio_wall_clock
from tests.links import Link

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import trio

#: The public testing toolkit's fixtures (``arcp_*``); the ``pytest11`` entry point
#: registers the same module under the same name where arcp-trio is installed.
pytest_plugins = ["arcp_trio.testing.plugin"]

# Hypothesis profiles dev / ci / thorough, chosen by HYPOTHESIS_PROFILE (ci when CI=true).
register_profiles()


@pytest.fixture
def config() -> RuntimeConfig:
    return RuntimeConfig(heartbeat_interval_sec=10, resume_window_sec=60, shutdown_grace_sec=1)


@pytest.fixture
async def runtime(config: RuntimeConfig) -> AsyncIterator[Runtime]:
    async with open_runtime(
        agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as rt:
        yield rt


@pytest.fixture
async def link(runtime: Runtime, nursery: trio.Nursery) -> Link:
    """Client connections to ``runtime`` over in-memory transports, with faults."""
    return Link(runtime, nursery)
