"""Cluster nodes as ``arcp-trio serve --redis`` processes: a node killed (SIGKILL)
or paused past its lease (SIGSTOP) mid-job (issue 16, docs/cluster.md).

A surviving node notices within the lease plus a janitor pass and writes each of
the dead node's running jobs' terminal to every watcher: ``INTERNAL_ERROR``
(retryable), or ``CANCELLED`` when a cancel was pending. A paused node that wakes
after the takeover writes nothing more for those jobs (fencing).

Rules: real processes, sockets and Redis; the real clock; every wait bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from arcp_trio.transport.websocket import connect_websocket
from tests.cli.test_serve import read_line
from tests.helpers import Peer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from arcp_trio.transport.base import Transport
    from tests.redis_server import RedisServer

SPEC = ["heartbeat", "ack", "list_jobs", "subscribe", "spec_shapes"]
#: Short, so that a test waits seconds: death is noticed within lease + janitor.
LEASE_SEC = 1.5


@attrs.define
class Node:
    node_id: str
    url: str
    process: trio.Process
    #: Clients' transports to this node, closed when the test ends.
    transports: list[Transport] = attrs.field(factory=list)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def wake(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.kill()

    async def connect(self) -> Transport:
        transport = await connect_websocket(self.url)
        self.transports.append(transport)
        return transport

    async def peer(self, **hello: object) -> Peer:
        peer = Peer(await self.connect())
        welcome = await peer.hello(features=SPEC, **hello)  # type: ignore[arg-type]
        assert welcome["type"] == "session.welcome", welcome
        return peer


@asynccontextmanager
async def node(redis: RedisServer, node_id: str, *extra: str) -> AsyncIterator[Node]:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "arcp_trio",
            "serve",
            "--redis",
            redis.url,
            "--node-id",
            node_id,
            "--node-lease-sec",
            str(LEASE_SEC),
            "--port",
            "0",
            "--token",
            "tok-alice=alice",
            "--log-level",
            "WARNING",
            "--shutdown-grace-sec",
            "0",
            *extra,
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            line = await read_line(process.stdout)
        assert line.startswith("READY "), line
        running = Node(node_id, line.removeprefix("READY "), process)
        try:
            yield running
        finally:
            for transport in running.transports:
                with trio.move_on_after(2, shield=True):
                    await transport.aclose()
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            with trio.move_on_after(10) as late:
                await process.wait()
            if late.cancelled_caught:
                process.kill()
                await process.wait()


async def running_job(
    owner: Node,
    watcher_node: Node,
    agent: str = "ticker@1.0.0",
    input_: dict[str, Any] | None = None,
) -> tuple[Peer, Peer, str]:
    """A long job (a ticker by default) on ``owner``; a session on ``watcher_node``
    subscribed to it and seeing its events live."""
    submitter = await owner.peer()
    accepted = await submitter.submit(agent, input_ or {"count": 10_000, "interval": 0.01})
    job_id = accepted["job_id"]
    watcher = await watcher_node.peer()
    await watcher.send("job.subscribe", {"job_id": job_id, "history": True})
    await watcher.recv_type("job.subscribed")
    for _ in range(3):
        await watcher.recv_type("job.event")
    return submitter, watcher, job_id


async def until_terminal(peer: Peer, job_id: str, timeout: float) -> list[dict[str, Any]]:
    """Every frame up to and including ``job_id``'s terminal."""
    return await peer.recv_until(
        lambda f: f["type"] in ("job.result", "job.error") and f.get("job_id") == job_id,
        timeout,
    )


async def terminal_of(peer: Peer, job_id: str, timeout: float) -> dict[str, Any]:
    return (await until_terminal(peer, job_id, timeout))[-1]


