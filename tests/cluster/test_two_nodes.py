"""Two runtime nodes on one Redis, in one process (issue 16, docs/cluster.md).

Each node is a real ``open_cluster_runtime`` on a real ``redis-server`` of the
test's own; clients connect to whichever node the test picks, as a load balancer
would. (Nodes as separate processes, killed and paused: ``test_node_processes.py``.)

Rules: the real clock (Redis's TTLs are its own), every wait under ``trio.fail_after``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from arcp_trio.cluster import keys
from arcp_trio.cluster.redis import open_redis
from arcp_trio.cluster.runtime import open_cluster_runtime
from arcp_trio.cluster.shared import ClusterSettings
from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from tests.helpers import Peer, connect, events_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from arcp_trio.runtime.runtime import Runtime
    from tests.redis_server import RedisServer

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
SPEC = ["heartbeat", "ack", "list_jobs", "subscribe", "spec_shapes"]


@asynccontextmanager
async def nodes(redis: RedisServer, count: int = 2, **config: Any) -> AsyncIterator[list[Runtime]]:
    async with AsyncExitStack() as stack:
        runtimes = [
            await stack.enter_async_context(
                open_cluster_runtime(
                    redis.url,
                    settings=ClusterSettings(node_id=f"node-{n}", lease_sec=1.5, janitor_sec=0.3),
                    config=RuntimeConfig(shutdown_grace_sec=0.5, **config),
                    agents=demo_registry(),
                    tokens=TOKENS,
                )
            )
            for n in range(count)
        ]
        yield runtimes


async def move_to(runtime: Runtime, nursery: trio.Nursery, peer: Peer, client_side: Any) -> Peer:
    """The peer's connection drops; it resumes its session on ``runtime`` from the
    last seq it saw (as a client behind a load balancer would)."""
    seen, session_id, token = peer.last_event_seq, peer.session_id, peer.resume_token
    await client_side.aclose()
    await trio.sleep(0.1)  # events go on while nobody is attached
    again, _ = await connect(runtime, nursery)
    again.last_event_seq = seen
    welcome = await again.hello(
        features=SPEC,
        resume={"session_id": session_id, "resume_token": token, "last_event_seq": seen},
    )
    assert welcome["type"] == "session.welcome", welcome
    assert welcome["session_id"] == session_id
    return again


async def test_a_job_on_one_node_runs_and_its_events_reach_its_session(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(20):
        async with nodes(redis_server) as (a, _b), trio.open_nursery() as nursery:
            peer, _ = await connect(a, nursery)
            assert (await peer.hello(features=SPEC))["type"] == "session.welcome"
            accepted = await peer.submit("ticker@1.0.0", {"count": 5, "interval": 0})
            frames = await peer.recv_terminal(accepted["job_id"])
            events = events_of(frames, accepted["job_id"])
            assert [e["payload"]["body"]["current"] for e in events[:-1]] == [1, 2, 3, 4, 5]
            assert frames[-1]["type"] == "job.result"
            nursery.cancel_scope.cancel()


async def test_a_session_resumes_on_the_other_node_with_exactly_the_gap(
    redis_server: RedisServer,
) -> None:
    """§6.3 across nodes: events after ``last_event_seq``, no gap, no duplicate, then live."""
    with trio.fail_after(30):
        async with nodes(redis_server) as (a, b), trio.open_nursery() as nursery:
            peer, client_side = await connect(a, nursery)
            await peer.hello(features=SPEC)
            accepted = await peer.submit("ticker@1.0.0", {"count": 40, "interval": 0.02})
            job_id = accepted["job_id"]
            for _ in range(5):
                await peer.recv_type("job.event")
            again = await move_to(b, nursery, peer, client_side)
            frames = await again.recv_terminal(job_id)
            currents = [
                f["payload"]["body"]["current"]
                for f in events_of(frames, job_id)
                if f["payload"].get("kind") == "progress"
            ]
            # The ones seen on node A were 1..k; node B sends k+1..40, each once.
            assert currents == list(range(currents[0], 41))
            assert frames[-1]["type"] == "job.result"
            nursery.cancel_scope.cancel()


async def test_subscribe_on_one_node_to_a_job_on_the_other(redis_server: RedisServer) -> None:
    """§7.6 across nodes: history then live, exactly once, in the subscriber's seqs."""
    with trio.fail_after(30):
        async with nodes(redis_server) as (a, b), trio.open_nursery() as nursery:
            owner, _ = await connect(a, nursery)
            await owner.hello(features=SPEC)
            accepted = await owner.submit("ticker@1.0.0", {"count": 30, "interval": 0.02})
            job_id = accepted["job_id"]
            for _ in range(5):
                await owner.recv_type("job.event")
            watcher, _ = await connect(b, nursery)
            await watcher.hello(features=SPEC)
            await watcher.send("job.subscribe", {"job_id": job_id, "history": True})
            subscribed = await watcher.recv_type("job.subscribed")
            assert subscribed["payload"]["job_id"] == job_id
            assert subscribed["payload"]["agent"].startswith("ticker")
            frames = await watcher.recv_terminal(job_id)
            currents = [
                f["payload"]["body"]["current"]
                for f in events_of(frames, job_id)
                if f["payload"].get("kind") == "progress"
            ]
            assert currents == list(range(1, 31))
            assert frames[-1]["type"] == "job.result"
            # A subscriber's seqs are its own, from 1 (Peer checks no gap, no dup).
            assert frames[0]["event_seq"] == 1
            nursery.cancel_scope.cancel()


