"""The ``EventLog`` contract (store/base.py): what every durable store guarantees.

Each implementation is one entry of ``IMPLEMENTATIONS``: an async context manager
that opens a store on a fresh backing, runs its writer, and can open the same
backing again (a restart). The Redis store of the cluster issue adds an entry;
nothing else here may depend on which store it is.

Real backings only (SQLite files in tmp_path); real clock (writer threads).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.store.base import MemoryStore, Store
from arcp_trio.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    Opener = Callable[[], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def running(store: Store) -> AsyncIterator[Store]:
    await store.load()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


def sqlite(
    tmp_path: Path, max_pending_writes: int = 50_000, max_pending_bytes: int = 32 << 20
) -> Opener:
    return lambda: running(
        SQLiteStore(
            tmp_path / "log.sqlite3",
            max_pending_writes=max_pending_writes,
            max_pending_bytes=max_pending_bytes,
        )
    )


IMPLEMENTATIONS: dict[str, Callable[..., Opener]] = {"sqlite": sqlite}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return IMPLEMENTATIONS[request.param](tmp_path)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def open_small_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """A store whose write-behind bound is 100 writes or 10 KB."""
    return IMPLEMENTATIONS[request.param](
        tmp_path, max_pending_writes=100, max_pending_bytes=10_000
    )


def fill(store: Store, session_id: str, job_id: str, count: int, start: int = 1) -> None:
    for n in range(start, start + count):
        store.append_event(session_id, n, job_id, f"{session_id}-frame-{n}")
        store.append_history(job_id, n, f"id-{n}", "log", f'{{"n":{n}}}')


async def test_reads_see_every_append_queued_before_them_in_pages(open_store: Opener) -> None:
    with trio.fail_after(10):
        async with open_store() as store:
            assert store.durable
            fill(store, "sess_1", "job_1", 1200)
            # No flush: a read includes what was queued before it.
            first = await store.read_events("sess_1", 0, 500)
            rest = await store.read_events("sess_1", first[-1].seq, 10_000)
            history = await store.read_history("job_1", 1000, 100)
    assert [e.seq for e in first + rest] == list(range(1, 1201))
    assert first[0].frame == "sess_1-frame-1"
    assert first[0].job_id == "job_1"
    assert [h.number for h in history] == list(range(1001, 1101))
    assert (history[0].frame_id, history[0].kind, history[0].payload_json) == (
        "id-1001",
        "log",
        '{"n":1001}',
    )


async def test_streams_are_apart_and_trims_and_deletes_forget_a_prefix(open_store: Opener) -> None:
    with trio.fail_after(10):
        async with open_store() as store:
            fill(store, "sess_1", "job_1", 50)
            fill(store, "sess_2", "job_2", 50)
            store.trim_events("sess_1", 20)
            store.trim_history("job_1", 30)
            trimmed = await store.read_events("sess_1", 0, 100)
            other = await store.read_events("sess_2", 0, 100)
            history = await store.read_history("job_1", 0, 100)
            store.delete_session("sess_2")
            store.delete_job("job_2")
            gone = await store.read_events("sess_2", 0, 100)
            gone_history = await store.read_history("job_2", 0, 100)
            nothing = await store.read_events("sess_unknown", 0, 100)
    assert [e.seq for e in trimmed] == list(range(21, 51))
    assert [e.seq for e in other] == list(range(1, 51))
    assert [h.number for h in history] == list(range(31, 51))
    assert gone == nothing == []
    assert gone_history == []


async def test_a_restart_reports_the_bounds_and_the_events_read_back(open_store: Opener) -> None:
    with trio.fail_after(10):
        async with open_store() as store:
            fill(store, "sess_1", "job_1", 300)
            store.trim_events("sess_1", 100)
        async with open_store() as again:
            recovered = await again.load()
            page = await again.read_events("sess_1", 100, 3)
    assert recovered.event_bounds == {"sess_1": (101, 300)}
    assert recovered.history_bounds == {"job_1": (1, 300)}
    assert [e.frame for e in page] == ["sess_1-frame-101", "sess_1-frame-102", "sess_1-frame-103"]


async def test_write_behind_is_bounded_and_drains(open_small_store: Opener) -> None:
    with trio.fail_after(10):
        async with open_small_store() as store:
            before = store.congested
            # Queued synchronously, no checkpoint: the writer has not run yet.
            fill(store, "sess_1", "job_1", 60)  # 120 writes > 100
            by_count = store.congested
            await store.wait_writable()
            drained = store.congested
            store.append_event("sess_1", 61, "job_1", "x" * 20_000)  # bytes, too
            by_bytes = store.congested
            await store.wait_writable()
            events = await store.read_events("sess_1", 0, 1000)
    assert (before, by_count, drained, by_bytes) == (False, True, False, True)
    assert len(events) == 61


async def test_a_store_that_is_not_durable_keeps_and_reads_nothing() -> None:
    store = MemoryStore()
    store.append_event("sess_1", 1, "job_1", "frame")
    store.append_history("job_1", 1, "id", "log", "{}")
    assert not store.durable
    assert not store.congested
    assert await store.read_events("sess_1", 0, 10) == []
    assert await store.read_history("job_1", 0, 10) == []
