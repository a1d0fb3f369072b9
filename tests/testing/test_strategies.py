"""The hypothesis strategies generate what they promise.

Rules: pure functions (codec, wsproto); no I/O.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection, Request, TextMessage

from arcp_trio.testing import Open
from arcp_trio.testing.strategies import (
    HostileFrame,
    WebSocketViolation,
    close_resume_sequences,
    envelopes,
    hostile_frames,
    messages,
    request_id_ok,
    websocket_violations,
    ws_frame,
)
from arcp_trio.wire.codec import decode, encode
from arcp_trio.wire.errors import RemoteProtocolError
from arcp_trio.wire.messages import MessageType

RUNTIME_ONLY = {
    "session.welcome",
    "session.error",
    "session.jobs",
    "session.closed",
    "job.accepted",
    "job.event",
    "job.result",
    "job.error",
    "job.cancelled",
    "job.subscribed",
}


@given(envelopes())
def test_every_envelope_decodes_and_round_trips(frame: dict[str, Any]) -> None:
    envelope = decode(json.dumps(frame))
    assert envelope.type == frame["type"]
    assert envelope.id == frame["id"]
    again = decode(encode(envelope))
    assert again == envelope


@settings(max_examples=10)
@given(st.data())
def test_every_message_type_has_a_strategy(data: st.DataObject) -> None:
    for message_type in MessageType:
        envelope = data.draw(messages([message_type]))
        assert envelope.type == message_type


@settings(max_examples=200)
@given(hostile_frames(huge=False))
def test_hostile_frames_are_refused_by_the_codec_or_the_dispatcher(frame: HostileFrame) -> None:
    if frame.kind == "runtime_only_type":
        # Well-formed, but only a runtime may send it: the dispatcher refuses it.
        assert decode(frame.text).type in RUNTIME_ONLY
        return
    with pytest.raises(RemoteProtocolError) as refused:
        decode(frame.text)
    assert request_id_ok(frame, refused.value.request_id), (frame, refused.value.request_id)


@settings(max_examples=10)
@given(hostile_frames(max_message_size=1000, kinds=["huge"]))
def test_huge_frames_are_over_the_limit(frame: HostileFrame) -> None:
    assert len(frame.text.encode()) > 1000
    json.loads(frame.text)


@given(close_resume_sequences(min_size=3, max_size=10))
def test_programs_open_a_session_first(program: list[Any]) -> None:
    assert isinstance(program[0], Open)
    assert 3 <= len(program) <= 10


def _server_events(data: bytes) -> list[Any]:
    server = WSConnection(ConnectionType.SERVER)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="localhost", target="/arcp")))
    next(iter(server.events()))
    from wsproto.events import AcceptConnection

    server.send(AcceptConnection())
    server.receive_data(data)
    return list(server.events())


def test_ws_frame_builds_frames_a_server_accepts() -> None:
    events = _server_events(ws_frame(0x1, b'{"a":1}'))
    assert isinstance(events[0], TextMessage)
    assert events[0].data == '{"a":1}'


@given(st.data())
def test_every_websocket_violation_is_refused_by_wsproto(data: st.DataObject) -> None:
    violation: WebSocketViolation = data.draw(websocket_violations())
    events = _server_events(violation.data)
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert closes, (violation.kind, events)
    assert closes[0].code in violation.close_codes, (violation.kind, closes[0])