async def test_list_jobs_on_either_node_sees_every_node_scoped_by_principal(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with nodes(redis_server) as (a, b), trio.open_nursery() as nursery:
            made: list[str] = []
            for runtime, token in ((a, "tok-alice"), (b, "tok-alice"), (b, "tok-bob")):
                peer, _ = await connect(runtime, nursery)
                await peer.hello(token=token, features=SPEC)
                accepted = await peer.submit("echo@1.0.0", {"n": len(made)})
                await peer.recv_terminal(accepted["job_id"])
                made.append(accepted["job_id"])
            lister, _ = await connect(a, nursery)
            await lister.hello(features=SPEC)
            listed: list[str] = []
            cursor = None
            for _ in range(5):
                payload: dict[str, Any] = {"limit": 1}
                if cursor:
                    payload["cursor"] = cursor
                await lister.send("session.list_jobs", payload)
                page = await lister.recv_type("session.jobs")
                listed += [job["job_id"] for job in page["payload"]["jobs"]]
                cursor = page["payload"].get("next_cursor")
                if not cursor:
                    break
            assert listed == made[:2]  # alice's two, from both nodes; not bob's
            nursery.cancel_scope.cancel()


async def test_cancel_from_the_submitting_session_reaches_the_owner_node(
    redis_server: RedisServer,
) -> None:
    """§7.4: the submitter resumed on B cancels a job running on A."""
    with trio.fail_after(30):
        async with nodes(redis_server) as (a, b), trio.open_nursery() as nursery:
            peer, client_side = await connect(a, nursery)
            await peer.hello(features=SPEC)
            accepted = await peer.submit("slow@1.0.0", {"seconds": 30})
            job_id = accepted["job_id"]
            await peer.recv_type("job.event")
            again = await move_to(b, nursery, peer, client_side)
            await again.send("job.cancel", {"job_id": job_id, "reason": "enough"}, job_id=job_id)
            cancelled = await again.recv_type("job.cancelled")
            assert cancelled["payload"]["job_id"] == job_id
            terminal = await again.recv_type("job.error", "job.result")
            assert terminal["payload"].get("code") == "CANCELLED", terminal
            assert (await a.wait_job_done(job_id)).status == "cancelled"
            nursery.cancel_scope.cancel()


async def test_one_idempotency_key_on_two_nodes_at_once_makes_one_job(
    redis_server: RedisServer,
) -> None:
    """§7.2 across nodes: both submits get the same ``job.accepted``."""
    with trio.fail_after(30):
        async with nodes(redis_server) as (a, b), trio.open_nursery() as nursery:
            peers = []
            for runtime in (a, b):
                peer, _ = await connect(runtime, nursery)
                await peer.hello(features=SPEC)
                peers.append(peer)
            accepted: list[dict[str, Any]] = []

            async def submit(peer: Peer) -> None:
                accepted.append(
                    await peer.submit("slow@1.0.0", {"seconds": 0.5}, idempotency_key="k-1")
                )

            async with trio.open_nursery() as racing:
                for peer in peers:
                    racing.start_soon(submit, peer)
            assert [f["type"] for f in accepted] == ["job.accepted", "job.accepted"]
            assert accepted[0]["job_id"] == accepted[1]["job_id"]
            assert len(a.job_ids()) + len(b.job_ids()) == 1
            for peer in peers:  # both watch it to its end
                terminal = (await peer.recv_terminal(accepted[0]["job_id"]))[-1]
                assert terminal["type"] == "job.result"
            # Retention bounds Redis: the job's keys and its idempotency record expire.
            async with open_redis(redis_server.url) as redis:
                for _ in range(100):
                    ttls = [
                        await redis.pttl(key)
                        for key in (
                            keys.job(accepted[0]["job_id"]),
                            keys.idempotency("alice", "k-1"),
                        )
                    ]
                    if min(ttls) > 0:
                        break
                    await trio.sleep(0.05)
                assert min(ttls) > 0, ttls
            nursery.cancel_scope.cancel()


async def test_while_redis_does_not_answer_new_work_is_refused_retryably_and_then_resumes(
    redis_server: RedisServer,
) -> None:
    """docs/cluster.md, "When Redis is unreachable": a submit gets a retryable
    ``INTERNAL_ERROR`` (never a silent drop), the connection stays, and once Redis
    answers again the same connection's next submit runs."""
    with trio.fail_after(60):
        async with nodes(redis_server, count=1) as (a,), trio.open_nursery() as nursery:
            peer, _ = await connect(a, nursery)
            await peer.hello(features=SPEC)
            redis_server.pause()
            try:
                refused = await peer.submit("echo@1.0.0", {"n": 1})
            finally:
                redis_server.resume()
            assert refused["type"] == "session.error"
            assert refused["payload"]["code"] == "INTERNAL_ERROR"
            assert refused["payload"]["retryable"] is True
            accepted = await peer.submit("echo@1.0.0", {"n": 2})
            assert accepted["type"] == "job.accepted"
            terminal = (await peer.recv_terminal(accepted["job_id"]))[-1]
            assert terminal["payload"]["result"]["echo"] == {"n": 2}
            nursery.cancel_scope.cancel()


async def test_a_resubmit_of_a_finished_job_replays_its_terminal_in_the_same_session(
    redis_server: RedisServer,
) -> None:
    """§7.2 as on one process: the same accept again, then the job's terminal (a
    regression: the cluster once sent only the accept to the submitting session)."""
    with trio.fail_after(30):
        async with nodes(redis_server) as (a, _b), trio.open_nursery() as nursery:
            peer, _ = await connect(a, nursery)
            await peer.hello(features=SPEC)
            first = await peer.submit("echo@1.0.0", {"n": 1}, idempotency_key="k-same")
            done = (await peer.recv_terminal(first["job_id"]))[-1]
            again = await peer.submit("echo@1.0.0", {"n": 1}, idempotency_key="k-same")
            assert again["job_id"] == first["job_id"]
            replayed = (await peer.recv_terminal(first["job_id"], timeout=10))[-1]
            assert replayed["id"] == done["id"]  # the same terminal frame
            assert replayed["payload"] == done["payload"]
            nursery.cancel_scope.cancel()
