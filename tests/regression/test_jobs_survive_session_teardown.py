"""Regression for shared/context/seed-csharp-job-lifetime-bug.txt.

The C# runtime launched jobs under the session's cancellation token, so a transport
drop, a graceful close or a heartbeat timeout killed every running job. The
reference Python SDK keeps the job but loses what it emits while the client is
away. Here each way a connection can end is followed by a resume that must
receive exactly the missing events and the terminal (§6.3, §6.4, §6.7, §8.3).

Rules: in-memory transports, MockClock (autojump), every wait bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio

from arcp_trio.transport.base import Transport, TransportBroken
from arcp_trio.transport.memory import memory_transport_pair
from tests.helpers import Peer, connect, events_of

if TYPE_CHECKING:
    from arcp_trio.runtime.runtime import Runtime

TICKER = {"count": 10, "interval": 1}


def ticks(frames: list[dict[str, Any]], job_id: str) -> list[int]:
    return [
        f["payload"]["body"]["current"]
        for f in events_of(frames, job_id)
        if f["type"] == "job.event" and f["payload"]["kind"] == "progress"
    ]


async def start_ticker(
    runtime: Runtime, nursery: trio.Nursery, ticker: dict[str, Any] = TICKER
) -> tuple[Peer, Any, str]:
    peer, raw = await connect(runtime, nursery)
    await peer.hello()
    accepted = await peer.submit("ticker@1.0.0", ticker)
    job_id = accepted["job_id"]
    frames = await peer.recv_until(lambda f: f.get("event_seq") == 3)
    assert ticks(frames, job_id) == [1, 2, 3]
    return peer, raw, job_id


async def resume_and_collect(
    runtime: Runtime, nursery: trio.Nursery, old: Peer, job_id: str, last_event_seq: int
) -> list[dict[str, Any]]:
    peer, _ = await connect(runtime, nursery)
    peer.last_event_seq = last_event_seq
    welcome = await peer.hello(
        resume={
            "session_id": old.session_id,
            "resume_token": old.resume_token,
            "last_event_seq": last_event_seq,
        }
    )
    assert welcome["type"] == "session.welcome", welcome
    assert welcome["session_id"] == old.session_id
    # §6.3: the token rotates on every successful welcome.
    assert welcome["payload"]["resume_token"] != old.resume_token
    return await peer.recv_terminal(job_id)


async def test_job_survives_transport_drop(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, raw, job_id = await start_ticker(runtime, nursery)
    raw.abort()
    await trio.sleep(4.5)  # the job keeps emitting while nobody is attached
    assert runtime.job(job_id).status == "running"  # type: ignore[union-attr]
    frames = await resume_and_collect(runtime, nursery, peer, job_id, 3)
    assert ticks(frames, job_id) == [4, 5, 6, 7, 8, 9, 10]
    assert [f["event_seq"] for f in frames if "event_seq" in f] == list(range(4, 12))
    assert frames[-1]["type"] == "job.result"
    assert frames[-1]["payload"]["result"] == {"ticks": 10}


async def test_job_survives_graceful_close(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _raw, job_id = await start_ticker(runtime, nursery)
    close_id = await peer.send("session.close", {"reason": "bye for now"})
    closed = await peer.recv_type("session.closed")
    assert closed["payload"]["request_id"] == close_id
    with pytest.raises(TransportBroken):
        await peer.recv()
    frames = await resume_and_collect(runtime, nursery, peer, job_id, 3)
    assert ticks(frames, job_id) == [4, 5, 6, 7, 8, 9, 10]
    assert frames[-1]["payload"]["final_status"] == "success"


async def test_job_survives_reference_bye(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, _raw, job_id = await start_ticker(runtime, nursery)
    await peer.send("session.bye", {"reason": "client.close"})
    await peer.recv_type("session.closed")
    with pytest.raises(TransportBroken):
        await peer.recv()
    await trio.sleep(1)
    frames = await resume_and_collect(runtime, nursery, peer, job_id, 3)
    assert ticks(frames, job_id) == [4, 5, 6, 7, 8, 9, 10]


async def test_job_survives_heartbeat_loss(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    last_sent = trio.current_time()  # the submit is the client's last frame
    peer, _raw, job_id = await start_ticker(runtime, nursery, {"count": 10, "interval": 3})
    # Go silent: read nothing, send nothing. §6.4: after two quiet intervals (10 s
    # each here) the runtime drops the connection, never the job.
    await trio.sleep_until(last_sent + 21)
    session = runtime.session(peer.session_id)  # type: ignore[arg-type]
    assert session is not None
    assert session.connection is None
    assert session.window.detached_at == last_sent + 20
    assert runtime.job(job_id).status == "running"  # type: ignore[union-attr]
    frames = await resume_and_collect(runtime, nursery, peer, job_id, 3)
    assert ticks(frames, job_id) == [4, 5, 6, 7, 8, 9, 10]
    assert frames[-1]["payload"]["result"] == {"ticks": 10}


async def test_resume_replays_then_goes_live_without_gap_or_duplicate(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, raw, job_id = await start_ticker(runtime, nursery)
    raw.abort()
    await trio.sleep(2.5)  # events 4 and 5 are buffered; 6.. are still to come
    frames = await resume_and_collect(runtime, nursery, peer, job_id, 3)
    # Replay (4, 5) then live (6..10) form one gap-free, duplicate-free run; the
    # Peer itself asserts seq continuity frame by frame.
    assert ticks(frames, job_id) == [4, 5, 6, 7, 8, 9, 10]


async def test_resume_from_an_earlier_seq_replays_from_there(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """The client, not the runtime, says what it has processed (§6.5 advisory ack)."""
    peer, raw, job_id = await start_ticker(runtime, nursery)
    raw.abort()
    await trio.sleep(0.5)
    frames = await resume_and_collect(runtime, nursery, peer, job_id, 1)
    assert ticks(frames, job_id) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


async def test_resume_past_the_window_is_resume_window_expired(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, raw, job_id = await start_ticker(runtime, nursery)
    raw.abort()
    await trio.sleep(61)  # resume_window_sec is 60
    late, _ = await connect(runtime, nursery)
    reply = await late.hello(
        resume={
            "session_id": peer.session_id,
            "resume_token": peer.resume_token,
            "last_event_seq": 3,
        }
    )
    assert reply["type"] == "session.error"
    assert reply["payload"]["code"] == "RESUME_WINDOW_EXPIRED"
    # The job was never touched by the session's end.
    job = await runtime.wait_job_done(job_id)
    assert job.status == "success"


async def test_wrong_token_does_not_destroy_the_session(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer, raw, job_id = await start_ticker(runtime, nursery)
    raw.abort()
    intruder, _ = await connect(runtime, nursery)
    reply = await intruder.hello(
        resume={"session_id": peer.session_id, "resume_token": "rtk_wrong", "last_event_seq": 0}
    )
    assert reply["payload"]["code"] == "PERMISSION_DENIED"
    other_principal, _ = await connect(runtime, nursery)
    reply = await other_principal.hello(
        token="tok-bob",
        resume={
            "session_id": peer.session_id,
            "resume_token": peer.resume_token,
            "last_event_seq": 0,
        },
    )
    assert reply["payload"]["code"] == "PERMISSION_DENIED"
    frames = await resume_and_collect(runtime, nursery, peer, job_id, 3)
    assert ticks(frames, job_id) == [4, 5, 6, 7, 8, 9, 10]


async def drain(peer: Peer, into: list[dict[str, Any]]) -> None:
    """Read until the transport ends (raises its error)."""
    while True:
        into.append(await peer.recv())


class ExplodingTransport:
    """A transport whose Nth write raises a non-transport error (a bug, say)."""

    def __init__(self, inner: Transport, explode_on_send: int) -> None:
        self.inner = inner
        self.sends = 0
        self.explode_on_send = explode_on_send
        self.description = "exploding"

    async def send_message(self, message: str) -> None:
        await self.send_messages([message])

    async def send_messages(self, messages: Any) -> None:
        self.sends += 1
        if self.sends == self.explode_on_send:
            raise ZeroDivisionError("a connection task blew up")
        await self.inner.send_messages(messages)

    async def receive_message(self) -> str:
        return await self.inner.receive_message()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_connection_task_that_raises_disturbs_no_job(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    client_side, runtime_side = memory_transport_pair()
    nursery.start_soon(runtime.handle_transport, ExplodingTransport(runtime_side, 4))
    peer = Peer(client_side)
    await peer.hello()
    accepted = await peer.submit("ticker@1.0.0", TICKER)
    job_id = accepted["job_id"]
    frames = await peer.recv_until(lambda f: f.get("event_seq") == 1)
    assert ticks(frames, job_id) == [1]
    # The send task raises on its next write; the connection ends, nothing else.
    with pytest.raises(TransportBroken):
        await drain(peer, frames)
    assert runtime.job(job_id).status == "running"  # type: ignore[union-attr]
    resumed = await resume_and_collect(runtime, nursery, peer, job_id, peer.last_event_seq)
    assert ticks(frames + resumed, job_id) == list(range(1, 11))


async def test_a_lost_welcome_does_not_lose_the_session(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """Regression (fuzzing): the token rotates on every welcome, so a welcome lost in
    transit left the client with a token the runtime no longer accepted. The token the
    client is known to hold stays valid until it shows it got the new one."""
    peer, raw, job_id = await start_ticker(runtime, nursery)
    raw.abort()
    resume = {"session_id": peer.session_id, "resume_token": peer.resume_token, "last_event_seq": 3}
    lost, lost_raw = await connect(runtime, nursery)
    welcome = await lost.hello(resume=resume)
    assert welcome["type"] == "session.welcome"
    lost_raw.abort()  # the client never saw this welcome (or its new token)
    again, _ = await connect(runtime, nursery)
    again.last_event_seq = 3
    retry = await again.hello(resume=resume)  # the old token, once more
    assert retry["type"] == "session.welcome", retry
    frames = await again.recv_terminal(job_id)
    assert ticks(frames, job_id) == [4, 5, 6, 7, 8, 9, 10]
    # Once the client has spoken on a connection, the old token is no longer valid.
    await again.send("session.ping", {"nonce": "n", "sent_at": "2026-01-01T00:00:00Z"})
    await again.recv_type("session.pong")
    stale, _ = await connect(runtime, nursery)
    refused = await stale.hello(resume=resume)
    assert refused["payload"]["code"] == "PERMISSION_DENIED"


async def test_a_duplicate_resume_handshake_does_not_steal_the_session(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """Regression (fuzzing): a late duplicate of a resume (a retried dial) rotated the
    token past the one the client had just been given, and the client's next resume
    was refused. Until the client answers a welcome, every token issued since stays
    valid."""
    peer, raw, job_id = await start_ticker(runtime, nursery)
    raw.abort()
    resume = {"session_id": peer.session_id, "resume_token": peer.resume_token, "last_event_seq": 3}
    real, real_raw = await connect(runtime, nursery)
    welcome = await real.hello(resume=resume)
    assert welcome["type"] == "session.welcome"
    duplicate, _ = await connect(runtime, nursery)
    assert (await duplicate.hello(resume=resume))["type"] == "session.welcome"
    real_raw.abort()  # taken over by the duplicate
    again, _ = await connect(runtime, nursery)
    again.last_event_seq = 3
    retry = await again.hello(resume={**resume, "resume_token": welcome["payload"]["resume_token"]})
    assert retry["type"] == "session.welcome", retry
    frames = await again.recv_terminal(job_id)
    assert ticks(frames, job_id) == [4, 5, 6, 7, 8, 9, 10]
