"""In-process connections from a client to a runtime, with faults tests can inject.

The transports are the real in-memory pair; ``FlakyTransport`` only adds the faults
(a drop, a half-open stall, a heartbeat send that fails) on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from arcp_trio.client import open_client
from arcp_trio.transport.base import Transport, TransportBroken
from arcp_trio.transport.memory import memory_transport_pair
from tests.helpers import trio_wall_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from arcp_trio.client.handles import Event
    from arcp_trio.runtime.runtime import Runtime


class FlakyTransport:
    """The real in-memory transport, with faults a test can switch on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.description = "flaky"
        self.stalled = False
        self.fail_pings = False
        self.ping_error: Exception = TransportBroken("connection dropped under a heartbeat send")

    async def send_message(self, message: str) -> None:
        await self.send_messages([message])

    async def send_messages(self, messages: Sequence[str]) -> None:
        if self.fail_pings and any('"session.ping"' in m for m in messages):
            # The seed bug: a heartbeat send racing a dropped connection.
            self.inner.abort()
            raise self.ping_error

        if self.stalled:
            return  # a black hole: nothing arrives, nothing errors
        await self.inner.send_messages(messages)

    async def receive_message(self) -> str:
        if self.stalled:
            await trio.sleep_forever()
        return str(await self.inner.receive_message())

    async def aclose(self) -> None:
        await self.inner.aclose()


class Link:
    """Connects clients to a runtime; remembers each attempt's transport."""

    def __init__(self, runtime: Runtime, nursery: trio.Nursery) -> None:
        self.runtime = runtime
        self.nursery = nursery
        self.transports: list[FlakyTransport] = []
        self.refuse = 0

    async def connect(self) -> Transport:
        await trio.lowlevel.checkpoint()
        if self.refuse:
            self.refuse -= 1
            raise TransportBroken("connection refused")
        client_side, runtime_side = memory_transport_pair()
        self.nursery.start_soon(self.runtime.handle_transport, runtime_side)
        flaky = FlakyTransport(client_side)
        self.transports.append(flaky)
        return flaky

    @property
    def current(self) -> FlakyTransport:
        return self.transports[-1]

    def drop(self) -> None:
        self.current.inner.abort()


def no_jitter(delay: float) -> float:
    return delay


def client_for(link: Link, **options: Any) -> Any:
    options.setdefault("jitter", no_jitter)
    options.setdefault("wall_clock", trio_wall_clock)
    return open_client(token=options.pop("token", "tok-alice"), connect=link.connect, **options)


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


def currents(events: list[Event]) -> list[int]:
    return [e.body["current"] for e in events if e.kind == "progress"]
