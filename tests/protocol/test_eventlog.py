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
