"""The RFC 6455 frame layer (``arcp_trio.transport.wsframes``) against wsproto.

``FrameConnection`` replaces the part of ``wsproto.connection.Connection`` the WebSocket
transport uses, so wsproto is the oracle: differential property tests feed the same byte
stream, split at random points, to both (server and client role) and compare events and
states after every chunk; sending is compared byte for byte. Targeted tests then pin
each rule of RFC 6455 (and of wsproto) on its own.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from arcp_trio.transport import wsframes
from arcp_trio.transport.wsframes import (
    FrameConnection,
    PartialText,
    server_text_frame,
    server_text_frames,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

OPEN = ConnectionState.OPEN
LOCAL_CLOSING = ConnectionState.LOCAL_CLOSING
REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
CLOSED = ConnectionState.CLOSED

KEY = b"\x37\xfa\x21\x3d"


# == building frames by hand ===============================================================


def mask(payload: bytes, key: bytes, offset: int = 0) -> bytes:
    """RFC 6455 §5.3, the slow obvious way (the oracle for our int-XOR unmasking)."""
    return bytes(b ^ key[(i + offset) % 4] for i, b in enumerate(payload))


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = None,
    length: str = "min",
) -> bytes:
    """One frame (RFC 6455 §5.2); ``length`` forces a (possibly illegal) length encoding.

    ``length``: ``min`` (legal), ``16`` / ``64`` (that many bits even when fewer would
    do; ``16`` is ignored for 64 KiB and more), ``msb`` (64 bits with the most
    significant bit set, always illegal).
    """
    size = len(payload)
    mask_bit = 0x80 if key is not None else 0
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    if length == "min" or (length == "16" and size >= 65536):
        length = "7" if size < 126 else "16" if size < 65536 else "64"
    if length == "7":
        head += bytes([mask_bit | size])
    elif length == "16":
        head += bytes([mask_bit | 126]) + size.to_bytes(2, "big")
    elif length == "64":
        head += bytes([mask_bit | 127]) + size.to_bytes(8, "big")
    else:
        head += bytes([mask_bit | 127]) + (size | 1 << 63).to_bytes(8, "big")
    if key is None:
        return head + payload
    return head + key + mask(payload, key)


def to_server(opcode: int, payload: bytes = b"", **kw: object) -> bytes:
    """A frame as a client sends it: masked."""
    return frame(opcode, payload, key=KEY, **kw)  # type: ignore[arg-type]


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def wsproto_conn(client: bool) -> Connection:
    return Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)


def feed(conn: FrameConnection, *chunks: bytes | None) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        events += conn.events()
    return events


def server(*chunks: bytes | None) -> tuple[FrameConnection, list[Event]]:
    conn = FrameConnection(client=False)
    return conn, feed(conn, *chunks)


def protocol_error(events: Sequence[Event]) -> int:
    """The code of the single CloseConnection that ends ``events``."""
    assert events, "expected a protocol error"
    last = events[-1]
    assert isinstance(last, CloseConnection)
    return last.code


# == differential property tests: receiving ================================================


@dataclass
class Spec:
    """One frame to serialise: every field can be made illegal."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    key: bytes = KEY
    length: str = "min"

    def encode(self) -> bytes:
        key = self.key if self.masked else None
        return frame(
            self.opcode, self.payload, fin=self.fin, rsv=self.rsv, key=key, length=self.length
        )


# Invalid UTF-8 (RFC 3629): stray continuation, invalid start byte, overlong encoding,
# encoded surrogate, code point above U+10FFFF, and sequences cut short.
BAD_UTF8 = [
    b"\x80",
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc3",
    b"\xe2\x82",
]
CLOSE_CODES = [0, 1, 999, *range(1000, 1017), 2999, 3000, 3999, 4000, 4999, 5000, 65535]


@st.composite
def text_bytes(draw: st.DrawFn) -> bytes:
    data = draw(st.text(max_size=60)).encode("utf-8")
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(BAD_UTF8)) + data[at:]
    return data


@st.composite
def data_payload(draw: st.DrawFn, opcode: int) -> bytes:
    big = draw(st.integers(0, 9))
    if big == 0:
        # Around the 7/16/64-bit length boundaries; ASCII so text stays valid.
        size = draw(st.sampled_from([125, 126, 127, 300, 65535, 65536]))
        return b"a" * size
    if big == 1:
        return draw(st.text(min_size=60, max_size=200)).encode("utf-8")
    return draw(text_bytes()) if opcode == 1 else draw(st.binary(max_size=80))


