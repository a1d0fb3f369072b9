"""Redis key names. Hash tags (``{…}``) keep each job's keys, and each session's,
in one slot; the Lua in ``scripts.py`` builds session keys the same way
(``arcp:{s:<id>}``): change both together.

Ids are runtime-minted (``prefix_ULID``) and principals come from an authenticator,
so a principal is hex-encoded where it is part of a key: no ``{``, ``}`` or ``:`` of
its own can move a key to another slot or collide with another key.
"""

from __future__ import annotations

__all__ = [
    "idempotency",
    "job",
    "job_history",
    "job_watchers",
    "node_alive",
    "node_control",
    "node_jobs",
    "nodes",
    "principal_jobs",
    "session",
    "session_events",
]

PREFIX = "arcp"


def _principal(principal: str) -> str:
    return principal.encode().hex()


def job(job_id: str) -> str:
    """Hash: owner, epoch, last event number ``n``, status, principal, row, cancel."""
    return f"{PREFIX}:{{j:{job_id}}}"


def job_history(job_id: str) -> str:
    """Stream ``0-<n>``: the job's events (capped at its history limit)."""
    return f"{PREFIX}:{{j:{job_id}}}:ev"


def job_watchers(job_id: str) -> str:
    """Set: the sessions the job's events are stamped into."""
    return f"{PREFIX}:{{j:{job_id}}}:w"


def session(session_id: str) -> str:
    """Hash: principal, cap, dialect, seq (last stamped), acked, evicted."""
    return f"{PREFIX}:{{s:{session_id}}}"


def session_events(session_id: str) -> str:
    """Stream ``0-<seq>``: the session's stamped frames (capped at ``cap``)."""
    return f"{PREFIX}:{{s:{session_id}}}:ev"


def idempotency(principal: str, key: str) -> str:
    """Hash: the job the key names, and the submit's fingerprint (§7.2)."""
    return f"{PREFIX}:{{i:{_principal(principal)}}}:{key.encode().hex()}"


def principal_jobs(principal: str) -> str:
    """Sorted set: the principal's job ids by ordinal (keyset pagination, §6.6)."""
    return f"{PREFIX}:{{p:{_principal(principal)}}}:jobs"


def nodes() -> str:
    """Set: every node id that has joined."""
    return f"{PREFIX}:nodes"


def node_alive(node: str) -> str:
    """String with a TTL, renewed while the node lives (its lease)."""
    return f"{PREFIX}:{{n:{node}}}:alive"


def node_jobs(node: str) -> str:
    """Set: the jobs the node owns and runs."""
    return f"{PREFIX}:{{n:{node}}}:jobs"


def node_control(node: str) -> str:
    """Stream: what other nodes ask of this one (cancel a job, a session moved), and
    the wake-ups of its own reader."""
    return f"{PREFIX}:{{n:{node}}}:ctl"
