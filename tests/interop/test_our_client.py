"""Our client (``arcp_trio.client``) against real runtimes in their own processes.

Part 1 talks to the REFERENCE runtime (``ref_server.py``, agentruntimecontrolprotocol
1.1.3): the client runs in the pytest process, the runtime in a subprocess, over a real
WebSocket on 127.0.0.1. The reference runtime does not know our spec-shapes feature, so
the client is in its lenient (reference) mode: cancel/timeout as ``job.result``,
uncorrelated ``session.error``, subscription events numbered from their own counter.

Part 2 talks to OUR runtime (``python -m arcp_trio serve``) through ``tcp_proxy.py``, which
the test uses to cut (RST) or stall the connection mid-stream: the client must reconnect by
itself, resume, and deliver every event exactly once with a gap-free ``event_seq``.

Real clock throughout: every test body runs under ``trio.fail_after``.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import trio

from arcp_trio.client import Backoff, ResumeTicket, open_client
from arcp_trio.protocol.session import SPEC_SHAPES_FEATURE
from arcp_trio.wire.errors import (
    AgentNotAvailable,
    AgentVersionNotAvailable,
    BudgetExhausted,
    Cancelled,
    PermissionDenied,
    Timeout,
)
from tests.interop.tcp_proxy import TcpProxy, open_tcp_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from arcp_trio.client.client import Client
    from arcp_trio.client.handles import Event
    from tests.interop.conftest import RuntimeProcess

pytestmark = pytest.mark.interop

#: Per-test guard (real clock). Every test is expected to take well under this.
LIMIT = 8.0
FAST = Backoff(initial=0.05, factor=2.0, cap=0.5)
REFERENCE_FEATURES = {"heartbeat", "ack", "list_jobs", "subscribe", "cost.budget", "progress"}


def identity(delay: float) -> float:
    return delay


@asynccontextmanager
async def connect(url: str, token: str = "tok-alice", **options: Any) -> AsyncIterator[Client]:
    options.setdefault("backoff", FAST)
    options.setdefault("jitter", identity)
    options.setdefault("handshake_timeout", 3.0)
    async with open_client(url, token=token, **options) as client:
        yield client


def currents(events: list[Event]) -> list[int]:
    return [e.body["current"] for e in events if e.kind == "progress"]


def seqs(events: list[Event]) -> list[int]:
    return [e.event_seq for e in events]


def consecutive(values: list[int]) -> bool:
    return values == list(range(values[0], values[0] + len(values))) if values else True


def _watch(rt: RuntimeProcess, request: pytest.FixtureRequest) -> Iterator[RuntimeProcess]:
    offset = rt.stderr_offset()
    yield rt
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"--- {rt.kind} runtime stderr during this test ---")
        print(rt.stderr_text(offset)[-8000:])
    if rt.proc.poll() is not None:
        pytest.fail(f"runtime exited with {rt.proc.returncode}", pytrace=False)


@pytest.fixture
def ref(reference_runtime: RuntimeProcess, request: pytest.FixtureRequest) -> Iterator[str]:
    """The reference runtime's URL (its stderr is printed when the test fails)."""
    for rt in _watch(reference_runtime, request):
        yield rt.url


@pytest.fixture
def ours(arcp_trio_runtime: RuntimeProcess, request: pytest.FixtureRequest) -> Iterator[str]:
    """Our runtime's URL (its stderr is printed when the test fails)."""
    for rt in _watch(arcp_trio_runtime, request):
        yield rt.url


@asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[TcpProxy]:
    target = urlsplit(url)
    assert target.hostname is not None
    assert target.port is not None
    async with open_tcp_proxy(target.hostname, target.port) as proxy:
        yield proxy


# =========================================================================== part 1: reference


