"""Resume tickets: a session exported so that another process can resume it (§6.3).

A ``ResumeTicket`` holds what a client needs to come back to its session from
somewhere else, such as another process or a later run of a command line:

- the session's id and its latest resume token;
- ``last_event_seq``, the highest ``event_seq`` the exporting client received;
- the unfinished jobs it held handles for.

``Client.resume_ticket()`` exports one. ``open_client(url, token=..., resume=ticket)``
resumes it: the first ``session.hello`` carries the ``resume`` block the client
already sends when it reconnects by itself. The runtime replays every event after
``last_event_seq``, and ``client.job(job_id)`` hands out the ticket's jobs with those
events in them.

What a ticket is not
--------------------
It does not hold the bearer token. A resume is a ``session.hello`` like any other
(WIRE.md §5): it authenticates (§6.1), and the runtime resumes only if the token's
principal is the session's (arcp_trio's handshake refuses a mismatch with
``PERMISSION_DENIED``). So the resumer must present the token anyway. Leaving it
out means a leaked ticket is useless without the credential, and the credential
keeps its own lifetime and storage (a JWT expires; a ticket must not outlive it).

A ticket is still a secret: together with the token it carries the session's cancel
authority (§7.4, §7.7). Store it owner-only (the command line writes it with mode
0600). ``repr()`` never shows the resume token.

A ticket works once. The token rotates on every welcome (§6.3): once a resume has
been answered, or the exporting client has reconnected and shown its new token, the
runtime retires the ticket's token. Export a new ticket from the client that resumed.

The JSON form, version 1
------------------------
``to_json()`` returns a dict that ``json.dumps`` can write; ``from_json()`` reads it
back (or the JSON text)::

    {
      "type": "arcp_trio.resume_ticket",
      "version": 1,
      "url": "ws://127.0.0.1:8765/arcp",      // or null (a custom connector)
      "session_id": "sess_...",
      "resume_token": "rtk_...",
      "last_event_seq": 12,
      "jobs": [{"job_id": "job_...", "agent": "ticker@1.0.0", "job_events": 3}]
    }

Readers refuse a different ``type`` or ``version``, and any missing or mistyped
field, with ``InvalidTicket``. They ignore keys they do not know: a field may be
added within version 1, but any other change makes a version 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["TICKET_TYPE", "TICKET_VERSION", "InvalidTicket", "ResumeTicket", "TicketJob"]

TICKET_TYPE = "arcp_trio.resume_ticket"
TICKET_VERSION = 1


class InvalidTicket(ValueError):
    """``ResumeTicket.from_json`` refused its input (malformed, or another version)."""


@attrs.frozen(kw_only=True)
class TicketJob:
    """An unfinished job of the exported session, whose handle the client held.

    Attributes:
        job_id: the job.
        agent: its ``name@version``, as ``job.accepted`` said (the handle's ``agent``).
        job_events: how many of the job's own events the client had received. A
            ``restart_on_session_lost`` client uses this count to continue the job from its
            next event.
    """

    job_id: str
    agent: str = ""
    job_events: int = 0


@attrs.frozen(kw_only=True)
class ResumeTicket:
    """A session, exported: ``open_client(resume=ticket)`` resumes it (module docs).

    Attributes:
        session_id: the session (§6.2).
        resume_token: its latest resume token (§6.3). Never shown by ``repr()``.
        last_event_seq: the highest ``event_seq`` the exporting client received and
            handed to its handles and subscriptions, or held for a handle not yet
            claimed. A resume presents it (§6.3), so the runtime replays exactly the
            events after it, and none of the earlier ones again. This is the position
            the client received, not the one it acknowledged (``session.ack``, §6.5).
            Events that a handle held but nobody iterated count as received.
        url: where the session lives (None when the client used a custom connector);
            ``open_client`` uses it when no ``url`` is given.
        jobs: the jobs the exporting client held unfinished handles for.
    """

    session_id: str
    resume_token: str = attrs.field(repr=False)
    last_event_seq: int
    url: str | None = None
    jobs: tuple[TicketJob, ...] = ()

    @property
    def job_ids(self) -> frozenset[str]:
        return frozenset(job.job_id for job in self.jobs)

    def to_json(self) -> dict[str, Any]:
        """The version-1 JSON object (module docs); ``from_json`` reads it back."""
        return {
            "type": TICKET_TYPE,
            "version": TICKET_VERSION,
            "url": self.url,
            "session_id": self.session_id,
            "resume_token": self.resume_token,
            "last_event_seq": self.last_event_seq,
            "jobs": [
                {"job_id": job.job_id, "agent": job.agent, "job_events": job.job_events}
                for job in self.jobs
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> ResumeTicket:
        """Read ``to_json()``'s object, or its JSON text.

        Raises:
            InvalidTicket: not JSON, not a ticket, another version, or a missing or
                mistyped field (the message names it).
        """
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise InvalidTicket(f"a resume ticket is JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise InvalidTicket(f"a resume ticket is a JSON object, not {type(data).__name__}")
        if data.get("type") != TICKET_TYPE:
            raise InvalidTicket(f"not a resume ticket (type {data.get('type')!r})")
        version = data.get("version")
        if version != TICKET_VERSION or isinstance(version, bool):
            raise InvalidTicket(
                f"resume ticket version {version!r} is not supported (this reader knows "
                f"version {TICKET_VERSION})"
            )
        url = data.get("url")
        if url is not None and not isinstance(url, str):
            raise InvalidTicket("url: expected a string or null")
        jobs_data = data.get("jobs", [])
        if not isinstance(jobs_data, list):
            raise InvalidTicket("jobs: expected a list")
        jobs: list[TicketJob] = []
        for index, entry in enumerate(jobs_data):
            where = f"jobs[{index}]"
            if not isinstance(entry, Mapping):
                raise InvalidTicket(f"{where}: expected an object")
            agent = entry.get("agent", "")
            if not isinstance(agent, str):
                raise InvalidTicket(f"{where}.agent: expected a string")
            jobs.append(
                TicketJob(
                    job_id=_text(entry, "job_id", where),
                    agent=agent,
                    job_events=_count(entry, "job_events", where, default=0),
                )
            )
        if len({job.job_id for job in jobs}) != len(jobs):
            raise InvalidTicket("jobs: a job is listed twice")
        return cls(
            url=url,
            session_id=_text(data, "session_id"),
            resume_token=_text(data, "resume_token"),
            last_event_seq=_count(data, "last_event_seq"),
            jobs=tuple(jobs),
        )


def _text(data: Mapping[str, Any], key: str, where: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidTicket(f"{where + '.' if where else ''}{key}: expected a non-empty string")
    return value


def _count(
    data: Mapping[str, Any], key: str, where: str = "", *, default: int | None = None
) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidTicket(f"{where + '.' if where else ''}{key}: expected an integer >= 0")
    return value