async def test_a_killed_nodes_running_job_ends_for_every_watcher_within_the_bound(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server, "a") as a, node(redis_server, "b") as b:
        _submitter, watcher, job_id = await running_job(a, b)
        a.kill()
        killed_at = trio.current_time()
        terminal = await terminal_of(watcher, job_id, timeout=15)
        noticed = trio.current_time() - killed_at
        payload = terminal["payload"]
        assert payload["code"] == "INTERNAL_ERROR"
        assert payload["retryable"] is True
        assert "node a" in payload["message"]
        # The default bound is under 6 s (lease 3 s); here the lease is 1.5 s.
        assert noticed < LEASE_SEC + 4, noticed
        # The job's final state is in Redis for any node: a late subscriber gets it.
        late = await b.peer()
        await late.send("job.subscribe", {"job_id": job_id})
        subscribed = await late.recv_type("job.subscribed")
        assert subscribed["payload"]["current_status"] == "error"
        assert (await terminal_of(late, job_id, timeout=10))["payload"]["code"] == (
            "INTERNAL_ERROR"
        )


async def test_a_paused_node_is_taken_over_and_fenced_when_it_wakes(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server, "a") as a, node(redis_server, "b") as b:
        _submitter, watcher, job_id = await running_job(a, b)
        a.pause()
        terminal = await terminal_of(watcher, job_id, timeout=15)
        assert terminal["payload"]["code"] == "INTERNAL_ERROR"
        a.wake()
        # Awake, A's ticker would go on emitting: fencing refuses every write. The
        # watcher gets nothing more for the job (its terminal was its last frame).
        with trio.move_on_after(3):
            while True:
                frame = await watcher.recv(timeout=5)
                assert frame.get("job_id") != job_id, frame
        # And A still serves: a new session there runs a job to its end.
        peer = await a.peer()
        accepted = await peer.submit("echo@1.0.0", {"after": "wake"})
        assert (await terminal_of(peer, accepted["job_id"], timeout=15))["type"] == "job.result"


async def test_a_cancel_pending_when_the_owner_died_ends_the_job_cancelled(
    redis_server: RedisServer,
) -> None:
    """§7.4: the cancel was accepted (the owner was alive when asked); the owner went
    away before acting on it; the takeover honours it."""
    async with node(redis_server, "a") as a, node(redis_server, "b") as b:
        submitter, watcher, job_id = await running_job(a, b)
        seen, session_id, token = (
            submitter.last_event_seq,
            submitter.session_id,
            submitter.resume_token,
        )
        await submitter.transport.aclose()
        a.pause()
        resumed = Peer(await b.connect())
        resumed.last_event_seq = seen
        welcome = await resumed.hello(
            features=SPEC,
            resume={"session_id": session_id, "resume_token": token, "last_event_seq": seen},
        )
        assert welcome["type"] == "session.welcome", welcome
        await resumed.send("job.cancel", {"job_id": job_id, "reason": "stop"}, job_id=job_id)
        assert (await resumed.recv_type("job.cancelled"))["payload"]["job_id"] == job_id
        for peer in (resumed, watcher):
            terminal = await terminal_of(peer, job_id, timeout=15)
            assert terminal["payload"]["code"] == "CANCELLED"
        a.wake()


RESTARTABLE = ("--agents", "tests.cluster.restartable:registry")


async def test_a_restartable_agents_job_runs_again_on_a_survivor(
    redis_server: RedisServer,
) -> None:
    """Issue 16: an agent registered ``restartable`` is re-run from scratch on a
    surviving node (at-least-once): its watchers are told it restarted, see its
    events from the start again, then its result."""
    async with (
        node(redis_server, "a", *RESTARTABLE) as a,
        node(redis_server, "b", *RESTARTABLE) as b,
    ):
        _submitter, watcher, job_id = await running_job(
            a, b, "counter@1.0.0", {"count": 30, "interval": 0.05}
        )
        a.kill()
        frames = await until_terminal(watcher, job_id, timeout=20)
        kinds = [
            (f["payload"].get("kind"), f["payload"].get("body", {}))
            for f in frames
            if f["type"] == "job.event"
        ]
        restarted = [i for i, (kind, body) in enumerate(kinds) if body.get("phase") == "restarted"]
        assert len(restarted) == 1, kinds
        again = [body["current"] for kind, body in kinds[restarted[0] :] if kind == "progress"]
        assert again == list(range(1, 31))  # from scratch, to the end
        result = frames[-1]
        assert result["type"] == "job.result", result
        assert result["payload"]["result"]["finished_by"] == b.process.pid
