"""Node leases: a node that stops renewing is noticed as dead within its lease, and
its jobs are found for takeover. Real Redis, real clock (Redis expires the key on
its own clock), short leases, every wait under ``trio.fail_after``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.cluster import keys
from arcp_trio.cluster.node import NodeLease, dead_nodes, orphans
from arcp_trio.cluster.redis import open_redis
from arcp_trio.cluster.scripts import admit, take_over

if TYPE_CHECKING:
    from tests.redis_server import RedisServer


async def test_a_node_that_stops_renewing_is_dead_within_its_lease(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis, trio.open_nursery() as nursery:
            a = NodeLease(redis, "node-a", lease_sec=0.4, renew_sec=0.1)
            b = NodeLease(redis, "node-b", lease_sec=0.4, renew_sec=0.1)
            a_scope = trio.CancelScope()

            async def run_a() -> None:
                with a_scope:
                    await a.run()

            await nursery.start(b.run)
            nursery.start_soon(run_a)
            await trio.sleep(0.6)  # longer than a lease: renewals kept both alive
            assert await dead_nodes(redis, me="node-b") == []
            assert a.held
            assert b.held

            a_scope.cancel()  # node A stops (as SIGKILL or SIGSTOP would)
            stopped = trio.current_time()
            noticed = None
            for _poll in range(200):  # the janitor's poll, as a node runs it
                if await dead_nodes(redis, me="node-b") == ["node-a"]:
                    noticed = trio.current_time() - stopped
                    break
                await trio.sleep(0.02)
            assert noticed is not None
            # Not before the lease ran out (its last renewal was at most renew_sec
            # before the stop); the upper bound is the janitor's business.
            assert noticed >= 0.4 - 0.1 - 0.05
            nursery.cancel_scope.cancel()


async def test_a_lapsed_lease_is_seen_by_its_node(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            lease = NodeLease(redis, "node-a", lease_sec=0.3, renew_sec=0.1)
            async with trio.open_nursery() as nursery:
                await nursery.start(lease.run)
                assert lease.held
                # Another node's view: the key vanished (the node was away too long).
                await redis.delete([keys.node_alive("node-a")])
                await trio.sleep(0.25)
                assert lease.lapses == 1
                assert lease.held  # renewed again after noticing
                nursery.cancel_scope.cancel()
            await lease.leave()
            assert await dead_nodes(redis, me="node-b") == ["node-a"]


async def test_a_dead_nodes_jobs_are_found_and_taken_over_once(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            for n in range(250):
                await admit(
                    redis,
                    job_id=f"job_{n:03}",
                    principal="alice",
                    owner="node-a",
                    ordinal=n,
                    row="{}",
                )
            await redis.hset(keys.job("job_007"), {"cancel": "user asked"})
            found = await orphans(redis, "node-a")
            assert sorted(orphan.job_id for orphan in found) == [f"job_{n:03}" for n in range(250)]
            assert [o.job_id for o in found if o.cancel_requested] == ["job_007"]
            assert len(await orphans(redis, "node-a", limit=10)) == 10
            for orphan in found:
                assert await take_over(
                    redis,
                    orphan.job_id,
                    owner=orphan.owner,
                    epoch=orphan.epoch,
                    new_owner="node-b",
                ) == ("node-b", 2)
            assert await orphans(redis, "node-a") == []
            assert len(await orphans(redis, "node-b")) == 250


def test_renewal_must_come_before_the_lease_ends() -> None:
    with pytest.raises(ValueError, match="renew_sec"):
        NodeLease(None, "node-a", lease_sec=1, renew_sec=1)  # type: ignore[arg-type]
