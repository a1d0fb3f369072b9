"""The cluster's atomic steps: one Lua script each, run inside Redis (docs/cluster.md).

Every write that more than one node could race on is one script, so it is atomic
cluster-wide, and every script is idempotent: called again with the same arguments
(a retry after a timeout, which ``open_redis`` never makes on its own) it changes
nothing more. Writes to a job also carry its owner and epoch, checked inside the
script (fencing): a node that lost a job to a takeover can write nothing more for it.

Keys (``keys.py``) are hash-tagged per job and per session. A script that stamps a
job's event into its watchers' streams touches both, so the scripts need one Redis
primary (with replicas or not), not Redis Cluster; docs/cluster.md says why that is
the deployment this supports.

The Python side of each script is a typed function over ``Redis``; the Lua is here in
full, so a reader sees what runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from . import keys
from .redis import LuaScript

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .redis import Redis

__all__ = [
    "Admitted",
    "Emitted",
    "Fenced",
    "Finished",
    "HistoryEvent",
    "Watched",
    "admit",
    "attach_watcher",
    "deliver",
    "emit",
    "finish",
    "open_session",
    "save_row",
    "take_over",
]


class Fenced(Exception):
    """This node no longer owns the job (another node took it over): nothing was
    written, and nothing more may be."""

    def __init__(self, job_id: str, owner: str, epoch: int) -> None:
        super().__init__(f"job {job_id} is owned by {owner or '-'} at epoch {epoch}")
        self.job_id = job_id
        self.owner = owner
        self.epoch = epoch


# -- sessions --------------------------------------------------------------------------

_OPEN_SESSION = LuaScript(
    """
-- KEYS[1] session hash; ARGV: principal, cap, dialect
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'principal', ARGV[1], 'cap', ARGV[2], 'dialect', ARGV[3],
           'seq', 0, 'acked', 0, 'evicted', 0)
return 1
"""
)


async def open_session(
    redis: Redis, session_id: str, *, principal: str, cap: int, dialect: str
) -> bool:
    """Create the session's record (``seq`` 0). False: it exists already (a retry)."""
    created = await _OPEN_SESSION(redis, [keys.session(session_id)], [principal, cap, dialect])
    return bool(created)


# The one way a frame enters a session's stream: the next seq, the stream capped at
# the session's ``cap`` (§6.5: the oldest unacknowledged events go, and ``evicted``
# says through which seq, for the overflow notice).
_STAMP = """
-- A session's stamping state for one script call: read once, written once.
local function session_state(sid)
  local skey = 'arcp:{s:' .. sid .. '}'
  local f = redis.call('HMGET', skey, 'cap', 'seq', 'evicted')
  if not f[1] then return false end
  return {key = skey, stream = skey .. ':ev', cap = f[1], ncap = tonumber(f[1]),
          seq = tonumber(f[2]), evicted = tonumber(f[3]), dirty = false}
end
local function stamp(st, mtype, frame_id, job_id, number, trace, payload)
  st.seq = st.seq + 1
  st.dirty = true
  redis.call('XADD', st.stream, 'MAXLEN', '=', st.cap, '0-' .. st.seq,
             't', mtype, 'f', frame_id, 'j', job_id, 'n', number, 'r', trace, 'p', payload)
  return st.seq
end
local function save_state(st)
  if not st.dirty then return end
  local evicted = math.max(st.evicted, st.seq - st.ncap)
  redis.call('HSET', st.key, 'seq', st.seq, 'evicted', evicted)
end
"""


# -- jobs ------------------------------------------------------------------------------


@attrs.frozen
class Admitted:
    """What ``admit`` did: ``created`` False means the idempotency key already named
    ``job_id`` (with ``fingerprint``; the caller compares it, §7.2)."""

    job_id: str
    created: bool
    fingerprint: str


_ADMIT = LuaScript(
    """
-- KEYS: idempotency key ('' for none), job hash, principal's job index, node's jobs,
--       job watchers
-- ARGV: job_id, fingerprint, owner node, principal, ordinal score, row (JSON),
--       submitting session ('' for none)
if KEYS[1] ~= '' then
  local held = redis.call('HMGET', KEYS[1], 'job', 'fingerprint')
  if held[1] then return {0, held[1], held[2]} end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1, ARGV[1], ARGV[2]} end
redis.call('HSET', KEYS[2], 'owner', ARGV[3], 'epoch', 1, 'n', 0, 'status', 'running',
           'principal', ARGV[4], 'row', ARGV[6], 'cancel', '')
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
if ARGV[7] ~= '' then redis.call('SADD', KEYS[5], ARGV[7]) end
if KEYS[1] ~= '' then
  redis.call('HSET', KEYS[1], 'job', ARGV[1], 'fingerprint', ARGV[2])
end
return {1, ARGV[1], ARGV[2]}
"""
)


