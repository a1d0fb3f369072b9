"""An outbound frame queue with a coalescing writer and back-pressure.

Both ends of ARCP use one: the runtime's ``Connection`` and the client's connection
attempt. Producers call ``enqueue`` synchronously (so the order in which frames are
produced is the order they are written); one writer task (``run``) takes everything
queued and hands it to ``Transport.send_messages`` in one call, so a burst of events
costs a few large writes rather than one write per frame.

Back-pressure: ``congested`` is true while more than ``high_water`` frames wait;
``wait_writable`` blocks until the writer has drained below half of that, or the
outbox is closed (a closed outbox never blocks anyone).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .base import Transport

__all__ = ["Outbox"]


class Outbox:
    """Frames waiting to be written to one transport."""

    def __init__(self, *, high_water: int = 1024, max_batch: int = 1024) -> None:
        self.frames: deque[str] = deque()
        self._high_water = high_water
        self._low_water = max(1, high_water // 2)
        self._max_batch = max_batch
        self._wakeup = trio.Event()
        self._writable = trio.Event()
        self._writable.set()
        self._flush_then_stop = False
        self.closed = False
        self.frames_written = 0

    def enqueue(self, frame: str) -> None:
        """Queue a frame (dropped once the outbox is closed: its transport is gone)."""
        if self.closed:
            return
        self.frames.append(frame)
        self._wakeup.set()
        if len(self.frames) >= self._high_water and self._writable.is_set():
            self._writable = trio.Event()

    @property
    def congested(self) -> bool:
        return not self.closed and len(self.frames) >= self._high_water

    async def wait_writable(self) -> None:
        """Wait while the outbox is congested; returns at once when it is closed.

        Cancellation: safe; nothing is lost.
        """
        while self.congested:
            await self._writable.wait()

    def stop_after_flush(self) -> None:
        """Make ``run`` return once everything queued so far is written."""
        self._flush_then_stop = True
        self._wakeup.set()

    def close(self) -> None:
        """Stop accepting frames and release every waiter."""
        self.closed = True
        self._writable.set()
        self._wakeup.set()

    async def run(self, transport: Transport) -> None:
        """The writer: drain the queue into ``transport`` until stopped or closed.

        Raises:
            TransportError: from the transport; the caller ends the connection.
        """
        frames = self.frames
        while True:
            if not frames:
                if self._flush_then_stop or self.closed:
                    return
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            if len(frames) <= self._max_batch:
                batch = list(frames)
                frames.clear()
            else:
                batch = [frames.popleft() for _ in range(self._max_batch)]
            await transport.send_messages(batch)
            self.frames_written += len(batch)
            if len(frames) < self._low_water:
                self._writable.set()
