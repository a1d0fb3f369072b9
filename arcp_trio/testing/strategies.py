"""Hypothesis strategies for ARCP: valid envelopes, hostile input, close/resume programs.

This module imports ``hypothesis`` (the rest of ``arcp_trio.testing`` does not).

* ``envelopes()`` / ``messages()``: frames of every message type that arcp_trio's
  codec accepts, as JSON-ready dicts / decoded ``Envelope`` objects.
* ``hostile_frames()``: texts a runtime must answer with ``INVALID_REQUEST`` and
  survive: not JSON, not an object, wrong types, huge, deeply nested, unknown types,
  bad ids, trace ids and timestamps, runtime-only types, a wrong protocol version,
  and any one field of a client message broken (``schema``, from ``testing.schema``).
* ``websocket_violations()``: raw WebSocket frames that break RFC 6455, which a
  server must answer with a close (1002/1007/1009) or by dropping the connection.
* ``close_resume_sequences()``: programs for ``run_program`` (see ``program``).
"""

from __future__ import annotations

import json
import os
import string
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs
from hypothesis import strategies as st

from ..protocol.session import ALL_FEATURES
from ..transport.base import DEFAULT_MAX_MESSAGE_SIZE
from ..wire.errors import ErrorCode
from ..wire.messages import MessageType
from .program import (
    Ack,
    Advance,
    Cancel,
    Close,
    Drop,
    Emit,
    Finish,
    HeartbeatStall,
    ListJobs,
    Open,
    Resume,
    Step,
    Submit,
    Subscribe,
    Unsubscribe,
)
from .schema import CLIENT_SCHEMA, FIRST_FRAME_TYPES, schema_violations

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "HOSTILE_KINDS",
    "RUNTIME_ONLY_TYPES",
    "HostileFrame",
    "WebSocketViolation",
    "agent_refs",
    "close_resume_sequences",
    "envelope_ids",
    "envelopes",
    "hostile_frames",
    "json_values",
    "messages",
    "payloads",
    "program_steps",
    "request_id_ok",
    "timestamps",
    "trace_ids",
    "ulids",
    "websocket_violations",
    "ws_frame",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# == building blocks =============================================================================


def ulids() -> st.SearchStrategy[str]:
    """26-character ULIDs (first character 0-7)."""
    return st.builds(
        lambda first, rest: first + rest,
        st.sampled_from("01234567"),
        st.text(_CROCKFORD, min_size=25, max_size=25),
    )


def envelope_ids() -> st.SearchStrategy[str]:
    """Every id form WIRE.md §2 accepts: ULID, ``prefix_ULID``, lowercase UUIDv7."""
    uuid7 = st.builds(
        lambda a, b, c, d, e: f"{a}-{b}-7{c}-{d}-{e}",
        st.text("0123456789abcdef", min_size=8, max_size=8),
        st.text("0123456789abcdef", min_size=4, max_size=4),
        st.text("0123456789abcdef", min_size=3, max_size=3),
        st.builds(
            lambda v, r: v + r,
            st.sampled_from("89ab"),
            st.text("0123456789abcdef", min_size=3, max_size=3),
        ),
        st.text("0123456789abcdef", min_size=12, max_size=12),
    )
    prefixed = st.builds(
        lambda p, u: f"{p}_{u}", st.text(string.ascii_lowercase, min_size=1, max_size=6), ulids()
    )
    return st.one_of(ulids(), prefixed, uuid7)


def trace_ids() -> st.SearchStrategy[str]:
    """32 lowercase hex characters, not all zeros."""
    return st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda t: t != "0" * 32)


def timestamps() -> st.SearchStrategy[str]:
    """ISO 8601 UTC with microseconds and ``Z`` (how ARCP peers stamp the wire)."""
    return st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )


