"""What users hold: job handles, subscriptions, events and outcomes.

Handles and subscriptions belong to the ``Client``, not to a connection
(DESIGN.md): the client's dispatcher feeds them whichever connection attempt is
live, so an ``async for event in handle.events()`` loop runs straight through a
reconnect. Each is a single ordered stream of ``Event`` objects that ends with the
job's terminal, after which ``result()`` returns the ``JobOutcome`` or raises the
§12 error subclass.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..wire.errors import ARCPError, ErrorCode, make_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["Event", "JobHandle", "JobInfo", "JobOutcome", "JobPage", "Subscription"]


@attrs.frozen(kw_only=True)
class Event:
    """One ``job.event`` as the user sees it (§8.1).

    ``event_seq`` is the session's sequence number: strictly increasing across every
    job the session watches (§8.3).
    """

    job_id: str
    event_seq: int
    kind: str
    body: Any
    ts: str | None = None
    id: str = ""


@attrs.frozen(kw_only=True)
class JobOutcome:
    """A successful terminal (§7.3). For a streamed result (§8.4) ``result`` is the
    assembled text (all chunks ``utf8``) or bytes (any chunk ``base64``)."""

    job_id: str
    final_status: str
    result: Any = None
    result_id: str | None = None
    result_size: int | None = None
    summary: str | None = None
    completed_at: str | None = None


@attrs.frozen(kw_only=True)
class JobInfo:
    """One entry of ``list_jobs`` (§6.6)."""

    job_id: str
    agent: str
    status: str
    submitted_at: str | None = None
    created_at: str | None = None
    lease: dict[str, list[str]] = attrs.field(factory=dict)
    parent_job_id: str | None = None
    trace_id: str | None = None
    last_event_seq: int | None = None


@attrs.frozen(kw_only=True)
class JobPage:
    jobs: list[JobInfo]
    next_cursor: str | None = None


class _ResultAssembler:
    """Collects ``result_chunk`` bodies by ``result_id`` in ``chunk_seq`` order (§8.4)."""

    def __init__(self) -> None:
        self._chunks: dict[str, dict[int, bytes]] = {}
        self._binary: set[str] = set()

    def add(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        result_id = body.get("result_id")
        chunk_seq = body.get("chunk_seq")
        data = body.get("data", "")
        if not isinstance(result_id, str) or not isinstance(chunk_seq, int):
            return
        if body.get("encoding") == "base64":
            piece = base64.b64decode(data)
            if piece:
                self._binary.add(result_id)
        else:
            piece = str(data).encode()
        self._chunks.setdefault(result_id, {})[chunk_seq] = piece

    def assemble(self, result_id: str) -> str | bytes:
        chunks = self._chunks.get(result_id, {})
        raw = b"".join(chunks[index] for index in sorted(chunks))
        return raw if result_id in self._binary else raw.decode()


class _Stream:
    """An ordered event stream that ends in a terminal; shared by handles and subs."""

    def __init__(self, job_id: str, *, keep_events: bool = True) -> None:
        self.job_id = job_id
        #: False: events are counted (and result chunks assembled) but not kept, so a
        #: caller that only wants the result holds no memory per event.
        self.keep_events = keep_events
        self._events: deque[Event] = deque()
        self._changed = trio.Event()
        self._outcome: JobOutcome | None = None
        self._error: ARCPError | None = None
        self._iterating = False
        self._session_lost = False
        #: Job events seen, i.e. the job's own event number of the last one (§7.6).
        self.job_events = 0
        self._assembler = _ResultAssembler()

    @property
    def done(self) -> bool:
        return self._outcome is not None or self._error is not None

    def push(self, event: Event) -> None:
        if self.done:
            return
        if event.kind == "result_chunk":
            self._assembler.add(event.body)
        if not _is_session_notice(event):
            self.job_events += 1
        if self.keep_events:
            self._events.append(event)
            self._wake()

    def finish_with_payload(self, message_type: str, payload: dict[str, Any]) -> None:
        """Turn a terminal frame (either dialect) into the outcome or the error."""
        if self.done:
            return
        status = payload.get("final_status", "error")
        if message_type == "job.result" and status == "success":
            result = payload.get("result")
            result_id = payload.get("result_id")
            if isinstance(result_id, str):
                result = self._assembler.assemble(result_id)
            self._outcome = JobOutcome(
                job_id=self.job_id,
                final_status="success",
                result=result,
                result_id=result_id,
                result_size=payload.get("result_size"),
                summary=payload.get("summary"),
                completed_at=payload.get("completed_at"),
            )
        else:
            # Reference dialect: cancel and timeout come as job.result (WIRE.md §14).
            default_code = {
                "cancelled": ErrorCode.CANCELLED,
                "timed_out": ErrorCode.TIMEOUT,
            }.get(status, ErrorCode.INTERNAL_ERROR)
            self._error = make_error(
                str(payload.get("code") or default_code),
                str(payload.get("message") or status),
                retryable=payload.get("retryable"),
                details=payload.get("details"),
            )
        self._wake()

    def fail_session(self, error: ARCPError) -> None:
        """The session (not the job) ended first: iterating raises ``error``."""
        if self.done:
            return
        self._error = error
        self._session_lost = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def next_event(self) -> Event | None:
        """The next event, or None after the terminal (raises if the session was lost)."""
        while True:
            if self._events:
                await trio.lowlevel.checkpoint()
                return self._events.popleft()
            if self._outcome is not None:
                await trio.lowlevel.checkpoint()
                return None
            if self._error is not None:
                if self._session_lost:
                    raise self._error
                await trio.lowlevel.checkpoint()
                return None
            await self._changed.wait()

    async def wait_outcome(self) -> JobOutcome:
        while True:
            if self._outcome is not None:
                await trio.lowlevel.checkpoint()
                return self._outcome
            if self._error is not None:
                await trio.lowlevel.checkpoint()
                raise self._error
            await self._changed.wait()

    def iterate(self) -> AsyncIterator[Event]:
        if not self.keep_events:
            raise RuntimeError("this handle keeps no events (submitted with keep_events=False)")
        if self._iterating:
            raise RuntimeError("events() is already being iterated")
        self._iterating = True
        return _EventIterator(self)


def _is_session_notice(event: Event) -> bool:
    """The runtime's per-session eviction notice, which is not one of the job's events."""
    body = event.body
    return (
        event.kind == "status"
        and isinstance(body, dict)
        and body.get("phase") == "back_pressure"
        and "evicted_through" in body
    )


class _EventIterator:
    def __init__(self, stream: _Stream) -> None:
        self._stream = stream

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> Event:
        event = await self._stream.next_event()
        if event is None:
            raise StopAsyncIteration
        return event


class JobHandle:
    """A job this client submitted. Built by ``Client.submit``; never by users."""

    def __init__(
        self,
        job_id: str,
        accepted: dict[str, Any],
        cancel: Callable[[str, str], Awaitable[None]],
        *,
        keep_events: bool = True,
    ) -> None:
        self.job_id = job_id
        #: The ``job.accepted`` payload (§7.1): agent, lease, budget, ...
        self.accepted = accepted
        self._cancel = cancel
        self._stream = _Stream(job_id, keep_events=keep_events)

    @property
    def agent(self) -> str:
        return str(self.accepted.get("agent", ""))

    @property
    def done(self) -> bool:
        return self._stream.done

    def events(self) -> AsyncIterator[Event]:
        """Iterate the job's events in order until its terminal (once per handle).

        Continues across reconnects with no gap and no duplicate. Ends normally when
        the job ends (whatever its status; ``result()`` says how); raises
        ``ResumeWindowExpired`` or ``ClientClosed`` if the session is lost first.

        Events are kept from the moment the job is accepted until they are iterated,
        so a handle that is never iterated holds every event; submit with
        ``keep_events=False`` when only ``result()`` matters.

        Raises:
            RuntimeError: called twice, or the handle keeps no events.
        """
        return self._stream.iterate()

    async def result(self) -> JobOutcome:
        """Wait for the job's terminal.

        Raises:
            ARCPError: the §12 subclass for ``job.error`` (``Cancelled`` and
                ``Timeout`` for cancel and timeout in either dialect), or the error
                that ended the session.
        """
        return await self._stream.wait_outcome()

    async def cancel(self, reason: str = "client.cancel") -> None:
        """Ask the runtime to cancel the job (§7.4) and wait for the acknowledgement.

        Returns when the runtime acknowledges (``job.cancelled``) or the job has
        ended. Safe to call on a finished job (returns at once).
        """
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        await self._cancel(self.job_id, reason)


class Subscription:
    """Observation of a job from this session (§7.6). Built by ``Client.subscribe``."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        #: The ``job.subscribed`` payload once acknowledged.
        self.subscribed: dict[str, Any] = {}
        self._stream = _Stream(job_id)

    @property
    def done(self) -> bool:
        return self._stream.done

    def events(self) -> AsyncIterator[Event]:
        """Iterate history (if asked) then live events until the terminal."""
        return self._stream.iterate()

    async def result(self) -> JobOutcome:
        """Wait for the job's terminal; raises like ``JobHandle.result``."""
        return await self._stream.wait_outcome()