async def test_ref_handshake_negotiates_reference_features(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            assert client.session_id
            assert client.runtime_info == {"name": "arcp-reference-interop", "version": "1.1.3"}
            # It does not know our spec-shapes feature: the client stays in reference mode.
            assert SPEC_SHAPES_FEATURE not in client.features
            assert set(client.features) >= REFERENCE_FEATURES
            stats = client.statistics()
            assert stats.state == "connected"
            assert stats.runtime == "arcp-reference-interop"
            assert stats.reconnects == 0


async def test_ref_close_is_prompt_and_final(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            await (await client.submit("echo", input=1)).result()
            started = trio.current_time()
        # session.bye gets no reply: the runtime closes the socket, which ends the wait;
        # the client must not take that close for a drop and resume.
        assert trio.current_time() - started < 1.0
        stats = client.statistics()
        assert stats.state == "closed"
        assert stats.reconnects == 0
        assert stats.pending_requests == 0


async def test_ref_echo_versions(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            handle = await client.submit("echo", input={"x": [1, "two"]})
            events = [e async for e in handle.events()]
            assert [e.kind for e in events] == ["log"]
            assert events[0].job_id == handle.job_id
            outcome = await handle.result()
            assert outcome.final_status == "success"
            assert outcome.result == {"echo": {"x": [1, "two"]}, "version": "2.0.0"}
            old = await client.submit("echo@1.0.0", input="hi")
            assert (await old.result()).result == {"echo": "hi", "version": "1.0.0"}


async def test_ref_ticker_streams_progress_in_order(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            handle = await client.submit("ticker", input={"count": 6, "interval": 0.02})
            events = [e async for e in handle.events()]
            assert currents(events) == [1, 2, 3, 4, 5, 6]
            assert all(e.body["total"] == 6 and e.body["units"] == "ticks" for e in events)
            assert seqs(events) == [1, 2, 3, 4, 5, 6]
            assert (await handle.result()).result == {"ticks": 6}
            assert client.last_event_seq == 7  # the terminal counts too


async def test_ref_chunker_result_is_assembled(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            handle = await client.submit("chunker", input={"chunks": 4, "size": 8})
            events = [e async for e in handle.events()]
            chunks = [e.body for e in events if e.kind == "result_chunk"]
            assert [c["encoding"] for c in chunks[:4]] == ["utf8", "base64", "utf8", "base64"]
            assert consecutive(seqs(events))
            outcome = await handle.result()
            assert outcome.final_status == "success"
            assert outcome.result == b"aaaaaaaabbbbbbbbccccccccdddddddd"
            assert outcome.result_id == chunks[0]["result_id"]


async def test_ref_cancel_running_job(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            handle = await client.submit("slow", input={"seconds": 30})
            events = handle.events()
            first = await events.__anext__()
            assert first.kind == "status"
            assert first.body["phase"] == "started"
            # The reference sends no job.cancelled: cancel() returns on the terminal.
            with trio.fail_after(3):
                await handle.cancel(reason="test")
            with pytest.raises(Cancelled):
                await handle.result()
            assert [e async for e in events] == []


async def test_ref_max_runtime_is_timeout(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            handle = await client.submit("slow", input={"seconds": 30}, max_runtime_sec=1)
            with pytest.raises(Timeout):
                await handle.result()


async def test_ref_list_jobs_shows_own_jobs(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref, token="tok-carol") as client:
            done = await client.submit("echo", input=1)
            await done.result()
            running = await client.submit("slow", input={"seconds": 30})
            page = await client.list_jobs()
            by_id = {job.job_id: job for job in page.jobs}
            assert by_id[done.job_id].status == "success"
            assert by_id[running.job_id].status in ("pending", "running")
            assert by_id[done.job_id].agent.startswith("echo")
            assert by_id[done.job_id].submitted_at
            page = await client.list_jobs(status=["running"])
            assert running.job_id in {job.job_id for job in page.jobs}
            assert done.job_id not in {job.job_id for job in page.jobs}
            first = await client.list_jobs(limit=1)
            assert len(first.jobs) == 1
            assert first.next_cursor is not None
            second = await client.list_jobs(limit=1, cursor=first.next_cursor)
            assert len(second.jobs) == 1
            assert second.jobs[0].job_id != first.jobs[0].job_id
            await running.cancel()
            with pytest.raises(Cancelled):
                await running.result()


async def test_ref_subscribe_from_second_client(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as submitter, connect(ref) as watcher:
            handle = await submitter.submit("ticker", input={"count": 12, "interval": 0.05})
            own = handle.events()
            seen = [await own.__anext__() for _ in range(3)]
            # The watcher's own job takes event_seq 1 and 2 on its session ...
            mine = await watcher.submit("echo", input="own")
            assert seqs([e async for e in mine.events()]) == [1]
            await mine.result()
            # ... and the reference numbers the subscription from its own counter, from 1
            # again; it sends history first, then job.subscribed, then live events.
            async with watcher.subscribe(handle.job_id, history=True) as sub:
                assert sub.subscribed["job_id"] == handle.job_id
                assert sub.subscribed["replayed"] >= 3
                watched = [e async for e in sub.events()]
                outcome = await sub.result()
            assert outcome.result == {"ticks": 12}
            got = currents(watched)
            assert got == sorted(set(got)), "out of order or duplicated"
            assert got[:3] == [1, 2, 3], "history was not replayed"
            assert got[-1] == 12
            assert all(e.job_id == handle.job_id for e in watched)
            # Colliding seqs 1 and 2 were not taken for duplicates of the echo job's.
            assert seqs(watched)[:2] == [1, 2]
            assert seqs(watched) == sorted(set(seqs(watched)))
            seen += [e async for e in own]
            assert currents(seen) == list(range(1, 13))
            assert (await handle.result()).result == {"ticks": 12}


async def test_ref_unknown_agent_then_client_keeps_working(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            # The reference's session.error has no request_id: matched to the oldest
            # pending request, which is this submit.
            with pytest.raises(AgentNotAvailable):
                await client.submit("nobody")
            with pytest.raises(AgentVersionNotAvailable):
                await client.submit("echo@9.9.9")
            handle = await client.submit("echo", input="still here")
            assert (await handle.result()).result == {"echo": "still here", "version": "2.0.0"}
            assert client.statistics().pending_requests == 0
            assert client.statistics().reconnects == 0


async def test_ref_idempotent_submit_returns_same_job(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            first = await client.submit("echo", input=7, idempotency_key="our-client-idem")
            assert (await first.result()).result == {"echo": 7, "version": "2.0.0"}
            again = await client.submit("echo", input=7, idempotency_key="our-client-idem")
            assert again.job_id == first.job_id


async def test_ref_budget_exhausted(ref: str) -> None:
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            handle = await client.submit(
                "spender",
                input={"steps": 5, "cost": 0.4},
                lease_request={"cost.budget": ["USD:1.00"], "tool.call": ["search"]},
            )
            assert handle.accepted["budget"] == {"USD": "USD:1.00"}
            events = [e async for e in handle.events()]
            costs = [e for e in events if e.kind == "metric" and e.body["name"] == "cost.inference"]
            assert len(costs) == 3
            assert consecutive(seqs(events))
            with pytest.raises(BudgetExhausted):
                await handle.result()
            # Only the job failed; the session goes on.
            echo = await client.submit("echo", input=0)
            assert (await echo.result()).result == {"echo": 0, "version": "2.0.0"}


async def test_ref_resumes_a_ticket_of_a_closed_session(ref: str) -> None:
    """WIRE.md §5: the reference resumes a session closed with ``session.bye`` when the
    hello carries its id, latest token and ``last_event_seq``: what a ticket holds."""
    with trio.fail_after(LIMIT):
        async with connect(ref) as client:
            handle = await client.submit("ticker", input={"count": 3, "interval": 0.01})
            await handle.result()
        ticket = ResumeTicket.from_json(json.dumps(client.resume_ticket().to_json()))
        assert ticket.last_event_seq == 4  # three events and the terminal
        assert ticket.jobs == ()
        for attempt in range(3):
            # WIRE.md §18.2: "no resumable session" until it has noticed the close.
            try:
                async with connect(ref, resume=ticket) as resumed:
                    assert resumed.session_id == ticket.session_id
                    echo = await resumed.submit("echo", input=1)
                    # The session's numbering goes on from the ticket's position.
                    assert seqs([e async for e in echo.events()]) == [5]
                break
            except PermissionDenied:
                if attempt == 2:
                    raise
                await trio.sleep(0.1)


# ======================================================== part 2: our runtime, through a proxy


async def run_ticker_with_faults(
    client: Client, count: int, interval: float, faults: dict[int, Any]
) -> list[Event]:
    """Submit a ticker and iterate its events; after the event whose ``current`` is a key
    of ``faults``, await that fault. Returns every event seen."""
    handle = await client.submit("ticker", input={"count": count, "interval": interval})
    events: list[Event] = []
    async for event in handle.events():
        events.append(event)
        fault = faults.get(event.body.get("current"))
        if fault is not None:
            await fault()
    outcome = await handle.result()
    assert outcome.result == {"ticks": count}
    return events


async def test_cut_twice_mid_stream_resumes_without_gap(ours: str) -> None:
    with trio.fail_after(LIMIT):
        async with proxy_to(ours) as proxy, connect(proxy.url()) as client:
            assert SPEC_SHAPES_FEATURE in client.features
            cut: list[int] = []

            async def cut_now() -> None:
                cut.append(proxy.cut())
                await trio.lowlevel.checkpoint()

            events = await run_ticker_with_faults(client, 20, 0.05, {5: cut_now, 12: cut_now})
            assert cut == [1, 1], "each cut should hit exactly the live connection"
            assert currents(events) == list(range(1, 21))
            assert seqs(events) == list(range(1, 21))
            stats = client.statistics()
            assert stats.reconnects >= 2
            assert stats.state == "connected"
            assert proxy.accepted == 3
            # The session survived: a new job on the same session continues the numbering.
            handle = await client.submit("echo", input="after")
            tail = [e async for e in handle.events()]
            assert seqs(tail) == [22]


@pytest.mark.parametrize("then", ["resume", "cut"])
async def test_heartbeat_detects_stalled_link_and_resumes(
    ours: str, then: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(LIMIT):
        async with proxy_to(ours) as proxy, connect(proxy.url()) as client:
            assert "heartbeat" in client.features
            detected: list[float] = []

            async def stall() -> None:
                paused_at = trio.current_time()
                assert proxy.pause() == 1  # the live link goes half-open
                # The client pings after 1 s of silence and gives up after 2, then
                # resumes on a fresh connection while the old one is still stalled.
                with trio.fail_after(2.45):
                    await proxy.wait_accepted(2)
                    await client.wait_connected()
                assert client.statistics().reconnects == 1
                detected.append(trio.current_time() - paused_at)
                await trio.sleep_until(paused_at + 2.5)
                if then == "resume":
                    proxy.resume()  # the stale link's bytes arrive late: ignored
                else:
                    proxy.cut()

            events = await run_ticker_with_faults(client, 20, 0.05, {5: stall})
            assert 1.5 < detected[0] < 2.45
            assert currents(events) == list(range(1, 21))
            assert seqs(events) == list(range(1, 21))
            assert client.statistics().reconnects == 1
            assert proxy.accepted == 2
            assert any("task=heartbeat" in r.getMessage() for r in caplog.records)


async def test_a_resume_ticket_over_a_real_socket(ours: str) -> None:
    """Export, close, resume from the ticket's JSON: exactly the events after its
    ``last_event_seq``, then cancel with the resumed session's authority (§7.4)."""
    with trio.fail_after(LIMIT):
        async with connect(ours) as client:
            ticker = await client.submit("ticker", input={"count": 12, "interval": 0.05})
            slow = await client.submit("slow", input={"seconds": 30})
            async for event in ticker.events():
                if event.body.get("current") == 3:
                    break
        ticket = ResumeTicket.from_json(json.dumps(client.resume_ticket().to_json()))
        assert ticket.job_ids == {ticker.job_id, slow.job_id}
        await trio.sleep(0.2)  # events go on into the detached session's buffer
        assert ticket.url == ours
        # No url: the ticket's.
        async with open_client(token="tok-alice", resume=ticket, backoff=FAST) as resumed:
            assert resumed.session_id == ticket.session_id
            handle = resumed.job(ticker.job_id)
            events = [e async for e in handle.events()]
            # The slow job is quiet after its start: the gap is the ticker's alone.
            assert seqs(events)[0] == ticket.last_event_seq + 1
            assert consecutive(seqs(events))
            ticks = currents(events)
            assert ticks == list(range(ticks[0], 13))
            assert (await handle.result()).result == {"ticks": 12}
            with trio.fail_after(3):
                await resumed.cancel(slow.job_id, reason="from the ticket")
            with pytest.raises(Cancelled):
                await resumed.job(slow.job_id).result()
