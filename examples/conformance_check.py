"""Run part of the conformance checker against a runtime started in-process.

Run it: ``python examples/conformance_check.py``. The same checks run from the command
line as ``arcp-trio conformance ws://HOST:PORT/arcp --token T``.
"""

from __future__ import annotations

import trio

from arcp_trio import RuntimeConfig, open_runtime, serve_websocket
from arcp_trio.conformance import run_conformance
from arcp_trio.demo_agents import demo_registry


async def main() -> None:
    config = RuntimeConfig(heartbeat_interval_sec=1, resume_window_sec=2)
    tokens = {"tok-a": "alice", "tok-b": "bob"}
    async with (
        open_runtime(agents=demo_registry(), tokens=tokens, config=config) as runtime,
        trio.open_nursery() as nursery,
    ):
        info = await nursery.start(serve_websocket, runtime, "127.0.0.1", 0)
        report = await run_conformance(
            f"ws://127.0.0.1:{info.port}/arcp",
            "tok-a",
            other_token="tok-b",
            only=["hello", "resume.replay", "list_jobs", "errors"],
        )
        for result in report.results:
            print(f"{result.outcome:4}  §{result.section:5} {result.id:24} {result.detail}")
        print(f"dialect: {report.dialect}")
        print(f"{report.passed} passed, {report.failed} failed, {report.skipped} skipped")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
