"""A job's history: bounded by ``history_limit``, and in RAM only as far as told.

Without a store RAM is the only copy, so what RAM lets go of is gone and
``history_start`` says so (a subscribe reports it, §7.6). A spilling history (a
durable store has every event) keeps at most ``history_cache_limit`` in RAM, and
``history_after`` answers None where the store must be read first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import job_record

if TYPE_CHECKING:
    from arcp_trio.protocol.job import JobRecord


def emit(record: JobRecord, count: int) -> None:
    for _ in range(count):
        record.record_event(f"id{record.last_event_index + 1}", "log", "{}")


def test_the_limit_moves_the_start_and_ram_follows() -> None:
    record = job_record(history_limit=5)
    emit(record, 8)
    assert record.history_start == 4
    assert [e.number for e in record.history] == [4, 5, 6, 7, 8]
    window = record.history_after(0)
    assert window is not None
    entries, missing = window
    assert [e.number for e in entries] == [4, 5, 6, 7, 8]
    assert missing == 3


def test_without_a_store_what_ram_drops_is_gone_and_said() -> None:
    record = job_record(history_limit=100)
    emit(record, 10)
    assert record.drop_cached(4) == 4
    assert record.history_start == 5
    window = record.history_after(2)
    assert window is not None
    assert window[1] == 2  # 3 and 4: no longer held (history_missing)


def test_a_spilling_history_keeps_its_events_in_the_store_not_in_ram() -> None:
    record = job_record(history_limit=100, history_spills=True, history_cache_limit=3)
    emit(record, 10)
    assert [e.number for e in record.history] == [8, 9, 10]
    assert record.history_start == 1  # all ten are held: the store has them
    assert record.history_after(0) is None  # read 1..7 from the store first
    window = record.history_after(7)
    assert window is not None
    assert [e.number for e in window[0]] == [8, 9, 10]
    assert record.drop_cached(3) == 3  # the job ended: RAM keeps none
    assert record.history_start == 1
    assert record.first_cached_index() == 11
    assert record.history_after(10) == ([], 0)


@given(
    st.integers(1, 20),
    st.one_of(st.none(), st.integers(0, 8)),
    st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=30),
)
def test_ram_is_always_a_bounded_tail_of_what_is_held(
    limit: int, cache: int | None, steps: list[tuple[bool, int]]
) -> None:
    record = job_record(
        history_limit=limit, history_spills=cache is not None, history_cache_limit=cache
    )
    for drop, count in steps:
        if drop:
            record.drop_cached(count)
        else:
            emit(record, count)
        numbers = [e.number for e in record.history]
        last = record.last_event_index
        assert numbers == list(range(record.first_cached_index(), last + 1))
        assert record.history_start <= record.first_cached_index()
        assert last - record.history_start + 1 <= limit
        assert len(numbers) <= (limit if cache is None else min(limit, cache))
        if cache is not None:
            # Spilling: only the limit ends what is held.
            assert record.history_start == max(1, last - limit + 1)
