"""Message payloads: one frozen attrs class per envelope ``type`` (§6-§8, WIRE.md §3).

Shapes follow WIRE.md's catalogue. Where the reference SDK and the spec text spell
a message differently, the class accepts both on receive (extra keys are ignored,
§5) and ``codec`` picks what to send per session. Optional fields default to
``None`` and are omitted on the wire when unset.

Validation that is part of the protocol (ranges, id grammar) lives in attrs
validators here, so it runs wherever a payload is structured; ``codec.decode``
turns every failure into one ``INVALID_REQUEST`` with field paths.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from .limits import (
    MAX_AGENTS_ADVERTISED,
    MAX_CODE_LEN,
    MAX_CURSOR_LEN,
    MAX_ENCODINGS,
    MAX_FEATURE_LEN,
    MAX_FEATURES,
    MAX_IDEMPOTENCY_KEY_LEN,
    MAX_INT,
    MAX_LEASE_CHARS,
    MAX_LEASE_NAMESPACES,
    MAX_LEASE_WILDCARDS,
    MAX_NAME_LEN,
    MAX_NAMESPACE_LEN,
    MAX_NESTING,
    MAX_PATTERN_LEN,
    MAX_PATTERN_WILDCARDS,
    MAX_PATTERNS_PER_NAMESPACE,
    MAX_REASON_LEN,
    MAX_REF_LEN,
    MAX_SCHEME_LEN,
    MAX_STATUS_FILTER,
    MAX_TIMESTAMP_LEN,
    MAX_TOKEN_LEN,
)
from .timestamps import parse_timestamp

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "AGENT_REF_RE",
    "JOB_STATUSES",
    "AgentInfo",
    "Auth",
    "Capabilities",
    "ClientInfo",
    "FieldError",
    "JobAccepted",
    "JobCancel",
    "JobCancelled",
    "JobError",
    "JobEvent",
    "JobFilter",
    "JobResult",
    "JobSubmit",
    "JobSubscribe",
    "JobSubscribed",
    "JobSummary",
    "JobUnsubscribe",
    "LeaseConstraints",
    "MessageType",
    "ResumeRequest",
    "RuntimeInfo",
    "SessionAck",
    "SessionBye",
    "SessionClose",
    "SessionClosed",
    "SessionError",
    "SessionHello",
    "SessionJobs",
    "SessionListJobs",
    "SessionPing",
    "SessionPong",
    "SessionResume",
    "SessionWelcome",
    "parse_agent_ref",
]


class MessageType(enum.StrEnum):
    """Every envelope ``type`` arcp_trio reads or writes."""

    SESSION_HELLO = "session.hello"
    SESSION_WELCOME = "session.welcome"
    SESSION_RESUME = "session.resume"
    SESSION_ERROR = "session.error"
    SESSION_PING = "session.ping"
    SESSION_PONG = "session.pong"
    SESSION_ACK = "session.ack"
    SESSION_LIST_JOBS = "session.list_jobs"
    SESSION_JOBS = "session.jobs"
    SESSION_CLOSE = "session.close"
    SESSION_CLOSED = "session.closed"
    SESSION_BYE = "session.bye"
    JOB_SUBMIT = "job.submit"
    JOB_ACCEPTED = "job.accepted"
    JOB_EVENT = "job.event"
    JOB_RESULT = "job.result"
    JOB_ERROR = "job.error"
    JOB_CANCEL = "job.cancel"
    JOB_CANCELLED = "job.cancelled"
    JOB_SUBSCRIBE = "job.subscribe"
    JOB_SUBSCRIBED = "job.subscribed"
    JOB_UNSUBSCRIBE = "job.unsubscribe"


# Agent refs (§7.5, WIRE.md §10): the reference grammar, which is what deployed
# clients send: names start with a letter (upper case allowed), versions start
# alphanumeric and carry no '+'. We additionally accept the spec's lowercase names
# that start with a digit and '+' in versions, since §7.5 allows them.
_NAME = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_LEN - 1}}}"
_VERSION = rf"[A-Za-z0-9][A-Za-z0-9.+_-]{{0,{MAX_NAME_LEN - 1}}}"
AGENT_REF_RE = re.compile(rf"(?P<name>{_NAME})(?:@(?P<version>{_VERSION}))?")

#: Every job status, as ``session.list_jobs.filter.status`` may name them (§6.6).
JOB_STATUSES: frozenset[str] = frozenset(
    {"pending", "running", "success", "error", "cancelled", "timed_out"}
)


def parse_agent_ref(ref: str) -> tuple[str, str | None]:
    """Split ``name[@version]``.

    Raises:
        ValueError: the ref does not match the §7.5 grammar (each part at most
            ``MAX_NAME_LEN`` characters).
    """
    match = AGENT_REF_RE.fullmatch(ref) if len(ref) <= 2 * MAX_NAME_LEN + 1 else None
    if match is None:
        shown = ref if len(ref) <= 80 else ref[:80] + "..."
        raise ValueError(
            f"malformed agent reference {shown!r} (expected name or name@version, "
            f"each at most {MAX_NAME_LEN} characters)"
        )
    return match["name"], match["version"]


class FieldError(ValueError):
    """A payload field breaks a rule; ``field`` is its path below the payload class
    (``"idempotency_key"``, ``"lease_request['fs.read'][3]"``), so the error names
    the exact place (``$.payload.lease_request['fs.read'][3]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _shorten(value: str) -> str:
    return value if len(value) <= 40 else value[:40] + "..."


def _check_text(field: str, value: str, max_len: int, min_len: int = 0) -> None:
    if len(value) > max_len:
        raise FieldError(field, f"must be at most {max_len} characters, got {len(value)}")
    if len(value) < min_len:
        raise FieldError(field, f"must be at least {min_len} characters")


def _text(max_len: int, min_len: int = 0) -> Any:
    """A string field (or None when optional) of ``min_len`` to ``max_len`` characters."""

    def check(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            _check_text(attr.name, value, max_len, min_len)

    return check


def _texts(max_items: int, max_len: int) -> Any:
    """A list of strings: at most ``max_items`` entries of at most ``max_len`` each."""

    def check(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if len(value) > max_items:
            raise FieldError(attr.name, f"must have at most {max_items} entries, got {len(value)}")
        for index, item in enumerate(value):
            _check_text(f"{attr.name}[{index}]", item, max_len)

    return check


def _between(low: int, high: int) -> Any:
    def check(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not low <= value <= high:
            raise FieldError(attr.name, f"must be between {low} and {high}, got {value}")

    return check


#: Sequence numbers and counts a client sends: 0 to the largest signed 64-bit integer.
_seq = _between(0, MAX_INT)


def _parsed_by(parse: Callable[[str], object], max_len: int | None = None) -> Any:
    """A string field (or None) that ``parse`` accepts; its ``ValueError`` names why."""

    def check(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if max_len is not None:
            _check_text(attr.name, value, max_len)
        try:
            parse(value)
        except ValueError as exc:
            raise FieldError(attr.name, str(exc)) from None

    return check


_timestamp = _parsed_by(parse_timestamp, MAX_TIMESTAMP_LEN)
_agent_ref = _parsed_by(parse_agent_ref)  # (its regex bounds each half's length)


def _statuses(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if len(value) > MAX_STATUS_FILTER:
        raise FieldError(attr.name, f"must have at most {MAX_STATUS_FILTER} entries")
    for index, status in enumerate(value):
        if status not in JOB_STATUSES:
            raise FieldError(
                f"{attr.name}[{index}]",
                f"unknown job status {_shorten(status)!r} (one of {sorted(JOB_STATUSES)})",
            )


def _cursor(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    # A decimal ordinal (WIRE.md §9): ASCII digits only (str.isdigit admits "²"),
    # and short enough that int() is cheap and the value fits in 64 bits.
    if value is None:
        return
    if not (0 < len(value) <= MAX_CURSOR_LEN and value.isascii() and value.isdigit()):
        raise FieldError(
            attr.name,
            f"must be a cursor from session.jobs (1 to {MAX_CURSOR_LEN} decimal digits)",
        )
    if int(value) > MAX_INT:
        raise FieldError(attr.name, "is beyond the largest cursor")


def _json_value(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    """A free-form JSON value the runtime keeps (``job.submit.input``): one that its
    encoder can write back (agents see it; results and idempotency fingerprints are
    made of it): nesting at most ``MAX_NESTING`` deep, integers within 64 bits.
    One C-speed pass, about 1 ms per MiB (orjson's own limits: ``MAX_NESTING``,
    ``MIN_INT`` to ``MAX_UINT``)."""
    try:
        orjson.dumps(value)
    except TypeError as exc:
        if "Recursion" in str(exc):
            raise FieldError(attr.name, f"nested deeper than {MAX_NESTING} levels") from None
        if "64-bit" in str(exc):
            raise FieldError(attr.name, "contains an integer beyond 64 bits") from None
        # A lone surrogate escape ("\\ud800") is no Unicode text.
        raise FieldError(attr.name, f"cannot be represented: {exc}") from None


def _lease_request(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    """§9.2 shape and the size limits; pattern syntax is ``parse_lease``'s."""
    name = attr.name
    if len(value) > MAX_LEASE_NAMESPACES:
        raise FieldError(name, f"must have at most {MAX_LEASE_NAMESPACES} namespaces")
    total = wildcards = 0
    for namespace, patterns in value.items():
        where = f"{name}[{_shorten(namespace)!r}]"
        if len(namespace) > MAX_NAMESPACE_LEN:
            raise FieldError(where, f"namespace names are at most {MAX_NAMESPACE_LEN} characters")
        if len(patterns) > MAX_PATTERNS_PER_NAMESPACE:
            raise FieldError(
                where,
                f"must have at most {MAX_PATTERNS_PER_NAMESPACE} patterns, got {len(patterns)}",
            )
        for index, pattern in enumerate(patterns):
            _check_text(f"{where}[{index}]", pattern, MAX_PATTERN_LEN)
            total += len(pattern)
            count = pattern.count("*") + pattern.count("?") + pattern.count("[")
            if count > MAX_PATTERN_WILDCARDS:
                raise FieldError(
                    f"{where}[{index}]",
                    f"must have at most {MAX_PATTERN_WILDCARDS} wildcards ('*', '?', '['), "
                    f"got {count}",
                )
            wildcards += count
    if wildcards > MAX_LEASE_WILDCARDS:
        raise FieldError(name, f"patterns must have at most {MAX_LEASE_WILDCARDS} wildcards in all")
    if total > MAX_LEASE_CHARS:
        raise FieldError(
            name, f"patterns must total at most {MAX_LEASE_CHARS} characters, got {total}"
        )


# --- session.hello / welcome (§6.1, §6.2) -----------------------------------------


@attrs.frozen(kw_only=True)
class ClientInfo:
    name: str = attrs.field(validator=_text(MAX_NAME_LEN))
    version: str = attrs.field(validator=_text(MAX_NAME_LEN))


@attrs.frozen(kw_only=True)
class Auth:
    token: str = attrs.field(validator=_text(MAX_TOKEN_LEN))
    scheme: str = attrs.field(default="bearer", validator=_text(MAX_SCHEME_LEN))


@attrs.frozen(kw_only=True)
class Capabilities:
    encodings: list[str] = attrs.field(
        factory=lambda: ["json"], validator=_texts(MAX_ENCODINGS, MAX_FEATURE_LEN)
    )
    features: list[str] = attrs.field(factory=list, validator=_texts(MAX_FEATURES, MAX_FEATURE_LEN))
    # Agent inventory: ``AgentInfo``-shaped dicts (agent_versions) or plain names. A
    # client's is ignored; a runtime's (in the welcome) lists every agent it hosts.
    agents: list[Any] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class ResumeRequest:
    """The reference dialect's ``resume`` block (WIRE.md §5); ``token`` is Ruby's."""

    resume_token: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))
    token: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))
    session_id: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))
    last_event_seq: int = attrs.field(default=0, validator=_seq)

    @property
    def presented_token(self) -> str | None:
        return self.resume_token if self.resume_token is not None else self.token


def _client_agents(_inst: object, attr: attrs.Attribute[Any], value: Capabilities) -> None:
    if len(value.agents) > MAX_AGENTS_ADVERTISED:
        raise FieldError(
            f"{attr.name}.agents", f"must have at most {MAX_AGENTS_ADVERTISED} entries"
        )


@attrs.frozen(kw_only=True)
class SessionHello:
    client: ClientInfo
    auth: Auth
    capabilities: Capabilities = attrs.field(factory=Capabilities, validator=_client_agents)
    resume: ResumeRequest | None = None
    # The flat dialect (C#, Java): resume fields directly in the hello payload.
    resume_token: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))
    last_event_seq: int | None = attrs.field(default=None, validator=_seq)
    session_id: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))

    def resume_request(self) -> ResumeRequest | None:
        """The resume this hello asks for, whichever dialect spelled it."""
        if self.resume is not None:
            return self.resume
        if self.resume_token is not None:
            return ResumeRequest(
                resume_token=self.resume_token,
                session_id=self.session_id,
                last_event_seq=self.last_event_seq or 0,
            )
        return None