@st.composite
def close_frame_payload(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return b""
    if kind == 1:
        return draw(st.binary(min_size=1, max_size=1))
    if kind <= 4:
        code = draw(st.sampled_from([1000, 1001, 1003, 1008, 1011, 3000, 4000, 4999]))
        return close_payload(code, draw(st.text(max_size=30)).encode("utf-8")[:123])
    code = draw(st.sampled_from(CLOSE_CODES) | st.integers(0, 65535))
    return close_payload(code, draw(text_bytes())[:123])


def split(data: bytes, count: int, cuts: Sequence[int]) -> list[bytes]:
    """``data`` in ``count`` pieces at the given fractions (as integers)."""
    points = sorted({c % (len(data) + 1) for c in cuts[: count - 1]})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@st.composite
def control_spec(draw: st.DrawFn) -> Spec:
    opcode = draw(st.sampled_from([0x8, 0x9, 0xA, 0x9, 0xA]))
    payload = draw(close_frame_payload() if opcode == 0x8 else st.binary(max_size=20))
    return Spec(opcode, payload)


@st.composite
def frame_specs(draw: st.DrawFn) -> list[Spec]:
    """Frames as a correct peer would send them, then a few mutations."""
    specs: list[Spec] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["message"] * 6 + ["control"] * 3 + ["random"]))
        if kind == "message":
            opcode = draw(st.sampled_from([0x1, 0x2]))
            payload = draw(data_payload(opcode))
            # RFC 6455 §5.4: fragments split anywhere (UTF-8 sequences too) and
            # control frames may come between them.
            count = draw(st.integers(1, 4))
            pieces = split(payload, count, draw(st.lists(st.integers(0, 10**6), max_size=3)))
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                specs.append(Spec(opcode if i == 0 else 0x0, piece, fin=last))
                if not last and draw(st.integers(0, 3)) == 0:
                    specs.append(draw(control_spec()))
        elif kind == "control":
            specs.append(draw(control_spec()))
        else:
            opcode = draw(st.integers(0, 15))
            specs.append(Spec(opcode, draw(st.binary(max_size=130)), fin=draw(st.booleans())))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        spec = draw(st.sampled_from(specs))
        mutation = draw(
            st.sampled_from(["rsv", "fin", "opcode", "mask", "16", "64", "msb", "size", "key"])
        )
        if mutation == "rsv":
            spec.rsv = draw(st.integers(1, 7))
        elif mutation == "fin":
            spec.fin = not spec.fin
        elif mutation == "opcode":
            spec.opcode = draw(st.integers(0, 15))
        elif mutation == "mask":
            spec.masked = not spec.masked
        elif mutation in ("16", "64", "msb"):
            spec.length = mutation
        elif mutation == "size":
            spec.payload += b"x" * draw(st.sampled_from([1, 100, 126]))
        else:
            spec.key = draw(st.binary(min_size=4, max_size=4))
    return specs


@dataclass
class Run:
    """What one connection reported while being fed: per chunk, events and state."""

    events: list[list[Event]]
    states: list[ConnectionState]
    refused: list[bool]
    sent: list[bytes | str]


def drive(
    conn: Connection | FrameConnection,
    chunks: Sequence[bytes | None],
    close_at: int | None,
) -> Run:
    run = Run([], [], [], [])
    for i, chunk in enumerate(chunks):
        if i == close_at:
            try:
                run.sent.append(conn.send(CloseConnection(code=1000, reason="bye")))
            except LocalProtocolError as exc:
                run.sent.append(str(exc))
        try:
            conn.receive_data(chunk)
        except LocalProtocolError:
            run.refused.append(True)
        else:
            run.refused.append(False)
        run.events.append(list(conn.events()))
        run.states.append(conn.state)
    return run


def without_partial_text(run: Run) -> Run:
    """Our one addition to wsproto's events: the readable start of a text message
    that breaks UTF-8 (``PartialText``), always right before its 1007 close."""
    for events in run.events:
        for index, event in enumerate(events):
            if isinstance(event, PartialText):
                after = events[index + 1]
                assert isinstance(after, CloseConnection)
                assert after.code == 1007
        events[:] = [e for e in events if not isinstance(e, PartialText)]
    return run


def normalize(events: Sequence[Event]) -> list[tuple[object, ...]]:
    """Events with the chunking of data messages and error wording taken out."""
    out: list[tuple[object, ...]] = []
    kind: str | None = None
    text, data = "", b""
    for event in events:
        if isinstance(event, TextMessage | BytesMessage):
            this = "text" if isinstance(event, TextMessage) else "bytes"
            assert kind in (None, this), "message type changed mid-message"
            kind = this
            if isinstance(event, TextMessage):
                text += event.data
            else:
                data += event.data
            if event.message_finished:
                out.append((kind, text if kind == "text" else data, "finished"))
                kind, text, data = None, "", b""
        elif isinstance(event, Ping | Pong):
            out.append((type(event).__name__, bytes(event.payload)))
        else:
            assert isinstance(event, CloseConnection)
            # Protocol errors: the code is what matters, not the wording.
            wording = event.code in (1002, 1007)
            out.append(("close", int(event.code), None if wording else event.reason))
    if kind is not None:
        out.append((kind, text if kind == "text" else data, "unfinished"))
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[bool, list[bytes | None], int | None]:
    client = draw(st.booleans())
    specs = draw(frame_specs())
    if client:
        # A server's frames are unmasked: flip the default, keep the mutations.
        for spec in specs:
            spec.masked = not spec.masked
    stream = b"".join(spec.encode() for spec in specs)
    how = draw(st.sampled_from(["random", "random", "bytewise", "whole"]))
    chunks: list[bytes | None]
    if how == "bytewise" and len(stream) <= 600:
        chunks = [stream[i : i + 1] for i in range(len(stream))]
    elif how == "whole":
        chunks = [stream]
    else:
        cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
        chunks = list(split(stream, len(cuts) + 1, cuts))
    if draw(st.booleans()):
        chunks.append(None)  # end of stream
        if draw(st.booleans()):
            chunks.append(b"late")  # refused: the connection is closed
    close_at = draw(st.none() | st.integers(0, len(chunks) - 1))
    return client, chunks, close_at


