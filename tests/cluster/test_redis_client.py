"""``open_redis``: the two coredis pitfalls of docs/cluster.md stay closed.

A real ``redis-server`` per test (``tests/redis_server.py``), the real clock, every
wait under ``trio.fail_after``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.cluster.redis import LuaScript, RedisUnavailable, open_redis
from arcp_trio.wire.errors import ErrorCode
from tests.redis_server import free_port

if TYPE_CHECKING:
    from tests.redis_server import RedisServer


async def test_cancelled_blocking_reads_give_their_pool_slots_back(
    redis_server: RedisServer,
) -> None:
    # Stock coredis: with two slots, the second cancelled XREAD BLOCK leaves every
    # later command waiting for a connection forever.
    async with open_redis(redis_server.url, max_connections=2) as redis:
        for _ in range(5):
            with trio.move_on_after(0.05) as scope:
                await redis.xread({"stream": "$"}, block=2_000)
            assert scope.cancelled_caught
        with trio.fail_after(2):
            await redis.set("key", "value")
            assert await redis.get("key") == "value"


async def test_a_script_that_timed_out_is_not_run_again(redis_server: RedisServer) -> None:
    # The default retry policy re-sends a command after a timeout: an INCR in a
    # script would count twice. Here the caller sees the failure once.
    async with open_redis(redis_server.url, stream_timeout=0.2) as redis:
        slow = LuaScript(
            "redis.call('INCR', KEYS[1]) "
            "local t = redis.call('TIME') local stop = t[1] * 1000000 + t[2] + 400000 "
            "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop "
            "return 1"
        )
        with trio.fail_after(5), pytest.raises(Exception) as failure:
            await slow(redis, ["count"], [])
        assert "imeout" in type(failure.value).__name__ + str(failure.value)
        with trio.fail_after(5):
            await trio.sleep(0.5)  # the script ends on the server
            assert await redis.get("count") == "1"


async def test_no_redis_is_a_retryable_internal_error() -> None:
    with trio.fail_after(5), pytest.raises(RedisUnavailable) as refused:
        async with open_redis(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5):
            pass
    assert refused.value.code == ErrorCode.INTERNAL_ERROR
    assert refused.value.retryable
