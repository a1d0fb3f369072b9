"""A minimal, fast RFC 6455 client for the load generator (asyncio, no extensions).

Why not a full WebSocket library: the runtimes under test may push 50,000+ frames a
second, and a general-purpose client spends more CPU per frame than the runtime does,
so it would measure itself. This one does only what a benchmark client needs:

* ``ws://`` only, no subprotocol, no permessage-deflate (frames stay as the runtime
  wrote them), no size limit;
* frames parsed straight out of the receive buffer in ``data_received``; each complete
  text or binary message is handed, as ``bytes``, to the connection's ``on_message``
  callback (synchronously, no queue, no task switch per frame);
* WebSocket pings answered with pongs, a close frame answered and the socket closed;
* client frames masked as RFC 6455 requires (``websockets``' C mask routine when
  present).

``connect`` does the opening handshake and returns a :class:`WSConnection`.
"""

# ruff: noqa: ASYNC109
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def _c_masker() -> Callable[[bytes, bytes], bytes] | None:
    """The C routine websockets ships, if it is there (pure Python otherwise)."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:  # pragma: no cover
        return None
    return apply_mask


_c_apply_mask = _c_masker()

__all__ = ["WSClosed", "WSConnection", "connect"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BIN, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WSClosed(Exception):
    """The connection is closed (by either side, or the network)."""


def _mask(data: bytes, key: bytes) -> bytes:
    if _c_apply_mask is not None:
        return _c_apply_mask(data, key)
    n = len(data)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ k).to_bytes(n, "little")


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class WSConnection(asyncio.Protocol):
    """One client WebSocket. Set ``on_message`` to receive every data message."""

    def __init__(self) -> None:
        self.on_message: Callable[[bytes], None] = self._queue_message
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._handshake: asyncio.Future[bytes] | None = asyncio.get_running_loop().create_future()
        self._fragments: list[bytes] = []
        self._queue: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self.bytes_received = 0

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(WSClosed("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        buf = self._buf
        buf += data
        if self._handshake is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[: end + 4])
            del buf[: end + 4]
            fut, self._handshake = self._handshake, None
            fut.set_result(head)
        pos = 0
        size = len(buf)
        on_message = self.on_message
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            hdr = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            if b1 & 0x80:  # a masked server frame: not allowed, but tolerate it
                if size - pos < hdr + 4 + n:
                    break
                key = bytes(buf[pos + hdr : pos + hdr + 4])
                payload = _mask(bytes(buf[pos + hdr + 4 : pos + hdr + 4 + n]), key)
                pos += hdr + 4 + n
            else:
                if size - pos < hdr + n:
                    break
                payload = bytes(buf[pos + hdr : pos + hdr + n])
                pos += hdr + n
            opcode = b0 & 0x0F
            if opcode in (_OP_TEXT, _OP_BIN):
                if b0 & 0x80:
                    on_message(payload)
                else:
                    self._fragments = [payload]
            elif opcode == _OP_CONT:
                self._fragments.append(payload)
                if b0 & 0x80:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    on_message(whole)
            elif opcode == _OP_PING:
                self._write(_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                self._write(_frame(_OP_CLOSE, payload[:2]))
                if self.transport is not None:
                    self.transport.close()
            # pongs are ignored
        if pos:
            del buf[:pos]

    # -- API -------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, text: str | bytes) -> None:
        """Queue one text frame (never blocks; asyncio buffers it)."""
        if self.transport is None or self.transport.is_closing():
            raise WSClosed("send on a closed connection")
        data = text.encode() if isinstance(text, str) else text
        self.transport.write(_frame(_OP_TEXT, data))

    def send_binary(self, data: bytes) -> None:
        """Queue one binary frame."""
        if self.transport is None or self.transport.is_closing():
            raise WSClosed("send on a closed connection")
        self.transport.write(_frame(_OP_BIN, data))

    def send_many(self, texts: list[str]) -> None:
        """Queue text frames in one write (a burst the server reads at once)."""
        if self.transport is None or self.transport.is_closing():
            raise WSClosed("send on a closed connection")
        self.transport.write(b"".join(_frame(_OP_TEXT, text.encode()) for text in texts))

    def _queue_message(self, data: bytes) -> None:
        self._queue.append(data)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recv(self) -> bytes:
        """The next message, for code that did not install its own ``on_message``."""
        while not self._queue:
            if self.closed.done():
                raise WSClosed("connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.pop(0)

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake."""
        if self.transport is not None:
            self.transport.abort()

    async def close(self, timeout: float = 2.0) -> None:
        """Close handshake (best effort), then the socket."""
        if self.transport is None:
            return
        if not self.transport.is_closing():
            self._write(_frame(_OP_CLOSE, struct.pack("!H", 1000)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.transport.close()


async def connect(url: str, timeout: float = 10.0) -> WSConnection:
    """Open ``ws://host:port/path`` and complete the opening handshake."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError("only ws:// URLs")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(loop.create_connection(WSConnection, host, port), timeout)
    key = base64.b64encode(os.urandom(16))
    assert conn.transport is not None
    conn.transport.write(
        b"GET " + path.encode() + b" HTTP/1.1\r\n"
        b"Host: " + f"{host}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert conn._handshake is not None
    head = await asyncio.wait_for(conn._handshake, timeout)
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        conn.abort()
        raise WSClosed(f"upgrade refused: {status.decode(errors='replace')}")
    expected = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    if expected not in head:
        conn.abort()
        raise WSClosed("bad Sec-WebSocket-Accept")
    # Frames that came in the same segment as the response are still in the buffer.
    if conn._buf:
        conn.data_received(b"")
    return conn