@settings(max_examples=200)
@given(scenarios())
def test_receiving_matches_wsproto(scenario: tuple[bool, list[bytes | None], int | None]) -> None:
    client, chunks, close_at = scenario
    ours = without_partial_text(drive(FrameConnection(client), chunks, close_at))
    ref = drive(wsproto_conn(client), chunks, close_at)
    assert ours.states == ref.states
    assert ours.refused == ref.refused
    assert normalize([e for es in ours.events for e in es]) == normalize(
        [e for es in ref.events for e in es]
    )
    if client:
        assert [len(s) for s in ours.sent] == [len(s) for s in ref.sent]
    else:
        assert ours.sent == ref.sent


@settings(max_examples=100)
@given(scenarios())
def test_receiving_matches_wsproto_event_for_event(
    scenario: tuple[bool, list[bytes | None], int | None],
) -> None:
    """Stronger than the contract: today even chunking and error wording agree.

    If an optimisation ever changes how partial frames are chunked, relax this test;
    ``test_receiving_matches_wsproto`` states the actual contract.
    """
    client, chunks, close_at = scenario
    ours = without_partial_text(drive(FrameConnection(client), chunks, close_at))
    ref = drive(wsproto_conn(client), chunks, close_at)
    assert ours.events == ref.events
    assert ours.states == ref.states


# == differential tests: sending ===========================================================


def send_all(conn: Connection | FrameConnection, events: Sequence[Event]) -> list[object]:
    """What each send produced: bytes, or the exception's type and message."""
    out: list[object] = []
    for event in events:
        try:
            out.append(conn.send(event))
        except (LocalProtocolError, TypeError, ValueError, struct.error) as exc:
            out.append((type(exc).__name__, str(exc)))
        out.append(conn.state)
    return out


SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("size", SIZES)
def test_send_text_matches_wsproto_byte_for_byte(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)  # exactly `size` bytes of UTF-8
    assert len(text.encode()) == size
    event = TextMessage(data=text)
    assert FrameConnection(False).send(event) == wsproto_conn(False).send(event)


