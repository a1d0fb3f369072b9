"""``open_client`` for the commands: its failures become command errors (exit 3 or 4)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..client import open_client
from ..transport.base import TransportError
from ..wire.errors import ARCPError, PermissionDenied, ResumeWindowExpired
from .errors import EXIT_NO_SESSION, CommandError, command_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..client import Client, ResumeTicket

__all__ = ["StaleTicket", "client_session"]


class StaleTicket(Exception):
    """The saved session cannot be resumed: its window is over, or its token retired."""


@contextlib.asynccontextmanager
async def client_session(
    url: str, token: str, *, resume: ResumeTicket | None = None
) -> AsyncIterator[Client]:
    """``open_client`` with the command-line error mapping.

    With ``resume``, the session of that ticket (§6.3); ``StaleTicket`` when the
    runtime will not resume it (``RESUME_WINDOW_EXPIRED``, or ``PERMISSION_DENIED``:
    a retired token, another principal, or the reference runtime's answer to a gone
    session), so the caller can decide what to do without it.
    """
    opened = False
    try:
        async with open_client(url, token=token, resume=resume) as client:
            opened = True
            yield client
    except* (TransportError, OSError) as group:
        raise CommandError(f"cannot reach {url}: {group.exceptions[0]}", EXIT_NO_SESSION) from None
    except* ARCPError as group:
        error = group.exceptions[0]
        stale = isinstance(error, ResumeWindowExpired | PermissionDenied)
        if resume is not None and not opened and stale:
            raise StaleTicket(str(error)) from None
        raise command_error(error) from None
