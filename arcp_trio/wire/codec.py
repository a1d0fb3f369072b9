"""Envelope codec: JSON text ⇄ ``Envelope`` with a typed payload.

``decode`` is the only way inbound text becomes a message. It checks the envelope
rules of WIRE.md §2 by hand (they are few, and hot), then structures the payload
with one strict cattrs converter (no silent ``str(3)`` coercions). Every failure is
one ``RemoteProtocolError`` (``INVALID_REQUEST``) whose ``details.errors`` lists
field paths (``$.payload.agent``) and whose ``request_id`` is the offending frame's
id when it had one. §5: unknown envelope fields and unknown payload keys are
ignored.

Hostile input (``limits``): a frame is refused, with the field path, when a field
breaks the schema or a limit. JSON constants (``NaN``, ``Infinity``), numbers that
overflow to infinity and lone surrogate escapes are refused while parsing: JSON
cannot carry them faithfully, and a value that cannot be written back must never be
echoed. A frame refused before its envelope could be read (not JSON, too deep for the
parser, too large, not UTF-8) is still correlated when its ``id`` can be read from
its first bytes (``recover_id``).

Outbound, ``encode`` serialises an ``Envelope`` compactly, omitting unset (None)
fields. Job frames (events and terminals) are the hot path and are built by
``encode_job_frame`` from a payload that is serialised once per event and shared by
every session that watches the job.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any, Final

import attrs
import cattrs
import orjson
from cattrs.cols import is_mapping, is_mutable_sequence, list_structure_factory
from cattrs.errors import ClassValidationError, IterableValidationError
from cattrs.gen import make_dict_structure_fn
from cattrs.strategies import configure_union_passthrough

from .errors import RemoteProtocolError
from .ids import is_envelope_id, is_trace_id
from .limits import (
    ID_SCAN_CHARS,
    MAX_ID_LEN,
    MAX_INT,
    MAX_REF_LEN,
    MAX_TIMESTAMP_LEN,
    MAX_TYPE_LEN,
    MIN_INT,
)
from .messages import PAYLOAD_TYPES, FieldError, MessageType
from .timestamps import parse_timestamp

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ARCP_VERSION",
    "Envelope",
    "decode",
    "dumps",
    "encode",
    "encode_job_frame",
    "encode_ping_frame",
    "recover_id",
    "structure_payload",
    "unstructure_payload",
]

ARCP_VERSION: Final = "1.1"


@attrs.frozen(kw_only=True)
class Envelope:
    """One ARCP frame (§5). ``payload`` is an instance of the type's payload class."""

    type: str
    id: str
    payload: Any
    session_id: str | None = None
    trace_id: str | None = None
    job_id: str | None = None
    event_seq: int | None = None
    arcp: str = ARCP_VERSION


# --- the strict converter -------------------------------------------------------------


