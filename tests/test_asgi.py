"""``arcp_trio.asgi``: the ARCP endpoint mounted in ASGI apps, under a real server.

Rules: hypercorn with its trio worker serves the app in the test's nursery on
127.0.0.1 port 0 (real clock, ``fail_after`` guard); the client is ours
(``open_client`` over ``ws://``). A few tests call the app directly, for what a
server does not let a test arrange (a failed startup, a lifespan that never ran,
asyncio). Sessions over every mount (resume, malformed frames, origins) are in
``tests/runtime/test_mounts.py``; the reference client in
``tests/interop/test_mounts.py``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
import trio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute

from arcp_trio.asgi import ARCPApp, arcp_asgi_app
from arcp_trio.client import Backoff, open_client
from arcp_trio.demo_agents import demo_registry
from arcp_trio.protocol.job import TERMINAL_STATUSES, JobStatus
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from tests.helpers import TOKENS
from tests.mounts import http_get, running_hypercorn, upgrade_status

if TYPE_CHECKING:
    from collections.abc import Sequence

    from starlette.requests import Request

    from arcp_trio.runtime.runtime import Runtime

GUARD = 15
FAST = Backoff(initial=0.05, factor=2.0, cap=0.5)


def identity(delay: float) -> float:
    return delay


def url(port: int, path: str = "/arcp") -> str:
    return f"ws://127.0.0.1:{port}{path}"


async def ok(scope: Any, receive: Any, send: Any) -> None:
    """A one-route HTTP app: 200 ``ok``."""
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


async def ticker_through(client_url: str, count: int = 4) -> None:
    async with open_client(client_url, token="tok-alice") as client:
        handle = await client.submit("ticker", input={"count": count, "interval": 0.01})
        events = [event async for event in handle.events()]
        assert [e.body["current"] for e in events if e.kind == "progress"] == list(
            range(1, count + 1)
        )
        assert (await handle.result()).result == {"ticks": count}


# == who owns the runtime ====================================================================


async def test_a_job_through_a_runtime_the_caller_owns() -> None:
    with trio.fail_after(GUARD):
        async with open_runtime(agents=demo_registry(), tokens=TOKENS) as runtime:
            app = ARCPApp(runtime, path="/arcp", http_app=ok)
            assert app.runtime is runtime
            async with running_hypercorn(app) as port:
                await ticker_through(url(port))
                assert await http_get(port, "/health") == (200, b"ok")
                status, _ = await upgrade_status(port, path="/elsewhere")
                assert status == 404
            assert runtime.statistics().sessions == 1


async def test_the_lifespan_owns_the_runtime() -> None:
    config = RuntimeConfig(shutdown_grace_sec=0.1)
    app = arcp_asgi_app(agents=demo_registry(), tokens=TOKENS, config=config)
    with pytest.raises(RuntimeError, match="not running"):
        app.runtime  # noqa: B018
    with trio.fail_after(GUARD):
        async with running_hypercorn(app) as port:
            runtime = app.runtime
            await ticker_through(url(port))
            # Not an upgrade, and no http_app: 404.
            assert await http_get(port, "/arcp") == (404, b"Not Found\n")
            async with open_client(url(port), token="tok-alice") as client:
                handle = await client.submit("slow", input={"seconds": 30})
            # The client is gone; its job runs on.
            record = runtime.job(handle.job_id)
            assert record is not None
            assert record.status == JobStatus.RUNNING
        # The server stopped, and lifespan.shutdown shut the runtime down with it:
        # the job had its grace, then its terminal.
    with pytest.raises(RuntimeError, match="not running"):
        app.runtime  # noqa: B018
    record = runtime.job(handle.job_id)
    assert record is not None
    assert record.status in TERMINAL_STATUSES
    assert runtime.statistics().jobs_active == 0


async def test_starlette_mounts_it_beside_a_route() -> None:
    arcp = arcp_asgi_app(agents=demo_registry(), tokens=TOKENS)

    async def homepage(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"sessions: {arcp.runtime.statistics().sessions}")

    site = Starlette(
        routes=[Route("/", homepage), WebSocketRoute("/arcp", arcp)],
        lifespan=arcp.lifespan,
    )
    with trio.fail_after(GUARD):
        async with running_hypercorn(site) as port:
            assert await http_get(port, "/") == (200, b"sessions: 0")
            await ticker_through(url(port))
            assert await http_get(port, "/") == (200, b"sessions: 1")
            # Starlette routes: another path is not ours.
            status, _ = await upgrade_status(port, path="/elsewhere")
            assert status == 403  # Starlette closes unrouted websockets before accepting


async def test_arcp_asgi_app_checks_the_runtime_options_at_once() -> None:
    with pytest.raises(TypeError):
        arcp_asgi_app(agent=demo_registry(), tokens=TOKENS)
    with pytest.raises(ValueError, match="not an origin"):
        arcp_asgi_app(agents=demo_registry(), tokens=TOKENS, allow_origins=["app.example"])


# == the app without a server ===============================================================


def scripted(events: Sequence[dict[str, Any]]) -> tuple[Any, Any, list[dict[str, Any]]]:
    queue = list(events)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    return receive, send, sent


async def test_a_failed_startup_is_reported_to_the_server() -> None:
    def broken() -> Any:
        return open_runtime(agents=demo_registry())  # neither tokens nor authenticator

    app = ARCPApp.from_factory(broken)
    receive, send, sent = scripted([{"type": "lifespan.startup"}])
    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "ValueError" in sent[0]["message"]


async def test_before_startup_an_upgrade_gets_503() -> None:
    app = arcp_asgi_app(agents=demo_registry(), tokens=TOKENS)
    receive, send, sent = scripted([{"type": "websocket.connect"}])
    scope = {"type": "websocket", "path": "/arcp", "extensions": {"websocket.http.response": {}}}
    await app(scope, receive, send)
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 503
    assert sent[1] == {
        "type": "websocket.http.response.body",
        "body": b"Service Unavailable\n",
    }


async def test_lifespan_opens_and_closes_the_runtime_once() -> None:
    app = arcp_asgi_app(agents=demo_registry(), tokens=TOKENS)
    async with app.lifespan():
        runtime: Runtime = app.runtime
        with pytest.raises(RuntimeError, match="already running"):
            async with app.lifespan():
                pass  # pragma: no cover
        assert app.runtime is runtime
    with pytest.raises(RuntimeError, match="not running"):
        app.runtime  # noqa: B018


def test_on_asyncio_it_says_it_needs_trio() -> None:
    async def main() -> None:
        app = arcp_asgi_app(agents=demo_registry(), tokens=TOKENS)

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: Any) -> None:
            raise AssertionError(message)  # pragma: no cover

        await app({"type": "websocket", "path": "/arcp"}, receive, send)

    with pytest.raises(RuntimeError, match="runs on Trio"):
        asyncio.run(main())


async def test_an_unknown_scope_type_is_an_error() -> None:
    app = arcp_asgi_app(agents=demo_registry(), tokens=TOKENS)
    receive, send, _ = scripted([])
    with pytest.raises(ValueError, match="'webtransport'"):
        await app({"type": "webtransport"}, receive, send)