@pytest.mark.parametrize("size", SIZES)
def test_send_bytes_matches_wsproto_byte_for_byte(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for data in (payload, bytearray(payload), memoryview(payload)):
        event = BytesMessage(data=data)  # type: ignore[arg-type]  # memoryview too
        assert FrameConnection(False).send(event) == wsproto_conn(False).send(event)


FRAGMENTED: list[list[Event]] = [
    [
        TextMessage("a", message_finished=False),
        TextMessage("b", message_finished=False),
        TextMessage("c" * 200),
    ],
    [BytesMessage(b"x", message_finished=False), Ping(b"p"), BytesMessage(b"y")],
    # Mixing types inside a message: TypeError, the message stays open.
    [TextMessage("a", message_finished=False), BytesMessage(b"b"), TextMessage("c")],
    [BytesMessage(b"a", message_finished=False), TextMessage("b"), BytesMessage(b"")],
    # The type comes from the data, not the event class (wsproto's rule).
    [TextMessage(b"raw"), BytesMessage("text")],  # type: ignore[arg-type]
    [TextMessage(123)],  # type: ignore[arg-type]
]


@pytest.mark.parametrize("events", FRAGMENTED)
def test_send_fragmented_messages_matches_wsproto(events: list[Event]) -> None:
    assert send_all(FrameConnection(False), events) == send_all(wsproto_conn(False), events)


CONTROL: list[Event] = [
    Ping(),
    Ping(b"p" * 125),
    Ping(b"p" * 126),
    Pong(),
    Pong(b"q" * 125),
    Pong(bytearray(b"q" * 126)),  # type: ignore[arg-type]
    CloseConnection(code=1000),
    CloseConnection(code=1000, reason=""),
    CloseConnection(code=1001, reason="going away"),
    CloseConnection(code=CloseReason.NO_STATUS_RCVD),
    CloseConnection(code=CloseReason.NO_STATUS_RCVD, reason="why"),
    CloseConnection(code=1005),  # a plain int is not the enum member: sent as 1000
    CloseConnection(code=1006, reason="local only"),
    CloseConnection(code=1015),
    CloseConnection(code=3000, reason="x" * 200),
    CloseConnection(code=4000, reason="é" * 100),  # 123-byte cut inside a character
    CloseConnection(code=4999, reason="€" * 60),
    CloseConnection(code=4000, reason="€" * 41),  # exactly 123 bytes
    CloseConnection(code=1000, reason=None),
    CloseConnection(code=None, reason=None),  # type: ignore[arg-type]
    CloseConnection(code=None, reason="x"),  # type: ignore[arg-type]
    CloseConnection(code=70000),
]


@pytest.mark.parametrize("event", CONTROL, ids=repr)
def test_send_control_matches_wsproto(event: Event) -> None:
    # Each in OPEN, then again (LOCAL_CLOSING after a close; OPEN otherwise).
    ours = send_all(FrameConnection(False), [event, event])
    ref = send_all(wsproto_conn(False), [event, event])
    assert ours == ref


EVENTS = st.one_of(
    st.builds(TextMessage, st.text(max_size=200), message_finished=st.booleans()),
    st.builds(BytesMessage, st.binary(max_size=200), message_finished=st.booleans()),
    st.builds(Ping, st.binary(max_size=130)),
    st.builds(Pong, st.binary(max_size=130)),
    st.builds(
        CloseConnection,
        st.sampled_from([1000, 1005, CloseReason.NO_STATUS_RCVD, 1006, 3000, 4999]),
        st.none() | st.text(max_size=130),
    ),
)


@settings(max_examples=200)
@given(st.lists(EVENTS, max_size=8), st.booleans())
def test_send_sequences_match_wsproto(events: list[Event], peer_closes_first: bool) -> None:
    ours, ref = FrameConnection(False), wsproto_conn(False)
    if peer_closes_first:
        closing = to_server(0x8, close_payload(1000))
        ours.receive_data(closing)
        ref.receive_data(closing)
        assert list(ours.events()) == list(ref.events())
    assert send_all(ours, events) == send_all(ref, events)


def parse_client_frame(data: bytes) -> tuple[bytes, bytes]:
    """A client frame as (the same header unmasked, payload unmasked), and its key."""
    size = data[1] & 0x7F
    start = 2 + (2 if size == 126 else 8 if size == 127 else 0)
    key = data[start : start + 4]
    header = bytes([data[0], data[1] & 0x7F]) + data[2:start]
    return header + mask(data[start + 4 :], key), key


@pytest.mark.parametrize("size", SIZES)
def test_client_frames_are_masked_with_fresh_keys(size: int) -> None:
    conn = FrameConnection(client=True)
    events: list[Event] = [TextMessage("t" * size), BytesMessage(b"b" * size)]
    if size <= 125:
        events += [Ping(b"p" * size), Pong(b"q" * size)]
    keys = []
    for event in events:
        data = conn.send(event)
        assert data[1] & 0x80, "client frames carry the mask bit"
        unmasked, key = parse_client_frame(data)
        keys.append(key)
        assert unmasked == wsproto_conn(False).send(event)
    assert len(set(keys)) == len(keys)


def test_client_frames_match_wsproto_with_the_same_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = iter([b"\x01\x02\x03\x04", b"\xaa\xbb\xcc\xdd"] * 2)
    key_for = {"ours": b"", "ref": b""}
    monkeypatch.setattr(os, "urandom", lambda n: key_for["ref"])
    monkeypatch.setattr(wsframes, "_urandom", lambda n: key_for["ours"])
    ours, ref = FrameConnection(client=True), wsproto_conn(client=True)
    for event in [TextMessage("hé" * 100), CloseConnection(code=1000, reason="bye")]:
        key_for["ours"] = key_for["ref"] = next(keys)
        assert ours.send(event) == ref.send(event)
    assert ours.state is ref.state is LOCAL_CLOSING


def test_server_text_frames_match_wsproto() -> None:
    texts = ["", "a", "é" * 62, "é" * 63, "x" * 126, "z" * 65535, "y" * 65536]
    expected = b"".join(wsproto_conn(False).send(TextMessage(t)) for t in texts)
    assert server_text_frames(texts) == expected
    assert b"".join(server_text_frame(t) for t in texts) == expected


# == receiving: framing rules ==============================================================


def test_whole_masked_text_frame() -> None:
    conn, events = server(to_server(0x1, "héllo".encode()))
    assert events == [TextMessage("héllo")]
    assert conn.state is OPEN


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 300, 65535, 65536])
def test_text_and_binary_frames_of_every_length_class(size: int) -> None:
    text = ("é" * size)[: size // 2] + "x" * (size % 2)
    data = bytes(range(256)) * (size // 256 + 1)
    _, events = server(to_server(0x1, text.encode()), to_server(0x2, data[:size]))
    assert events == [TextMessage(text), BytesMessage(data[:size])]


def test_unmasked_frames_as_client() -> None:
    conn = FrameConnection(client=True)
    events = feed(conn, frame(0x1, b"hi") + frame(0x2, b"\x00" * 200) + frame(0x9, b"p"))
    assert events == [TextMessage("hi"), BytesMessage(b"\x00" * 200), Ping(b"p")]


def test_many_frames_in_one_chunk() -> None:
    stream = b"".join(to_server(0x1, f"m{i}".encode()) for i in range(100))
    _, events = server(stream)
    assert events == [TextMessage(f"m{i}") for i in range(100)]


def test_header_split_at_every_byte() -> None:
    data = to_server(0x1, b"a" * 300) + to_server(0x9, b"ping")
    conn = FrameConnection(client=False)
    events = feed(conn, *[data[i : i + 1] for i in range(len(data))])
    assert normalize(events) == [("text", "a" * 300, "finished"), ("Ping", b"ping")]


@pytest.mark.parametrize("size", [126, 65536])
def test_extended_length_and_key_split_at_every_byte(size: int) -> None:
    data = to_server(0x2, b"\x07" * size)
    header = 2 + (2 if size < 65536 else 8) + 4
    conn = FrameConnection(client=False)
    assert feed(conn, *[data[i : i + 1] for i in range(header)]) == []
    assert feed(conn, data[header:]) == [BytesMessage(b"\x07" * size)]


def test_server_rejects_unmasked_frame() -> None:
    # RFC 6455 §5.1: "a server MUST close the connection upon receiving a frame that
    # is not masked".
    conn, events = server(frame(0x1, b"hi"))
    assert events == [
        CloseConnection(code=1002, reason="server received unexpected unmasked frame")
    ]
    assert conn.state is OPEN


def test_client_rejects_masked_frame() -> None:
    conn = FrameConnection(client=True)
    assert protocol_error(feed(conn, to_server(0x1, b"hi"))) == 1002


@pytest.mark.parametrize("rsv", range(1, 8))
def test_rsv_bits_rejected(rsv: int) -> None:
    _, events = server(to_server(0x1, b"hi", rsv=rsv))
    assert events == [CloseConnection(code=1002, reason="Reserved bit set unexpectedly")]


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_rejected(opcode: int) -> None:
    _, events = server(to_server(opcode, b"x"))
    assert events == [CloseConnection(code=1002, reason=f"Invalid opcode {opcode:#x}")]


@pytest.mark.parametrize("opcode", [0x8, 0x9, 0xA])
def test_control_frame_without_fin_rejected(opcode: int) -> None:
    assert protocol_error(server(to_server(opcode, b"", fin=False))[1]) == 1002


@pytest.mark.parametrize("opcode", [0x8, 0x9, 0xA])
@pytest.mark.parametrize("size", [126, 200, 65536])
def test_control_frame_payload_over_125_rejected(opcode: int, size: int) -> None:
    # Reported from the first two bytes, before the extended length arrives.
    data = to_server(opcode, close_payload(1000, b"x" * (size - 2)))
    assert protocol_error(server(data[:2])[1]) == 1002


def test_control_frame_payload_of_125_accepted() -> None:
    _, events = server(to_server(0x9, b"p" * 125))
    assert events == [Ping(b"p" * 125)]


@pytest.mark.parametrize("size", [0, 125])
def test_non_minimal_16_bit_length_rejected(size: int) -> None:
    assert protocol_error(server(to_server(0x2, b"x" * size, length="16"))[1]) == 1002


@pytest.mark.parametrize("size", [0, 125, 126, 65535])
def test_non_minimal_64_bit_length_rejected(size: int) -> None:
    assert protocol_error(server(to_server(0x2, b"x" * size, length="64"))[1]) == 1002


def test_64_bit_length_with_msb_rejected() -> None:
    _, events = server(to_server(0x2, b"x" * 10, length="msb"))
    assert events == [CloseConnection(code=1002, reason="8-byte payload length with non-zero MSB")]


def test_minimal_lengths_at_the_boundaries_accepted() -> None:
    _, events = server(to_server(0x2, b"x" * 126), to_server(0x2, b"y" * 65536))
    assert events == [BytesMessage(b"x" * 126), BytesMessage(b"y" * 65536)]


# == receiving: fragmentation (RFC 6455 §5.4) ==============================================


def test_fragmented_message_with_interleaved_control_frames() -> None:
    _, events = server(
        to_server(0x1, b"he", fin=False)
        + to_server(0x9, b"ping")
        + to_server(0x0, b"ll", fin=False)
        + to_server(0xA, b"pong")
        + to_server(0x0, b"o")
    )
    assert events == [
        TextMessage("he", frame_finished=True, message_finished=False),
        Ping(b"ping"),
        TextMessage("ll", frame_finished=True, message_finished=False),
        Pong(b"pong"),
        TextMessage("o", frame_finished=True, message_finished=True),
    ]


def test_empty_fragments() -> None:
    _, events = server(to_server(0x2, b"", fin=False), to_server(0x0, b"", fin=True))
    assert events == [BytesMessage(b"", message_finished=False), BytesMessage(b"")]


def test_continuation_without_message_rejected() -> None:
    _, events = server(to_server(0x0, b"orphan"))
    assert events == [CloseConnection(code=1002, reason="unexpected CONTINUATION")]


def test_new_message_inside_fragmented_message_rejected() -> None:
    _, events = server(to_server(0x1, b"a", fin=False) + to_server(0x2, b"b"))
    assert events[0] == TextMessage("a", message_finished=False)
    assert events[1:] == [
        CloseConnection(code=1002, reason="expected CONTINUATION, got <Opcode.BINARY: 2>")
    ]


def test_sequence_error_reported_with_the_first_payload_byte() -> None:
    # wsproto checks fragmentation when the frame's payload starts to arrive.
    data = to_server(0x0, b"xyz")
    conn, events = server(data[:6])
    assert events == []
    assert protocol_error(feed(conn, data[6:7])) == 1002


# == receiving: partial frames ==============================================================


def test_partial_binary_frame_delivered_as_it_arrives_with_the_mask_rotating() -> None:
    payload = bytes(range(256)) * 4
    data = to_server(0x2, payload)
    conn = FrameConnection(client=False)
    events = feed(conn, data[:3], data[3:9], data[9:14], data[14:101], data[101:])
    assert all(isinstance(e, BytesMessage) for e in events)
    messages = [e for e in events if isinstance(e, BytesMessage)]
    assert b"".join(m.data for m in messages) == payload
    # The 8-byte header ends inside the second chunk: 4 deliveries of 1, 5, 87, 931 bytes.
    assert [len(m.data) for m in messages] == [1, 5, 87, 931]
    assert [m.frame_finished for m in messages] == [False, False, False, True]
    assert [m.message_finished for m in messages] == [False, False, False, True]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7])
