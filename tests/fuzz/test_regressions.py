"""Regression tests for bugs the fuzzers found.

Rules: in-memory transports, MockClock, every wait bounded. Bugs still open in the
runtime are strict xfails (listed in ``known_bugs.py``): fixing one turns its test
into an XPASS failure, so the xfail and the ``KNOWN_BUGS`` entry go together. None is
open now; the runtime's own regression tests cover the others the fuzzers found.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import trio

from arcp_trio.testing import connect_peer
from arcp_trio.wire.codec import decode
from arcp_trio.wire.errors import RemoteProtocolError
from arcp_trio.wire.ids import new_ulid
from arcp_trio.wire.limits import MAX_NESTING

if TYPE_CHECKING:
    from arcp_trio.runtime.runtime import Runtime
    from arcp_trio.testing.plugin import PeerFactory


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- fixed in wire/codec.py ----------------------------------------------------


def test_a_frame_nested_too_deeply_is_invalid_request() -> None:
    """Found by the hostile-frame fuzzer: json.loads raised RecursionError, which no
    boundary expected, so the connection (or, as a first frame, the handler) died
    instead of answering INVALID_REQUEST."""
    text = f'{{"arcp":"1.1","id":"{new_ulid()}","type":"session.ack","payload":{nested(5000)}}}'
    with pytest.raises(RemoteProtocolError, match="nested too deeply"):
        decode(text)


async def test_a_deeply_nested_frame_leaves_the_connection_serving(
    arcp_peer: PeerFactory, arcp_clock: trio.abc.Clock
) -> None:
    peer = await arcp_peer("tok-alice")
    await peer.send_raw(f'{{"arcp":"1.1","id":"{new_ulid()}","payload":{nested(5000)}}}')
    error = await peer.recv()
    assert error["type"] == "session.error"
    assert error["payload"]["code"] == "INVALID_REQUEST"
    await peer.send("session.ping", {"nonce": "n", "sent_at": "2026-01-01T00:00:00Z"})
    assert (await peer.recv())["type"] == "session.pong"


@pytest.mark.parametrize(
    ("message_type", "payload", "path"),
    [
        ("job.submit", {"agent": "echo", "lease_request": {"tool.call": "*"}}, "tool.call"),
        ("session.list_jobs", {"filter": {"status": "running"}}, "status"),
        (
            "session.hello",
            {
                "client": {"name": "c", "version": "1"},
                "auth": {"token": "t"},
                "capabilities": {"features": "heartbeat"},
            },
            "features",
        ),
    ],
)
def test_a_string_is_not_a_list(message_type: str, payload: dict[str, object], path: str) -> None:
    """Found by the hostile-frame fuzzer: cattrs structured ``"abc"`` as
    ``["a", "b", "c"]``, so ``{"tool.call": "*"}`` became a lease granting ``*`` and a
    status filter ``"running"`` became seven one-letter statuses."""
    frame = {"arcp": "1.1", "id": new_ulid(), "type": message_type, "payload": payload}
    with pytest.raises(RemoteProtocolError) as caught:
        decode(json.dumps(frame))
    assert caught.value.details is not None
    assert any(
        path in error and "expected an array" in error for error in caught.value.details["errors"]
    )


# -- fixed in the runtime -------------------------------------------------------------


async def test_a_deeply_nested_result_does_not_crash_the_runtime(
    arcp_runtime: Runtime, arcp_peer: PeerFactory, arcp_clock: trio.abc.Clock
) -> None:
    """Found by the hostile-input fuzzer, fixed in the runtime: a result shallow enough
    for json.dumps (~600 levels) still crashed the job nursery when the terminal was
    persisted (a recursive attrs.asdict). Inputs are now held to MAX_NESTING, so the
    deepest input a client may send is echoed back; one level more is refused."""
    peer = await arcp_peer("tok-alice")
    too_deep = await peer.request(
        "job.submit", {"agent": "echo", "input": json.loads(nested(MAX_NESTING + 1))}
    )
    assert too_deep["type"] == "session.error"
    assert too_deep["payload"]["details"]["errors"] == [
        f"nested deeper than {MAX_NESTING} levels @ $.payload.input"
    ]
    deepest = json.loads(nested(MAX_NESTING))
    accepted = await peer.request("job.submit", {"agent": "echo", "input": deepest})
    assert accepted["type"] == "job.accepted"
    terminal = await peer.recv_type("job.result", "job.error")
    assert terminal["job_id"] == accepted["payload"]["job_id"]
    # Whatever that job's terminal, the runtime still serves.
    again = await peer.request("job.submit", {"agent": "echo", "input": 1})
    assert again["type"] == "job.accepted"
    assert (await peer.recv_type("job.result"))["payload"]["result"]["echo"] == 1


async def test_a_late_duplicate_of_a_resume_does_not_lock_the_client_out(
    arcp_runtime: Runtime, nursery: trio.Nursery, arcp_clock: trio.abc.Clock
) -> None:
    """Found by the chaos fuzzer (duplicate connection attempts), fixed in the runtime:
    a resume presenting the previous token rotated past the one the client was just
    given, so a late copy of the client's own handshake locked it out."""
    first = connect_peer(arcp_runtime, nursery)
    await first.hello("tok-alice")
    await first.send("session.ping", {"nonce": "n", "sent_at": "2026-01-01T00:00:00Z"})
    await first.recv()
    session_id, token = first.session_id, first.resume_token
    assert session_id is not None
    assert token is not None
    first.transport.abort()  # type: ignore[attr-defined]
    await trio.sleep(1)
    hello = json.dumps(
        {
            "arcp": "1.1",
            "id": new_ulid(),
            "type": "session.hello",
            "payload": {
                "client": {"name": "c", "version": "1"},
                "auth": {"scheme": "bearer", "token": "tok-alice"},
                "capabilities": {"features": ["heartbeat", "ack"]},
                "resume": {"session_id": session_id, "resume_token": token, "last_event_seq": 0},
            },
        }
    )
    # The client resumes and gets a new token...
    resumed = connect_peer(arcp_runtime, nursery)
    await resumed.send_raw(hello)
    welcome = await resumed.recv()
    assert welcome["type"] == "session.welcome"
    newest = welcome["payload"]["resume_token"]
    # ...and a copy of the same handshake arrives late on another connection.
    ghost = connect_peer(arcp_runtime, nursery)
    await ghost.send_raw(hello)
    await ghost.recv()
    await ghost.aclose()
    # The client, holding the newest token it was given, can still resume.
    later = connect_peer(arcp_runtime, nursery)
    answer = await later.hello(
        "tok-alice",
        features=["heartbeat", "ack"],
        resume={"session_id": session_id, "resume_token": newest, "last_event_seq": 0},
    )
    assert answer["type"] == "session.welcome", answer


