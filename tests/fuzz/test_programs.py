"""Whole close/resume programs, and a real client through a seeded chaos network.

Sync ``@given`` tests: each example is one ``trio.run`` on a fresh MockClock.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from arcp_trio.client import Backoff
from arcp_trio.testing import (
    ChaosPlan,
    MemoryLink,
    config_for_tests,
    open_test_client,
    open_test_runtime,
    run_on_mock_clock,
    run_program,
)
from arcp_trio.testing.strategies import close_resume_sequences
from tests.fuzz import stats
from tests.fuzz.budget import DEMO_AGENTS, budget, demo_inputs
from tests.fuzz.known_bugs import KNOWN_BUGS

PROGRAMS = "close/resume programs"
CHAOS = "client through chaos"


@settings(max_examples=budget(25, 600))
@given(
    program=close_resume_sequences(
        min_size=8, max_size=40, agents=DEMO_AGENTS, inputs=demo_inputs()
    )
)
def test_close_resume_programs(program: list[Any]) -> None:
    stats.example(PROGRAMS)
    report = run_on_mock_clock(functools.partial(run_program, program, lenient=KNOWN_BUGS))
    stats.step(PROGRAMS, report.steps)


chaos_plans = st.builds(
    ChaosPlan,
    drop=st.sampled_from([0.0, 0.01, 0.05]),
    stall=st.sampled_from([0.0, 0.005, 0.01]),
    delay=st.sampled_from([0.0, 0.1, 0.3]),
    max_delay=st.sampled_from([0.25, 1.0]),
    half_write=st.sampled_from([0.0, 0.01, 0.03]),
    duplicate_connect=st.sampled_from([0.0, 0.5, 1.0]),
    refuse_connect=st.sampled_from([0.0, 0.3]),
)


def seqs_after_hello(sent: list[str], received: list[str]) -> tuple[int, list[int]]:
    """The ``last_event_seq`` a connection's hello named, and the seqs it then got."""
    try:
        hello = json.loads(sent[0]) if sent else {}
    except ValueError:
        return 0, []  # the hello itself was torn: nothing came back
    resume = (hello.get("payload") or {}).get("resume") or {}
    seqs = []
    for text in received:
        try:
            frame = json.loads(text)
        except ValueError:
            continue  # a frame torn in half by the chaos: the connection ended there
        if frame.get("event_seq") is not None:
            seqs.append(frame["event_seq"])
    return int(resume.get("last_event_seq", 0)), seqs


async def client_through_chaos(seed: int, plan: ChaosPlan) -> int:
    config = config_for_tests(resume_window_sec=3600)
    async with open_test_runtime(config=config) as runtime, trio.open_nursery() as nursery:
        link = MemoryLink(runtime, nursery, seed=seed, record=True)
        async with open_test_client(link, backoff=Backoff(initial=0.25, cap=4)) as client:
            # The first connection is made calm (open_client reports its failure to
            # the caller); chaos starts once it is up.
            link.plan = plan
            link.current.plan = plan
            with trio.fail_after(3600):
                handles = [
                    await client.submit("ticker@1.0.0", {"count": 6, "interval": 1})
                    for _ in range(3)
                ]
                for handle in handles:
                    ticks = [
                        e.body["current"] async for e in handle.events() if e.kind == "progress"
                    ]
                    assert ticks == [1, 2, 3, 4, 5, 6], ticks
                    assert (await handle.result()).result == {"ticks": 6}
            reconnects = client.reconnects
        nursery.cancel_scope.cancel()
    for transport in link.transports:
        last, seqs = seqs_after_hello(transport.sent, transport.received)
        assert seqs == list(range(last + 1, last + 1 + len(seqs))), (last, seqs)
    for reply in link.duplicate_replies:
        # A late duplicate of a handshake never takes the session over.
        if reply.get("type") == "session.error":
            assert reply["payload"]["code"] == "PERMISSION_DENIED", reply
    return reconnects


@settings(max_examples=budget(15, 400))
@given(seed=st.integers(0, 2**32 - 1), plan=chaos_plans)
def test_client_through_a_chaos_network(seed: int, plan: ChaosPlan) -> None:
    stats.example(CHAOS)
    run_on_mock_clock(client_through_chaos, seed, plan)
