"""One way to reach Redis, with the two pitfalls of coredis closed (docs/cluster.md).

- **No retries.** coredis's default policy re-sends a command after a timeout or a
  lost connection, so a script that did run runs again. Every client made here uses
  ``NoRetryPolicy``; the callers' writes are idempotent instead (a retried call is a
  no-op), and a failure reaches them as ``RedisUnavailable``.
- **No lost pool slots.** coredis's pool re-queues a released connection only when
  it is still usable, so each blocking read (``XREAD BLOCK``) that is cancelled,
  times out or loses its socket takes one slot away for good; with a small pool the
  next command waits forever. ``SlotSafePool`` hands such a slot back (as an empty
  slot: the next lease opens a fresh connection).

``open_redis(url)`` is the only constructor: an async context manager (the client
runs its connections in a nursery of its own, which the block owns).
"""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..wire.errors import InternalError

try:
    import coredis
    from coredis.exceptions import ConnectionError as RedisConnectionError
    from coredis.exceptions import NoScriptError, RedisError
    from coredis.pool import ConnectionPool
    from coredis.retry import NoRetryPolicy
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("arcp_trio.cluster needs coredis: pip install 'arcp-trio[redis]'") from exc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["LuaScript", "RedisUnavailable", "SlotSafePool", "open_redis", "unavailable"]

#: The client type every cluster module is written against (responses decoded to str).
Redis = coredis.Redis[str]


class RedisUnavailable(InternalError):
    """Redis could not be reached, or did not answer in time.

    ``INTERNAL_ERROR``, retryable (§12): the request that needed Redis was refused,
    not half done; connections stay open and a retry after Redis is back succeeds.
    """


def unavailable(exc: BaseException) -> RedisUnavailable:
    """The ``RedisUnavailable`` a coredis failure (or timeout) becomes."""
    return RedisUnavailable(f"redis unavailable: {type(exc).__name__}: {exc}")


class _ClosesItsBuffers:
    """coredis leaves a connection's six in-memory buffers open when its connect
    fails (they are entered only once connected): each refused attempt then warns at
    garbage collection. This closes them however ``run`` ends."""

    async def run(self, **kwargs: Any) -> None:
        try:
            await super().run(**kwargs)  # type: ignore[misc]
        finally:
            for name in (
                "_write_buffer_in",
                "_write_buffer_out",
                "_push_message_buffer_in",
                "_push_message_buffer_out",
                "_streamed_message_buffer_in",
                "_streamed_message_buffer_out",
            ):
                buffer = getattr(self, name, None)
                if buffer is not None:
                    buffer.close()


class SlotSafePool(ConnectionPool[Any]):
    """coredis's pool, except that releasing an unusable connection frees its slot
    (and a connection that never connected closes its buffers)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        base = self.connection_class
        self.connection_class = type(f"Closing{base.__name__}", (_ClosesItsBuffers, base), {})

    def release(self, connection: Any) -> None:
        if connection.usable:
            super().release(connection)
            return
        self.statistics.connection_released(connection)
        connection.invalidate()
        # An empty slot: the next ``get_connection`` makes a new connection for it.
        self._available_connections.put_nowait(None)


class LuaScript:
    """A Lua script called by its SHA1 (``EVALSHA``), loaded on first need.

    ``NOSCRIPT`` (a Redis that restarted or flushed its script cache) loads it and
    calls once more: safe, since a refused ``EVALSHA`` ran nothing. Nothing else is
    ever re-sent (coredis's own ``Script`` relies on the client's retry policy,
    which ``open_redis`` turns off).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: list[str], args: list[str | int | float]) -> Any:
        try:
            return await redis.evalsha(self.sha, keys=keys, args=args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, keys=keys, args=args)


@asynccontextmanager
async def open_redis(
    url: str,
    *,
    max_connections: int = 16,
    connect_timeout: float = 2.0,
    stream_timeout: float = 5.0,
    pool_timeout: float = 5.0,
    client_name: str | None = None,
) -> AsyncIterator[Redis]:
    """A coredis client for ``url`` (``redis://host:port/db``, ``rediss://``, ``unix://``).

    ``stream_timeout`` bounds every reply (a blocking read asks for less than that);
    ``pool_timeout`` bounds the wait for a free connection. Neither retries.

    Raises:
        RedisUnavailable: Redis did not answer a first ``PING`` within
            ``connect_timeout``.
    """
    pool = SlotSafePool.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        connect_timeout=connect_timeout,
        stream_timeout=stream_timeout,
        timeout=pool_timeout,
        client_name=client_name,
    )
    client: Redis = coredis.Redis(
        connection_pool=pool,
        decode_responses=True,
        retry_policy=NoRetryPolicy(),
        verify_version=False,
    )
    connected = False
    try:
        async with client:
            try:
                await client.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                raise unavailable(exc) from exc
            connected = True
            yield client
    except BaseExceptionGroup as group:
        # The client's own nursery wraps whatever ends the block. A failure to
        # connect is ours to report bare; the body's exceptions stay as Trio gives them.
        if connected:
            raise
        refused = group.subgroup(RedisUnavailable)
        if refused is None:
            raise
        raise _first(refused) from None


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


__all__ += ["Redis", "RedisConnectionError", "RedisError"]
