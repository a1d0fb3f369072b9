"""The agent-facing job context: awaitable emitters for every event kind (§8.2),
lease checks (§9.3), budget accounting (§9.6) and result streaming (§8.4).

An agent is ``async def agent(input, ctx: JobContext) -> result``. Everything it
emits goes to the runtime, which records it in the job's history and routes it to
every session that watches the job; ``await`` is where back-pressure applies (an
emitter waits only while a *live* connection is far behind, never for a detached
one).

Cancellation, timeouts and shutdown arrive as ``trio.Cancelled`` at the agent's
next checkpoint, from the job's own cancel scope, which the runtime owns.
"""

from __future__ import annotations

import base64
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from ..wire.errors import InternalError, InvalidRequest
from ..wire.ids import new_id

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from ..protocol.job import JobRecord
    from ..protocol.leases import Lease

__all__ = ["DelegatedJob", "JobContext", "ResultStream"]

_LOG_LEVELS = frozenset({"debug", "info", "warn", "warning", "error"})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class DelegatedJob(Protocol):
    """A child job started by ``ctx.delegate``."""

    @property
    def job_id(self) -> str: ...

    async def result(self) -> Any:
        """The child's inline result; raises the §12 error it ended with."""
        ...


class _Host(Protocol):
    """What a context needs from the runtime (implemented by ``Runtime``)."""

    async def _call_tool(self, job: JobRecord, name: str, args: Any) -> Any: ...

    async def _rotate_credential(self, job: JobRecord, credential_id: str) -> dict[str, Any]: ...

    def _authorize_model(self, job: JobRecord, model: str) -> None: ...

    async def _delegate(
        self,
        job: JobRecord,
        agent: str,
        input_: Any,
        lease: dict[str, list[str]] | None,
        lease_constraints: dict[str, Any] | None,
    ) -> DelegatedJob: ...

    async def _emit(self, job: JobRecord, kind: str, body: Any) -> None: ...

    def _authorize(self, job: JobRecord, namespace: str, target: str) -> None: ...

    def _charge(self, job: JobRecord, currency: str, value: Decimal) -> Decimal | None: ...

    def _begin_stream(self, job: JobRecord, result_id: str) -> None: ...

    def _end_stream(
        self, job: JobRecord, result_id: str, size: int, summary: str | None
    ) -> None: ...

    @property
    def _result_chunk_bytes(self) -> int: ...

    @property
    def _max_result_bytes(self) -> int: ...


