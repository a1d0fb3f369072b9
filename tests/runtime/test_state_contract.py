"""The state interfaces' contract (runtime/state.py, runtime/routing.py).

``JobRegistry``, ``SessionDirectory`` and ``Router`` promise the same things on
every implementation: each entry of ``IMPLEMENTATIONS`` opens the three on a fresh
backing and can open the same backing again (a restart). The in-memory one has no
restart; the stored one runs on a real SQLite file. The cluster issue's Redis state
adds an entry; nothing below may depend on which one it is.

Real backings only (SQLite files in tmp_path); real clock (writer threads).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
from orjson import loads

from arcp_trio.protocol.eventlog import EventBuffer
from arcp_trio.protocol.job import JobRecord, JobStatus, Terminal
from arcp_trio.protocol.session import Dialect, ResumeWindow
from arcp_trio.runtime.routing import EventRouter
from arcp_trio.runtime.session import Session, hash_token
from arcp_trio.runtime.state import JobRegistry, SessionDirectory, open_state
from arcp_trio.store.base import MemoryStore, Store
from arcp_trio.store.sqlite import SQLiteStore
from arcp_trio.wire.errors import DuplicateKey
from arcp_trio.wire.messages import MessageType
from tests.helpers import job_record

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path


HISTORY = {"history_limit": 10_000}


@attrs.define
class State:
    store: Store
    jobs: JobRegistry
    sessions: SessionDirectory
    router: EventRouter
    restored_sessions: list[Session]


@asynccontextmanager
async def opened(store: Store) -> AsyncIterator[State]:
    recovered = await store.load()
    jobs, sessions = open_state(store)
    jobs.restore(recovered, **HISTORY, history_spills=store.durable)
    restored = sessions.restore(recovered, max_buffered_events=1000, resume_window_sec=60)
    router = EventRouter(
        sessions=sessions,
        event_log=store,
        durable=store.durable,
        timestamp=lambda: "2026-01-01T00:00:00Z",
        history_memory_events=100_000,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            yield State(store, jobs, sessions, router, restored)
            await store.flush()
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


def memory(tmp_path: Path) -> Callable[[], AbstractAsyncContextManager[State]]:
    return lambda: opened(MemoryStore())


def sqlite(tmp_path: Path) -> Callable[[], AbstractAsyncContextManager[State]]:
    return lambda: opened(SQLiteStore(tmp_path / "state.sqlite3"))


IMPLEMENTATIONS: dict[str, Callable[[Path], Callable[[], AbstractAsyncContextManager[State]]]] = {
    "memory": memory,
    "sqlite": sqlite,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def open_state_on(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], AbstractAsyncContextManager[State]]:
    return IMPLEMENTATIONS[request.param](tmp_path)


def new_job(jobs: JobRegistry, number: int, **fields: Any) -> JobRecord:
    base: dict[str, Any] = {"job_id": f"job_{number}", "ordinal": jobs.next_ordinal()}
    return job_record(**(base | HISTORY | fields))


def new_session(number: int, principal: str = "alice", **fields: Any) -> Session:
    return Session(
        session_id=f"sess_{number}",
        principal=principal,
        features=frozenset({"ack"}),
        dialect=Dialect.SPEC,
        buffer=EventBuffer(max_events=1000, cache_limit=fields.pop("cache_limit", None)),
        window=ResumeWindow(window_sec=60),
        **fields,
    )


# == JobRegistry ==================================================================================


async def test_admit_registers_in_ordinal_order(open_state_on: Any) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            jobs = state.jobs
            admitted = [new_job(jobs, n) for n in range(1, 4)]
            for job in admitted:
                assert await jobs.admit(job, fingerprint=None) is job
            assert [job.ordinal for job in admitted] == sorted(job.ordinal for job in admitted)
            assert jobs.get("job_2") is admitted[1]
            assert jobs.get("job_9") is None
            assert len(jobs) == 3
            assert {job.job_id for job in jobs} == {"job_1", "job_2", "job_3"}


async def test_an_idempotency_key_has_one_holder(open_state_on: Any) -> None:
    """§7.2: the same key and parameters replay the first job; other parameters fail."""
    with trio.fail_after(10):
        async with open_state_on() as state:
            jobs = state.jobs
            first = new_job(jobs, 1, idempotency_key="k")
            assert await jobs.holder("alice", "k", "fp") is None
            assert await jobs.admit(first, fingerprint="fp") is first
            again = new_job(jobs, 2, idempotency_key="k")
            assert await jobs.admit(again, fingerprint="fp") is first
            assert jobs.get("job_2") is None
            assert await jobs.holder("alice", "k", "fp") is first
            with pytest.raises(DuplicateKey):
                await jobs.holder("alice", "k", "other")
            with pytest.raises(DuplicateKey):
                await jobs.admit(new_job(jobs, 3, idempotency_key="k"), fingerprint="other")
            # Keys belong to a principal.
            bob = new_job(jobs, 4, idempotency_key="k", principal="bob")
            assert await jobs.admit(bob, fingerprint="other") is bob


async def test_racing_admits_with_one_key_admit_exactly_one(open_state_on: Any) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            jobs = state.jobs
            candidates = [new_job(jobs, n, idempotency_key="k") for n in range(1, 9)]
            holders: list[JobRecord] = []

            async def admit(job: JobRecord) -> None:
                holders.append(await jobs.admit(job, fingerprint="fp"))

            async with trio.open_nursery() as nursery:
                for job in candidates:
                    nursery.start_soon(admit, job)
            assert len({id(h) for h in holders}) == 1
            assert len(jobs) == 1


async def test_withdraw_and_forget_free_the_key_and_survive_a_restart(
    open_state_on: Any, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            jobs = state.jobs
            withdrawn = new_job(jobs, 1, idempotency_key="a")
            forgotten = new_job(jobs, 2, idempotency_key="b")
            kept = new_job(jobs, 3, idempotency_key="c")
            for job in (withdrawn, forgotten, kept):
                await jobs.admit(job, fingerprint="fp")
            jobs.withdraw(withdrawn)
            jobs.forget(forgotten)
            assert jobs.get("job_1") is None
            assert jobs.get("job_2") is None
            assert await jobs.holder("alice", "a", "fp") is None
            assert await jobs.holder("alice", "b", "fp") is None
            durable = state.store.durable
        if not durable:
            return
        async with open_state_on() as state:
            assert [job.job_id for job in state.jobs] == ["job_3"]
            holder = await state.jobs.holder("alice", "c", "fp")
            assert holder is not None
            assert holder.job_id == "job_3"
            assert await state.jobs.holder("alice", "a", "fp") is None


async def test_saved_changes_are_what_a_restart_sees(open_state_on: Any) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            jobs = state.jobs
            job = new_job(jobs, 1)
            await jobs.admit(job, fingerprint=None)
            job.transition(JobStatus.RUNNING)
            jobs.save(job)
            job.finish(
                Terminal(status=JobStatus.SUCCESS, completed_at="2026-01-01T00:00:01Z", result=7)
            )
            jobs.save(job)
            assert jobs.get("job_1") is job
            durable = state.store.durable
        if not durable:
            return
        async with open_state_on() as state:
            again = state.jobs.get("job_1")
            assert again is not None
            assert again is not job
            assert again.status == "success"
            assert again.terminal is not None
            assert again.terminal.result == 7
            # Ordinals go on above every restored job.
            assert state.jobs.next_ordinal() > again.ordinal


async def test_listing_is_per_principal_and_paged(open_state_on: Any) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            jobs = state.jobs
            for n in range(1, 8):
                principal = "bob" if n % 3 == 0 else "alice"
                await jobs.admit(new_job(jobs, n, principal=principal), fingerprint=None)
            seen: list[str] = []
            cursor: str | None = None
            for _ in range(10):
                page, cursor = await jobs.list_for(
                    "alice", statuses=None, agent=None, created_after=None, limit=2, cursor=cursor
                )
                seen += [job.job_id for job in page]
                if cursor is None:
                    break
            assert seen == ["job_1", "job_2", "job_4", "job_5", "job_7"]


# == SessionDirectory =============================================================================


async def test_sessions_are_found_by_id_and_by_every_valid_token(open_state_on: Any) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            sessions = state.sessions
            one, two = new_session(1), new_session(2)
            await sessions.add(one)
            await sessions.add(two)
            token = one.rotate_token()
            sessions.tokens_changed(one)
            assert sessions.get("sess_1") is one
            assert await sessions.find("sess_2", "ignored") is two
            assert await sessions.find(None, hash_token(token)) is one
            assert await sessions.find(None, hash_token("rtk_unknown")) is None
            newer = one.rotate_token()
            one.confirm_token(hash_token(newer))
            sessions.tokens_changed(one)
            assert await sessions.find(None, hash_token(token)) is None  # retired
            sessions.remove(two)
            assert sessions.get("sess_2") is None
            assert list(sessions) == [one]
            assert len(sessions) == 1


async def test_saved_sessions_come_back_detached_after_a_restart(open_state_on: Any) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            sessions = state.sessions
            kept, gone = new_session(1), new_session(2)
            for session in (kept, gone):
                await sessions.add(session)
                session.rotate_token()
            token = kept.rotate_token()
            kept.confirm_token(hash_token(token))
            kept.submitted.add("job_1")
            sessions.tokens_changed(kept)
            sessions.save(kept)
            sessions.save(gone)
            sessions.remove(gone)
            durable = state.store.durable
        if not durable:
            return
        async with open_state_on() as state:
            assert [s.session_id for s in state.restored_sessions] == ["sess_1"]
            found = await state.sessions.find(None, hash_token(token))
            assert found is not None
            assert found is not kept
            assert found.connection is None
            assert found.submitted == {"job_1"}
            assert state.sessions.get("sess_2") is None


# == Router =======================================================================================


def frames(session: Session) -> list[dict[str, Any]]:
    return [loads(event.frame) for event in session.buffer.cached_after(0) or []]


async def watched(state: State, count: int) -> tuple[JobRecord, list[Session]]:
    job = new_job(state.jobs, 1, history_spills=state.store.durable)
    await state.jobs.admit(job, fingerprint=None)
    watchers = [new_session(n) for n in range(1, count + 1)]
    for session in watchers:
        await state.sessions.add(session)
        job.watchers.add(session.session_id)
    return job, watchers


async def test_published_events_reach_every_watcher_once_in_order(open_state_on: Any) -> None:
    """§8.3: each session numbers its events 1, 2, 3...; the history keeps them."""
    with trio.fail_after(10):
        async with open_state_on() as state:
            job, watchers = await watched(state, 2)
            late = new_session(3)
            await state.sessions.add(late)
            for n in range(5):
                state.router.publish(job, "log", {"n": n})
                if n == 2:
                    job.watchers.add(late.session_id)
            for session in watchers:
                got = frames(session)
                assert [f["event_seq"] for f in got] == [1, 2, 3, 4, 5]
                assert [f["payload"]["body"]["n"] for f in got] == [0, 1, 2, 3, 4]
                assert {f["job_id"] for f in got} == {"job_1"}
            assert [f["payload"]["body"]["n"] for f in frames(late)] == [3, 4]
            assert job.last_event_index == 5
            # One frame id per event, the same in every stream.
            ids = [[f["id"] for f in frames(s)] for s in watchers]
            assert ids[0] == ids[1]
            assert len(set(ids[0])) == 5
            if state.store.durable:
                await state.store.flush()
                history = await state.store.read_history("job_1", 0, 100)
                assert [h.number for h in history] == [1, 2, 3, 4, 5]
                stream = await state.store.read_events("sess_1", 0, 100)
                assert [loads(e.frame) for e in stream] == frames(watchers[0])


async def test_a_terminal_has_one_frame_id_for_every_watcher_and_later_ones(
    open_state_on: Any,
) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            job, watchers = await watched(state, 2)
            state.router.publish(job, "log", {"n": 0})
            job.finish(
                Terminal(status=JobStatus.SUCCESS, completed_at="2026-01-01T00:00:01Z", result=1)
            )
            state.router.publish_terminal(job)
            terminals = [frames(s)[-1] for s in watchers]
            assert {t["type"] for t in terminals} == {MessageType.JOB_RESULT}
            assert terminals[0]["id"] == terminals[1]["id"] == job.terminal_frame_id
            later = new_session(9)
            await state.sessions.add(later)
            state.router.deliver_terminal(later, job)
            assert frames(later)[-1]["id"] == job.terminal_frame_id


async def test_forgotten_watchers_are_dropped(open_state_on: Any) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            job, (one, two) = await watched(state, 2)
            state.sessions.remove(two)
            assert state.router.watching(job) == [one]
            assert job.watchers == {one.session_id}


async def test_cancel_requests_reach_the_runner_and_say_whether_it_ends(
    open_state_on: Any,
) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            why = Terminal(status=JobStatus.CANCELLED, completed_at="", code="CANCELLED")
            assert state.router.request_cancel("job_1", why) is False  # nothing runs it
            asked: list[tuple[str, Terminal]] = []

            def runner(job_id: str, reason: Terminal) -> bool:
                asked.append((job_id, reason))
                return job_id == "job_1"

            state.router.set_canceller(runner)
            assert state.router.request_cancel("job_1", why) is True
            assert state.router.request_cancel("job_2", why) is False
            assert asked == [("job_1", why), ("job_2", why)]


async def test_uncache_lets_ram_go_of_a_history(open_state_on: Any) -> None:
    with trio.fail_after(10):
        async with open_state_on() as state:
            job, _ = await watched(state, 1)
            for n in range(10):
                state.router.publish(job, "log", {"n": n})
            assert state.router.history_ram_total == 10
            state.router.uncache(job)
            assert state.router.history_ram_total == 0
            assert job.last_event_index == 10
