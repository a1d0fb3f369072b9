"""Carriers of ARCP frames: WebSocket, NDJSON over streams (stdio), in-memory.

Every transport implements :class:`Transport`; see ``base`` for the error tree.
Layering: this package depends only on ``arcp_trio.wire``, trio and wsproto.
"""

from __future__ import annotations

from arcp_trio.transport.base import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE
from arcp_trio.transport.base import MessageTooLarge as MessageTooLarge
from arcp_trio.transport.base import Transport as Transport
from arcp_trio.transport.base import TransportBroken as TransportBroken
from arcp_trio.transport.base import TransportClosed as TransportClosed
from arcp_trio.transport.base import TransportError as TransportError
from arcp_trio.transport.memory import MemoryTransport as MemoryTransport
from arcp_trio.transport.memory import memory_transport_pair as memory_transport_pair
from arcp_trio.transport.stdio import StreamTransport as StreamTransport
from arcp_trio.transport.stdio import open_stdio_transport as open_stdio_transport
from arcp_trio.transport.websocket import WebSocketServerInfo as WebSocketServerInfo
from arcp_trio.transport.websocket import WebSocketTransport as WebSocketTransport
from arcp_trio.transport.websocket import connect_websocket as connect_websocket
from arcp_trio.transport.websocket import (
    serve_websocket_transport as serve_websocket_transport,
)
from arcp_trio.transport.websocket import (
    websocket_client_handshake as websocket_client_handshake,
)
from arcp_trio.transport.websocket import (
    websocket_server_handshake as websocket_server_handshake,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MemoryTransport",
    "MessageTooLarge",
    "StreamTransport",
    "Transport",
    "TransportBroken",
    "TransportClosed",
    "TransportError",
    "WebSocketServerInfo",
    "WebSocketTransport",
    "connect_websocket",
    "memory_transport_pair",
    "open_stdio_transport",
    "serve_websocket_transport",
    "websocket_client_handshake",
    "websocket_server_handshake",
]
