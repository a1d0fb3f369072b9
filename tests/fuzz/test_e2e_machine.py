"""A hypothesis state machine over the real runtime and the real client, on MockClock.

Each run gets a fresh runtime on a fresh ``MockClock`` inside a ``MockClockPortal``
(Trio in a background thread; virtual time moves only while a rule runs). Every
rule is one close/resume step (``arcp_trio.testing.program``): sessions are raw
peers or real clients, in either wire dialect, and get dropped, closed, stalled,
held offline, resumed (validly, with a stale token, after the window, as the wrong
principal, in another dialect's syntax), acknowledged, subscribed and cancelled
while puppet jobs emit. ``ProgramRunner`` checks every invariant after every step;
teardown reconnects everyone, ends the jobs and checks terminal delivery.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from arcp_trio.testing import MockClockPortal, Open, ProgramRunner, Step
from arcp_trio.testing.strategies import program_steps
from tests.fuzz import stats
from tests.fuzz.budget import DEMO_AGENTS, budget, demo_inputs
from tests.fuzz.known_bugs import KNOWN_BUGS

NAME = "end-to-end machine"

_opens = st.builds(
    Open,
    principal=st.sampled_from(["alice", "bob"]),
    kind=st.sampled_from(["peer", "client"]),
    dialect=st.sampled_from(["spec", "reference"]),
)


class EndToEndMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        stats.example(NAME)
        self.portal = MockClockPortal()
        self.runner: ProgramRunner = self.portal.enter(ProgramRunner.open(lenient=KNOWN_BUGS))

    def _execute(self, step: Step) -> None:
        stats.step(NAME)
        self.portal.call(self.runner.execute, step)

    @initialize(opens=st.lists(_opens, min_size=1, max_size=3))
    def open_sessions(self, opens: list[Open]) -> None:
        for step in opens:
            self._execute(step)

    @rule(step=program_steps(agents=DEMO_AGENTS, inputs=demo_inputs()))
    def step(self, step: Step) -> None:
        self._execute(step)

    def teardown(self) -> None:
        try:
            self.portal.call(self.runner.finish)
        finally:
            self.portal.close()


EndToEndMachine.TestCase.settings = settings(
    max_examples=budget(12, 1500),
    stateful_step_count=budget(25, 50),
)
TestEndToEndMachine = EndToEndMachine.TestCase