async def admit(
    redis: Redis,
    *,
    job_id: str,
    principal: str,
    owner: str,
    ordinal: int,
    row: str,
    idempotency_key: str | None = None,
    fingerprint: str = "",
    watcher: str = "",
) -> Admitted:
    """Create the job (owned by ``owner`` at epoch 1) and claim the idempotency key,
    in one step: of concurrent admits with one key on any nodes, one creates. The
    submitting session (``watcher``) watches it from its first event (§7.1)."""
    reply = await _ADMIT(
        redis,
        [
            keys.idempotency(principal, idempotency_key) if idempotency_key else "",
            keys.job(job_id),
            keys.principal_jobs(principal),
            keys.node_jobs(owner),
            keys.job_watchers(job_id),
        ],
        [job_id, fingerprint, owner, principal, ordinal, row, watcher],
    )
    created, held_job, held_fingerprint = reply
    return Admitted(
        job_id=str(held_job), created=bool(int(created)), fingerprint=str(held_fingerprint or "")
    )


@attrs.frozen
class HistoryEvent:
    """One event of a job to append as number ``number`` (§8.2)."""

    number: int
    frame_id: str
    payload_json: str
    message_type: str = "job.event"
    trace_id: str = ""


@attrs.frozen
class Emitted:
    """``last``: the job's highest event number now; ``stamped``: session ids with
    the seq each new event got there, per event (in order)."""

    last: int
    stamped: list[list[tuple[str, int]]]


_EMIT = LuaScript(
    _STAMP
    + """
-- KEYS: job hash, job history stream, job watchers
-- ARGV: job_id, node, epoch, history cap, count, then 5 per event:
--       number, type, frame id, trace id, payload
local owner = redis.call('HGET', KEYS[1], 'owner')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if owner ~= ARGV[2] or epoch ~= ARGV[3] then
  return {'FENCED', owner or '', epoch or '0'}
end
local last = tonumber(redis.call('HGET', KEYS[1], 'n'))
local states = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local st = session_state(sid)
  if st then
    st.sid = sid
    states[#states + 1] = st
  else
    redis.call('SREM', KEYS[3], sid)
  end
end
local stamped = {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local base = 6 + i * 5
  local number = tonumber(ARGV[base])
  if number == last + 1 then
    local mtype, frame_id, trace, payload = ARGV[base+1], ARGV[base+2], ARGV[base+3], ARGV[base+4]
    redis.call('XADD', KEYS[2], 'MAXLEN', '=', ARGV[4], '0-' .. number,
               't', mtype, 'f', frame_id, 'r', trace, 'p', payload)
    local seqs = {}
    for _, st in ipairs(states) do
      seqs[#seqs + 1] = st.sid
      seqs[#seqs + 1] = stamp(st, mtype, frame_id, ARGV[1], number, trace, payload)
    end
    stamped[#stamped + 1] = seqs
    last = number
  elseif number > last + 1 then
    for _, st in ipairs(states) do save_state(st) end
    redis.call('HSET', KEYS[1], 'n', last)
    return {'GAP', last}
  end
end
for _, st in ipairs(states) do save_state(st) end
redis.call('HSET', KEYS[1], 'n', last)
return {'OK', last, stamped}
"""
)


async def emit(
    redis: Redis,
    job_id: str,
    *,
    node: str,
    epoch: int,
    events: Sequence[HistoryEvent],
    history_cap: int,
) -> Emitted:
    """Append ``events`` (numbered on from the job's last) to the job's history and
    stamp each into every watching session's stream, in one step.

    Numbers at or below the job's last are skipped (a retried call is a no-op for
    what it already wrote); a number past ``last + 1`` is a bug (``ValueError``).

    Raises:
        Fenced: the job is not ``node``'s at ``epoch`` (taken over); nothing written.
    """
    args: list[str | int | float] = [job_id, node, epoch, history_cap, len(events)]
    for event in events:
        args += [event.number, event.message_type, event.frame_id, event.trace_id]
        args.append(event.payload_json)
    reply = await _EMIT(
        redis, [keys.job(job_id), keys.job_history(job_id), keys.job_watchers(job_id)], args
    )
    outcome = reply[0]
    if outcome == "FENCED":
        raise Fenced(job_id, str(reply[1]), int(reply[2]))
    if outcome == "GAP":
        raise ValueError(f"job {job_id}: events must continue from {reply[1]}")
    return Emitted(
        last=int(reply[1]),
        stamped=[
            [(str(seqs[i]), int(seqs[i + 1])) for i in range(0, len(seqs), 2)] for seqs in reply[2]
        ],
    )