@attrs.frozen(kw_only=True)
class SessionResume:
    """§6.3 ``session.resume``; ``auth`` is optional (the token is itself a secret)."""

    resume_token: str = attrs.field(validator=_text(MAX_REF_LEN))
    last_event_seq: int = attrs.field(default=0, validator=_seq)
    session_id: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))
    auth: Auth | None = None


@attrs.frozen(kw_only=True)
class RuntimeInfo:
    name: str
    version: str


@attrs.frozen(kw_only=True)
class AgentInfo:
    name: str
    versions: list[str]
    default: str | None = None


@attrs.frozen(kw_only=True)
class SessionWelcome:
    runtime: RuntimeInfo
    session_id: str
    resume_token: str
    accepted_at: str
    capabilities: Capabilities
    resume_window_sec: int = 600
    heartbeat_interval_sec: int | None = None


@attrs.frozen(kw_only=True)
class SessionError:
    """Session-level error; ``request_id`` names the frame it answers (WIRE.md)."""

    code: str
    message: str
    retryable: bool = False
    details: dict[str, Any] | None = None
    request_id: str | None = None


# --- heartbeats, ack, close (§6.4, §6.5, §6.7) -------------------------------------


@attrs.frozen(kw_only=True)
class SessionPing:
    nonce: str = attrs.field(validator=_text(MAX_REF_LEN))
    sent_at: str = attrs.field(validator=_timestamp)


