"""Your own agents, hosted by the command line.

``arcp-trio serve --agents my_agents:registry`` (run from this directory) hosts them;
``arcp-trio submit --follow wordcount --input '{"text": "a b c"}'`` runs one. Run this
file directly (``python examples/my_agents.py``) to check the agents in-process.
"""

from __future__ import annotations

from typing import Any

import trio

from arcp_trio import AgentRegistry, JobContext, open_client, open_runtime, serve_websocket

registry = AgentRegistry()


@registry.agent("wordcount", version="1.0.0")
async def wordcount(input: Any, ctx: JobContext) -> Any:
    """Counts words, one progress event per word, and streams a report."""
    words = str(input.get("text", "")).split()
    counts: dict[str, int] = {}
    for i, word in enumerate(words, 1):
        counts[word] = counts.get(word, 0) + 1
        await ctx.progress(i, len(words), units="words", message=word)
    async with ctx.stream_result() as stream:
        for word, count in sorted(counts.items()):
            await stream.write(f"{word}\t{count}\n")
    return None


@registry.agent("guarded", version="1.0.0")
async def guarded(input: Any, ctx: JobContext) -> Any:
    """Reads a path only if the job's lease grants fs.read on it (§9.3)."""
    ctx.authorize("fs.read", str(input["path"]))  # PERMISSION_DENIED ends the job
    await ctx.log(f"allowed to read {input['path']}")
    return {"read": input["path"]}


async def main() -> None:
    async with (
        open_runtime(agents=registry, tokens={"t": "me"}) as runtime,
        trio.open_nursery() as nursery,
    ):
        info = await nursery.start(serve_websocket, runtime, "127.0.0.1", 0)
        async with open_client(f"ws://127.0.0.1:{info.port}/arcp", token="t") as client:
            handle = await client.submit("wordcount", input={"text": "to be or not to be"})
            print((await handle.result()).result, end="")
            handle = await client.submit(
                "guarded", input={"path": "/data/x"}, lease_request={"fs.read": ["/data/**"]}
            )
            print("guarded:", (await handle.result()).result)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
