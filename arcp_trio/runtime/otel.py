"""Optional OpenTelemetry spans for jobs and tool calls (§11).

``pip install arcp-trio[otel]`` and pass ``open_runtime(..., telemetry=OpenTelemetry())``.
Each job runs inside a span named ``arcp.job <agent>`` whose trace is the job's
inbound ``trace_id`` (so a client's trace continues into the runtime), and each tool
call the runtime mediates gets a child span ``arcp.tool <name>``. The span
attributes recommended by §11 are set: ``arcp.lease.expires_at`` and
``arcp.budget.remaining`` (one attribute per currency:
``arcp.budget.remaining.USD``), plus ``arcp.job_id``, ``arcp.agent`` and
``arcp.final_status``.

Without this module the runtime uses ``NoTelemetry``: no import, no cost.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..protocol.job import JobRecord

__all__ = ["NoTelemetry", "OpenTelemetry", "Telemetry"]


class Telemetry(Protocol):
    """Hooks the runtime calls around a job's agent and each mediated tool call."""

    def job(self, job: JobRecord) -> Any:
        """A context manager entered around the agent's run."""
        ...

    def tool(self, job: JobRecord, name: str) -> Any:
        """A context manager entered around one tool call."""
        ...


class NoTelemetry:
    @contextmanager
    def job(self, job: JobRecord) -> Iterator[None]:
        yield

    @contextmanager
    def tool(self, job: JobRecord, name: str) -> Iterator[None]:
        yield


class OpenTelemetry:
    """Spans through the OpenTelemetry API (``opentelemetry-api``)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = trace.get_tracer("arcp_trio", tracer_provider=tracer_provider)

    def _parent(self, job: JobRecord) -> Any:
        """The job's inbound trace id as a remote parent, so the trace continues."""
        if job.trace_id is None:
            return None
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        parent = SpanContext(
            trace_id=int(job.trace_id, 16),
            span_id=random.getrandbits(64) or 1,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return self._trace.set_span_in_context(NonRecordingSpan(parent))

    @contextmanager
    def job(self, job: JobRecord) -> Iterator[None]:
        attributes: dict[str, Any] = {"arcp.job_id": job.job_id, "arcp.agent": job.agent}
        if job.lease.expires_at is not None:
            attributes["arcp.lease.expires_at"] = job.lease.expires_at.isoformat()
        with self._tracer.start_as_current_span(
            f"arcp.job {job.agent}", context=self._parent(job), attributes=attributes
        ) as span:
            try:
                yield
            finally:
                if job.budget is not None:
                    for currency, left in job.budget.remaining.items():
                        span.set_attribute(f"arcp.budget.remaining.{currency}", float(left))
                if job.terminal is not None:
                    span.set_attribute("arcp.final_status", str(job.terminal.status))

    @contextmanager
    def tool(self, job: JobRecord, name: str) -> Iterator[None]:
        with self._tracer.start_as_current_span(
            f"arcp.tool {name}", attributes={"arcp.job_id": job.job_id, "arcp.tool": name}
        ):
            yield
