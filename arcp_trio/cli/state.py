"""Sessions the command line can come back to: what ``cancel`` needs (§7.4).

``submit`` saves its session's ``ResumeTicket`` (``arcp_trio.client.ticket``) under
the job's id, once when the job is accepted and again when the command ends; ``cancel``
resumes that session, which holds the job's cancel authority, and saves the ticket the
resumed session hands back (a resume rotates the token, §6.3).

The file is ``$ARCP_STATE_DIR/sessions.json`` (default ``$XDG_STATE_HOME/arcp-trio/``).
It is owner-only (0600), because a ticket together with the bearer token carries the
session's authority; the token itself is never saved. It is written atomically and
keeps at most ``MAX_ENTRIES`` jobs, dropping the oldest first::

    {"jobs": {"job_...": {"ticket": {<ResumeTicket.to_json()>}, "saved_at": "..."}}}

An entry this version cannot read (written by a newer arcp-trio, or damaged) counts
as absent: ``cancel`` then asks from a new session.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..client import InvalidTicket, ResumeTicket
from ..client.ticket import TICKET_TYPE, TICKET_VERSION
from ..wire.timestamps import format_timestamp, system_wall_clock

__all__ = ["MAX_ENTRIES", "remember", "saved_ticket", "state_file"]

log = logging.getLogger("arcp_trio.cli")

MAX_ENTRIES = 200


def state_file() -> Path:
    base = os.environ.get("ARCP_STATE_DIR")
    if not base:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = str(Path(xdg) / "arcp-trio")
    return Path(base) / "sessions.json"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {"jobs": {}}
    return data if isinstance(data, dict) and isinstance(data.get("jobs"), dict) else {"jobs": {}}


def saved_ticket(job_id: str, url: str) -> ResumeTicket | None:
    """The ticket of the session that submitted ``job_id`` at ``url``, if one was saved."""
    entry = _load()["jobs"].get(job_id)
    if not isinstance(entry, dict):
        return None
    try:
        if "ticket" in entry:
            ticket = ResumeTicket.from_json(entry["ticket"])
        else:
            ticket = _legacy_ticket(job_id, entry)
    except InvalidTicket as exc:
        log.info("ignoring the saved session of %s: %s", job_id, exc)
        return None
    return ticket if ticket.url == url else None


def _legacy_ticket(job_id: str, entry: dict[str, Any]) -> ResumeTicket:
    """An entry of arcp-trio before resume tickets: its session, with its one job."""
    return ResumeTicket.from_json(
        {
            "type": TICKET_TYPE,
            "version": TICKET_VERSION,
            "url": entry.get("url"),
            "session_id": entry.get("session_id"),
            "resume_token": entry.get("resume_token"),
            "last_event_seq": entry.get("last_event_seq") or 0,
            "jobs": [{"job_id": job_id}],
        }
    )


def remember(job_id: str, ticket: ResumeTicket) -> None:
    """Keep ``ticket`` as the way back to ``job_id``'s submitting session (§7.4)."""
    state = _load()
    jobs: dict[str, Any] = state["jobs"]
    jobs[job_id] = {"ticket": ticket.to_json(), "saved_at": format_timestamp(system_wall_clock())}
    for old in sorted(jobs, key=lambda j: str(jobs[j].get("saved_at")))[:-MAX_ENTRIES]:
        del jobs[old]
    path = state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        # A resume token carries the session's authority: owner-only file.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=1)
        temporary.replace(path)
    except OSError as exc:
        log.warning("cannot save session state to %s: %s", path, exc)