def agent_refs() -> st.SearchStrategy[str]:
    """``name`` or ``name@version`` as §7.5 and the reference SDK accept."""
    name = st.from_regex(r"[a-z][a-z0-9._-]{0,15}", fullmatch=True)
    version = st.from_regex(r"[0-9][0-9a-z.+_-]{0,8}", fullmatch=True)
    return st.one_of(name, st.builds(lambda n, v: f"{n}@{v}", name, version))


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Small JSON values (no NaN/infinity, which JSON cannot carry)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _optional(strategies: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=strategies)


def _obj(
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional or {})


_words = st.text(string.ascii_letters + string.digits + " .-_", max_size=24)
_names = st.text(string.ascii_lowercase, min_size=1, max_size=12)
_seqs = st.integers(0, 2**31)
_codes = st.sampled_from([str(code) for code in ErrorCode])
_statuses = st.sampled_from(["pending", "running", "success", "error", "cancelled", "timed_out"])
_lease = st.dictionaries(
    st.sampled_from(["tool.call", "fs.read", "net.fetch", "model.use"]),
    st.lists(st.sampled_from(["search", "/data/**", "https://example.com/*", "*"]), max_size=2),
    max_size=2,
)


def _capabilities() -> st.SearchStrategy[dict[str, Any]]:
    return _obj(
        {},
        {
            "encodings": st.just(["json"]),
            "features": st.lists(st.sampled_from(ALL_FEATURES), unique=True),
            "agents": st.lists(_names, max_size=3),
        },
    )


def _summary() -> st.SearchStrategy[dict[str, Any]]:
    return _obj(
        {
            "job_id": envelope_ids(),
            "agent": agent_refs(),
            "status": _statuses,
            "submitted_at": timestamps(),
        },
        {"last_event_seq": _seqs, "trace_id": trace_ids()},
    )


def _payload_strategies() -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    auth = _obj({"token": _words}, {"scheme": st.just("bearer")})
    client = _obj({"name": _words, "version": _words})
    resume = _obj({"resume_token": _words}, {"session_id": envelope_ids(), "last_event_seq": _seqs})
    return {
        MessageType.SESSION_HELLO: _obj(
            {"client": client, "auth": auth},
            {"capabilities": _capabilities(), "resume": resume},
        ),
        MessageType.SESSION_WELCOME: _obj(
            {
                "runtime": client,
                "session_id": envelope_ids(),
                "resume_token": _words,
                "accepted_at": timestamps(),
                "capabilities": _capabilities(),
            },
            {
                "resume_window_sec": st.integers(1, 86400),
                "heartbeat_interval_sec": st.integers(1, 86400),
            },
        ),
        MessageType.SESSION_RESUME: _obj(
            {"resume_token": _words},
            {"last_event_seq": _seqs, "session_id": envelope_ids(), "auth": auth},
        ),
        MessageType.SESSION_ERROR: _obj(
            {"code": _codes, "message": _words},
            {"retryable": st.booleans(), "request_id": envelope_ids()},
        ),
        MessageType.SESSION_PING: _obj({"nonce": _words, "sent_at": timestamps()}),
        MessageType.SESSION_PONG: _obj({"ping_nonce": _words}, {"received_at": timestamps()}),
        MessageType.SESSION_ACK: _obj({"last_processed_seq": _seqs}),
        MessageType.SESSION_LIST_JOBS: _optional(
            {
                "filter": _optional(
                    {
                        "status": st.lists(_statuses, max_size=3),
                        "agent": agent_refs(),
                        "created_after": timestamps(),
                    }
                ),
                "limit": st.integers(1, 1000),
                "cursor": st.integers(0, 10**6).map(str),
            }
        ),
        MessageType.SESSION_JOBS: _obj(
            {"request_id": envelope_ids(), "jobs": st.lists(_summary(), max_size=3)},
            {"next_cursor": st.integers(0).map(str)},
        ),
        MessageType.SESSION_CLOSE: _optional({"reason": _words}),
        MessageType.SESSION_CLOSED: _optional({"reason": _words, "request_id": envelope_ids()}),
        MessageType.SESSION_BYE: _obj({"reason": _words}, {"code": _codes}),
        MessageType.JOB_SUBMIT: _obj(
            {"agent": agent_refs()},
            {
                "input": json_values(),
                "lease_request": _lease,
                "lease_constraints": _optional({"expires_at": timestamps()}),
                "idempotency_key": st.text(min_size=1, max_size=40),
                "max_runtime_sec": st.integers(1, 86400),
                "trace_id": trace_ids(),
            },
        ),
        MessageType.JOB_ACCEPTED: _obj(
            {"job_id": envelope_ids(), "agent": agent_refs(), "accepted_at": timestamps()},
            {"lease": _lease, "request_id": envelope_ids(), "trace_id": trace_ids()},
        ),
        MessageType.JOB_EVENT: _obj(
            {"kind": st.sampled_from(["log", "thought", "status", "progress", "metric"])},
            {"body": st.dictionaries(_names, json_values(4), max_size=3), "ts": timestamps()},
        ),
        MessageType.JOB_RESULT: _obj(
            {"final_status": st.sampled_from(["success", "cancelled", "timed_out"])},
            {"completed_at": timestamps(), "result": json_values(), "summary": _words},
        ),
        MessageType.JOB_ERROR: _obj(
            {"code": _codes, "message": _words},
            {
                "final_status": st.sampled_from(["error", "cancelled", "timed_out"]),
                "retryable": st.booleans(),
                "completed_at": timestamps(),
            },
        ),
        MessageType.JOB_CANCEL: _optional(
            {"reason": _words, "code": _codes, "job_id": envelope_ids()}
        ),
        MessageType.JOB_CANCELLED: _obj(
            {"job_id": envelope_ids()}, {"reason": _words, "request_id": envelope_ids()}
        ),
        MessageType.JOB_SUBSCRIBE: _obj(
            {"job_id": envelope_ids()}, {"history": st.booleans(), "from_event_seq": _seqs}
        ),
        MessageType.JOB_SUBSCRIBED: _obj(
            {
                "request_id": envelope_ids(),
                "job_id": envelope_ids(),
                "current_status": _statuses,
                "agent": agent_refs(),
            },
            {"subscribed_from": _seqs, "replayed": st.one_of(st.booleans(), _seqs)},
        ),
        MessageType.JOB_UNSUBSCRIBE: _obj({"job_id": envelope_ids()}),
    }


