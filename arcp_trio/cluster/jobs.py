"""A job's record in Redis beyond its events: listing (§6.6), cancel requests that
reach the owner (§7.4), ordinals, and retention.

The listing is keyset-paginated by ordinal (a cluster-wide ``INCR``), from the
principal's sorted set; a job whose keys expired (retention) is dropped from it as
the listing meets it. ``request_cancel`` records the reason on the job (so a janitor
that takes a dead owner's job over ends it ``CANCELLED``, issue 16) and returns the
owner, whom the caller tells through its control stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from coredis.tokens import PureToken

from . import keys
from .redis import LuaScript

if TYPE_CHECKING:
    from .redis import Redis

__all__ = ["JobRow", "list_for", "next_ordinal", "request_cancel", "retire"]


async def next_ordinal(redis: Redis) -> int:
    """The next job ordinal, increasing across every node."""
    return int(await redis.incr(f"{keys.PREFIX}:ordinal"))


@attrs.frozen
class JobRow:
    job_id: str
    ordinal: int
    status: str
    row_json: str


async def list_for(
    redis: Redis, principal: str, *, after: int = 0, limit: int = 100
) -> tuple[list[JobRow], int | None]:
    """The principal's jobs with ordinal above ``after``, oldest first, at most
    ``limit``; and the cursor of the next page (None: this was the last).

    Jobs whose keys expired are dropped from the index as they are met, a hundred
    or more a round; after eight rounds the page ends early and the cursor says
    where to go on (bounded work per request).
    """
    index = keys.principal_jobs(principal)
    found: list[JobRow] = []
    cursor = after
    for _round in range(8):
        # One more than still needed (its presence says there is a next page), and
        # at least a hundred, so a run of expired entries costs few rounds.
        asked = max(limit - len(found) + 1, 100)
        members = await redis.zrange(
            index,
            f"({cursor}",
            "+inf",
            sortby=PureToken.BYSCORE,
            offset=0,
            count=asked,
            withscores=True,
        )
        gone: list[str] = []
        more = False
        for member in members:
            if len(found) == limit:
                more = True  # one more exists: a next page
                break
            job_id, ordinal = str(member.member), int(member.score)
            status, row = await redis.hmget(keys.job(job_id), ["status", "row"])
            cursor = ordinal
            if status is None:
                gone.append(job_id)
            else:
                found.append(JobRow(job_id, ordinal, str(status), str(row or "{}")))
        if gone:
            await redis.zrem(index, gone)
        if more:
            return found, found[-1].ordinal
        if len(members) < asked:
            return found, None  # the index has no more
    return found, cursor


_REQUEST_CANCEL = LuaScript(
    """
-- KEYS: job hash; ARGV: reason
local f = redis.call('HMGET', KEYS[1], 'owner', 'status', 'cancel')
if not f[1] then return {'MISSING', ''} end
if f[2] ~= 'running' then return {'ENDED', f[2]} end
if f[3] == '' then redis.call('HSET', KEYS[1], 'cancel', ARGV[1]) end
return {'OK', f[1]}
"""
)


async def request_cancel(redis: Redis, job_id: str, reason: str) -> str | None:
    """Record a cancel request on a running job (the first reason stays); returns
    its owner, or None if the job has ended already.

    Raises:
        LookupError: no such job.
    """
    outcome, value = await _REQUEST_CANCEL(redis, [keys.job(job_id)], [reason or "cancelled"])
    if outcome == "MISSING":
        raise LookupError(f"no job {job_id}")
    return str(value) if outcome == "OK" else None


async def retire(
    redis: Redis,
    job_id: str,
    *,
    retention_sec: float,
    principal: str = "",
    idempotency_key: str | None = None,
) -> None:
    """The job ended: its keys, and its idempotency record (§7.2), go after
    ``retention_sec`` (listing drops it then)."""
    ttl = max(1, int(retention_sec * 1000))
    retired = [keys.job(job_id), keys.job_history(job_id), keys.job_watchers(job_id)]
    if idempotency_key is not None:
        retired.append(keys.idempotency(principal, idempotency_key))
    for key in retired:
        await redis.pexpire(key, ttl)
