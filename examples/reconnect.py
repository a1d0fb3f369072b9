"""Kill the network mid-job and watch the client resume with no gap.

Run it: ``python examples/reconnect.py``. A tiny TCP relay sits between the client and
the runtime; after the third event the relay drops every connection (a reset, as a
dying router would). The client reconnects by itself, resumes its session (§6.3), and
the loop over ``handle.events()`` simply continues: every event exactly once.
"""

from __future__ import annotations

import trio

from arcp_trio import open_client, open_runtime, serve_websocket
from arcp_trio.demo_agents import demo_registry


class Relay:
    """Forwards 127.0.0.1:port to the runtime; ``cut()`` ends every connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._links: list[trio.CancelScope] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        with trio.CancelScope() as scope:
            self._links.append(scope)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream)
                nursery.start_soon(self._pump, upstream, client)
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(upstream)

    @staticmethod
    async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        async for data in source:
            await sink.send_all(data)

    def cut(self) -> None:
        for scope in self._links:
            scope.cancel()
        self._links.clear()


async def main() -> None:
    async with (
        open_runtime(agents=demo_registry(), tokens={"t": "me"}) as runtime,
        trio.open_nursery() as nursery,
    ):
        info = await nursery.start(serve_websocket, runtime, "127.0.0.1", 0)
        relay = Relay(info.port)
        await nursery.start(relay.serve)
        async with open_client(f"ws://127.0.0.1:{relay.port}/arcp", token="t") as client:
            handle = await client.submit("ticker", input={"count": 8, "interval": 0.1})
            async for event in handle.events():
                print("event", event.event_seq, event.body)
                if event.event_seq == 3:
                    print("-- cutting the network --")
                    relay.cut()
            print("result:", (await handle.result()).result)
            print("reconnects:", client.statistics().reconnects)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
