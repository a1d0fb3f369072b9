"""An outbound frame queue with a coalescing writer and back-pressure.

Both ends of ARCP use one: the runtime's ``Connection`` and the client's connection
attempt. Producers call ``enqueue`` synchronously (so the order in which frames are
produced is the order they are written); a writer takes everything queued and hands
it to ``Transport.send_messages`` in one call, so a burst of events costs a few
large writes rather than one write per frame.

Two ways to run the writer:

* ``run``: one long-lived task that sleeps while the queue is empty (the client).
* ``drain``: writes until the queue is empty and returns; the runtime's connection
  starts a task running it only when frames are queued and none is running, so an
  idle connection keeps no writer task at all.

Back-pressure: ``congested`` is true while more than ``high_water`` frames wait;
``wait_writable`` blocks until the writer has drained below half of that, or the
outbox is closed (a closed outbox never blocks anyone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .base import Transport

__all__ = ["Outbox"]


class Outbox:
    """Frames waiting to be written to one transport."""

    __slots__ = (
        "_flush_then_stop",
        "_high_water",
        "_low_water",
        "_max_batch",
        "_wakeup",
        "_writable",
        "closed",
        "congestion_episodes",
        "frames",
        "frames_written",
    )

    def __init__(self, *, high_water: int = 1024, max_batch: int = 1024) -> None:
        # A list, not a deque: an idle connection's empty list costs 56 bytes, an
        # empty deque over 600; batches are taken whole, so pops from the left are rare.
        self.frames: list[str] = []
        self._high_water = high_water
        self._low_water = max(1, high_water // 2)
        self._max_batch = max_batch
        #: Created when ``run`` first sleeps, or a producer first waits (lazily: an
        #: idle connection needs neither).
        self._wakeup: trio.Event | None = None
        self._writable: trio.Event | None = None
        self._flush_then_stop = False
        self.closed = False
        self.frames_written = 0
        #: Congested episodes a producer waited through (each counted once: the first
        #: waiter of an episode makes its event; ``_release_writers`` ends it).
        self.congestion_episodes = 0

    def enqueue(self, frame: str) -> None:
        """Queue a frame (dropped once the outbox is closed: its transport is gone)."""
        if self.closed:
            return
        self.frames.append(frame)
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def congested(self) -> bool:
        return not self.closed and len(self.frames) >= self._high_water

    async def wait_writable(self) -> None:
        """Wait while the outbox is congested; returns at once when it is closed.

        Cancellation: safe; nothing is lost.
        """
        while self.congested:
            if self._writable is None:
                self._writable = trio.Event()
                self.congestion_episodes += 1
            await self._writable.wait()

    @property
    def stopping(self) -> bool:
        """``stop_after_flush`` or ``close`` was called."""
        return self._flush_then_stop or self.closed

    def stop_after_flush(self) -> None:
        """Make the writer return once everything queued so far is written."""
        self._flush_then_stop = True
        if self._wakeup is not None:
            self._wakeup.set()

    def close(self) -> None:
        """Stop accepting frames and release every waiter."""
        self.closed = True
        self._release_writers()
        if self._wakeup is not None:
            self._wakeup.set()

    def _release_writers(self) -> None:
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    async def drain(self, transport: Transport) -> None:
        """Write until the queue is empty (or the outbox closes), then return.

        Raises:
            TransportError: from the transport; the caller ends the connection.
        """
        while self.frames and not self.closed:
            frames = self.frames
            if len(frames) <= self._max_batch:
                batch = frames
                self.frames = []
            else:
                batch = frames[: self._max_batch]
                del frames[: self._max_batch]
            await transport.send_messages(batch)
            self.frames_written += len(batch)
            if len(self.frames) < self._low_water:
                self._release_writers()

    async def run(self, transport: Transport) -> None:
        """A long-lived writer: drain the queue whenever it fills, until stopped.

        Raises:
            TransportError: from the transport; the caller ends the connection.
        """
        while True:
            if self.frames and not self.closed:
                await self.drain(transport)
                continue
            if self.stopping:
                return
            self._wakeup = trio.Event()
            await self._wakeup.wait()
