"""``serve_websocket(..., ssl_context=)``: the runtime over ``wss://``.

Rules: a real TLS listener on 127.0.0.1 with a CA made in the test (``tests.tls``),
real clock under ``fail_after``; our client (``websocket_connector`` with the CA).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.client import open_client
from arcp_trio.client.connectors import websocket_connector
from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.runtime.serve import serve_websocket
from arcp_trio.transport.base import TransportError
from arcp_trio.transport.websocket import connect_websocket
from tests.helpers import TOKENS
from tests.tls import make_tls

if TYPE_CHECKING:
    from pathlib import Path

GUARD = 20


async def test_a_job_over_wss_and_plain_ws_is_refused(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    with trio.fail_after(GUARD):
        async with (
            open_runtime(agents=demo_registry(), tokens=TOKENS) as runtime,
            trio.open_nursery() as nursery,
        ):
            info = await nursery.start(
                partial(serve_websocket, ssl_context=tls.server_context()),
                runtime,
                "127.0.0.1",
                0,
            )
            assert info.url == f"wss://127.0.0.1:{info.port}/arcp"
            connect = websocket_connector(info.url, ssl_context=tls.client_context())
            async with open_client(connect=connect, token="tok-alice") as client:
                handle = await client.submit("ticker", input={"count": 3, "interval": 0.01})
                events = [event async for event in handle.events()]
                assert [e.body["current"] for e in events if e.kind == "progress"] == [1, 2, 3]
                assert (await handle.result()).result == {"ticks": 3}
            # Not TLS, or TLS without trusting the CA: no session.
            with pytest.raises(TransportError):
                await connect_websocket(f"ws://127.0.0.1:{info.port}/arcp")
            with pytest.raises(TransportError):
                await connect_websocket(info.url)
            assert runtime.statistics().sessions == 1
            nursery.cancel_scope.cancel()
