"""Session records in Redis: attach/detach across nodes, the resume window as a TTL,
the token index, acknowledgements and paged replay. Real Redis, real clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.cluster import keys, sessions
from arcp_trio.cluster.redis import open_redis
from arcp_trio.cluster.scripts import HistoryEvent, admit, attach_watcher, emit, open_session

if TYPE_CHECKING:
    from arcp_trio.cluster.redis import Redis
    from tests.redis_server import RedisServer


async def session_with_events(redis: Redis, count: int) -> None:
    await open_session(redis, "sess_a", principal="alice", cap=1000, dialect="spec")
    await admit(redis, job_id="job_1", principal="alice", owner="node-a", ordinal=1, row="{}")
    await attach_watcher(redis, "job_1", "sess_a", after=0)
    await emit(
        redis,
        "job_1",
        node="node-a",
        epoch=1,
        events=[
            HistoryEvent(number=n, frame_id=f"evt_{n}", payload_json="{}")
            for n in range(1, count + 1)
        ],
        history_cap=1000,
    )


async def test_a_resume_on_another_node_supersedes_the_first(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await session_with_events(redis, 3)
            first = await sessions.attach(redis, "sess_a", node="node-a", tokens=["t1"])
            assert (first.epoch, first.previous) == (1, "")
            moved = await sessions.attach(redis, "sess_a", node="node-b", tokens=["t2"])
            assert (moved.epoch, moved.previous) == (2, "node-a")
            # The superseded connection on node A ends later: its detach changes nothing.
            assert not await sessions.detach(
                redis, "sess_a", node="node-a", epoch=1, window_sec=60, tokens=["t1"]
            )
            current = await sessions.state(redis, "sess_a")
            assert current is not None
            assert (current.attached, current.attach_epoch) == ("node-b", 2)
            assert await redis.pttl(keys.session("sess_a")) == -1
            with pytest.raises(LookupError):
                await sessions.attach(redis, "sess_none", node="node-a", tokens=[])


async def test_the_window_is_a_ttl_that_an_attach_lifts(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await session_with_events(redis, 3)
            await sessions.save_row(redis, "sess_a", '{"id":1}', tokens=["t1"], retired=[])
            attached = await sessions.attach(redis, "sess_a", node="node-a", tokens=["t1"])
            assert await sessions.detach(
                redis,
                "sess_a",
                node="node-a",
                epoch=attached.epoch,
                window_sec=0.3,
                tokens=["t1"],
            )
            for key in (keys.session("sess_a"), keys.session_events("sess_a"), "arcp:tok:t1"):
                assert 0 < await redis.pttl(key) <= 300
            assert await sessions.find_by_token(redis, "t1") == "sess_a"
            # Resumed in time: nothing expires any more.
            await sessions.attach(redis, "sess_a", node="node-b", tokens=["t1"])
            await trio.sleep(0.4)
            assert await sessions.find_by_token(redis, "t1") == "sess_a"
            state = await sessions.state(redis, "sess_a")
            assert state is not None
            assert state.seq == 3
            # Detached for good: Redis forgets all of it when the window ends.
            await sessions.detach(
                redis, "sess_a", node="node-b", epoch=2, window_sec=0.2, tokens=["t1"]
            )
            await trio.sleep(0.35)
            assert await sessions.state(redis, "sess_a") is None
            assert await sessions.find_by_token(redis, "t1") is None
            assert await redis.exists([keys.session_events("sess_a")]) == 0


async def test_retired_tokens_no_longer_find_the_session(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await session_with_events(redis, 1)
            await sessions.save_row(redis, "sess_a", "{}", tokens=["t1", "t2"], retired=[])
            await sessions.save_row(redis, "sess_a", "{}", tokens=["t3"], retired=["t1", "t2"])
            assert await sessions.find_by_token(redis, "t1") is None
            assert await sessions.find_by_token(redis, "t3") == "sess_a"


async def test_acks_trim_the_stream_and_replay_pages_from_any_seq(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await session_with_events(redis, 10)
            page = await sessions.read_events(redis, "sess_a", 2, 5)
            assert [frame.seq for frame in page] == [3, 4, 5, 6, 7]
            assert await sessions.ack(redis, "sess_a", 4) == 4
            assert await sessions.ack(redis, "sess_a", 2) == 4  # never lowered
            assert await sessions.ack(redis, "sess_a", 99) == 10  # never past the last
            assert await sessions.read_events(redis, "sess_a", 0, 100) == []
            await emit(
                redis,
                "job_1",
                node="node-a",
                epoch=1,
                events=[HistoryEvent(number=11, frame_id="evt_11", payload_json="{}")],
                history_cap=1000,
            )
            assert [f.seq for f in await sessions.read_events(redis, "sess_a", 10, 100)] == [11]
            with pytest.raises(LookupError):
                await sessions.ack(redis, "sess_none", 1)