class JobContext:
    """Given to each agent invocation. Users receive it; they never build it."""

    def __init__(self, host: _Host, job: JobRecord) -> None:
        self._host = host
        self._job = job

    # -- facts --------------------------------------------------------------------------

    @property
    def job_id(self) -> str:
        return self._job.job_id

    @property
    def session_id(self) -> str:
        """The submitting session."""
        return self._job.session_id

    @property
    def principal(self) -> str:
        return self._job.principal

    @property
    def agent(self) -> str:
        """Resolved ``name@version``."""
        return self._job.agent

    @property
    def agent_name(self) -> str:
        return self._job.agent_name

    @property
    def agent_version(self) -> str | None:
        return self._job.agent_version

    @property
    def trace_id(self) -> str | None:
        return self._job.trace_id

    @property
    def lease(self) -> Lease:
        return self._job.lease

    @property
    def budget(self) -> Mapping[str, Decimal]:
        """A snapshot of the remaining per-currency budget counters (§9.6)."""
        return {} if self._job.budget is None else dict(self._job.budget.remaining)

    @property
    def credentials(self) -> list[dict[str, Any]]:
        """Provisioned credentials (§9.8), current values. Secret: never log them."""
        return [dict(c) for c in self._job.credentials]

    async def rotate_credential(self, credential_id: str) -> dict[str, Any]:
        """Re-issue a credential (§9.8.2): the submitter is sent a
        ``status {phase: "credential_rotated"}`` with the new value, and the old value
        is revoked. Returns the new credential.

        Raises:
            InvalidRequest: no such credential, or no provisioner configured.
        """
        return await self._host._rotate_credential(self._job, credential_id)

    # -- authority ------------------------------------------------------------------------

    def authorize(self, namespace: str, target: str) -> None:
        """§9.3: check the lease, expiry and every budget counter, synchronously.

        Raises:
            PermissionDenied, LeaseExpired, BudgetExhausted: (all ``retryable: false``).
        """
        self._host._authorize(self._job, namespace, target)

    # -- emitters (§8.2) ------------------------------------------------------------------

    async def event(self, kind: str, body: Mapping[str, Any]) -> None:
        """Emit any event kind, including ``x-vendor.*`` ones.

        ``result_chunk`` is reserved for ``stream_result`` (which keeps §8.4's
        ordering and the no-mixing rule).
        """
        if kind == "result_chunk":
            raise ValueError("use ctx.stream_result() to stream a result")
        await self._host._emit(self._job, kind, dict(body))

    async def log(
        self, message: str, *, level: str = "info", attributes: Mapping[str, Any] | None = None
    ) -> None:
        if level not in _LOG_LEVELS:
            raise ValueError(f"log level must be one of {sorted(_LOG_LEVELS)}")
        body: dict[str, Any] = {"level": level, "message": message}
        if attributes:
            body["attributes"] = dict(attributes)
        await self._host._emit(self._job, "log", body)

    async def thought(self, text: str) -> None:
        await self._host._emit(self._job, "thought", {"text": text})

    async def status(self, phase: str, message: str | None = None, **extra: Any) -> None:
        body: dict[str, Any] = {"phase": phase, **extra}
        if message is not None:
            body["message"] = message
        await self._host._emit(self._job, "status", body)

    async def tool_call(self, tool: str, args: Any = None, *, call_id: str | None = None) -> str:
        """Emit a ``tool_call`` event; returns its ``call_id`` (minted if not given)."""
        call_id = call_id or new_id("call")
        await self._host._emit(
            self._job, "tool_call", {"tool": tool, "args": args, "call_id": call_id}
        )
        return call_id

    async def tool_result(
        self, call_id: str, result: Any = None, *, error: Mapping[str, Any] | None = None
    ) -> None:
        body: dict[str, Any] = {"call_id": call_id}
        if error is not None:
            body["error"] = dict(error)
        else:
            body["result"] = result
        await self._host._emit(self._job, "tool_result", body)

    async def metric(
        self,
        name: str,
        value: float | int | Decimal,
        *,
        unit: str | None = None,
        dimensions: Mapping[str, Any] | None = None,
    ) -> None:
        """Emit a metric; ``cost.*`` metrics in a budgeted currency decrement it (§9.6).

        Raises:
            InvalidRequest: a negative cost (rejected, no decrement, nothing emitted).
        """
        if not (_is_number(value) or isinstance(value, Decimal)):
            raise TypeError("metric value must be a number")
        if not math.isfinite(value):
            raise ValueError("metric value must be finite")
        remaining: Decimal | None = None
        if name.startswith("cost.") and unit is not None:
            if value < 0:
                raise InvalidRequest(f"cost metric {name} must not be negative ({value})")
            remaining = self._host._charge(self._job, unit, Decimal(str(value)))
        body: dict[str, Any] = {
            "name": name,
            "value": float(value) if isinstance(value, Decimal) else value,
        }
        if unit is not None:
            body["unit"] = unit
        if dimensions:
            body["dimensions"] = dict(dimensions)
        await self._host._emit(self._job, "metric", body)
        if remaining is not None:
            # §9.6: "MAY emit these cost.budget.remaining metrics proactively after
            # material decrements". A cost.* value is never negative (the reference SDK
            # refuses such bodies), so an overspend is reported beside a zero.
            gauge: dict[str, Any] = {
                "name": "cost.budget.remaining",
                "value": float(max(remaining, Decimal(0))),
                "unit": unit,
            }
            if remaining < 0:
                gauge["dimensions"] = {"overspent": float(-remaining)}
            await self._host._emit(self._job, "metric", gauge)

    async def progress(
        self,
        current: float,
        total: float | None = None,
        *,
        units: str | None = None,
        message: str | None = None,
    ) -> None:
        """§8.2.1: ``current`` MUST be non-negative; SHOULD be ≤ ``total``."""
        if not _is_number(current) or current < 0:
            raise ValueError("progress current must be a non-negative number")
        body: dict[str, Any] = {"current": current}
        if total is not None:
            if current > total:
                raise ValueError("progress current must not exceed total")
            body["total"] = total
        if units is not None:
            body["units"] = units
        if message is not None:
            body["message"] = message
        await self._host._emit(self._job, "progress", body)

    async def artifact_ref(
        self,
        uri: str,
        content_type: str,
        *,
        byte_size: int | None = None,
        sha256: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"uri": uri, "content_type": content_type}
        if byte_size is not None:
            body["byte_size"] = byte_size
        if sha256 is not None:
            body["sha256"] = sha256
        await self._host._emit(self._job, "artifact_ref", body)

    # -- mediated operations (§9.3): checked by the runtime before dispatch ---------------

    async def call_tool(self, name: str, args: Any = None) -> Any:
        """Call a registered tool through the runtime (§9.3).

        The runtime emits ``tool_call``, checks ``tool.call`` on ``name`` against the
        lease, expiry and every budget counter *before* dispatching, runs the tool and
        emits ``tool_result``. A denial is reported as a ``tool_result`` error and
        raised here, so the agent may handle it (or, under a fatal policy, the job
        ends with ``job.error``).

        Raises:
            PermissionDenied, LeaseExpired, BudgetExhausted: denied (never retryable).
            InvalidRequest: no tool of that name.
            ARCPError: the tool itself failed (non-ARCP failures become
                ``INTERNAL_ERROR``).
        """
        return await self._host._call_tool(self._job, name, args)

    def use_model(self, model: str) -> None:
        """Authorise invoking ``model`` (§9.7) before the agent calls it.

        Raises:
            PermissionDenied: ``model.use`` does not cover ``model`` (or the lease has
                no ``model.use`` and the runtime forbids models by default).
            LeaseExpired, BudgetExhausted: as for any operation.
        """
        self._host._authorize_model(self._job, model)

    async def delegate(
        self,
        agent: str,
        input: Any = None,
        *,
        lease: dict[str, list[str]] | None = None,
        lease_constraints: dict[str, Any] | None = None,
    ) -> DelegatedJob:
        """Start a child job with a subset of this job's authority (§10, §9.4).

        The child runs in the runtime's job nursery with ``parent_job_id`` set; a
        ``delegate`` event is emitted on this job. The child never outlives this
        job: when this job ends (or is cancelled), unfinished children are cancelled.

        Raises:
            PermissionDenied: the lease does not grant ``agent.delegate`` on ``agent``.
            LeaseSubsetViolation: the child lease is not a subset of this one.
            AgentNotAvailable, AgentVersionNotAvailable: no such agent.
        """
        return await self._host._delegate(self._job, agent, input, lease, lease_constraints)

    # -- result streaming (§8.4) -----------------------------------------------------------

    def stream_result(self, *, result_id: str | None = None) -> ResultStream:
        """Stream the job's result as ``result_chunk`` events.

        Use as ``async with ctx.stream_result() as stream: await stream.write(...)``.
        On a clean exit the final ``more: false`` chunk is sent and the job's
        terminal will be ``job.result`` with ``result_id``; if the body raises, the
        stream is abandoned and the exception ends the job in ``job.error`` — never a
        success terminal.
        """
        return ResultStream(self._host, self._job, result_id or new_id("res"))


