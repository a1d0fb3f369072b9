"""Resume tickets: a session exported by one client and resumed by another (§6.3).

Rules: a real in-process runtime over in-memory transports (``Link``), MockClock
(autojump) for everything timed; each "process" is its own ``open_client`` block, and
nothing passes between them but the ticket's JSON text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import trio

from arcp_trio.client import InvalidTicket, ResumeTicket, TicketJob
from arcp_trio.wire.errors import (
    Cancelled,
    JobNotFound,
    PermissionDenied,
    ResumeWindowExpired,
    Unauthenticated,
)
from tests.links import Link, client_for, collect, currents

if TYPE_CHECKING:
    from arcp_trio.client.client import Client
    from arcp_trio.client.handles import Event


def through_json(ticket: ResumeTicket) -> ResumeTicket:
    """What another process reads back from a file: only the JSON text passes."""
    return ResumeTicket.from_json(json.dumps(ticket.to_json()))


async def submit_and_leave(
    link: Link, agent: str, input_: Any, *, read: int = 0
) -> tuple[str, list[Event], ResumeTicket]:
    """Submit, read ``read`` events, leave the block, export: one short-lived process."""
    client: Client
    seen: list[Event] = []
    async with client_for(link) as client:
        handle = await client.submit(agent, input=input_)
        if read:
            async for event in handle.events():
                seen.append(event)
                if len(seen) == read:
                    break
    # After the block: nothing more arrives, and the session stays resumable (§6.7).
    return handle.job_id, seen, through_json(client.resume_ticket())


# == the gap, exactly =======================================================================


async def test_a_resumed_ticket_delivers_exactly_the_missed_events(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    job_id, seen, ticket = await submit_and_leave(
        link, "ticker", {"count": 10, "interval": 1}, read=3
    )
    assert [e.event_seq for e in seen] == [1, 2, 3]
    assert ticket.last_event_seq == 3
    assert ticket.jobs == (TicketJob(job_id=job_id, agent="ticker@1.0.0", job_events=3),)
    await trio.sleep(4)  # the job goes on while nobody is attached (events 4..7 buffer)
    async with client_for(link, resume=ticket) as client:
        assert client.session_id == ticket.session_id  # the same session (§7.7)
        handle = client.job(job_id)
        assert handle.agent == "ticker@1.0.0"
        events = await collect(handle.events())
        assert [e.event_seq for e in events] == list(range(4, 11))  # no gap, no duplicate
        assert currents(seen + events) == list(range(1, 11))
        assert (await handle.result()).result == {"ticks": 10}
        assert client.statistics().reconnects == 0  # a resume, not a reconnect
        again = client.resume_ticket()
    assert again.session_id == ticket.session_id
    assert again.resume_token != ticket.resume_token  # rotated by the welcome (§6.3)
    assert again.last_event_seq == 11  # the ten events and the terminal
    assert again.jobs == ()  # the job's terminal arrived: nothing unfinished


async def test_a_job_that_ended_while_away_still_says_how(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    """The terminal is in the replay right after the welcome: the ticket's handle
    exists before it arrives, and keeps it until ``job()`` claims it."""
    job_id, _, ticket = await submit_and_leave(link, "slow", {"seconds": 2})
    assert ticket.job_ids == {job_id}
    assert (await link.runtime.wait_job_done(job_id)).status == "success"
    async with client_for(link, resume=ticket) as client:
        await trio.sleep(1)  # the replay is dispatched before anyone asks
        handle = client.job(job_id)
        assert handle.done
        assert (await handle.result()).result == {"slept": 2}
        await client.cancel(job_id)  # ended: returns at once, nothing to cancel


async def test_events_received_before_the_export_are_not_replayed(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    """``last_event_seq`` is what the client *received*, iterated or not: a handle
    that was never read still moved the position."""
    job_id, _, ticket = await submit_and_leave(link, "chatty", {"n": 5})
    assert ticket.last_event_seq == 6  # five logs and the terminal, all received
    assert ticket.jobs == ()
    async with client_for(link, resume=ticket) as client:
        with pytest.raises(KeyError):
            client.job(job_id)
        assert client.last_event_seq == 6


# == cancel authority comes with the session (§7.4, §7.7) ===================================


async def test_cancel_from_the_resumed_session(link: Link, autojump_clock: trio.abc.Clock) -> None:
    job_id, _, ticket = await submit_and_leave(link, "slow", {"seconds": 100})
    async with client_for(link, token="tok-alice") as stranger:
        with pytest.raises(PermissionDenied):  # same principal, other session
            await stranger.cancel(job_id)
    async with client_for(link, resume=ticket) as client:
        with trio.fail_after(5):
            await client.cancel(job_id, reason="from the ticket")
        with pytest.raises(Cancelled, match="from the ticket"):
            await client.job(job_id).result()
    assert (await link.runtime.wait_job_done(job_id)).status == "cancelled"


async def test_cancel_by_id_of_an_unknown_job_is_refused(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    async with client_for(link) as client:
        with pytest.raises(JobNotFound):
            await client.cancel("job_01JZZZZZZZZZZZZZZZZZZZZZZZ")
        with pytest.raises(KeyError):
            client.job("job_01JZZZZZZZZZZZZZZZZZZZZZZZ")


# == stale tickets ===========================================================================


async def test_a_ticket_past_its_window_is_a_typed_error(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    _, _, ticket = await submit_and_leave(link, "slow", {"seconds": 1000})
    await trio.sleep(link.runtime.config.resume_window_sec + 1)
    with pytest.raises(ResumeWindowExpired):
        async with client_for(link, resume=ticket):
            pass  # pragma: no cover


async def test_a_ticket_works_once(link: Link, autojump_clock: trio.abc.Clock) -> None:
    """§6.3: the token rotates on every welcome; once the resumed client has shown
    it holds the new one, the ticket's token no longer resumes."""
    _, _, ticket = await submit_and_leave(link, "slow", {"seconds": 1000})
    async with client_for(link, resume=ticket) as client:
        await client.list_jobs()  # a frame after the welcome: the new token is held
    with pytest.raises(PermissionDenied):
        async with client_for(link, resume=ticket):
            pass  # pragma: no cover
    async with client_for(link, resume=client.resume_ticket()) as again:
        assert again.session_id == ticket.session_id


