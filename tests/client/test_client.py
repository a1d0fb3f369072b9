"""The client against a real in-process runtime over in-memory transports.

Rules: MockClock (autojump) for everything timed; the connection is cut, stalled or
broken by wrapping the real in-memory transport (``Link``), never by mocking the
client's internals.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from arcp_trio.client import Backoff, ClientClosed
from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import Runtime, open_runtime
from arcp_trio.wire.errors import (
    AgentNotAvailable,
    BudgetExhausted,
    Cancelled,
    DuplicateKey,
    PermissionDenied,
    ResumeWindowExpired,
    Timeout,
    Unauthenticated,
)
from tests.helpers import TOKENS, trio_wall_clock
from tests.links import Link, client_for, collect, currents

if TYPE_CHECKING:
    from arcp_trio.client.client import Client
    from arcp_trio.client.handles import Event
    from arcp_trio.transport.base import Transport

# -- basics --------------------------------------------------------------------------------


async def test_submit_stream_and_result(link: Link, autojump_clock: trio.abc.Clock) -> None:
    async with client_for(link) as client:
        assert client.session_id is not None
        assert client.runtime_info["name"] == "arcp-trio"
        handle = await client.submit("ticker@1.0.0", input={"count": 4, "interval": 1})
        assert handle.agent == "ticker@1.0.0"
        events = await collect(handle.events())
        assert currents(events) == [1, 2, 3, 4]
        assert [e.event_seq for e in events] == [1, 2, 3, 4]
        outcome = await handle.result()
        assert outcome.result == {"ticks": 4}
        assert outcome.final_status == "success"


async def test_chunked_result_is_reassembled(link: Link, autojump_clock: trio.abc.Clock) -> None:
    async with client_for(link) as client:
        handle = await client.submit("chunker", input={"chunks": 4, "size": 8})
        outcome = await handle.result()
        assert outcome.result == b"aaaaaaaabbbbbbbbccccccccdddddddd"
        assert outcome.result_id is not None
        assert outcome.result_id.startswith("res_")
        assert outcome.result_size == 32


async def test_a_handle_without_events_holds_none_and_still_gets_its_result(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    """``keep_events=False``: a chatty job costs the waiting caller no memory per event;
    streamed results are still assembled, and ``events()`` says why it cannot work."""
    async with client_for(link) as client:
        chatty = await client.submit("chatty", input={"n": 2000}, keep_events=False)
        chunked = await client.submit("chunker", input={"chunks": 4, "size": 8}, keep_events=False)
        kept = await client.submit("chatty", input={"n": 50})
        assert (await chatty.result()).final_status == "success"
        assert (await chunked.result()).result == b"aaaaaaaabbbbbbbbccccccccdddddddd"
        await kept.result()
        assert chatty._stream.job_events == 2000
        assert len(chatty._stream._events) == 0
        assert len(kept._stream._events) == 50
        with pytest.raises(RuntimeError, match="keep_events=False"):
            chatty.events()
        assert len(await collect(kept.events())) == 50


async def test_errors_are_typed_and_matched_to_their_request(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    async with client_for(link) as client:
        good: list[Any] = []

        async def submit_good() -> None:
            good.append(await client.submit("echo", input=1))

        async with trio.open_nursery() as inner:
            inner.start_soon(submit_good)
            with pytest.raises(AgentNotAvailable):
                await client.submit("nobody")
        # The error failed only the request at fault.
        assert (await good[0].result()).result == {"echo": 1, "version": "2.0.0"}
        await client.submit("echo", input=1, idempotency_key="k")
        with pytest.raises(DuplicateKey):
            await client.submit("echo", input=2, idempotency_key="k")
        handle = await client.submit(
            "spender",
            input={"steps": 5, "cost": 0.4},
            lease_request={"cost.budget": ["USD:1.00"], "tool.call": ["search"]},
        )
        assert handle.accepted["budget"] == {"USD": 1.0}  # spec shapes negotiated
        with pytest.raises(BudgetExhausted):
            await handle.result()


async def test_cancel_and_timeout(link: Link, autojump_clock: trio.abc.Clock) -> None:
    async with client_for(link) as client:
        handle = await client.submit("slow", input={"seconds": 100})
        await handle.cancel(reason="enough")
        with pytest.raises(Cancelled):
            await handle.result()
        await handle.cancel()  # finished: returns at once
        timed = await client.submit("slow", input={"seconds": 100}, max_runtime_sec=3)
        with pytest.raises(Timeout):
            await timed.result()


async def test_list_jobs_and_subscribe(link: Link, autojump_clock: trio.abc.Clock) -> None:
    async with client_for(link) as owner, client_for(link) as watcher:
        handle = await owner.submit("ticker", input={"count": 5, "interval": 1})
        await trio.sleep(2.5)
        page = await watcher.list_jobs(status=["running"], limit=10)
        assert [job.job_id for job in page.jobs] == [handle.job_id]
        async with watcher.subscribe(handle.job_id, history=True) as sub:
            assert sub.subscribed["current_status"] == "running"
            events = await collect(sub.events())
            assert currents(events) == [1, 2, 3, 4, 5]
            assert (await sub.result()).result == {"ticks": 5}


async def test_an_unsubscribe_while_disconnected_reaches_the_runtime_on_reconnect(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    """§7.6: leaving ``subscribe()`` while the connection is down must not be lost
    (found by the end-to-end fuzzer): the resumed session would keep the subscription
    and the runtime would keep routing the job's events to it."""
    async with client_for(link) as owner, client_for(link) as watcher:
        handle = await owner.submit("slow", input={"seconds": 100})
        job = link.runtime.job(handle.job_id)
        assert job is not None
        async with watcher.subscribe(handle.job_id):
            assert watcher.session_id in job.watchers
            link.refuse = 2  # the watcher stays offline for a while
            link.drop()
            await trio.testing.wait_all_tasks_blocked()  # it noticed, and backs off
            assert watcher.statistics().state != "connected"
        assert watcher.session_id in job.watchers  # nobody could tell the runtime yet
        await trio.sleep(30)  # backoff 1 s, refused, 3 s, refused, 7 s: resumed
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.statistics().state == "connected"
        assert watcher.session_id not in job.watchers
        await handle.cancel()


