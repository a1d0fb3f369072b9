"""A runtime served every way in: its own server, an ASGI app (alone and inside
Starlette) and a trio-websocket handler; the same sessions over each.

Rules: each server runs in the test's nursery on 127.0.0.1 port 0 (``tests.mounts``),
on the real clock under a ``fail_after`` guard; the client is ours (``open_client``
over ``ws://``), or a raw peer (``tests.helpers.Peer``) for frames our client never
sends. The reference client against the same mounts: ``tests/interop/test_mounts.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from arcp_trio.client import Backoff, open_client
from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.transport.websocket import connect_websocket
from tests.helpers import TOKENS, Peer
from tests.interop.tcp_proxy import open_tcp_proxy
from tests.mounts import MOUNTS, mounted, upgrade_status

GUARD = 15
FAST = Backoff(initial=0.05, factor=2.0, cap=0.5)

pytestmark = pytest.mark.parametrize("kind", MOUNTS)


def identity(delay: float) -> float:
    return delay


async def test_a_job_runs(kind: str) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_runtime(agents=demo_registry(), tokens=TOKENS) as runtime,
            mounted(kind, runtime) as port,
            open_client(f"ws://127.0.0.1:{port}/arcp", token="tok-alice") as client,
        ):
            handle = await client.submit("ticker", input={"count": 4, "interval": 0.01})
            events = [event async for event in handle.events()]
            assert [e.body["current"] for e in events] == [1, 2, 3, 4]
            assert [e.event_seq for e in events] == [1, 2, 3, 4]
            assert (await handle.result()).result == {"ticks": 4}
            assert runtime.statistics().attached_sessions == 1


async def test_resume_after_a_dropped_connection(kind: str) -> None:
    """§6.3: the TCP link is cut (RST both ways) mid-stream; the client resumes
    through the same mount and every event arrives exactly once."""
    with trio.fail_after(GUARD):
        async with (
            open_runtime(agents=demo_registry(), tokens=TOKENS) as runtime,
            mounted(kind, runtime) as port,
            open_tcp_proxy("127.0.0.1", port) as proxy,
            open_client(proxy.url(), token="tok-alice", backoff=FAST, jitter=identity) as client,
        ):
            handle = await client.submit("ticker", input={"count": 10, "interval": 0.05})
            currents: list[int] = []
            seqs: list[int] = []
            async for event in handle.events():
                currents.append(event.body["current"])
                seqs.append(event.event_seq)
                if event.body["current"] == 3:
                    assert proxy.cut() == 1
            assert currents == list(range(1, 11))
            assert seqs == list(range(1, 11))
            assert (await handle.result()).result == {"ticks": 10}
            assert client.statistics().reconnects == 1
            assert proxy.accepted == 2


async def test_malformed_and_oversized_frames_get_invalid_request(kind: str) -> None:
    """WIRE.md §15: a frame that does not parse, or is over ``max_message_size``, is
    answered with INVALID_REQUEST (correlated where it has an id); the session goes on."""
    config = RuntimeConfig(max_message_size=2000)
    with trio.fail_after(GUARD):
        async with (
            open_runtime(agents=demo_registry(), tokens=TOKENS, config=config) as runtime,
            mounted(kind, runtime) as port,
        ):
            peer = Peer(await connect_websocket(f"ws://127.0.0.1:{port}/arcp"))
            welcome = await peer.hello()
            assert welcome["type"] == "session.welcome"
            replies: list[dict[str, Any]] = []
            for frame in ["not json", "[1, 2]", '{"id": "x-1", "type": "no.such.type"}']:
                await peer.send_raw(frame)
                replies.append(await peer.recv_type("session.error"))
            big = '{"arcp":"1.1","id":"big-1","type":"job.submit","payload":{"pad":"'
            await peer.send_raw(big + "x" * 3000 + '"}}')
            replies.append(await peer.recv_type("session.error"))
            assert [r["payload"]["code"] for r in replies] == ["INVALID_REQUEST"] * 4
            assert replies[2]["payload"]["request_id"] == "x-1"
            assert replies[3]["payload"]["request_id"] == "big-1"
            accepted = await peer.submit("echo", {"still": "alive"})
            frames = await peer.recv_terminal(accepted["job_id"])
            assert frames[-1]["payload"]["result"]["echo"] == {"still": "alive"}
            await peer.transport.aclose()


async def test_only_allowed_origins_reach_the_runtime(kind: str) -> None:
    """A page from another origin is refused with 403 before the upgrade, the same
    way in (``arcp_trio.transport.origin``); clients without an Origin get in."""
    with trio.fail_after(GUARD):
        async with (
            open_runtime(agents=demo_registry(), tokens=TOKENS) as runtime,
            mounted(kind, runtime, allow_origins=["https://app.example"]) as port,
        ):
            status, head = await upgrade_status(port, headers=[("Origin", "https://evil.test")])
            assert status == 403, head
            status, head = await upgrade_status(port, headers=[("Origin", "https://app.example")])
            assert status == 101, head
            async with open_client(f"ws://127.0.0.1:{port}/arcp", token="tok-alice") as client:
                handle = await client.submit("echo", input="in")
                assert (await handle.result()).result == {"echo": "in", "version": "2.0.0"}