_PAYLOADS: dict[str, st.SearchStrategy[dict[str, Any]]] = {}


def payloads(message_type: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid payload dicts for one message type."""
    if not _PAYLOADS:
        _PAYLOADS.update(_payload_strategies())
    return _PAYLOADS[message_type]


_SEQ_BEARING = frozenset({MessageType.JOB_EVENT, MessageType.JOB_RESULT, MessageType.JOB_ERROR})


@st.composite
def _envelope(draw: st.DrawFn, message_type: str) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "arcp": "1.1",
        "id": draw(envelope_ids()),
        "type": message_type,
        "payload": draw(payloads(message_type)),
    }
    if draw(st.booleans()):
        frame["session_id"] = draw(envelope_ids())
    if draw(st.booleans()):
        frame["trace_id"] = draw(trace_ids())
    if message_type in _SEQ_BEARING:
        frame["job_id"] = draw(envelope_ids())
        frame["event_seq"] = draw(st.integers(1, 2**31))
    elif draw(st.booleans()):
        frame["job_id"] = draw(envelope_ids())
    if draw(st.booleans()):
        # §5: unknown envelope fields are ignored.
        frame["x-extension"] = draw(json_values(2))
    return frame


def envelopes(types: Sequence[str] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Valid frames (JSON-ready dicts) of the given message types (default: all)."""
    chosen = list(types) if types is not None else [str(t) for t in MessageType]
    return st.sampled_from(chosen).flatmap(_envelope)


def messages(types: Sequence[str] | None = None) -> st.SearchStrategy[Any]:
    """Valid frames decoded by arcp_trio's codec (``Envelope`` objects)."""
    from ..wire.codec import decode

    return envelopes(types).map(lambda frame: decode(json.dumps(frame)))


# == hostile input ===============================================================================


@attrs.frozen
class HostileFrame:
    """One frame a runtime must refuse.

    Attributes:
        kind: which rule it breaks (``not_json``, ``huge``, ``bad_trace_id``, ...).
        text: what goes on the wire.
        request_id: the ``request_id`` the error must carry (the frame's own string
            id), or None when the frame has none to correlate with.
        code: the error code the runtime must answer with.
    """

    kind: str
    text: str
    request_id: str | None
    code: str = "INVALID_REQUEST"


def _hostile(kind: str, frame: Any, request_id: str | None) -> HostileFrame:
    return HostileFrame(kind=kind, text=json.dumps(frame), request_id=request_id)


_CLIENT_TYPES = [
    MessageType.SESSION_PING,
    MessageType.SESSION_ACK,
    MessageType.SESSION_LIST_JOBS,
    MessageType.JOB_SUBSCRIBE,
    MessageType.JOB_UNSUBSCRIBE,
    MessageType.JOB_CANCEL,
]


@st.composite
def _not_json(draw: st.DrawFn) -> HostileFrame:
    text = draw(
        st.one_of(
            st.text(min_size=1, max_size=60),
            st.builds(lambda t: "{" + t, st.text(max_size=40)),
            st.just('{"arcp": "1.1", "id": '),
            st.just("\ufeff{}"),
            st.just('{"a": NaN}x'),
        )
    )
    try:
        json.loads(text)
    except ValueError:
        return HostileFrame(kind="not_json", text=text, request_id=None)
    return HostileFrame(kind="not_json", text=text + "}{", request_id=None)


@st.composite
def _not_object(draw: st.DrawFn) -> HostileFrame:
    value = draw(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=20),
            st.lists(json_values(4), max_size=4),
        )
    )
    return _hostile("not_object", value, None)


