"""The node reader: attached sessions' streams and the control stream in one blocking
read, changed without cancelling it. Real Redis, real clock, every wait bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from arcp_trio.cluster.reader import NodeReader, StampedFrame
from arcp_trio.cluster.redis import open_redis
from arcp_trio.cluster.scripts import HistoryEvent, admit, attach_watcher, emit, open_session

if TYPE_CHECKING:
    from collections.abc import Callable

    from arcp_trio.cluster.redis import Redis
    from tests.redis_server import RedisServer


class Inbox:
    def __init__(self) -> None:
        self.frames: dict[str, list[StampedFrame]] = {}
        self.control: list[dict[str, str]] = []
        self.changed = trio.Event()

    def on_frames(self, session_id: str, frames: list[StampedFrame]) -> None:
        self.frames.setdefault(session_id, []).extend(frames)
        self.changed.set()

    def on_control(self, fields: dict[str, str]) -> None:
        self.control.append(fields)
        self.changed.set()

    def seqs(self, session_id: str) -> list[int]:
        return [frame.seq for frame in self.frames.get(session_id, [])]

    async def until(self, done: object) -> None:
        while not done():  # type: ignore[operator]
            self.changed = trio.Event()
            await self.changed.wait()


async def poll(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` (a flag the reader sets; no event to wait on), bounded."""
    for _ in range(400):
        if condition():
            return
        await trio.sleep(0.025)
    raise AssertionError("condition never held")


async def job_with_watchers(redis: Redis, *session_ids: str) -> None:
    await admit(redis, job_id="job_1", principal="alice", owner="node-a", ordinal=1, row="{}")
    for session_id in session_ids:
        await open_session(redis, session_id, principal="alice", cap=10_000, dialect="spec")
        await attach_watcher(redis, "job_1", session_id, after=0)


async def emit_range(redis: Redis, first: int, last: int) -> None:
    await emit(
        redis,
        "job_1",
        node="node-a",
        epoch=1,
        events=[
            HistoryEvent(number=n, frame_id=f"evt_{n}", payload_json=f'{{"n":{n}}}')
            for n in range(first, last + 1)
        ],
        history_cap=10_000,
    )


async def test_frames_reach_the_watched_sessions_in_order_and_a_watch_wakes_the_read(
    redis_server: RedisServer,
) -> None:
    inbox = Inbox()
    with trio.fail_after(10):
        async with open_redis(redis_server.url, max_connections=2) as redis:
            await job_with_watchers(redis, "sess_a", "sess_b")
            reader = NodeReader(
                redis,
                "node-b",
                on_frames=inbox.on_frames,
                on_control=inbox.on_control,
                block_ms=60_000,  # a watch must not wait for the read to time out
                count=50,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run)
                await reader.watch("sess_a", 0)
                await emit_range(redis, 1, 120)
                await inbox.until(lambda: len(inbox.seqs("sess_a")) == 120)
                assert inbox.seqs("sess_a") == list(range(1, 121))
                assert [f.number for f in inbox.frames["sess_a"]] == list(range(1, 121))
                assert inbox.frames["sess_a"][0].payload_json == '{"n":1}'
                assert "sess_b" not in inbox.frames

                # Watched while the read is blocked, from seq 100: the wake-up brings
                # its frames in the next read, long before the block would end.
                await reader.watch("sess_b", 100)
                await inbox.until(lambda: len(inbox.seqs("sess_b")) == 20)
                assert inbox.seqs("sess_b") == list(range(101, 121))
                # Ordinary commands still run on the two-slot pool beside the read.
                assert await redis.hget("arcp:{s:sess_b}", "seq") == "120"
                nursery.cancel_scope.cancel()


async def test_unwatched_sessions_lose_nothing_and_control_entries_arrive(
    redis_server: RedisServer,
) -> None:
    inbox = Inbox()
    with trio.fail_after(10):
        async with open_redis(redis_server.url) as redis:
            await job_with_watchers(redis, "sess_a")
            reader = NodeReader(
                redis, "node-b", on_frames=inbox.on_frames, on_control=inbox.on_control
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run)
                await reader.watch("sess_a", 0)
                await emit_range(redis, 1, 5)
                await inbox.until(lambda: len(inbox.seqs("sess_a")) == 5)
                reader.unwatch("sess_a")  # congested, say
                await emit_range(redis, 6, 10)
                await reader.send_control("node-b", {"kind": "cancel", "job_id": "job_1"})
                await inbox.until(lambda: inbox.control)
                assert inbox.control == [{"kind": "cancel", "job_id": "job_1"}]
                assert inbox.seqs("sess_a") == [1, 2, 3, 4, 5]
                await reader.watch("sess_a", 5)  # writable again: on from where it was
                await inbox.until(lambda: len(inbox.seqs("sess_a")) == 10)
                assert inbox.seqs("sess_a") == list(range(1, 11))
                nursery.cancel_scope.cancel()


async def test_a_paused_redis_stalls_the_reader_and_it_goes_on_when_redis_does(
    redis_server: RedisServer,
) -> None:
    inbox = Inbox()
    with trio.fail_after(20):
        async with open_redis(redis_server.url, stream_timeout=0.5) as redis:
            await job_with_watchers(redis, "sess_a")
            reader = NodeReader(
                redis,
                "node-b",
                on_frames=inbox.on_frames,
                on_control=inbox.on_control,
                block_ms=100,
                retry_sec=0.1,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run)
                await reader.watch("sess_a", 0)
                await emit_range(redis, 1, 3)
                await inbox.until(lambda: len(inbox.seqs("sess_a")) == 3)
                redis_server.pause()
                try:
                    await poll(lambda: not reader.healthy)
                finally:
                    redis_server.resume()
                await emit_range(redis, 4, 6)
                await inbox.until(lambda: len(inbox.seqs("sess_a")) == 6)
                assert inbox.seqs("sess_a") == [1, 2, 3, 4, 5, 6]
                await poll(lambda: reader.healthy)
                nursery.cancel_scope.cancel()