@attrs.frozen(kw_only=True)
class SessionPong:
    ping_nonce: str = attrs.field(validator=_text(MAX_REF_LEN))
    received_at: str | None = attrs.field(default=None, validator=_timestamp)


@attrs.frozen(kw_only=True)
class SessionAck:
    last_processed_seq: int = attrs.field(validator=_seq)


@attrs.frozen(kw_only=True)
class SessionClose:
    reason: str | None = attrs.field(default=None, validator=_text(MAX_REASON_LEN))


@attrs.frozen(kw_only=True)
class SessionBye:
    """The reference dialect's close (WIRE.md §8): ``reason`` is required there."""

    reason: str = attrs.field(validator=_text(MAX_REASON_LEN))
    code: str | None = attrs.field(default=None, validator=_text(MAX_CODE_LEN))


@attrs.frozen(kw_only=True)
class SessionClosed:
    reason: str | None = None
    request_id: str | None = None


# --- list_jobs (§6.6) ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobFilter:
    status: list[str] | None = attrs.field(default=None, validator=_statuses)
    agent: str | None = attrs.field(default=None, validator=_agent_ref)
    created_after: str | None = attrs.field(default=None, validator=_timestamp)


@attrs.frozen(kw_only=True)
class SessionListJobs:
    filter: JobFilter | None = None
    limit: int | None = attrs.field(default=None, validator=_between(1, 1000))
    cursor: str | None = attrs.field(default=None, validator=_cursor)


