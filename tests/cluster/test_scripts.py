"""The cluster's atomic steps (``arcp_trio/cluster/scripts.py``) against a real Redis.

What must hold across nodes rests on these: one job per idempotency key however
many nodes race; per-session ``event_seq`` gap-free and stamped exactly once; a
retried call changes nothing; history-then-live with no gap and no duplicate; a
node that lost a job writes nothing more (fencing).

Real ``redis-server`` per test, real clock, every wait under ``trio.fail_after``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.lowlevel

from arcp_trio.cluster import keys
from arcp_trio.cluster.redis import open_redis
from arcp_trio.cluster.scripts import (
    Fenced,
    HistoryEvent,
    admit,
    attach_watcher,
    deliver,
    emit,
    finish,
    open_session,
    take_over,
)

if TYPE_CHECKING:
    from arcp_trio.cluster.redis import Redis
    from tests.redis_server import RedisServer


def event(number: int) -> HistoryEvent:
    return HistoryEvent(number=number, frame_id=f"evt_{number}", payload_json=f'{{"n":{number}}}')


async def new_job(redis: Redis, job_id: str = "job_1", owner: str = "node-a") -> None:
    admitted = await admit(
        redis, job_id=job_id, principal="alice", owner=owner, ordinal=1, row="{}"
    )
    assert admitted.created


async def stream(redis: Redis, session_id: str) -> list[tuple[int, str, int]]:
    """The session's stream as (seq, job id, job event number)."""
    entries = await redis.xrange(keys.session_events(session_id), "-", "+")
    return [
        (
            int(str(entry.identifier).split("-")[1]),
            str(entry.field_values["j"]),
            int(entry.field_values["n"]),
        )
        for entry in entries
    ]


async def test_one_idempotency_key_raced_from_many_nodes_creates_one_job(
    redis_server: RedisServer,
) -> None:
    # §7.2: the same key from two nodes at once gives one job; every caller learns it.
    outcomes = []
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:

            async def submit(node: int) -> None:
                outcomes.append(
                    await admit(
                        redis,
                        job_id=f"job_{node}",
                        principal="alice",
                        owner=f"node-{node}",
                        ordinal=node,
                        row="{}",
                        idempotency_key="key-1",
                        fingerprint="fp",
                    )
                )

            async with trio.open_nursery() as nursery:
                for node in range(20):
                    nursery.start_soon(submit, node)
            created = [outcome for outcome in outcomes if outcome.created]
            assert len(created) == 1
            assert {outcome.job_id for outcome in outcomes} == {created[0].job_id}
            assert {outcome.fingerprint for outcome in outcomes} == {"fp"}
            assert await redis.zcard(keys.principal_jobs("alice")) == 1
            # The same key for another principal is another key.
            other = await admit(
                redis,
                job_id="job_bob",
                principal="bob",
                owner="node-1",
                ordinal=99,
                row="{}",
                idempotency_key="key-1",
            )
            assert other.created


