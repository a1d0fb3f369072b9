"""Connectors: how the client opens one transport per connection attempt.

A ``Connector`` is any ``async () -> Transport``. ``open_client(url)`` uses
``websocket_connector``; ``spawn_stdio`` runs a runtime as a child process and
speaks NDJSON on its stdin/stdout (§4: stdio for in-process children), e.g.
``open_client(connect=spawn_stdio(["arcp-trio", "serve", "--stdio", "--token", "t=me"]),
token="t")``.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from ..transport.base import Transport, TransportBroken
from ..transport.stdio import StreamTransport
from ..transport.websocket import connect_websocket

if TYPE_CHECKING:
    import ssl

__all__ = ["Connector", "spawn_stdio", "websocket_connector"]

log = logging.getLogger(__name__)

#: Opens one transport to the runtime; called once per connection attempt.
Connector = Callable[[], Awaitable[Transport]]


def websocket_connector(url: str, *, ssl_context: ssl.SSLContext | None = None) -> Connector:
    """A ``Connector`` for ``ws://`` / ``wss://`` URLs.

    ``ssl_context``: for ``wss://`` (default: the system's trust store,
    ``ssl.create_default_context()``, which also honours ``SSL_CERT_FILE``).
    """

    async def connect() -> Transport:
        return await connect_websocket(url, ssl_context=ssl_context)

    return connect


class _ChildTransport:
    """NDJSON over a child's pipes; closing it also ends the child (bounded)."""

    def __init__(self, process: trio.Process, grace: float) -> None:
        assert process.stdout is not None
        assert process.stdin is not None
        self._process = process
        self._grace = grace
        self._stream = StreamTransport(
            process.stdout, process.stdin, description=f"stdio pid={process.pid}"
        )

    @property
    def description(self) -> str:
        return self._stream.description

    async def send_message(self, message: str) -> None:
        await self._stream.send_message(message)

    async def send_messages(self, messages: Sequence[str]) -> None:
        await self._stream.send_messages(messages)

    async def receive_message(self) -> str:
        return await self._stream.receive_message()

    async def aclose(self) -> None:
        """Close stdin (the child's cue to shut down), then wait, then kill."""
        await self._stream.aclose()
        with trio.move_on_after(self._grace, shield=True):
            await self._process.wait()
            return
        log.warning(
            "child runtime did not exit in %s s; killing pid=%s", self._grace, self._process.pid
        )
        self._process.kill()
        with trio.move_on_after(1, shield=True):
            await self._process.wait()


def spawn_stdio(command: Sequence[str], *, exit_grace: float = 5.0) -> Connector:
    """A ``Connector`` that starts ``command`` and talks to it over stdin/stdout.

    Each connection attempt starts a new child; a child that died took its sessions
    with it, so a reconnect to a fresh child ends in ``RESUME_WINDOW_EXPIRED``.
    """

    async def connect() -> Transport:
        try:
            process = await trio.lowlevel.open_process(
                list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError as exc:
            raise TransportBroken(f"could not start {command[0]!r}: {exc}") from exc
        return _ChildTransport(process, exit_grace)

    return connect
