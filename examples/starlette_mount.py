"""ARCP inside a web service: a Starlette app with an HTTP route and the ARCP endpoint.

Serve it with hypercorn's trio worker (``pip install hypercorn starlette``)::

    ARCP_TOKEN=secret hypercorn --worker-class trio --bind 127.0.0.1:8000 \\
        examples/starlette_mount.py:app

then ``curl http://127.0.0.1:8000/`` and ``ARCP_TOKEN=secret arcp-trio submit ticker
--url ws://127.0.0.1:8000/arcp --follow``. The runtime opens when the server starts
(the app's lifespan) and shuts down when it stops: running jobs get their grace, then
a terminal.

Or run it as a script, ``python examples/starlette_mount.py``: it serves the same app
on a free port in this process, asks the HTTP route, runs a job through ``/arcp`` with
our client, asks the route again and stops the server.
"""

from __future__ import annotations

import json
import os
import urllib.request
from functools import partial
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from arcp_trio import open_client
from arcp_trio.asgi import arcp_asgi_app
from arcp_trio.demo_agents import demo_registry

if TYPE_CHECKING:
    from starlette.requests import Request

TOKEN = os.environ.get("ARCP_TOKEN", "t")

# The endpoint owns its runtime: opened at startup, shut down at shutdown.
arcp = arcp_asgi_app(agents=demo_registry(), tokens={TOKEN: "demo"})


async def status(request: Request) -> JSONResponse:
    """A normal HTTP route beside the endpoint; it reads the runtime's statistics."""
    stats = arcp.runtime.statistics()
    return JSONResponse({"sessions": stats.sessions, "jobs": stats.jobs_total})


app = Starlette(
    routes=[Route("/", status), WebSocketRoute("/arcp", arcp)],
    # Starlette runs the lifespan; the endpoint's runtime lives inside it.
    lifespan=arcp.lifespan,
)


async def get(url: str) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return f"{response.status} {json.loads(response.read())}"

    return await trio.to_thread.run_sync(fetch)


async def main() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
        base = binds[0]  # http://127.0.0.1:PORT
        print("GET / ->", await get(base + "/"))
        url = base.replace("http://", "ws://") + "/arcp"
        async with open_client(url, token=TOKEN) as client:
            handle = await client.submit("ticker", input={"count": 3, "interval": 0.05})
            async for event in handle.events():
                print("event", event.event_seq, event.body)
            print("result:", (await handle.result()).result)
        print("GET / ->", await get(base + "/"))
        stop.set()  # graceful: connections, then the lifespan shuts the runtime down


if __name__ == "__main__":
    trio.run(main)
