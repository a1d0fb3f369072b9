"""The SQLite store: round trips, group commit, refusal of bad files, write failures,
and a runtime that comes back from its file.

Rules: real SQLite files in tmp_path; worker threads via trio.to_thread (real
clock for those, every wait bounded).
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
import trio

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.store.base import SessionRow, StoreError
from arcp_trio.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.helpers import TOKENS, connect, trio_wall_clock

if TYPE_CHECKING:
    from pathlib import Path


def row(**extra: Any) -> SessionRow:
    base: dict[str, Any] = {
        "session_id": "sess_1",
        "principal": "alice",
        "token_hash": "h",
        "features": ["ack"],
        "dialect": "reference",
        "client_name": "c",
        "submitted": ["job_1"],
        "subscribed": [],
        "acked_through": 0,
        "evicted_through": 0,
    }
    base.update(extra)
    return SessionRow(**base)


async def test_round_trip_and_group_commit(tmp_path: Path) -> None:
    path = tmp_path / "rt.sqlite3"
    with trio.fail_after(10):
        store = SQLiteStore(path)
        assert (await store.load()).jobs == []
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            store.save_job({"job_id": "job_1", "ordinal": 1, "x": [1, 2]})
            store.save_idempotency("alice", "k", "fp", "job_1")
            store.save_session(row())
            for seq in range(1, 501):
                store.append_event("sess_1", seq, "job_1", f"frame-{seq}")
                store.append_history("job_1", seq, f"id{seq}", "log", "{}")
            store.trim_events("sess_1", 100)
            await store.flush()
            # Group commit: 1,000+ writes in a handful of transactions.
            assert store.operations >= 1000
            assert store.batches <= 5
            nursery.cancel_scope.cancel()
        await store.aclose()
        again = SQLiteStore(path)
        recovered = await again.load()
        # The events stay on disk: a restart loads their bounds, and pages on demand.
        page = await again.read_events("sess_1", 250, 100)
        history = await again.read_history("job_1", 0, 1000)
        await again.aclose()
    assert recovered.jobs == [{"job_id": "job_1", "ordinal": 1, "x": [1, 2]}]
    assert recovered.idempotency == [("alice", "k", "fp", "job_1")]
    assert recovered.sessions == [row()]
    assert recovered.event_bounds == {"sess_1": (101, 500)}
    assert recovered.history_bounds == {"job_1": (1, 500)}
    assert [e.seq for e in page] == list(range(251, 351))
    assert page[0].frame == "frame-251"
    assert [h.number for h in history] == list(range(1, 501))


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with trio.fail_after(10), pytest.raises(StoreError, match="newer than this arcp-trio"):
        await SQLiteStore(path).load()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with trio.fail_after(10), pytest.raises(StoreError, match="not a usable"):
        await SQLiteStore(path).load()


async def test_a_failed_write_is_never_acknowledged(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A store write failure fails the submit with INTERNAL_ERROR; the job does not exist."""
    store = SQLiteStore(tmp_path / "rt.sqlite3")
    with trio.fail_after(20):
        async with open_runtime(
            agents=demo_registry(),
            tokens=TOKENS,
            wall_clock=trio_wall_clock,
            store=store,
            config=RuntimeConfig(heartbeat_interval_sec=1000),
        ) as runtime:
            peer, _ = await connect(runtime, nursery)
            await peer.hello()
            ok = await peer.submit("echo", 1)
            assert ok["type"] == "job.accepted"
            # Break the disk under the runtime: every later transaction fails.
            assert store._db is not None
            store._db.execute("PRAGMA query_only = ON")
            reply = await peer.submit("echo", 2)
            assert reply["type"] == "session.error"
            assert reply["payload"]["code"] == "INTERNAL_ERROR"
            assert reply["payload"]["retryable"] is True
            assert len(runtime.job_ids()) == 1
            store._db.execute("PRAGMA query_only = OFF")
            again = await peer.submit("echo", 3)
            assert again["type"] == "job.accepted"


