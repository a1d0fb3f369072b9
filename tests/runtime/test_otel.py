"""The optional OpenTelemetry integration (§11): a job's span continues the client's
trace and carries the recommended attributes; mediated tool calls are child spans.

Rules: in-memory transports, MockClock (autojump), the OpenTelemetry SDK's
in-memory exporter.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.otel import OpenTelemetry
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.wire.timestamps import format_timestamp
from tests.helpers import TOKENS, connect, trio_wall_clock
from tests.runtime.test_authority import registry_with_tooler, tools

if TYPE_CHECKING:
    import trio


async def test_job_and_tool_spans(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with open_runtime(
        agents=registry_with_tooler(),
        tokens=TOKENS,
        wall_clock=trio_wall_clock,
        tools=tools(),
        telemetry=OpenTelemetry(provider),
        config=RuntimeConfig(heartbeat_interval_sec=1000),
    ) as runtime:
        peer, _ = await connect(runtime, nursery)
        await peer.hello()
        expires = format_timestamp(trio_wall_clock() + timedelta(seconds=60))
        accepted = await peer.submit(
            "tooler",
            {"tools": ["search"], "cost": 0.25},
            trace_id=trace,
            lease_request={"tool.call": ["search"], "cost.budget": ["USD:1.00"]},
            lease_constraints={"expires_at": expires},
        )
        await peer.recv_terminal(accepted["job_id"])
    spans: dict[str, Any] = {span.name: span for span in exporter.get_finished_spans()}
    job_span = spans["arcp.job tooler"]
    tool_span = spans["arcp.tool search"]
    assert format(job_span.context.trace_id, "032x") == trace  # the client's trace continues
    assert tool_span.parent.span_id == job_span.context.span_id
    assert job_span.attributes["arcp.job_id"] == accepted["job_id"]
    assert job_span.attributes["arcp.lease.expires_at"].startswith("2026-")
    assert job_span.attributes["arcp.budget.remaining.USD"] == 0.75
    assert job_span.attributes["arcp.final_status"] == "success"
