"""Job lifecycle table, job history, idempotency and listing (§7), without I/O.

Theory of operation
-------------------
A job moves ``pending → running → {success, error, cancelled, timed_out}``
(§7.3); ``TRANSITIONS`` is the whole table and ``JobRecord.transition`` refuses
anything else, so a job can end exactly once. Its terminal is kept as a
``Terminal`` that renders itself per dialect, because the reference client and
the spec disagree on how cancel and timeout look on the wire (WIRE.md §14.9-10).

Each job keeps a bounded *history* of its own events, numbered 1, 2, ... in the
job's own space. Subscribe-with-history replays from it (§7.6); the terminal is
always kept. Sessions never share these numbers: each session stamps its own
``event_seq`` when the runtime routes an event to it.

``JobTable`` is the registry: lookup by id, idempotency records keyed by
(principal, key) with a canonical fingerprint (§7.2), and keyset-paginated
listing per principal (§6.6).
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import json
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from ..wire.errors import DuplicateKey, ErrorCode, InvalidRequest
from ..wire.limits import MAX_CURSOR_LEN
from ..wire.messages import MessageType
from .session import Dialect

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import datetime

    from .leases import Budget, Lease

__all__ = [
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "HistoryEntry",
    "JobRecord",
    "JobStatus",
    "JobTable",
    "Terminal",
    "fingerprint",
]


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCESS, JobStatus.ERROR, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)

#: §7.3 lifecycle: every allowed transition.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING}) | TERMINAL_STATUSES,
    JobStatus.RUNNING: TERMINAL_STATUSES,
    JobStatus.SUCCESS: frozenset(),
    JobStatus.ERROR: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
}


@attrs.frozen(kw_only=True)
class Terminal:
    """How a job ended, renderable in either dialect."""

    status: JobStatus
    completed_at: str
    result: Any = None
    result_id: str | None = None
    result_size: int | None = None
    summary: str | None = None
    code: str | None = None
    message: str | None = None
    retryable: bool = False
    details: dict[str, Any] | None = None

    @property
    def error_code(self) -> str:
        """The §12 code of a terminal that is not a success (§7.3, §7.4)."""
        return str(
            self.code
            or {
                JobStatus.CANCELLED: ErrorCode.CANCELLED,
                JobStatus.TIMED_OUT: ErrorCode.TIMEOUT,
            }.get(self.status, ErrorCode.INTERNAL_ERROR)
        )

    def render(self, dialect: Dialect) -> tuple[MessageType, dict[str, Any]]:
        """The terminal frame's type and payload for a session of ``dialect``."""
        status = self.status
        if status is JobStatus.SUCCESS:
            payload: dict[str, Any] = {"final_status": "success", "completed_at": self.completed_at}
            if self.result_id is not None:
                payload["result_id"] = self.result_id
                if self.result_size is not None:
                    payload["result_size"] = self.result_size
            elif self.result is not None:
                payload["result"] = self.result
            if self.summary is not None:
                payload["summary"] = self.summary
            return MessageType.JOB_RESULT, payload
        if status is JobStatus.ERROR or dialect is Dialect.SPEC:
            # §7.4: cancel is job.error CANCELLED, final_status cancelled; §7.3/§12:
            # timeout is job.error TIMEOUT, final_status timed_out.
            payload = {
                "final_status": str(status),
                "code": self.error_code,
                "message": self.message or str(status),
                "retryable": self.retryable,
                "completed_at": self.completed_at,
            }
            if self.details is not None:
                payload["details"] = self.details
            return MessageType.JOB_ERROR, payload
        # Reference dialect (WIRE.md §12, §17.5): the 1.1.3 client cannot parse a
        # job.error whose final_status is not "error", so cancel and timeout end in
        # job.result. The code and message ride along as extra keys it ignores.
        payload = {
            "final_status": str(status),
            "completed_at": self.completed_at,
            "code": self.error_code,
        }
        if self.message is not None:
            payload["message"] = self.message
        return MessageType.JOB_RESULT, payload


class HistoryEntry(NamedTuple):
    """One job event as it left the agent: numbered in the job's own space.

    A named tuple rather than an attrs class: one is built per event, and a tuple is
    the cheapest immutable record Python has.
    """

    number: int
    frame_id: str
    kind: str
    payload_json: str