def _json_type(value: Any) -> str:
    """A JSON value's type as a client would name it (not Python's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _strict(expected: type[Any], name: str) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        # bool is an int subclass; JSON true is never an integer here.
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {name}, got {_json_type(value)}")
        return value

    return hook


def _strict_int(value: Any, _type: Any) -> int:
    # JSON 2.0 is a number, but not an integer: fractional and integral floats are
    # refused alike, and nothing beyond 64 bits is ever rounded or wrapped.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {_json_type(value)}")
    if not MIN_INT <= value <= MAX_INT:
        raise ValueError("integer out of range (signed 64-bit)")
    return value


def _strict_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {_json_type(value)}")
    return float(value)


def _shape_only(
    expected: type[Any], name: str, make: Callable[[Any, cattrs.Converter], Any]
) -> Callable[[Any, cattrs.Converter], Any]:
    """A hook factory that refuses a JSON value of the wrong shape before structuring.

    cattrs reads a payload class's fields with ``in`` and ``[]``, so a string or an
    array would become an instance with every default (a ``lease_constraints`` of
    ``"x"`` meaning no expiry: fail-open), and it turns ``"abc"`` into ``["a", "b",
    "c"]`` where a list is meant.
    """

    def factory(type_: Any, converter: cattrs.Converter) -> Any:
        structure = make(type_, converter)

        def hook(value: Any, target: Any) -> Any:
            if not isinstance(value, expected):
                raise TypeError(f"expected {name}, got {_json_type(value)}")
            return structure(value, target)

        return hook

    return factory


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook_factory(
        is_mutable_sequence, _shape_only(list, "an array", list_structure_factory)
    )
    converter.register_structure_hook_factory(
        is_mapping,
        _shape_only(dict, "an object", lambda t, c: c.gen_structure_mapping(t)),
    )
    converter.register_structure_hook_factory(
        attrs.has, _shape_only(dict, "an object", make_dict_structure_fn)
    )
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict(bool, "a boolean"))
    converter.register_structure_hook(float, _strict_float)
    configure_union_passthrough(int | bool | str | float | None, converter)
    return converter


_converter: Final = _make_converter()


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _field_errors(exc: BaseException, path: str) -> list[str]:
    """``"message @ $.payload.field[...]"`` for every failure under ``exc``.

    cattrs' own ``transform_error`` with one addition: a ``FieldError`` (a payload
    class's validator) names the field it is about, so the path reaches it.
    """
    if isinstance(exc, IterableValidationError):
        items, without = exc.group_exceptions()
        errors = [
            line for sub, item in items for line in _field_errors(sub, f"{path}[{item.index!r}]")
        ]
    elif isinstance(exc, ClassValidationError):
        fields, without = exc.group_exceptions()
        errors = [
            line for sub, field in fields for line in _field_errors(sub, f"{path}.{field.name}")
        ]
    elif isinstance(exc, FieldError):
        return [f"{exc.message} @ {path}.{exc.field}"]
    else:
        return [f"{_format_exception(exc, None)} @ {path}"]
    return errors + [line for sub in without for line in _field_errors(sub, path)]


def structure_payload(message_type: str, payload: dict[str, Any]) -> Any:
    """Structure a payload dict into its message class.

    Raises:
        RemoteProtocolError: the payload does not fit the type's schema.
    """
    cls = PAYLOAD_TYPES[message_type]
    try:
        return _converter.structure(payload, cls)
    except Exception as exc:
        errors = _field_errors(exc, "$.payload")
        raise RemoteProtocolError(
            f"invalid {message_type} payload: {'; '.join(errors)}",
            details={"errors": errors},
        ) from None


def unstructure_payload(payload: Any) -> dict[str, Any]:
    """A payload instance as a JSON-ready dict, unset (None) fields omitted."""
    result: dict[str, Any] = attrs.asdict(
        payload, recurse=True, filter=lambda _attr, value: value is not None
    )
    return result


# --- decode -----------------------------------------------------------------------------

_ENVELOPE_STRINGS: Final = ("session_id", "job_id")


def _envelope_errors(data: dict[str, Any], raw_id: Any, request_id: str | None) -> list[str]:
    """What is wrong with a frame's envelope fields (everything but the payload's schema)."""
    errors: list[str] = []
    version = data.get("arcp", ARCP_VERSION)
    if version != ARCP_VERSION:
        errors.append(f"unsupported arcp version {version!r} @ $.arcp")
    if raw_id is None:
        errors.append("required field missing @ $.id")
    elif request_id is None or len(request_id) > MAX_ID_LEN or not is_envelope_id(request_id):
        errors.append("id must be a ULID, a lowercase UUIDv7 or prefix_ULID @ $.id")
    message_type = data.get("type")
    if message_type is None:
        errors.append("required field missing @ $.type")
    elif not isinstance(message_type, str):
        errors.append(f"expected a string, got {_json_type(message_type)} @ $.type")
    elif len(message_type) > MAX_TYPE_LEN:
        errors.append(f"must be at most {MAX_TYPE_LEN} characters @ $.type")
    for name in _ENVELOPE_STRINGS:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            errors.append(f"expected a string, got {_json_type(value)} @ $.{name}")
        elif value is not None and len(value) > MAX_REF_LEN:
            errors.append(f"must be at most {MAX_REF_LEN} characters @ $.{name}")
    trace_id = data.get("trace_id")
    if trace_id is not None and not (isinstance(trace_id, str) and is_trace_id(trace_id)):
        errors.append("trace_id must be 32 lowercase hex characters, not all zeros @ $.trace_id")
    event_seq = data.get("event_seq")
    if event_seq is not None and (
        isinstance(event_seq, bool)
        or not isinstance(event_seq, int)
        or not 1 <= event_seq <= MAX_INT
    ):
        errors.append("event_seq must be an integer from 1 to 2^63-1 @ $.event_seq")
    payload = data.get("payload")
    if payload is not None and not isinstance(payload, dict):
        errors.append("payload must be a JSON object @ $.payload")
    return errors


#: ``is_session_pong`` looks at texts up to this long (a pong is about 230 bytes).
PONG_CHECK_LIMIT: Final = 1024
#: An integer literal of 20 digits or more (beyond 64 bits), or text that looks like one.
_LONG_DIGITS: Final = re.compile(r"[:,\[][ \t\n\r]*-?[0-9]{20}")


def is_session_pong(text: str) -> bool:
    """Whether ``decode(text)`` would return a ``session.pong`` — without building it.

    Idle sessions answer one ping per heartbeat interval each (§6.4), so the runtime
    checks their pongs this way, at a fraction of ``decode``'s cost. True means
    ``decode`` returns a pong. False means it would not, except for texts this check
    leaves to ``decode`` (which then answers them): longer than ``PONG_CHECK_LIMIT``,
    or JSON that orjson refuses and the standard parser takes (``NaN``, lone
    surrogate escapes, out-of-range floats). The length limit also keeps nesting
    shallow, where the two parsers' depth limits differ. A property test holds this
    to ``decode``. Never raises.
    """
    if len(text) > PONG_CHECK_LIMIT or _LONG_DIGITS.search(text) is not None:
        # (orjson reads integers beyond 64 bits as floats; decode refuses them.)
        return False
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(data, dict) or data.get("type") != "session.pong":
        return False
    payload = data.get("payload")
    if not isinstance(payload, dict):
        return False
    # SessionPong: ping_nonce a string (required), received_at a timestamp or null.
    nonce = payload.get("ping_nonce")
    if not isinstance(nonce, str) or len(nonce) > MAX_REF_LEN:
        return False
    received_at = payload.get("received_at")
    if received_at is not None:
        if not isinstance(received_at, str) or len(received_at) > MAX_TIMESTAMP_LEN:
            return False
        try:
            parse_timestamp(received_at)
        except ValueError:
            return False
    raw_id = data.get("id")
    return not _envelope_errors(data, raw_id, raw_id if isinstance(raw_id, str) else None)


# -- reading the id of a frame that cannot be parsed ---------------------------------------

#: Members of the top-level object ``recover_id`` looks past before it gives up.
_ID_SCAN_MEMBERS: Final = 16
_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.)*"')
_SCALAR = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null')
#: In a nested value: a string (skipped whole) or a bracket (counted).
_NESTED_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return pos if match is None else match.end()


def _skip_value(text: str, pos: int) -> int | None:
    """Where the JSON value at ``pos`` ends, or None when it does not end in ``text``."""
    if text.startswith(("{", "["), pos):
        depth = 0
        for token in _NESTED_TOKEN.finditer(text, pos):
            mark = token.group()
            if mark in "[{":
                depth += 1
            elif mark in "]}":
                depth -= 1
                if depth == 0:
                    return token.end()
        return None
    scalar = _SCALAR.match(text, pos)
    return None if scalar is None else scalar.end()


def recover_id(text: str | bytes) -> str | None:
    """The top-level ``"id"`` string of a frame that cannot be parsed whole.

    Reads the frame's first ``ID_SCAN_CHARS`` characters as far as the top-level
    ``id`` member, skipping (not parsing) the members before it, so a frame that is
    too large, too deep, not JSON further on, or not UTF-8 further on can still be
    answered with its ``request_id`` (WIRE.md "Errors are correlated"). Returns None
    when the id is not a string within that prefix, or is longer than ``MAX_ID_LEN``.
    Never raises; its cost is bounded by the prefix.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text[:ID_SCAN_CHARS]).decode("utf-8", "ignore")
    window = text[:ID_SCAN_CHARS]
    pos = _skip_ws(window, 0)
    if not window.startswith("{", pos):
        return None
    pos += 1
    for _ in range(_ID_SCAN_MEMBERS):
        pos = _skip_ws(window, pos)
        key = _STRING.match(window, pos)
        if key is None:
            return None
        pos = _skip_ws(window, key.end())
        if not window.startswith(":", pos):
            return None
        pos = _skip_ws(window, pos + 1)
        try:
            name = json.loads(key.group())
        except ValueError:
            return None
        if name == "id":
            value = _STRING.match(window, pos)
            if value is None:
                return None
            try:
                found = json.loads(value.group())
            except ValueError:
                return None
            return found if isinstance(found, str) and len(found) <= MAX_ID_LEN else None
        end = _skip_value(window, pos)
        if end is None:
            return None
        pos = _skip_ws(window, end)
        if not window.startswith(",", pos):
            return None
        pos += 1
    return None


