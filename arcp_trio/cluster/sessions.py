"""A session's record in Redis: where it is attached, what it acknowledged, how long
it may wait for a resume, and the token index a resume finds it by.

The session's stream and its stamping state (``seq``, ``cap``, ``evicted``) are
written by ``scripts``; this module keeps the rest:

- ``row``: the session's descriptor (``store.base.SessionRow`` as JSON: principal,
  token hashes, features, dialect, submitted and subscribed jobs), written whenever
  the runtime saves the session;
- ``attached`` / ``attach_epoch``: the node the session's connection is on now. A
  resume on another node bumps the epoch and tells the previous node (through its
  control stream) to drop its superseded connection (§6.3);
- the resume window: on detach every key of the session gets the window as its TTL
  (Redis expires the session on its own: nobody has to be alive to forget it); an
  attach removes the TTLs;
- ``arcp:tok:<hash>`` -> session id for each valid resume-token hash (same TTLs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from . import keys
from .reader import StampedFrame, frames_of
from .redis import LuaScript

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .redis import Redis

__all__ = [
    "Attached",
    "SessionState",
    "ack",
    "attach",
    "detach",
    "find_by_token",
    "read_events",
    "save_row",
    "state",
]


def token_key(token_hash: str) -> str:
    return f"{keys.PREFIX}:tok:{token_hash}"


@attrs.frozen
class Attached:
    """``epoch``: this attachment's number; ``previous``: the node the session was
    attached to until now ('' if none), to be told its connection is superseded."""

    epoch: int
    previous: str


_ATTACH = LuaScript(
    """
-- KEYS: session hash, session stream; ARGV: node, token index keys...
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local previous = redis.call('HGET', KEYS[1], 'attached') or ''
local epoch = redis.call('HINCRBY', KEYS[1], 'attach_epoch', 1)
redis.call('HSET', KEYS[1], 'attached', ARGV[1])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
for i = 2, #ARGV do redis.call('PERSIST', ARGV[i]) end
return {epoch, previous}
"""
)


async def attach(redis: Redis, session_id: str, *, node: str, tokens: Iterable[str]) -> Attached:
    """Attach the session to ``node`` (its window stops running).

    Raises:
        LookupError: the session is gone (its window ended).
    """
    reply = await _ATTACH(
        redis,
        [keys.session(session_id), keys.session_events(session_id)],
        [node, *(token_key(token) for token in sorted(tokens))],
    )
    epoch, previous = int(reply[0]), str(reply[1])
    if not epoch:
        raise LookupError(f"no session {session_id}")
    return Attached(epoch=epoch, previous=previous)


_DETACH = LuaScript(
    """
-- KEYS: session hash, session stream; ARGV: node, epoch, window ms, token index keys...
local f = redis.call('HMGET', KEYS[1], 'attached', 'attach_epoch')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], 'attached')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
for i = 4, #ARGV do redis.call('PEXPIRE', ARGV[i], ARGV[3]) end
return 1
"""
)


async def detach(
    redis: Redis,
    session_id: str,
    *,
    node: str,
    epoch: int,
    window_sec: float,
    tokens: Iterable[str],
) -> bool:
    """The connection on ``node`` (attachment ``epoch``) ended: the session waits
    ``window_sec`` for a resume, then Redis forgets it. False: it had been attached
    elsewhere since (superseded); nothing changes."""
    detached = await _DETACH(
        redis,
        [keys.session(session_id), keys.session_events(session_id)],
        [node, epoch, max(1, int(window_sec * 1000)), *(token_key(t) for t in sorted(tokens))],
    )
    return bool(detached)


async def save_row(
    redis: Redis, session_id: str, row_json: str, *, tokens: Iterable[str], retired: Iterable[str]
) -> None:
    """Write the session's descriptor and index its valid token hashes (those
    ``retired`` no longer find it)."""
    session_key = keys.session(session_id)
    await redis.hset(session_key, {"row": row_json})
    ttl = await redis.pttl(session_key)
    for token in tokens:
        if ttl > 0:
            await redis.set(token_key(token), session_id, px=ttl)
        else:
            await redis.set(token_key(token), session_id)
    stale = [token_key(token) for token in retired]
    if stale:
        await redis.delete(stale)


async def find_by_token(redis: Redis, token_hash: str) -> str | None:
    """The session a resume token's hash belongs to, if it is still resumable."""
    found = await redis.get(token_key(token_hash))
    return str(found) if found is not None else None


@attrs.frozen
class SessionState:
    """What a resume checks (§6.3) and continues from."""

    row_json: str
    seq: int
    acked: int
    evicted: int
    cap: int
    attached: str
    attach_epoch: int


async def state(redis: Redis, session_id: str) -> SessionState | None:
    fields = await redis.hmget(
        keys.session(session_id),
        ["row", "seq", "acked", "evicted", "cap", "attached", "attach_epoch"],
    )
    row, seq, acked, evicted, cap, attached, epoch = fields
    if seq is None:
        return None
    return SessionState(
        row_json=str(row or ""),
        seq=int(seq),
        acked=int(acked or 0),
        evicted=int(evicted or 0),
        cap=int(cap or 0),
        attached=str(attached or ""),
        attach_epoch=int(epoch or 0),
    )


_ACK = LuaScript(
    """
-- KEYS: session hash, session stream; ARGV: through
local acked = tonumber(redis.call('HGET', KEYS[1], 'acked') or '-1')
if acked < 0 then return -1 end
local through = math.min(tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'seq')))
if through <= acked then return acked end
redis.call('HSET', KEYS[1], 'acked', through)
redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. (through + 1))
return through
"""
)


async def ack(redis: Redis, session_id: str, through: int) -> int:
    """§6.5: the client processed every event through ``through``; the stream lets
    them go. Returns the session's acknowledged seq (never lowered; never past
    its last stamped seq).

    Raises:
        LookupError: no such session.
    """
    acked = int(
        await _ACK(redis, [keys.session(session_id), keys.session_events(session_id)], [through])
    )
    if acked < 0:
        raise LookupError(f"no session {session_id}")
    return acked


async def read_events(redis: Redis, session_id: str, after: int, limit: int) -> list[StampedFrame]:
    """Up to ``limit`` of the session's frames with ``seq > after``, in order (a
    resume's replay reads these a page at a time)."""
    entries = await redis.xrange(keys.session_events(session_id), f"(0-{after}", "+", count=limit)
    return frames_of(entries)