@st.composite
def _wrong_types(draw: st.DrawFn) -> HostileFrame:
    frame = draw(envelopes(_CLIENT_TYPES))
    field = draw(st.sampled_from(["id", "type", "payload", "session_id", "job_id", "event_seq"]))
    wrong: dict[str, st.SearchStrategy[Any]] = {
        "id": st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.booleans()),
        "type": st.one_of(st.integers(), st.lists(st.text(max_size=4), max_size=2)),
        "payload": st.one_of(st.integers(), st.text(max_size=8), st.lists(st.none(), max_size=2)),
        "session_id": st.one_of(st.integers(), st.booleans(), st.dictionaries(_names, st.none())),
        "job_id": st.one_of(st.integers(), st.booleans(), st.lists(st.none(), max_size=1)),
        "event_seq": st.one_of(st.integers(max_value=0), st.booleans(), st.text(max_size=4)),
    }
    frame[field] = draw(wrong[field])
    request_id = frame["id"] if isinstance(frame["id"], str) else None
    return _hostile("wrong_types", frame, request_id)


@st.composite
def _wrong_payload_types(draw: st.DrawFn) -> HostileFrame:
    """A known client message with a payload field of the wrong JSON type."""
    cases: list[tuple[str, dict[str, Any]]] = [
        (MessageType.SESSION_ACK, {"last_processed_seq": draw(st.text(max_size=4))}),
        (MessageType.SESSION_ACK, {"last_processed_seq": -1}),
        (MessageType.SESSION_ACK, {"last_processed_seq": True}),
        (MessageType.JOB_SUBSCRIBE, {"job_id": draw(st.integers())}),
        (MessageType.JOB_SUBSCRIBE, {"job_id": "x", "history": "yes"}),
        (MessageType.JOB_SUBSCRIBE, {"job_id": "x", "from_event_seq": -5}),
        (MessageType.SESSION_LIST_JOBS, {"limit": 0}),
        (MessageType.SESSION_LIST_JOBS, {"limit": 1001}),
        (MessageType.SESSION_LIST_JOBS, {"filter": {"status": "running"}}),
        (MessageType.JOB_SUBMIT, {"agent": draw(st.integers())}),
        (MessageType.JOB_SUBMIT, {"agent": "-bad name!"}),
        (MessageType.JOB_SUBMIT, {"agent": "echo", "max_runtime_sec": 0}),
        (MessageType.JOB_SUBMIT, {"agent": "echo", "idempotency_key": ""}),
        (MessageType.JOB_SUBMIT, {"agent": "echo", "lease_request": ["tool.call"]}),
        (MessageType.SESSION_PING, {"nonce": 5, "sent_at": "x"}),
        (MessageType.JOB_UNSUBSCRIBE, {}),
    ]
    message_type, payload = draw(st.sampled_from(cases))
    frame_id = draw(envelope_ids())
    frame = {"arcp": "1.1", "id": frame_id, "type": message_type, "payload": payload}
    return _hostile("wrong_types", frame, frame_id)


