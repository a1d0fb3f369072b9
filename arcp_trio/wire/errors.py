"""The §12 error taxonomy and the exception tree every layer raises.

``ErrorCode`` holds the spec's fifteen codes. ``ARCPError`` is the root of every
exception arcp_trio raises on purpose; each code a user may branch on has its own
subclass, looked up from a table (``error_class``) rather than an if-chain, so
``raise error_class(code)(message)`` and ``except BudgetExhausted`` both work.

§12: ``INTERNAL_ERROR`` is always retryable; ``LEASE_EXPIRED`` and
``BUDGET_EXHAUSTED`` MUST be ``retryable: false``. Every other code defaults to
``false`` (the reference SDK agrees, WIRE.md §15).
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

__all__ = [
    "ARCPError",
    "AgentNotAvailable",
    "AgentVersionNotAvailable",
    "BudgetExhausted",
    "Cancelled",
    "DuplicateKey",
    "ErrorCode",
    "HeartbeatLost",
    "InternalError",
    "InvalidRequest",
    "JobNotFound",
    "LeaseExpired",
    "LeaseSubsetViolation",
    "LocalProtocolError",
    "PermissionDenied",
    "RemoteProtocolError",
    "ResumeWindowExpired",
    "Timeout",
    "Unauthenticated",
    "default_retryable",
    "error_class",
    "make_error",
]


class ErrorCode(enum.StrEnum):
    """§12 error codes, spelled as on the wire."""

    PERMISSION_DENIED = "PERMISSION_DENIED"
    LEASE_SUBSET_VIOLATION = "LEASE_SUBSET_VIOLATION"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    DUPLICATE_KEY = "DUPLICATE_KEY"
    AGENT_NOT_AVAILABLE = "AGENT_NOT_AVAILABLE"
    AGENT_VERSION_NOT_AVAILABLE = "AGENT_VERSION_NOT_AVAILABLE"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    RESUME_WINDOW_EXPIRED = "RESUME_WINDOW_EXPIRED"
    HEARTBEAT_LOST = "HEARTBEAT_LOST"
    LEASE_EXPIRED = "LEASE_EXPIRED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    INVALID_REQUEST = "INVALID_REQUEST"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


def default_retryable(code: str) -> bool:
    """§12: only ``INTERNAL_ERROR`` is retryable unless a sender says otherwise."""
    return code == ErrorCode.INTERNAL_ERROR


class ARCPError(Exception):
    """Root of every error arcp_trio raises on purpose.

    Attributes:
        code: the §12 code (a plain ``str`` for codes outside the taxonomy, which
            agents may raise and peers may send).
        message: human-readable text.
        retryable: whether a naive retry may succeed (§12).
        details: optional structured detail (field paths for ``INVALID_REQUEST``).
    """

    code: ClassVar[str] = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            # An instance may carry a code its class does not name (an agent's own
            # code, or a code a newer peer sends).
            self.code = code  # type: ignore[misc]
        self.message = message
        self.retryable = default_retryable(self.code) if retryable is None else retryable
        # §12: these two MUST be retryable false, whatever the caller asked for.
        if self.code in (ErrorCode.LEASE_EXPIRED, ErrorCode.BUDGET_EXHAUSTED):
            self.retryable = False
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class PermissionDenied(ARCPError):
    code = ErrorCode.PERMISSION_DENIED


class LeaseSubsetViolation(ARCPError):
    code = ErrorCode.LEASE_SUBSET_VIOLATION


class JobNotFound(ARCPError):
    code = ErrorCode.JOB_NOT_FOUND


class DuplicateKey(ARCPError):
    code = ErrorCode.DUPLICATE_KEY


class AgentNotAvailable(ARCPError):
    code = ErrorCode.AGENT_NOT_AVAILABLE


class AgentVersionNotAvailable(ARCPError):
    code = ErrorCode.AGENT_VERSION_NOT_AVAILABLE


class Cancelled(ARCPError):
    """The job ended because its submitter cancelled it (§7.4).

    Not to be confused with ``trio.Cancelled``, which is a scope being cancelled.
    """

    code = ErrorCode.CANCELLED


class Timeout(ARCPError):
    code = ErrorCode.TIMEOUT


class ResumeWindowExpired(ARCPError):
    code = ErrorCode.RESUME_WINDOW_EXPIRED


class HeartbeatLost(ARCPError):
    code = ErrorCode.HEARTBEAT_LOST


class LeaseExpired(ARCPError):
    code = ErrorCode.LEASE_EXPIRED


class BudgetExhausted(ARCPError):
    code = ErrorCode.BUDGET_EXHAUSTED


class InvalidRequest(ARCPError):
    code = ErrorCode.INVALID_REQUEST

    @classmethod
    def at(cls, path: str, message: str) -> InvalidRequest:
        """A refusal of one field: ``details.errors`` is ``["message @ path"]``, as
        ``codec.decode`` reports schema violations (``$.payload.cursor``)."""
        return cls(f"{message} @ {path}", details={"errors": [f"{message} @ {path}"]})


class RemoteProtocolError(InvalidRequest):
    """The peer sent something the protocol forbids (a malformed or unknown frame).

    Raised by ``codec.decode``; ``request_id`` is the offending frame's ``id`` when it
    had one, so the ``INVALID_REQUEST`` reply can be correlated.
    """

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.request_id = request_id


class LocalProtocolError(ARCPError):
    """We were asked to send something the protocol forbids; nothing was sent."""

    code = ErrorCode.INTERNAL_ERROR


class Unauthenticated(ARCPError):
    code = ErrorCode.UNAUTHENTICATED


class InternalError(ARCPError):
    code = ErrorCode.INTERNAL_ERROR


_BY_CODE: dict[str, type[ARCPError]] = {
    cls.code: cls
    for cls in (
        PermissionDenied,
        LeaseSubsetViolation,
        JobNotFound,
        DuplicateKey,
        AgentNotAvailable,
        AgentVersionNotAvailable,
        Cancelled,
        Timeout,
        ResumeWindowExpired,
        HeartbeatLost,
        LeaseExpired,
        BudgetExhausted,
        InvalidRequest,
        Unauthenticated,
        InternalError,
    )
}


def error_class(code: str) -> type[ARCPError]:
    """The exception class for ``code``; ``ARCPError`` for codes outside §12."""
    return _BY_CODE.get(code, ARCPError)


def make_error(
    code: str,
    message: str,
    *,
    retryable: bool | None = None,
    details: dict[str, Any] | None = None,
) -> ARCPError:
    """Build the right subclass for a code received on the wire."""
    cls = error_class(code)
    return cls(
        message,
        code=None if cls is not ARCPError else code,
        retryable=retryable,
        details=details,
    )
