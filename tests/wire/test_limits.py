"""Fail-closed decoding and the per-field limits (``wire.limits``, docs/limits.md).

Each case is a frame a runtime once accepted or answered as a server fault: now it
is ``INVALID_REQUEST`` with the field path and the frame's id (§5, §12, WIRE.md
"Errors are correlated").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from arcp_trio.wire import limits
from arcp_trio.wire.codec import decode, recover_id
from arcp_trio.wire.errors import ErrorCode, RemoteProtocolError
from arcp_trio.wire.ids import new_ulid

DOCS = Path(__file__).resolve().parents[2] / "docs" / "limits.md"
_ID = "01J00000000000000000000000"


def refused(message_type: str, payload: Any, **envelope: Any) -> tuple[str, list[str]]:
    """Decode a frame that must be refused; returns (message, field errors)."""
    frame_id = new_ulid()
    frame = {"arcp": "1.1", "id": frame_id, "type": message_type, "payload": payload, **envelope}
    with pytest.raises(RemoteProtocolError) as caught:
        decode(json.dumps(frame))
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert caught.value.request_id == frame_id
    errors = (caught.value.details or {}).get("errors", [])
    return caught.value.message, errors


def assert_path(errors: list[str], path: str) -> None:
    assert any(error.endswith(f"@ {path}") for error in errors), errors


# -- shapes that used to be accepted and ignored (fail-open) -----------------------------


@pytest.mark.parametrize("bad", ["2030-01-01T00:00:00Z", ["expires_at"], 5, True])
def test_lease_constraints_must_be_an_object(bad: Any) -> None:
    _, errors = refused("job.submit", {"agent": "echo", "lease_constraints": bad})
    assert_path(errors, "$.payload.lease_constraints")


@pytest.mark.parametrize("bad", ["running", ["running"], 0])
def test_a_list_jobs_filter_must_be_an_object(bad: Any) -> None:
    _, errors = refused("session.list_jobs", {"filter": bad})
    assert_path(errors, "$.payload.filter")


@pytest.mark.parametrize("bad", ["x", ["heartbeat"]])
def test_hello_capabilities_must_be_an_object(bad: Any) -> None:
    hello = {"client": {"name": "c", "version": "1"}, "auth": {"token": "t"}, "capabilities": bad}
    _, errors = refused("session.hello", hello)
    assert_path(errors, "$.payload.capabilities")


def test_a_lease_request_must_be_an_object() -> None:
    _, errors = refused("job.submit", {"agent": "echo", "lease_request": ["fs.read"]})
    assert_path(errors, "$.payload.lease_request")


def test_session_bye_needs_a_reason() -> None:
    """WIRE.md §8: ``reason`` is required (the reference refuses a bye without one)."""
    _, errors = refused("session.bye", {})
    assert errors == ["required field missing @ $.payload.reason"]
    bye = decode(
        json.dumps({"id": new_ulid(), "type": "session.bye", "payload": {"reason": "done"}})
    )
    assert bye.payload.reason == "done"


def test_job_cancel_reason_stays_optional() -> None:
    """§7.4 gives job.cancel no payload: a spec client cancels without a reason."""
    envelope = decode(
        json.dumps({"id": new_ulid(), "type": "job.cancel", "job_id": "job_1", "payload": {}})
    )
    assert envelope.payload.reason is None


# -- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "payload", "path"),
    [
        ("session.ack", {"last_processed_seq": -1}, "$.payload.last_processed_seq"),
        ("session.ack", {"last_processed_seq": 2**63}, "$.payload.last_processed_seq"),
        ("session.ack", {"last_processed_seq": 1.0}, "$.payload.last_processed_seq"),
        ("session.ack", {"last_processed_seq": 1.5}, "$.payload.last_processed_seq"),
        ("session.ack", {"last_processed_seq": "3"}, "$.payload.last_processed_seq"),
        ("session.list_jobs", {"limit": 0}, "$.payload.limit"),
        ("session.list_jobs", {"limit": 1001}, "$.payload.limit"),
        ("job.submit", {"agent": "echo", "max_runtime_sec": 0}, "$.payload.max_runtime_sec"),
        ("job.submit", {"agent": "echo", "max_runtime_sec": 2**70}, "$.payload.max_runtime_sec"),
        ("job.subscribe", {"job_id": "j", "from_event_seq": -5}, "$.payload.from_event_seq"),
        ("job.subscribe", {"job_id": "j", "history": 1}, "$.payload.history"),
    ],
)
def test_integers_are_range_checked_with_their_path(
    message_type: str, payload: dict[str, Any], path: str
) -> None:
    _, errors = refused(message_type, payload)
    assert_path(errors, path)


def test_the_largest_seq_is_accepted() -> None:
    frame = {"id": new_ulid(), "type": "session.ack", "payload": {"last_processed_seq": 2**63 - 1}}
    assert decode(json.dumps(frame)).payload.last_processed_seq == 2**63 - 1


@pytest.mark.parametrize(
    "text",
    [
        '{{"id":"{id}","type":"job.submit","payload":{{"agent":"echo","input":NaN}}}}',
        '{{"id":"{id}","type":"job.submit","payload":{{"agent":"echo","input":-Infinity}}}}',
        '{{"id":"{id}","type":"job.submit","payload":{{"agent":"echo","input":1e400}}}}',
        '{{"id":"{id}","type":"job.submit","payload":{{"agent":"echo","input":'
        + "9" * 400
        + ".0}}}}",
        '{{"id":"{id}","type":"job.submit","payload":{{"agent":"echo","input":"\\ud800"}}}}',
    ],
)
def test_values_json_cannot_carry_faithfully_are_refused(text: str) -> None:
    frame_id = new_ulid()
    with pytest.raises(RemoteProtocolError) as caught:
        decode(text.format(id=frame_id))
    assert caught.value.request_id == frame_id


def test_a_large_float_that_stays_finite_is_kept() -> None:
    frame = f'{{"id":"{new_ulid()}","type":"job.submit","payload":{{"agent":"e","input":1e300}}}}'
    assert decode(frame).payload.input == 1e300


# -- nesting ------------------------------------------------------------------------------


def _submit_with_input(levels: int) -> str:
    """A submit whose ``input`` is ``levels`` arrays deep."""
    return (
        f'{{"id":"{_ID}","type":"job.submit","payload":{{"agent":"e",'
        f'"input":{"[" * levels}{"]" * levels}}}}}'
    )


def test_input_nesting_is_limited_exactly_with_its_path() -> None:
    """The runtime writes input back (results, fingerprints): no deeper than it can."""
    assert decode(_submit_with_input(limits.MAX_NESTING)).type == "job.submit"
    with pytest.raises(RemoteProtocolError) as caught:
        decode(_submit_with_input(limits.MAX_NESTING + 1))
    assert caught.value.request_id == _ID
    assert (caught.value.details or {})["errors"] == [
        f"nested deeper than {limits.MAX_NESTING} levels @ $.payload.input"
    ]


def test_a_frame_too_deep_for_the_parser_is_still_correlated() -> None:
    with pytest.raises(RemoteProtocolError, match="nested too deeply") as caught:
        decode(_submit_with_input(100_000))
    assert caught.value.request_id == _ID


def test_runtime_frames_of_any_depth_decode() -> None:
    """Only what a client submits is held to MAX_NESTING: a runtime sends whatever its
    agents produced, and a client must read it."""
    result = "[" * 700 + "]" * 700
    payload = f'{{"final_status":"success","result":{result}}}'
    text = f'{{"id":"{_ID}","type":"job.result","payload":{payload}}}'
    assert decode(text).type == "job.result"


def test_input_integers_at_the_64_bit_bounds_are_kept() -> None:
    for value in (limits.MIN_INT, limits.MAX_UINT):
        for shaped in (str(value), f"[{value}]"):
            text = (
                f'{{"id":"{_ID}","type":"job.submit","payload":{{"agent":"e","input":{shaped}}}}}'
            )
            assert decode(text).payload.input in (value, [value])


@pytest.mark.parametrize(
    "value",
    [
        "18446744073709551616",
        "-9223372036854775809",
        "[-9223372036854775809]",
        '{"a":[1e0, 99999999999999999999]}',
    ],
)
def test_input_integers_fit_in_64_bits(value: str) -> None:
    text = f'{{"id":"{_ID}","type":"job.submit","payload":{{"agent":"e","input":{value}}}}}'
    with pytest.raises(RemoteProtocolError) as caught:
        decode(text)
    assert any(e.endswith("@ $.payload.input") for e in (caught.value.details or {})["errors"])


# -- string lengths -------------------------------------------------------------------------

_HELLO = {"client": {"name": "c", "version": "1"}, "auth": {"token": "t"}}


@pytest.mark.parametrize(
    ("message_type", "payload", "path", "limit"),
    [
        (
            "session.hello",
            {**_HELLO, "client": {"name": "x", "version": "1"}},
            "$.payload.client.name",
            limits.MAX_NAME_LEN,
        ),
        (
            "session.hello",
            {**_HELLO, "client": {"name": "c", "version": "x"}},
            "$.payload.client.version",
            limits.MAX_NAME_LEN,
        ),
        (
            "session.hello",
            {**_HELLO, "auth": {"token": "x"}},
            "$.payload.auth.token",
            limits.MAX_TOKEN_LEN,
        ),
        (
            "session.hello",
            {**_HELLO, "auth": {"token": "t", "scheme": "x"}},
            "$.payload.auth.scheme",
            limits.MAX_SCHEME_LEN,
        ),
        (
            "session.hello",
            {**_HELLO, "resume": {"resume_token": "x"}},
            "$.payload.resume.resume_token",
            limits.MAX_REF_LEN,
        ),
        (
            "session.hello",
            {**_HELLO, "resume": {"resume_token": "t", "session_id": "x"}},
            "$.payload.resume.session_id",
            limits.MAX_REF_LEN,
        ),
        (
            "session.hello",
            {**_HELLO, "resume_token": "x"},
            "$.payload.resume_token",
            limits.MAX_REF_LEN,
        ),
        ("session.resume", {"resume_token": "x"}, "$.payload.resume_token", limits.MAX_REF_LEN),
        (
            "session.ping",
            {"nonce": "x", "sent_at": "2026-01-01T00:00:00Z"},
            "$.payload.nonce",
            limits.MAX_REF_LEN,
        ),
        ("session.pong", {"ping_nonce": "x"}, "$.payload.ping_nonce", limits.MAX_REF_LEN),
        ("session.close", {"reason": "x"}, "$.payload.reason", limits.MAX_REASON_LEN),
        ("session.bye", {"reason": "x"}, "$.payload.reason", limits.MAX_REASON_LEN),
        ("session.bye", {"reason": "r", "code": "x"}, "$.payload.code", limits.MAX_CODE_LEN),
        (
            "job.submit",
            {"agent": "echo", "idempotency_key": "x"},
            "$.payload.idempotency_key",
            limits.MAX_IDEMPOTENCY_KEY_LEN,
        ),
        (
            "job.submit",
            {"agent": "echo", "parent_job_id": "x"},
            "$.payload.parent_job_id",
            limits.MAX_REF_LEN,
        ),
        (
            "job.submit",
            {"agent": "echo", "delegate_id": "x"},
            "$.payload.delegate_id",
            limits.MAX_REF_LEN,
        ),
        ("job.cancel", {"reason": "x"}, "$.payload.reason", limits.MAX_REASON_LEN),
        ("job.cancel", {"job_id": "x"}, "$.payload.job_id", limits.MAX_REF_LEN),
        ("job.subscribe", {"job_id": "x"}, "$.payload.job_id", limits.MAX_REF_LEN),
        ("job.unsubscribe", {"job_id": "x"}, "$.payload.job_id", limits.MAX_REF_LEN),
    ],
)
def test_every_string_has_a_length_limit(
    message_type: str, payload: dict[str, Any], path: str, limit: int
) -> None:
    """At the limit it is accepted; one character more is refused at its path."""

    def with_length(length: int) -> dict[str, Any]:
        text = json.dumps(payload).replace('"x"', json.dumps("x" * length))
        return dict(json.loads(text))

    frame = {"id": new_ulid(), "type": message_type, "payload": with_length(limit)}
    assert decode(json.dumps(frame)).type == message_type
    _, errors = refused(message_type, with_length(limit + 1))
    assert_path(errors, path)


def test_features_and_encodings_are_bounded() -> None:
    many = [f"f{i}" for i in range(limits.MAX_FEATURES + 1)]
    _, errors = refused("session.hello", {**_HELLO, "capabilities": {"features": many}})
    assert_path(errors, "$.payload.capabilities.features")
    long = ["x" * (limits.MAX_FEATURE_LEN + 1)]
    _, errors = refused("session.hello", {**_HELLO, "capabilities": {"features": long}})
    assert_path(errors, "$.payload.capabilities.features[0]")
    agents = ["a"] * (limits.MAX_AGENTS_ADVERTISED + 1)
    _, errors = refused("session.hello", {**_HELLO, "capabilities": {"agents": agents}})
    assert_path(errors, "$.payload.capabilities.agents")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "a" * 40 + "_01J00000000000000000000000"),
        ("session_id", "s" * 129),
        ("job_id", "j" * 129),
        ("type", "t" * 65),
    ],
)
def test_envelope_strings_are_bounded(field: str, value: str) -> None:
    frame = {"id": new_ulid(), "type": "session.ack", "payload": {"last_processed_seq": 0}}
    frame[field] = value
    with pytest.raises(RemoteProtocolError) as caught:
        decode(json.dumps(frame))
    assert any(f"$.{field}" in error for error in (caught.value.details or {})["errors"])


def test_a_ping_sent_at_must_be_a_timestamp() -> None:
    _, errors = refused("session.ping", {"nonce": "n", "sent_at": "yesterday"})
    assert_path(errors, "$.payload.sent_at")


# -- list_jobs fields ----------------------------------------------------------------------------


@pytest.mark.parametrize("cursor", ["9" * 5000, "9" * 20, "²", "-1", "", "1.5", " 1"])
def test_a_cursor_is_a_short_decimal(cursor: str) -> None:
    """A cursor of thousands of digits was an INTERNAL_ERROR (int() refuses them)."""
    _, errors = refused("session.list_jobs", {"cursor": cursor})
    assert_path(errors, "$.payload.cursor")


def test_status_filters_name_real_statuses() -> None:
    _, errors = refused("session.list_jobs", {"filter": {"status": ["running", "sleeping"]}})
    assert_path(errors, "$.payload.filter.status[1]")
    seven = ["running"] * (limits.MAX_STATUS_FILTER + 1)
    _, errors = refused("session.list_jobs", {"filter": {"status": seven}})
    assert_path(errors, "$.payload.filter.status")


def test_an_agent_filter_is_an_agent_reference() -> None:
    _, errors = refused("session.list_jobs", {"filter": {"agent": "bad name!"}})
    assert_path(errors, "$.payload.filter.agent")


# -- leases ----------------------------------------------------------------------------------


def test_lease_sizes_are_bounded_before_any_pattern_is_compiled() -> None:
    submit = {"agent": "echo"}
    spaces = {f"x-vendor.n{i}": ["a"] for i in range(limits.MAX_LEASE_NAMESPACES + 1)}
    _, errors = refused("job.submit", {**submit, "lease_request": spaces})
    assert_path(errors, "$.payload.lease_request")
    many = {"tool.call": ["a"] * (limits.MAX_PATTERNS_PER_NAMESPACE + 1)}
    _, errors = refused("job.submit", {**submit, "lease_request": many})
    assert_path(errors, "$.payload.lease_request['tool.call']")
    long = {"tool.call": ["a", "a" * (limits.MAX_PATTERN_LEN + 1)]}
    _, errors = refused("job.submit", {**submit, "lease_request": long})
    assert_path(errors, "$.payload.lease_request['tool.call'][1]")
    name = {"x-vendor." + "n" * limits.MAX_NAMESPACE_LEN: ["a"]}
    message, _ = refused("job.submit", {**submit, "lease_request": name})
    assert "namespace names" in message
    per = limits.MAX_PATTERN_LEN
    total = {f"x-vendor.n{i}": ["a" * per] for i in range(limits.MAX_LEASE_CHARS // per + 1)}
    _, errors = refused("job.submit", {**submit, "lease_request": total})
    assert_path(errors, "$.payload.lease_request")


# -- the id of a frame that cannot be parsed ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'{{"arcp":"1.1","id":"{_ID}","type":"session.ping","payload":{{"nonce":"', _ID),
        (f'  {{ "id" : "{_ID}" ', _ID),
        (f'{{"payload":{{"a":[1,{{"id":"inner"}}],"b":"]"}},"id":"{_ID}",', _ID),
        (f'{{"\\u0069d":"{_ID}"', _ID),
        (f'{{"arcp":1.1,"n":null,"t":true,"id":"{_ID}"', _ID),
        ('{"id":5}', None),
        ('["id","x"]', None),
        ('{"id":"' + "a" * 65 + '"}', None),
        ("{" + ",".join(f'"k{i}":1' for i in range(16)) + f',"id":"{_ID}"}}', None),
        ('{"payload":' + "[" * 5000, None),
        ("", None),
    ],
)
def test_recover_id_reads_only_the_top_level_id(text: str, expected: str | None) -> None:
    assert recover_id(text) == expected
    assert recover_id(text.encode()) == expected


def test_not_json_after_a_readable_prefix_is_correlated() -> None:
    with pytest.raises(RemoteProtocolError, match="not valid JSON") as caught:
        decode(f'{{"id":"{_ID}","type":"session.ping","payload":{{"nonce": oops}}}}')
    assert caught.value.request_id == _ID


def test_bytes_that_are_not_utf8_are_refused_and_correlated() -> None:
    with pytest.raises(RemoteProtocolError, match="UTF-8") as caught:
        decode(f'{{"id":"{_ID}","type":"session.ping","payload":{{"nonce":"'.encode() + b"\xff}}")
    assert caught.value.request_id == _ID


# -- the documentation --------------------------------------------------------------------------


def test_docs_list_every_limit_with_its_value() -> None:
    page = DOCS.read_text()
    for name in limits.__all__:
        value = getattr(limits, name)
        row = re.search(rf"^\| `{name}` \|[^\n]*", page, re.MULTILINE)
        assert row is not None, f"docs/limits.md does not list {name}"
        shown = {
            limits.MAX_INT: "2^63 - 1",
            limits.MIN_INT: "-2^63",
            limits.MAX_UINT: "2^64 - 1",
        }.get(value, f"{value:,}")
        assert shown in row.group(), f"docs/limits.md gives {name} a value other than {shown}"


def test_the_status_filter_knows_exactly_the_job_statuses() -> None:
    """wire cannot import protocol (the layer arrows): its list must match the enum."""
    from arcp_trio.protocol.job import JobStatus
    from arcp_trio.wire.messages import JOB_STATUSES

    assert {str(status) for status in JobStatus} == JOB_STATUSES