def test_partial_frames_reassemble_for_any_step(step: int) -> None:
    payload = "ünïcödé ✓ 𝄞 " * 20
    data = to_server(0x1, payload.encode())
    conn = FrameConnection(client=False)
    events = feed(conn, *[data[i : i + step] for i in range(0, len(data), step)])
    assert normalize(events) == [("text", payload, "finished")]


def test_partial_text_delivers_the_decodable_prefix() -> None:
    payload = "aé€".encode()  # 61 c3 a9 e2 82 ac
    data = to_server(0x1, payload)
    conn = FrameConnection(client=False)
    assert feed(conn, data[: 6 + 2]) == [
        TextMessage("a", frame_finished=False, message_finished=False)
    ]
    assert feed(conn, data[8:10]) == [
        TextMessage("é", frame_finished=False, message_finished=False)
    ]
    assert feed(conn, data[10:]) == [TextMessage("€")]


def test_control_frame_delivered_only_whole() -> None:
    data = to_server(0x9, b"0123456789")
    conn = FrameConnection(client=False)
    for i in range(len(data) - 1):
        assert feed(conn, data[i : i + 1]) == []
    assert feed(conn, data[-1:]) == [Ping(b"0123456789")]


def test_empty_data_frame_needs_no_payload() -> None:
    _, events = server(to_server(0x1, b""), to_server(0x2, b""))
    assert events == [TextMessage(""), BytesMessage(b"")]


