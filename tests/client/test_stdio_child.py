"""``open_client`` on a spawned ``arcp-trio serve --stdio`` child (§4: stdio for
in-process children). Real subprocess, real pipes, the real clock."""

from __future__ import annotations

import sys

import trio

from arcp_trio.client import open_client
from arcp_trio.client.connectors import spawn_stdio

SERVE = [sys.executable, "-m", "arcp_trio", "serve", "--stdio", "--memory", "--token", "t=me"]


async def test_client_over_stdio_to_a_child_runtime() -> None:
    with trio.fail_after(30):
        async with open_client(
            connect=spawn_stdio([*SERVE, "--log-level", "WARNING"]), token="t"
        ) as client:
            assert client.runtime_info["name"] == "arcp-trio"
            handle = await client.submit("chunker", input={"chunks": 3, "size": 2})
            outcome = await handle.result()
            assert outcome.result == b"aabbcc"
            page = await client.list_jobs()
            assert [job.job_id for job in page.jobs] == [handle.job_id]
