"""Exit codes, and the one error a command ends with.

A command either returns its exit code or raises ``CommandError``: ``main`` prints
its message on stderr and exits with its code. Library errors become command
errors in one place, ``command_error``, so every command maps them alike.
"""

from __future__ import annotations

from ..wire.errors import (
    AgentNotAvailable,
    AgentVersionNotAvailable,
    ARCPError,
    DuplicateKey,
    InvalidRequest,
    JobNotFound,
    PermissionDenied,
)

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_NO_SESSION",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "CommandError",
    "command_error",
    "unwrap",
]

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_SESSION = 3
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130

#: What the runtime says when it refuses a request (exit 4), not the session (exit 3).
REFUSALS = (
    AgentNotAvailable,
    AgentVersionNotAvailable,
    DuplicateKey,
    InvalidRequest,
    JobNotFound,
    PermissionDenied,
)


class CommandError(Exception):
    """Ends a command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def command_error(exc: BaseException, *, prefix: str = "refused") -> CommandError:
    """``exc`` as the command's error: a refusal (4), or no session (3)."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, REFUSALS):
        return CommandError(f"{prefix}: {exc.code}: {exc.message}", EXIT_REFUSED)
    if isinstance(exc, ARCPError):
        return CommandError(f"{exc.code}: {exc.message}", EXIT_NO_SESSION)
    return CommandError(str(exc), EXIT_NO_SESSION)


def unwrap(exc: BaseException) -> BaseException:
    """``exc`` without the exception groups nurseries wrapped it in."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