@st.composite
def _bad_ids(draw: st.DrawFn) -> HostileFrame:
    frame = draw(envelopes(_CLIENT_TYPES))
    frame["id"] = draw(
        st.one_of(
            st.just(""),
            st.text(string.ascii_letters + "-", max_size=40).filter(
                lambda t: not t or t[0] not in "01234567" or len(t) != 26
            ),
            ulids().map(str.lower).filter(lambda u: u != u.upper()),
            ulids().map(lambda u: u + "0"),
            ulids().map(lambda u: "8" + u[1:]),
        )
    )
    return _hostile("bad_id", frame, frame["id"])


@st.composite
def _bad_trace_ids(draw: st.DrawFn) -> HostileFrame:
    frame = draw(envelopes(_CLIENT_TYPES))
    frame["trace_id"] = draw(
        st.one_of(
            st.just("0" * 32),
            trace_ids().map(str.upper).filter(lambda t: t != t.lower()),
            st.text("0123456789abcdef", min_size=0, max_size=31),
            st.text("0123456789abcdef", min_size=33, max_size=40),
            st.text("ghijklmnopqrstuvwxyz-", min_size=32, max_size=32),
        )
    )
    return _hostile("bad_trace_id", frame, frame["id"])


_BAD_TIMESTAMPS = st.one_of(
    st.sampled_from(
        [
            "yesterday",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "2026-01-01T25:00:00Z",
            "",
            "2026-01-01T00:00:00+25:00",
        ]
    ),
    st.text(string.ascii_letters, min_size=1, max_size=12),
)


@st.composite
def _bad_timestamps(draw: st.DrawFn) -> HostileFrame:
    frame_id = draw(envelope_ids())
    bad = draw(_BAD_TIMESTAMPS)
    frame = {
        "arcp": "1.1",
        "id": frame_id,
        "type": MessageType.SESSION_LIST_JOBS,
        "payload": {"filter": {"created_after": bad}},
    }
    return _hostile("bad_timestamp", frame, frame_id)


@st.composite
def _unknown_types(draw: st.DrawFn) -> HostileFrame:
    known = {str(t) for t in MessageType}
    message_type = draw(
        st.one_of(
            st.text(max_size=30),
            st.builds(lambda a, b: f"{a}.{b}", _names, _names),
            st.sampled_from(["job.frobnicate", "session.HELLO", "job.submit ", "x-vendor.thing"]),
        ).filter(lambda t: t not in known)
    )
    frame_id = draw(envelope_ids())
    frame = {"arcp": "1.1", "id": frame_id, "type": message_type, "payload": {}}
    return _hostile("unknown_type", frame, frame_id)


#: Types only a runtime sends: a client's copy is refused ("sent by runtimes").
RUNTIME_ONLY_TYPES: tuple[str, ...] = (
    MessageType.SESSION_WELCOME,
    MessageType.SESSION_ERROR,
    MessageType.SESSION_JOBS,
    MessageType.SESSION_CLOSED,
    MessageType.JOB_ACCEPTED,
    MessageType.JOB_EVENT,
    MessageType.JOB_RESULT,
    MessageType.JOB_ERROR,
    MessageType.JOB_CANCELLED,
    MessageType.JOB_SUBSCRIBED,
)


