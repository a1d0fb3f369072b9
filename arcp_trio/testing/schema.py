"""Every field a client may send, and frames that break exactly one of them.

``CLIENT_SCHEMA`` describes each client message's payload as the spec, WIRE.md and
``docs/limits.md`` give it, field by field: its JSON type, whether it is required,
and its range or size limit. It is written by hand, apart from the codec, so that it
can judge it: ``schema_violations()`` breaks one field of a valid frame (a wrong JSON
type, a value out of range, one character or entry too many, a missing required
field) and says which path the runtime's ``INVALID_REQUEST`` must name. A test holds
``CLIENT_SCHEMA`` to the payload classes, so a field added to the protocol without a
limit fails it.

This module imports ``hypothesis``.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING, Any

import attrs
from hypothesis import strategies as st

from ..wire import limits
from ..wire.messages import MessageType

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CLIENT_SCHEMA",
    "FIRST_FRAME_TYPES",
    "Field",
    "SchemaViolation",
    "schema_violations",
    "valid_payload",
]

_MAX = limits.MAX_INT


@attrs.frozen
class Field:
    """One payload field.

    Attributes:
        kind: ``str``, ``int``, ``bool``, ``strs`` (an array of strings), ``object``
            (its own fields in ``fields``), ``any`` (free-form JSON), ``lease``
            (namespace → array of patterns), ``timestamp``, ``agent``, ``cursor``,
            ``statuses``, ``array`` (of anything).
        valid: a value that passes.
        required: absent is refused.
        max_len: for ``str``: characters; for ``strs``/``array``: entries.
        min_len: for ``str``.
        item_len: for ``strs``: characters per entry.
        low, high: for ``int``.
        fields: for ``object``.
    """

    kind: str
    valid: Any
    required: bool = False
    max_len: int | None = None
    min_len: int = 0
    item_len: int | None = None
    low: int | None = None
    high: int | None = None
    fields: Mapping[str, Field] | None = None


def _str(valid: str, max_len: int, *, required: bool = False, min_len: int = 0) -> Field:
    return Field("str", valid, required=required, max_len=max_len, min_len=min_len)


def _int(valid: int, low: int, high: int, *, required: bool = False) -> Field:
    return Field("int", valid, required=required, low=low, high=high)


def _obj(fields: Mapping[str, Field], *, required: bool = False) -> Field:
    valid = {name: field.valid for name, field in fields.items()}
    return Field("object", valid, required=required, fields=fields)


_REF = limits.MAX_REF_LEN
_TIMESTAMP = Field("timestamp", "2026-05-13T19:42:13.000Z")
_AUTH = _obj(
    {
        "token": _str("tok-alice", limits.MAX_TOKEN_LEN, required=True),
        "scheme": _str("bearer", limits.MAX_SCHEME_LEN),
    },
    required=True,
)
_RESUME_FIELDS = {
    "resume_token": _str("rtk_x", _REF),
    "token": _str("rtk_x", _REF),
    "session_id": _str("sess_x", _REF),
    "last_event_seq": _int(0, 0, _MAX),
}

#: Client message type → payload fields (WIRE.md §3, docs/limits.md).
CLIENT_SCHEMA: dict[str, dict[str, Field]] = {
    MessageType.SESSION_HELLO: {
        "client": _obj(
            {
                "name": _str("c", limits.MAX_NAME_LEN, required=True),
                "version": _str("1", limits.MAX_NAME_LEN, required=True),
            },
            required=True,
        ),
        "auth": _AUTH,
        "capabilities": _obj(
            {
                "encodings": Field(
                    "strs", ["json"], max_len=limits.MAX_ENCODINGS, item_len=limits.MAX_FEATURE_LEN
                ),
                "features": Field(
                    "strs",
                    ["heartbeat"],
                    max_len=limits.MAX_FEATURES,
                    item_len=limits.MAX_FEATURE_LEN,
                ),
                "agents": Field("array", [], max_len=limits.MAX_AGENTS_ADVERTISED),
            }
        ),
        "resume": _obj(_RESUME_FIELDS),
        "resume_token": _str("rtk_x", _REF),
        "last_event_seq": _int(0, 0, _MAX),
        "session_id": _str("sess_x", _REF),
    },
    MessageType.SESSION_RESUME: {
        "resume_token": _str("rtk_x", _REF, required=True),
        "last_event_seq": _int(0, 0, _MAX),
        "session_id": _str("sess_x", _REF),
        "auth": attrs.evolve(_AUTH, required=False),
    },
    MessageType.SESSION_PING: {
        "nonce": _str("n", _REF, required=True),
        "sent_at": attrs.evolve(_TIMESTAMP, required=True),
    },
    MessageType.SESSION_PONG: {
        "ping_nonce": _str("n", _REF, required=True),
        "received_at": _TIMESTAMP,
    },
    MessageType.SESSION_ACK: {"last_processed_seq": _int(0, 0, _MAX, required=True)},
    MessageType.SESSION_LIST_JOBS: {
        "filter": _obj(
            {
                "status": Field("statuses", ["running"], max_len=limits.MAX_STATUS_FILTER),
                "agent": Field("agent", "echo"),
                "created_after": _TIMESTAMP,
            }
        ),
        "limit": _int(10, 1, 1000),
        "cursor": Field("cursor", "0"),
    },
    MessageType.SESSION_CLOSE: {"reason": _str("done", limits.MAX_REASON_LEN)},
    MessageType.SESSION_BYE: {
        "reason": _str("done", limits.MAX_REASON_LEN, required=True),
        "code": _str("CANCELLED", limits.MAX_CODE_LEN),
    },
    MessageType.JOB_SUBMIT: {
        "agent": Field("agent", "echo", required=True),
        "input": Field("any", {"x": [1, 2]}),
        "lease_request": Field("lease", {"tool.call": ["search"]}),
        "lease_constraints": _obj({"expires_at": _TIMESTAMP}),
        "idempotency_key": _str("k", limits.MAX_IDEMPOTENCY_KEY_LEN, min_len=1),
        "max_runtime_sec": _int(60, 1, 86400),
        "parent_job_id": _str("job_x", _REF),
        "delegate_id": _str("d", _REF),
    },
    MessageType.JOB_CANCEL: {
        "reason": _str("stop", limits.MAX_REASON_LEN),
        "code": _str("CANCELLED", limits.MAX_CODE_LEN),
        "job_id": _str("job_x", _REF),
    },
    MessageType.JOB_SUBSCRIBE: {
        "job_id": _str("job_x", _REF, required=True),
        "history": Field("bool", False),
        "from_event_seq": _int(0, 0, _MAX),
    },
    MessageType.JOB_UNSUBSCRIBE: {"job_id": _str("job_x", _REF, required=True)},
}

#: Types that open a connection (answered, then the connection closes).
FIRST_FRAME_TYPES: frozenset[str] = frozenset(
    {MessageType.SESSION_HELLO, MessageType.SESSION_RESUME}
)


def valid_payload(message_type: str) -> dict[str, Any]:
    """A payload of ``message_type`` with every field present and valid.

    The future ``expires_at`` of a submit's lease is far ahead (2100); a hello's
    resume fields are left out (they would ask to resume a session).
    """
    payload = {
        name: copy.deepcopy(field.valid) for name, field in CLIENT_SCHEMA[message_type].items()
    }
    if message_type == MessageType.SESSION_HELLO:
        for name in ("resume", "resume_token", "last_event_seq", "session_id"):
            payload.pop(name)
    if message_type == MessageType.JOB_SUBMIT:
        payload["lease_constraints"] = {"expires_at": "2100-01-01T00:00:00Z"}
        payload.pop("idempotency_key")
    return payload


@attrs.frozen
class SchemaViolation:
    """A client frame with one field broken.

    Attributes:
        message_type: its envelope ``type``.
        frame: the frame, as a JSON-ready dict (its ``id`` is the expected ``request_id``).
        path: the field path one of the error's ``details.errors`` must end with.
        how: what was broken (``wrong_type``, ``out_of_range``, ``oversized``, ``missing``).
    """

    message_type: str
    frame: dict[str, Any]
    path: str
    how: str

    @property
    def frame_id(self) -> str:
        return str(self.frame["id"])


_WRONG: dict[str, list[Any]] = {
    "str": [5, True, [], {}, 1.5],
    "int": ["1", 1.5, 1.0, True, [], {}],
    "bool": [1, "true", [], {}],
    "object": ["x", [1], 5, True],
    "strs": ["abc", 5, {}],
    "array": ["abc", 5, {}],
    "lease": [["tool.call"], "tool.call", 5],
    "timestamp": [5, True, [], {}],
    "agent": [5, True, [], {}],
    "cursor": [5, True, [], {}],
    "statuses": ["running", 5, {}],
    "any": [],
}


def _breakages(field: Field, path: str) -> list[tuple[Any, str, str]]:
    """(bad value, path the error names, how) for one field; ``_MISSING`` removes it."""
    out: list[tuple[Any, str, str]] = [(bad, path, "wrong_type") for bad in _WRONG[field.kind]]
    if field.required:
        out.append((_MISSING, path, "missing"))
    kind = field.kind
    if kind == "str":
        assert field.max_len is not None
        out.append(("x" * (field.max_len + 1), path, "oversized"))
        if field.min_len:
            out.append(("x" * (field.min_len - 1), path, "out_of_range"))
    elif kind == "int":
        assert field.low is not None
        assert field.high is not None
        out.extend((bad, path, "out_of_range") for bad in (field.low - 1, field.high + 1))
        out.extend((bad, path, "out_of_range") for bad in (2**63, -(2**63) - 1, 2**64))
    elif kind in ("strs", "array", "statuses"):
        assert field.max_len is not None
        out.append(
            ([field.valid[0] if field.valid else "a"] * (field.max_len + 1), path, "oversized")
        )
        if kind == "strs":
            assert field.item_len is not None
            out.append(([5], f"{path}[0]", "wrong_type"))
            out.append((["x" * (field.item_len + 1)], f"{path}[0]", "oversized"))
        if kind == "statuses":
            out.append((["running", "sleeping"], f"{path}[1]", "out_of_range"))
    elif kind == "timestamp":
        out.extend((bad, path, "out_of_range") for bad in ("yesterday", "2026-13-01T00:00:00Z"))
        out.append(
            ("2026-01-01T00:00:00" + "0" * limits.MAX_TIMESTAMP_LEN + "Z", path, "oversized")
        )
    elif kind == "agent":
        out.append(("bad name!", path, "out_of_range"))
        out.append(("a" * (limits.MAX_NAME_LEN + 1), path, "oversized"))
    elif kind == "cursor":
        out.extend((bad, path, "out_of_range") for bad in ("x", "-1", "²"))
        out.append(("9" * (limits.MAX_CURSOR_LEN + 1), path, "oversized"))
    elif kind == "lease":
        item = f"{path}['tool.call']"
        out.append(({"tool.call": "search"}, item, "wrong_type"))
        out.append(({"tool.call": [5]}, f"{item}[0]", "wrong_type"))
        out.append(({"tool.call": ["x" * (limits.MAX_PATTERN_LEN + 1)]}, f"{item}[0]", "oversized"))
        many = ["s"] * (limits.MAX_PATTERNS_PER_NAMESPACE + 1)
        out.append(({"tool.call": many}, item, "oversized"))
        spaces = {f"x-vendor.n{i}": ["s"] for i in range(limits.MAX_LEASE_NAMESPACES + 1)}
        out.append((spaces, path, "oversized"))
        wild = ["*" * (limits.MAX_PATTERN_WILDCARDS + 1)]
        out.append(({"tool.call": wild}, f"{item}[0]", "oversized"))
    elif kind == "any":
        deep: Any = 0
        for _ in range(limits.MAX_NESTING + 1):
            deep = [deep]
        out.append((deep, path, "oversized"))
        out.append(([2**64], path, "out_of_range"))
    return out


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Any = _Missing()


@functools.cache
def _all_violations(message_type: str) -> tuple[tuple[tuple[str, ...], Any, str, str], ...]:
    """(field path as keys, bad value, error path, how) for every field of the type
    (built once per type: each example picks one by index)."""
    found: list[tuple[tuple[str, ...], Any, str, str]] = []

    def walk(fields: Mapping[str, Field], keys: tuple[str, ...]) -> None:
        for name, field in fields.items():
            where = (*keys, name)
            path = "$.payload." + ".".join(where)
            for bad, error_path, how in _breakages(field, path):
                found.append((where, bad, error_path, how))
            if field.kind == "object":
                assert field.fields is not None
                walk(field.fields, where)

    walk(CLIENT_SCHEMA[message_type], ())
    return tuple(found)


def _violation(message_type: str, index: int) -> SchemaViolation:
    keys, bad, path, how = _all_violations(message_type)[index]
    payload = valid_payload(message_type)
    target = payload
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    if bad is _MISSING:
        target.pop(keys[-1], None)
    else:
        target[keys[-1]] = copy.deepcopy(bad)
    # A valid ULID that is the same every run (hypothesis replays examples exactly).
    frame_id = f"01J{list(CLIENT_SCHEMA).index(message_type):03d}{index:020d}"
    frame = {"arcp": "1.1", "id": frame_id, "type": message_type, "payload": payload}
    if message_type == MessageType.JOB_CANCEL:
        frame["job_id"] = "job_x"
    return SchemaViolation(message_type=message_type, frame=frame, path=path, how=how)


def schema_violations(
    types: tuple[str, ...] | None = None,
) -> st.SearchStrategy[SchemaViolation]:
    """Client frames with exactly one field broken (see the module docstring).

    Args:
        types: only these message types (default: every client message type).
    """
    chosen = tuple(CLIENT_SCHEMA) if types is None else types
    return st.sampled_from([(t, i) for t in chosen for i in range(len(_all_violations(t)))]).map(
        lambda pick: _violation(*pick)
    )
