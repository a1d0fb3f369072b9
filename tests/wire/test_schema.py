"""Every field of every client message, broken one at a time (``testing.schema``).

The schema is written by hand from the spec, WIRE.md and docs/limits.md; here it
judges the codec exhaustively (every breakage of every field), and is itself held to
the payload classes, so a field added without a limit fails the build.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from arcp_trio.testing.schema import (
    CLIENT_SCHEMA,
    Field,
    SchemaViolation,
    _all_violations,
    _violation,
    valid_payload,
)
from arcp_trio.testing.strategies import RUNTIME_ONLY_TYPES
from arcp_trio.wire.codec import decode
from arcp_trio.wire.errors import ErrorCode, RemoteProtocolError
from arcp_trio.wire.messages import PAYLOAD_TYPES, MessageType

ALL = [
    _violation(message_type, index)
    for message_type in CLIENT_SCHEMA
    for index in range(len(_all_violations(message_type)))
]


def test_the_schema_covers_every_client_message_and_field() -> None:
    assert set(CLIENT_SCHEMA) | set(RUNTIME_ONLY_TYPES) == {str(t) for t in MessageType}

    def check(cls: type[Any], fields: dict[str, Field] | Any, where: str) -> None:
        names = {a.name for a in attrs.fields(cls)}
        assert names == set(fields), f"{where}: schema {sorted(fields)} vs class {sorted(names)}"
        for attribute in attrs.fields(cls):
            field = fields[attribute.name]
            required = attribute.default is attrs.NOTHING
            assert field.required == required, f"{where}.{attribute.name}: required?"
            if field.kind == "object":
                nested = next(
                    t
                    for t in getattr(attribute.type, "__args__", (attribute.type,))
                    if attrs.has(t)
                )
                check(nested, field.fields, f"{where}.{attribute.name}")

    resolved = {t: attrs.resolve_types(PAYLOAD_TYPES[t]) for t in CLIENT_SCHEMA}
    for message_type, cls in resolved.items():
        for attribute in attrs.fields(cls):
            for arg in getattr(attribute.type, "__args__", (attribute.type,)):
                if attrs.has(arg):
                    attrs.resolve_types(arg)
        check(cls, CLIENT_SCHEMA[message_type], message_type)


@pytest.mark.parametrize("message_type", list(CLIENT_SCHEMA))
def test_the_valid_payloads_decode(message_type: str) -> None:
    frame = {"id": "01J00000000000000000000000", "type": message_type, "payload": {}}
    frame["payload"] = valid_payload(message_type)
    assert decode(json.dumps(frame)).type == message_type


@pytest.mark.parametrize("violation", ALL, ids=lambda v: f"{v.message_type}:{v.path}:{v.how}")
def test_every_breakage_is_invalid_request_at_its_path(violation: SchemaViolation) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(json.dumps(violation.frame))
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert caught.value.request_id == violation.frame_id
    errors = (caught.value.details or {}).get("errors", [])
    assert any(e.endswith(f"@ {violation.path}") for e in errors), (violation, errors)


def test_every_kind_of_breakage_is_exercised() -> None:
    assert {v.how for v in ALL} == {"wrong_type", "out_of_range", "oversized", "missing"}
    assert len(ALL) > 300