class ResultStream:
    """Writes one streamed result. Text goes as ``utf8`` chunks, bytes as ``base64``."""

    def __init__(self, host: _Host, job: JobRecord, result_id: str) -> None:
        self._host = host
        self._job = job
        self.result_id = result_id
        self._chunk_seq = 0
        self._size = 0
        self._open = False
        self._closed = False
        self.summary: str | None = None

    async def __aenter__(self) -> ResultStream:
        self._host._begin_stream(self._job, self.result_id)
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        if exc_type is None:
            await self._send("", "utf8", more=False)
            self._closed = True
            self._host._end_stream(self._job, self.result_id, self._size, self.summary)

    async def write(self, data: str | bytes) -> None:
        """Append ``data``; pieces larger than the runtime's chunk size are split.

        Raises:
            InternalError: the total would exceed the runtime's result cap (§14).
        """
        if not self._open:
            raise RuntimeError("the result stream is not open")
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if self._size + len(raw) > self._host._max_result_bytes:
            raise InternalError(
                f"streamed result exceeds the runtime's cap of {self._host._max_result_bytes} bytes"
            )
        self._size += len(raw)
        limit = self._host._result_chunk_bytes
        if isinstance(data, str):
            # Split on characters so no chunk ends inside a UTF-8 sequence.
            step = max(1, limit // 4) if len(raw) > limit else len(data) or 1
            for start in range(0, max(len(data), 1), step):
                await self._send(data[start : start + step], "utf8", more=True)
        else:
            step = limit // 4 * 3  # base64 grows by 4/3
            for start in range(0, max(len(raw), 1), step):
                piece = base64.b64encode(raw[start : start + step]).decode("ascii")
                await self._send(piece, "base64", more=True)

    async def _send(self, data: str, encoding: str, *, more: bool) -> None:
        body = {
            "result_id": self.result_id,
            "chunk_seq": self._chunk_seq,
            "data": data,
            "encoding": encoding,
            "more": more,
        }
        self._chunk_seq += 1
        await self._host._emit(self._job, "result_chunk", body)
