"""The reference client (agentruntimecontrolprotocol 1.1.3) against a two-node cluster
(issue 16, docs/cluster.md): two ``arcp-trio serve --redis`` processes on one Redis of
the test's own, behind a round-robin load balancer that sends each new connection to
the next node, as one without sticky sessions would.

The balancer is ``tcp_proxy.TcpProxy`` with its upstream chosen per connection; it
runs in this process and records which node each connection went to. The reference
client runs ``ref_driver.py`` in its own process (``run_driver``, in a worker thread so
the balancer keeps forwarding), over real WebSockets on 127.0.0.1. A scenario that
opens two connections therefore has its first on node A and its second on node B:
a resume, a subscribe or a list by the reference client lands on the node that does
not run the job. The assertions are those of ``test_reference_client.py``: across
nodes the reference client sees the runtime it sees in a single process.

Rules: the real clock (Redis's TTLs are its own), every wait under ``trio.fail_after``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from tests.cli.test_serve import read_line
from tests.interop.conftest import HEARTBEAT_SEC, REPO_ROOT, RESUME_WINDOW_SEC, TOKENS, run_driver
from tests.interop.tcp_proxy import TcpProxy
from tests.interop.test_reference_client import (
    Report,
    assert_resumed_exactly_once,
    check,
    job_frames,
    payload,
    shape,
)
from tests.redis_server import running_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from tests.redis_server import RedisServer

pytest.importorskip("coredis", reason="the cluster needs the redis extra")

pytestmark = pytest.mark.interop

#: The driver's own bound on one scenario; ``run_driver`` kills it 10 s after that.
DRIVER_TIMEOUT = 10.0
#: Bounds a whole driver run, the subprocess's own limits included.
DRIVE_GUARD = DRIVER_TIMEOUT + 15
#: Bounds starting or stopping the cluster.
SETUP_GUARD = 20
A, B = "node-a", "node-b"


# --------------------------------------------------------------------------- the cluster


@attrs.define
class Node:
    """One ``arcp-trio serve --redis`` process."""

    node_id: str
    url: str
    process: trio.Process

    @property
    def port(self) -> int:
        return int(self.url.split(":")[2].split("/")[0])


class RoundRobin(TcpProxy):
    """A load balancer: connection n (from 0) goes to ``nodes[n % len(nodes)]``.

    ``routed`` lists, per accepted connection, the node it went to. The upstream is set
    just before ``TcpProxy._handle`` reads it, with no checkpoint between, so concurrent
    connections still alternate.
    """

    def __init__(self, nodes: Sequence[Node]) -> None:
        super().__init__("127.0.0.1", nodes[0].port)
        self.nodes = list(nodes)
        self.routed: list[str] = []

    async def _handle(self, downstream: trio.SocketStream) -> None:
        target = self.nodes[self.accepted % len(self.nodes)]
        self.upstream_port = target.port
        self.routed.append(target.node_id)
        await super()._handle(downstream)


@attrs.define
class Cluster:
    redis: RedisServer
    nodes: list[Node]
    balancer: RoundRobin

    @property
    def url(self) -> str:
        """The balancer's URL: what the reference client is given."""
        return self.balancer.url()


def serve_command(redis: RedisServer, node_id: str) -> list[str]:
    tokens = [arg for token, who in TOKENS.items() for arg in ("--token", f"{token}={who}")]
    return [
        sys.executable,
        "-m",
        "arcp_trio",
        "serve",
        "--redis",
        redis.url,
        "--node-id",
        node_id,
        "--port",
        "0",
        "--heartbeat-sec",
        str(HEARTBEAT_SEC),
        "--resume-window-sec",
        str(RESUME_WINDOW_SEC),
        "--shutdown-grace-sec",
        "0",
        "--max-seconds",
        "120",  # a backstop: no node outlives a crashed test run for long
        "--log-level",
        "WARNING",
        *tokens,
    ]


