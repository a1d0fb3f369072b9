"""``arcp-trio serve`` as a real process: the READY line, WebSocket and stdio sessions,
clean exit on SIGTERM and after ``--max-seconds``.

Rules: real subprocesses and sockets on 127.0.0.1, the real clock, every wait under
``trio.fail_after``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import trio

from arcp_trio.transport.stdio import StreamTransport
from arcp_trio.transport.websocket import connect_websocket
from tests.helpers import Peer

if TYPE_CHECKING:
    from arcp_trio.transport.base import Transport

SERVE = [sys.executable, "-m", "arcp_trio", "serve", "--memory", "--log-level", "WARNING"]


async def read_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise AssertionError(f"process ended before a full line: {data!r}")
        data += chunk
    return data.decode().rstrip("\n")


async def echo_round_trip(transport: Transport) -> dict[str, Any]:
    peer = Peer(transport)
    welcome = await peer.hello(token="t1")
    assert welcome["type"] == "session.welcome", welcome
    accepted = await peer.submit("echo@1.0.0", {"via": "cli"})
    frames = await peer.recv_terminal(accepted["job_id"])
    return frames[-1]


async def test_serve_websocket_ready_line_and_sigterm() -> None:
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [*SERVE, "--port", "0", "--token", "t1=alice"], stdout=subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            line = await read_line(process.stdout)
            assert line.startswith("READY ws://127.0.0.1:")
            assert line.endswith("/arcp")
            url = line.removeprefix("READY ")
            assert int(url.split(":")[2].split("/")[0]) > 0  # the real port, not 0
            transport = await connect_websocket(url)
            terminal = await echo_round_trip(transport)
            assert terminal["payload"]["result"] == {"echo": {"via": "cli"}, "version": "1.0.0"}
            await transport.aclose()
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            process.kill()
            await process.wait()


async def test_serve_exits_after_max_seconds() -> None:
    with trio.fail_after(30):
        result = await trio.run_process(
            [*SERVE, "--port", "0", "--token", "t1=alice", "--max-seconds", "0.5"],
            capture_stdout=True,
        )
    assert result.returncode == 0
    assert result.stdout.decode().startswith("READY ws://127.0.0.1:")


async def test_serve_stdio_speaks_ndjson() -> None:
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [*SERVE, "--stdio", "--token", "t1=alice"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            assert process.stdin is not None
            transport = StreamTransport(process.stdout, process.stdin, description="child")
            terminal = await echo_round_trip(transport)
            assert terminal["type"] == "job.result"
            assert json.loads(json.dumps(terminal))["payload"]["result"]["version"] == "1.0.0"
            # Closing stdin ends the session; the process shuts down cleanly.
            await transport.aclose()
            assert await process.wait() == 0
        finally:
            process.kill()
            await process.wait()