@attrs.frozen(kw_only=True)
class JobSummary:
    job_id: str
    agent: str
    status: str
    submitted_at: str
    created_at: str | None = None
    lease: dict[str, list[str]] = attrs.field(factory=dict)
    lease_constraints: dict[str, Any] | None = None
    parent_job_id: str | None = None
    trace_id: str | None = None
    last_event_seq: int | None = None
    # Current per-currency counters (§9.6), observer's dialect.
    budget: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class SessionJobs:
    request_id: str
    jobs: list[JobSummary]
    next_cursor: str | None = None


# --- jobs (§7) ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LeaseConstraints:
    expires_at: str | None = attrs.field(default=None, validator=_timestamp)


@attrs.frozen(kw_only=True)
class JobSubmit:
    agent: str = attrs.field(validator=_agent_ref)
    input: Any = attrs.field(default=None, validator=_json_value)
    lease_request: dict[str, list[str]] = attrs.field(factory=dict, validator=_lease_request)
    lease_constraints: LeaseConstraints | None = None
    idempotency_key: str | None = attrs.field(
        default=None, validator=_text(MAX_IDEMPOTENCY_KEY_LEN, min_len=1)
    )
    max_runtime_sec: int | None = attrs.field(default=None, validator=_between(1, 86400))
    parent_job_id: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))
    delegate_id: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))


