"""Provisioned credentials (§9.8, §14): issued before acceptance and shown to the
submitter only, rotated to the submitter only, revoked at every terminal with
retries, and re-driven after a restart from the durable ledger.

Rules: in-memory transports, MockClock (autojump) where time matters, SQLite files
in tmp_path for the ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.credentials import InProcessProvisioner
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.store.sqlite import SQLiteStore
from tests.helpers import REFERENCE_FEATURES, TOKENS, connect, trio_wall_clock

if TYPE_CHECKING:
    from pathlib import Path

    from arcp_trio.runtime.context import JobContext

FEATURES = [*REFERENCE_FEATURES, "provisioned_credentials"]


def agents() -> Any:
    registry = demo_registry()

    @registry.agent("rotator")
    async def rotator(_input: Any, ctx: JobContext) -> Any:
        first = ctx.credentials[0]
        fresh = await ctx.rotate_credential(first["id"])
        await trio.sleep(1)
        return {"rotated": fresh["value"] != first["value"]}

    return registry


def runtime_with(tmp_path: Path, provisioner: InProcessProvisioner, **config: Any) -> Any:
    return open_runtime(
        agents=agents(),
        tokens=TOKENS,
        wall_clock=trio_wall_clock,
        store=SQLiteStore(tmp_path / "rt.sqlite3"),
        provisioner=provisioner,
        config=RuntimeConfig(heartbeat_interval_sec=1000, **config),
    )


async def test_not_advertised_without_a_durable_ledger(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async with open_runtime(
        agents=agents(), tokens=TOKENS, provisioner=InProcessProvisioner()
    ) as runtime:
        peer, _ = await connect(runtime, nursery)
        welcome = await peer.hello(features=FEATURES)
        assert "provisioned_credentials" not in welcome["payload"]["capabilities"]["features"]


async def test_issued_to_the_submitter_redacted_for_others_revoked_at_the_end(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    upstream = InProcessProvisioner()
    with trio.fail_after(20):
        async with runtime_with(tmp_path, upstream) as runtime:
            owner, _ = await connect(runtime, nursery)
            welcome = await owner.hello(features=FEATURES)
            assert "provisioned_credentials" in welcome["payload"]["capabilities"]["features"]
            accepted = await owner.submit(
                "slow", {"seconds": 0.2}, lease_request={"model.use": ["tier-fast/*"]}
            )
            [credential] = accepted["payload"]["credentials"]
            assert credential["scheme"] == "bearer"
            assert credential["constraints"] == {"model.use": ["tier-fast/*"]}
            assert credential["value"] in upstream.live
            # Another session of the same principal may see them (same submitter)...
            same, _ = await connect(runtime, nursery)
            await same.hello(features=FEATURES)
            await same.send("job.subscribe", {"job_id": accepted["job_id"]})
            subscribed = await same.recv_type("job.subscribed")
            assert subscribed["payload"]["credentials"] == [credential]
            # ...and listings never carry them.
            await owner.send("session.list_jobs", {})
            listing = await owner.recv_type("session.jobs")
            assert "credentials" not in listing["payload"]["jobs"][0]
            await owner.recv_terminal(accepted["job_id"])
            with trio.fail_after(5):
                await upstream.wait_revoked(credential["value"])
            assert upstream.revoked == [credential["value"]]


async def test_rotation_goes_to_the_submitter_only_and_revokes_the_old_value(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    upstream = InProcessProvisioner()
    with trio.fail_after(20):
        async with runtime_with(tmp_path, upstream) as runtime:
            owner, _ = await connect(runtime, nursery)
            await owner.hello(features=FEATURES)
            accepted = await owner.submit("rotator", None)
            old = accepted["payload"]["credentials"][0]
            frames = await owner.recv_terminal(accepted["job_id"])
            rotations = [
                f["payload"]["body"]
                for f in frames
                if f["type"] == "job.event"
                and f["payload"]["body"].get("phase") == "credential_rotated"
            ]
            assert len(rotations) == 1
            assert rotations[0]["id"] == old["id"]
            new_value = rotations[0]["value"]
            assert frames[-1]["payload"]["result"] == {"rotated": True}
            job = runtime.job(accepted["job_id"])
            assert job is not None
            # Never in the job's event history (so never replayed to subscribers).
            assert all("credential_rotated" not in e.payload_json for e in job.history)
            with trio.fail_after(5):
                await upstream.wait_revoked(old["value"])
                await upstream.wait_revoked(new_value)
            # The old value was revoked at rotation, the new one at the terminal.
            assert upstream.revoked == [old["value"], new_value]


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 0.2 s of real idleness: the SQLite writer
    works in a thread, and a zero-threshold clock would jump past the heartbeat
    deadlines while a slow (loaded) machine is still committing."""
    return trio.testing.MockClock(autojump_threshold=0.2)


async def test_transient_failures_are_retried_permanent_ones_surfaced(
    tmp_path: Path, nursery: trio.Nursery, patient_clock: trio.abc.Clock
) -> None:
    upstream = InProcessProvisioner()
    upstream.transient_failures = 3
    async with runtime_with(tmp_path, upstream) as runtime:
        owner, _ = await connect(runtime, nursery)
        await owner.hello(features=FEATURES)
        accepted = await owner.submit("echo", 1)
        await owner.recv_terminal(accepted["job_id"])
        await trio.sleep(10)  # backoff 0.5, 1, 2 then success
        assert upstream.live == {}
        assert upstream.transient_failures == 0
        doomed = await owner.submit("slow", {"seconds": 1})
        upstream.permanent_failure_ids.add(doomed["payload"]["credentials"][0]["id"])
        await owner.recv_terminal(doomed["job_id"])
        await trio.sleep(1)
        unrevoked = runtime.statistics().unrevoked_credentials
        assert unrevoked == (doomed["payload"]["credentials"][0]["id"],)


async def test_outstanding_revocations_are_redriven_after_a_restart(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    upstream = InProcessProvisioner()
    upstream.transient_failures = 10_000  # the upstream is down: nothing gets revoked
    with trio.fail_after(30):
        async with runtime_with(tmp_path, upstream, shutdown_grace_sec=0) as runtime:
            owner, _ = await connect(runtime, nursery)
            await owner.hello(features=FEATURES)
            accepted = await owner.submit("echo", 1)
            await owner.recv_terminal(accepted["job_id"])
            await trio.sleep(0.1)
        value = accepted["payload"]["credentials"][0]["value"]
        assert value in upstream.live
        upstream.transient_failures = 0  # the upstream is back
        async with runtime_with(tmp_path, upstream):
            await upstream.wait_revoked(value)
        assert value in upstream.revoked