# -- decode -------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]}... overflows a double")
    return value


#: A number that may overflow a double: an exponent of three digits or more, or more
#: than 308 digits in a row. Only frames that contain one take the slower checked parse.
_MAYBE_HUGE_NUMBER = re.compile(r"[eE][+]?0*[0-9]{3}|[0-9]{309}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _loads(text: str | bytes) -> Any:
    """``json.loads``, failing closed: no NaN/Infinity, no overflow to infinity, no
    lone surrogate escape."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")  # strict: invalid UTF-8 is not JSON
    if _MAYBE_HUGE_NUMBER.search(text) is None:
        data = json.loads(text, parse_constant=_refuse_constant)
    else:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    if _SURROGATE_ESCAPE.search(text) is not None:
        # Pairs make one character; a lone half stays in the string and could never be
        # encoded again. orjson refuses exactly those (json.loads already took the rest).
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("a string holds a lone surrogate escape") from None
    return data


def decode(text: str | bytes) -> Envelope:
    """Parse one inbound frame.

    Raises:
        RemoteProtocolError: ``INVALID_REQUEST`` for anything that is not a valid
            ARCP envelope of a known type; ``.request_id`` is the frame's ``id`` when
            it had a string one (read from the raw text when the frame cannot be
            parsed, see ``recover_id``), so the reply can be correlated.
    """
    try:
        data = _loads(text)
    except RecursionError:
        # The parser gives up on deep nesting by recursion; that is the peer's fault.
        raise RemoteProtocolError(
            "frame is nested too deeply for the JSON parser",
            details={"errors": ["nested too deeply @ $"]},
            request_id=recover_id(text),
        ) from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        if isinstance(exc, UnicodeDecodeError):
            reason = "frame is not valid UTF-8"
        elif isinstance(exc, json.JSONDecodeError):
            reason = f"frame is not valid JSON: {exc.msg} at character {exc.pos}"
        else:  # refused by one of _loads' own checks
            reason = f"frame is not valid JSON: {exc}"
        raise RemoteProtocolError(
            reason, details={"errors": [f"{reason} @ $"]}, request_id=recover_id(text)
        ) from None
    if not isinstance(data, dict):
        raise RemoteProtocolError(
            f"frame must be a JSON object, got {_json_type(data)}",
            details={"errors": [f"expected an object, got {_json_type(data)} @ $"]},
        )

    raw_id = data.get("id")
    request_id = raw_id if isinstance(raw_id, str) else None
    errors = _envelope_errors(data, raw_id, request_id)
    message_type = data.get("type")
    trace_id = data.get("trace_id")
    event_seq = data.get("event_seq")
    payload = data.get("payload")
    if payload is None:
        payload = {}
    if errors:
        raise RemoteProtocolError(
            f"invalid envelope: {'; '.join(errors)}",
            details={"errors": errors},
            request_id=request_id,
        )
    assert isinstance(message_type, str)
    if message_type not in PAYLOAD_TYPES:
        raise RemoteProtocolError(
            f"unknown envelope type {message_type!r}",
            details={"errors": ["unknown type @ $.type"]},
            request_id=request_id,
        )
    try:
        body = structure_payload(message_type, payload)
    except RemoteProtocolError as exc:
        exc.request_id = request_id
        raise
    assert isinstance(raw_id, str)
    return Envelope(
        type=message_type,
        id=raw_id,
        payload=body,
        session_id=data.get("session_id"),
        trace_id=trace_id,
        job_id=data.get("job_id"),
        event_seq=event_seq,
    )


# --- encode -----------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """Compact JSON, as every ARCP peer sends it.

    orjson does the common case (several times faster: every event is serialised
    once); values it refuses (non-string keys, integers beyond 64 bits) fall back to
    the standard library, so both accept the same inputs.

    Raises:
        TypeError, ValueError: the value is not JSON-serialisable.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(envelope: Envelope) -> str:
    """Serialise an envelope; None-valued fields are omitted (WIRE.md §2)."""
    frame: dict[str, Any] = {"arcp": envelope.arcp, "id": envelope.id, "type": envelope.type}
    if envelope.session_id is not None:
        frame["session_id"] = envelope.session_id
    if envelope.trace_id is not None:
        frame["trace_id"] = envelope.trace_id
    if envelope.job_id is not None:
        frame["job_id"] = envelope.job_id
    if envelope.event_seq is not None:
        frame["event_seq"] = envelope.event_seq
    payload = envelope.payload
    frame["payload"] = payload if isinstance(payload, dict) else unstructure_payload(payload)
    return dumps(frame)


def encode_job_frame(
    message_type: MessageType,
    *,
    frame_id: str,
    session_id: str,
    job_id: str,
    event_seq: int,
    trace_id: str | None,
    payload_json: str,
) -> str:
    """A ``job.event`` / ``job.result`` / ``job.error`` frame from pre-encoded payload.

    The hot path: ``payload_json`` is serialised once per event and spliced into
    each watching session's frame. Every id here is runtime-minted
    (``prefix_ULID``) or a validated 32-hex trace id, so none needs JSON escaping
    and the result is byte-for-byte what ``encode`` gives.
    """
    trace = f',"trace_id":"{trace_id}"' if trace_id is not None else ""
    return (
        f'{{"arcp":"1.1","id":"{frame_id}","type":"{message_type}",'
        f'"session_id":"{session_id}"{trace},"job_id":"{job_id}",'
        f'"event_seq":{event_seq},"payload":{payload_json}}}'
    )


def encode_ping_frame(*, frame_id: str, session_id: str, nonce: str, sent_at: str) -> str:
    """A ``session.ping`` frame (§6.4), byte-for-byte what ``encode`` gives.

    Idle sessions cost one ping per heartbeat interval each, so this skips the
    converter. Every argument is a runtime-minted id or an RFC 3339 timestamp, so
    none needs JSON escaping.
    """
    return (
        f'{{"arcp":"1.1","id":"{frame_id}","type":"session.ping","session_id":"{session_id}",'
        f'"payload":{{"nonce":"{nonce}","sent_at":"{sent_at}"}}}}'
    )
