"""Recovery: the runtime's records to and from the rows a ``Store`` keeps.

``job_to_row``/``session_to_row`` are what the runtime writes as it runs.
``restored_job``/``restored_session`` rebuild the records after a restart from a
store's ``Recovered`` rows and the bounds of each history and stream: the events
themselves stay in the store (RAM holds none until a resume or subscribe reads
them, docs/store.md). Registering the records, re-arming resume windows and ending
interrupted jobs is the runtime's part (``Runtime._restore``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs

from ..protocol.eventlog import EventBuffer
from ..protocol.job import JobRecord, JobStatus, Terminal
from ..protocol.leases import Budget, Lease
from ..protocol.session import Dialect, ResumeWindow
from ..store.base import SessionRow
from ..wire.timestamps import parse_timestamp
from .session import Session

if TYPE_CHECKING:
    from ..store.base import Recovered

__all__ = [
    "job_from_row",
    "job_to_row",
    "restored_job",
    "restored_session",
    "session_to_row",
]


def job_to_row(job: JobRecord) -> dict[str, Any]:
    """Everything about a job except its history (stored separately) and watchers
    (rebuilt from the sessions that watch it)."""
    terminal = None
    if job.terminal is not None:
        # Shallow: the result is plain JSON already (validated when the job ended), and
        # a recursive asdict would recurse into it (deep results crashed it: fuzzing).
        terminal = attrs.asdict(job.terminal, recurse=False)
        terminal["status"] = str(job.terminal.status)
    return {
        "job_id": job.job_id,
        "ordinal": job.ordinal,
        "principal": job.principal,
        "session_id": job.session_id,
        "agent_name": job.agent_name,
        "agent_version": job.agent_version,
        "lease": job.lease.as_wire(),
        "expires_at": None if job.lease.expires_at is None else job.lease.expires_at.isoformat(),
        "lease_constraints": job.lease_constraints,
        "budget": None
        if job.budget is None
        else {
            "initial": {cur: str(v) for cur, v in job.budget.initial.items()},
            "remaining": {cur: str(v) for cur, v in job.budget.remaining.items()},
        },
        "trace_id": job.trace_id,
        "parent_job_id": job.parent_job_id,
        "delegate_id": job.delegate_id,
        "created_at": job.created_at.isoformat(),
        "accepted_at": job.accepted_at,
        "idempotency_key": job.idempotency_key,
        "status": str(job.status),
        "terminal": terminal,
        "terminal_frame_id": job.terminal_frame_id,
    }


def job_from_row(
    row: dict[str, Any],
    *,
    history_limit: int,
    history_spills: bool = False,
    history_cache_limit: int | None = None,
) -> JobRecord:
    lease = Lease(grants={ns: tuple(p) for ns, p in row["lease"].items()})
    if row.get("expires_at"):
        lease = attrs.evolve(lease, expires_at=parse_timestamp(row["expires_at"]))
    budget = None
    if row.get("budget") is not None:
        budget = Budget(
            initial={cur: Decimal(v) for cur, v in row["budget"]["initial"].items()},
            remaining={cur: Decimal(v) for cur, v in row["budget"]["remaining"].items()},
        )
    terminal = None
    if row.get("terminal") is not None:
        data = dict(row["terminal"])
        data["status"] = JobStatus(data["status"])
        terminal = Terminal(**data)
    return JobRecord(
        job_id=row["job_id"],
        ordinal=row["ordinal"],
        principal=row["principal"],
        session_id=row["session_id"],
        agent_name=row["agent_name"],
        agent_version=row["agent_version"],
        lease=lease,
        lease_constraints=row["lease_constraints"],
        budget=budget,
        trace_id=row["trace_id"],
        parent_job_id=row["parent_job_id"],
        delegate_id=row["delegate_id"],
        created_at=parse_timestamp(row["created_at"]),
        accepted_at=row["accepted_at"],
        idempotency_key=row["idempotency_key"],
        status=JobStatus(row["status"]),
        terminal=terminal,
        history_limit=history_limit,
        history_spills=history_spills,
        history_cache_limit=history_cache_limit,
        terminal_frame_id=row.get("terminal_frame_id"),
    )


def session_to_row(session: Session) -> SessionRow:
    return SessionRow(
        session_id=session.session_id,
        principal=session.principal,
        token_hash=session.token_hash,
        features=sorted(session.features),
        dialect=session.dialect.value,
        client_name=session.client_name,
        submitted=sorted(session.submitted),
        subscribed=sorted(session.subscribed),
        acked_through=session.buffer.acked_through,
        evicted_through=session.buffer.evicted_through,
        confirmed_token_hash=session.confirmed_token_hash,
    )


def restored_job(row: dict[str, Any], recovered: Recovered, **history: Any) -> JobRecord:
    """A persisted job, its history left in the store: RAM knows where it starts and
    ends (``history`` as ``Runtime._history_settings``)."""
    job = job_from_row(row, **history)
    low, high = recovered.history_bounds.get(job.job_id, (1, 0))
    job.last_event_index = high
    job.history_start = max(low, high - job.history_limit + 1)
    return job


def restored_session(
    saved: SessionRow, recovered: Recovered, *, max_buffered_events: int, resume_window_sec: float
) -> Session:
    """A persisted session, detached: RAM holds none of its events (the store has them)."""
    low, high = recovered.event_bounds.get(saved.session_id, (None, 0))
    return Session(
        session_id=saved.session_id,
        principal=saved.principal,
        features=frozenset(saved.features),
        dialect=Dialect(saved.dialect),
        buffer=EventBuffer.restore(
            [],
            max_events=max_buffered_events,
            acked_through=saved.acked_through,
            evicted_through=saved.evicted_through,
            cache_limit=0,
            last_seq=high,
            first_stored_seq=low,
        ),
        window=ResumeWindow(window_sec=resume_window_sec),
        token_hash=saved.token_hash,
        confirmed_token_hash=saved.confirmed_token_hash,
        client_name=saved.client_name,
        submitted=set(saved.submitted),
        subscribed=set(saved.subscribed),
    )