@attrs.frozen
class Watched:
    """One page of ``attach_watcher``: ``through`` is the last history number
    stamped; ``done`` True when the session now watches the job live."""

    through: int
    done: bool


_ATTACH_WATCHER = LuaScript(
    _STAMP
    + """
-- KEYS: job hash, job history stream, job watchers
-- ARGV: job_id, session_id, after (history number), page, attach id
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local last = tonumber(redis.call('HGET', KEYS[1], 'n'))
local after = tonumber(ARGV[3])
local skey = 'arcp:{s:' .. ARGV[2] .. '}'
local cursor = 'attach:' .. ARGV[1]
-- A retried page (its reply lost) starts after what the same attach stamped.
local done_by = redis.call('HGET', skey, cursor)
if done_by then
  local id, through = string.match(done_by, '^(.*):(%d+)$')
  if id == ARGV[5] then after = math.max(after, tonumber(through)) end
end
if after < last then
  local st = session_state(ARGV[2])
  if not st then return {-2, after} end
  local entries = redis.call('XRANGE', KEYS[2], '(0-' .. after, '+', 'COUNT', ARGV[4])
  for _, entry in ipairs(entries) do
    local number = tonumber(string.sub(entry[1], 3))
    local f = {}
    for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
    stamp(st, f.t, f.f, ARGV[1], number, f.r, f.p)
    after = number
  end
  save_state(st)
  redis.call('HSET', skey, cursor, ARGV[5] .. ':' .. after)
  if after < last then return {after, 0} end
end
if redis.call('EXISTS', skey) == 0 then return {-2, after} end
redis.call('HDEL', skey, cursor)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' then
  redis.call('SADD', KEYS[3], ARGV[2])
  return {after, 1}
end
-- Finished: its kept terminal, in the session's dialect, instead of live (§7.6).
local st = session_state(ARGV[2])
local dialect = redis.call('HGET', skey, 'dialect')
local kept = redis.call('HMGET', KEYS[1], 'terminal:' .. (dialect or 'spec'), 'terminal:spec',
                        'terminal_frame')
local shape = cjson.decode(kept[1] or kept[2])
stamp(st, shape[1], kept[3], ARGV[1], last, '', shape[2])
save_state(st)
return {after, 1}
"""
)


async def attach_watcher(
    redis: Redis,
    job_id: str,
    session_id: str,
    *,
    after: int,
    attach_id: str = "",
    page: int = 256,
) -> Watched:
    """Stamp the job's history past ``after`` into the session's stream, a page per
    call; the call that reaches the job's last event also adds the session as a
    watcher, in the same step: every event reaches the session exactly once, as
    history or live (§7.6), with no checkpoint in between. For a finished job that
    call stamps the job's terminal (in the session's dialect) instead.

    Raises:
        LookupError: no such job, or no such session.
    """
    reply = await _ATTACH_WATCHER(
        redis,
        [keys.job(job_id), keys.job_history(job_id), keys.job_watchers(job_id)],
        [job_id, session_id, after, page, attach_id],
    )
    through, done = int(reply[0]), bool(int(reply[1]))
    if through == -1:
        raise LookupError(f"no job {job_id}")
    if through == -2:
        raise LookupError(f"no session {session_id}")
    return Watched(through=through, done=done)


_TAKE_OVER = LuaScript(
    """
-- KEYS: job hash, old owner's jobs, new owner's jobs; ARGV: job_id, old owner, epoch, new
local owner = redis.call('HGET', KEYS[1], 'owner')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not owner then return {'', '0'} end
if owner == ARGV[2] and epoch == ARGV[3] then
  epoch = tostring(redis.call('HINCRBY', KEYS[1], 'epoch', 1))
  redis.call('HSET', KEYS[1], 'owner', ARGV[4])
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
  owner = ARGV[4]
end
return {owner, epoch}
"""
)


async def take_over(
    redis: Redis, job_id: str, *, owner: str, epoch: int, new_owner: str
) -> tuple[str, int]:
    """Move the job from ``owner`` at ``epoch`` to ``new_owner`` at ``epoch + 1``
    (compare and set); returns the job's owner and epoch afterwards, so of two
    janitors racing for one job exactly one sees itself."""
    reply: Any = await _TAKE_OVER(
        redis,
        [keys.job(job_id), keys.node_jobs(owner), keys.node_jobs(new_owner)],
        [job_id, owner, epoch, new_owner],
    )
    return str(reply[0]), int(reply[1])


@attrs.frozen
class Finished:
    """``finish``'s outcome: ``first`` False when the job had its terminal already
    (a retry, or another node's); ``status`` is the job's final status either way."""

    first: bool
    status: str
    frame_id: str