def fingerprint(submit_payload: Any) -> str:
    """§7.2 "identical parameters": canonical JSON of the whole submit payload."""
    canonical = json.dumps(submit_payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@attrs.define(eq=False, kw_only=True)
class JobRecord:
    """Everything the runtime knows about one job (but never its cancel scope)."""

    job_id: str
    ordinal: int
    principal: str
    session_id: str
    agent_name: str
    agent_version: str | None
    lease: Lease
    lease_constraints: dict[str, Any] | None
    budget: Budget | None
    trace_id: str | None
    parent_job_id: str | None
    delegate_id: str | None
    created_at: datetime
    accepted_at: str
    idempotency_key: str | None = None
    status: JobStatus = JobStatus.PENDING
    terminal: Terminal | None = None
    history_limit: int = 10_000
    #: The job's newest events in RAM. Without ``history_spills`` it is the only copy;
    #: with it the store has every held event and RAM keeps at most
    #: ``history_cache_limit`` (none once the job has ended: see ``drop_cached``).
    history: deque[HistoryEntry] = attrs.field(init=False, factory=deque)
    history_spills: bool = False
    history_cache_limit: int | None = None
    #: The lowest event number still held (in RAM or the store); older ones are gone.
    history_start: int = 1
    last_event_index: int = 0
    #: Sessions that receive this job's events (the submitter and subscribers).
    watchers: set[str] = attrs.field(factory=set)
    #: The terminal frame's envelope id, shared by every session it is routed to.
    terminal_frame_id: str | None = None
    #: Provisioned credentials (§9.8, wire shape). Secret: memory and ledger only.
    credentials: list[dict[str, Any]] = attrs.field(factory=list, repr=False)

    @property
    def agent(self) -> str:
        """The resolved ``name@version`` (a bare name for unversioned agents)."""
        if self.agent_version is None:
            return self.agent_name
        return f"{self.agent_name}@{self.agent_version}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def transition(self, new: JobStatus) -> None:
        """Move along §7.3's table.

        Raises:
            ValueError: the transition is not in ``TRANSITIONS``.
        """
        if new not in TRANSITIONS[self.status]:
            raise ValueError(f"job {self.job_id}: {self.status} → {new} is not allowed")
        self.status = new

    def finish(self, terminal: Terminal) -> None:
        self.transition(terminal.status)
        self.terminal = terminal

    def record_event(self, frame_id: str, kind: str, payload_json: str) -> HistoryEntry:
        """Number one event and keep it (the oldest held goes past ``history_limit``)."""
        number = self.last_event_index = self.last_event_index + 1
        entry = HistoryEntry(number, frame_id, kind, payload_json)
        history = self.history
        history.append(entry)
        if number - self.history_start >= self.history_limit:
            self.history_start = number - self.history_limit + 1
            while history and history[0].number < self.history_start:
                history.popleft()
        limit = self.history_cache_limit
        if limit is not None and len(history) > limit:
            self.drop_cached(len(history) - limit)
        return entry

    def drop_cached(self, count: int) -> int:
        """Let RAM forget the ``count`` oldest cached events; returns how many went.

        A spilling history still holds them (the store has them); otherwise they are
        gone, and ``history_start`` says so.
        """
        history = self.history
        count = min(count, len(history))
        for _ in range(count):
            history.popleft()
        if count and not self.history_spills:
            self.history_start = history[0].number if history else self.last_event_index + 1
        return count

    def first_cached_index(self) -> int:
        """The lowest event number RAM holds (``last_event_index + 1`` when none)."""
        return self.history[0].number if self.history else self.last_event_index + 1

    def history_after(self, index: int) -> tuple[list[HistoryEntry], int] | None:
        """Held events numbered above ``index`` and how many older ones were dropped,
        or None when some of them are only in the store (read those first)."""
        start = max(index + 1, self.history_start)
        if start < self.first_cached_index():
            return None
        entries = [entry for entry in self.history if entry.number >= start]
        return entries, start - index - 1

    def budget_wire(self, dialect: Dialect) -> dict[str, Any] | None:
        if self.budget is None:
            return None
        return self.budget.as_numbers() if dialect is Dialect.SPEC else self.budget.as_strings()


@attrs.define
class _IdempotencyRecord:
    fingerprint: str
    job_id: str


class JobTable:
    """The runtime's job registry (sans-IO)."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobRecord] = {}
        #: Every job in ordinal order (for listings under a widening policy).
        self._ordered: list[JobRecord] = []
        self._by_principal: dict[str, list[JobRecord]] = {}
        self._idempotency: dict[tuple[str, str], _IdempotencyRecord] = {}
        self._next_ordinal = 1

    def next_ordinal(self) -> int:
        ordinal = self._next_ordinal
        self._next_ordinal += 1
        return ordinal

    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self._jobs.values())

    def find_idempotent(self, principal: str, key: str, print_: str) -> JobRecord | None:
        """The job an earlier identical submit created, if any.

        Raises:
            DuplicateKey: the key was used with different parameters (§7.2).
        """
        record = self._idempotency.get((principal, key))
        if record is None:
            return None
        if record.fingerprint != print_:
            raise DuplicateKey(
                f"idempotency_key {key!r} was already used with different parameters"
            )
        return self._jobs[record.job_id]

    def remove(self, job: JobRecord) -> None:
        """Forget a job and its idempotency record (retention, or a failed write)."""
        self._jobs.pop(job.job_id, None)
        for jobs in (self._by_principal.get(job.principal, []), self._ordered):
            if job in jobs:
                jobs.remove(job)
        if job.idempotency_key is not None:
            record = self._idempotency.get((job.principal, job.idempotency_key))
            if record is not None and record.job_id == job.job_id:
                del self._idempotency[(job.principal, job.idempotency_key)]

    def restore_idempotency(self, principal: str, key: str, print_: str, job_id: str) -> None:
        self._idempotency[(principal, key)] = _IdempotencyRecord(print_, job_id)

    def restore(self, job: JobRecord) -> None:
        """Re-register a persisted job, keeping its ordinal (and ordering)."""
        self._jobs[job.job_id] = job
        self._by_principal.setdefault(job.principal, []).append(job)
        self._ordered.append(job)
        self._next_ordinal = max(self._next_ordinal, job.ordinal + 1)

    def add(self, job: JobRecord, *, fingerprint_: str | None = None) -> None:
        """Register a job (and its idempotency record) atomically."""
        self._jobs[job.job_id] = job
        self._by_principal.setdefault(job.principal, []).append(job)
        self._ordered.append(job)
        if job.idempotency_key is not None and fingerprint_ is not None:
            self._idempotency[(job.principal, job.idempotency_key)] = _IdempotencyRecord(
                fingerprint_, job.job_id
            )

    def list_for(
        self,
        principal: str,
        *,
        statuses: frozenset[str] | None,
        agent: str | None,
        created_after: datetime | None,
        limit: int,
        cursor: str | None,
        visible: Callable[[JobRecord], bool] | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """§6.6 listing: the principal's jobs in submission order, keyset-paginated.

        The cursor is the ordinal of the last job of the previous page, so pages stay
        stable while new jobs arrive. ``visible`` widens the scope to every job it
        accepts (a deployment policy, §6.6 "MAY include jobs from other principals");
        without it only ``principal``'s own jobs are listed.

        Raises:
            InvalidRequest: an unparseable cursor or unknown status.
        """
        if statuses is not None:
            unknown = statuses - {status.value for status in JobStatus}
            if unknown:
                raise InvalidRequest(f"unknown job status filter {sorted(unknown)}")
        after = 0
        if cursor is not None:
            # ASCII digits, at most 19 (str.isdigit admits "²", and int() refuses
            # thousands of digits with a ValueError, not an InvalidRequest).
            if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= MAX_CURSOR_LEN):
                raise InvalidRequest(f"invalid cursor {cursor[:40]!r}")
            after = int(cursor)
        jobs = self._by_principal.get(principal, []) if visible is None else self._ordered
        start = bisect.bisect_right(jobs, after, key=lambda job: job.ordinal)
        page: list[JobRecord] = []
        for job in jobs[start:]:
            if visible is not None and not visible(job):
                continue
            if statuses is not None and job.status not in statuses:
                continue
            if agent is not None and job.agent != agent and job.agent_name != agent:
                continue
            if created_after is not None and job.created_at <= created_after:
                continue
            if len(page) == limit:
                return page, str(page[-1].ordinal)
            page.append(job)
        return page, None