def test_receive_data_many_times_before_events() -> None:
    stream = b"".join(to_server(0x1, b"z" * 100) for _ in range(200))
    conn = FrameConnection(client=False)
    for i in range(0, len(stream), 7):
        conn.receive_data(stream[i : i + 7])
    assert conn.events() == [TextMessage("z" * 100)] * 200


def test_caller_buffers_are_copied() -> None:
    data = bytearray(to_server(0x1, b"hello"))
    conn = FrameConnection(client=False)
    conn.receive_data(data[:4])  # type: ignore[arg-type]
    data[:] = b"\x00" * len(data)
    conn.receive_data(bytes(to_server(0x1, b"hello")[4:]))
    assert conn.events() == [TextMessage("hello")]


def test_trailing_data_is_parsed() -> None:
    conn = FrameConnection(client=False, trailing_data=to_server(0x1, b"early"))
    assert conn.events() == [TextMessage("early")]


# == receiving: UTF-8 (RFC 6455 §8.1) ======================================================


@pytest.mark.parametrize("bad", BAD_UTF8)
def test_invalid_utf8_in_whole_text_frame_is_1007(bad: bytes) -> None:
    conn, events = server(to_server(0x1, b"ok" + bad))
    assert protocol_error(events) == 1007
    assert conn.state is OPEN


def test_utf8_sequence_split_across_fragments_is_fine() -> None:
    data = "€".encode()
    _, events = server(to_server(0x1, data[:1], fin=False), to_server(0x0, data[1:]))
    assert normalize(events) == [("text", "€", "finished")]


def test_utf8_sequence_cut_at_message_end_is_1007() -> None:
    data = "€".encode()
    _, events = server(to_server(0x1, data[:1], fin=False), to_server(0x0, data[1:2]))
    assert protocol_error(events) == 1007


def test_invalid_utf8_found_in_partial_delivery_is_1007() -> None:
    data = to_server(0x1, b"abc\xffdef")
    conn = FrameConnection(client=False)
    assert feed(conn, data[:9]) == [
        TextMessage("abc", frame_finished=False, message_finished=False)
    ]
    assert protocol_error(feed(conn, data[9:])) == 1007


def test_binary_frames_are_not_decoded() -> None:
    _, events = server(to_server(0x2, b"\xff\xfe"))
    assert events == [BytesMessage(b"\xff\xfe")]


# == receiving: close frames (RFC 6455 §5.5.1, §7.4) =======================================


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"", CloseReason.NO_STATUS_RCVD, ""),
        (close_payload(1000), CloseReason.NORMAL_CLOSURE, ""),
        (close_payload(1001, b"bye"), CloseReason.GOING_AWAY, "bye"),
        (close_payload(1003, "é".encode()), CloseReason.UNSUPPORTED_DATA, "é"),
        (close_payload(1013), CloseReason.TRY_AGAIN_LATER, ""),
        (close_payload(3000, b"lib"), 3000, "lib"),
        (close_payload(4999, b"x" * 123), 4999, "x" * 123),
    ],
)
def test_valid_close_frames(payload: bytes, code: int, reason: str) -> None:
    conn, events = server(to_server(0x8, payload))
    assert events == [CloseConnection(code=code, reason=reason)]
    assert type(events[0]) is CloseConnection
    assert type(events[0].code) is type(code)  # enum members where wsproto has them
    assert conn.state is REMOTE_CLOSING