_FINISH = LuaScript(
    _STAMP
    + """
-- KEYS: job hash, job watchers, owner's jobs
-- ARGV: job_id, node, epoch, frame id, status, count, then 3 per dialect:
--       dialect, type, payload
local f = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'status', 'terminal_frame')
if not f[1] then return {'MISSING'} end
if f[3] ~= 'running' then return {'DONE', f[3], f[4]} end
if f[1] ~= ARGV[2] or f[2] ~= ARGV[3] then return {'FENCED', f[1], f[2]} end
local by_dialect = {}
local fields = {'status', ARGV[5], 'terminal_frame', ARGV[4]}
for i = 0, tonumber(ARGV[6]) - 1 do
  local base = 7 + i * 3
  by_dialect[ARGV[base]] = {ARGV[base + 1], ARGV[base + 2]}
  fields[#fields + 1] = 'terminal:' .. ARGV[base]
  fields[#fields + 1] = cjson.encode({ARGV[base + 1], ARGV[base + 2]})
end
local n = redis.call('HGET', KEYS[1], 'n')
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local st = session_state(sid)
  if st then
    local dialect = redis.call('HGET', st.key, 'dialect')
    local shape = by_dialect[dialect] or by_dialect['spec']
    stamp(st, shape[1], ARGV[4], ARGV[1], n, '', shape[2])
    save_state(st)
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return {'OK', ARGV[5], ARGV[4]}
"""
)


async def finish(
    redis: Redis,
    job_id: str,
    *,
    node: str,
    epoch: int,
    frame_id: str,
    status: str,
    shapes: dict[str, tuple[str, str]],
) -> Finished:
    """Write the job's terminal: its final ``status``, and one frame (one frame id)
    into every watcher's stream, shaped for the session's dialect (``shapes``:
    dialect -> (message type, payload JSON); ``spec`` is the fallback). Kept on the
    job for a later subscriber (``terminal:<dialect>``). The watchers set goes: a
    terminal is the last frame of a job (§8.2). Flush the job's events first.

    Raises:
        Fenced: not ``node``'s at ``epoch``; nothing written.
        LookupError: no such job.
    """
    if "spec" not in shapes:
        raise ValueError("shapes needs the 'spec' dialect (the fallback)")
    args: list[str | int | float] = [job_id, node, epoch, frame_id, status, len(shapes)]
    for dialect, (message_type, payload_json) in sorted(shapes.items()):
        args += [dialect, message_type, payload_json]
    reply = await _FINISH(
        redis, [keys.job(job_id), keys.job_watchers(job_id), keys.node_jobs(node)], args
    )
    outcome = reply[0]
    if outcome == "MISSING":
        raise LookupError(f"no job {job_id}")
    if outcome == "FENCED":
        raise Fenced(job_id, str(reply[1]), int(reply[2]))
    return Finished(first=outcome == "OK", status=str(reply[1]), frame_id=str(reply[2]))


_DELIVER = LuaScript(
    _STAMP
    + """
-- KEYS: session hash; ARGV: session_id, type, frame id, job id, number, trace, payload
local st = session_state(ARGV[1])
if not st then return 0 end
local last = redis.call('HMGET', KEYS[1], 'last_frame', 'last_frame_seq')
if last[1] == ARGV[3] then return tonumber(last[2]) end
local seq = stamp(st, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
save_state(st)
redis.call('HSET', KEYS[1], 'last_frame', ARGV[3], 'last_frame_seq', seq)
return seq
"""
)


async def deliver(
    redis: Redis,
    session_id: str,
    *,
    message_type: str,
    frame_id: str,
    job_id: str,
    payload_json: str,
    number: int = 0,
    trace_id: str = "",
) -> int:
    """Stamp one frame into one session's stream (a rotated credential, a late
    subscriber's terminal); returns its seq.

    A retry of the session's latest ``deliver`` (same ``frame_id``) returns its seq
    and stamps nothing.

    Raises:
        LookupError: no such session.
    """
    seq = int(
        await _DELIVER(
            redis,
            [keys.session(session_id)],
            [session_id, message_type, frame_id, job_id, number, trace_id, payload_json],
        )
    )
    if not seq:
        raise LookupError(f"no session {session_id}")
    return seq


_SAVE_ROW = LuaScript(
    """
-- KEYS: job hash; ARGV: node, epoch, row (JSON)
local f = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'row', ARGV[3])
return 1
"""
)


async def save_row(redis: Redis, job_id: str, *, node: str, epoch: int, row: str) -> bool:
    """Replace the job's descriptor (a transition, its terminal), fenced like
    ``emit``: False when the job is not ``node``'s at ``epoch`` (nothing written)."""
    return bool(await _SAVE_ROW(redis, [keys.job(job_id)], [node, epoch, row]))
