"""Envelope decoding and encoding (§5, WIRE.md §2)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
import trio
from hypothesis import example, given
from hypothesis import strategies as st

from arcp_trio.testing.strategies import envelopes, hostile_frames, json_values
from arcp_trio.wire import ids as ids_module
from arcp_trio.wire.codec import (
    PONG_CHECK_LIMIT,
    Envelope,
    decode,
    encode,
    encode_job_frame,
    encode_ping_frame,
    is_session_pong,
)
from arcp_trio.wire.errors import (
    BudgetExhausted,
    ErrorCode,
    InternalError,
    LeaseExpired,
    RemoteProtocolError,
    make_error,
)
from arcp_trio.wire.ids import (
    is_envelope_id,
    is_trace_id,
    is_ulid,
    new_frame_id,
    new_id,
    new_trace_id,
    new_ulid,
)
from arcp_trio.wire.messages import (
    JobSubmit,
    MessageType,
    SessionError,
    SessionPing,
    parse_agent_ref,
)
from arcp_trio.wire.timestamps import (
    format_epoch_ns,
    format_timestamp,
    parse_timestamp,
    system_timestamp,
    system_wall_clock,
)


def test_unknown_envelope_fields_and_payload_keys_are_ignored() -> None:
    # §5: "Implementations MUST ignore unknown top-level envelope fields".
    frame = {
        "id": new_ulid(),
        "type": "job.submit",
        "future_field": {"x": 1},
        "payload": {"agent": "echo@1.0.0", "someday": True},
    }
    envelope = decode(json.dumps(frame))
    assert envelope.payload == JobSubmit(agent="echo@1.0.0")
    assert envelope.arcp == "1.1"


def test_decode_failures_carry_paths_and_request_id() -> None:
    frame_id = new_ulid()
    with pytest.raises(RemoteProtocolError) as info:
        decode(
            json.dumps(
                {
                    "id": frame_id,
                    "type": "job.submit",
                    "payload": {"agent": "echo", "lease_request": {"fs.read": [3]}},
                }
            )
        )
    assert info.value.request_id == frame_id
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert info.value.details == {
        "errors": ["expected a string, got a number @ $.payload.lease_request['fs.read'][0]"]
    }


def test_no_silent_coercion() -> None:
    for bad in (
        {"agent": "echo", "max_runtime_sec": "5"},
        {"agent": "echo", "max_runtime_sec": True},
        {"agent": "echo", "idempotency_key": 5},
    ):
        with pytest.raises(RemoteProtocolError):
            decode(json.dumps({"id": new_ulid(), "type": "job.submit", "payload": bad}))


def test_encode_omits_unset_fields_and_is_compact() -> None:
    envelope = Envelope(
        type=MessageType.SESSION_ERROR,
        id="01HZZZZZZZZZZZZZZZZZZZZZZZ",
        payload=SessionError(code="X", message="m"),
    )
    assert encode(envelope) == (
        '{"arcp":"1.1","id":"01HZZZZZZZZZZZZZZZZZZZZZZZ","type":"session.error",'
        '"payload":{"code":"X","message":"m","retryable":false}}'
    )


def test_job_frame_fast_path_matches_the_general_encoder() -> None:
    payload = {"kind": "log", "ts": "2026-01-01T00:00:00.000000Z", "body": {"message": 'é"x'}}
    fast = encode_job_frame(
        MessageType.JOB_EVENT,
        frame_id="01HZZZZZZZZZZZZZZZZZZZZZZZ",
        session_id="sess_1",
        job_id="job_1",
        event_seq=7,
        trace_id="ab" * 16,
        payload_json=json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
    )
    slow = encode(
        Envelope(
            type=MessageType.JOB_EVENT,
            id="01HZZZZZZZZZZZZZZZZZZZZZZZ",
            session_id="sess_1",
            job_id="job_1",
            event_seq=7,
            trace_id="ab" * 16,
            payload=payload,
        )
    )
    assert fast == slow
    assert decode(fast).event_seq == 7


def test_ids() -> None:
    ulid = new_ulid()
    assert len(ulid) == 26
    assert is_envelope_id(ulid)
    assert is_envelope_id(new_id("job"))
    assert is_envelope_id("01890a5d-ac96-774b-bcce-b302099a8057")
    assert not is_envelope_id(ulid.lower())
    assert not is_envelope_id("01890a5d-ac96-474b-bcce-b302099a8057")  # UUIDv4
    assert is_trace_id(new_trace_id())
    assert not is_trace_id("0" * 32)
    assert not is_trace_id("00-" + "a" * 32 + "-" + "b" * 16 + "-01")


def test_timestamps() -> None:
    moment = parse_timestamp("2026-05-13T23:42:00Z", require_utc=True)
    assert format_timestamp(moment) == "2026-05-13T23:42:00.000000Z"
    with pytest.raises(ValueError, match="UTC"):
        parse_timestamp("2026-05-13T23:42:00+02:00", require_utc=True)
    with pytest.raises(ValueError, match="timezone"):
        parse_timestamp("2026-05-13T23:42:00")


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])))
def test_timestamps_are_utc_microseconds_with_z(moment: datetime) -> None:
    text = format_timestamp(moment)
    naive_utc = moment.astimezone(UTC).replace(tzinfo=None)
    assert text == naive_utc.isoformat(timespec="microseconds") + "Z"  # RFC 3339
    assert parse_timestamp(text, require_utc=True) == moment


@given(st.integers(min_value=0, max_value=253_402_300_799_999_999_999))
def test_epoch_ns_timestamps_match_the_datetime_form(ns: int) -> None:
    """The fast ``ts`` of every event is exactly what ``format_timestamp`` writes."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    assert format_epoch_ns(ns) == format_timestamp(moment)


