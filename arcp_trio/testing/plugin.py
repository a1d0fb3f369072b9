"""The arcp_trio pytest plugin: fixtures named ``arcp_*``, none of them autouse.

Enable it in a ``conftest.py``::

    pytest_plugins = ["arcp_trio.testing.plugin"]

(installing arcp-trio also registers it through the ``pytest11`` entry point, so
this line is only needed where entry points are disabled). The async fixtures need
pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` on the test).

Fixtures:

* ``arcp_clock``: ``MockClock(autojump_threshold=0)``. Request it in a test to run
  that test on virtual time.
* ``arcp_agents`` / ``arcp_config`` / ``arcp_tokens``: what the runtime hosts and how
  (override them in your ``conftest.py`` to test your own agents).
* ``arcp_runtime``: an in-memory runtime.
* ``arcp_link``: a ``MemoryLink`` to it (drop, stall or hold the client's connection).
* ``arcp_client``: a real client connected over ``arcp_link``.
* ``arcp_pair``: runtime + client + link on MockClock (the test must also take
  ``arcp_clock`` or pytest-trio's ``autojump_clock``).
* ``arcp_peer``: ``await arcp_peer(token)`` gives a welcomed ``RawPeer``.
* ``arcp_chaos``: ``arcp_chaos(plan, seed=...)`` gives a seeded chaos ``MemoryLink``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pytest
import trio
import trio.testing

from ..demo_agents import demo_registry
from .chaos import ChaosPlan
from .pairs import (
    TEST_TOKENS,
    MemoryLink,
    RawPeer,
    RuntimePair,
    config_for_tests,
    connect_peer,
    open_test_client,
    open_test_runtime,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from ..client.client import Client
    from ..runtime.agents import AgentRegistry
    from ..runtime.config import RuntimeConfig
    from ..runtime.runtime import Runtime

__all__ = [
    "ChaosLinkFactory",
    "PeerFactory",
    "arcp_agents",
    "arcp_chaos",
    "arcp_client",
    "arcp_clock",
    "arcp_config",
    "arcp_link",
    "arcp_pair",
    "arcp_peer",
    "arcp_runtime",
    "arcp_tokens",
]


class ChaosLinkFactory(Protocol):
    def __call__(
        self, plan: ChaosPlan | None = None, *, seed: int = 0, **options: Any
    ) -> MemoryLink: ...


class PeerFactory(Protocol):
    async def __call__(self, token: str = "tok-alice", **hello: Any) -> RawPeer: ...


@pytest.fixture
def arcp_clock() -> trio.testing.MockClock:
    """Virtual time that jumps whenever every task is waiting."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def arcp_agents() -> AgentRegistry:
    """The agents ``arcp_runtime`` hosts (default: arcp_trio's demo agents)."""
    return demo_registry()


@pytest.fixture
def arcp_config() -> RuntimeConfig:
    """``arcp_runtime``'s settings (default: ``config_for_tests()``)."""
    return config_for_tests()


@pytest.fixture
def arcp_tokens() -> Mapping[str, str]:
    """Bearer token → principal (default: ``tok-alice`` → alice, ``tok-bob`` → bob)."""
    return TEST_TOKENS


@pytest.fixture
async def arcp_runtime(
    arcp_agents: AgentRegistry, arcp_config: RuntimeConfig, arcp_tokens: Mapping[str, str]
) -> AsyncIterator[Runtime]:
    """An in-process runtime, shut down after the test."""
    async with open_test_runtime(arcp_agents, config=arcp_config, tokens=arcp_tokens) as runtime:
        yield runtime


@pytest.fixture
async def arcp_link(arcp_runtime: Runtime) -> AsyncIterator[MemoryLink]:
    """Connections from clients to ``arcp_runtime`` (``link.connect`` is a Connector)."""
    async with trio.open_nursery() as nursery:
        yield MemoryLink(arcp_runtime, nursery, record=True)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def arcp_client(arcp_link: MemoryLink) -> AsyncIterator[Client]:
    """A real client of ``arcp_runtime`` (as ``tok-alice``), closed after the test."""
    async with open_test_client(arcp_link) as client:
        yield client


@pytest.fixture
async def arcp_pair(
    arcp_runtime: Runtime, arcp_link: MemoryLink, arcp_client: Client
) -> AsyncIterator[RuntimePair]:
    """Runtime, client and link, on virtual time."""
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        pytest.fail(
            "arcp_pair runs on virtual time: add arcp_clock (or autojump_clock) to the "
            "test's arguments",
            pytrace=False,
        )
    async with trio.open_nursery() as nursery:
        yield RuntimePair(runtime=arcp_runtime, client=arcp_client, link=arcp_link, nursery=nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def arcp_peer(arcp_runtime: Runtime) -> AsyncIterator[PeerFactory]:
    """Welcomed raw peers: ``peer = await arcp_peer("tok-bob")``."""
    async with trio.open_nursery() as nursery:

        async def connect(token: str = "tok-alice", **hello: Any) -> RawPeer:
            peer = connect_peer(arcp_runtime, nursery)
            await peer.hello(token, **hello)
            return peer

        yield connect
        nursery.cancel_scope.cancel()


@pytest.fixture
async def arcp_chaos(arcp_runtime: Runtime) -> AsyncIterator[ChaosLinkFactory]:
    """Seeded chaos links to ``arcp_runtime``: ``link = arcp_chaos(ChaosPlan.rough(), seed=3)``.

    Default plan: ``ChaosPlan.rough()``. Open a client over it with
    ``open_test_client(link)``.
    """
    async with trio.open_nursery() as nursery:

        def make(plan: ChaosPlan | None = None, *, seed: int = 0, **options: Any) -> MemoryLink:
            return MemoryLink(
                arcp_runtime, nursery, plan=plan or ChaosPlan.rough(), seed=seed, **options
            )

        yield make
        nursery.cancel_scope.cancel()
