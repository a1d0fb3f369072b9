"""The chaos transport and the memory link: each fault does what it says, seeded.

Rules: in-memory transports, MockClock, every wait bounded.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.testing import ChaosPlan, ChaosTransport, MemoryLink, open_test_client
from arcp_trio.transport.base import TransportBroken, TransportClosed
from arcp_trio.transport.memory import MemoryTransport, memory_transport_pair

if TYPE_CHECKING:
    from arcp_trio.runtime.runtime import Runtime


def chaos_pair(plan: ChaosPlan, seed: int = 0) -> tuple[ChaosTransport, MemoryTransport]:
    a, b = memory_transport_pair()
    return ChaosTransport(a, plan=plan, rng=random.Random(seed), record=True), b


async def test_calm_is_transparent(arcp_clock: trio.abc.Clock) -> None:
    chaos, peer = chaos_pair(ChaosPlan.calm())
    await chaos.send_messages(["a", "b"])
    assert [await peer.receive_message() for _ in range(2)] == ["a", "b"]
    await peer.send_message("c")
    assert await chaos.receive_message() == "c"
    assert chaos.sent == ["a", "b"]
    assert chaos.received == ["c"]
    assert chaos.faults == {}
    await chaos.aclose()
    with pytest.raises(TransportClosed):
        await chaos.send_message("d")


async def test_a_drop_breaks_both_sides(arcp_clock: trio.abc.Clock) -> None:
    chaos, peer = chaos_pair(ChaosPlan(drop=1.0))
    with pytest.raises(TransportBroken):
        await chaos.send_message("lost")
    with pytest.raises(TransportBroken):
        await peer.receive_message()
    assert chaos.faults == {"drop": 1}


async def test_a_stall_is_a_black_hole(arcp_clock: trio.abc.Clock) -> None:
    chaos, peer = chaos_pair(ChaosPlan.calm())
    chaos.stall()
    await chaos.send_message("vanishes")
    with trio.move_on_after(100) as waited:
        await chaos.receive_message()
    assert waited.cancelled_caught
    with trio.move_on_after(100) as waited:
        await peer.receive_message()
    assert waited.cancelled_caught
    await chaos.aclose()  # not even the close crosses a black hole
    with trio.move_on_after(100) as waited:
        await peer.receive_message()
    assert waited.cancelled_caught


async def test_a_torn_send_delivers_a_prefix_then_ends(arcp_clock: trio.abc.Clock) -> None:
    chaos, peer = chaos_pair(ChaosPlan(half_write=1.0), seed=3)
    frames = ['{"n":1}', '{"n":2}', '{"n":3}']
    with pytest.raises(TransportBroken):
        await chaos.send_messages(frames)
    got = []
    while True:
        try:
            got.append(await peer.receive_message())
        except TransportBroken:
            break
    assert got == chaos.sent
    whole, torn = got[:-1], got[-1:]
    assert whole == frames[: len(whole)]
    for piece in torn:
        assert frames[len(whole)].startswith(piece)
        assert piece != frames[len(whole)]


async def test_a_torn_receive_returns_a_prefix_then_the_connection_is_dead(
    arcp_clock: trio.abc.Clock,
) -> None:
    chaos, peer = chaos_pair(ChaosPlan(half_write=1.0))
    await peer.send_message('{"a":"long enough"}')
    piece = await chaos.receive_message()
    assert '{"a":"long enough"}'.startswith(piece)
    assert len(piece) < len('{"a":"long enough"}')
    with pytest.raises(TransportBroken):
        await chaos.receive_message()


async def test_delays_take_virtual_time(arcp_clock: trio.abc.Clock) -> None:
    chaos, peer = chaos_pair(ChaosPlan(delay=1.0, max_delay=5.0))
    start = trio.current_time()
    await chaos.send_message("x")
    assert 0 <= trio.current_time() - start <= 5
    assert await peer.receive_message() == "x"
    assert chaos.faults["delay"] == 1


async def test_a_paused_reader_reads_nothing_until_resumed(arcp_clock: trio.abc.Clock) -> None:
    chaos, peer = chaos_pair(ChaosPlan.calm())
    chaos.pause_reading()
    await peer.send_message("later")
    with trio.move_on_after(10) as waited:
        await chaos.receive_message()
    assert waited.cancelled_caught
    chaos.resume_reading()
    assert await chaos.receive_message() == "later"


async def test_the_handshake_can_be_spared(arcp_clock: trio.abc.Clock) -> None:
    chaos, peer = chaos_pair(ChaosPlan(drop=1.0, spare_handshake=True))
    await chaos.send_message("hello")
    assert await peer.receive_message() == "hello"
    await peer.send_message("welcome")
    assert await chaos.receive_message() == "welcome"
    with pytest.raises(TransportBroken):
        await chaos.send_message("then it drops")


def test_plans_are_validated() -> None:
    with pytest.raises(ValueError, match="probability"):
        ChaosPlan(drop=1.5)
    assert ChaosPlan.rough().drop > 0


async def scripted(seed: int) -> dict[str, int]:
    chaos, _ = chaos_pair(ChaosPlan(delay=0.5, drop=0.05, half_write=0.05), seed=seed)
    for n in range(200):
        try:
            await chaos.send_message(f'{{"n":{n}}}')
        except TransportBroken:
            break
    return chaos.faults


def test_the_same_seed_makes_the_same_faults() -> None:
    from arcp_trio.testing import run_on_mock_clock

    assert run_on_mock_clock(scripted, 7) == run_on_mock_clock(scripted, 7)
    assert any(run_on_mock_clock(scripted, s) != run_on_mock_clock(scripted, 7) for s in range(5))


# -- the link -----------------------------------------------------------------------------------


async def test_a_link_refuses_while_down(
    arcp_runtime: Runtime, nursery: trio.Nursery, arcp_clock: trio.abc.Clock
) -> None:
    link = MemoryLink(arcp_runtime, nursery)
    link.up = False
    with pytest.raises(TransportBroken):
        await link.connect()
    link.up = True
    link.refuse = 1
    with pytest.raises(TransportBroken):
        await link.connect()
    await link.connect()
    assert (link.refused, link.connects) == (2, 1)


async def test_a_stalled_client_resumes_after_two_heartbeats(
    arcp_runtime: Runtime, nursery: trio.Nursery, arcp_clock: trio.abc.Clock
) -> None:
    link = MemoryLink(arcp_runtime, nursery, record=True)
    async with open_test_client(link) as client:
        handle = await client.submit("ticker@1.0.0", {"count": 40, "interval": 1})
        await trio.sleep(3)
        link.stall()
        events = [e.body["current"] async for e in handle.events() if e.kind == "progress"]
        assert events == list(range(1, 41))
        assert client.reconnects == 1
        assert link.current.faults == {}
        assert link.transports[0].faults == {"stall": 1}


async def test_a_duplicate_handshake_never_takes_the_session(
    arcp_runtime: Runtime, nursery: trio.Nursery, arcp_clock: trio.abc.Clock
) -> None:
    link = MemoryLink(arcp_runtime, nursery, plan=ChaosPlan(duplicate_connect=1.0))
    async with open_test_client(link) as client:
        handle = await client.submit("echo", {"x": 1})
        assert (await handle.result()).result["echo"] == {"x": 1}
        await trio.sleep(1)
        # The first hello was fresh: its copy opened a session of its own.
        assert [r["type"] for r in link.duplicate_replies] == ["session.welcome"]
        assert link.duplicate_replies[0]["session_id"] != client.session_id
        session = arcp_runtime.session(client.session_id or "")
        assert session is not None
        assert session.connection is not None
