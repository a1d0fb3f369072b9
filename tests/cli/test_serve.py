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
from tests.redis_server import free_port

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


async def http_get(port: int, path: str, headers: str = "") -> tuple[int, str]:
    """One GET over a raw socket, as ``curl`` would send it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def upgrade_status(port: int, origin: str) -> int:
    """The status a WebSocket upgrade from a browser page at ``origin`` gets."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            "GET /arcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            assert chunk, "closed before the response"
            head += chunk
    return int(head.split()[1])


def metric(body: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


async def test_serve_metrics_port_and_origin_allowlist() -> None:
    metrics_port = free_port()
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [
                *SERVE,
                "--port",
                "0",
                "--token",
                "t1=alice",
                "--metrics-port",
                str(metrics_port),
                "--allow-origin",
                "https://app.example",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            url = (await read_line(process.stdout)).removeprefix("READY ")
            status, _ = await http_get(metrics_port, "/healthz")
            assert status == 200
            status, _ = await http_get(metrics_port, "/readyz")
            assert status == 200
            status, before = await http_get(metrics_port, "/metrics")
            assert status == 200
            transport = await connect_websocket(url)
            await echo_round_trip(transport)
            await transport.aclose()
            _, after = await http_get(metrics_port, "/metrics")
            # The figures move when a job runs.
            assert metric(after, "arcp_events_delivered_total") > metric(
                before, "arcp_events_delivered_total"
            )
            assert metric(after, "arcp_jobs") >= 1
            # --allow-origin: the listed page may upgrade; another page is refused (403).
            ws_port = int(url.split(":")[2].split("/")[0])
            assert await upgrade_status(ws_port, "https://evil.example") == 403
            assert await upgrade_status(ws_port, "https://app.example") == 101
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            process.kill()
            await process.wait()