async def stop(processes: Sequence[trio.Process]) -> None:
    """SIGTERM to every node at once, then SIGKILL to any still there after 10 s."""
    running = [p for p in processes if p.returncode is None]
    for process in running:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
    with trio.move_on_after(10, shield=True):
        for process in running:
            await process.wait()
    for process in running:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(5, shield=True):
                await process.wait()


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Redis, nodes A and B (started together), and the balancer in front of them."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    async with running_redis(tmp_path) as redis:
        processes: list[trio.Process] = []
        try:
            for node_id in (A, B):
                processes.append(
                    await trio.lowlevel.open_process(
                        serve_command(redis, node_id),
                        stdout=subprocess.PIPE,
                        cwd=REPO_ROOT,
                        env=env,
                    )
                )
            nodes: list[Node] = []
            with trio.fail_after(SETUP_GUARD):
                for node_id, process in zip((A, B), processes, strict=True):
                    assert process.stdout is not None
                    line = await read_line(process.stdout)
                    assert line.startswith("READY ws://127.0.0.1:"), line
                    nodes.append(Node(node_id, line.removeprefix("READY "), process))
            balancer = RoundRobin(nodes)
            async with trio.open_nursery() as nursery:
                await nursery.start(balancer.serve)
                try:
                    yield Cluster(redis, nodes, balancer)
                finally:
                    balancer.cut()
                    nursery.cancel_scope.cancel()
        finally:
            await stop(processes)


async def drive(url: str, scenario: str, principal: str = "alice", **args: Any) -> Report:
    """One ``ref_driver.py`` scenario against ``url``, bounded; its report, checked."""
    token = next(t for t, p in TOKENS.items() if p == principal)
    run = partial(run_driver, url, token, scenario, args, timeout=DRIVER_TIMEOUT)
    with trio.fail_after(DRIVE_GUARD):
        return check(await trio.to_thread.run_sync(run))


# --------------------------------------------------------------------------- tests


async def test_a_job_on_each_node_streams_to_the_reference_client(tmp_path: Path) -> None:
    """A ticker submitted on node A (events and result, ``event_seq`` 1..6), then a
    chunker on node B (its streamed result reassembled by the client itself)."""
    async with cluster(tmp_path) as c:
        out = await drive(c.url, "ticker", input={"count": 5, "interval": 0.05})
        assert c.balancer.routed == [A]
        assert [e["body"] for e in out["handle_events"]] == [
            {"current": i, "total": 5, "units": "ticks"} for i in range(1, 6)
        ]
        assert out["outcome"]["payload"]["result"] == {"ticks": 5}
        assert shape(job_frames(out, "main", out["job_id"])) == [
            *(("job.event", i, "progress") for i in range(1, 6)),
            ("job.result", 6, None),
        ]

        out = await drive(c.url, "chunker", input={"chunks": 4, "size": 8})
        assert c.balancer.routed == [A, B]
        assert out["collected_text"] == "aaaaaaaa" + "bbbbbbbb" + "cccccccc" + "dddddddd"
        result = out["outcome"]["payload"]
        assert result["final_status"] == "success"
        assert {c["result_id"] for c in out["chunks"]} == {result["result_id"]}
        frames = job_frames(out, "main", out["job_id"])
        assert [f["event_seq"] for f in frames] == list(range(1, len(frames) + 1))
        assert frames[-1]["type"] == "job.result"


@pytest.mark.parametrize("scenario", ["drop_resume", "close_resume"])
async def test_the_reference_client_resumes_on_the_other_node(
    tmp_path: Path, scenario: str
) -> None:
    """§6.3 across nodes: the session starts on A with a ticker running there, leaves
    after event 3 (an RST, or ``session.bye``), and resumes on B at the first try:
    events 4..10 and the terminal exactly once, and B's ``list_jobs`` shows the job."""
    async with cluster(tmp_path) as c:
        out = await drive(c.url, scenario, count=10, interval=0.1)
        assert len(out["resume_attempts"]) == 1, out["resume_attempts"]
        assert c.balancer.routed == [A, B]
        assert_resumed_exactly_once(out)


async def test_a_reference_client_on_node_b_subscribes_to_a_job_on_node_a(
    tmp_path: Path,
) -> None:
    """§7.6 across nodes: session B (on node B) runs its own echo there, then subscribes
    with history to A's ticker running on node A: every event once, then the terminal,
    in one gap-free ``event_seq`` with B's own job."""
    async with cluster(tmp_path) as c:
        out = await drive(c.url, "subscribe", count=6, interval=0.1, subscribe_after=2)
        assert c.balancer.routed == [A, B]
        job_id = out["job_id"]
        assert out["subscription"]["request_id"] == out["subscribe_frame_id"]
        subscribed = [f for f in out["b_job_frames"] if f["type"] == "job.subscribed"]
        assert len(subscribed) == 1
        assert payload(subscribed[0])["request_id"] == out["subscribe_frame_id"]
        assert out["b_progress"] == list(range(1, 7))
        assert payload(out["b_terminal"])["result"] == {"ticks": 6}
        assert out["handle_outcome"]["payload"]["result"] == {"ticks": 6}
        assert out["a_outcome"]["payload"]["result"] == {"ticks": 6}
        b_seqs = [f["event_seq"] for f in out["b_frames"] if f.get("event_seq") is not None]
        assert b_seqs == list(range(1, len(b_seqs) + 1))
        assert len(job_frames(out, "B", job_id)) == 7
        assert len(job_frames(out, "B", out["own_job_id"])) == 2


