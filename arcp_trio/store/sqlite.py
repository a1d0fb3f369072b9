"""SQLite persistence: WAL mode, one writer thread, group commit.

Theory of operation
-------------------
The runtime calls ``save_*``/``append_*`` synchronously; each call appends one
``(sql, params)`` operation to an in-memory queue and wakes the writer. The hot
path's appends (session events, job history) go to two row lists instead, closed
into one *segment* of the queue by the next other operation, so the writer hands
each list to one ``executemany`` without touching its rows in Python, and order
across kinds is kept. The writer
task (``run``, owned by the runtime's nursery) takes *everything* queued, applies
it in one transaction in a worker thread (``trio.to_thread.run_sync``, so the
event loop never blocks on the disk) and commits — one fsync for a whole burst of
events, not one per event. ``flush()`` waits until the operations queued before
the call are committed, or raises ``StoreError`` if the batch holding them failed
(disk full, I/O error): the runtime then refuses to acknowledge what was not
persisted.

The file is opened in WAL mode with ``synchronous=NORMAL``: a committed
transaction survives the process being killed (SIGKILL), which is what
arcp-trio promises; ``synchronous="FULL"`` also survives power loss, at the cost
of an fsync per commit.

Schema versions live in ``PRAGMA user_version``; migrations run forward at open.
A file that is not SQLite, fails ``quick_check``, or has a newer schema is
refused with a clear ``StoreError``.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import trio

from .base import Recovered, SessionRow, StoredEvent, StoredHistoryEntry, StoreError

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

log = logging.getLogger(__name__)

#: Forward migrations: ``MIGRATIONS[n]`` takes schema ``n`` to ``n + 1``.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (job_id TEXT PRIMARY KEY, ordinal INTEGER NOT NULL, data TEXT NOT NULL);
    CREATE TABLE idempotency (
        principal TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,
        job_id TEXT NOT NULL, PRIMARY KEY (principal, key)
    );
    CREATE TABLE sessions (session_id TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE events (
        session_id TEXT NOT NULL, seq INTEGER NOT NULL, job_id TEXT NOT NULL,
        frame TEXT NOT NULL, PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE history (
        job_id TEXT NOT NULL, idx INTEGER NOT NULL, frame_id TEXT NOT NULL,
        kind TEXT NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (job_id, idx)
    ) WITHOUT ROWID;
    """,
    # 2: the credential revocation ledger (§9.8.2, §14).
    """
    CREATE TABLE credentials (
        credential_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, state TEXT NOT NULL,
        data TEXT NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_Op = tuple[str, tuple[Any, ...]]

_SAVE_JOB = "INSERT OR REPLACE INTO jobs (job_id, ordinal, data) VALUES (?, ?, ?)"
_DELETE_JOB = "DELETE FROM jobs WHERE job_id = ?"
_DELETE_HISTORY = "DELETE FROM history WHERE job_id = ?"
_SAVE_KEY = (
    "INSERT OR REPLACE INTO idempotency (principal, key, fingerprint, job_id) VALUES (?, ?, ?, ?)"
)
_DELETE_KEY = "DELETE FROM idempotency WHERE principal = ? AND key = ?"
_SAVE_SESSION = "INSERT OR REPLACE INTO sessions (session_id, data) VALUES (?, ?)"
_DELETE_SESSION = "DELETE FROM sessions WHERE session_id = ?"
_DELETE_SESSION_EVENTS = "DELETE FROM events WHERE session_id = ?"
_APPEND_EVENT = "INSERT OR REPLACE INTO events (session_id, seq, job_id, frame) VALUES (?, ?, ?, ?)"
_TRIM_EVENTS = "DELETE FROM events WHERE session_id = ? AND seq <= ?"
_TRIM_HISTORY = "DELETE FROM history WHERE job_id = ? AND idx <= ?"
_SAVE_CREDENTIAL = (
    "INSERT OR REPLACE INTO credentials (credential_id, job_id, state, data) VALUES (?, ?, ?, ?)"
)
_APPEND_HISTORY = (
    "INSERT OR REPLACE INTO history (job_id, idx, frame_id, kind, payload) VALUES (?, ?, ?, ?, ?)"
)
#: Rows per multi-row INSERT: one ``sqlite3_step`` (one release of the GIL, which
#: the event loop's thread then has to hand back) per this many rows, not per row.
#: 200 rows of 5 columns stay well under SQLite's 32,766 bound variables.
_ROWS_PER_INSERT = 200


def _multi_insert(single: str, width: int) -> tuple[str, str]:
    """``single`` (one row of ``width`` values) and its ``_ROWS_PER_INSERT``-row form."""
    row = "(" + ", ".join("?" * width) + ")"
    head = single[: single.index("VALUES") + len("VALUES")]
    return single, f"{head} {', '.join([row] * _ROWS_PER_INSERT)}"


_EVENT_ROWS = _multi_insert(_APPEND_EVENT, 4)
_HISTORY_ROWS = _multi_insert(_APPEND_HISTORY, 5)


def _insert_rows(db: sqlite3.Connection, statements: tuple[str, str], rows: list[Any]) -> None:
    """Insert ``rows`` in full multi-row statements, the rest one row a statement."""
    single, multi = statements
    full = len(rows) - len(rows) % _ROWS_PER_INSERT
    if full:
        db.executemany(
            multi,
            (
                tuple(itertools.chain.from_iterable(rows[start : start + _ROWS_PER_INSERT]))
                for start in range(0, full, _ROWS_PER_INSERT)
            ),
        )
    if full < len(rows):
        db.executemany(single, rows[full:])


#: A queue entry holding ``(event rows, history rows)``: appends since the last
#: other operation.
_SEGMENT = "-- appends"
_READ_EVENTS = (
    "SELECT seq, job_id, frame FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_READ_HISTORY = (
    "SELECT idx, frame_id, kind, payload FROM history WHERE job_id = ? AND idx > ?"
    " ORDER BY idx LIMIT ?"
)


class SQLiteStore:
    """A ``Store`` in one SQLite file."""

    durable = True

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        max_pending_writes: int = 50_000,
        max_pending_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        if max_pending_writes < 1 or max_pending_bytes < 1:
            raise ValueError("max_pending_writes and max_pending_bytes must be >= 1")
        #: Write-behind bounds: past either, ``congested`` (producers wait).
        self.max_pending_writes = max_pending_writes
        self.max_pending_bytes = max_pending_bytes
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._db: sqlite3.Connection | None = None
        self._queue: list[_Op] = []
        #: The open segment's rows (see the module docstring).
        self._event_rows: list[tuple[str, int, str, str]] = []
        self._history_rows: list[tuple[str, int, str, str, str]] = []
        #: Bytes of frames and payloads queued, and in the batch being written.
        self._queue_bytes = 0
        self._writing_bytes = 0
        self._queued = 0
        self._committed = 0
        #: Queue positions (start, end] of batches that failed, newest last.
        self._failed: list[tuple[int, int, StoreError]] = []
        self._wakeup = trio.Event()
        self._changed = trio.Event()
        #: Reads run on a connection of their own (WAL: they never block the writer),
        #: one at a time, in a worker thread.
        self._reader: sqlite3.Connection | None = None
        self._read_limiter = trio.CapacityLimiter(1)
        self.batches = 0
        self.operations = 0

    # -- opening ----------------------------------------------------------------------------

    def _open_sync(self) -> Recovered:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise StoreError(f"{self.path} failed SQLite's quick_check: {check}")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable arcp-trio database: {exc}") from exc
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this arcp-trio "
                f"supports ({SCHEMA_VERSION}); refusing to start rather than damage it"
            )
        for number in range(version, SCHEMA_VERSION):
            db.executescript(
                f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;"
            )
            log.info("store migrated path=%s to_version=%s", self.path, number + 1)
        self._db = db
        return self._load_sync(db)

    def _load_sync(self, db: sqlite3.Connection) -> Recovered:
        jobs = [json.loads(row[0]) for row in db.execute("SELECT data FROM jobs ORDER BY ordinal")]
        keys = [
            (str(p), str(k), str(f), str(j))
            for p, k, f, j in db.execute(
                "SELECT principal, key, fingerprint, job_id FROM idempotency"
            )
        ]
        sessions = [
            SessionRow(**json.loads(row[0])) for row in db.execute("SELECT data FROM sessions")
        ]
        # Bounds only: the events and histories stay on disk, read a page at a time.
        event_bounds = {
            str(s): (int(lo), int(hi))
            for s, lo, hi in db.execute(
                "SELECT session_id, MIN(seq), MAX(seq) FROM events GROUP BY session_id"
            )
        }
        history_bounds = {
            str(j): (int(lo), int(hi))
            for j, lo, hi in db.execute(
                "SELECT job_id, MIN(idx), MAX(idx) FROM history GROUP BY job_id"
            )
        }
        credentials = [
            (str(c), str(j), str(s), json.loads(d))
            for c, j, s, d in db.execute(
                "SELECT credential_id, job_id, state, data FROM credentials"
                " WHERE state != 'revoked'"
            )
        ]
        return Recovered(
            jobs=jobs,
            idempotency=keys,
            sessions=sessions,
            event_bounds=event_bounds,
            history_bounds=history_bounds,
            credentials=credentials,
        )

    async def load(self) -> Recovered:
        """Open (creating or migrating) the file and read everything back.

        Raises:
            StoreError: not SQLite, corrupt, or a newer schema.
        """
        return await trio.to_thread.run_sync(self._open_sync)

    # -- queued writes ------------------------------------------------------------------------

    def _close_segment(self) -> None:
        if self._event_rows or self._history_rows:
            self._queue.append((_SEGMENT, (self._event_rows, self._history_rows)))
            self._event_rows, self._history_rows = [], []

    def _enqueue(self, sql: str, params: tuple[Any, ...]) -> None:
        self._close_segment()
        self._queue.append((sql, params))
        self._queued += 1
        self._wakeup.set()

    def save_job(self, job: dict[str, Any]) -> None:
        self._enqueue(_SAVE_JOB, (job["job_id"], job["ordinal"], json.dumps(job)))

    def delete_job(self, job_id: str) -> None:
        self._enqueue(_DELETE_JOB, (job_id,))
        self._enqueue(_DELETE_HISTORY, (job_id,))

    def save_idempotency(self, principal: str, key: str, fingerprint: str, job_id: str) -> None:
        self._enqueue(_SAVE_KEY, (principal, key, fingerprint, job_id))

    def delete_idempotency(self, principal: str, key: str) -> None:
        self._enqueue(_DELETE_KEY, (principal, key))

    def save_session(self, row: SessionRow) -> None:
        data = {
            "session_id": row.session_id,
            "principal": row.principal,
            "token_hash": row.token_hash,
            "features": row.features,
            "dialect": row.dialect,
            "client_name": row.client_name,
            "submitted": row.submitted,
            "subscribed": row.subscribed,
            "acked_through": row.acked_through,
            "evicted_through": row.evicted_through,
            "confirmed_token_hash": row.confirmed_token_hash,
        }
        self._enqueue(_SAVE_SESSION, (row.session_id, json.dumps(data)))

    def delete_session(self, session_id: str) -> None:
        self._enqueue(_DELETE_SESSION, (session_id,))
        self._enqueue(_DELETE_SESSION_EVENTS, (session_id,))

    # The hot path (every event, every watching session): no helper call, no record
    # object, and the writer is woken only when the queue was empty.

    def append_event(self, session_id: str, seq: int, job_id: str, frame: str) -> None:
        rows = self._event_rows
        if not rows:
            self._wakeup.set()
        rows.append((session_id, seq, job_id, frame))
        self._queued += 1
        self._queue_bytes += len(frame)

    def trim_events(self, session_id: str, through_seq: int) -> None:
        self._enqueue(_TRIM_EVENTS, (session_id, through_seq))

    def append_history(
        self, job_id: str, number: int, frame_id: str, kind: str, payload_json: str
    ) -> None:
        rows = self._history_rows
        if not rows:
            self._wakeup.set()
        rows.append((job_id, number, frame_id, kind, payload_json))
        self._queued += 1
        self._queue_bytes += len(payload_json)

    def save_credential(
        self, credential_id: str, job_id: str, state: str, data: dict[str, Any]
    ) -> None:
        self._enqueue(_SAVE_CREDENTIAL, (credential_id, job_id, state, json.dumps(data)))

    def trim_history(self, job_id: str, through_index: int) -> None:
        self._enqueue(_TRIM_HISTORY, (job_id, through_index))

    # -- the writer -----------------------------------------------------------------------------

    def _apply_sync(self, ops: list[_Op]) -> None:
        db = self._db
        if db is None:
            raise StoreError("the store is not open")
        try:
            db.execute("BEGIN")
            for sql, params in ops:
                if sql is _SEGMENT:
                    events, history = params
                    _insert_rows(db, _EVENT_ROWS, events)
                    _insert_rows(db, _HISTORY_ROWS, history)
                else:
                    db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply queued writes in batches until cancelled (then flush what is left)."""
        task_status.started()
        try:
            while True:
                await self._write_batch()
        finally:
            with trio.move_on_after(10, shield=True):
                while self._queue or self._event_rows or self._history_rows:
                    await self._write_batch()

    async def _write_batch(self) -> None:
        self._close_segment()
        if not self._queue:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            return
        ops, self._queue = self._queue, []
        self._writing_bytes, self._queue_bytes = self._queue_bytes, 0
        through = self._queued
        count = through - self._committed  # writes in this batch (a segment holds many)
        try:
            # Shielded: a batch taken off the queue is written, whatever cancels the
            # writer meanwhile (``to_thread`` checks for cancellation before it starts
            # the thread, which dropped the batch at shutdown: found by a test that
            # restarts right after a burst). Bounded by one transaction's disk time.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._apply_sync, ops)
        except Exception as exc:
            error = StoreError(f"could not write to {self.path}: {exc}")
            self._failed.append((through - count, through, error))
            del self._failed[:-100]
            log.error("store write failed path=%s writes=%s", self.path, count, exc_info=True)
        else:
            self.batches += 1
            self.operations += count
        self._committed = through
        self._writing_bytes = 0
        self._changed.set()
        self._changed = trio.Event()

    # -- paged reads ----------------------------------------------------------------------------

    def _read_sync(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._db is None:
            raise StoreError("the store is not open")
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, check_same_thread=False)
            self._reader.execute("PRAGMA query_only=ON")
        try:
            return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"could not read {self.path}: {exc}") from exc

    async def _committed_now(self) -> int:
        """Wait until every write queued so far has been applied; returns their count."""
        target = self._queued
        while self._committed < target:
            await self._changed.wait()
        return target

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        # Everything queued before the read is committed first, so a page never
        # misses what the runtime has already told the store.
        await self._committed_now()
        return await trio.to_thread.run_sync(
            self._read_sync, sql, params, limiter=self._read_limiter
        )

    async def read_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]:
        rows = await self._read(_READ_EVENTS, (session_id, after, limit))
        return [StoredEvent(session_id, int(q), str(j), str(f)) for q, j, f in rows]

    async def read_history(self, job_id: str, after: int, limit: int) -> list[StoredHistoryEntry]:
        rows = await self._read(_READ_HISTORY, (job_id, after, limit))
        return [StoredHistoryEntry(job_id, int(i), str(f), str(k), str(p)) for i, f, k, p in rows]

    @property
    def congested(self) -> bool:
        return (
            self._queued - self._committed >= self.max_pending_writes
            or self._queue_bytes + self._writing_bytes >= self.max_pending_bytes
        )

    async def wait_writable(self) -> None:
        while self.congested:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    def position(self) -> int:
        """How many writes have been queued so far (pass to ``flush(since=...)``)."""
        return self._queued

    async def flush(self, since: int = 0) -> None:
        """Wait until the writes queued after ``since`` and before this call are durable.

        Raises:
            StoreError: a batch holding some of them failed.
        """
        target = await self._committed_now()
        for start, end, error in self._failed:
            if start < target and end > since:
                raise error
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        db, self._db = self._db, None
        reader, self._reader = self._reader, None
        async with self._read_limiter:  # no read is using it
            if reader is not None:
                await trio.to_thread.run_sync(reader.close)
        if db is not None:
            await trio.to_thread.run_sync(db.close)