async def test_ack_and_auto_ack(link: Link, autojump_clock: trio.abc.Clock) -> None:
    async with client_for(link, auto_ack_every=5, auto_ack_interval=None) as client:
        handle = await client.submit("chatty", input={"n": 12})
        await handle.result()
        await trio.sleep(0.1)
        session = link.runtime.session(client.session_id or "")
        assert session is not None
        assert session.buffer.acked_through == 10
        await client.ack(13)
        await trio.sleep(0.1)
        assert session.buffer.acked_through == 13
        assert len(session.buffer) == 0


async def test_bad_token_fails_open_client(link: Link, autojump_clock: trio.abc.Clock) -> None:
    with pytest.raises(Unauthenticated):
        async with client_for(link, token="wrong"):
            pass  # pragma: no cover


# -- reconnection ---------------------------------------------------------------------------


async def test_a_drop_is_invisible_to_the_event_stream(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    async with client_for(link) as client:
        handle = await client.submit("ticker", input={"count": 10, "interval": 1})
        seen: list[Event] = []
        async for event in handle.events():
            seen.append(event)
            if len(seen) in (3, 6):
                link.drop()
        assert currents(seen) == list(range(1, 11))
        assert [e.event_seq for e in seen] == list(range(1, 11))
        assert (await handle.result()).result == {"ticks": 10}
        assert client.statistics().reconnects == 2
        assert client.statistics().session_id == client.session_id


async def test_requests_in_flight_are_retried_safely(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    async with client_for(link) as client:
        link.current.stalled = True  # the submit goes into a black hole
        submitted: list[Any] = []

        async def submit() -> None:
            submitted.append(await client.submit("echo", input="once"))

        async with trio.open_nursery() as inner:
            inner.start_soon(submit)
            await trio.sleep(1)
            link.drop()
            link.current.stalled = False
        outcome = await submitted[0].result()
        assert outcome.result["echo"] == "once"
        # The auto-added idempotency key made the re-sent submit safe: one job.
        assert len(link.runtime.job_ids()) == 1


async def test_client_detects_heartbeat_loss_and_resumes(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    async with client_for(link) as client:
        handle = await client.submit("ticker", input={"count": 8, "interval": 5})
        events: list[Event] = []
        async for event in handle.events():
            events.append(event)
            if len(events) == 2:
                link.current.stalled = True  # half-open: nothing in, nothing out
        assert currents(events) == list(range(1, 9))
        assert client.statistics().reconnects >= 1


async def test_backoff_timing(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    link = Link(runtime, nursery)
    attempts: list[float] = []
    original = link.connect

    async def timed_connect() -> Transport:
        attempts.append(trio.current_time())
        return await original()

    link.connect = timed_connect  # type: ignore[method-assign]
    async with client_for(link, backoff=Backoff(initial=1, factor=2, cap=5)) as client:
        link.refuse = 5
        dropped = trio.current_time()
        link.drop()
        handle = await client.submit("echo", input=1)
        await handle.result()
        gaps = [round(t - dropped, 6) for t in attempts[1:]]
        # Delays 1, 2, 4, 5 (capped), 5, then success: cumulative times.
        assert gaps == [1, 3, 7, 12, 17, 22]


async def test_window_expiry_ends_every_handle_with_a_typed_error(
    link: Link, autojump_clock: trio.abc.Clock
) -> None:
    async with client_for(link, backoff=Backoff(initial=1, factor=2, cap=10)) as client:
        handle = await client.submit("slow", input={"seconds": 1000})
        link.refuse = 10_000
        link.drop()
        start = trio.current_time()
        with pytest.raises(ResumeWindowExpired):
            await handle.result()
        assert trio.current_time() - start >= client.resume_window_sec
        with pytest.raises(ResumeWindowExpired):
            await client.submit("echo")
        assert client.statistics().state == "lost"


async def test_runtime_side_window_expiry_is_final(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    config = RuntimeConfig(resume_window_sec=5, heartbeat_interval_sec=1000)
    async with open_runtime(
        agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as runtime:
        link = Link(runtime, nursery)
        async with client_for(link, backoff=Backoff(initial=6, factor=1, cap=6)) as client:
            handle = await client.submit("slow", input={"seconds": 100})
            link.drop()
            with pytest.raises(ResumeWindowExpired):
                await collect(handle.events())
            assert (await runtime.wait_job_done(handle.job_id)).status == "success"


async def test_aclose_never_cancels_jobs(link: Link, autojump_clock: trio.abc.Clock) -> None:
    async with client_for(link) as client:
        handle = await client.submit("slow", input={"seconds": 10})
    with pytest.raises(ClientClosed):
        await handle.result()
    job = await link.runtime.wait_job_done(handle.job_id)
    assert job.status == "success"


# -- chaos -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
async def test_chaos_every_event_exactly_once_in_order(
    link: Link, autojump_clock: trio.abc.Clock, seed: int
) -> None:
    rng = random.Random(seed)
    async with client_for(link) as client:
        handles = [
            await client.submit("ticker", input={"count": 15, "interval": rng.choice([0.5, 1])})
            for _ in range(3)
        ]

        async def chaos() -> None:
            for _ in range(6):
                await trio.sleep(rng.uniform(0.5, 4))
                fault = rng.choice(["drop", "stall", "ping"])
                if fault == "drop":
                    link.drop()
                elif fault == "stall":
                    link.current.stalled = True
                else:
                    link.current.fail_pings = True

        results: dict[str, list[int]] = {}

        async def consume(handle: Any) -> None:
            results[handle.job_id] = currents(await collect(handle.events()))

        async with trio.open_nursery() as inner:
            inner.start_soon(chaos)
            for handle in handles:
                inner.start_soon(consume, handle)
        for handle in handles:
            assert results[handle.job_id] == list(range(1, 16))
            assert (await handle.result()).result == {"ticks": 15}
        assert client.last_event_seq == 3 * 16


async def test_statistics(link: Link, autojump_clock: trio.abc.Clock) -> None:
    client: Client
    async with client_for(link) as client:
        stats = client.statistics()
        assert stats.state == "connected"
        assert stats.reconnects == 0
        assert stats.runtime == "arcp-trio"
    assert client.statistics().state == "closed"


async def test_restart_on_session_lost_resubscribes_from_the_next_event(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    config = RuntimeConfig(resume_window_sec=5, heartbeat_interval_sec=1000)
    async with open_runtime(
        agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
    ) as runtime:
        link = Link(runtime, nursery)
        async with client_for(
            link, backoff=Backoff(initial=1, factor=1, cap=1), restart_on_session_lost=True
        ) as client:
            first_session = client.session_id
            long = await client.submit("slow", input={"seconds": 60})
            handle = await client.submit("ticker", input={"count": 12, "interval": 1})
            events: list[Event] = []
            async for event in handle.events():
                events.append(event)
                if len(events) == 3:
                    link.refuse = 7  # away for longer than the 5 s resume window
                    link.drop()
            # Exactly once, in order, across two sessions.
            assert currents(events) == list(range(1, 13))
            assert (await handle.result()).result == {"ticks": 12}
            assert client.session_id != first_session
            assert client.statistics().reconnects == 0
            assert client.sessions_restarted == 1
            # The re-subscribed handle observes; it carries no cancel authority (§7.7).
            with pytest.raises(PermissionDenied):
                await long.cancel()
            assert (await long.result()).result == {"slept": 60}
