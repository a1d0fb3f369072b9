"""A terrible network on purpose: a seeded chaos wrapper for any ``Transport``.

Theory of operation
-------------------
``ChaosTransport`` wraps one real transport (the in-memory pair in tests, but any
``Transport`` works) and decides, at every ``send_messages`` and
``receive_message``, whether to misbehave. The decisions come from one
``random.Random`` seeded by the caller, so a failing run replays exactly when the
scheduling is deterministic (it is under Trio's MockClock with hypothesis, which
seeds Trio's scheduler).

What can happen, per operation, with the probabilities of a ``ChaosPlan``:

* **drop**: the connection is aborted (both sides see ``TransportBroken`` at once;
  whatever was in flight is lost), like a reset or a dead NAT entry.
* **stall**: the connection turns into a black hole: sends vanish, receives never
  return. Only heartbeats (§6.4) can notice.
* **delay**: the operation waits a random time first (Trio time, so MockClock
  covers it in no real time).
* **half-written frame**: a send writes part of its batch, then a *prefix* of the
  next frame, then the connection ends (a torn write: the peer reads the garbage,
  then end-of-stream). A receive hands back a prefix of the frame, then the
  connection is dead.

``MemoryLink`` (in ``pairs``) adds the connection-level faults: refused connects
and duplicate connection attempts.

Manual switches (``stall()``, ``pause_reading()``, ``drop()``) let a test cause
one fault at one moment, independently of the plan.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import attrs
import trio

from ..transport.base import Transport, TransportBroken, TransportClosed

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["ChaosPlan", "ChaosTransport"]


def _probability(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attr.name} must be a probability in [0, 1], got {value}")


@attrs.frozen(kw_only=True)
class ChaosPlan:
    """How often each fault happens (probabilities per operation, or per connect).

    Attributes:
        drop: abort the connection.
        stall: black-hole the connection until it is closed.
        delay: wait ``uniform(0, max_delay)`` seconds of Trio time first.
        max_delay: the longest delay.
        half_write: tear a frame in half, then end the connection.
        duplicate_connect: (per connect, used by ``MemoryLink``) a second connection
            repeats this connection's first frame just after it was answered.
        refuse_connect: (per connect, used by ``MemoryLink``) the connect fails.
        spare_handshake: no random fault on a connection's first send and first
            receive (the hello and its answer).
    """

    drop: float = attrs.field(default=0.0, validator=_probability)
    stall: float = attrs.field(default=0.0, validator=_probability)
    delay: float = attrs.field(default=0.0, validator=_probability)
    max_delay: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    half_write: float = attrs.field(default=0.0, validator=_probability)
    duplicate_connect: float = attrs.field(default=0.0, validator=_probability)
    refuse_connect: float = attrs.field(default=0.0, validator=_probability)
    spare_handshake: bool = False

    @classmethod
    def calm(cls) -> ChaosPlan:
        """No random faults: only the manual switches."""
        return cls()

    @classmethod
    def rough(cls) -> ChaosPlan:
        """A bad mobile link: something goes wrong every few dozen operations."""
        return cls(
            drop=0.02,
            stall=0.005,
            delay=0.1,
            max_delay=0.5,
            half_write=0.01,
            duplicate_connect=0.2,
            refuse_connect=0.2,
        )


class ChaosTransport:
    """A ``Transport`` that misbehaves as its ``ChaosPlan`` and its switches say.

    Args:
        inner: the real transport. It needs an ``abort()`` method for drops (the
            in-memory transport has one); without it a drop closes it instead.
        plan: fault probabilities (``transport.plan`` can be swapped at any time).
        rng: the seeded source of every decision (share one per test for
            reproducibility).
        record: keep every text sent and received in ``sent`` / ``received``.
        on_first_receive: called with the first text received (``MemoryLink`` uses
            it to send a duplicate handshake after the real one was answered).
    """

    def __init__(
        self,
        inner: Transport,
        *,
        plan: ChaosPlan | None = None,
        rng: random.Random | None = None,
        record: bool = False,
        on_first_receive: Callable[[str], None] | None = None,
    ) -> None:
        self.inner = inner
        self.plan = plan or ChaosPlan()
        self.rng = rng or random.Random(0)
        self.record = record
        self.sent: list[str] = []
        self.received: list[str] = []
        #: Faults injected so far, by name (``drop``, ``stall``, ``delay``, ...).
        self.faults: dict[str, int] = {}
        self._stalled = False
        self._dead: str | None = None
        self._reading = trio.Event()
        self._reading.set()
        self._on_first_receive = on_first_receive
        self._sends = 0
        self._receives = 0

    # -- switches ---------------------------------------------------------------------

    @property
    def description(self) -> str:
        return f"chaos({self.inner.description})"

    def is_stalled(self) -> bool:
        """Whether the connection is a black hole now."""
        return self._stalled

    def stall(self) -> None:
        """Black-hole the connection from now on (a half-open TCP connection)."""
        self._count("stall")
        self._stalled = True

    def drop(self) -> None:
        """Abort the connection now: both sides see ``TransportBroken``."""
        self._count("drop")
        self._kill("dropped by chaos")

    def pause_reading(self) -> None:
        """Stop reading (a slow consumer): inbound frames pile up in the carrier."""
        self._reading = trio.Event()

    def resume_reading(self) -> None:
        self._reading.set()

    # -- internals ----------------------------------------------------------------------

    def _count(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1

    def _roll(self, probability: float, spare: bool) -> bool:
        if spare:
            return False
        return probability > 0 and self.rng.random() < probability

    def _kill(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
        abort = getattr(self.inner, "abort", None)
        if callable(abort):
            abort()

    def _check(self) -> None:
        if self._dead == "closed":
            raise TransportClosed(f"{self.description}: closed")
        if self._dead is not None:
            raise TransportBroken(f"{self.description}: {self._dead}")

    async def _maybe_delay(self, spare: bool) -> None:
        if self._roll(self.plan.delay, spare):
            self._count("delay")
            await trio.sleep(self.rng.uniform(0, self.plan.max_delay))

    def _maybe_stall_or_drop(self, spare: bool) -> None:
        if self._roll(self.plan.stall, spare):
            self.stall()
        elif self._roll(self.plan.drop, spare):
            self.drop()
            self._check()

    # -- Transport ----------------------------------------------------------------------

    async def send_message(self, message: str) -> None:
        await self.send_messages([message])

    async def send_messages(self, messages: Sequence[str]) -> None:
        self._check()
        self._sends += 1
        spare = self.plan.spare_handshake and self._sends == 1
        await self._maybe_delay(spare)
        self._check()
        self._maybe_stall_or_drop(spare)
        if self._stalled:
            await trio.lowlevel.checkpoint()
            return  # a black hole: nothing arrives, nothing errors
        if messages and self._roll(self.plan.half_write, spare):
            self._count("half_write")
            cut = self.rng.randrange(len(messages))
            torn = messages[cut]
            prefix = torn[: self.rng.randrange(len(torn))] if torn else ""
            batch = [*messages[:cut], *([prefix] if prefix else [])]
            if self.record:
                self.sent.extend(batch)
            try:
                if batch:
                    await self.inner.send_messages(batch)
            finally:
                # End-of-stream after the torn frame: the peer drains, then sees it end.
                self._dead = "a frame was torn in half"
                await self.inner.aclose()
            self._check()
        await self.inner.send_messages(messages)
        if self.record:
            self.sent.extend(messages)

    async def receive_message(self) -> str:
        self._check()
        self._receives += 1
        spare = self.plan.spare_handshake and self._receives == 1
        await self._reading.wait()
        await self._maybe_delay(spare)
        self._check()
        self._maybe_stall_or_drop(spare)
        if self._stalled:
            await trio.sleep_forever()
        text = await self.inner.receive_message()
        if self.is_stalled():
            # Stalled while we waited: what arrives now is lost in the black hole.
            await trio.sleep_forever()
        if self._roll(self.plan.half_write, spare) and len(text) > 1:
            self._count("half_write")
            self._kill("a frame was torn in half")
            text = text[: self.rng.randrange(1, len(text))]
        if self.record:
            self.received.append(text)
        if self._on_first_receive is not None:
            callback, self._on_first_receive = self._on_first_receive, None
            callback(text)
        return text

    async def aclose(self) -> None:
        self._reading.set()
        stalled = self._stalled
        if self._dead is None:
            self._dead = "closed"
        if stalled:
            # Nothing crosses a black hole, not even our FIN: the peer has to notice
            # by itself (heartbeats, §6.4).
            await trio.lowlevel.checkpoint()
            return
        await self.inner.aclose()
