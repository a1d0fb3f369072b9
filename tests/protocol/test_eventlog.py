"""The per-session event buffer: gap-free stamping, replay, ack trimming, eviction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcp_trio.protocol.eventlog import EventBuffer
from arcp_trio.wire.errors import InvalidRequest, ResumeWindowExpired


def fill(buffer: EventBuffer, count: int, job_id: str = "job_A") -> None:
    for _ in range(count):
        seq = buffer.next_seq()
        buffer.append(seq, job_id, f"frame-{seq}")


def test_stamping_is_gap_free_from_one() -> None:
    buffer = EventBuffer(max_events=10)
    assert buffer.next_seq() == 1
    fill(buffer, 3)
    assert [e.seq for e in buffer] == [1, 2, 3]
    assert buffer.last_seq == 3
    with pytest.raises(ValueError, match="gap-free"):
        buffer.append(5, "job_A", "x")


def test_replay_after_returns_exactly_the_missing_events() -> None:
    buffer = EventBuffer(max_events=100)
    fill(buffer, 10)
    assert [e.seq for e in buffer.replay_after(7)] == [8, 9, 10]
    assert [e.seq for e in buffer.replay_after(0)] == list(range(1, 11))
    assert buffer.replay_after(10) == []


def test_replay_beyond_last_seq_is_invalid() -> None:
    buffer = EventBuffer(max_events=100)
    fill(buffer, 2)
    with pytest.raises(InvalidRequest):
        buffer.replay_after(3)


def test_ack_frees_events_and_a_resume_below_the_ack_is_expired() -> None:
    # §6.5: the runtime MAY free acknowledged events; §6.3: a resume the buffer no
    # longer covers gets RESUME_WINDOW_EXPIRED rather than a silent gap.
    buffer = EventBuffer(max_events=100)
    fill(buffer, 10)
    assert buffer.ack(6) == 6
    assert [e.seq for e in buffer.replay_after(6)] == [7, 8, 9, 10]
    with pytest.raises(ResumeWindowExpired):
        buffer.replay_after(5)
    # A stale (lower) ack frees nothing and changes nothing.
    assert buffer.ack(3) == 0
    assert buffer.acked_through == 6


def test_ack_beyond_last_seq_is_refused() -> None:
    buffer = EventBuffer(max_events=100)
    fill(buffer, 2)
    with pytest.raises(InvalidRequest):
        buffer.ack(3)


def test_cap_evicts_oldest_and_reports_once_per_episode() -> None:
    buffer = EventBuffer(max_events=5)
    fill(buffer, 5)
    assert buffer.take_overflow_notice() is None
    fill(buffer, 3)
    assert len(buffer) == 5
    notice = buffer.take_overflow_notice()
    assert notice is not None
    assert notice.evicted_through == 3
    assert notice.evicted_count == 3
    assert buffer.take_overflow_notice() is None
    # Still evicting, still the same episode: no second notice...
    fill(buffer, 4)
    assert buffer.take_overflow_notice() is None
    # ...until the client acknowledges again and a new episode starts.
    buffer.ack(buffer.last_seq - 2)
    fill(buffer, 6)
    again = buffer.take_overflow_notice()
    assert again is not None
    fill(buffer, 1)
    assert buffer.take_overflow_notice() is None
    with pytest.raises(ResumeWindowExpired, match="evicted through"):
        buffer.replay_after(2)


def test_evicting_acknowledged_events_is_not_an_overflow() -> None:
    buffer = EventBuffer(max_events=3)
    fill(buffer, 3)
    buffer.ack(2)
    fill(buffer, 2)
    assert buffer.take_overflow_notice() is None
    assert buffer.evicted_total == 0


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("emit"), st.integers(1, 5)),
            st.tuples(st.just("ack"), st.integers(0, 40)),
            st.tuples(st.just("resume"), st.integers(0, 40)),
        ),
        max_size=40,
    ),
    st.integers(1, 12),
)
def test_replay_is_exact_or_refused(program: list[tuple[str, int]], cap: int) -> None:
    """Whatever the interleaving: a replay is exactly seq > n, in order, or refused."""
    buffer = EventBuffer(max_events=cap)
    for op, arg in program:
        if op == "emit":
            fill(buffer, arg)
        elif op == "ack":
            if arg <= buffer.last_seq:
                buffer.ack(arg)
        elif arg <= buffer.last_seq:
            try:
                replay = buffer.replay_after(arg)
            except ResumeWindowExpired:
                assert arg < max(buffer.acked_through, buffer.evicted_through)
            else:
                assert [e.seq for e in replay] == list(range(arg + 1, buffer.last_seq + 1))
        assert len(buffer) <= cap


@given(st.integers(1, 6), st.lists(st.integers(0, 3), max_size=80))
def test_never_two_overflow_notices_at_once(cap: int, steps: list[int]) -> None:
    """Regression (fuzzing): stamping a notice evicted the previous one, which re-armed
    the episode, so the next event got a second notice while the new one was held.
    Steps: 0 = an ack of all but the newest event, otherwise that many events."""
    buffer = EventBuffer(max_events=cap)
    notices: set[int] = set()
    for step in steps:
        if step == 0:
            if buffer.last_seq > 1:
                buffer.ack(buffer.last_seq - 1)
            continue
        for _ in range(step):
            fill(buffer, 1)
            notice = buffer.take_overflow_notice()
            held = {e.seq for e in buffer} & notices
            if notice is not None:
                assert not held, "a second notice while one is still held"
                seq = buffer.next_seq()
                buffer.append(seq, "job_A", "notice")
                notices.add(seq)
            assert len({e.seq for e in buffer} & notices) <= 1


def test_buffers_start_empty_and_never_share_what_they_hold() -> None:
    """Empty buffers share one empty deque (idle sessions are cheap); the first append
    gives a buffer its own, so nothing leaks between sessions."""
    a, b = EventBuffer(max_events=4), EventBuffer(max_events=4)
    assert len(a) == len(b) == 0
    assert a.ack(0) == 0
    a.append(a.next_seq(), "job_1", "frame-a")
    assert [e.frame for e in a] == ["frame-a"]
    assert list(b) == []
    assert EventBuffer(max_events=4).replay_after(0) == []
    b.append(b.next_seq(), "job_2", "frame-b")
    assert [e.frame for e in a] == ["frame-a"]
    assert [e.frame for e in b] == ["frame-b"]


# -- spilling buffers (a durable store has every held event; RAM keeps the newest) -----


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("emit"), st.integers(1, 6)),
            st.tuples(st.just("ack"), st.integers(0, 60)),
            st.tuples(st.just("detach"), st.just(0)),
            st.tuples(st.just("attach"), st.just(0)),
        ),
        max_size=40,
    ),
    st.integers(1, 12),
    st.integers(0, 5),
)
def test_a_spilling_buffer_holds_what_an_unbounded_one_does(
    program: list[tuple[str, int]], cap: int, cache: int
) -> None:
    """Same held range, same notices, same answers to a resume; RAM only ever keeps a
    contiguous tail of at most ``cache`` events, and the store (here: a dict of what
    was appended) has the rest."""
    whole = EventBuffer(max_events=cap)
    spilling = EventBuffer(max_events=cap, cache_limit=cache)
    stored: dict[int, str] = {}
    for op, arg in program:
        if op == "emit":
            for _ in range(arg):
                seq = whole.next_seq()
                assert spilling.next_seq() == seq
                whole.append(seq, "job_A", f"frame-{seq}")
                spilling.append(seq, "job_A", f"frame-{seq}")
                stored[seq] = f"frame-{seq}"
                assert whole.take_overflow_notice() == spilling.take_overflow_notice()
        elif op == "ack" and arg <= whole.last_seq:
            assert whole.ack(arg) == spilling.ack(arg)
        elif op == "detach":
            spilling.set_cache_limit(0)
        elif op == "attach":
            spilling.set_cache_limit(cache)
        assert len(whole) == len(spilling) <= cap
        assert whole.first_held_seq() == spilling.first_held_seq()
        assert (whole.acked_through, whole.evicted_through) == (
            spilling.acked_through,
            spilling.evicted_through,
        )
        cached = [e.seq for e in spilling]
        assert len(cached) <= cache
        assert cached == list(range(spilling.first_cached_seq(), spilling.last_seq + 1))
        for after in range(whole.first_held_seq() - 1, whole.last_seq + 1):
            # What a resume is sent: the store's part, then RAM's: exactly seq > after.
            from_ram = spilling.cached_after(after)
            if from_ram is None:
                upto = spilling.first_cached_seq() - 1
                from_store = [(s, stored[s]) for s in range(after + 1, upto + 1)]
                from_ram = spilling.cached_after(upto)
                assert from_ram is not None
            else:
                from_store = []
            replay = from_store + [(e.seq, e.frame) for e in from_ram]
            assert replay == [(e.seq, e.frame) for e in whole.replay_after(after)]


def test_a_spilling_buffer_refuses_a_ram_only_replay_of_what_it_spilled() -> None:
    buffer = EventBuffer(max_events=100, cache_limit=3)
    fill(buffer, 10)
    assert [e.seq for e in buffer] == [8, 9, 10]
    assert buffer.cached_after(6) is None
    assert [e.seq for e in buffer.cached_after(7) or []] == [8, 9, 10]
    with pytest.raises(LookupError):
        buffer.replay_after(0)
    assert len(buffer) == 10
    assert buffer.cached == 3


def test_a_restored_spilling_buffer_holds_what_the_store_has() -> None:
    # The store has 40..90 of a session acknowledged through 30: 31..39 were trimmed
    # at the cap, so they count as evicted, and a resume from 35 is refused (§6.3).
    buffer = EventBuffer.restore(
        [],
        max_events=100,
        acked_through=30,
        evicted_through=0,
        cache_limit=0,
        last_seq=90,
        first_stored_seq=40,
    )
    assert (buffer.first_held_seq(), buffer.last_seq, buffer.evicted_through) == (40, 90, 39)
    assert buffer.cached_after(39) is None
    with pytest.raises(ResumeWindowExpired):
        buffer.check_covers(35)
    buffer.set_cache_limit(8)
    buffer.append(91, "job_A", "frame-91")
    assert [(e.seq, e.frame) for e in buffer.cached_after(90) or []] == [(91, "frame-91")]
    # Nothing stored and everything acknowledged: nothing is held.
    empty = EventBuffer.restore(
        [], max_events=100, acked_through=7, evicted_through=0, cache_limit=0, last_seq=7
    )
    assert len(empty) == 0
    assert empty.cached_after(7) == []