def test_system_timestamps_read_the_system_clock() -> None:
    before = system_wall_clock()
    text = system_timestamp()
    after = system_wall_clock()
    assert before.replace(microsecond=0) <= parse_timestamp(text, require_utc=True) <= after


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


async def test_frame_ids_are_ulids_of_the_current_millisecond() -> None:
    """``new_frame_id`` keeps the millisecond's digits between calls: they must still
    be the millisecond's, and the rest must differ."""
    ids = []
    for _ in range(3):
        before = time.time_ns() // 1_000_000
        ids += [new_frame_id(), new_frame_id()]
        after = time.time_ns() // 1_000_000
        for frame_id in ids[-2:]:
            assert is_ulid(frame_id)
            decoded = 0
            for char in frame_id[:10]:  # the first ten digits are the 48-bit time
                decoded = decoded * 32 + CROCKFORD.index(char)
            assert before <= decoded <= after
        await trio.sleep(0.002)
    assert len(set(ids)) == len(ids)


def test_frame_ids_of_one_millisecond_count_up_and_stay_unique(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within a millisecond ids count up in their last 20 bits (ULID monotonic mode);
    a counter that runs out draws fresh random bits; a new millisecond starts over."""
    now_ms = [1_700_000_000_000]
    monkeypatch.setattr(time, "time_ns", lambda: now_ms[0] * 1_000_000)

    def value(frame_id: str) -> int:
        decoded = 0
        for char in frame_id:
            decoded = decoded * 32 + CROCKFORD.index(char)
        return decoded

    first, second = new_frame_id(), new_frame_id()
    assert value(second) == value(first) + 1 or value(second) & 0xFFFFF == 0
    ids_module._frame_ids[0] = (now_ms[0], first[:22], ids_module._LOW_MAX)  # run out
    fresh = new_frame_id()
    assert fresh[:10] == first[:10]  # the same millisecond
    assert fresh[10:22] != first[10:22]  # fresh random bits
    now_ms[0] += 1
    later = new_frame_id()
    assert value(later) >> 80 == now_ms[0]
    ids = [first, second, fresh, later]
    assert all(is_ulid(frame_id) for frame_id in ids)
    assert len(set(ids)) == len(ids)


def test_agent_refs() -> None:
    assert parse_agent_ref("echo") == ("echo", None)
    assert parse_agent_ref("Code-Refactor@2.0.0+build") == ("Code-Refactor", "2.0.0+build")
    for bad in ("Bad Name", "@1", "echo@", "-x", "echo@1@2"):
        with pytest.raises(ValueError):
            parse_agent_ref(bad)


def test_error_taxonomy_retryable() -> None:
    # §12: INTERNAL_ERROR always retryable; LEASE_EXPIRED and BUDGET_EXHAUSTED never.
    assert InternalError("x").retryable is True
    assert BudgetExhausted("x", retryable=True).retryable is False
    assert LeaseExpired("x").retryable is False
    error = make_error("BUDGET_EXHAUSTED", "spent")
    assert isinstance(error, BudgetExhausted)
    custom = make_error("AGENT_SPECIFIC", "mine")
    assert custom.code == "AGENT_SPECIFIC"


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_decode_never_raises_anything_but_protocol_errors(text: str) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode(text)


@given(
    st.dictionaries(
        st.sampled_from(
            ["id", "type", "arcp", "payload", "event_seq", "trace_id", "session_id", "job_id"]
        ),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=30)
        | st.lists(st.integers(), max_size=3)
        | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )
)
def test_hostile_envelopes_fail_cleanly(frame: dict[str, object]) -> None:
    outcome: object
    try:
        outcome = decode(json.dumps(frame))
    except RemoteProtocolError as exc:
        outcome = exc.code
    assert outcome == ErrorCode.INVALID_REQUEST or hasattr(outcome, "payload")


def _pong_text(**fields: object) -> str:
    frame: dict[str, object] = {
        "arcp": "1.1",
        "id": "01JF00000000000000000000AB",
        "type": "session.pong",
        "session_id": "sess_01JF00000000000000000000AB",
        "payload": {"ping_nonce": "01JF00000000000000000000AC"},
    }
    frame.update(fields)
    return json.dumps(frame)


_PONG_FIELDS = [
    ("arcp",),
    ("id",),
    ("type",),
    ("session_id",),
    ("job_id",),
    ("trace_id",),
    ("event_seq",),
    ("payload",),
    ("payload", "ping_nonce"),
    ("payload", "received_at"),
]
_MISSING = object()


@st.composite
def _mutated_pongs(draw: st.DrawFn) -> str:
    """A valid pong with one field replaced by an arbitrary JSON value, or removed."""
    frame = draw(envelopes([MessageType.SESSION_PONG]))
    path = draw(st.sampled_from(_PONG_FIELDS))
    value = draw(
        st.one_of(st.just(_MISSING), st.sampled_from(["1.1", "session.pong"]), json_values())
    )
    target = frame
    if len(path) == 2:
        if not isinstance(frame.get("payload"), dict):
            frame["payload"] = {}
        target = frame["payload"]
    if value is _MISSING:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return json.dumps(frame)


@given(
    st.one_of(
        envelopes([MessageType.SESSION_PONG]).map(json.dumps),
        _mutated_pongs(),
        hostile_frames(huge=False).map(lambda hostile: hostile.text),
        envelopes().map(json.dumps),
    )
)
@example(_pong_text())
@example(_pong_text(payload={"ping_nonce": "n", "received_at": None}))
@example(_pong_text(payload={"received_at": "2026-05-13T19:42:13.020Z"}))
@example(_pong_text(payload={"ping_nonce": 7}))
@example(_pong_text(payload={"ping_nonce": "n", "received_at": 7}))
@example(_pong_text(payload=None))
@example(_pong_text(payload=["ping_nonce"]))
@example(_pong_text(id="not an id"))
@example(_pong_text(arcp="1.0"))
@example(_pong_text(session_id=5))
@example(_pong_text(trace_id="0" * 32))
@example(_pong_text(event_seq=True))
@example(_pong_text(type="session.ping"))
@example('["session.pong"]')
@example('{"type":"session.pong",')
@example(_pong_text(extension=float("nan")))  # the standard parser takes NaN, orjson not
@example(_pong_text(extension="\ud800"))  # a lone surrogate escape, likewise
@example(_pong_text(extension="x" * PONG_CHECK_LIMIT))
@example(_pong_text(extension=2**64))  # orjson reads it as a float; decode refuses it
@example(_pong_text(extension=[[[[1]]]], payload={"ping_nonce": "n", "received_at": "yesterday"}))
@example(_pong_text(payload={"ping_nonce": "n" * 129}))
def test_the_pong_check_gives_the_decoders_verdict(text: str) -> None:
    """§6.4: idle sessions' pongs skip the full decode; a pong that ``decode`` would
    refuse (answered with INVALID_REQUEST) must never be taken for one, and every
    pong that orjson parses and that is not over the limit must be."""
    try:
        expected = decode(text).type == MessageType.SESSION_PONG
    except RemoteProtocolError:
        expected = False
    verdict = is_session_pong(text)
    if verdict:
        assert expected
    elif expected:
        # Left to decode: only texts over the limit, JSON orjson refuses or reads
        # differently (integers beyond 64 bits).
        assert (
            len(text) > PONG_CHECK_LIMIT
            or _orjson_refuses(text)
            or re.search(r"[:,\[][ \t\n\r]*-?[0-9]{20}", text) is not None
        )


def _orjson_refuses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return True
    return False


def test_ping_frame_fast_path_matches_the_general_encoder() -> None:
    """§6.4 pings skip the converter; the bytes must not change because of that."""
    ids = {"frame_id": new_frame_id(), "nonce": new_frame_id()}
    fast = encode_ping_frame(
        **ids, session_id="sess_01HZZZZZZZZZZZZZZZZZZZZZZZ", sent_at="2026-05-13T19:42:13.000Z"
    )
    slow = encode(
        Envelope(
            type=MessageType.SESSION_PING,
            id=ids["frame_id"],
            session_id="sess_01HZZZZZZZZZZZZZZZZZZZZZZZ",
            payload=SessionPing(nonce=ids["nonce"], sent_at="2026-05-13T19:42:13.000Z"),
        )
    )
    assert fast == slow
    assert decode(fast).payload == SessionPing(
        nonce=ids["nonce"], sent_at="2026-05-13T19:42:13.000Z"
    )
