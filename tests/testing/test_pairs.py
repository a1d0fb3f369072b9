"""Runtime/client pairs, raw peers and the MockClock portal.

Rules: in-memory transports; MockClock (autojump, or the portal's) for anything timed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.testing import (
    MockClockPortal,
    RawPeer,
    SequenceViolation,
    open_runtime_pair,
    open_test_runtime,
    run_on_mock_clock,
)
from arcp_trio.transport.memory import memory_transport_pair

if TYPE_CHECKING:
    from arcp_trio.runtime.runtime import Runtime


async def test_a_runtime_pair_runs_a_job(arcp_clock: trio.abc.Clock) -> None:
    async with open_runtime_pair() as pair:
        handle = await pair.client.submit("ticker@1.0.0", {"count": 3, "interval": 1})
        assert (await handle.result()).result == {"ticks": 3}
        assert trio.current_time() == 3
        peer = await pair.peer("tok-bob")
        listing = await peer.request("session.list_jobs", {})
        assert listing["payload"]["jobs"] == []  # alice's job is invisible to bob


def test_every_mock_clock_run_starts_at_zero() -> None:
    async def sleep_and_tell() -> float:
        await trio.sleep(5)
        return trio.current_time()

    assert run_on_mock_clock(sleep_and_tell) == 5
    assert run_on_mock_clock(sleep_and_tell) == 5


async def test_a_raw_peer_reports_gaps_and_duplicates(arcp_clock: trio.abc.Clock) -> None:
    mine, theirs = memory_transport_pair()
    peer = RawPeer(mine)

    def frame(seq: int) -> str:
        return (
            '{"arcp":"1.1","id":"01J00000000000000000000000","type":"job.event",'
            f'"job_id":"job_1","event_seq":{seq},"payload":{{"kind":"log","body":{{}}}}}}'
        )

    await theirs.send_messages([frame(1), frame(2), frame(4)])
    assert (await peer.recv())["event_seq"] == 1
    assert (await peer.recv())["event_seq"] == 2
    with pytest.raises(SequenceViolation, match="a gap"):
        await peer.recv()
    await theirs.send_message(frame(2))
    with pytest.raises(SequenceViolation, match="a duplicate"):
        await peer.recv()


async def test_a_raw_peer_answers_pings(arcp_runtime: Runtime, arcp_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        mine, theirs = memory_transport_pair()
        nursery.start_soon(arcp_runtime.handle_transport, theirs)
        peer = RawPeer(mine)
        assert (await peer.hello("tok-alice"))["type"] == "session.welcome"
        # While someone reads (here: a recv() that only ever sees pings), the pongs
        # keep the session attached through three intervals of silence.
        nursery.start_soon(peer.recv)
        await trio.sleep(3 * arcp_runtime.config.heartbeat_interval_sec)
        session = arcp_runtime.session(peer.session_id or "")
        assert session is not None
        assert session.connection is not None
        nursery.cancel_scope.cancel()


def test_the_portal_freezes_time_between_calls() -> None:
    portal = MockClockPortal()
    try:
        runtime = portal.enter(open_test_runtime())
        assert portal.now == 0
        portal.call(trio.sleep, 10)
        assert portal.now == 10
        assert portal.clock.autojump_threshold == math.inf
        assert portal.call(lambda: trio.to_thread.run_sync(lambda: 1)) == 1
        assert runtime.statistics().sessions == 0
        with pytest.raises(ZeroDivisionError):
            portal.call(_divide_by_zero)
        portal.call(trio.sleep, 1)  # still usable after a failing call
    finally:
        portal.close()


async def _divide_by_zero() -> None:
    await trio.lowlevel.checkpoint()
    _ = 1 / 0


def test_the_portal_reports_a_crashed_run() -> None:
    portal = MockClockPortal()

    async def crash() -> None:
        await trio.sleep(1)
        raise KeyError("a bug in a background task")

    portal.start_soon(crash)
    with pytest.raises(RuntimeError, match="crashed"):
        portal.call(trio.sleep, 5)
    with pytest.raises(RuntimeError):
        portal.close()


def test_a_busy_loop_is_reported_in_real_time() -> None:
    portal = MockClockPortal(real_timeout=0.5)

    async def spin() -> None:
        while True:
            await trio.lowlevel.checkpoint()

    try:
        with pytest.raises(TimeoutError, match="busy-looping"):
            portal.call(spin)
    finally:
        portal.close()
