"""RFC 6455 frame layer: a cheap stand-in for the part of wsproto's ``Connection`` we use.

After the opening handshake our WebSocket transport only needs wsproto's frame layer
(:class:`wsproto.connection.Connection`): turn received bytes into events and events
into bytes. :class:`FrameConnection` does the same job with the same inputs, outputs,
states and error reports, but runs for every frame of thousands of mostly idle
connections, so it is built to be small and quick instead of general (no extensions).

Theory of operation
-------------------

*Receiving.* ``receive_data`` only stores bytes: while nothing is pending the caller's
``bytes`` object itself is the buffer (no copy); leftovers are joined to the next chunk.
``events()`` parses everything the buffer holds in one pass over an offset, with the
parser's state in local variables, and keeps at the end only the unparsed tail, which is
always short: part of a header (at most 13 bytes) or part of a control frame's payload
(at most 124 bytes), because the payload of a data frame is handed out as soon as any
of it arrives (``frame_finished=False``, as wsproto does), so a huge frame is never
buffered (unless the caller feeds it without calling ``events()``). An idle
connection's buffer is the shared empty ``bytes``; an idle connection holds no other
object of its own.

A whole, unfragmented, masked (server role) or unmasked (client role) text frame of
less than 64 KiB, the overwhelming majority of ARCP traffic, takes a fast path: a test
of the first two header bytes (and the 16-bit length), one XOR of two big integers to
unmask (RFC 6455 §5.3), ``bytes.decode`` and one ``TextMessage``. Everything else goes
through the general path, which applies wsproto's checks in wsproto's order, so an
error is reported after the same byte as wsproto reports it: opcode, control-frame FIN,
control-frame length (§5.5), extended length (§5.2), RSV bits, mask bit, masking key;
then, once the first payload byte (or an empty payload) is there, the message-level
rules (§5.4) and UTF-8 (§8.1); close frames' codes and reasons last (§5.5.1, §7.4).

A violation ends parsing for good, like wsproto's ``ParseFailed``: ``events()`` reports
one ``CloseConnection`` with code 1002 or 1007 and wsproto's reason text, the state does
not change, the buffer is dropped and later data is ignored. A close frame also ends
parsing for good, after moving the state to ``REMOTE_CLOSING`` (or ``CLOSED`` when we
had closed first). A ``None`` chunk (end of stream) queues ``CloseConnection(1006)`` and
moves to ``CLOSED``; like wsproto, bytes already buffered are still parsed afterwards.

A text message split over several frames or deliveries is decoded with an incremental
UTF-8 decoder that exists only while such a message is in progress; a whole text
message in one delivery uses ``bytes.decode``. Both raise on the same bytes.

*Sending.* ``send`` builds the frame with ``bytes`` arithmetic. The server role's output
is byte-for-byte wsproto's; the client role masks every frame with a fresh
``os.urandom(4)`` key (RFC 6455 §5.3). Fragmentation, close-code normalisation and the
``LocalProtocolError`` / ``TypeError`` / ``ValueError`` cases follow wsproto exactly.
"""

from __future__ import annotations

import os
import struct
from codecs import getincrementaldecoder
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.frame_protocol import LOCAL_ONLY_CLOSE_REASONS, CloseReason, Opcode
from wsproto.utilities import LocalProtocolError

if TYPE_CHECKING:
    from codecs import IncrementalDecoder
    from collections.abc import Iterable

    from wsproto.events import Event

__all__ = ["FrameConnection", "PartialText", "server_text_frame", "server_text_frames"]

_OPEN: Final = ConnectionState.OPEN
_LOCAL_CLOSING: Final = ConnectionState.LOCAL_CLOSING
_REMOTE_CLOSING: Final = ConnectionState.REMOTE_CLOSING
_CLOSED: Final = ConnectionState.CLOSED

# RFC 6455 §5.2: opcodes 0x0 (continuation), 0x1 (text), 0x2 (binary), 0x8 (close),
# 0x9 (ping), 0xA (pong); bit n set when opcode n is defined, the rest are reserved.
_DEFINED_OPCODES: Final = 0b0000_0111_0000_0111

# RFC 6455 §7.4.1: the codes wsproto knows, as wsproto reports them (enum members).
_KNOWN_CLOSE_CODES: Final[dict[int, CloseReason]] = {int(r): r for r in CloseReason}

_PROTOCOL_ERROR: Final = CloseReason.PROTOCOL_ERROR
_INVALID_PAYLOAD: Final = CloseReason.INVALID_FRAME_PAYLOAD_DATA

