"""Job listing across nodes, cancel requests, retention. Real Redis, real clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.cluster import jobs, keys
from arcp_trio.cluster.redis import open_redis
from arcp_trio.cluster.scripts import admit, finish

if TYPE_CHECKING:
    from arcp_trio.cluster.redis import Redis
    from tests.redis_server import RedisServer


async def submit(redis: Redis, principal: str, node: str) -> str:
    ordinal = await jobs.next_ordinal(redis)
    job_id = f"job_{ordinal:03}"
    await admit(
        redis,
        job_id=job_id,
        principal=principal,
        owner=node,
        ordinal=ordinal,
        row=f'{{"o":{ordinal}}}',
    )
    return job_id


async def test_listing_pages_every_nodes_jobs_of_one_principal(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            mine = []
            for n in range(25):
                mine.append(await submit(redis, "alice", f"node-{n % 3}"))
                await submit(redis, "bob", "node-0")  # §6.6: never listed to alice
            pages, cursor = [], 0
            for _ in range(10):
                page, next_cursor = await jobs.list_for(redis, "alice", after=cursor, limit=10)
                pages.append([row.job_id for row in page])
                if next_cursor is None:
                    break
                cursor = next_cursor
            assert [len(page) for page in pages] == [10, 10, 5]
            assert [job for page in pages for job in page] == mine


async def test_expired_jobs_leave_the_listing_as_it_meets_them(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            ids = [await submit(redis, "alice", "node-a") for _ in range(30)]
            # Retention ended for most of them: their keys are gone.
            await redis.delete([keys.job(job_id) for job_id in ids[:27]])
            page, cursor = await jobs.list_for(redis, "alice", limit=2)
            assert [row.job_id for row in page] == ids[27:29]
            assert cursor is not None
            rest, end = await jobs.list_for(redis, "alice", after=cursor, limit=2)
            assert ([row.job_id for row in rest], end) == ([ids[29]], None)
            assert await redis.zcard(keys.principal_jobs("alice")) == 3


async def test_a_cancel_request_names_the_owner_once_the_job_runs(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            job_id = await submit(redis, "alice", "node-a")
            assert await jobs.request_cancel(redis, job_id, "first") == "node-a"
            assert await jobs.request_cancel(redis, job_id, "second") == "node-a"
            assert await redis.hget(keys.job(job_id), "cancel") == "first"
            await finish(
                redis,
                job_id,
                node="node-a",
                epoch=1,
                frame_id="t",
                status="cancelled",
                shapes={"spec": ("job.error", "{}")},
            )
            assert await jobs.request_cancel(redis, job_id, "late") is None
            with pytest.raises(LookupError):
                await jobs.request_cancel(redis, "job_none", "x")
            await jobs.retire(redis, job_id, retention_sec=0.1)
            await trio.sleep(0.25)
            assert await jobs.list_for(redis, "alice") == ([], None)
