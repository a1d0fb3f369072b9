"""Hostile input at the runtime: every bad frame is answered, correlated, and costs
nothing else; a lease's expiry fails closed (§9.5, §9.8).

Rules: in-memory transports, MockClock (autojump) where time matters; each case was a
silence, a fail-open or an INTERNAL_ERROR before (issue "Hostile input").
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import LeaseExpiry, RuntimeConfig
from arcp_trio.runtime.credentials import InProcessProvisioner
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.store.sqlite import SQLiteStore
from arcp_trio.transport.base import IdleTransport, TransportBroken
from arcp_trio.wire.errors import LeaseExpired
from arcp_trio.wire.ids import new_ulid
from arcp_trio.wire.timestamps import format_timestamp, system_wall_clock
from tests.helpers import REFERENCE_FEATURES, TOKENS, Frame, Peer, connect, trio_wall_clock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime
    from pathlib import Path

    from arcp_trio.runtime.context import JobContext
    from arcp_trio.runtime.runtime import Runtime


def _agents() -> Any:
    registry = demo_registry()

    @registry.agent("stubborn")
    async def stubborn(input_: Any, _ctx: JobContext) -> Any:
        # Ignores cancellation for a while: its credentials must not wait for it.
        with trio.CancelScope(shield=True):
            await trio.sleep(float(input_["seconds"]))
        return "done"

    @registry.agent("late_rotator")
    async def late_rotator(input_: Any, ctx: JobContext) -> Any:
        with trio.CancelScope(shield=True):
            await trio.sleep(float(input_["seconds"]))
            try:
                await ctx.rotate_credential(ctx.credentials[0]["id"])
            except LeaseExpired:
                return "refused"
        return "rotated"

    @registry.agent("late_user")
    async def late_user(input_: Any, ctx: JobContext) -> Any:
        await trio.sleep(float(input_["after"]))
        ctx.authorize("tool.call", "search")
        return "used"

    return registry


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    """(pytest-trio runs a test on MockClock only when the test itself names the
    clock fixture: every test here does.)"""
    async with open_runtime(
        agents=_agents(),
        tokens=TOKENS,
        wall_clock=trio_wall_clock,
        config=RuntimeConfig(heartbeat_interval_sec=1000),
    ) as rt:
        yield rt


async def _peer(runtime: Runtime, nursery: trio.Nursery, **hello: Any) -> Peer:
    peer, _ = await connect(runtime, nursery)
    welcome = await peer.hello(**hello)
    assert welcome["type"] == "session.welcome"
    return peer


async def _answer(peer: Peer, type_: str, payload: Any, **envelope: Any) -> Frame:
    frame_id = await peer.send(type_, payload, **envelope)
    while True:
        frame = await peer.recv()
        if frame["type"] == "session.ping":
            continue
        assert frame["payload"].get("request_id") == frame_id, frame
        return frame


async def _still_serves(peer: Peer) -> None:
    await peer.send("session.ping", {"nonce": "still-there", "sent_at": "2026-01-01T00:00:00Z"})
    pong = await peer.recv_type("session.pong", "session.error")
    assert pong["type"] == "session.pong"
    assert pong["payload"]["ping_nonce"] == "still-there"


def _invalid(frame: Frame, path: str) -> None:
    assert frame["type"] == "session.error", frame
    assert frame["payload"]["code"] == "INVALID_REQUEST"
    assert any(e.endswith(f"@ {path}") for e in frame["payload"]["details"]["errors"]), frame


async def test_an_ack_needs_the_ack_feature(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """§6.2: a feature outside the intersection MUST NOT be used; the ack used to be
    dropped without a word (so a client never learnt its acks did nothing)."""
    peer = await _peer(runtime, nursery, features=["heartbeat"])
    reply = await _answer(peer, "session.ack", {"last_processed_seq": 2**63 - 1})
    assert reply["type"] == "session.error"
    assert reply["payload"]["code"] == "INVALID_REQUEST"
    assert "'ack' not negotiated" in reply["payload"]["message"]
    await _still_serves(peer)


async def test_an_ack_beyond_the_last_event_is_refused(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await _peer(runtime, nursery)
    for seq in (2**63 - 1, 1):
        reply = await _answer(peer, "session.ack", {"last_processed_seq": seq})
        assert reply["payload"]["code"] == "INVALID_REQUEST"
    reply = await _answer(peer, "session.ack", {"last_processed_seq": -1})
    _invalid(reply, "$.payload.last_processed_seq")
    await _still_serves(peer)


async def test_a_huge_cursor_is_invalid_not_internal(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await _peer(runtime, nursery)
    reply = await _answer(peer, "session.list_jobs", {"cursor": "9" * 5000})
    _invalid(reply, "$.payload.cursor")
    listed = await _answer(peer, "session.list_jobs", {"cursor": str(2**63 - 1)})
    assert listed["type"] == "session.jobs"
    assert listed["payload"]["jobs"] == []


@pytest.mark.parametrize("bad", ["2030-01-01T00:00:00Z", ["expires_at"]])
async def test_lease_constraints_of_the_wrong_shape_start_no_job(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock, bad: Any
) -> None:
    """They used to be accepted and ignored: a job with no expiry though one was asked."""
    peer = await _peer(runtime, nursery)
    reply = await _answer(peer, "job.submit", {"agent": "slow", "lease_constraints": bad})
    _invalid(reply, "$.payload.lease_constraints")
    assert runtime.statistics().jobs_total == 0


@pytest.mark.parametrize("bad", ["running", ["running"]])
async def test_a_filter_of_the_wrong_shape_is_refused(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock, bad: Any
) -> None:
    peer = await _peer(runtime, nursery)
    _invalid(await _answer(peer, "session.list_jobs", {"filter": bad}), "$.payload.filter")


async def test_a_bye_without_reason_is_refused_and_the_session_stays(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await _peer(runtime, nursery)
    _invalid(await _answer(peer, "session.bye", {}), "$.payload.reason")
    await _still_serves(peer)
    closed = await _answer(peer, "session.bye", {"reason": "client.close"})
    assert closed["type"] == "session.closed"


async def test_frames_that_used_to_get_silence_are_answered(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await _peer(runtime, nursery)
    for type_ in ("session.closed", "session.jobs", "job.result"):
        reply = await _answer(peer, type_, {})
        assert reply["type"] == "session.error"
        assert reply["payload"]["code"] == "INVALID_REQUEST"
    _invalid(await _answer(peer, "session.list_jobs", {"limit": 0}), "$.payload.limit")
    frame_id = "01J00000000000000000000000"
    await peer.send_raw(f'{{"arcp":"1.1","id":"{frame_id}","type":5,"payload":{{}}}}')
    reply = await peer.recv()
    assert reply["payload"]["request_id"] == frame_id
    assert reply["payload"]["code"] == "INVALID_REQUEST"
    await _still_serves(peer)


async def test_unparseable_frames_are_correlated_from_their_first_bytes(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await _peer(runtime, nursery)
    frame_id = "01J00000000000000000000000"
    head = f'{{"arcp":"1.1","id":"{frame_id}","type":"session.ack","payload":'
    for text in (head + "[" * 100_000 + "]" * 100_000 + "}", head + "{oops}}"):
        await peer.send_raw(text)
        reply = await peer.recv()
        assert reply["type"] == "session.error"
        assert reply["payload"]["request_id"] == frame_id
    await _still_serves(peer)


async def test_lease_pattern_errors_name_the_pattern(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    peer = await _peer(runtime, nursery)
    lease = {"fs.read": ["/data/**", "relative/*"]}
    reply = await _answer(peer, "job.submit", {"agent": "slow", "lease_request": lease})
    _invalid(reply, "$.payload.lease_request['fs.read'][1]")
    reply = await _answer(peer, "job.submit", {"agent": "slow", "lease_request": {"fs.exec": []}})
    _invalid(reply, "$.payload.lease_request['fs.exec']")
    past = format_timestamp(trio_wall_clock() - timedelta(seconds=1))
    reply = await _answer(
        peer, "job.submit", {"agent": "slow", "lease_constraints": {"expires_at": past}}
    )
    _invalid(reply, "$.payload.lease_constraints.expires_at")


# -- lease expiry (§9.5) -------------------------------------------------------------------------


def _expiring_in(seconds: float) -> dict[str, Any]:
    return {"expires_at": format_timestamp(trio_wall_clock() + timedelta(seconds=seconds))}


async def test_the_slow_agent_ends_with_lease_expired_at_expiry(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """The default fails closed: the job ends at ``expires_at`` even though it never
    touches its lease (§9.5 "MAY proactively terminate")."""
    assert runtime.config.lease_expiry is LeaseExpiry.TERMINATE
    peer = await _peer(runtime, nursery)
    start = trio.current_time()
    accepted = await peer.submit(
        "slow", {"seconds": 60}, lease_constraints=_expiring_in(2), lease_request={}
    )
    terminal = (await peer.recv_terminal(accepted["payload"]["job_id"]))[-1]
    assert terminal["type"] == "job.error"
    assert terminal["payload"]["code"] == "LEASE_EXPIRED"
    assert terminal["payload"]["retryable"] is False  # §12
    assert trio.current_time() - start == pytest.approx(2)


async def test_on_use_lets_an_idle_job_run_past_expiry(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """``LeaseExpiry.ON_USE``: only operations at or after ``expires_at`` fail."""
    async with open_runtime(
        agents=_agents(),
        tokens=TOKENS,
        wall_clock=trio_wall_clock,
        config=RuntimeConfig(heartbeat_interval_sec=1000, lease_expiry="on-use"),
    ) as runtime:
        peer = await _peer(runtime, nursery)
        idle = await peer.submit("slow", {"seconds": 5}, lease_constraints=_expiring_in(2))
        terminal = (await peer.recv_terminal(idle["payload"]["job_id"]))[-1]
        assert terminal["type"] == "job.result"
        user = await peer.submit(
            "late_user",
            {"after": 3},
            lease_constraints=_expiring_in(2),
            lease_request={"tool.call": ["search"]},
        )
        terminal = (await peer.recv_terminal(user["payload"]["job_id"]))[-1]
        assert terminal["payload"]["code"] == "LEASE_EXPIRED"


def _with_credentials(tmp_path: Path, upstream: InProcessProvisioner) -> Any:
    """A runtime that provisions credentials (it needs the durable ledger), with a
    0.1 s timer granularity (a 2 s heartbeat)."""
    return open_runtime(
        agents=_agents(),
        tokens=TOKENS,
        store=SQLiteStore(tmp_path / "rt.sqlite3"),
        provisioner=upstream,
        config=RuntimeConfig(heartbeat_interval_sec=2),
    )


async def _submit_with_credentials(
    runtime: Runtime, nursery: trio.Nursery, agent: str, input_: Any
) -> tuple[Peer, Frame, datetime]:
    """A session that asks for credentials submits ``agent`` under a lease that expires
    in 0.3 s (and names a model, so the upstream issues one credential)."""
    peer = await _peer(runtime, nursery, features=[*REFERENCE_FEATURES, "provisioned_credentials"])
    expires_at = system_wall_clock() + timedelta(seconds=0.3)
    accepted = await peer.submit(
        agent,
        input_,
        lease_constraints={"expires_at": format_timestamp(expires_at)},
        lease_request={"model.use": ["tier-fast/*"]},
    )
    return peer, accepted, expires_at


async def test_credentials_are_revoked_at_expiry_even_if_the_agent_hangs_on(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """§9.8/§14: a credential's authority is bounded by the lease's expires_at. An
    agent that shields itself from cancellation keeps running a while; its credential
    is revoked at expiry all the same (within one timer granularity, 0.1 s here).

    Real clock: the SQLite ledger's writer thread and MockClock's autojump disagree."""
    upstream = InProcessProvisioner()
    with trio.fail_after(20):
        async with _with_credentials(tmp_path, upstream) as runtime:
            peer, accepted, expires_at = await _submit_with_credentials(
                runtime, nursery, "stubborn", {"seconds": 1.5}
            )
            [credential] = accepted["payload"]["credentials"]
            await upstream.wait_revoked(credential["value"])
            revoked_after = (system_wall_clock() - expires_at).total_seconds()
            assert revoked_after >= 0
            assert credential["value"] not in upstream.live
            assert runtime.statistics().jobs_active == 1  # the agent still hangs on
            frames = await peer.recv_terminal(accepted["payload"]["job_id"])
            assert frames[-1]["payload"]["code"] == "LEASE_EXPIRED"
            assert upstream.revoked.count(credential["value"]) == 1  # not again at the end


async def test_heartbeat_loss_and_a_dropped_connection_log_one_info_line(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Expected events are not warnings: a client whose heartbeat stops, or whose
    connection drops, reconnects by design (§6.4). One INFO line, no traceback."""
    caplog.set_level("DEBUG", logger="arcp_trio")
    async with open_runtime(
        agents=_agents(),
        tokens=TOKENS,
        wall_clock=trio_wall_clock,
        config=RuntimeConfig(heartbeat_interval_sec=1),
    ) as runtime:
        silent = await _peer(runtime, nursery)  # never answers a ping
        dropped, transport = await connect(runtime, nursery)
        await dropped.hello()
        transport.abort()
        await trio.sleep(4)  # §6.4: two silent intervals (and a timer granularity)
        assert runtime.statistics().attached_sessions == 0
        del silent
    lost = [r for r in caplog.records if "heartbeat lost" in r.getMessage()]
    assert len(lost) == 1
    assert lost[0].levelname == "INFO"
    loud = [r for r in caplog.records if r.levelno >= 30 or r.exc_info]
    assert loud == [], [r.getMessage() for r in loud]


