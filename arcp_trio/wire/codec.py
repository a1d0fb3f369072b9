"""Envelope codec: JSON text ⇄ ``Envelope`` with a typed payload.

``decode`` is the only way inbound text becomes a message. It checks the envelope
rules of WIRE.md §2 by hand (they are few, and hot), then structures the payload
with one strict cattrs converter (no silent ``str(3)`` coercions). Every failure is
one ``RemoteProtocolError`` (``INVALID_REQUEST``) whose ``details.errors`` lists
field paths (``$.payload.agent``) and whose ``request_id`` is the offending frame's
id when it had one. §5: unknown envelope fields and unknown payload keys are
ignored.

Outbound, ``encode`` serialises an ``Envelope`` compactly, omitting unset (None)
fields. Job frames (events and terminals) are the hot path and are built by
``encode_job_frame`` from a payload that is serialised once per event and shared by
every session that watches the job.
"""

from __future__ import annotations

import json
from typing import Any, Final

import attrs
import cattrs
import orjson
from cattrs.cols import is_mutable_sequence, list_structure_factory
from cattrs.strategies import configure_union_passthrough

from .errors import RemoteProtocolError
from .ids import is_envelope_id, is_trace_id
from .messages import PAYLOAD_TYPES, MessageType

__all__ = [
    "ARCP_VERSION",
    "Envelope",
    "decode",
    "dumps",
    "encode",
    "encode_job_frame",
    "encode_ping_frame",
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


def _strict(expected: type[Any], name: str) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        # bool is an int subclass; JSON true is never an integer here.
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return hook


def _strict_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _strict_lists(type_: Any, converter: cattrs.Converter) -> Any:
    """JSON arrays only: cattrs would turn ``"abc"`` into ``["a", "b", "c"]``."""
    structure = list_structure_factory(type_, converter)

    def hook(value: Any, target: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return structure(value, target)

    return hook


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook_factory(is_mutable_sequence, _strict_lists)
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
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


def structure_payload(message_type: str, payload: dict[str, Any]) -> Any:
    """Structure a payload dict into its message class.

    Raises:
        RemoteProtocolError: the payload does not fit the type's schema.
    """
    cls = PAYLOAD_TYPES[message_type]
    try:
        return _converter.structure(payload, cls)
    except Exception as exc:
        errors = cattrs.transform_error(exc, path="$.payload", format_exception=_format_exception)
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
    elif request_id is None or not is_envelope_id(request_id):
        errors.append("id must be a ULID, a lowercase UUIDv7 or prefix_ULID @ $.id")
    message_type = data.get("type")
    if message_type is None:
        errors.append("required field missing @ $.type")
    elif not isinstance(message_type, str):
        errors.append("expected a string @ $.type")
    for name in _ENVELOPE_STRINGS:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            errors.append(f"expected a string @ $.{name}")
    trace_id = data.get("trace_id")
    if trace_id is not None and not (isinstance(trace_id, str) and is_trace_id(trace_id)):
        errors.append("trace_id must be 32 lowercase hex characters, not all zeros @ $.trace_id")
    event_seq = data.get("event_seq")
    if event_seq is not None and (
        isinstance(event_seq, bool) or not isinstance(event_seq, int) or event_seq < 1
    ):
        errors.append("event_seq must be an integer >= 1 @ $.event_seq")
    payload = data.get("payload")
    if payload is not None and not isinstance(payload, dict):
        errors.append("payload must be a JSON object @ $.payload")
    return errors


#: ``is_session_pong`` looks at texts up to this long (a pong is about 230 bytes).
PONG_CHECK_LIMIT: Final = 1024


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
    if len(text) > PONG_CHECK_LIMIT:
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
    # SessionPong: ping_nonce a string (required), received_at a string or null.
    received_at = payload.get("received_at")
    if not isinstance(payload.get("ping_nonce"), str) or not (
        received_at is None or isinstance(received_at, str)
    ):
        return False
    raw_id = data.get("id")
    return not _envelope_errors(data, raw_id, raw_id if isinstance(raw_id, str) else None)


def decode(text: str | bytes) -> Envelope:
    """Parse one inbound frame.

    Raises:
        RemoteProtocolError: ``INVALID_REQUEST`` for anything that is not a valid
            ARCP envelope of a known type; ``.request_id`` is the frame's ``id`` when
            it had a string one, so the reply can be correlated.
    """
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise RemoteProtocolError("frame is not valid JSON") from None
    except RecursionError:
        # The parser gives up on deep nesting by recursion; that is the peer's fault.
        raise RemoteProtocolError("frame is nested too deeply") from None
    if not isinstance(data, dict):
        raise RemoteProtocolError(f"frame must be a JSON object, got {type(data).__name__}")

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
