"""A session's event buffer: seq stamping, replay, ack trimming, bounded eviction.

Theory of operation
-------------------
Every seq-bearing frame a session receives (job events and terminals of every job
it watches, §8.3) gets the next ``event_seq`` of that session — strictly
increasing, gap-free, starting at 1 — and is kept here until one of three things
frees it:

* the client acknowledges it (``ack``, §6.5: "MAY free ... seq ≤
  last_processed_seq");
* the buffer is over its cap (``max_events``), in which case the oldest entries
  are evicted and the eviction is *recorded*: ``evicted_through`` says how far, and
  ``take_overflow_notice`` tells the caller once per episode so it can tell the
  client (§6.5 back-pressure) — never a silent gap;
* the session itself is forgotten at the end of its resume window (the owner
  drops the whole buffer).

``replay_after(n)`` returns every frame with ``seq > n`` in order, or raises
``ResumeWindowExpired`` when an event the client has not seen is no longer held
(§6.3: "RESUME_WINDOW_EXPIRED is returned if the buffer no longer covers the
requested last_event_seq").

Frames are stored as the encoded text that was (or will be) sent, so a replay
re-sends exactly the original bytes: same envelope id, same seq.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

import attrs

from ..wire.errors import InvalidRequest, ResumeWindowExpired

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["BufferedEvent", "EventBuffer", "OverflowNotice"]


class BufferedEvent(NamedTuple):
    """A stamped frame (a named tuple: one is built per event per session)."""

    seq: int
    job_id: str
    frame: str


@attrs.frozen
class OverflowNotice:
    """The buffer evicted unacknowledged events; ``evicted_through`` is the last lost."""

    evicted_through: int
    evicted_count: int


#: The empty buffer every ``EventBuffer`` starts with (never mutated).
_NO_EVENTS: deque[BufferedEvent] = deque()


class EventBuffer:
    """Per-session ordered buffer of stamped frames (sans-IO, synchronous).

    *Held* events (``first_held_seq()`` to ``last_seq``) are the ones a resume may ask
    for. Without a durable store every held event is in RAM. With one, RAM keeps only
    the newest ``cache_limit`` of them (``first_cached_seq()`` on) and the store has
    the rest (``cached_after`` says whether RAM has all a resume needs, and
    ``first_cached_seq`` where the store's part ends); ``cache_limit`` 0 (a detached
    session) keeps none.
    """

    def __init__(self, *, max_events: int, cache_limit: int | None = None) -> None:
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        if cache_limit is not None and cache_limit < 0:
            raise ValueError("cache_limit must be >= 0")
        self.max_events = max_events
        #: None: RAM is the only copy (it holds every held event).
        self._cache_limit = max_events if cache_limit is None else min(cache_limit, max_events)
        self.spills = cache_limit is not None
        # Shared while empty (most sessions of an idle runtime): a deque costs over
        # 600 bytes. Never mutated; ``_mutable`` swaps in a deque of our own first.
        self._events: deque[BufferedEvent] = _NO_EVENTS
        self._last_seq = 0
        self._first_held = 1
        #: Highest seq the client acknowledged (§6.5).
        self.acked_through = 0
        #: Highest seq evicted by the cap rather than freed by an ack.
        self.evicted_through = 0
        self.evicted_total = 0
        self._notice_pending = False
        #: One notice per episode. An episode ends when the client acknowledges again,
        #: or when the notice itself is evicted (so one is always held while evicting).
        self._episode_noticed = False
        self._notice_seq = 0
        self._evicted_since_notice = 0

    # -- stamping ---------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the most recently stamped event (0 before the first)."""
        return self._last_seq

    def next_seq(self) -> int:
        """The seq the next ``append`` will stamp."""
        return self._last_seq + 1

    def append(self, seq: int, job_id: str, frame: str) -> None:
        """Store the frame stamped with ``seq`` (which must be ``next_seq()``)."""
        if seq != self._last_seq + 1:
            raise ValueError(
                f"event_seq must be gap-free: expected {self._last_seq + 1}, got {seq}"
            )
        self._last_seq = seq
        if self._cache_limit:
            events = self._mutable()
            events.append(BufferedEvent(seq, job_id, frame))
            if len(events) > self._cache_limit:
                events.popleft()  # spilled: the store has it (``spills``)
        if seq - self._first_held >= self.max_events:
            self._evict(seq - self._first_held + 1 - self.max_events)

    def skip_to(self, seq: int) -> None:
        """The stream this buffer mirrors (a cluster session's, in Redis) dropped
        its frames through ``seq`` at its cap: they count as evicted (§6.5), and
        stamping goes on after them."""
        if seq <= self._last_seq:
            return
        gone_from = max(self._first_held, self.acked_through + 1, self._last_seq + 1)
        if seq >= gone_from:
            self.evicted_total += seq - gone_from + 1
            self.evicted_through = seq
        self._first_held = max(self._first_held, seq + 1)
        self._last_seq = seq
        self._drop_cached_through(seq)

    def _mutable(self) -> deque[BufferedEvent]:
        if self._events is _NO_EVENTS:
            self._events = deque()
        return self._events

    def _evict(self, count: int) -> None:
        for _ in range(count):
            gone = self._first_held
            self._first_held += 1
            if gone == self._notice_seq:
                self._episode_noticed = False
            if gone > self.acked_through:
                self.evicted_through = gone
                self.evicted_total += 1
                self._evicted_since_notice += 1
                if not self._episode_noticed:
                    self._notice_pending = True
        self._drop_cached_through(self._first_held - 1)

    def _drop_cached_through(self, seq: int) -> None:
        events = self._events
        while events and events[0].seq <= seq:
            events.popleft()

    def set_cache_limit(self, limit: int) -> None:
        """How many of the newest held events RAM keeps (spilling buffers only).

        0 while the session is detached: nothing is sent from RAM then, and the store
        has every held event.
        """
        if not self.spills:
            return
        self._cache_limit = min(limit, self.max_events)
        events = self._events
        while len(events) > self._cache_limit:
            events.popleft()

    def defer_notice(self, notice: OverflowNotice) -> None:
        """Put a notice back: the caller could not deliver it yet."""
        self._notice_pending = True
        self._episode_noticed = False
        self._notice_seq = 0
        self._evicted_since_notice += notice.evicted_count

    def take_overflow_notice(self) -> OverflowNotice | None:
        """Once per eviction episode: what was lost since the last notice."""
        if not self._notice_pending:
            return None
        notice = OverflowNotice(self.evicted_through, self._evicted_since_notice)
        self._notice_pending = False
        self._episode_noticed = True
        self._evicted_since_notice = 0
        # The caller stamps the notice next: remember its seq now, so the eviction its
        # own append causes (of the previous notice) cannot re-arm the episode.
        self._notice_seq = self._last_seq + 1
        return notice

    @classmethod
    def restore(
        cls,
        events: list[BufferedEvent],
        *,
        max_events: int,
        acked_through: int,
        evicted_through: int,
        cache_limit: int | None = None,
        last_seq: int = 0,
        first_stored_seq: int | None = None,
    ) -> EventBuffer:
        """Rebuild a buffer from persisted state (after a restart).

        ``events`` must be in seq order and gap-free among themselves; what was freed
        before them is described by ``acked_through`` and ``evicted_through``. A
        spilling buffer (``cache_limit`` given) restores from the store's bounds
        instead (``last_seq``, ``first_stored_seq``): its events stay in the store.
        What the store no longer has counts as evicted.
        """
        buffer = cls(max_events=max_events, cache_limit=cache_limit)
        buffer.acked_through = acked_through
        buffer.evicted_through = evicted_through
        held = [e for e in events if e.seq > max(acked_through, evicted_through)]
        for before, after in itertools.pairwise(held):
            if after.seq != before.seq + 1:
                raise ValueError(f"persisted events have a gap: {before.seq} -> {after.seq}")
        last = max(held[-1].seq if held else 0, last_seq, acked_through, evicted_through)
        buffer._last_seq = last
        first = max(acked_through, evicted_through) + 1
        if held:
            first = max(first, held[0].seq)
        elif first_stored_seq is not None:
            first = max(first, first_stored_seq)
        elif cache_limit is not None:
            first = last + 1  # nothing stored: nothing held
        first = max(first, last - max_events + 1)
        if first - 1 > max(acked_through, evicted_through):
            buffer.evicted_through = first - 1
        buffer._first_held = first
        if held and buffer._cache_limit:
            buffer._mutable().extend(held[-buffer._cache_limit :])
        return buffer

    # -- ack and replay ---------------------------------------------------------------

    def ack(self, last_processed_seq: int) -> int:
        """Free events with ``seq <= last_processed_seq``; returns how many were freed.

        Raises:
            InvalidRequest: the client acknowledges a seq it was never sent.
        """
        if last_processed_seq > self._last_seq:
            raise InvalidRequest(
                f"last_processed_seq {last_processed_seq} is beyond the last event_seq "
                f"{self._last_seq} of this session"
            )
        freed = 0
        if last_processed_seq > self.acked_through:
            self.acked_through = last_processed_seq
            self._episode_noticed = False
            if last_processed_seq >= self._first_held:
                freed = last_processed_seq - self._first_held + 1
                self._first_held = last_processed_seq + 1
                self._drop_cached_through(last_processed_seq)
        return freed

    def first_held_seq(self) -> int:
        """The lowest seq still held (``last_seq + 1`` when none is)."""
        return self._first_held

    def first_cached_seq(self) -> int:
        """The lowest seq RAM holds (``last_seq + 1`` when it holds none)."""
        return self._events[0].seq if self._events else self._last_seq + 1

    def check_covers(self, last_event_seq: int) -> None:
        """Raise unless every event after ``last_event_seq`` is still held.

        Raises:
            ResumeWindowExpired: events the client has not seen were freed or evicted.
            InvalidRequest: ``last_event_seq`` is beyond anything this session sent.
        """
        if last_event_seq > self._last_seq:
            raise InvalidRequest(
                f"last_event_seq {last_event_seq} is beyond the last event_seq {self._last_seq} "
                "of this session"
            )
        if last_event_seq + 1 < self._first_held:
            raise ResumeWindowExpired(
                f"events {last_event_seq + 1}..{self._first_held - 1} are no longer buffered "
                f"(acknowledged through {self.acked_through}, evicted through "
                f"{self.evicted_through})"
            )

    def cached_after(self, last_event_seq: int) -> list[BufferedEvent] | None:
        """Every held event with ``seq > last_event_seq`` if RAM has them all, else
        None (read the store first: ``first_cached_seq()``)."""
        if last_event_seq + 1 < self.first_cached_seq():
            return None
        start = last_event_seq + 1 - self.first_cached_seq()
        return list(itertools.islice(self._events, max(start, 0), None))

    def replay_after(self, last_event_seq: int) -> list[BufferedEvent]:
        """Every held event with ``seq > last_event_seq``, in order (§6.3), from RAM.

        Raises:
            ResumeWindowExpired, InvalidRequest: see ``check_covers``.
            LookupError: some of them are only in the store (a spilling buffer).
        """
        self.check_covers(last_event_seq)
        cached = self.cached_after(last_event_seq)
        if cached is None:
            raise LookupError(f"events after {last_event_seq} are partly in the store")
        return cached

    @property
    def cached(self) -> int:
        """How many events RAM holds."""
        return len(self._events)

    def __len__(self) -> int:
        """How many events are held (in RAM or, for a spilling buffer, the store)."""
        return self._last_seq - self._first_held + 1

    def __iter__(self) -> Iterator[BufferedEvent]:
        """The events RAM holds, in order."""
        return iter(self._events)