class BurstTransport:
    """A transport that hands over every queued frame without waiting, as a
    WebSocket does with a burst that arrived in one read; what the runtime sends is
    written to a log shared with other transports, in order."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log
        self.inbox: list[str] = []
        self.more = trio.Event()
        self.closed = False

    # ``IdleTransport``: a reply is logged the moment the runtime makes it; input
    # is never reported (``receive_ready``), so a task waits in ``receive_message``.

    def send_nowait(self, message: str) -> bool:
        self.log.append((self.name, json.loads(message)["type"]))
        return True

    @property
    def write_pending(self) -> bool:
        return False

    def receive_ready(self) -> bool:
        return True

    def receive_nowait(self) -> str | None:
        return None

    def set_receive_waker(self, waker: object) -> None:
        pass

    def defer_receive(self, start: float, window: float) -> None:
        pass

    async def send_message(self, message: str) -> None:
        await self.send_messages([message])

    async def send_messages(self, messages: Any) -> None:
        for message in messages:
            self.log.append((self.name, json.loads(message)["type"]))
        await trio.lowlevel.checkpoint()

    async def receive_message(self) -> str:
        while not self.inbox:
            if self.closed:
                raise TransportBroken(f"{self.name}: closed")
            self.more = trio.Event()
            await self.more.wait()
        return self.inbox.pop(0)

    def feed(self, *texts: str) -> None:
        self.inbox.extend(texts)
        self.more.set()

    async def aclose(self) -> None:
        self.closed = True
        self.more.set()
        await trio.lowlevel.checkpoint()

    @property
    def description(self) -> str:
        return self.name


def _hello_text() -> str:
    return json.dumps(
        {
            "id": new_ulid(),
            "type": "session.hello",
            "payload": {"client": {"name": "b", "version": "0"}, "auth": {"token": "tok-alice"}},
        }
    )


async def test_a_burst_on_one_connection_does_not_hold_up_another(
    runtime: Runtime, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """The read path yields after every frame: 500 bad frames queued on one
    connection (one read's worth) do not keep another connection's ping waiting."""
    log: list[tuple[str, str]] = []
    noisy, quiet = BurstTransport("noisy", log), BurstTransport("quiet", log)
    assert isinstance(noisy, IdleTransport)  # replies are written through, at once
    for transport in (noisy, quiet):
        nursery.start_soon(runtime.handle_transport, transport)
        transport.feed(_hello_text())
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(log) == [("noisy", "session.welcome"), ("quiet", "session.welcome")]
    log.clear()
    bad = json.dumps({"id": new_ulid(), "type": "session.ack", "payload": {}})
    ping = json.dumps(
        {
            "id": new_ulid(),
            "type": "session.ping",
            "payload": {"nonce": "n", "sent_at": "2026-01-01T00:00:00Z"},
        }
    )
    noisy.feed(*[bad] * 500)
    quiet.feed(ping)
    await trio.testing.wait_all_tasks_blocked()
    assert len(log) == 501
    position = log.index(("quiet", "session.pong"))
    assert position < 5, f"the ping waited behind {position} frames of the burst"


async def test_no_credential_is_rotated_in_after_expiry(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """An agent that outlives its lease cannot get a fresh credential back."""
    upstream = InProcessProvisioner()
    with trio.fail_after(20):
        async with _with_credentials(tmp_path, upstream) as runtime:
            peer, accepted, _ = await _submit_with_credentials(
                runtime, nursery, "late_rotator", {"seconds": 0.8}
            )
            frames = await peer.recv_terminal(accepted["payload"]["job_id"])
            assert frames[-1]["payload"]["code"] == "LEASE_EXPIRED"
            assert upstream.live == {}  # the original revoked, none rotated in
            statuses = [f["payload"]["body"] for f in frames if f["type"] == "job.event"]
            assert not any(b.get("phase") == "credential_rotated" for b in statuses)
