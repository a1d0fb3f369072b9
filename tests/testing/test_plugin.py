"""The pytest plugin: fixtures named arcp_*, none autouse, usable without our conftest.

Rules: the fixtures run on MockClock; the subprocess checks use the real clock with
a bounded run time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from _pytest.fixtures import FixtureFunctionDefinition

import arcp_trio.testing.plugin as plugin
from arcp_trio.testing import ChaosPlan, open_test_client

if TYPE_CHECKING:
    from arcp_trio.client.client import Client
    from arcp_trio.runtime.runtime import Runtime
    from arcp_trio.testing import RuntimePair
    from arcp_trio.testing.plugin import ChaosLinkFactory, PeerFactory

ROOT = Path(__file__).resolve().parents[2]


def test_the_plugin_adds_only_arcp_fixtures_and_no_hooks() -> None:
    fixtures = {
        name: value
        for name, value in vars(plugin).items()
        if isinstance(value, FixtureFunctionDefinition)
    }
    assert len(fixtures) >= 8
    for name, fixture in fixtures.items():
        assert fixture.name.startswith("arcp_"), name
        assert not fixture._fixture_function_marker.autouse, name
    assert not [name for name in vars(plugin) if name.startswith("pytest_")]


def test_the_entry_point_registers_the_plugin_under_its_module_name() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points = project["project"]["entry-points"]["pytest11"]
    assert entry_points == {"arcp_trio.testing.plugin": "arcp_trio.testing.plugin"}


def test_the_toolkit_imports_without_pytest_or_hypothesis() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("pytest", "_pytest", "hypothesis"):
            sys.modules[name] = None  # importing it now raises ImportError
        import arcp_trio.testing as testing
        assert testing.run_program and testing.ChaosTransport and testing.MockClockPortal
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.stdout.strip() == "ok", result.stderr


async def test_arcp_pair(arcp_pair: RuntimePair, arcp_clock: trio.abc.Clock) -> None:
    handle = await arcp_pair.client.submit("ticker@1.0.0", {"count": 2, "interval": 30})
    arcp_pair.link.drop()
    assert (await handle.result()).result == {"ticks": 2}
    assert trio.current_time() == 60
    assert arcp_pair.client.reconnects == 1


async def test_arcp_client_and_peer(
    arcp_runtime: Runtime, arcp_client: Client, arcp_peer: PeerFactory, arcp_clock: trio.abc.Clock
) -> None:
    handle = await arcp_client.submit("echo", 3)
    bob = await arcp_peer("tok-bob")
    reply = await bob.request("job.cancel", {}, job_id=handle.job_id)
    assert reply["payload"]["code"] == "JOB_NOT_FOUND"
    assert (await handle.result()).result["echo"] == 3
    assert arcp_runtime.statistics().sessions == 2


async def test_arcp_chaos(arcp_chaos: ChaosLinkFactory, arcp_clock: trio.abc.Clock) -> None:
    link = arcp_chaos(ChaosPlan(drop=0.05, delay=0.2, spare_handshake=True), seed=11)
    async with open_test_client(link) as client:
        handle = await client.submit("ticker@1.0.0", {"count": 10, "interval": 1})
        ticks = [e.body["current"] async for e in handle.events() if e.kind == "progress"]
        assert ticks == list(range(1, 11))


def test_the_plugin_works_in_a_project_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["arcp_trio.testing.plugin"]\n')
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from arcp_trio.runtime.agents import AgentRegistry

            @pytest.fixture
            def arcp_agents():
                registry = AgentRegistry()

                @registry.agent("mine")
                async def mine(input_, ctx):
                    await ctx.log("working")
                    return input_ * 2

                return registry

            async def test_my_agent(arcp_client, arcp_clock):
                handle = await arcp_client.submit("mine", 21)
                assert (await handle.result()).result == 42

            async def test_pair_needs_virtual_time(arcp_pair):
                pass
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "trio",
            "-o",
            "trio_mode=true",
            "-p",
            "no:cacheprovider",
            "-q",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert "1 passed" in result.stdout, result.stdout + result.stderr
    assert "arcp_pair runs on virtual time" in result.stdout, result.stdout
