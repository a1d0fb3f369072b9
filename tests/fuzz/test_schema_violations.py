"""Property: for every client message type, a frame with one field of the wrong
type, out of range, oversized or missing gets ``INVALID_REQUEST`` naming the field's
path and the frame's id, and the session stays usable (§12, WIRE.md "Errors are
correlated", docs/limits.md).

Rules: one in-memory runtime per example on MockClock (each example is a few
milliseconds); ``testing.schema`` breaks the fields; the session is then asked to do
real work (a ping, a job to its result). A first-frame type (hello, resume) is
answered and its connection closed; a new connection then opens a session.
"""

from __future__ import annotations

import json

import trio
import trio.testing
from hypothesis import given, settings

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.testing.schema import FIRST_FRAME_TYPES, SchemaViolation, schema_violations
from arcp_trio.transport.base import TransportError
from tests.fuzz import stats
from tests.fuzz.budget import budget
from tests.helpers import TOKENS, Frame, Peer, connect, trio_wall_clock

NAME = "schema violations (in-memory runtime)"


def _assert_refused(reply: Frame, violation: SchemaViolation) -> None:
    assert reply["type"] == "session.error", (violation, reply)
    payload = reply["payload"]
    assert payload["code"] == "INVALID_REQUEST", (violation, payload)
    assert payload["request_id"] == violation.frame_id, (violation, payload)
    errors = payload["details"]["errors"]
    assert any(e.endswith(f"@ {violation.path}") for e in errors), (violation, errors)


async def _still_usable(peer: Peer) -> None:
    await peer.send("session.ping", {"nonce": "after", "sent_at": "2026-01-01T00:00:00Z"})
    pong = await peer.recv_type("session.pong", "session.error")
    assert pong["type"] == "session.pong"
    assert pong["payload"]["ping_nonce"] == "after"
    accepted = await peer.submit("echo", {"still": "here"})
    assert accepted["type"] == "job.accepted", accepted
    terminal = (await peer.recv_terminal(accepted["payload"]["job_id"]))[-1]
    assert terminal["payload"]["result"]["echo"] == {"still": "here"}


async def _check(violation: SchemaViolation) -> None:
    async with (
        open_runtime(
            agents=demo_registry(),
            tokens=TOKENS,
            wall_clock=trio_wall_clock,
            config=RuntimeConfig(heartbeat_interval_sec=1000),
        ) as runtime,
        trio.open_nursery() as nursery,
    ):
        peer, _ = await connect(runtime, nursery)
        text = json.dumps(violation.frame)
        if violation.message_type in FIRST_FRAME_TYPES:
            await peer.send_raw(text)
            _assert_refused(await peer.recv(), violation)
            try:
                extra = await peer.recv()
            except TransportError:
                pass  # refused handshakes end their connection
            else:
                raise AssertionError(f"a refused handshake went on: {extra}")
            peer, _ = await connect(runtime, nursery)
            assert (await peer.hello())["type"] == "session.welcome"
        else:
            assert (await peer.hello())["type"] == "session.welcome"
            await peer.send_raw(text)
            _assert_refused(await peer.recv_type("session.error"), violation)
        await _still_usable(peer)
        nursery.cancel_scope.cancel()


@settings(max_examples=budget(150, 1500))
@given(violation=schema_violations())
def test_every_client_field_fails_closed_and_the_session_goes_on(
    violation: SchemaViolation,
) -> None:
    stats.example(NAME)
    trio.run(_check, violation, clock=trio.testing.MockClock(autojump_threshold=0))