async def test_a_token_older_than_one_presented_no_longer_resumes(
    arcp_runtime: Runtime, nursery: trio.Nursery, arcp_clock: trio.abc.Clock
) -> None:
    """Found by the end-to-end fuzzer (thorough profile), fixed in the runtime: a
    client that resumes twice without sending anything else never "answered" a
    welcome, so every token it had been given stayed valid — including the first,
    which it had long replaced (§6.3: tokens rotate). A presented token now retires
    every token issued before it; newer ones stay (a retried dial may have rotated
    past what the client holds, see the test above)."""
    peer = connect_peer(arcp_runtime, nursery)
    await peer.hello("tok-alice")
    session_id, first_token = peer.session_id, peer.resume_token
    tokens = [first_token]
    for _ in range(2):
        peer.transport.abort()  # type: ignore[attr-defined]
        peer = connect_peer(arcp_runtime, nursery)
        welcome = await peer.hello(
            "tok-alice",
            resume={"session_id": session_id, "resume_token": tokens[-1], "last_event_seq": 0},
        )
        assert welcome["type"] == "session.welcome", welcome
        tokens.append(welcome["payload"]["resume_token"])
    peer.transport.abort()  # type: ignore[attr-defined]
    stale = connect_peer(arcp_runtime, nursery)
    answer = await stale.hello(
        "tok-alice",
        resume={"session_id": session_id, "resume_token": tokens[0], "last_event_seq": 0},
    )
    assert answer["type"] == "session.error"
    assert answer["payload"]["code"] == "PERMISSION_DENIED"
    # The token presented last, and the newest, still resume.
    for token in (tokens[1], tokens[2]):
        again = connect_peer(arcp_runtime, nursery)
        welcome = await again.hello(
            "tok-alice",
            resume={"session_id": session_id, "resume_token": token, "last_event_seq": 0},
        )
        assert welcome["type"] == "session.welcome", welcome
        again.transport.abort()  # type: ignore[attr-defined]
        await trio.sleep(1)
