"""The reference client (agentruntimecontrolprotocol 1.1.3) through our runtime's
drain: shutdown sends its job's terminal, then a ``session.closed`` it never asked
for, then closes. WIRE.md decides that spec-only frames such as ``session.closed``
are sent to every session because the reference ignores types it does not know
(§17.9); this checks that it does, with a frame it must still parse, and that it
ends its handle with the terminal rather than a transport failure.

The runtime and its WebSocket server run in this process on 127.0.0.1 port 0; the
reference client runs ``ref_driver.py`` in its own process (``run_driver``, in a
worker thread so the server keeps serving), on the real clock under a guard.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.runtime.serve import serve_websocket
from tests.interop.conftest import HEARTBEAT_SEC, RESUME_WINDOW_SEC, TOKENS, run_driver
from tests.interop.test_reference_client import check

if TYPE_CHECKING:
    from arcp_trio.runtime.context import JobContext

pytestmark = pytest.mark.interop

#: Beyond the driver's own bound (it gives up after DRIVER_TIMEOUT + 10 s).
GUARD = 45


async def test_the_reference_client_through_a_drain() -> None:
    config = RuntimeConfig(
        heartbeat_interval_sec=HEARTBEAT_SEC,
        resume_window_sec=RESUME_WINDOW_SEC,
        shutdown_grace_sec=0.5,
    )
    report: dict[str, Any] = {}
    agents, running = demo_registry(), trio.Event()

    @agents.agent("held")
    async def held(_input: Any, ctx: JobContext) -> Any:
        await ctx.status("running")
        running.set()
        await trio.sleep_forever()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as server:
            async with open_runtime(agents=agents, tokens=TOKENS, config=config) as rt:
                info = await server.start(serve_websocket, rt, "127.0.0.1", 0)
                args = {"agent": "held", "job_timeout": 20}
                driver = partial(run_driver, info.url, "tok-alice", "slow", args)

                async def drive() -> None:
                    report.update(await trio.to_thread.run_sync(driver))

                async with trio.open_nursery() as body:
                    body.start_soon(drive)
                    await running.wait()
                    await rt.shutdown()
            server.cancel_scope.cancel()
    out = check(report)
    assert out["outcome"]["status"] == "error", out["outcome"]
    assert out["outcome"]["message"] == "runtime shutting down"
    main = [f for f in out["frames"] if f["conn"] == "main" and f["type"] != "session.ping"]
    assert [f["type"] for f in main][-2:] == ["job.error", "session.closed"]
    assert main[-2]["job_id"] == out["job_id"]
    assert main[-1]["frame"]["payload"] == {"reason": "runtime shutting down"}
    assert "session.closed" in out["unknown_types"]  # ignored, as WIRE.md §17.9 says