async def test_a_ticket_needs_the_principals_token(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    _, _, ticket = await submit_and_leave(link, "slow", {"seconds": 1000})
    with pytest.raises(PermissionDenied):  # bob cannot take over alice's session
        async with client_for(link, token="tok-bob", resume=ticket):
            pass  # pragma: no cover
    with pytest.raises(Unauthenticated):
        async with client_for(link, token="nobody", resume=ticket):
            pass  # pragma: no cover
    async with client_for(link, resume=ticket) as client:  # untouched by the refusals
        assert client.session_id == ticket.session_id


async def test_restart_on_session_lost_continues_a_stale_tickets_jobs(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    job_id, seen, ticket = await submit_and_leave(
        link, "ticker", {"count": 80, "interval": 1}, read=3
    )
    await trio.sleep(link.runtime.config.resume_window_sec + 1)  # the session is gone
    async with client_for(link, resume=ticket, restart_on_session_lost=True) as client:
        assert client.session_id != ticket.session_id
        assert client.sessions_restarted == 1
        handle = client.job(job_id)
        with pytest.raises(PermissionDenied):  # a subscription carries no authority
            await client.cancel(job_id)
        events = await collect(handle.events())
        # Continued from the job's 4th event: history, then live; once each.
        assert currents(seen + events) == list(range(1, 81))
        await client.cancel(job_id)  # ended, and seen to end: returns at once


async def test_a_lost_session_has_no_ticket(link: Link, autojump_clock: trio.abc.Clock) -> None:
    async with client_for(link) as client:
        handle = await client.submit("slow", input={"seconds": 1000})
        link.refuse = 10_000
        link.drop()
        with pytest.raises(ResumeWindowExpired):
            await handle.result()
        with pytest.raises(ResumeWindowExpired):
            client.resume_ticket()


# == the JSON form ===========================================================================


def test_the_json_form_round_trips_and_hides_the_token() -> None:
    ticket = ResumeTicket(
        url="ws://127.0.0.1:8765/arcp",
        session_id="sess_1",
        resume_token="rtk_secret",
        last_event_seq=7,
        jobs=(TicketJob(job_id="job_1", agent="ticker@1.0.0", job_events=2),),
    )
    data = ticket.to_json()
    assert data == {
        "type": "arcp_trio.resume_ticket",
        "version": 1,
        "url": "ws://127.0.0.1:8765/arcp",
        "session_id": "sess_1",
        "resume_token": "rtk_secret",
        "last_event_seq": 7,
        "jobs": [{"job_id": "job_1", "agent": "ticker@1.0.0", "job_events": 2}],
    }
    assert ResumeTicket.from_json(data) == ticket
    assert ResumeTicket.from_json(json.dumps(data)) == ticket
    # Unknown keys are a later minor addition within version 1: ignored.
    assert ResumeTicket.from_json({**data, "added_later": True}) == ticket
    assert "rtk_secret" not in repr(ticket)
    assert ticket.job_ids == frozenset({"job_1"})


GOOD: dict[str, Any] = {
    "type": "arcp_trio.resume_ticket",
    "version": 1,
    "url": None,
    "session_id": "sess_1",
    "resume_token": "rtk_1",
    "last_event_seq": 0,
    "jobs": [],
}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "is JSON"),
        ([GOOD], "JSON object"),
        ({**GOOD, "type": "something.else"}, "not a resume ticket"),
        ({**GOOD, "version": 2}, "version 2 is not supported"),
        ({**GOOD, "version": True}, "not supported"),
        ({k: v for k, v in GOOD.items() if k != "version"}, "not supported"),
        ({k: v for k, v in GOOD.items() if k != "session_id"}, "session_id"),
        ({**GOOD, "resume_token": ""}, "resume_token"),
        ({**GOOD, "last_event_seq": -1}, "last_event_seq"),
        ({**GOOD, "last_event_seq": "3"}, "last_event_seq"),
        ({**GOOD, "last_event_seq": False}, "last_event_seq"),
        ({**GOOD, "url": 8765}, "url"),
        ({**GOOD, "jobs": {"job_1": {}}}, "jobs: expected a list"),
        ({**GOOD, "jobs": ["job_1"]}, r"jobs\[0\]: expected an object"),
        ({**GOOD, "jobs": [{"agent": "x"}]}, r"jobs\[0\]\.job_id"),
        ({**GOOD, "jobs": [{"job_id": "j", "job_events": -2}]}, r"jobs\[0\]\.job_events"),
        ({**GOOD, "jobs": [{"job_id": "j", "agent": 3}]}, r"jobs\[0\]\.agent"),
        ({**GOOD, "jobs": [{"job_id": "j"}, {"job_id": "j"}]}, "listed twice"),
    ],
)
def test_malformed_or_unknown_tickets_are_refused(data: Any, message: str) -> None:
    with pytest.raises(InvalidTicket, match=message):
        ResumeTicket.from_json(data)
