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
from typing import Any

import attrs

from .timestamps import parse_timestamp

__all__ = [
    "AGENT_REF_RE",
    "AgentInfo",
    "Auth",
    "Capabilities",
    "ClientInfo",
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
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_VERSION = r"[A-Za-z0-9][A-Za-z0-9.+_-]*"
AGENT_REF_RE = re.compile(rf"(?P<name>{_NAME})(?:@(?P<version>{_VERSION}))?")


def parse_agent_ref(ref: str) -> tuple[str, str | None]:
    """Split ``name[@version]``.

    Raises:
        ValueError: the ref does not match the §7.5 grammar.
    """
    match = AGENT_REF_RE.fullmatch(ref)
    if match is None:
        raise ValueError(f"malformed agent reference {ref!r} (expected name or name@version)")
    return match["name"], match["version"]


def _agent_ref(_inst: object, _attr: attrs.Attribute[Any], value: Any) -> None:
    parse_agent_ref(value)


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attr.name} must be >= 0")


def _between(low: int, high: int) -> Any:
    def check(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not low <= value <= high:
            raise ValueError(f"{attr.name} must be between {low} and {high}")

    return check


def _length(low: int, high: int) -> Any:
    def check(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not low <= len(value) <= high:
            raise ValueError(f"{attr.name} must be {low} to {high} characters")

    return check


def _timestamp(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        parse_timestamp(value)


# --- session.hello / welcome (§6.1, §6.2) -----------------------------------------


@attrs.frozen(kw_only=True)
class ClientInfo:
    name: str
    version: str


@attrs.frozen(kw_only=True)
class Auth:
    token: str
    scheme: str = "bearer"


@attrs.frozen(kw_only=True)
class Capabilities:
    encodings: list[str] = attrs.field(factory=lambda: ["json"])
    features: list[str] = attrs.field(factory=list)
    # Agent inventory: ``AgentInfo``-shaped dicts (agent_versions) or plain names.
    agents: list[Any] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class ResumeRequest:
    """The reference dialect's ``resume`` block (WIRE.md §5); ``token`` is Ruby's."""

    resume_token: str | None = None
    token: str | None = None
    session_id: str | None = None
    last_event_seq: int = attrs.field(default=0, validator=_non_negative)

    @property
    def presented_token(self) -> str | None:
        return self.resume_token if self.resume_token is not None else self.token


@attrs.frozen(kw_only=True)
class SessionHello:
    client: ClientInfo
    auth: Auth
    capabilities: Capabilities = attrs.field(factory=Capabilities)
    resume: ResumeRequest | None = None
    # The flat dialect (C#, Java): resume fields directly in the hello payload.
    resume_token: str | None = None
    last_event_seq: int | None = attrs.field(default=None, validator=_non_negative)
    session_id: str | None = None

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

    resume_token: str
    last_event_seq: int = attrs.field(default=0, validator=_non_negative)
    session_id: str | None = None
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
    nonce: str
    sent_at: str


@attrs.frozen(kw_only=True)
class SessionPong:
    ping_nonce: str
    received_at: str | None = None


@attrs.frozen(kw_only=True)
class SessionAck:
    last_processed_seq: int = attrs.field(validator=_non_negative)


@attrs.frozen(kw_only=True)
class SessionClose:
    reason: str | None = None


@attrs.frozen(kw_only=True)
class SessionBye:
    reason: str | None = None
    code: str | None = None


@attrs.frozen(kw_only=True)
class SessionClosed:
    reason: str | None = None
    request_id: str | None = None


# --- list_jobs (§6.6) ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobFilter:
    status: list[str] | None = None
    agent: str | None = None
    created_after: str | None = attrs.field(default=None, validator=_timestamp)


@attrs.frozen(kw_only=True)
class SessionListJobs:
    filter: JobFilter | None = None
    limit: int | None = attrs.field(default=None, validator=_between(1, 1000))
    cursor: str | None = None


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
    expires_at: str | None = None


@attrs.frozen(kw_only=True)
class JobSubmit:
    agent: str = attrs.field(validator=_agent_ref)
    input: Any = None
    lease_request: dict[str, list[str]] = attrs.field(factory=dict)
    lease_constraints: LeaseConstraints | None = None
    idempotency_key: str | None = attrs.field(default=None, validator=_length(1, 256))
    max_runtime_sec: int | None = attrs.field(default=None, validator=_between(1, 86400))
    parent_job_id: str | None = None
    delegate_id: str | None = None


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
    """``job.cancel``; the job id is on the envelope (reference) or in the payload."""

    reason: str | None = None
    code: str | None = None
    job_id: str | None = None


@attrs.frozen(kw_only=True)
class JobCancelled:
    """§7.4 acknowledgement of a cancel (spec-only; the reference client ignores it)."""

    job_id: str
    reason: str | None = None
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class JobSubscribe:
    job_id: str
    history: bool = False
    from_event_seq: int | None = attrs.field(default=None, validator=_non_negative)


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
    job_id: str


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
