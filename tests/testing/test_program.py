"""The close/resume program runner: it runs every step, and it catches broken runtimes.

Rules: every program runs on a fresh MockClock (``run_on_mock_clock``). The
"catches" tests break one runtime guarantee with a monkeypatch and expect the
runner's ``InvariantViolation``: a checker that never fails checks nothing.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import pytest

from arcp_trio.protocol.eventlog import EventBuffer
from arcp_trio.runtime.session import Session
from arcp_trio.testing import (
    Ack,
    Advance,
    Cancel,
    Close,
    Drop,
    Emit,
    Finish,
    HeartbeatStall,
    InvariantViolation,
    ListJobs,
    Open,
    Resume,
    Submit,
    Subscribe,
    Unsubscribe,
    run_on_mock_clock,
    run_program,
)
from tests.fuzz.known_bugs import KNOWN_BUGS

if TYPE_CHECKING:
    from arcp_trio.protocol.eventlog import BufferedEvent
    from arcp_trio.protocol.job import JobRecord
    from arcp_trio.testing import Step

EVERY_STEP: list[Step] = [
    Open("alice", "peer", "spec"),
    Open("alice", "client", "spec"),
    Open("bob", "peer", "reference"),
    Open("alice", "client", "reference"),
    Submit(0),
    Emit(0, 3),
    Submit(1),
    Emit(1, 5),
    Submit(3, agent="ticker@1.0.0", input={"count": 3, "interval": 1}),
    Drop(0, hold=True),
    Emit(0, 4),
    Resume(0, "stale_token"),
    Resume(0, "wrong_principal"),
    Resume(0, "valid", rewind=2),
    Subscribe(2, 0),
    Subscribe(0, 1, history=False),
    Cancel(2, 0),
    Cancel(0, 1),
    Ack(0, 1),
    Drop(1, hold=True),
    Emit(1, 3),
    Resume(1, "stale_token"),
    Resume(1),
    HeartbeatStall(1),
    HeartbeatStall(0),
    Close(0),
    Advance(10),
    Resume(0, "wrong_dialect", form="flat"),
    Resume(0, "wrong_dialect", form="ruby"),
    Resume(0, "wrong_dialect", form="resume_frame"),
    Finish(0),
    Cancel(0, 0),
    Close(1),
    Emit(1, 2),
    Resume(1, "valid"),
    Unsubscribe(0, 1),
    ListJobs(0),
    Submit(2),
    Finish(3, fail=True),
    Resume(2, "expired"),
    Resume(3, "expired"),
    Advance(70),
]


def run(program: list[Step], **options: Any) -> Any:
    return run_on_mock_clock(functools.partial(run_program, program, lenient=KNOWN_BUGS, **options))


def test_every_kind_of_step_runs_clean() -> None:
    report = run(EVERY_STEP)
    assert report.steps == len(EVERY_STEP)
    assert report.sessions == 4
    assert report.jobs == 4
    assert report.frames > 50


def test_a_user_agent_can_be_fuzzed() -> None:
    from arcp_trio.runtime.agents import AgentRegistry

    registry = AgentRegistry()

    @registry.agent("doubler")
    async def doubler(input_: Any, ctx: Any) -> Any:
        await ctx.log("doubling")
        return input_ * 2

    program: list[Step] = [
        Open("alice", "client", "spec"),
        Submit(0, agent="doubler", input=21),
        Drop(0, hold=True),
        Advance(4),
        Resume(0),
    ]
    report = run(program, agents=registry)
    assert report.jobs == 1


CATCH: list[Step] = [
    Open("alice", "peer", "spec"),
    Submit(0),
    Emit(0, 5),
    Drop(0, hold=True),
    Emit(0, 5),
    Resume(0, "valid"),
    Resume(0, "stale_token"),
]


def test_it_catches_a_replay_that_skips_an_event(monkeypatch: pytest.MonkeyPatch) -> None:
    original = EventBuffer.cached_after

    def lossy(self: EventBuffer, last_event_seq: int) -> list[BufferedEvent] | None:
        events = original(self, last_event_seq)
        return None if events is None else events[1:]

    monkeypatch.setattr(EventBuffer, "cached_after", lossy)
    with pytest.raises(InvariantViolation, match="gap"):
        run(CATCH)


def test_it_catches_a_stale_token_that_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Session, "token_matches", lambda self, token: True)
    with pytest.raises(InvariantViolation, match="expected PERMISSION_DENIED"):
        run(CATCH)


def test_it_catches_a_leak_to_another_principal() -> None:
    def everyone(principal: str, job: JobRecord) -> bool:
        return True

    program: list[Step] = [
        Open("alice", "peer", "spec"),
        Open("bob", "peer", "spec"),
        Submit(0),
        Subscribe(1, 0),
        Emit(0, 2),
    ]
    with pytest.raises(InvariantViolation, match="another principal"):
        run(program, observe_policy=everyone)


def test_it_catches_a_job_ended_by_its_session(monkeypatch: pytest.MonkeyPatch) -> None:
    from arcp_trio.protocol.job import JobStatus, Terminal
    from arcp_trio.runtime.handshake import Handshake
    from arcp_trio.runtime.jobs import JobRunner

    runners: list[JobRunner] = []
    original_init = JobRunner.__init__
    original_detach = Handshake.detach

    def tracked(self: JobRunner, **kwargs: Any) -> None:
        original_init(self, **kwargs)
        runners.append(self)

    def cancel_on_detach(self: Handshake, connection: Any) -> None:
        original_detach(self, connection)
        why = Terminal(status=JobStatus.CANCELLED, completed_at="", code="CANCELLED")
        for job_id in list(connection.session.submitted):
            runners[-1].end(job_id, why)  # the C# bug

    monkeypatch.setattr(JobRunner, "__init__", tracked)
    monkeypatch.setattr(Handshake, "detach", cancel_on_detach)
    with pytest.raises(InvariantViolation, match="the program made it run"):
        run([Open("alice", "peer", "spec"), Submit(0), Drop(0)])


OFFLINE_UNSUBSCRIBE: list[Step] = [
    Open("alice", "peer", "spec"),
    Open("alice", "client", "spec"),
    Submit(0),
    Subscribe(1, 0),
    Drop(1, hold=True),
    Emit(0, 2),  # buffered for the offline client's session: replayed on resume
    Unsubscribe(1, 0),
    Resume(1, "valid"),
    Emit(0, 2),  # after the unsubscribe reached the runtime: not for the client
]


def test_an_offline_unsubscribe_takes_effect_on_reconnect() -> None:
    """The model's rule (§7.6): a client that leaves a subscription while offline
    still gets what was stamped before the runtime heard of it, and nothing after."""
    report = run(OFFLINE_UNSUBSCRIBE)
    assert report.steps == len(OFFLINE_UNSUBSCRIBE)


def test_it_catches_an_unsubscribe_lost_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from arcp_trio.client.client import Client

    monkeypatch.setattr(Client, "_unsubscribe", lambda self, job_id: None)
    with pytest.raises(InvariantViolation, match=r"unsubscribe of \S+ was lost"):
        run(OFFLINE_UNSUBSCRIBE)