_utf8_decoder: Final = getincrementaldecoder("utf-8")
_pack_code: Final = struct.Struct("!H").pack
_urandom: Final = os.urandom


@dataclass(frozen=True)
class PartialText(TextMessage):
    """The readable start of a text message that breaks UTF-8 (RFC 6455 §8.1), just
    before its ``CloseConnection(1007)``: wsproto drops it; the transport reads the
    message's ARCP id from it, so the refusal can be correlated. Its ``data`` is what
    decoded before the first bad byte (of this delivery)."""


class _ParseError(Exception):
    """The peer broke the protocol; becomes ``CloseConnection(code, reason)``."""

    def __init__(self, reason: str, code: CloseReason = _PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.code = code


def _unmask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated from its first byte (RFC 6455 §5.3)."""
    n = len(data)
    if not n:
        return data
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


def _frame_header(first: int, size: int, mask_bit: int) -> bytes:
    """FIN/RSV/opcode byte and the minimal payload length encoding (RFC 6455 §5.2)."""
    if size < 126:
        return bytes((first, size | mask_bit))
    if first & 0x08:
        # RFC 6455 §5.5: control frames carry at most 125 bytes.
        raise ValueError("payload too long for control frame")
    if size < 65536:
        return bytes((first, 126 | mask_bit)) + size.to_bytes(2, "big")
    return bytes((first, 127 | mask_bit)) + size.to_bytes(8, "big")


def _truncate_utf8(data: bytes, nbytes: int) -> bytes:
    """Cut ``data`` to at most ``nbytes`` without splitting a UTF-8 sequence (wsproto's)."""
    if len(data) <= nbytes:
        return data
    return data[:nbytes].decode("utf-8", errors="ignore").encode("utf-8")


def server_text_frame(text: str) -> bytes:
    """One unmasked, unfragmented text frame (``server_text_frames`` of one message)."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126, size >> 8, size & 0xFF)) + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def server_text_frames(messages: Iterable[str]) -> bytes:
    """Unmasked, unfragmented text frames, byte-identical to wsproto's server output.

    Only valid where the server may send data (state ``OPEN``, no message in progress),
    since it updates no connection state.
    """
    parts: list[bytes] = []
    append = parts.append
    for text in messages:
        payload = text.encode("utf-8")
        size = len(payload)
        if size < 126:
            append(bytes((0x81, size)))
        elif size < 65536:
            append(b"\x81\x7e" + size.to_bytes(2, "big"))
        else:
            append(b"\x81\x7f" + size.to_bytes(8, "big"))
        append(payload)
    return b"".join(parts)


def _whole_text_frame(buf: bytes, pos: int, end: int, client: bool) -> tuple[str, int] | None:
    """The fast path: a whole single-frame text message at ``buf[pos:end]``.

    Fewer than 65536 bytes, masked if and only if we are the server, with the
    minimal length encoding (RFC 6455 §5.2). Returns the text and where the frame
    ends, or None for anything else (the general path decides).

    Raises:
        UnicodeDecodeError: the text is not UTF-8 (RFC 6455 §8.1: close with 1007).
    """
    if end - pos < 2 or buf[pos] != 0x81:
        return None
    b1 = buf[pos + 1]
    masked = b1 >= 0x80
    if masked == client:
        return None
    size = b1 & 0x7F
    start = pos + 2
    if size == 126 and end - pos >= 4:
        size = (buf[start] << 8) | buf[pos + 3]
        start = pos + 4
        if size < 126:
            return None
    elif size >= 126:
        return None
    if masked:
        start += 4
    stop = start + size
    if stop > end:
        return None
    if masked and size:
        # RFC 6455 §5.3: unmask; §8.1: text is UTF-8.
        mask = (buf[start - 4 : start] * ((size >> 2) + 1))[:size]
        payload = (
            int.from_bytes(buf[start:stop], "little") ^ int.from_bytes(mask, "little")
        ).to_bytes(size, "little")
        return payload.decode(), stop
    return buf[start:stop].decode(), stop


class FrameConnection:
    """The frame layer of an open WebSocket connection (wsproto-compatible subset).

    Args:
        client: ``True`` for the client role (incoming frames must be unmasked,
            outgoing ones are masked), ``False`` for the server role (the reverse).
        trailing_data: bytes received after the opening handshake, not yet parsed.
    """

    __slots__ = (
        "_buf",
        "_dec",
        "_fin",
        "_fop",
        "_key",
        "_left",
        "_msg",
        "_out",
        "_pending",
        "_state",
        "client",
    )

    def __init__(self, client: bool, trailing_data: bytes = b"") -> None:
        self.client = client
        self._state = _OPEN
        # Unparsed received bytes; None once parsing has stopped for good.
        self._buf: bytes | bytearray | None = b""
        # Events queued by receive_data(None), reported before anything parsed.
        self._pending: list[Event] | None = None
        # The frame whose header has been parsed: its effective opcode (-1: none; 0
        # after its first payload delivery), payload bytes still to come, FIN bit and
        # masking key rotated to the next payload byte (None when unmasked).
        self._fop = -1
        self._left = 0
        self._fin = False
        self._key: bytes | None = None
        # The message in progress (0: none, 1: text, 2: binary) and, for a text message
        # split across frames or deliveries, its UTF-8 decoder.
        self._msg = 0
        self._dec: IncrementalDecoder | None = None
        # The opcode of the message being sent in fragments (None: none).
        self._out: int | None = None
        self.receive_data(trailing_data)

    @property
    def state(self) -> ConnectionState:
        """``OPEN``, ``LOCAL_CLOSING``, ``REMOTE_CLOSING`` or ``CLOSED``, as wsproto."""
        return self._state

    # == sending ==========================================================================

    def send(self, event: Event) -> bytes:
        """The bytes of ``event`` (a message, ping, pong or close), as wsproto's ``send``.

        Raises:
            LocalProtocolError: the event cannot be sent in the current state.
            TypeError: message data is neither bytes nor str, or its type differs from
                the fragmented message in progress; or a close reason without a code.
            ValueError: a ping or pong payload over 125 bytes.
        """
        state = self._state
        if isinstance(event, Message) and state is _OPEN:
            return self._send_data(event.data, event.message_finished)
        if isinstance(event, Ping) and state is _OPEN:
            return self._frame(0x89, bytes(event.payload))
        if isinstance(event, Pong) and state is _OPEN:
            return self._frame(0x8A, bytes(event.payload))
        if isinstance(event, CloseConnection) and (state is _OPEN or state is _REMOTE_CLOSING):
            data = self._frame(0x88, _close_payload(event.code, event.reason))
            self._state = _CLOSED if state is _REMOTE_CLOSING else _LOCAL_CLOSING
            return data
        raise LocalProtocolError(f"Event {event} cannot be sent in state {state}.")

    def _send_data(self, payload: bytes | bytearray | memoryview | str, fin: bool) -> bytes:
        # RFC 6455 §5.4: the first frame of a message carries its opcode, the others
        # are continuation frames; FIN marks the last.
        if isinstance(payload, bytes | bytearray | memoryview):
            opcode = 0x2
            data = payload if type(payload) is bytes else bytes(payload)
        elif isinstance(payload, str):
            opcode = 0x1
            data = payload.encode("utf-8")
        else:
            raise TypeError("Must provide bytes or text")
        current = self._out
        if current is None:
            self._out = opcode
        elif current != opcode:
            raise TypeError("Data type mismatch inside message")
        else:
            opcode = 0x0
        if fin:
            self._out = None
            opcode |= 0x80
        return self._frame(opcode, data)

    def _frame(self, first: int, payload: bytes) -> bytes:
        if not self.client:
            return _frame_header(first, len(payload), 0) + payload
        # RFC 6455 §5.3: a client masks every frame with a fresh, unpredictable key.
        key = _urandom(4)
        return _frame_header(first, len(payload), 0x80) + key + _unmask(payload, key)

    # == receiving ========================================================================

    def receive_data(self, data: bytes | None) -> None:
        """Buffer bytes from the peer; ``None`` means the stream ended (wsproto's rules).

        Raises:
            LocalProtocolError: bytes after the connection was closed.
        """
        if data is None:
            # RFC 6455 §7.1.5: closed without a close frame -> close code 1006.
            event = CloseConnection(code=CloseReason.ABNORMAL_CLOSURE)
            if self._pending is None:
                self._pending = [event]
            else:
                self._pending.append(event)
            self._state = _CLOSED
            return
        state = self._state
        if state is _OPEN or state is _LOCAL_CLOSING:
            buf = self._buf
            if buf is None or not data:
                return
            if not buf:
                self._buf = data if type(data) is bytes else bytes(data)
            elif type(buf) is bytearray:
                buf += data
            elif len(buf) < 4096:
                self._buf = buf + data
            else:
                # Fed repeatedly without events(): grow in place, not quadratically.
                grown = bytearray(buf)
                grown += data
                self._buf = grown
        elif state is _CLOSED:
            raise LocalProtocolError("Connection already closed.")
        # REMOTE_CLOSING: ignored, as wsproto does.

    def receive_text(self, data: bytes) -> str | None:
        """``data`` as one text message, when it is exactly one whole text frame.

        The shortcut for the common case (a heartbeat pong, a request): nothing
        buffered or in progress, and ``data`` is one complete single-frame text
        message of fewer than 64 KiB, which the general path would deliver as one
        ``TextMessage``. Returns
        its text; or None, with nothing taken, for anything else (and for text that
        is not UTF-8), which the caller then hands to ``receive_data``.
        """
        if (
            self._buf != b""
            or self._pending is not None
            or self._fop >= 0
            or self._msg
            or not (self._state is _OPEN or self._state is _LOCAL_CLOSING)
        ):
            return None
        try:
            whole = _whole_text_frame(data, 0, len(data), self.client)
        except UnicodeDecodeError:
            return None  # the general path closes with 1007
        if whole is None or whole[1] != len(data):
            return None
        return whole[0]

    def events(self) -> list[Event]:
        """Every event the buffered bytes make up now, as wsproto's ``events()``."""
        out = self._pending
        if out is None:
            out = []
        else:
            self._pending = None
        buf = self._buf
        if not buf:
            return out
        if type(buf) is not bytes:
            buf = bytes(buf)
        client = self.client
        end = len(buf)
        pos = 0
        fop = self._fop
        left = self._left
        fin = self._fin
        key = self._key
        msg = self._msg
        dec = self._dec
        try:
            while True:
                if fop < 0:
                    # == a new frame header (RFC 6455 §5.2) ==
                    avail = end - pos
                    if avail < 2:
                        break
                    b0 = buf[pos]
                    b1 = buf[pos + 1]
                    if b0 == 0x81 and not msg:
                        whole = _whole_text_frame(buf, pos, end, client)
                        if whole is not None:
                            out.append(TextMessage(whole[0]))
                            pos = whole[1]
                            continue
                    opcode = b0 & 0x0F
                    if not (_DEFINED_OPCODES >> opcode) & 1:
                        raise _ParseError(f"Invalid opcode {opcode:#x}")
                    fin = b0 >= 0x80
                    # RFC 6455 §5.5: control frames are never fragmented...
                    if opcode >= 0x8 and not fin:
                        raise _ParseError("Invalid attempt to fragment control frame")
                    size = b1 & 0x7F
                    # ... and carry at most 125 bytes.
                    if opcode >= 0x8 and size > 125:
                        raise _ParseError("Control frame with payload len > 125")
                    start = pos + 2
                    # RFC 6455 §5.2: "the minimal number of bytes MUST be used to
                    # encode the length", and the 64-bit length's MSB MUST be 0.
                    if size == 126:
                        if avail < 4:
                            break
                        size = int.from_bytes(buf[start : start + 2], "big")
                        start += 2
                        if size <= 125:
                            raise _ParseError(
                                "Payload length used 2 bytes when 1 would have sufficed"
                            )
                    elif size == 127:
                        if avail < 10:
                            break
                        size = int.from_bytes(buf[start : start + 8], "big")
                        start += 8
                        if size <= 65535:
                            raise _ParseError(
                                "Payload length used 8 bytes when 2 would have sufficed"
                            )
                        if size >> 63:
                            raise _ParseError("8-byte payload length with non-zero MSB")
                    # RFC 6455 §5.2: RSV1-3 MUST be 0 without a negotiated extension.
                    if b0 & 0x70:
                        raise _ParseError("Reserved bit set unexpectedly")
                    # RFC 6455 §5.1/§5.3: clients mask every frame, servers none.
                    if b1 & 0x80:
                        if client:
                            raise _ParseError("client received unexpected masked frame")
                        if end - start < 4:
                            break
                        key = buf[start : start + 4]
                        start += 4
                    else:
                        if not client:
                            raise _ParseError("server received unexpected unmasked frame")
                        key = None
                    pos = start
                    fop = opcode
                    left = size

                # == the payload of the current frame ==
                avail = end - pos
                if fop >= 0x8:
                    # A control frame (RFC 6455 §5.5) is handled only whole.
                    if avail < left:
                        break
                    stop = pos + left
                    payload = buf[pos:stop]
                    pos = stop
                    if key is not None:
                        payload = _unmask(payload, key)
                    if fop == 0x9:
                        out.append(Ping(payload))
                    elif fop == 0xA:
                        out.append(Pong(payload))
                    else:
                        out.append(self._closed_by_peer(payload))
                        self._stop()
                        return out
                    fop = -1
                    key = None
                    continue
                if not avail and left:
                    break
                take = left if avail >= left else avail
                stop = pos + take
                chunk = buf[pos:stop]
                pos = stop
                left -= take
                if key is not None and take:
                    chunk = _unmask(chunk, key)
                    if left:
                        # RFC 6455 §5.3: the key continues where this chunk stopped.
                        turn = take & 3
                        key = key[turn:] + key[:turn]
                frame_done = not left
                done = frame_done and fin
                # RFC 6455 §5.4: a message is one TEXT or BINARY frame followed by
                # CONTINUATION frames, the last with FIN; they never interleave.
                if not msg:
                    if not fop:
                        raise _ParseError("unexpected CONTINUATION")
                    msg = fop
                elif fop:
                    raise _ParseError(f"expected CONTINUATION, got {Opcode(fop)!r}")
                if msg == 0x1:
                    # RFC 6455 §8.1: text is UTF-8, checked as it arrives.
                    if fop and done:
                        text = chunk.decode()
                    else:
                        if fop:
                            dec = _utf8_decoder()
                        assert dec is not None
                        text = dec.decode(chunk, done)
                    out.append(TextMessage(text, frame_done, done))
                else:
                    out.append(BytesMessage(chunk, frame_done, done))
                if done:
                    msg = 0
                    dec = None
                if frame_done:
                    fop = -1
                    key = None
                else:
                    fop = 0
        except _ParseError as exc:
            out.append(CloseConnection(code=exc.code, reason=str(exc)))
            self._stop()
            return out
        except UnicodeDecodeError as exc:
            readable = bytes(exc.object[: exc.start]).decode("utf-8", "ignore")
            if readable:
                out.append(PartialText(readable, frame_finished=False, message_finished=False))
            out.append(CloseConnection(code=_INVALID_PAYLOAD, reason=str(exc)))
            self._stop()
            return out
        self._buf = buf[pos:] if pos < end else b""
        self._fop = fop
        self._left = left
        self._fin = fin
        self._key = key
        self._msg = msg
        self._dec = dec
        return out

    def _closed_by_peer(self, payload: bytes) -> CloseConnection:
        """The close frame's event (RFC 6455 §5.5.1, §7.4); moves the state on."""
        if not payload:
            # RFC 6455 §7.1.5: no status code -> 1005.
            code: int = CloseReason.NO_STATUS_RCVD
            reason = ""
        elif len(payload) == 1:
            raise _ParseError("CLOSE with 1 byte payload")
        else:
            raw = int.from_bytes(payload[:2], "big")
            # RFC 6455 §7.4.2: below 1000 unused; 5000 and up undefined.
            if raw < 1000 or raw > 4999:
                raise _ParseError("CLOSE with invalid code")
            known = _KNOWN_CLOSE_CODES.get(raw)
            # RFC 6455 §7.4.1: 1005, 1006 and 1015 must never be sent.
            if known in LOCAL_ONLY_CLOSE_REASONS:
                raise _ParseError("remote CLOSE with local-only reason")
            # RFC 6455 §7.4.2: 1000-2999 are reserved for defined codes.
            if known is None and raw <= 2999:
                raise _ParseError("CLOSE with unknown reserved code")
            code = raw if known is None else known
            try:
                # RFC 6455 §5.5.1: the reason is UTF-8.
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _ParseError(
                    "Error decoding CLOSE reason: " + str(exc), _INVALID_PAYLOAD
                ) from None
        self._state = _CLOSED if self._state is _LOCAL_CLOSING else _REMOTE_CLOSING
        return CloseConnection(code=code, reason=reason)

    def _stop(self) -> None:
        """Parsing is over for good (close frame or violation): free everything."""
        self._buf = None
        self._fop = -1
        self._left = 0
        self._key = None
        self._msg = 0
        self._dec = None


def _close_payload(code: int | None, reason: str | None) -> bytes:
    """A close frame's payload, normalised exactly as wsproto's ``FrameProtocol.close``."""
    # wsproto tests identity here: only the enum member means "send no status code".
    if code is CloseReason.NO_STATUS_RCVD:
        code = None
    if code is None:
        if reason:
            raise TypeError("cannot specify a reason without a code")
        return b""
    # RFC 6455 §7.4.1: 1005, 1006 and 1015 are local-only; wsproto sends 1000 instead.
    if code in LOCAL_ONLY_CLOSE_REASONS:
        code = CloseReason.NORMAL_CLOSURE
    payload = _pack_code(code)
    if reason is not None:
        # RFC 6455 §5.5: 125 bytes at most, 2 of them the code.
        payload += _truncate_utf8(reason.encode("utf-8"), 123)
    return payload