@pytest.mark.parametrize(
    "payload",
    [
        b"\x03",  # 1 byte
        close_payload(0),
        close_payload(999),
        close_payload(5000),
        close_payload(65535),
        close_payload(1005),  # local-only codes
        close_payload(1006),
        close_payload(1015),
        close_payload(1004),  # reserved codes wsproto does not know
        close_payload(1014),
        close_payload(1016),
        close_payload(2999),
    ],
)
def test_invalid_close_codes_are_1002(payload: bytes) -> None:
    conn, events = server(to_server(0x8, payload))
    assert protocol_error(events) == 1002
    assert conn.state is OPEN


def test_close_reason_not_utf8_is_1007() -> None:
    conn, events = server(to_server(0x8, close_payload(1000, b"\xc3")))
    assert protocol_error(events) == 1007
    last = events[-1]
    assert isinstance(last, CloseConnection)
    assert last.reason is not None
    assert last.reason.startswith("Error decoding CLOSE reason: ")
    assert conn.state is OPEN


# == state machine ==========================================================================


def test_peer_close_moves_open_to_remote_closing_then_our_close_to_closed() -> None:
    conn, _ = server(to_server(0x8, close_payload(1000)))
    assert conn.state is REMOTE_CLOSING
    assert conn.send(CloseConnection(code=1000)) == b"\x88\x02\x03\xe8"
    assert conn.state is CLOSED


def test_our_close_moves_to_local_closing_then_peer_close_to_closed() -> None:
    conn = FrameConnection(client=False)
    conn.send(CloseConnection(code=1001))
    assert conn.state is LOCAL_CLOSING
    # Data still arrives and is parsed while we wait for the peer's close.
    assert feed(conn, to_server(0x1, b"late")) == [TextMessage("late")]
    assert feed(conn, to_server(0x8, close_payload(1001))) == [
        CloseConnection(code=1001, reason="")
    ]
    assert conn.state is CLOSED


def test_nothing_is_parsed_after_a_close_frame() -> None:
    conn, events = server(to_server(0x8, b"") + to_server(0x1, b"after"))
    assert events == [CloseConnection(code=1005, reason="")]
    # REMOTE_CLOSING: further data is ignored, as wsproto does.
    assert feed(conn, to_server(0x1, b"more")) == []
    assert conn.state is REMOTE_CLOSING


def test_protocol_error_keeps_state_and_stops_parsing_for_good() -> None:
    conn, events = server(to_server(0x1, b"ok") + to_server(0x3) + to_server(0x1, b"x"))
    assert events[0] == TextMessage("ok")
    assert protocol_error(events) == 1002
    assert len(events) == 2
    assert conn.state is OPEN
    assert feed(conn, to_server(0x1, b"ignored"), to_server(0x8, b"")) == []
    assert conn.state is OPEN
    # Sending is still possible; the caller decides to close.
    assert conn.send(CloseConnection(code=1002)) == b"\x88\x02\x03\xea"


def test_eof_queues_1006_and_closes() -> None:
    conn, events = server(None)
    assert events == [CloseConnection(code=CloseReason.ABNORMAL_CLOSURE)]
    assert conn.state is CLOSED


def test_each_eof_queues_its_own_1006() -> None:
    conn = FrameConnection(client=False)
    conn.receive_data(None)
    conn.receive_data(None)
    assert conn.events() == [CloseConnection(code=1006)] * 2
    assert conn.events() == []


def test_eof_with_buffered_frames_reports_1006_first_then_parses() -> None:
    # wsproto's order: queued events first, then what the buffer still holds.
    conn = FrameConnection(client=False)
    conn.receive_data(to_server(0x1, b"last") + to_server(0x8, close_payload(1000)))
    conn.receive_data(None)
    assert conn.events() == [
        CloseConnection(code=1006),
        TextMessage("last"),
        CloseConnection(code=1000, reason=""),
    ]
    assert conn.state is REMOTE_CLOSING  # as wsproto: a close frame after EOF


def test_receive_after_closed_raises() -> None:
    conn, _ = server(None)
    with pytest.raises(LocalProtocolError, match=r"^Connection already closed\.$"):
        conn.receive_data(b"x")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"")
    conn.receive_data(None)  # EOF again is accepted, as wsproto does
    assert conn.events() == [CloseConnection(code=1006)]


