"""Regression for shared/context/seed-heartbeat-reconnect-pr.txt.

An asyncio client's reconnect loop died for good when a heartbeat send raced a
dropped connection: the heartbeat task's error escaped the loop meant to survive
it. Here the client's own heartbeat ping is what hits the broken connection, and
the supervisor must reconnect, resume, and deliver the job's remaining events.

Rules: a real runtime in-process, in-memory transports with an injected fault,
MockClock (autojump).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.links import Link, client_for, currents

if TYPE_CHECKING:
    import trio

    from arcp_trio.client.handles import Event


@pytest.mark.parametrize(
    "error",
    [
        pytest.param("transport", id="send-races-the-drop"),
        pytest.param("bug", id="heartbeat-task-raises-anything"),
    ],
)
async def test_heartbeat_send_error_does_not_stop_the_supervisor(
    link: Link, autojump_clock: trio.abc.Clock, error: str
) -> None:
    async with client_for(link) as client:
        # Ticks 15 s apart: the client is idle longer than the 10 s heartbeat
        # interval, so its heartbeat task sends a ping between events.
        handle = await client.submit("ticker", input={"count": 4, "interval": 15})
        events: list[Event] = []
        async for event in handle.events():
            events.append(event)
            if len(events) == 1:
                link.current.fail_pings = True
                if error == "bug":
                    link.current.ping_error = RuntimeError("a bug in the heartbeat path")
        assert currents(events) == [1, 2, 3, 4]
        assert [e.event_seq for e in events] == [1, 2, 3, 4]
        assert (await handle.result()).result == {"ticks": 4}
        # The ping really failed, and the supervisor really reconnected.
        assert client.statistics().reconnects >= 1
        assert client.statistics().state == "connected"