@attrs.frozen(kw_only=True)
class JobAccepted:
    job_id: str
    agent: str
    accepted_at: str
    lease: dict[str, list[str]] = attrs.field(factory=dict)
    lease_constraints: dict[str, Any] | None = None
    # Values are "CUR:amount" strings (reference dialect) or numbers (spec, §7.1).
    budget: dict[str, Any] | None = None
    trace_id: str | None = None
    parent_job_id: str | None = None
    delegate_id: str | None = None
    credentials: list[dict[str, Any]] | None = None
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class JobEvent:
    kind: str
    body: Any = attrs.field(factory=dict)
    ts: str | None = None


@attrs.frozen(kw_only=True)
class JobResult:
    final_status: str
    completed_at: str | None = None
    result: Any = None
    result_id: str | None = None
    result_size: int | None = None
    summary: str | None = None


@attrs.frozen(kw_only=True)
class JobError:
    code: str
    message: str
    final_status: str = "error"
    completed_at: str | None = None
    retryable: bool = False
    details: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class JobCancel:
    """``job.cancel``; the job id is on the envelope (reference) or in the payload.

    ``reason`` is optional: the reference requires it (WIRE.md §12), but §7.4 gives the
    message no payload, and a spec client's cancel must work (read every dialect).
    """

    reason: str | None = attrs.field(default=None, validator=_text(MAX_REASON_LEN))
    code: str | None = attrs.field(default=None, validator=_text(MAX_CODE_LEN))
    job_id: str | None = attrs.field(default=None, validator=_text(MAX_REF_LEN))


@attrs.frozen(kw_only=True)
class JobCancelled:
    """§7.4 acknowledgement of a cancel (spec-only; the reference client ignores it)."""

    job_id: str
    reason: str | None = None
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class JobSubscribe:
    job_id: str = attrs.field(validator=_text(MAX_REF_LEN))
    history: bool = False
    from_event_seq: int | None = attrs.field(default=None, validator=_seq)


@attrs.frozen(kw_only=True)
class JobSubscribed:
    request_id: str
    job_id: str
    current_status: str
    agent: str
    lease: dict[str, list[str]] = attrs.field(factory=dict)
    lease_constraints: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    parent_job_id: str | None = None
    trace_id: str | None = None
    subscribed_from: int = 0
    # Integer count (reference dialect) or boolean (spec, §7.6).
    replayed: int | bool = 0


@attrs.frozen(kw_only=True)
class JobUnsubscribe:
    job_id: str = attrs.field(validator=_text(MAX_REF_LEN))


#: The payload class of every message type.
PAYLOAD_TYPES: dict[str, type[Any]] = {
    MessageType.SESSION_HELLO: SessionHello,
    MessageType.SESSION_WELCOME: SessionWelcome,
    MessageType.SESSION_RESUME: SessionResume,
    MessageType.SESSION_ERROR: SessionError,
    MessageType.SESSION_PING: SessionPing,
    MessageType.SESSION_PONG: SessionPong,
    MessageType.SESSION_ACK: SessionAck,
    MessageType.SESSION_LIST_JOBS: SessionListJobs,
    MessageType.SESSION_JOBS: SessionJobs,
    MessageType.SESSION_CLOSE: SessionClose,
    MessageType.SESSION_CLOSED: SessionClosed,
    MessageType.SESSION_BYE: SessionBye,
    MessageType.JOB_SUBMIT: JobSubmit,
    MessageType.JOB_ACCEPTED: JobAccepted,
    MessageType.JOB_EVENT: JobEvent,
    MessageType.JOB_RESULT: JobResult,
    MessageType.JOB_ERROR: JobError,
    MessageType.JOB_CANCEL: JobCancel,
    MessageType.JOB_CANCELLED: JobCancelled,
    MessageType.JOB_SUBSCRIBE: JobSubscribe,
    MessageType.JOB_SUBSCRIBED: JobSubscribed,
    MessageType.JOB_UNSUBSCRIBE: JobUnsubscribe,
}