def test_send_close_in_open_and_remote_closing_only() -> None:
    conn = FrameConnection(client=False)
    conn.send(CloseConnection(code=1000))
    with pytest.raises(LocalProtocolError):
        conn.send(CloseConnection(code=1000))
    assert conn.state is LOCAL_CLOSING


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        ("local_closing", TextMessage("x")),
        ("local_closing", Ping()),
        ("remote_closing", BytesMessage(b"x")),
        ("remote_closing", Pong()),
        ("closed", CloseConnection(code=1000)),
        ("open", Request(host="h", target="/")),
    ],
)
def test_send_in_wrong_state_raises_like_wsproto(setup: str, event: Event) -> None:
    ours, ref = FrameConnection(False), wsproto_conn(False)
    for conn in (ours, ref):
        if setup == "local_closing":
            conn.send(CloseConnection(code=1000))
        elif setup == "remote_closing":
            conn.receive_data(to_server(0x8, b""))
            list(conn.events())
        elif setup == "closed":
            conn.receive_data(None)
    with pytest.raises(LocalProtocolError) as ref_error:
        ref.send(event)
    with pytest.raises(LocalProtocolError) as our_error:
        ours.send(event)
    assert str(our_error.value) == str(ref_error.value)
    assert ours.state is ref.state


def test_message_type_mismatch_is_type_error() -> None:
    conn = FrameConnection(client=False)
    assert conn.send(TextMessage("a", message_finished=False)) == b"\x01\x01a"
    with pytest.raises(TypeError, match="Data type mismatch inside message"):
        conn.send(BytesMessage(b"b"))
    assert conn.send(TextMessage("c")) == b"\x80\x01c"


def test_message_data_of_wrong_type_is_type_error() -> None:
    with pytest.raises(TypeError, match="Must provide bytes or text"):
        FrameConnection(client=False).send(TextMessage(None))  # type: ignore[arg-type]


def test_oversized_ping_is_value_error() -> None:
    with pytest.raises(ValueError, match="payload too long for control frame"):
        FrameConnection(client=True).send(Ping(b"p" * 126))


def test_close_reason_without_code_is_type_error() -> None:
    conn = FrameConnection(client=False)
    with pytest.raises(TypeError, match="cannot specify a reason without a code"):
        conn.send(CloseConnection(code=CloseReason.NO_STATUS_RCVD, reason="x"))
    assert conn.state is OPEN


# == footprint ==============================================================================


def test_idle_connection_is_small() -> None:
    conn = FrameConnection(client=False)
    feed(conn, to_server(0x1, b"x" * 1000))
    size = sys.getsizeof(conn) + sys.getsizeof(conn._buf)
    assert size < 300
    assert not hasattr(conn, "__dict__")


def test_buffer_released_after_close_or_error() -> None:
    closed, _ = server(to_server(0x8, b"") + b"\x00" * 100)
    broken, _ = server(to_server(0x3) + b"\x00" * 100)
    for conn in (closed, broken):
        assert conn._buf is None
        assert conn._dec is None
        assert conn._key is None


def test_leftover_is_only_the_unparsed_tail() -> None:
    data = to_server(0x1, b"x" * 1000)
    conn = FrameConnection(client=False)
    conn.receive_data(data + data[:5])  # a whole frame and part of a header
    assert conn.events() == [TextMessage("x" * 1000)]
    assert conn._buf == data[:5]


# == the whole-frame shortcut (receive_text) ================================================


@settings(max_examples=200)
@given(st.booleans(), frame_specs(), st.integers(0, 3))
def test_receive_text_takes_exactly_what_events_gives_as_one_whole_text(
    client: bool, specs: list[Spec], first_frames: int
) -> None:
    """``receive_text`` is a shortcut, never a second parser: it returns the text
    the general path would give as one whole ``TextMessage`` for the same bytes,
    and takes nothing otherwise."""
    for spec in specs:
        if client:
            spec.masked = not spec.masked
    data = b"".join(spec.encode() for spec in specs[: first_frames + 1])
    general = FrameConnection(client)
    general.receive_data(data)
    expected = general.events()
    shortcut = FrameConnection(client)
    text = shortcut.receive_text(data)
    if text is not None:
        assert expected == [TextMessage(text)]
        assert general._buf == b""
    else:
        # Nothing was taken: the general path on the same connection agrees.
        shortcut.receive_data(data)
        assert shortcut.events() == expected
        assert not (
            len(expected) == 1
            and isinstance(expected[0], TextMessage)
            and expected[0].message_finished
            and general._buf == b""
            and data[:1] == b"\x81"
            and len(expected[0].data.encode()) < 65536  # the shortcut's size class
        )


def test_receive_text_leaves_anything_buffered_or_in_progress_to_the_general_path() -> None:
    frame = to_server(0x1, b"hello")
    connection = FrameConnection(False)
    connection.receive_data(frame[:3])
    assert connection.events() == []
    assert connection.receive_text(frame) is None  # three bytes are buffered
    connection.receive_data(frame[3:])
    assert connection.events() == [TextMessage("hello")]
    assert connection.receive_text(frame) == "hello"
    assert connection.receive_text(frame + frame) is None  # two frames: not one
    assert connection.receive_text(frame[:-1]) is None  # not whole
    fragmented = FrameConnection(False)
    fragmented.receive_data(to_server(0x1, b"first half, ", fin=False))
    assert fragmented.events() == [TextMessage("first half, ", True, False)]
    assert fragmented.receive_text(frame) is None  # a message is in progress
    bad_utf8 = FrameConnection(False)
    assert bad_utf8.receive_text(to_server(0x1, b"\xff")) is None
    bad_utf8.receive_data(to_server(0x1, b"\xff"))
    assert [e.code for e in bad_utf8.events() if isinstance(e, CloseConnection)] == [1007]