async def test_one_idempotency_key_via_both_nodes_is_one_job(tmp_path: Path) -> None:
    """§7.2 across nodes: two reference clients submitting one key at once, one on each
    node, get the same job and both its result. Later the key is resubmitted by a new
    session on each node: the finished job's accept and terminal are replayed on both,
    and the key with different input is refused with ``DUPLICATE_KEY`` on both."""
    async with cluster(tmp_path) as c:
        racing: list[Report] = []

        async def submit() -> None:
            racing.append(await drive(c.url, "slow", input={"seconds": 0.5}, idempotency_key="k-1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            nursery.start_soon(submit)
        assert sorted(c.balancer.routed) == [A, B]
        job_id = racing[0]["job_id"]
        assert racing[1]["job_id"] == job_id
        for out in racing:
            assert out["outcome"]["status"] == "result", out["outcome"]
            assert out["outcome"]["payload"]["result"] == {"slept": 0.5}

        for node in (A, B):
            out = await drive(c.url, "slow", input={"seconds": 0.5}, idempotency_key="k-1")
            assert c.balancer.routed[-1] == node
            assert out["job_id"] == job_id
            # The finished job's terminal is replayed, so the handle resolves.
            assert out["outcome"] == racing[0]["outcome"]
            terminals = [f for f in out["frames"] if f.get("type") in ("job.result", "job.error")]
            assert [f["job_id"] for f in terminals] == [job_id]
        for node in (A, B):
            out = await drive(c.url, "slow", input={"seconds": 0.1}, idempotency_key="k-1")
            assert c.balancer.routed[-1] == node
            assert out["submit_error"]["code"] == "DUPLICATE_KEY"
            assert out["session_error"]["code"] == "DUPLICATE_KEY"
            assert out["session_error"]["request_id"] == out["submit_frame_id"]


async def test_a_resubmit_in_the_same_session_replays_the_finished_jobs_terminal(
    tmp_path: Path,
) -> None:
    """§7.2 as ``test_reference_client.test_idempotent_resubmit`` has it, on a cluster
    node: the same key twice in one session after the job finished, then the key with
    different input. The duplicate's handle must resolve with the job's terminal."""
    async with cluster(tmp_path) as c:
        out = await drive(c.url, "idempotent", key="k-same-session")
        first, second = out["first"], out["second"]
        assert first["outcome"]["status"] == "result"
        assert second["job_id"] == first["job_id"]
        assert out["conflict"]["code"] == "DUPLICATE_KEY"
        accepted = [f for f in out["second_frames"] if f["type"] == "job.accepted"]
        assert [payload(f)["request_id"] for f in accepted] == [second["submit_id"]]
        terminals = [f for f in out["second_frames"] if f["type"] in ("job.result", "job.error")]
        assert [f["job_id"] for f in terminals] == [first["job_id"]]
        assert second["outcome"] == first["outcome"]


async def test_another_principal_on_node_b_cannot_reach_a_job_on_node_a(
    tmp_path: Path,
) -> None:
    """Isolation across nodes: bob, on node B, lists none of alice's jobs (on node A),
    and his subscribe and cancel of them get ``JOB_NOT_FOUND``; alice's job is unhurt."""
    async with cluster(tmp_path) as c:
        other = next(t for t, p in TOKENS.items() if p == "bob")
        out = await drive(c.url, "isolation", other_token=other, seconds=1.0)
        assert c.balancer.routed == [A, B]
        assert not {out["a_running"], out["a_finished"]} & set(out["b_listed"])
        for which in ("running", "finished"):
            assert out[f"b_subscribe_{which}"]["code"] == "JOB_NOT_FOUND", which
            assert out[f"b_cancel_{which}"] is not None, f"cancel of A's {which} job not refused"
            assert out[f"b_cancel_{which}"]["code"] == "JOB_NOT_FOUND", which
        assert [f for f in out["b_job_frames"] if f["type"].startswith("job.")] == []
        assert out["a_outcome"]["status"] == "result"
        assert out["a_outcome"]["payload"]["final_status"] == "success"
