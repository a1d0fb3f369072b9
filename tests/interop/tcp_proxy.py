"""A small Trio TCP proxy that interop tests control: cut or stall a real connection.

``open_tcp_proxy(host, port)`` listens on 127.0.0.1 (port 0: the kernel picks one) and
forwards the bytes of every accepted connection, both ways, to ``host:port``. The test
holds the returned ``TcpProxy`` and can, at any moment:

- ``cut()``: abort every current connection on both sides with a TCP RST (``SO_LINGER``
  0), the way a crashed router or a killed NAT entry ends a link. Later connections are
  forwarded normally, so a client can reconnect through the proxy.
- ``pause()`` / ``resume()``: stop forwarding, in both directions, on every current
  connection (a half-open link: nothing arrives, nothing fails), and start again. Bytes
  already read are held and delivered on ``resume()``. Connections accepted after
  ``pause()`` are not stalled: a client that gives up on the dead link gets through.

Everything runs in the caller's nursery and ends when the ``async with`` block does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["TcpProxy", "open_tcp_proxy"]

_CHUNK = 65536
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


class _Link:
    """One proxied connection: the client side, the upstream side and their pumps."""

    def __init__(self, downstream: trio.SocketStream, upstream: trio.SocketStream) -> None:
        self.downstream = downstream
        self.upstream = upstream
        self.scope = trio.CancelScope()
        self.gate = trio.Event()
        self.gate.set()

    def abort(self) -> None:
        for stream in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):  # already gone
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
        self.scope.cancel()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to the upstream; see the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        #: Connections accepted so far (a reconnecting client makes this grow).
        self.accepted = 0
        #: Connections aborted by ``cut()``.
        self.cuts = 0
        self._links: set[_Link] = set()
        self._accepted_changed = trio.Event()

    @property
    def active(self) -> int:
        return len(self._links)

    def url(self, path: str = "/arcp") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def wait_accepted(self, count: int) -> None:
        """Wait until ``count`` connections have been accepted in all."""
        while self.accepted < count:
            await self._accepted_changed.wait()

    def cut(self) -> int:
        """Abort every current connection (RST both ways); returns how many."""
        links = list(self._links)
        for link in links:
            link.abort()
        self.cuts += len(links)
        return len(links)

    def pause(self) -> int:
        """Stall every current connection, both ways, until ``resume()``; returns how many."""
        for link in self._links:
            if link.gate.is_set():
                link.gate = trio.Event()
        return len(self._links)

    def resume(self) -> None:
        """Forward again (held bytes first) on every stalled connection."""
        for link in self._links:
            link.gate.set()

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.accepted += 1
        self._accepted_changed.set()
        self._accepted_changed = trio.Event()
        try:
            upstream = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        except OSError:
            await trio.aclose_forcefully(downstream)
            return
        except BaseException:
            await trio.aclose_forcefully(downstream)
            raise
        link = _Link(downstream, upstream)
        self._links.add(link)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, link, upstream, downstream, nursery.cancel_scope)
        finally:
            self._links.discard(link)
            # Closed synchronously: an awaited close could be cut short by cancellation.
            downstream.socket.close()
            upstream.socket.close()

    async def _pump(
        self,
        link: _Link,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        done: trio.CancelScope,
    ) -> None:
        """Copy ``source`` to ``sink``; the first side to end (EOF or error) ends both."""
        try:
            while True:
                data = await source.receive_some(_CHUNK)
                if not data:
                    return
                await link.gate.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            done.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()


@asynccontextmanager
async def open_tcp_proxy(upstream_host: str, upstream_port: int) -> AsyncIterator[TcpProxy]:
    """Run a ``TcpProxy`` to ``upstream_host:upstream_port`` for the block's duration."""
    proxy = TcpProxy(upstream_host, upstream_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            proxy.resume()
            proxy.cut()
            nursery.cancel_scope.cancel()
