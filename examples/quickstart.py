"""Host an agent and drive it with the client, in one process.

Run it: ``python examples/quickstart.py``. It serves on a free port, submits one job,
prints its events as they arrive and then its result.
"""

from __future__ import annotations

from typing import Any

import trio

from arcp_trio import AgentRegistry, JobContext, open_client, open_runtime, serve_websocket

agents = AgentRegistry()


@agents.agent("summarise", version="1.0.0")
async def summarise(input: Any, ctx: JobContext) -> Any:
    docs = input["docs"]
    for i, doc in enumerate(docs, 1):
        await ctx.log(f"reading {doc}")
        await ctx.progress(i, len(docs), units="docs")
        await trio.sleep(0.05)  # the job keeps running if the client drops
    return {"summary": f"{len(docs)} documents"}


async def main() -> None:
    async with (
        open_runtime(agents=agents, tokens={"s3cret": "alice"}) as runtime,
        trio.open_nursery() as nursery,
    ):
        info = await nursery.start(serve_websocket, runtime, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{info.port}/arcp"
        async with open_client(url, token="s3cret") as client:
            handle = await client.submit("summarise", input={"docs": ["a.txt", "b.txt", "c.txt"]})
            async for event in handle.events():
                print(event.event_seq, event.kind, event.body)
            outcome = await handle.result()
            print("result:", outcome.result)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
