"""The owner's write-behind for job events: order per job, batches, retries that
duplicate nothing, fencing, a bounded queue. Real Redis, real clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from arcp_trio.cluster import keys
from arcp_trio.cluster.batcher import EmitBatcher
from arcp_trio.cluster.redis import open_redis
from arcp_trio.cluster.scripts import (
    Fenced,
    HistoryEvent,
    admit,
    attach_watcher,
    open_session,
    take_over,
)

if TYPE_CHECKING:
    from arcp_trio.cluster.redis import Redis
    from tests.redis_server import RedisServer


def event(number: int) -> HistoryEvent:
    return HistoryEvent(number=number, frame_id=f"evt_{number}", payload_json=f'{{"n":{number}}}')


async def jobs_watched_by(redis: Redis, session_id: str, count: int) -> None:
    await open_session(redis, session_id, principal="alice", cap=1_000_000, dialect="spec")
    for j in range(count):
        await admit(
            redis, job_id=f"job_{j}", principal="alice", owner="node-a", ordinal=j, row="{}"
        )
        await attach_watcher(redis, f"job_{j}", session_id, after=0)


async def session_numbers(redis: Redis, session_id: str) -> list[tuple[int, str, int]]:
    entries = await redis.xrange(keys.session_events(session_id), "-", "+")
    return [
        (int(str(e.identifier)[2:]), str(e.field_values["j"]), int(e.field_values["n"]))
        for e in entries
    ]


def check_streams(stamped: list[tuple[int, str, int]], jobs: int, per_job: int) -> None:
    assert [seq for seq, _, _ in stamped] == list(range(1, jobs * per_job + 1))
    for j in range(jobs):
        numbers = [n for _, job, n in stamped if job == f"job_{j}"]
        assert numbers == list(range(1, per_job + 1))


async def test_many_jobs_in_batches_keep_each_jobs_order(redis_server: RedisServer) -> None:
    with trio.fail_after(20):
        async with open_redis(redis_server.url) as redis, trio.open_nursery() as nursery:
            await jobs_watched_by(redis, "sess_a", 8)
            batcher = EmitBatcher(redis, "node-a", on_fenced=lambda *_: None, max_batch=37)
            await nursery.start(batcher.run)
            for n in range(1, 501):
                for j in range(8):
                    batcher.publish(f"job_{j}", 1, event(n), history_cap=10_000)
                if n % 50 == 0:
                    await trio.lowlevel.checkpoint()
            for j in range(8):
                await batcher.flush(f"job_{j}")
                assert batcher.written(f"job_{j}") == 500
            assert batcher.pending == 0
            check_streams(await session_numbers(redis, "sess_a"), 8, 500)
            nursery.cancel_scope.cancel()


async def test_a_paused_redis_delays_events_and_duplicates_none(redis_server: RedisServer) -> None:
    with trio.fail_after(30):
        async with (
            open_redis(redis_server.url, stream_timeout=0.3) as redis,
            trio.open_nursery() as nursery,
        ):
            await jobs_watched_by(redis, "sess_a", 2)
            batcher = EmitBatcher(
                redis, "node-a", on_fenced=lambda *_: None, max_batch=10, retry_sec=0.1
            )
            await nursery.start(batcher.run)
            for n in range(1, 101):
                for j in range(2):
                    batcher.publish(f"job_{j}", 1, event(n), history_cap=10_000)
                if n == 40:
                    redis_server.pause()  # mid-stream: some calls time out after running
                    await trio.sleep(0.8)
                    assert not batcher.healthy
                    redis_server.resume()
                await trio.sleep(0.001)
            for j in range(2):
                await batcher.flush(f"job_{j}")
            assert batcher.healthy
            check_streams(await session_numbers(redis, "sess_a"), 2, 100)
            nursery.cancel_scope.cancel()


async def test_a_job_taken_over_is_dropped_and_reported_once(redis_server: RedisServer) -> None:
    fenced: list[tuple[str, Fenced]] = []
    with trio.fail_after(20):
        async with open_redis(redis_server.url) as redis, trio.open_nursery() as nursery:
            await jobs_watched_by(redis, "sess_a", 1)
            batcher = EmitBatcher(
                redis, "node-a", on_fenced=lambda job, why: fenced.append((job, why))
            )
            await nursery.start(batcher.run)
            batcher.publish("job_0", 1, event(1), history_cap=100)
            await batcher.flush("job_0")
            await take_over(redis, "job_0", owner="node-a", epoch=1, new_owner="node-b")
            for n in range(2, 50):
                batcher.publish("job_0", 1, event(n), history_cap=100)
            await batcher.flush("job_0")
            assert [job for job, _ in fenced] == ["job_0"]
            assert fenced[0][1].owner == "node-b"
            assert batcher.pending == 0
            assert [n for _, _, n in await session_numbers(redis, "sess_a")] == [1]
            nursery.cancel_scope.cancel()


async def test_producers_wait_while_the_queue_is_full(redis_server: RedisServer) -> None:
    with trio.fail_after(20):
        async with open_redis(redis_server.url) as redis, trio.open_nursery() as nursery:
            await jobs_watched_by(redis, "sess_a", 1)
            batcher = EmitBatcher(redis, "node-a", on_fenced=lambda *_: None, max_pending=50)
            most = 0

            async def producer() -> None:
                nonlocal most
                for n in range(1, 1001):
                    await batcher.wait_writable()
                    batcher.publish("job_0", 1, event(n), history_cap=10_000)
                    most = max(most, batcher.pending)

            nursery.start_soon(producer)
            await trio.sleep(0.05)  # the producer fills the queue; nothing writes yet
            assert batcher.congested
            await nursery.start(batcher.run)
            while batcher.written("job_0") < 1000:
                await batcher.flush("job_0")
                await trio.sleep(0.01)
            assert most == 50
            check_streams(await session_numbers(redis, "sess_a"), 1, 1000)
            nursery.cancel_scope.cancel()
