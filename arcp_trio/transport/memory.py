"""An in-process transport pair over Trio memory channels, for tests and embedding.

Each side owns the send end of one channel and the receive end of the other. Closing a
side closes both of its ends, so the peer sees ``TransportBroken`` once it has drained
what was already sent (like a TCP FIN), while the closing side sees
``TransportClosed``. :meth:`MemoryTransport.abort` models a network drop instead: both
sides see ``TransportBroken`` at once and undelivered messages are lost.

Each side is an ``IdleTransport`` that writes through (``send_nowait``) and takes
queued messages without waiting (``receive_nowait``), but does not report readiness:
``receive_ready`` is always True, so its owner keeps a task in ``receive_message``.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import trio

from arcp_trio.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    REFUSED_PREFIX,
    MessageTooLarge,
    TransportBroken,
    TransportError,
    TransportState,
    utf8_size,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["MemoryTransport", "memory_transport_pair"]

_pair_ids = itertools.count(1)


class _Link:
    """State both sides of one pair share."""

    def __init__(self) -> None:
        self.aborted = False
        self.sides: list[MemoryTransport] = []


class MemoryTransport(TransportState):
    _ended = "peer closed the transport"

    """One side of :func:`memory_transport_pair`. Built only by that function."""

    def __init__(
        self,
        *,
        send_channel: trio.MemorySendChannel[str],
        receive_channel: trio.MemoryReceiveChannel[str],
        link: _Link,
        max_message_size: int,
        description: str,
    ) -> None:
        self._send_channel = send_channel
        self._receive_channel = receive_channel
        self._link = link
        self._max_message_size = max_message_size
        super().__init__(description)
        self._send_lock = trio.StrictFIFOLock()
        self._receiving = False
        #: A message taken off the channel by ``receive_nowait`` that is over the
        #: limit: ``receive_message`` refuses it next.
        self._oversized: str | None = None

    def _unusable_error(self) -> TransportError:
        if not self._closed and self._broken is None and self._link.aborted:
            return TransportBroken(f"{self._description}: connection aborted")
        return super()._unusable_error()

    def _check_usable(self) -> None:
        if self._link.aborted:
            raise self._unusable_error()
        super()._check_usable()

    async def send_message(self, message: str) -> None:
        """Send one message (see :meth:`send_messages`)."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Send ``messages`` in order, never interleaved with another task's batch.

        Blocks only when the pair was built with a finite ``buffer`` that is full.

        Cancellation: a batch cancelled after part of it was delivered breaks the pair
        (as :meth:`abort` does), the way a torn write breaks a real connection.
        """
        self._check_usable()
        async with self._send_lock:
            self._check_usable()
            sent = 0
            try:
                for message in messages:
                    try:
                        self._send_channel.send_nowait(message)
                    except trio.WouldBlock:
                        await self._send_channel.send(message)
                    sent += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if self._broken is None and not self._closed and not self._link.aborted:
                    self._broken = f"{self._description}: peer closed the transport"
                raise self._unusable_error() from exc
            except BaseException:
                if 0 < sent < len(messages):
                    self._broken = f"{self._description}: a send was interrupted part-way"
                    self.abort()
                raise

    def send_nowait(self, message: str) -> bool:
        """Deliver ``message`` now if the buffer has room (``IdleTransport``)."""
        if self._send_lock.locked() or self._link.aborted or self._closed or self._broken:
            return False
        try:
            self._send_channel.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    @property
    def write_pending(self) -> bool:
        return False

    async def receive_message(self) -> str:
        """Return the next message.

        Raises:
            MessageTooLarge: the message was over the limit and was dropped.
            TransportClosed: we closed the transport.
            TransportBroken: the peer closed it (after everything it sent was
                received) or the pair was aborted.
            RuntimeError: another task is already in ``receive_message``.

        Cancellation: safe; no message is lost.
        """
        self._check_usable()
        if self._receiving:
            raise RuntimeError("another task is already receiving on this transport")
        self._receiving = True
        try:
            if self._oversized is not None:
                await trio.lowlevel.checkpoint()  # (cancelled here, nothing is lost)
                message, self._oversized = self._oversized, None
                return self._checked(message)
            try:
                message = await self._receive_channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
                raise self._unusable_error() from exc
            if self._link.aborted:
                raise self._unusable_error()
        finally:
            self._receiving = False
        return self._checked(message)

    def _checked(self, message: str) -> str:
        size = utf8_size(message)
        if size > self._max_message_size:
            raise MessageTooLarge(size, self._max_message_size, prefix=message[:REFUSED_PREFIX])
        return message

    def receive_nowait(self) -> str | None:
        """``IdleTransport``: the next message if one is queued and within the limit."""
        if (
            self._receiving
            or self._oversized is not None
            or self._closed
            or self._broken is not None
            or self._link.aborted
        ):
            return None
        try:
            message = self._receive_channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None
        if utf8_size(message) > self._max_message_size:
            self._oversized = message  # refused by the next ``receive_message``
            return None
        return message

    def receive_ready(self) -> bool:
        """``IdleTransport``: always True (this transport does not tell)."""
        return True

    def set_receive_waker(self, waker: Callable[[], object] | None) -> None:
        """``IdleTransport``: nothing to do (``receive_ready`` is always True)."""

    def defer_receive(self, start: float, window: float) -> None:
        """``IdleTransport``: nothing to do (input is noticed at once)."""

    async def aclose(self) -> None:
        """Close this side; the peer sees ``TransportBroken`` after draining."""
        self._closed = True
        self._send_channel.close()
        self._receive_channel.close()
        await trio.lowlevel.checkpoint()

    def abort(self) -> None:
        """Simulate a network drop: both sides see ``TransportBroken`` immediately."""
        self._link.aborted = True
        for side in self._link.sides:
            side._send_channel.close()
            side._receive_channel.close()


def memory_transport_pair(
    *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, buffer: float = math.inf
) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-memory transports.

    Args:
        max_message_size: inbound limit in UTF-8 bytes, applied by each receiver.
        buffer: messages each direction holds before ``send_messages`` blocks.
            Unbounded by default, like a fast network; pass a number (``0`` for a
            rendezvous) to exercise back-pressure.
    """
    pair_id = next(_pair_ids)
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[str](buffer)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[str](buffer)
    link = _Link()
    a = MemoryTransport(
        send_channel=a_to_b_send,
        receive_channel=b_to_a_receive,
        link=link,
        max_message_size=max_message_size,
        description=f"memory #{pair_id}/a",
    )
    b = MemoryTransport(
        send_channel=b_to_a_send,
        receive_channel=a_to_b_receive,
        link=link,
        max_message_size=max_message_size,
        description=f"memory #{pair_id}/b",
    )
    link.sides.extend((a, b))
    return a, b
