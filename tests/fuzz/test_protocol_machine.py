"""A hypothesis state machine over protocol/: synchronous, no Trio, thousands of steps a second.

The machine keeps sessions (an ``EventBuffer``, a ``ResumeWindow``, a
``HeartbeatMonitor``) and jobs (``JobRecord`` in a ``JobTable``) exactly as the
runtime wires them, and drives them with submit, emit, finish, detach, resume,
ack, subscribe-with-history, list_jobs pagination, heartbeat frames and the
passage of time. A plain reference model (lists, no cleverness) says what each
should return; the invariants run after every step:

* a session's ``event_seq`` is gap-free from 1; the buffer holds exactly the last
  ``min(cap, last - acked)`` stamped frames, byte for byte;
* ``replay_after(n)`` returns exactly the frames after ``n``, or refuses
  (``ResumeWindowExpired`` when no longer held, ``InvalidRequest`` beyond the end);
* evictions are counted and announced once per take, never silently;
* a job's history is bounded and ``history_after`` reports what it no longer holds;
* a job ends exactly once; idempotency keys return the same job or DUPLICATE_KEY;
* keyset pagination lists each of a principal's jobs once, in order, while jobs
  are added between pages;
* heartbeats: a connection is declared dead exactly after two silent intervals,
  pinged at most once per interval, and ``next_wakeup`` always moves forward.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from arcp_trio.protocol.eventlog import EventBuffer
from arcp_trio.protocol.job import JobRecord, JobStatus, JobTable, Terminal, fingerprint
from arcp_trio.protocol.leases import parse_lease
from arcp_trio.protocol.session import HeartbeatAction, HeartbeatMonitor, ResumeWindow
from arcp_trio.wire.errors import DuplicateKey, InvalidRequest, ResumeWindowExpired
from arcp_trio.wire.timestamps import EPOCH
from tests.fuzz import stats
from tests.fuzz.budget import budget

NAME = "protocol machine"


@attrs.define(eq=False)
class SessionModel:
    principal: str
    buffer: EventBuffer
    window: ResumeWindow
    monitor: HeartbeatMonitor
    stamped: list[str] = attrs.field(factory=list)
    held: deque[int] = attrs.field(factory=deque)
    acked: int = 0
    evicted_total: int = 0
    noticed_total: int = 0
    #: Seqs of held overflow notices.
    notices: set[int] = attrs.field(factory=set)
    acked_since_notice: bool = True
    notice_owed: bool = False
    attached: bool = True
    watching: set[str] = attrs.field(factory=set)


@attrs.define(eq=False)
class JobModel:
    record: JobRecord
    events: int = 0
    finished: bool = False


class ProtocolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        stats.example(NAME)
        self.now = 0.0
        self.cap = 1
        self.history_limit = 1
        self.interval = 1.0
        self.window_sec = 1.0
        self.table = JobTable()
        self.sessions: list[SessionModel] = []
        self.jobs: list[JobModel] = []
        self.keys: dict[tuple[str, str], tuple[str, str]] = {}

    # -- setup -------------------------------------------------------------------------

    @initialize(
        cap=st.integers(1, 24),
        history_limit=st.integers(1, 24),
        interval=st.sampled_from([1.0, 5.0, 8.0, 10.0, 30.0, 0.1]),
        window_sec=st.sampled_from([1.0, 10.0, 60.0, 600.0]),
        start=st.floats(0, 10_000, allow_nan=False),
    )
    def setup(
        self, cap: int, history_limit: int, interval: float, window_sec: float, start: float
    ) -> None:
        self.cap, self.history_limit = cap, history_limit
        self.interval, self.window_sec = interval, window_sec
        self.now = start

    def _step(self) -> None:
        stats.step(NAME)

    def _session(self, index: int) -> SessionModel:
        return self.sessions[index % len(self.sessions)]

    def _job(self, index: int) -> JobModel:
        return self.jobs[index % len(self.jobs)]

    def _stamp(self, session: SessionModel, job_id: str, frame: str) -> int:
        buffer = session.buffer
        seq = buffer.next_seq()
        assert seq == len(session.stamped) + 1
        buffer.append(seq, job_id, frame)
        session.stamped.append(frame)
        session.held.append(seq)
        while len(session.held) > self.cap:
            gone = session.held.popleft()
            session.notices.discard(gone)
            if gone > session.acked:
                session.evicted_total += 1
        return seq

    def _deliver(self, session: SessionModel, job_id: str, frame: str) -> None:
        """What the runtime does per event: stamp it, then announce an overflow."""
        evicted_before = session.evicted_total
        self._stamp(session, job_id, frame)
        notice = session.buffer.take_overflow_notice()
        if notice is not None:
            assert session.evicted_total > evicted_before or session.notice_owed
            assert not (session.notices and not session.acked_since_notice), (
                "a second overflow notice in one episode"
            )
            assert notice.evicted_through == session.buffer.evicted_through
            session.noticed_total += notice.evicted_count
            seq = self._stamp(session, job_id, f"{job_id}:notice")
            session.notices.add(seq)
            session.acked_since_notice = False
        assert session.noticed_total <= session.evicted_total
        if session.evicted_total > evicted_before:
            # §6.5: never a silent gap. While evicting, a notice is always held.
            assert session.notices, "events were evicted and no overflow notice is held"
        session.notice_owed = (
            session.evicted_total > evicted_before and notice is None and (not session.notices)
        )

    # -- sessions ----------------------------------------------------------------------

    @rule(principal=st.sampled_from(["alice", "bob"]))
    def open_session(self, principal: str) -> None:
        self._step()
        self.sessions.append(
            SessionModel(
                principal=principal,
                buffer=EventBuffer(max_events=self.cap),
                window=ResumeWindow(window_sec=self.window_sec),
                monitor=HeartbeatMonitor(interval=self.interval, last_received=self.now),
            )
        )

    @precondition(lambda self: self.sessions)
    @rule(index=st.integers(0, 20))
    def detach(self, index: int) -> None:
        self._step()
        session = self._session(index)
        if session.attached:
            session.attached = False
            session.window.detach(self.now)

    @precondition(lambda self: self.sessions)
    @rule(
        index=st.integers(0, 20),
        choice=st.sampled_from(["last", "rewind", "acked", "zero", "beyond"]),
        amount=st.integers(0, 30),
    )
    def resume(self, index: int, choice: str, amount: int) -> None:
        self._step()
        session = self._session(index)
        buffer = session.buffer
        last = buffer.last_seq
        n = {
            "last": last,
            "rewind": max(0, last - amount),
            "acked": session.acked,
            "zero": 0,
            "beyond": last + 1 + amount,
        }[choice]
        first_held = session.held[0] if session.held else last + 1
        if n > last:
            with pytest.raises(InvalidRequest):
                buffer.replay_after(n)
        elif n + 1 < first_held:
            with pytest.raises(ResumeWindowExpired):
                buffer.replay_after(n)
        else:
            replay = buffer.replay_after(n)
            assert [event.seq for event in replay] == list(range(n + 1, last + 1))
            assert [event.frame for event in replay] == session.stamped[n:]
            session.attached = True
            session.window.attach()
            session.monitor = HeartbeatMonitor(interval=self.interval, last_received=self.now)

    @precondition(lambda self: self.sessions)
    @rule(index=st.integers(0, 20), lag=st.integers(-2, 10))
    def ack(self, index: int, lag: int) -> None:
        self._step()
        session = self._session(index)
        seq = session.buffer.last_seq - lag
        if seq < 0:
            return
        if seq > session.buffer.last_seq:
            with pytest.raises(InvalidRequest):
                session.buffer.ack(seq)
            return
        before = len(session.held)
        freed = session.buffer.ack(seq)
        if seq > session.acked:
            session.acked = seq
            session.acked_since_notice = True
            while session.held and session.held[0] <= seq:
                session.notices.discard(session.held.popleft())
        assert freed == before - len(session.held)

    # -- time and heartbeats -------------------------------------------------------------

    @rule(seconds=st.floats(0, 100, allow_nan=False) | st.sampled_from([0.25, 1.0, 8.0]))
    def advance(self, seconds: float) -> None:
        self._step()
        self.now += seconds
        for session in self.sessions:
            deadline = session.window.deadline
            if session.attached:
                assert deadline is None
                assert not session.window.expired(self.now)
            else:
                assert deadline is not None
                assert session.window.expired(self.now) == (self.now >= deadline)

    @precondition(lambda self: self.sessions)
    @rule(index=st.integers(0, 20))
    def frame_arrives(self, index: int) -> None:
        self._step()
        self._session(index).monitor.received(self.now)

    @precondition(lambda self: self.sessions)
    @rule(index=st.integers(0, 20))
    def pong_arrives(self, index: int) -> None:
        self._step()
        self._session(index).monitor.answered(self.now)

    @precondition(lambda self: self.sessions)
    @rule(index=st.integers(0, 20), at_wakeup=st.booleans())
    def heartbeat_poll(self, index: int, at_wakeup: bool) -> None:
        self._step()
        monitor = self._session(index).monitor
        wakeup = monitor.next_wakeup()
        if at_wakeup:
            # What the heartbeat task does: sleep_until(next_wakeup()), then poll.
            self.now = max(self.now, wakeup)
        # The deadlines, as sums (what a clock reaches), not as differences.
        dead_at = monitor.last_received + 2 * self.interval
        # A pong proves the peer alive but keeps the next ping's time (last_heard).
        ping_at = max(monitor.last_heard, monitor.last_ping_sent) + self.interval
        action = monitor.poll(self.now)
        if self.now >= dead_at:
            assert action is HeartbeatAction.DEAD
            return
        assert action is not HeartbeatAction.DEAD
        # §6.4: pinged after one quiet interval, at most once per interval.
        assert (action is HeartbeatAction.SEND_PING) == (self.now >= ping_at)
        # Liveness of the heartbeat loop: polling at the wakeup must move it on.
        assert monitor.next_wakeup() > self.now or action is HeartbeatAction.SEND_PING, (
            f"next_wakeup() stays at {monitor.next_wakeup()!r} after poll({self.now!r})"
        )

    # -- jobs --------------------------------------------------------------------------

    @precondition(lambda self: self.sessions)
    @rule(
        index=st.integers(0, 20),
        key=st.none() | st.sampled_from(["k1", "k2"]),
        agent=st.sampled_from(["a", "b"]),
    )
    def submit(self, index: int, key: str | None, agent: str) -> None:
        self._step()
        session = self._session(index)
        payload = {"agent": agent, "idempotency_key": key}
        print_ = fingerprint(payload)
        if key is not None:
            known = self.keys.get((session.principal, key))
            if known is not None and known[0] != print_:
                with pytest.raises(DuplicateKey):
                    self.table.find_idempotent(session.principal, key, print_)
                return
            found = self.table.find_idempotent(session.principal, key, print_)
            if known is not None:
                assert found is not None
                assert found.job_id == known[1]
                return
            assert found is None
        job_id = f"job_{len(self.jobs):026d}"
        record = JobRecord(
            job_id=job_id,
            ordinal=self.table.next_ordinal(),
            principal=session.principal,
            session_id=f"sess_{index}",
            agent_name=agent,
            agent_version=None,
            lease=parse_lease({}),
            lease_constraints=None,
            budget=None,
            trace_id=None,
            parent_job_id=None,
            delegate_id=None,
            created_at=EPOCH + timedelta(seconds=self.now),
            accepted_at="",
            idempotency_key=key,
            history_limit=self.history_limit,
        )
        self.table.add(record, fingerprint_=print_ if key is not None else None)
        if key is not None:
            self.keys[(session.principal, key)] = (print_, job_id)
        record.transition(JobStatus.RUNNING)
        self.jobs.append(JobModel(record))
        session.watching.add(job_id)

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 20), count=st.integers(1, 12))
    def emit(self, index: int, count: int) -> None:
        self._step()
        job = self._job(index)
        if job.finished:
            return
        for _ in range(count):
            job.events += 1
            payload = f'{{"kind":"log","body":{{"n":{job.events}}}}}'
            entry = job.record.record_event(f"f{job.events}", "log", payload)
            assert entry.number == job.events
            for session in self.sessions:
                if job.record.job_id in session.watching:
                    self._deliver(session, job.record.job_id, f"{job.record.job_id}:{payload}")

    @precondition(lambda self: self.jobs)
    @rule(
        index=st.integers(0, 20),
        status=st.sampled_from(
            [JobStatus.SUCCESS, JobStatus.ERROR, JobStatus.CANCELLED, JobStatus.TIMED_OUT]
        ),
    )
    def finish(self, index: int, status: JobStatus) -> None:
        self._step()
        job = self._job(index)
        terminal = Terminal(status=status, completed_at="t")
        if job.finished:
            with pytest.raises(ValueError, match="not allowed"):
                job.record.finish(terminal)
            return
        job.record.finish(terminal)
        job.finished = True
        assert job.record.is_terminal
        for session in self.sessions:
            if job.record.job_id in session.watching:
                self._deliver(session, job.record.job_id, f"{job.record.job_id}:terminal")

    @precondition(lambda self: self.jobs and self.sessions)
    @rule(index=st.integers(0, 20), job_index=st.integers(0, 20), after=st.integers(0, 40))
    def subscribe_with_history(self, index: int, job_index: int, after: int) -> None:
        self._step()
        session = self._session(index)
        job = self._job(job_index)
        window = job.record.history_after(after)
        assert window is not None  # RAM is the only copy here
        entries, missing = window
        held = list(range(max(1, job.events - self.history_limit + 1), job.events + 1))
        assert [entry.number for entry in entries] == [i for i in held if i > after]
        first_held = held[0] if held else job.events + 1
        assert missing == max(0, first_held - after - 1)
        if not job.finished:
            session.watching.add(job.record.job_id)

    @precondition(lambda self: self.jobs)
    @rule(
        principal=st.sampled_from(["alice", "bob"]),
        limit=st.integers(1, 5),
        add_between=st.booleans(),
    )
    def list_jobs(self, principal: str, limit: int, add_between: bool) -> None:
        self._step()
        before = [job.record.job_id for job in self.jobs if job.record.principal == principal]
        seen: list[str] = []
        cursor: str | None = None
        added = 0
        for _ in range(len(self.jobs) + 8):
            page, cursor = self.table.list_for(
                principal,
                statuses=None,
                agent=None,
                created_after=None,
                limit=limit,
                cursor=cursor,
            )
            assert len(page) <= limit
            seen += [job.job_id for job in page]
            if cursor is None:
                break
            if add_between and added < 3:
                added += 1
                self.submit(0, None, "a")
        else:
            raise AssertionError("pagination did not end")
        assert len(seen) == len(set(seen)), "a job was listed twice"
        assert seen[: len(before)] == before, "jobs missing or out of order"
        ordinals = [self.table.get(job_id).ordinal for job_id in seen]  # type: ignore[union-attr]
        assert ordinals == sorted(ordinals)
        assert all(self.table.get(job_id).principal == principal for job_id in seen)  # type: ignore[union-attr]

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def buffers_match_the_model(self) -> None:
        for session in self.sessions:
            buffer = session.buffer
            events = list(buffer)
            assert [event.seq for event in events] == list(session.held)
            assert len(events) <= self.cap
            assert len(events) == min(self.cap, buffer.last_seq - session.acked)
            assert buffer.last_seq == len(session.stamped)
            for event in events:
                assert event.seq > session.acked
                assert event.frame == session.stamped[event.seq - 1]
            assert buffer.acked_through == session.acked
            assert buffer.evicted_total == session.evicted_total
            assert session.notices <= {event.seq for event in events}
            assert buffer.first_held_seq() == (
                session.held[0] if session.held else buffer.last_seq + 1
            )

    @invariant()
    def histories_are_bounded(self) -> None:
        for job in self.jobs:
            history = job.record.history
            assert len(history) <= self.history_limit
            assert [entry.number for entry in history] == list(
                range(job.events - len(history) + 1, job.events + 1)
            )
            assert job.record.last_event_index == job.events
            assert job.record.is_terminal == job.finished


ProtocolMachine.TestCase.settings = settings(
    max_examples=budget(60, 2400),
    stateful_step_count=budget(40, 50),
)
TestProtocolMachine = ProtocolMachine.TestCase