async def test_the_runtime_comes_back_from_its_file(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Jobs, sessions and buffers survive a restart; a running job ends visibly."""
    path = tmp_path / "rt.sqlite3"
    config = RuntimeConfig(heartbeat_interval_sec=1000, shutdown_grace_sec=0)
    with trio.fail_after(30):
        async with open_runtime(
            agents=demo_registry(),
            tokens=TOKENS,
            wall_clock=trio_wall_clock,
            store=SQLiteStore(path),
            config=config,
        ) as runtime:
            peer, _ = await connect(runtime, nursery)
            await peer.hello()
            done = await peer.submit("echo", {"n": 1}, idempotency_key="key-1")
            await peer.recv_terminal(done["job_id"])
            running = await peer.submit("ticker", {"count": 100, "interval": 0.01})
            await peer.recv_until(lambda f: f.get("event_seq") == 6)
            # Simulate a crash: the process vanishes without a shutdown, so nothing
            # marks the ticker terminal (abandon the runtime's tasks abruptly).
            last_seen = peer.last_event_seq
            session_id, token = peer.session_id, peer.resume_token
            await trio.sleep(0.05)
        # (open_runtime's shutdown ended the ticker with "runtime shutting down";
        # undo that in the file to model a SIGKILL'd process, whose job was running.)
        db = sqlite3.connect(path)
        data = json.loads(
            db.execute("SELECT data FROM jobs WHERE job_id = ?", (running["job_id"],)).fetchone()[0]
        )
        data["status"], data["terminal"] = "running", None
        db.execute(
            "UPDATE jobs SET data = ? WHERE job_id = ?", (json.dumps(data), running["job_id"])
        )
        db.execute("DELETE FROM events WHERE frame LIKE '%shutting down%'")
        db.commit()
        db.close()
        async with open_runtime(
            agents=demo_registry(),
            tokens=TOKENS,
            wall_clock=trio_wall_clock,
            store=SQLiteStore(path),
            config=config,
        ) as runtime:
            assert runtime.job(done["job_id"]).status == "success"  # type: ignore[union-attr]
            job = runtime.job(running["job_id"])
            assert job is not None
            assert job.status == "error"
            assert job.terminal is not None
            assert job.terminal.message == "runtime restarted"
            again, _ = await connect(runtime, nursery)
            again.last_event_seq = last_seen
            resume = {"session_id": session_id, "resume_token": token, "last_event_seq": last_seen}
            welcome = await again.hello(resume=resume)
            assert welcome["type"] == "session.welcome", welcome
            frames = await again.recv_terminal(running["job_id"])
            terminal = frames[-1]
            assert terminal["type"] == "job.error"
            assert terminal["payload"]["code"] == "INTERNAL_ERROR"
            assert terminal["payload"]["retryable"] is True
            # Idempotency survived the restart: same job, and its terminal.
            replay = await again.submit("echo", {"n": 1}, idempotency_key="key-1")
            assert replay["payload"]["job_id"] == done["job_id"]


async def test_retention_reclaims_finished_jobs(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    config = RuntimeConfig(
        heartbeat_interval_sec=1000, job_retention_sec=3600, janitor_interval_sec=60
    )
    async with open_runtime(
        agents=demo_registry(), tokens=TOKENS, wall_clock=trio_wall_clock, config=config
    ) as runtime:
        peer, _ = await connect(runtime, nursery)
        await peer.hello()
        for i in range(5):
            accepted = await peer.submit("echo", i, idempotency_key=f"k{i}")
            await peer.recv_terminal(accepted["job_id"])
        running = await peer.submit("slow", {"seconds": 10_000})
        assert len(runtime.job_ids()) == 6
        await trio.sleep(3600 + 61)
        # Finished jobs past retention are gone (so are their idempotency keys); the
        # running one stays, whatever its age.
        assert runtime.job_ids() == [running["job_id"]]
        later, _ = await connect(runtime, nursery)  # the idle first one was dropped
        await later.hello()
        fresh = await later.submit("echo", 0, idempotency_key="k0")
        assert fresh["type"] == "job.accepted"


async def test_the_file_stays_bounded_by_the_configured_caps(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "rt.sqlite3"
    store = SQLiteStore(path)
    config = RuntimeConfig(
        heartbeat_interval_sec=1000, max_buffered_events=1000, job_history_limit=1000
    )
    with trio.fail_after(60):
        async with open_runtime(
            agents=demo_registry(),
            tokens=TOKENS,
            wall_clock=trio_wall_clock,
            store=store,
            config=config,
        ) as runtime:
            peer, _ = await connect(runtime, nursery)
            await peer.hello()
            accepted = await peer.submit("chatty", {"n": 10_000})
            await peer.recv_terminal(accepted["job_id"])
            await store.flush()
            assert store._db is not None
            events = store._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            history = store._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
    # Never more than the caps plus one trimming stride (1024) behind.
    assert events <= 1000 + 1024
    assert history <= 1000 + 1024


async def test_a_deep_result_is_stored_without_crashing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Regression (fuzzing): a result a few hundred levels deep passed JSON validation
    but crashed the job nursery while being persisted (a recursive attrs.asdict)."""
    from arcp_trio.runtime.agents import AgentRegistry

    registry = AgentRegistry()

    @registry.agent("deep")
    async def deep(_input: Any, _ctx: Any) -> Any:
        value: Any = 0
        for _ in range(700):
            value = [value]
        return value

    with trio.fail_after(20):
        async with open_runtime(
            agents=registry,
            tokens=TOKENS,
            wall_clock=trio_wall_clock,
            store=SQLiteStore(tmp_path / "rt.sqlite3"),
            config=RuntimeConfig(heartbeat_interval_sec=1000),
        ) as runtime:
            peer, _ = await connect(runtime, nursery)
            await peer.hello()
            accepted = await peer.submit("deep")
            frames = await peer.recv_terminal(accepted["job_id"])
            assert frames[-1]["type"] == "job.result"