async def test_emit_stamps_each_watcher_gap_free_and_a_retry_is_a_no_op(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await new_job(redis)
            await new_job(redis, "job_2")
            for session_id in ("sess_a", "sess_b"):
                assert await open_session(
                    redis, session_id, principal="alice", cap=1000, dialect="spec"
                )
                await attach_watcher(redis, "job_1", session_id, after=0)
            await attach_watcher(redis, "job_2", "sess_b", after=0)

            first = await emit(
                redis, "job_1", node="node-a", epoch=1, events=[event(1), event(2)], history_cap=100
            )
            assert first.last == 2
            assert [sorted(seqs) for seqs in first.stamped] == [
                [("sess_a", 1), ("sess_b", 1)],
                [("sess_a", 2), ("sess_b", 2)],
            ]
            # Another job's event takes sess_b's next seq: one seq space per session.
            await emit(redis, "job_2", node="node-a", epoch=1, events=[event(1)], history_cap=100)
            # A retry of the first call (its reply lost), then the next batch.
            again = await emit(
                redis, "job_1", node="node-a", epoch=1, events=[event(1), event(2)], history_cap=100
            )
            assert again.stamped == []
            await emit(
                redis, "job_1", node="node-a", epoch=1, events=[event(2), event(3)], history_cap=100
            )
            assert await stream(redis, "sess_a") == [
                (1, "job_1", 1),
                (2, "job_1", 2),
                (3, "job_1", 3),
            ]
            assert await stream(redis, "sess_b") == [
                (1, "job_1", 1),
                (2, "job_1", 2),
                (3, "job_2", 1),
                (4, "job_1", 3),
            ]
            with pytest.raises(ValueError, match="continue from 3"):
                await emit(
                    redis, "job_1", node="node-a", epoch=1, events=[event(5)], history_cap=100
                )


async def test_history_then_live_exactly_once_while_the_job_emits(
    redis_server: RedisServer,
) -> None:
    # §7.6 subscribe with history: paged, with the job emitting between the pages;
    # the page that catches up adds the watcher in the same step.
    with trio.fail_after(20):
        async with open_redis(redis_server.url) as redis:
            await new_job(redis)
            await open_session(redis, "sess_late", principal="alice", cap=10_000, dialect="spec")
            emitted = 0

            async def producer() -> None:
                nonlocal emitted
                for batch in range(60):
                    numbers = range(batch * 10 + 1, batch * 10 + 11)
                    await emit(
                        redis,
                        "job_1",
                        node="node-a",
                        epoch=1,
                        events=[event(n) for n in numbers],
                        history_cap=10_000,
                    )
                    emitted = numbers[-1]
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                await trio.sleep(0.01)
                through, pages = 0, 0
                while True:
                    page = await attach_watcher(redis, "job_1", "sess_late", after=through, page=7)
                    through, pages = page.through, pages + 1
                    if page.done:
                        break
            assert pages > 1
            numbers = [number for _seq, _job, number in await stream(redis, "sess_late")]
            assert numbers == list(range(1, emitted + 1))
            seqs = [seq for seq, _job, _number in await stream(redis, "sess_late")]
            assert seqs == list(range(1, emitted + 1))


async def test_the_session_cap_evicts_the_oldest_and_says_through_which(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await new_job(redis)
            await open_session(redis, "sess_small", principal="alice", cap=5, dialect="spec")
            await attach_watcher(redis, "job_1", "sess_small", after=0)
            await emit(
                redis,
                "job_1",
                node="node-a",
                epoch=1,
                events=[event(n) for n in range(1, 9)],
                history_cap=100,
            )
            assert [seq for seq, _, _ in await stream(redis, "sess_small")] == [4, 5, 6, 7, 8]
            assert await redis.hget(keys.session("sess_small"), "evicted") == "3"


async def test_a_node_that_lost_its_job_writes_nothing_more(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await new_job(redis)
            await open_session(redis, "sess_a", principal="alice", cap=100, dialect="spec")
            await attach_watcher(redis, "job_1", "sess_a", after=0)
            await emit(redis, "job_1", node="node-a", epoch=1, events=[event(1)], history_cap=100)

            # Two janitors race to take the job over; one wins, at epoch 2.
            winners = await trio_gather(
                take_over(redis, "job_1", owner="node-a", epoch=1, new_owner="node-b"),
                take_over(redis, "job_1", owner="node-a", epoch=1, new_owner="node-c"),
            )
            assert winners[0] == winners[1]
            owner, epoch = winners[0]
            assert epoch == 2
            assert owner in ("node-b", "node-c")
            assert await redis.smembers(keys.node_jobs(owner)) == {"job_1"}
            assert await redis.smembers(keys.node_jobs("node-a")) == set()

            # The paused old owner wakes up and tries to go on: fenced, nothing written.
            with pytest.raises(Fenced) as fenced:
                await emit(
                    redis, "job_1", node="node-a", epoch=1, events=[event(2)], history_cap=100
                )
            assert (fenced.value.owner, fenced.value.epoch) == (owner, 2)
            assert [number for _, _, number in await stream(redis, "sess_a")] == [1]
            # The new owner continues the numbering.
            await emit(redis, "job_1", node=owner, epoch=2, events=[event(2)], history_cap=100)
            assert [number for _, _, number in await stream(redis, "sess_a")] == [1, 2]

            # A node restarted under its old id takes the job back: the epoch, not
            # the name, fences the earlier incarnation.
            assert await take_over(redis, "job_1", owner=owner, epoch=2, new_owner="node-a") == (
                "node-a",
                3,
            )
            with pytest.raises(Fenced):
                await emit(
                    redis, "job_1", node="node-a", epoch=1, events=[event(3)], history_cap=100
                )
            await emit(redis, "job_1", node="node-a", epoch=3, events=[event(3)], history_cap=100)
            assert [number for _, _, number in await stream(redis, "sess_a")] == [1, 2, 3]


async def test_a_forgotten_session_stops_being_a_watcher(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await new_job(redis)
            await open_session(redis, "sess_gone", principal="alice", cap=100, dialect="spec")
            await attach_watcher(redis, "job_1", "sess_gone", after=0)
            await redis.delete([keys.session("sess_gone"), keys.session_events("sess_gone")])
            emitted = await emit(
                redis, "job_1", node="node-a", epoch=1, events=[event(1)], history_cap=100
            )
            assert emitted.stamped == [[]]
            assert await redis.smembers(keys.job_watchers("job_1")) == set()
            with pytest.raises(LookupError, match="no session"):
                await attach_watcher(redis, "job_1", "sess_gone", after=0)
            with pytest.raises(LookupError, match="no job"):
                await attach_watcher(redis, "job_missing", "sess_gone", after=0)


async def test_a_retried_history_page_stamps_nothing_twice(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await new_job(redis)
            await open_session(redis, "sess_a", principal="alice", cap=100, dialect="spec")
            await open_session(redis, "sess_b", principal="alice", cap=100, dialect="spec")
            await emit(
                redis,
                "job_1",
                node="node-a",
                epoch=1,
                events=[event(n) for n in range(1, 11)],
                history_cap=100,
            )
            first = await attach_watcher(
                redis, "job_1", "sess_a", after=0, page=4, attach_id="sub_1"
            )
            # The reply was lost: the caller asks for the same page again.
            again = await attach_watcher(
                redis, "job_1", "sess_a", after=0, page=4, attach_id="sub_1"
            )
            assert (first.through, again.through) == (4, 8)
            # A subscribe cut off mid-way (its connection dropped) is not the next
            # one: a new subscribe from 2 stamps 3 and 4 again.
            cut_off = await attach_watcher(
                redis, "job_1", "sess_b", after=0, page=4, attach_id="sub_x"
            )
            fresh = await attach_watcher(
                redis, "job_1", "sess_b", after=2, page=2, attach_id="sub_y"
            )
            assert (cut_off.through, fresh.through) == (4, 4)
            assert [n for _, _, n in await stream(redis, "sess_b")] == [1, 2, 3, 4, 3, 4]
            done = await attach_watcher(
                redis, "job_1", "sess_a", after=again.through, page=4, attach_id="sub_1"
            )
            assert done.done
            # A retried emit of events the watcher already had as history: nothing.
            await emit(redis, "job_1", node="node-a", epoch=1, events=[event(10)], history_cap=100)
            await emit(redis, "job_1", node="node-a", epoch=1, events=[event(11)], history_cap=100)
            stamped = await stream(redis, "sess_a")
            assert [n for _, _, n in stamped] == list(range(1, 12))
            assert [seq for seq, _, _ in stamped] == list(range(1, 12))
            # Another subscribe asking for history from 9 gets it again (§7.6).
            resubscribed = await attach_watcher(
                redis, "job_1", "sess_a", after=8, attach_id="sub_2"
            )
            assert resubscribed.done
            assert [n for _, _, n in await stream(redis, "sess_a")][11:] == [9, 10, 11]


async def test_the_terminal_goes_once_to_every_watcher_in_its_dialect(
    redis_server: RedisServer,
) -> None:
    shapes = {
        "spec": ("job.error", '{"final_status":"cancelled"}'),
        "reference": ("job.result", '{"final_status":"cancelled"}'),
    }
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await new_job(redis)
            await open_session(redis, "sess_spec", principal="alice", cap=100, dialect="spec")
            await open_session(redis, "sess_ref", principal="alice", cap=100, dialect="reference")
            for session_id in ("sess_spec", "sess_ref"):
                await attach_watcher(redis, "job_1", session_id, after=0)
            await emit(redis, "job_1", node="node-a", epoch=1, events=[event(1)], history_cap=9)
            with pytest.raises(Fenced):
                await finish(
                    redis, "job_1", node="node-b", epoch=1, frame_id="t", status="x", shapes=shapes
                )
            done = await finish(
                redis,
                "job_1",
                node="node-a",
                epoch=1,
                frame_id="term_1",
                status="cancelled",
                shapes=shapes,
            )
            assert done.first
            retried = await finish(
                redis,
                "job_1",
                node="node-a",
                epoch=1,
                frame_id="term_2",
                status="error",
                shapes=shapes,
            )
            assert (retried.first, retried.status, retried.frame_id) == (
                False,
                "cancelled",
                "term_1",
            )
            for session_id, message_type in (
                ("sess_spec", "job.error"),
                ("sess_ref", "job.result"),
            ):
                entries = await redis.xrange(keys.session_events(session_id), "-", "+")
                assert [str(e.field_values["t"]) for e in entries] == ["job.event", message_type]
                assert str(entries[-1].field_values["f"]) == "term_1"
            # Nothing follows a terminal (§8.2): no watchers remain, the node let go.
            assert await redis.smembers(keys.job_watchers("job_1")) == set()
            assert await redis.smembers(keys.node_jobs("node-a")) == set()
            with pytest.raises(LookupError):
                await finish(
                    redis, "job_9", node="node-a", epoch=1, frame_id="t", status="x", shapes=shapes
                )


async def test_one_frame_to_one_session_and_its_retry(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await open_session(redis, "sess_a", principal="alice", cap=100, dialect="spec")

            async def send(session_id: str, frame_id: str) -> int:
                return await deliver(
                    redis,
                    session_id,
                    message_type="job.event",
                    frame_id=frame_id,
                    job_id="job_1",
                    payload_json='{"kind":"credential"}',
                )

            assert await send("sess_a", "f1") == 1
            assert await send("sess_a", "f1") == 1  # a retry
            assert await send("sess_a", "f2") == 2
            assert [seq for seq, _, _ in await stream(redis, "sess_a")] == [1, 2]
            with pytest.raises(LookupError):
                await send("sess_none", "f3")


async def trio_gather(*calls: object) -> list[tuple[str, int]]:
    results: list[tuple[str, int]] = [("", 0)] * len(calls)

    async def run(index: int, call: object) -> None:
        results[index] = await call  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        for index, call in enumerate(calls):
            nursery.start_soon(run, index, call)
    return results
