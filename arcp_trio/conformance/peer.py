"""A raw ARCP peer for the conformance checker: frames as JSON dicts over one WebSocket.

The checker does not use ``arcp_trio.client``: it must send exactly the frame a
requirement is about (a resume in one dialect, a malformed envelope, a silence), and
read exactly what comes back, without a client smoothing anything over. Frames are
parsed with ``json.loads`` only, never validated by our codec, so that a runtime's
divergent shapes are observed rather than rejected.

A ``Peer`` is used by one task at a time. ``drop()`` ends the TCP connection with a
reset (no WebSocket close, no ARCP goodbye): the way a network failure looks to the
runtime.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import urllib.parse
from typing import TYPE_CHECKING, Any

import trio

from ..transport.base import TransportError
from ..transport.websocket import WebSocketTransport, websocket_client_handshake
from ..wire.codec import dumps
from ..wire.ids import new_ulid
from ..wire.timestamps import format_timestamp, system_wall_clock

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["SPEC_FEATURES", "Frame", "Peer", "PeerClosed", "is_terminal", "payload"]

Frame = dict[str, Any]

#: Every feature flag §6.2 lists, plus arcp_trio's opt-in for the spec's exact frame
#: shapes (runtimes that do not know it ignore it: §6.2 negotiates the intersection).
SPEC_FEATURES: tuple[str, ...] = (
    "heartbeat",
    "ack",
    "list_jobs",
    "subscribe",
    "lease_expires_at",
    "cost.budget",
    "model.use",
    "provisioned_credentials",
    "progress",
    "result_chunk",
    "agent_versions",
    "x-vendor.arcp-trio.spec-shapes",
)

_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a TCP reset


class PeerClosed(Exception):
    """The runtime closed the connection (or the network failed) while we waited."""


class Peer:
    """One connection to the runtime under test, driven frame by frame."""

    def __init__(self, transport: WebSocketTransport, tcp: trio.SocketStream, label: str) -> None:
        self._transport = transport
        self._tcp = tcp
        self.label = label
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.welcome: Frame | None = None
        #: Every frame received, in order (pings included).
        self.received: list[Frame] = []
        #: Frames set aside by ``recv_type``; ``recv`` returns them first.
        self.backlog: list[Frame] = []
        self.answer_pings = True
        self.closed = False

    @classmethod
    async def connect(cls, url: str, *, label: str = "peer", within: float = 10) -> Peer:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        with trio.fail_after(within):
            tcp = await trio.open_tcp_stream(parts.hostname, port)
            stream: trio.abc.Stream = tcp
            try:
                if secure:
                    stream = trio.SSLStream(
                        tcp, ssl.create_default_context(), server_hostname=parts.hostname
                    )
                transport = await websocket_client_handshake(
                    stream, host=host_header, resource=resource, description=f"conformance {label}"
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return cls(transport, tcp, label)

    # -- sending ------------------------------------------------------------------------

    async def send(self, type_: str, payload: dict[str, Any] | None = None, **envelope: Any) -> str:
        """Send one frame; returns its envelope id. ``session_id`` is added when known."""
        frame_id = envelope.pop("id", None) or new_ulid()
        frame: Frame = {"arcp": "1.1", "id": frame_id, "type": type_}
        if self.session_id is not None:
            frame["session_id"] = self.session_id
        frame.update(envelope)
        frame["payload"] = {} if payload is None else payload
        await self.send_text(dumps(frame))
        return str(frame_id)

    async def send_text(self, text: str) -> None:
        try:
            await self._transport.send_message(text)
        except TransportError as exc:
            self.closed = True
            raise PeerClosed(str(exc)) from None

    # -- receiving ----------------------------------------------------------------------

    async def _read(self, within: float) -> Frame:
        with trio.fail_after(within):
            while True:
                try:
                    text = await self._transport.receive_message()
                except TransportError as exc:
                    self.closed = True
                    raise PeerClosed(str(exc)) from None
                try:
                    frame = json.loads(text)
                except ValueError:
                    frame = {"type": "<not json>", "raw": text}
                if not isinstance(frame, dict):
                    frame = {"type": "<not an object>", "raw": frame}
                self.received.append(frame)
                if frame.get("type") == "session.ping" and self.answer_pings:
                    nonce = (frame.get("payload") or {}).get("nonce")
                    await self.send(
                        "session.pong",
                        {
                            "ping_nonce": nonce,
                            "received_at": format_timestamp(system_wall_clock()),
                        },
                    )
                return frame

    async def recv(self, within: float = 10) -> Frame:
        """The next frame (set-aside frames first). Raises ``trio.TooSlowError``."""
        if self.backlog:
            return self.backlog.pop(0)
        return await self._read(within)

    async def recv_type(self, *types: str, within: float = 10) -> Frame:
        """The next frame of one of ``types``; others are set aside (pings dropped)."""
        for index, frame in enumerate(self.backlog):
            if frame.get("type") in types:
                return self.backlog.pop(index)
        with trio.fail_after(within):
            while True:
                frame = await self._read(within)
                if frame.get("type") in types:
                    return frame
                if frame.get("type") != "session.ping":
                    self.backlog.append(frame)

    async def recv_until(
        self, predicate: Callable[[Frame], bool], within: float = 10
    ) -> list[Frame]:
        """Frames (pings excluded) up to and including the first that matches."""
        frames: list[Frame] = []
        with trio.fail_after(within):
            while True:
                frame = await self.recv(within)
                if frame.get("type") == "session.ping":
                    continue
                frames.append(frame)
                if predicate(frame):
                    return frames

    async def recv_terminal(self, job_id: str, within: float = 10) -> list[Frame]:
        """Frames up to and including ``job_id``'s ``job.result``/``job.error``."""
        return await self.recv_until(lambda f: is_terminal(f, job_id), within)

    async def quiet(self, seconds: float) -> list[Frame]:
        """Everything (pings excluded) that arrives within ``seconds``."""
        frames: list[Frame] = []
        with trio.move_on_after(seconds):
            while True:
                frame = await self.recv(seconds + 1)
                if frame.get("type") != "session.ping":
                    frames.append(frame)
        return frames

    # -- the protocol -------------------------------------------------------------------

    async def hello(
        self,
        token: str,
        *,
        features: Sequence[str] = SPEC_FEATURES,
        resume: dict[str, Any] | None = None,
        within: float = 10,
        **extra: Any,
    ) -> Frame:
        """``session.hello``; returns the reply (``session.welcome`` or an error)."""
        payload: dict[str, Any] = {
            "client": {"name": "arcp-trio-conformance", "version": "1"},
            "auth": {"scheme": "bearer", "token": token},
            "capabilities": {"encodings": ["json"], "features": list(features)},
            **extra,
        }
        if resume is not None:
            payload["resume"] = resume
        await self.send("session.hello", payload)
        return self._welcomed(await self.recv(within))

    async def resume_message(
        self, token: str | None, resume_token: str, session_id: str, last_event_seq: int
    ) -> Frame:
        """§6.3's ``session.resume`` as the first frame."""
        payload: dict[str, Any] = {
            "session_id": session_id,
            "resume_token": resume_token,
            "last_event_seq": last_event_seq,
        }
        if token is not None:
            payload["auth"] = {"scheme": "bearer", "token": token}
        await self.send("session.resume", payload)
        return self._welcomed(await self.recv())

    def _welcomed(self, reply: Frame) -> Frame:
        if reply.get("type") == "session.welcome":
            payload = reply.get("payload") or {}
            self.session_id = reply.get("session_id") or payload.get("session_id")
            self.resume_token = payload.get("resume_token")
            self.welcome = reply
        return reply

    async def submit(self, agent: str, input_: Any = None, **payload: Any) -> Frame:
        """``job.submit``; returns its ``job.accepted`` or the error that answered it."""
        body: dict[str, Any] = {"agent": agent, **payload}
        if input_ is not None:
            body["input"] = input_
        request_id = await self.send("job.submit", body)
        reply = await self.recv_type("job.accepted", "session.error", "job.error")
        reply.setdefault("_request_id", request_id)
        return reply

    # -- ending -------------------------------------------------------------------------

    async def drop(self) -> None:
        """End the connection with a TCP reset: no close frame, no goodbye."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self._tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
        await trio.aclose_forcefully(self._tcp)

    async def aclose(self) -> None:
        """Close politely at the WebSocket level (bounded, never raises)."""
        self.closed = True
        await self._transport.aclose()


def is_terminal(frame: Frame, job_id: str | None = None) -> bool:
    return frame.get("type") in ("job.result", "job.error") and (
        job_id is None or frame.get("job_id") == job_id
    )


def payload(frame: Frame) -> dict[str, Any]:
    body = frame.get("payload")
    return body if isinstance(body, dict) else {}
