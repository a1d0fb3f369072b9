"""A client that stops reading while a chatty job runs.

Rules: in-memory transports with a small carrier buffer (a full socket), MockClock,
every wait bounded.

While the consumer is stalled, what the runtime holds for it stays within the
configured bounds (resume buffer ``max_buffered_events``, outbox
``backpressure_high_water``, job history ``job_history_limit``): the agent is slowed
down instead. The cap is announced in the stream (``status {phase:
"back_pressure"}``). When the consumer reads again, nothing is lost: every event
arrives once, in order. If it goes away instead, the documented cap policy applies
visibly: its resume is refused with ``RESUME_WINDOW_EXPIRED``, never a silent gap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.testing import MemoryLink, config_for_tests, open_test_client, open_test_runtime
from arcp_trio.wire.errors import ResumeWindowExpired

if TYPE_CHECKING:
    from arcp_trio.runtime.session import Session

CAP = 32
HIGH_WATER = 64
HISTORY = 128
N = 3000


def held_for(session: Session) -> tuple[int, int]:
    """(resume-buffer events, queued outbound frames) the runtime holds for a session."""
    queued = len(session.connection.outbox.frames) if session.connection is not None else 0
    return len(session.buffer), queued


async def test_a_stalled_consumer_is_bounded_signalled_and_loses_nothing(
    arcp_clock: trio.abc.Clock,
) -> None:
    config = config_for_tests(
        max_buffered_events=CAP, backpressure_high_water=HIGH_WATER, job_history_limit=HISTORY
    )
    async with open_test_runtime(config=config) as runtime, trio.open_nursery() as nursery:
        link = MemoryLink(runtime, nursery, buffer=16)
        async with open_test_client(link, auto_ack_every=8, auto_ack_interval=None) as client:
            handle = await client.submit("chatty@1.0.0", {"n": N, "kind": "log"})
            link.current.pause_reading()
            await trio.sleep(2)  # virtual time: everything that can happen, has
            session = runtime.session(client.session_id or "")
            assert session is not None
            job = runtime.job(handle.job_id)
            assert job is not None
            buffered, queued = held_for(session)
            # The agent was slowed down, not the memory grown: it is still running, far
            # from done, while the runtime holds a bounded amount for this consumer.
            assert job.status == "running"
            assert job.last_event_index < N
            assert buffered <= CAP
            assert queued <= HIGH_WATER + 2
            assert len(job.history) <= HISTORY
            stats = runtime.statistics()
            assert stats.buffered_events <= CAP * stats.sessions

            link.current.resume_reading()
            with trio.fail_after(600):
                events = [event async for event in handle.events()]
                outcome = await handle.result()
        nursery.cancel_scope.cancel()
    lines = [e.body["message"] for e in events if e.kind == "log"]
    assert lines == [f"line {i}" for i in range(N)], "an event was lost or duplicated"
    notices = [e for e in events if e.kind == "status" and e.body.get("phase") == "back_pressure"]
    assert notices, "the cap was reached without a back_pressure status"
    seqs = [e.event_seq for e in events]
    assert seqs == sorted(set(seqs))
    assert outcome.result == {"n": N}


async def test_a_consumer_that_goes_away_gets_the_cap_policy_visibly(
    arcp_clock: trio.abc.Clock,
) -> None:
    config = config_for_tests(
        max_buffered_events=CAP, backpressure_high_water=HIGH_WATER, job_history_limit=HISTORY
    )
    async with open_test_runtime(config=config) as runtime, trio.open_nursery() as nursery:
        link = MemoryLink(runtime, nursery)
        async with open_test_client(link, auto_ack_every=None, auto_ack_interval=None) as client:
            handle = await client.submit("chatty@1.0.0", {"n": 500, "kind": "log"})
            link.up = False
            link.drop()
            # Detached: the job runs on at full speed (it never waits for a session
            # that is away); the session keeps only the newest CAP events.
            await runtime.wait_job_done(handle.job_id)
            session = runtime.session(client.session_id or "")
            assert session is not None
            assert len(session.buffer) <= CAP
            link.up = True
            with trio.fail_after(600), pytest.raises(ResumeWindowExpired):
                await handle.result()
        nursery.cancel_scope.cancel()
