"""The payloads of the runtime's answers, built in one place per message.

Handlers decide *what* to answer; these functions decide how it looks on the wire,
for the session's dialect (WIRE.md "Decisions"), and which parts a given observer may
see (§14: credentials follow the submitting principal only). Pure functions of their
arguments: no I/O, no clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocol.leases import Budget
from ..protocol.session import Dialect
from ..wire.codec import unstructure_payload
from ..wire.messages import JobSubscribed, JobSummary

if TYPE_CHECKING:
    from ..protocol.eventlog import OverflowNotice
    from ..protocol.job import JobRecord

__all__ = [
    "accepted_payload",
    "job_summary",
    "jobs_page_payload",
    "overflow_body",
    "rotation_body",
    "subscribed_payload",
]


def accepted_payload(
    job: JobRecord, *, request_id: str, dialect: Dialect, observer: str
) -> dict[str, Any]:
    """``job.accepted`` (§7.1), for a session of ``dialect`` whose principal is
    ``observer``."""
    payload: dict[str, Any] = {
        "job_id": job.job_id,
        "agent": job.agent,
        "accepted_at": job.accepted_at,
        "lease": job.lease.as_wire(),
        "request_id": request_id,
    }
    if job.lease_constraints is not None:
        payload["lease_constraints"] = job.lease_constraints
    if job.budget is not None:
        # §7.1 "initial budget counters"; strings for the reference (WIRE.md §17.4).
        initial = Budget(initial=job.budget.initial, remaining=dict(job.budget.initial))
        payload["budget"] = (
            initial.as_numbers() if dialect is Dialect.SPEC else initial.as_strings()
        )
    for key in ("trace_id", "parent_job_id", "delegate_id"):
        value = getattr(job, key)
        if value is not None:
            payload[key] = value
    if job.credentials and observer == job.principal:
        # §14: credentials follow the submitting principal only.
        payload["credentials"] = list(job.credentials)
    return payload


def job_summary(job: JobRecord, dialect: Dialect) -> dict[str, Any]:
    """One entry of ``session.jobs`` (§6.6)."""
    return unstructure_payload(
        JobSummary(
            job_id=job.job_id,
            agent=job.agent,
            status=str(job.status),
            submitted_at=job.accepted_at,
            created_at=job.accepted_at,
            lease=job.lease.as_wire(),
            lease_constraints=job.lease_constraints,
            parent_job_id=job.parent_job_id,
            trace_id=job.trace_id,
            last_event_seq=job.last_event_index,
            budget=job.budget_wire(dialect),
        )
    )


def jobs_page_payload(
    jobs: list[JobRecord], *, request_id: str, dialect: Dialect, next_cursor: str | None
) -> dict[str, Any]:
    """``session.jobs`` (§6.6): one page of summaries, and where the next begins."""
    return {
        "request_id": request_id,
        "jobs": [job_summary(job, dialect) for job in jobs],
        **({"next_cursor": next_cursor} if next_cursor is not None else {}),
    }


def subscribed_payload(
    job: JobRecord,
    *,
    request_id: str,
    dialect: Dialect,
    observer: str,
    replayed: int,
    missing: int,
) -> dict[str, Any]:
    """``job.subscribed`` (§7.6): ``replayed`` history events follow it, ``missing``
    older ones are no longer held (never a silent gap)."""
    payload = unstructure_payload(
        JobSubscribed(
            request_id=request_id,
            job_id=job.job_id,
            current_status=str(job.status),
            agent=job.agent,
            lease=job.lease.as_wire(),
            lease_constraints=job.lease_constraints,
            budget=job.budget_wire(dialect),
            parent_job_id=job.parent_job_id,
            trace_id=job.trace_id,
            subscribed_from=job.last_event_index,
            # The reference counts; the spec says whether (WIRE.md "Decisions").
            replayed=(replayed > 0 if dialect is Dialect.SPEC else replayed),
        )
    )
    if missing > 0:
        payload["history_missing"] = missing
    if job.credentials and observer == job.principal:
        # §7.6/§14: included solely for the original submitter.
        payload["credentials"] = list(job.credentials)
    return payload


def overflow_body(notice: OverflowNotice) -> dict[str, Any]:
    """The ``status`` event body of §6.5 back-pressure: the cap evicted events."""
    return {
        "phase": "back_pressure",
        "message": (
            f"{notice.evicted_count} unacknowledged events evicted (through event_seq "
            f"{notice.evicted_through}); acknowledge events to keep them resumable"
        ),
        "evicted_through": notice.evicted_through,
        "evicted": notice.evicted_count,
    }


def rotation_body(credential_id: str, value: str) -> dict[str, Any]:
    """The ``status`` event body that hands the submitter a rotated value (§9.8.2)."""
    return {"phase": "credential_rotated", "id": credential_id, "value": value}
