"""The runtime's shared state behind interfaces: the job registry and the session
directory (the event log is ``store.base.EventLog``; the router is routing.py's).

Each call that must be atomic is *one* call. The in-process implementations are
atomic because they never reach a checkpoint inside a call; an implementation on
a networked store (the cluster issue's Redis) makes the same call one server-side
step. The rest of the runtime never reaches for a dict behind these: it calls them.

Two implementations of each, chosen by the store:

- ``MemoryJobRegistry`` / ``MemorySessionDirectory``: RAM is the only copy.
- ``StoredJobRegistry`` / ``StoredSessionDirectory``: RAM is the index a process
  serves from, and every change goes to a durable ``Store`` (SQLite) write-behind,
  so a restart rebuilds them (``restore``). Rows carry no events: the event log
  holds those and pages them back on demand (docs/store.md).

The contract both keep is ``tests/runtime/test_state_contract.py``: a third
implementation runs the same suite.

The live part of a job (its task, its cancel scope: ``jobs._LiveJob``) is never
here; it stays in the process that runs the job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..protocol.job import JobRecord, JobTable
from ..store.base import StoreError
from .recovery import job_to_row, restored_job, restored_session, session_to_row

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import datetime
    from typing import Any

    from ..store.base import Recovered, Store
    from .session import Session

__all__ = [
    "JobRegistry",
    "MemoryJobRegistry",
    "MemorySessionDirectory",
    "SessionDirectory",
    "StoredJobRegistry",
    "StoredSessionDirectory",
    "open_state",
]


class JobRegistry(Protocol):
    """Every job the runtime knows, finished ones until retention forgets them."""

    def get(self, job_id: str) -> JobRecord | None:
        """The job, if this process holds it (every job it runs). Never waits (the
        per-event path reads it)."""
        ...

    async def lookup(self, job_id: str) -> JobRecord | None:
        """The job wherever it runs: ``get``, or a shared registry's copy of a job
        another process runs (a snapshot: its status as of the call)."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[JobRecord]: ...

    def next_ordinal(self) -> int:
        """A number above every job's so far (§6.6 listings are in this order)."""
        ...

    async def holder(self, principal: str, key: str, fingerprint: str) -> JobRecord | None:
        """The job an earlier identical submit with this idempotency key created, if
        any (§7.2); a durable registry has its record on disk by the time this returns.

        Raises:
            DuplicateKey: the key was used with another fingerprint.
            StoreError: the holder's record could not be stored (it is gone).
        """
        ...

    async def admit(self, job: JobRecord, *, fingerprint: str | None) -> JobRecord:
        """Register ``job`` and claim its idempotency key, as one atomic step (§7.2).

        Returns ``job`` when it was admitted, or the job an earlier identical submit
        created (the key's holder), which a durable registry has on disk by the time
        this returns. Two racing admits with one key: exactly one is admitted.

        Raises:
            DuplicateKey: the key is held by a submit with another fingerprint.
            StoreError: the holder's record could not be stored.
        """
        ...

    def withdraw(self, job: JobRecord) -> None:
        """Undo an ``admit`` whose accept failed (nothing was acknowledged)."""
        ...

    def save(self, job: JobRecord) -> None:
        """Record a change to the job (a transition, a terminal, a credential).
        Write-behind: never waits; a durable registry's ``Store.flush`` is the wait."""
        ...

    def forget(self, job: JobRecord) -> None:
        """Retention: drop the job and its idempotency key, here and in the store."""
        ...

    async def list_for(
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
        """§6.6 listing: one keyset-paginated page (see ``JobTable.list_for``), of
        every process's jobs for a shared registry."""
        ...

    def restore(self, recovered: Recovered, **history: Any) -> None:
        """Register the jobs a restart loaded (``history`` as ``restored_job``)."""
        ...


class MemoryJobRegistry:
    """``JobRegistry`` in RAM: ``JobTable`` plus the atomic ``admit``."""

    def __init__(self) -> None:
        self._table = JobTable()

    def get(self, job_id: str) -> JobRecord | None:
        return self._table.get(job_id)

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self._table)

    def next_ordinal(self) -> int:
        return self._table.next_ordinal()

    async def lookup(self, job_id: str) -> JobRecord | None:
        return self._table.get(job_id)

    def _claim(self, job: JobRecord, fingerprint: str | None) -> JobRecord:
        # No checkpoint between the lookup and the add: atomic across sessions.
        key = job.idempotency_key
        if key is not None and fingerprint is not None:
            existing = self._table.find_idempotent(job.principal, key, fingerprint)
            if existing is not None:
                return existing
        self._table.add(job, fingerprint_=fingerprint)
        return job

    async def holder(self, principal: str, key: str, fingerprint: str) -> JobRecord | None:
        return self._table.find_idempotent(principal, key, fingerprint)

    async def admit(self, job: JobRecord, *, fingerprint: str | None) -> JobRecord:
        return self._claim(job, fingerprint)

    def withdraw(self, job: JobRecord) -> None:
        self._table.remove(job)

    def save(self, job: JobRecord) -> None:
        """RAM is the only copy: the record is already up to date."""

    def forget(self, job: JobRecord) -> None:
        self._table.remove(job)

    async def list_for(
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
        return self._table.list_for(
            principal,
            statuses=statuses,
            agent=agent,
            created_after=created_after,
            limit=limit,
            cursor=cursor,
            visible=visible,
        )

    def restore(self, recovered: Recovered, **history: Any) -> None:
        for row in recovered.jobs:
            self._table.restore(restored_job(row, recovered, **history))
        for principal, key, print_, job_id in recovered.idempotency:
            if self._table.get(job_id) is not None:
                self._table.restore_idempotency(principal, key, print_, job_id)


class StoredJobRegistry(MemoryJobRegistry):
    """``JobRegistry`` served from RAM and kept in a durable ``Store``."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store

    async def holder(self, principal: str, key: str, fingerprint: str) -> JobRecord | None:
        found = self._table.find_idempotent(principal, key, fingerprint)
        if found is not None:
            await self._durable(found)
        return found

    async def admit(self, job: JobRecord, *, fingerprint: str | None) -> JobRecord:
        holder = self._claim(job, fingerprint)
        if holder is not job:
            await self._durable(holder)
            return holder
        self._store.save_job(job_to_row(job))
        key = job.idempotency_key
        if key is not None and fingerprint is not None:
            self._store.save_idempotency(job.principal, key, fingerprint, job.job_id)
        return job

    async def _durable(self, holder: JobRecord) -> None:
        """The holder's record may still be on its way to the disk: wait for it. A
        submit whose write failed withdrew its job, so a holder that is gone meanwhile
        was never acknowledged."""
        await self._store.flush(since=self._store.position())
        if self.get(holder.job_id) is not holder:
            raise StoreError("the original submit could not be stored; retry")

    def withdraw(self, job: JobRecord) -> None:
        super().withdraw(job)
        self._forget_rows(job)

    def save(self, job: JobRecord) -> None:
        self._store.save_job(job_to_row(job))

    def forget(self, job: JobRecord) -> None:
        super().forget(job)
        self._forget_rows(job)

    def _forget_rows(self, job: JobRecord) -> None:
        self._store.delete_job(job.job_id)
        if job.idempotency_key is not None:
            self._store.delete_idempotency(job.principal, job.idempotency_key)


class SessionDirectory(Protocol):
    """Every session within its resume window, by id and by resume token (§6.3)."""

    def get(self, session_id: str) -> Session | None:
        """The session, or None. Never waits (routing reads it per event)."""
        ...

    async def find(self, session_id: str | None, token_hash: str) -> Session | None:
        """The session a resume names: by id when it names one, else the one whose
        valid tokens include ``token_hash``. One lookup, never a scan (a hostile
        client must not make the runtime hash through every session per frame)."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Session]: ...

    async def add(self, session: Session) -> None:
        """A new session (indexed by id and by its valid tokens); a shared directory
        has it on record, for every process, by the time this returns."""
        ...

    def tokens_changed(self, session: Session) -> None:
        """Re-index after its tokens rotated, were confirmed or were retired."""
        ...

    def save(self, session: Session) -> None:
        """Record a change (tokens, jobs watched, acks). Write-behind: never waits."""
        ...

    def remove(self, session: Session) -> None:
        """Its resume window ended: drop it, here and in the store."""
        ...

    def restore(
        self, recovered: Recovered, *, max_buffered_events: int, resume_window_sec: float
    ) -> list[Session]:
        """Register the sessions a restart loaded, detached; returns them."""
        ...


class MemorySessionDirectory:
    """``SessionDirectory`` in RAM.

    A resume that names no session (``session.hello`` with only a resume token) is
    one dict lookup: every valid token hash maps to its session. Each call is one
    step, atomic between checkpoints.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_token: dict[str, Session] = {}
        self._indexed: dict[str, set[str]] = {}

    async def add(self, session: Session) -> None:
        self.index(session)

    def index(self, session: Session) -> None:
        """``add``, in RAM: by id and by its valid tokens."""
        self._by_id[session.session_id] = session
        self.tokens_changed(session)

    def get(self, session_id: str) -> Session | None:
        return self._by_id.get(session_id)

    async def find(self, session_id: str | None, token_hash: str) -> Session | None:
        if session_id is not None:
            return self._by_id.get(session_id)
        return self.find_by_token(token_hash)

    def find_by_token(self, token_hash: str) -> Session | None:
        """The session that ``token_hash`` resumes, if any."""
        return self._by_token.get(token_hash)

    def tokens_changed(self, session: Session) -> None:
        """Index exactly the session's valid token hashes (at most a few)."""
        if self._by_id.get(session.session_id) is not session:
            return
        valid = session.valid_token_hashes()
        old = self._indexed.get(session.session_id, set())
        for gone in old - valid:
            if self._by_token.get(gone) is session:
                del self._by_token[gone]
        for token_hash in valid - old:
            self._by_token[token_hash] = session
        self._indexed[session.session_id] = valid

    def save(self, session: Session) -> None:
        """RAM is the only copy: the record is already up to date."""

    def remove(self, session: Session) -> None:
        if self._by_id.get(session.session_id) is not session:
            return
        del self._by_id[session.session_id]
        for token_hash in self._indexed.pop(session.session_id, set()):
            if self._by_token.get(token_hash) is session:
                del self._by_token[token_hash]

    def restore(
        self, recovered: Recovered, *, max_buffered_events: int, resume_window_sec: float
    ) -> list[Session]:
        sessions = [
            restored_session(
                saved,
                recovered,
                max_buffered_events=max_buffered_events,
                resume_window_sec=resume_window_sec,
            )
            for saved in recovered.sessions
        ]
        for session in sessions:
            self.index(session)
        return sessions

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Session]:
        return iter(self._by_id.values())


class StoredSessionDirectory(MemorySessionDirectory):
    """``SessionDirectory`` served from RAM and kept in a durable ``Store``."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store

    def save(self, session: Session) -> None:
        if self.get(session.session_id) is session:
            self._store.save_session(session_to_row(session))

    def remove(self, session: Session) -> None:
        if self.get(session.session_id) is not session:
            return
        super().remove(session)
        self._store.delete_session(session.session_id)


def open_state(store: Store) -> tuple[JobRegistry, SessionDirectory]:
    """The registry and directory a store calls for: stored ones for a durable store."""
    if store.durable:
        return StoredJobRegistry(store), StoredSessionDirectory(store)
    return MemoryJobRegistry(), MemorySessionDirectory()
