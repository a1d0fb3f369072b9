"""In-memory transport pair: abort, back-pressure and partial-batch cancellation.

All tests run on the autojump clock; nothing here touches the network.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from arcp_trio.transport.base import (
    IdleTransport,
    MessageTooLarge,
    TransportBroken,
    TransportClosed,
)
from arcp_trio.transport.memory import memory_transport_pair

GUARD = 10


async def test_abort_breaks_both_sides_at_once() -> None:
    with trio.fail_after(GUARD):
        a, b = memory_transport_pair()
        await a.send_message("lost in the drop")
        outcomes: list[str] = []

        async def receive(side: str) -> None:
            transport = a if side == "a" else b
            try:
                await transport.receive_message()
            except TransportBroken:
                outcomes.append(side)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, "a")
            await trio.testing.wait_all_tasks_blocked()
            b.abort()
            nursery.start_soon(receive, "b")
        assert sorted(outcomes) == ["a", "b"]
        for transport in (a, b):
            with pytest.raises(TransportBroken, match="aborted"):
                await transport.send_message("x")
        await a.aclose()
        with pytest.raises(TransportClosed):
            await a.receive_message()
        await b.aclose()


async def test_descriptions_differ() -> None:
    a, b = memory_transport_pair()
    assert a.description != b.description
    assert a.description.startswith("memory")
    await a.aclose()
    await b.aclose()


async def test_bounded_buffer_applies_back_pressure(autojump_clock: object) -> None:
    with trio.fail_after(GUARD):
        a, b = memory_transport_pair(buffer=1)
        await a.send_message("fits")
        with trio.move_on_after(5) as scope:
            await a.send_message("blocks")
        assert scope.cancelled_caught
        assert trio.current_time() == 5
        # Cancelled before anything of that send went out: still usable.
        assert await b.receive_message() == "fits"
        await a.send_message("now fits")
        assert await b.receive_message() == "now fits"
        await a.aclose()
        await b.aclose()


async def test_batch_cancelled_part_way_breaks_the_pair(autojump_clock: object) -> None:
    with trio.fail_after(GUARD):
        a, b = memory_transport_pair(buffer=1)
        with trio.move_on_after(5):
            await a.send_messages(["one", "two", "three"])
        with pytest.raises(TransportBroken, match="interrupted"):
            await a.send_message("x")
        with pytest.raises(TransportBroken):
            await b.receive_message()
        await a.aclose()
        await b.aclose()


async def test_own_close_wins_over_abort() -> None:
    with trio.fail_after(GUARD):
        a, b = memory_transport_pair()
        a.abort()
        await a.aclose()
        with pytest.raises(TransportClosed):
            await a.send_message("x")
        with pytest.raises(TransportBroken):
            await b.receive_message()
        await b.aclose()


async def test_send_nowait_delivers_in_order_or_refuses() -> None:
    """``IdleTransport.send_nowait``: taken at once while there is room, refused
    (nothing sent) after."""
    with trio.fail_after(GUARD):
        a, b = memory_transport_pair(buffer=2)
        assert isinstance(a, IdleTransport)
        assert a.send_nowait("one")
        await a.send_message("two")
        assert not a.send_nowait("three")  # the buffer is full: nothing was taken
        assert not a.write_pending
        assert [await b.receive_message(), await b.receive_message()] == ["one", "two"]
        assert a.send_nowait("three")
        assert await b.receive_message() == "three"
        await a.aclose()
        assert not a.send_nowait("after close")


async def test_receive_nowait_takes_queued_messages_in_order_and_never_waits() -> None:
    """``IdleTransport.receive_nowait``: what ``receive_message`` would return next,
    or None (nothing queued; an oversized message, which ``receive_message`` then
    refuses, in order). The pair does not report readiness: ``receive_ready`` is
    always True, so its owner keeps a task in ``receive_message``."""
    with trio.fail_after(GUARD):
        a, b = memory_transport_pair(max_message_size=10)
        assert b.receive_ready()
        assert b.receive_nowait() is None  # nothing queued
        await a.send_messages(["one", "two", "x" * 11, "three"])
        assert [b.receive_nowait(), b.receive_nowait()] == ["one", "two"]
        assert b.receive_nowait() is None  # too large: left to receive_message
        assert b.receive_nowait() is None  # and nothing overtakes it
        with pytest.raises(MessageTooLarge):
            await b.receive_message()
        assert b.receive_nowait() == "three"
        await a.aclose()
        assert b.receive_nowait() is None  # the end is for receive_message to report
        with pytest.raises(TransportBroken):
            await b.receive_message()
        await b.aclose()
        assert b.receive_nowait() is None
