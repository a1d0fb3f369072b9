"""Handshake (§6.1, §6.2) and bad input: every bad frame gets the right code, correlated
by ``request_id``, and disturbs no other session or job.

Rules: in-memory transports, MockClock (autojump).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.protocol.session import ALL_FEATURES, SPEC_SHAPES_FEATURE
from arcp_trio.transport.base import TransportBroken
from arcp_trio.wire.ids import new_ulid
from tests.helpers import REFERENCE_FEATURES, Peer, connect

if TYPE_CHECKING:
    from arcp_trio.runtime.runtime import Runtime


async def test_welcome_shape(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    welcome = await peer.hello()
    payload = welcome["payload"]
    assert welcome["type"] == "session.welcome"
    assert welcome["session_id"].startswith("sess_")
    assert payload["session_id"] == welcome["session_id"]
    assert payload["resume_token"].startswith("rtk_")
    assert payload["resume_window_sec"] == 60
    assert payload["heartbeat_interval_sec"] == 10
    assert payload["runtime"]["name"] == "arcp-trio"
    assert payload["accepted_at"].endswith("Z")
    assert payload["capabilities"]["features"] == list(ALL_FEATURES)
    agents = {a["name"]: a for a in payload["capabilities"]["agents"]}
    assert agents["echo"] == {"name": "echo", "versions": ["1.0.0", "2.0.0"], "default": "2.0.0"}
    assert set(agents) == {
        "echo",
        "ticker",
        "chunker",
        "slow",
        "spender",
        "chatty",
        "toucher",
        "delegator",
    }


async def test_without_agent_versions_the_inventory_is_names(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    welcome = await peer.hello(features=["ack"])
    assert "echo" in welcome["payload"]["capabilities"]["agents"]
    # No heartbeat negotiated: no interval advertised, and no pings sent.
    assert "heartbeat_interval_sec" not in welcome["payload"]


async def test_wrong_token_is_unauthenticated(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    reply = await peer.hello(token="nope")
    assert reply["type"] == "session.error"
    assert reply["payload"]["code"] == "UNAUTHENTICATED"
    assert reply["payload"]["retryable"] is False
    with pytest.raises(TransportBroken):
        await peer.recv()


async def test_first_frame_must_be_hello(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    request_id = await peer.send("job.submit", {"agent": "echo"})
    reply = await peer.recv()
    assert reply["payload"]["code"] == "INVALID_REQUEST"
    assert reply["payload"]["request_id"] == request_id


async def test_garbage_before_hello_is_answered(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.send_raw("this is not json")
    reply = await peer.recv()
    assert reply["type"] == "session.error"
    assert reply["payload"]["code"] == "INVALID_REQUEST"


async def test_handshake_timeout_closes_the_connection(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    with pytest.raises(TransportBroken):
        await peer.recv(timeout=runtime.config.handshake_timeout_sec + 1)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("not json at all", "not valid JSON"),
        ("[1, 2, 3]", "JSON object"),
        ('"a string"', "JSON object"),
        (json.dumps({"type": "job.submit", "payload": {}}), "$.id"),
        (json.dumps({"id": "lowercase-bad", "type": "job.submit"}), "$.id"),
        (json.dumps({"id": new_ulid(), "type": "job.frobnicate"}), "unknown envelope type"),
        (json.dumps({"id": new_ulid(), "type": "job.submit", "payload": {}}), "$.payload.agent"),
        (
            json.dumps({"id": new_ulid(), "type": "job.submit", "payload": {"agent": 7}}),
            "$.payload.agent",
        ),
        (
            json.dumps({"id": new_ulid(), "type": "job.submit", "payload": {"agent": "Bad Name"}}),
            "malformed agent reference",
        ),
        (
            json.dumps(
                {
                    "id": new_ulid(),
                    "type": "job.submit",
                    "trace_id": "00-abc-01",
                    "payload": {"agent": "echo"},
                }
            ),
            "trace_id",
        ),
        (json.dumps({"id": new_ulid(), "arcp": "2.0", "type": "session.ping"}), "$.arcp"),
        (json.dumps({"id": new_ulid(), "type": "session.hello", "payload": {}}), "$.payload"),
        (json.dumps({"id": new_ulid(), "type": "job.result", "payload": {}}), "$.payload"),
        (
            json.dumps(
                {
                    "id": new_ulid(),
                    "type": "job.submit",
                    "payload": {"agent": "echo", "max_runtime_sec": 0},
                }
            ),
            "max_runtime_sec",
        ),
        (
            json.dumps(
                {
                    "id": new_ulid(),
                    "type": "job.submit",
                    "payload": {"agent": "echo", "lease_request": {"fs.raed": ["/x"]}},
                }
            ),
            "unknown lease namespace",
        ),
        (
            json.dumps(
                {
                    "id": new_ulid(),
                    "type": "job.submit",
                    "payload": {"agent": "echo", "lease_request": {"cost.budget": ["5$"]}},
                }
            ),
            "amount",
        ),
        (
            json.dumps(
                {
                    "id": new_ulid(),
                    "type": "job.submit",
                    "payload": {
                        "agent": "echo",
                        "lease_constraints": {"expires_at": "2020-01-01T00:00:00Z"},
                    },
                }
            ),
            "future",
        ),
        (
            json.dumps(
                {
                    "id": new_ulid(),
                    "type": "job.submit",
                    "payload": {
                        "agent": "echo",
                        "lease_constraints": {"expires_at": "2099-01-01T00:00:00+02:00"},
                    },
                }
            ),
            "UTC",
        ),
    ],
)
async def test_bad_frames_get_invalid_request_and_the_session_goes_on(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock, raw: str, fragment: str
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.hello()
    await peer.send_raw(raw)
    reply = await peer.recv_type("session.error")
    assert reply["payload"]["code"] == "INVALID_REQUEST", reply
    assert fragment in json.dumps(reply["payload"]), reply
    try:
        frame_id = json.loads(raw).get("id")
    except (ValueError, AttributeError):
        frame_id = None
    assert reply["payload"].get("request_id") == frame_id
    # The session is unharmed: a submit still works.
    accepted = await peer.submit("echo", {"still": "alive"})
    frames = await peer.recv_terminal(accepted["job_id"])
    assert frames[-1]["payload"]["result"]["echo"] == {"still": "alive"}


async def test_oversized_frame_is_refused_without_closing(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.hello()
    huge = json.dumps(
        {
            "id": new_ulid(),
            "type": "job.submit",
            "payload": {"agent": "echo", "input": "x" * (2 << 20)},
        }
    )
    await peer.send_raw(huge)
    reply = await peer.recv_type("session.error")
    assert reply["payload"]["code"] == "INVALID_REQUEST"
    assert "exceeds" in reply["payload"]["message"]
    accepted = await peer.submit("echo", 1)
    assert accepted["type"] == "job.accepted"


async def test_second_hello_is_refused(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.hello()
    request_id = await peer.send(
        "session.hello",
        {
            "client": {"name": "x", "version": "0"},
            "auth": {"scheme": "bearer", "token": "tok-alice"},
        },
    )
    reply = await peer.recv_type("session.error")
    assert reply["payload"]["code"] == "INVALID_REQUEST"
    assert reply["payload"]["request_id"] == request_id


async def test_features_not_negotiated_are_refused(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.hello(features=[])
    request_id = await peer.send("session.list_jobs", {})
    reply = await peer.recv_type("session.error")
    assert reply["payload"]["code"] == "INVALID_REQUEST"
    assert "list_jobs" in reply["payload"]["message"]
    assert reply["payload"]["request_id"] == request_id


async def test_bad_input_on_one_session_disturbs_no_other(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    honest, _ = await connect(runtime, nursery)
    await honest.hello()
    accepted = await honest.submit("ticker@1.0.0", {"count": 5, "interval": 1})
    hostile, _ = await connect(runtime, nursery)
    await hostile.hello(token="tok-bob")
    for raw in ["{", "[]", "null", json.dumps({"id": new_ulid(), "type": "nope"})] * 5:
        await hostile.send_raw(raw)
    frames = await honest.recv_terminal(accepted["job_id"])
    assert frames[-1]["payload"]["result"] == {"ticks": 5}
    assert [f["event_seq"] for f in frames if "event_seq" in f] == [1, 2, 3, 4, 5, 6]


async def test_client_ping_gets_pong(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.hello()
    await peer.send("session.ping", {"nonce": "n1", "sent_at": "2026-01-01T00:00:00Z"})
    pong = await peer.recv_type("session.pong")
    assert pong["payload"]["ping_nonce"] == "n1"
    assert pong["payload"]["received_at"].endswith("Z")


async def test_runtime_pings_an_idle_client(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.hello()
    start = trio.current_time()
    ping = await peer.recv()
    assert ping["type"] == "session.ping"
    # §6.4: one message per interval; the runtime's shared timer may send it up to a
    # twentieth of the interval early (never late), so pings to many sessions coalesce.
    assert 10 * 19 / 20 <= trio.current_time() - start <= 10
    assert "event_seq" not in ping  # §6.4: heartbeats are not in event_seq
    await peer.send("session.pong", {"ping_nonce": ping["payload"]["nonce"]})
    # Answered: the connection is alive past two intervals.
    await trio.sleep(15)
    session = runtime.session(peer.session_id)  # type: ignore[arg-type]
    assert session is not None
    assert session.connection is not None


async def test_spec_shapes_feature_is_negotiable(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _ = await connect(runtime, nursery)
    await peer.hello(features=[*REFERENCE_FEATURES, SPEC_SHAPES_FEATURE])
    session = runtime.session(peer.session_id)  # type: ignore[arg-type]
    assert session is not None
    assert session.dialect.value == "spec"


async def test_session_resume_frame_dialect(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§6.3's ``session.resume`` as the first frame, and the flat hello dialect."""
    peer, raw = await connect(runtime, nursery)
    await peer.hello()
    raw.abort()
    second = Peer((await connect(runtime, nursery))[0].transport)
    await second.send(
        "session.resume",
        {
            "resume_token": peer.resume_token,
            "last_event_seq": 0,
            "auth": {"scheme": "bearer", "token": "tok-alice"},
        },
    )
    welcome = await second.recv()
    assert welcome["type"] == "session.welcome"
    assert welcome["session_id"] == peer.session_id
    second.session_id = welcome["session_id"]
    await second.send("session.close", {})
    await second.recv_type("session.closed")
    third, _ = await connect(runtime, nursery)
    flat = await third.hello(resume_token=welcome["payload"]["resume_token"], last_event_seq=0)
    assert flat["type"] == "session.welcome"
    assert flat["session_id"] == peer.session_id


async def test_ruby_resume_dialect(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """``resume {token, last_event_seq}`` (WIRE.md §20, Ruby) is accepted too."""
    peer, raw = await connect(runtime, nursery)
    await peer.hello()
    raw.abort()
    again, _ = await connect(runtime, nursery)
    welcome = await again.hello(resume={"token": peer.resume_token, "last_event_seq": 0})
    assert welcome["type"] == "session.welcome"
    assert welcome["session_id"] == peer.session_id
