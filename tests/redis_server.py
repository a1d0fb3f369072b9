"""A Redis server of the test's own: ``redis-server`` on a free port, stopped by its PID.

Never the machine's shared Redis (the rules: a test starts its own, and may kill or
pause it). Where ``redis-server`` is missing, ``redis_server_path()`` skips with an
install hint; ``.ci/run`` runs these tests wherever it is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

INSTALL_HINT = (
    "redis-server not found: install Redis 7 or Valkey (Debian/Ubuntu: "
    "`apt install redis-server`; macOS: `brew install redis`) to run the cluster tests"
)


def redis_server_path() -> str:
    """The ``redis-server`` (or ``valkey-server``) binary, or skip the test."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        pytest.skip(INSTALL_HINT)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.define
class RedisServer:
    """A running ``redis-server``: its port, its process, and ways to hurt it."""

    port: int
    process: trio.Process

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL (no persistence: everything in it is gone)."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
        with trio.move_on_after(10, shield=True):
            await self.process.wait()


async def _answers(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    async with stream:
        await stream.send_all(b"PING\r\n")
        return (await stream.receive_some(64)).startswith(b"+PONG")


async def start_redis(directory: Path, *extra: str) -> RedisServer:
    """Start ``redis-server`` with no persistence (``--save ''``) on a free port."""
    binary = redis_server_path()
    for _attempt in range(3):  # a free port may be taken between probe and bind
        port = free_port()
        process = await trio.lowlevel.open_process(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.move_on_after(10):
            while process.returncode is None:
                if await _answers(port):
                    return RedisServer(port=port, process=process)
                await trio.sleep(0.02)
                process.poll()
        await RedisServer(port=port, process=process).kill()
    raise RuntimeError(f"{binary} did not start (three ports tried)")


@asynccontextmanager
async def running_redis(directory: Path, *extra: str) -> AsyncIterator[RedisServer]:
    server = await start_redis(directory, *extra)
    try:
        yield server
    finally:
        await server.kill()
