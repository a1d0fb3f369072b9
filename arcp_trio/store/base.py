"""Persistence behind one interface: what the runtime writes, and what it reads back.

The runtime's own structures stay the source of truth while it runs; a ``Store``
is told about every change (synchronously, so handlers stay atomic) and makes
them durable in the background. ``flush()`` waits until everything told so far is
durable — the runtime awaits it before acknowledging what must not be lost
(``job.accepted``). ``load()`` returns what a restart needs in RAM: jobs,
idempotency records, sessions, credentials, and the *bounds* of every session's
stream and job's history. The events themselves stay in the store: a durable store
is also where the runtime reads session streams and job histories back, a page at
a time (``read_events``, ``read_history``), so RAM holds only a bounded cache of
them (docs/architecture.md).

Two implementations: ``MemoryStore`` (nothing survives the process; ``flush`` is
immediate) and ``SQLiteStore`` (``store/sqlite.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import attrs
import trio

from ..wire.errors import InternalError

__all__ = [
    "EventLog",
    "MemoryStore",
    "Recovered",
    "SessionRow",
    "Store",
    "StoreError",
    "StoredEvent",
    "StoredHistoryEntry",
]


class StoreError(InternalError):
    """A write could not be made durable (disk full, I/O error, corrupt file).

    ``INTERNAL_ERROR`` and retryable: the request that needed it was not
    acknowledged.
    """


class StoredEvent(NamedTuple):
    """One stamped frame of a session's buffer (a tuple: it is the SQL row as is)."""

    session_id: str
    seq: int
    job_id: str
    frame: str


class StoredHistoryEntry(NamedTuple):
    """One event of a job's history (a tuple: it is the SQL row as is)."""

    job_id: str
    number: int
    frame_id: str
    kind: str
    payload_json: str


@attrs.frozen(kw_only=True)
class SessionRow:
    session_id: str
    principal: str
    token_hash: str
    features: list[str]
    dialect: str
    client_name: str
    submitted: list[str]
    subscribed: list[str]
    acked_through: int
    evicted_through: int
    confirmed_token_hash: str = ""


@attrs.frozen(kw_only=True)
class Recovered:
    """Everything a restarted runtime needs (empty for a fresh store)."""

    jobs: list[dict[str, Any]] = attrs.field(factory=list)
    idempotency: list[tuple[str, str, str, str]] = attrs.field(factory=list)
    sessions: list[SessionRow] = attrs.field(factory=list)
    #: ``session_id -> (lowest, highest)`` seq stored of each session's stream.
    event_bounds: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    #: ``job_id -> (lowest, highest)`` event number stored of each job's history.
    history_bounds: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    #: Credentials not yet revoked: (credential_id, job_id, state, data).
    credentials: list[tuple[str, str, str, dict[str, Any]]] = attrs.field(factory=list)


class EventLog(Protocol):
    """Session streams and job histories, as a durable store keeps them (its contract:
    ``tests/store/contract.py``, which every durable implementation runs).

    Appends and trims are queued, not awaited: they are on the per-event hot path and
    must stay cheap; order is kept. Reads are ``async`` and see everything queued
    before the call. ``durable`` False: nothing is kept, and reads return nothing (the
    runtime's RAM is then the only copy).
    """

    durable: bool

    def append_event(self, session_id: str, seq: int, job_id: str, frame: str) -> None:
        """A ``StoredEvent``'s fields (passed apart: one call per event per session)."""
        ...

    def trim_events(self, session_id: str, through_seq: int) -> None:
        """Forget the session's events with ``seq <= through_seq`` (acknowledged, or
        evicted at the cap)."""
        ...

    async def read_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` stored events of the session with ``seq > after``, in order."""
        ...

    def append_history(
        self, job_id: str, number: int, frame_id: str, kind: str, payload_json: str
    ) -> None:
        """A ``StoredHistoryEntry``'s fields (passed apart: one call per event)."""
        ...

    def trim_history(self, job_id: str, through_index: int) -> None:
        """Forget the job's history entries numbered ``<= through_index``."""
        ...

    async def read_history(self, job_id: str, after: int, limit: int) -> list[StoredHistoryEntry]:
        """Up to ``limit`` stored history entries of the job numbered above ``after``,
        in order."""
        ...

    @property
    def congested(self) -> bool:
        """The writer is far behind: queued writes exceed the store's bound.

        Write-behind holds what is queued in RAM, so producers (emitting agents) wait
        on ``wait_writable`` rather than grow the queue without end.
        """
        ...

    async def wait_writable(self) -> None:
        """Wait until the store is no longer ``congested``; always a scheduling point."""
        ...


class Store(EventLog, Protocol):
    """What the runtime needs from persistence: the event log, and the records a
    restart reads back (``load``). Writes are queued, not awaited."""

    async def load(self) -> Recovered: ...

    def save_job(self, job: dict[str, Any]) -> None: ...

    def delete_job(self, job_id: str) -> None:
        """Forget the job and its history."""
        ...

    def save_idempotency(self, principal: str, key: str, fingerprint: str, job_id: str) -> None: ...

    def delete_idempotency(self, principal: str, key: str) -> None: ...

    def save_session(self, row: SessionRow) -> None: ...

    def delete_session(self, session_id: str) -> None:
        """Forget the session and its events."""
        ...

    def save_credential(
        self, credential_id: str, job_id: str, state: str, data: dict[str, Any]
    ) -> None:
        """The revocation ledger: ``state`` is live, revoking, revoked or failed."""
        ...

    def position(self) -> int:
        """How many writes have been queued so far (pass to ``flush(since=...)``)."""
        ...

    async def flush(self, since: int = 0) -> None:
        """Wait until the writes queued after ``since`` (and before the call) are durable.

        Raises:
            StoreError: some of them could not be made durable.
        """
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background writer; runs until cancelled (owned by the runtime)."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """No persistence: a restart forgets everything (``arcp-trio serve --memory``)."""

    durable = False

    async def load(self) -> Recovered:
        return Recovered()

    def save_job(self, job: dict[str, Any]) -> None:
        pass

    def delete_job(self, job_id: str) -> None:
        pass

    def save_idempotency(self, principal: str, key: str, fingerprint: str, job_id: str) -> None:
        pass

    def delete_idempotency(self, principal: str, key: str) -> None:
        pass

    def save_session(self, row: SessionRow) -> None:
        pass

    def delete_session(self, session_id: str) -> None:
        pass

    def append_event(self, session_id: str, seq: int, job_id: str, frame: str) -> None:
        pass

    def trim_events(self, session_id: str, through_seq: int) -> None:
        pass

    def append_history(
        self, job_id: str, number: int, frame_id: str, kind: str, payload_json: str
    ) -> None:
        pass

    def trim_history(self, job_id: str, through_index: int) -> None:
        pass

    def save_credential(
        self, credential_id: str, job_id: str, state: str, data: dict[str, Any]
    ) -> None:
        pass

    async def read_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]:
        await trio.lowlevel.checkpoint()
        return []

    async def read_history(self, job_id: str, after: int, limit: int) -> list[StoredHistoryEntry]:
        await trio.lowlevel.checkpoint()
        return []

    def position(self) -> int:
        return 0

    congested = False

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    async def flush(self, since: int = 0) -> None:
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def aclose(self) -> None:
        pass