@st.composite
def _runtime_only(draw: st.DrawFn) -> HostileFrame:
    frame = draw(envelopes(list(RUNTIME_ONLY_TYPES)))
    return _hostile("runtime_only_type", frame, frame["id"])


@st.composite
def _wrong_version(draw: st.DrawFn) -> HostileFrame:
    frame = draw(envelopes(_CLIENT_TYPES))
    frame["arcp"] = draw(
        st.one_of(st.sampled_from(["1.0", "2.0", "1.1.0", ""]), st.integers(), st.none())
    )
    if frame["arcp"] is None:
        frame["arcp"] = 1.1
    return _hostile("wrong_version", frame, frame["id"])


@st.composite
def _deeply_nested(draw: st.DrawFn) -> HostileFrame:
    depth = draw(st.integers(50, 5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "1" + closer * depth
    frame_id = draw(envelope_ids())
    # Nested where the schema wants a string: the frame is refused whether or not
    # the JSON parser gives up first, and no agent ever runs with it.
    where = draw(st.sampled_from(["job_id", "payload", "cursor"]))
    if where == "job_id":
        text = (
            f'{{"arcp":"1.1","id":"{frame_id}","type":"job.subscribe",'
            f'"payload":{{"job_id":{nested}}}}}'
        )
    elif where == "payload":
        text = f'{{"arcp":"1.1","id":"{frame_id}","type":"session.ack","payload":{nested}}}'
    else:
        text = (
            f'{{"arcp":"1.1","id":"{frame_id}","type":"session.list_jobs",'
            f'"payload":{{"cursor":{nested}}}}}'
        )
    # The id comes before the nesting: a runtime reads it from the frame's first bytes.
    return HostileFrame(kind="deeply_nested", text=text, request_id=frame_id)


@st.composite
def _huge(draw: st.DrawFn, limit: int) -> HostileFrame:
    extra = draw(st.sampled_from([1, 7, 4096, limit]))
    frame_id = draw(envelope_ids())
    head = f'{{"arcp":"1.1","id":"{frame_id}","type":"session.ping","payload":{{"nonce":"'
    tail = '","sent_at":"2026-01-01T00:00:00.000000Z"}}'
    filler = "x" * max(0, limit + extra - len(head) - len(tail))
    # Too large to read whole, but its id is in its first bytes.
    return HostileFrame(kind="huge", text=head + filler + tail, request_id=frame_id)


def _schema() -> st.SearchStrategy[HostileFrame]:
    """One field of a client message broken (``testing.schema``), after the handshake."""
    in_session = tuple(t for t in CLIENT_SCHEMA if t not in FIRST_FRAME_TYPES)
    return schema_violations(in_session).map(
        lambda v: HostileFrame(kind="schema", text=json.dumps(v.frame), request_id=v.frame_id)
    )


#: Every kind of hostile frame ``hostile_frames`` makes.
HOSTILE_KINDS: tuple[str, ...] = (
    "not_json",
    "not_object",
    "wrong_types",
    "bad_id",
    "bad_trace_id",
    "bad_timestamp",
    "unknown_type",
    "runtime_only_type",
    "wrong_version",
    "deeply_nested",
    "huge",
    "schema",
)


def hostile_frames(
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    huge: bool = True,
    kinds: Sequence[str] | None = None,
) -> st.SearchStrategy[HostileFrame]:
    """Frames a runtime must answer with ``INVALID_REQUEST`` (and keep serving).

    Args:
        max_message_size: the runtime's inbound limit, for ``huge`` frames.
        huge: include frames over the limit (a megabyte each by default).
        kinds: only these kinds (see ``HOSTILE_KINDS``).

    Frames refused before a full parse (``deeply_nested``, ``huge``) carry their id
    in their first bytes, so the answer must be correlated with it too.
    """
    by_kind: dict[str, list[st.SearchStrategy[HostileFrame]]] = {
        "not_json": [_not_json()],
        "not_object": [_not_object()],
        "wrong_types": [_wrong_types(), _wrong_payload_types()],
        "bad_id": [_bad_ids()],
        "bad_trace_id": [_bad_trace_ids()],
        "bad_timestamp": [_bad_timestamps()],
        "unknown_type": [_unknown_types()],
        "runtime_only_type": [_runtime_only()],
        "wrong_version": [_wrong_version()],
        "deeply_nested": [_deeply_nested()],
        "huge": [_huge(max_message_size)] if huge else [],
        "schema": [_schema()],
    }
    wanted = HOSTILE_KINDS if kinds is None else tuple(kinds)
    unknown = set(wanted) - set(by_kind)
    if unknown:
        raise ValueError(f"unknown hostile frame kinds {sorted(unknown)}")
    options = [strategy for kind in wanted for strategy in by_kind[kind]]
    if not options:
        raise ValueError("no kind of hostile frame left to generate")
    return st.one_of(options)


def request_id_ok(frame: HostileFrame, request_id: Any) -> bool:
    """Whether an error's ``request_id`` correlates correctly with ``frame``.

    Text that is not JSON may still open with an ``"id"`` member (``{"id":"x",...``):
    an answer that names it is correct too.
    """
    if frame.kind == "not_json" and frame.request_id is None and isinstance(request_id, str):
        return frame.text.lstrip().startswith("{") and f'"{request_id}"' in frame.text
    return bool(request_id == frame.request_id)


# == raw WebSocket violations ====================================================================


@attrs.frozen
class WebSocketViolation:
    """Bytes that break RFC 6455, sent by a client after a good opening handshake.

    Attributes:
        kind: the rule broken.
        data: the raw bytes.
        close_codes: close codes the server may answer with (it may also just drop
            the TCP connection, which a test sees as no close frame).
    """

    kind: str
    data: bytes
    close_codes: frozenset[int] = frozenset({1002})


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame, as a client would send it (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    size = len(payload) if length is None else length
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + size.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


_PING_JSON = b'{"arcp":"1.1","id":"01J00000000000000000000000","type":"session.ping"}'


def websocket_violations() -> st.SearchStrategy[WebSocketViolation]:
    """Frame-level violations a WebSocket server must refuse by closing."""
    text, binary, close, ping, cont = 0x1, 0x2, 0x8, 0x9, 0x0
    cases = [
        WebSocketViolation("unmasked", ws_frame(text, _PING_JSON, mask=False)),
        WebSocketViolation("reserved_opcode", ws_frame(0x3, b"x")),
        WebSocketViolation("reserved_control_opcode", ws_frame(0xB, b"")),
        WebSocketViolation("rsv1_without_extension", ws_frame(text, b"{}", rsv=4)),
        WebSocketViolation("rsv3", ws_frame(text, b"{}", rsv=1)),
        WebSocketViolation("invalid_utf8", ws_frame(text, b'{"a":"\xff\xfe"}'), frozenset({1007})),
        WebSocketViolation("long_control_frame", ws_frame(ping, b"p" * 126)),
        WebSocketViolation("fragmented_control_frame", ws_frame(ping, b"p", fin=False)),
        WebSocketViolation("orphan_continuation", ws_frame(cont, b"{}")),
        WebSocketViolation(
            "interleaved_data_frames",
            ws_frame(text, b'{"a":', fin=False) + ws_frame(binary, b"1}"),
        ),
        WebSocketViolation("close_code_out_of_range", ws_frame(close, (999).to_bytes(2, "big"))),
        WebSocketViolation("close_code_reserved", ws_frame(close, (1005).to_bytes(2, "big"))),
        WebSocketViolation("close_payload_one_byte", ws_frame(close, b"\x03")),
        WebSocketViolation(
            "close_reason_invalid_utf8",
            ws_frame(close, (1000).to_bytes(2, "big") + b"\xff"),
            frozenset({1002, 1007}),
        ),
        WebSocketViolation(
            "length_msb_set",
            ws_frame(text, b"", length=1 << 63),
            frozenset({1002, 1009}),
        ),
    ]
    return st.sampled_from(cases)


# == close/resume programs =======================================================================

_small = st.integers(0, 7)
_seconds = st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 70.0])


def program_steps(
    *,
    kinds: Sequence[str] = ("peer", "client"),
    agents: Sequence[str] = (),
    inputs: st.SearchStrategy[Any] | None = None,
) -> st.SearchStrategy[Step]:
    """One step of a close/resume program (see ``program`` for what each does).

    Args:
        kinds: session kinds ``Open`` may create.
        agents: agent refs ``Submit`` may name besides the puppet (your agents).
        inputs: inputs for those agents (default: ``None``).
    """
    agent_choice: st.SearchStrategy[str | None] = st.none()
    if agents:
        agent_choice = st.one_of(st.none(), st.sampled_from(list(agents)))
    input_choice: st.SearchStrategy[Any] = inputs if inputs is not None else st.none()
    return st.one_of(
        st.builds(
            Open,
            principal=st.sampled_from(["alice", "bob"]),
            kind=st.sampled_from(list(kinds)),
            dialect=st.sampled_from(["spec", "reference"]),
        ),
        st.builds(Submit, session=_small, agent=agent_choice, input=input_choice),
        st.builds(Emit, job=_small, count=st.integers(1, 12)),
        st.builds(Emit, job=_small, count=st.integers(1, 3)),
        st.builds(Finish, job=_small, fail=st.booleans()),
        st.builds(Drop, session=_small, hold=st.booleans()),
        st.builds(Close, session=_small),
        st.builds(HeartbeatStall, session=_small),
        st.builds(
            Resume,
            session=_small,
            variant=st.sampled_from(
                ["valid", "valid", "stale_token", "expired", "wrong_principal", "wrong_dialect"]
            ),
            rewind=st.integers(0, 4),
            form=st.sampled_from(["hello", "resume_frame", "flat", "ruby"]),
        ),
        st.builds(Ack, session=_small, lag=st.integers(0, 3)),
        st.builds(Cancel, session=_small, job=_small),
        st.builds(Subscribe, session=_small, job=_small, history=st.booleans()),
        st.builds(Unsubscribe, session=_small, job=_small),
        st.builds(ListJobs, session=_small),
        st.builds(Advance, seconds=_seconds),
    )


def close_resume_sequences(
    *,
    min_size: int = 1,
    max_size: int = 30,
    kinds: Sequence[str] = ("peer", "client"),
    agents: Sequence[str] = (),
    inputs: st.SearchStrategy[Any] | None = None,
) -> st.SearchStrategy[list[Step]]:
    """Programs of submit / emit / drop / close / heartbeat stall / resume / ack /
    cancel / subscribe / unsubscribe steps (``min_size`` to ``max_size`` of them),
    starting with one to three ``Open``s.

    Run one with ``run_on_mock_clock(run_program, program)``.
    """
    if not 1 <= min_size <= max_size:
        raise ValueError("need 1 <= min_size <= max_size")
    opening = st.builds(
        Open,
        principal=st.sampled_from(["alice", "bob"]),
        kind=st.sampled_from(list(kinds)),
        dialect=st.sampled_from(["spec", "reference"]),
    )
    steps = program_steps(kinds=kinds, agents=agents, inputs=inputs)

    @st.composite
    def programs(draw: st.DrawFn) -> list[Step]:
        opens: list[Step] = draw(st.lists(opening, min_size=1, max_size=min(3, max_size)))
        rest = draw(
            st.lists(
                steps,
                min_size=max(0, min_size - len(opens)),
                max_size=max_size - len(opens),
            )
        )
        return [*opens, *rest]

    return programs()
