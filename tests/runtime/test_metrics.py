"""Prometheus metrics, /healthz and /readyz (issue 17, "Operations").

Rules: HTTP tests run a real ``serve_metrics`` on 127.0.0.1 port 0, read by a real
HTTP/1.1 client (h11 over a Trio TCP stream, or raw bytes where a client library
would refuse to send them), on the real clock under ``trio.fail_after``. Tests of
the figures themselves drive a runtime over in-memory transports on the autojump
clock and read the exposition through ``MetricsApp.respond`` (the one function both
ways of serving call), parsed by prometheus-client's own parser.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import h11
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.credentials import InProcessProvisioner
from arcp_trio.runtime.metrics import MetricsApp, metrics_asgi_app, serve_metrics
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.runtime.serve import serve_websocket
from arcp_trio.store.sqlite import SQLiteStore
from arcp_trio.transport.memory import memory_transport_pair
from arcp_trio.transport.websocket import connect_websocket
from tests.helpers import REFERENCE_FEATURES, TOKENS, Peer, connect, trio_wall_clock

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from arcp_trio.runtime.context import JobContext
    from arcp_trio.runtime.metrics import MetricsServerInfo

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(body: bytes) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape_app(app: MetricsApp) -> Samples:
    response = app.respond("GET", "/metrics")
    assert response.status == 200
    return parse(response.body)


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def exchange(
    stream: trio.SocketStream,
    conn: h11.Connection,
    method: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> Reply:
    """One request and its response over a kept-alive h11 client connection."""
    request_headers = [("host", "127.0.0.1"), *headers]
    if body:
        request_headers.append(("content-length", str(len(body))))
    data = conn.send(h11.Request(method=method, target=target, headers=request_headers)) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
    response: h11.Response | None = None
    received = b""
    for _ in range(10_000):
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            received += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"unexpected {event!r}")
    assert response is not None
    return Reply(
        response.status_code,
        {k.decode(): v.decode() for k, v in response.headers},
        received,
    )


async def http(port: int, method: str, target: str, **options: Any) -> Reply:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            return await exchange(stream, h11.Connection(h11.CLIENT), method, target, **options)


async def raw_request(port: int, data: bytes) -> bytes:
    """Send bytes no client library would, and read until the server closes."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
            return received


async def scrape(info: MetricsServerInfo) -> Samples:
    reply = await http(info.port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return parse(reply.body)


def gated_registry(release: trio.Event) -> Any:
    """The demo agents plus ``gated``, which finishes when the test says."""
    registry = demo_registry()

    @registry.agent("gated")
    async def gated(_input: Any, ctx: JobContext) -> Any:
        await ctx.status("waiting")
        await release.wait()
        return "released"

    return registry


# == over HTTP, with a real server and client ======================================================


async def test_the_figures_move_when_a_job_runs_over_a_real_socket(
    nursery: trio.Nursery,
) -> None:
    config = RuntimeConfig(heartbeat_interval_sec=10, shutdown_grace_sec=1)
    async with open_runtime(agents=demo_registry(), tokens=TOKENS, config=config) as rt:
        info: MetricsServerInfo = await nursery.start(serve_metrics, rt, "127.0.0.1", 0)
        assert info.url == f"http://127.0.0.1:{info.port}"
        before = await scrape(info)
        assert value(before, "arcp_ready") == 1
        assert value(before, "arcp_events_emitted_total") == 0
        assert value(before, "arcp_connections") == 0
        assert value(before, "arcp_jobs", state="success") == 0

        ws = await nursery.start(serve_websocket, rt, "127.0.0.1", 0)
        with trio.fail_after(10):
            peer = Peer(await connect_websocket(ws.url))
            await peer.hello()
            accepted = await peer.submit("ticker", {"count": 5, "interval": 0})
            await peer.recv_terminal(accepted["job_id"])
        after = await scrape(info)
        assert value(after, "arcp_events_emitted_total") == 5
        # Five events and the terminal, into the one watching session's stream.
        assert value(after, "arcp_events_delivered_total") == 6
        # The welcome, job.accepted, five events and the terminal, at least.
        assert value(after, "arcp_frames_written_total") >= 8
        assert value(after, "arcp_jobs", state="success") == 1
        assert value(after, "arcp_jobs", state="running") == 0
        assert value(after, "arcp_sessions", state="attached") == 1
        assert value(after, "arcp_sessions", state="detached") == 0
        assert value(after, "arcp_connections") == 1
        assert value(after, "arcp_sessions_opened_total") == 1
        assert value(after, "arcp_buffered_events") == 6  # nothing acknowledged
        assert value(after, "arcp_session_buffered_events_max") == 6
        await peer.transport.aclose()


async def test_readyz_is_503_until_recovery_and_again_from_shutdown(
    nursery: trio.Nursery,
) -> None:
    app = MetricsApp()  # before the runtime exists (its store may take a while to load)
    info: MetricsServerInfo = await nursery.start(serve_metrics, app, "127.0.0.1", 0)
    assert (await http(info.port, "GET", "/healthz")).status == 200
    starting = await http(info.port, "GET", "/readyz")
    assert starting.status == 503
    assert starting.body == b"not ready\n"
    assert value(await scrape(info), "arcp_ready") == 0

    release = trio.Event()
    config = RuntimeConfig(heartbeat_interval_sec=10, shutdown_grace_sec=30)
    async with open_runtime(agents=gated_registry(release), tokens=TOKENS, config=config) as rt:
        app.attach(rt)
        ready = await http(info.port, "GET", "/readyz")
        assert ready.status == 200
        assert ready.body == b"ready\n"
        assert value(await scrape(info), "arcp_ready") == 1
        peer, _ = await connect(rt, nursery)
        await peer.hello()
        accepted = await peer.submit("gated")
        async with trio.open_nursery() as draining:
            draining.start_soon(rt.shutdown)
            # The job has its grace: the runtime is alive but no longer ready.
            assert (await http(info.port, "GET", "/readyz")).status == 503
            assert (await http(info.port, "GET", "/healthz")).status == 200
            assert value(await scrape(info), "arcp_ready") == 0
            release.set()
        frames = await peer.recv_terminal(accepted["job_id"])
        assert frames[-1]["type"] == "job.result"  # it finished within the grace
    assert (await http(info.port, "GET", "/readyz")).status == 503
    assert (await http(info.port, "GET", "/healthz")).status == 200


async def test_unknown_paths_other_methods_head_and_keep_alive(nursery: trio.Nursery) -> None:
    async with open_runtime(agents=demo_registry(), tokens=TOKENS) as rt:
        info: MetricsServerInfo = await nursery.start(serve_metrics, rt, "127.0.0.1", 0)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", info.port)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                missing = await exchange(stream, conn, "GET", "/nope")
                assert missing.status == 404
                conn.start_next_cycle()
                posted = await exchange(stream, conn, "POST", "/metrics", body=b"x=1")
                assert posted.status == 405
                assert posted.headers["allow"] == "GET, HEAD"
                conn.start_next_cycle()
                head = await exchange(stream, conn, "HEAD", "/metrics")
                assert head.status == 200
                assert int(head.headers["content-length"]) > 0
                assert head.body == b""
                conn.start_next_cycle()
                # A query string is ignored; the same connection is still served.
                metrics = await exchange(stream, conn, "GET", "/metrics?debug=1")
                assert metrics.status == 200
                assert int(metrics.headers["content-length"]) == len(metrics.body)
                assert b"arcp_ready 1.0" in metrics.body


async def test_the_exposition_format_follows_the_accept_header(nursery: trio.Nursery) -> None:
    async with open_runtime(agents=demo_registry(), tokens=TOKENS) as rt:
        info: MetricsServerInfo = await nursery.start(serve_metrics, rt, "127.0.0.1", 0)
        openmetrics = await http(
            info.port,
            "GET",
            "/metrics",
            headers=[("accept", "application/openmetrics-text; version=1.0.0")],
        )
        assert openmetrics.status == 200
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.body.endswith(b"# EOF\n")


async def test_oversized_requests_are_refused(nursery: trio.Nursery) -> None:
    async with open_runtime(agents=demo_registry(), tokens=TOKENS) as rt:
        info: MetricsServerInfo = await nursery.start(
            partial(serve_metrics, max_request_size=1024), rt, "127.0.0.1", 0
        )
        headers = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
        answer = await raw_request(info.port, headers)
        assert answer.startswith(b"HTTP/1.1 431 ")
        body = b"a" * 4096
        posted = await raw_request(
            info.port,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        )
        assert posted.startswith(b"HTTP/1.1 413 ")
        garbage = await raw_request(info.port, b"NOT HTTP AT ALL\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        # The server is none the worse.
        assert (await http(info.port, "GET", "/healthz")).status == 200


async def test_connections_are_capped_and_idle_ones_closed(nursery: trio.Nursery) -> None:
    async with open_runtime(agents=demo_registry(), tokens=TOKENS) as rt:
        info: MetricsServerInfo = await nursery.start(
            partial(serve_metrics, max_connections=1, request_timeout=0.5), rt, "127.0.0.1", 0
        )
        with trio.fail_after(10):
            first = await trio.open_tcp_stream("127.0.0.1", info.port)
            async with first:
                conn = h11.Connection(h11.CLIENT)
                assert (await exchange(first, conn, "GET", "/healthz")).status == 200
                # The first is kept alive, so a second is one too many: closed at once.
                second = await trio.open_tcp_stream("127.0.0.1", info.port)
                async with second:
                    await second.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    try:
                        refused = await second.receive_some(1024)
                    except trio.BrokenResourceError:
                        refused = b""
                    assert refused == b""
                # The first, left idle past the request timeout, is closed too.
                assert await first.receive_some(1024) == b""
            # And then there is room again.
            assert (await http(info.port, "GET", "/healthz")).status == 200


# == the figures, on the virtual clock =============================================================


async def test_handshake_failures_are_counted_by_code(autojump_clock: trio.abc.Clock) -> None:
    config = RuntimeConfig(heartbeat_interval_sec=10, handshake_timeout_sec=5)
    async with (
        open_runtime(
            agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
        ) as rt,
        trio.open_nursery() as nursery,
    ):
        app = MetricsApp(rt)
        fresh = scrape_app(app)
        for code in ("UNAUTHENTICATED", "RESUME_WINDOW_EXPIRED", "INVALID_REQUEST"):
            assert value(fresh, "arcp_handshake_failures_total", code=code) == 0

        wrong, _ = await connect(rt, nursery)
        refused = await wrong.hello(token="not-a-token")
        assert refused["payload"]["code"] == "UNAUTHENTICATED"
        gone, _ = await connect(rt, nursery)
        expired = await gone.hello(
            resume={"session_id": "sess_gone", "resume_token": "rtk_gone", "last_event_seq": 0}
        )
        assert expired["payload"]["code"] == "RESUME_WINDOW_EXPIRED"
        rude, _ = await connect(rt, nursery)
        await rude.send("session.ping", {"nonce": "n", "sent_at": "2026-01-01T00:00:00Z"})
        assert (await rude.recv())["payload"]["code"] == "INVALID_REQUEST"
        await connect(rt, nursery)  # a peer that says nothing at all
        await trio.sleep(6)

        samples = scrape_app(app)
        assert value(samples, "arcp_handshake_failures_total", code="UNAUTHENTICATED") == 1
        assert value(samples, "arcp_handshake_failures_total", code="RESUME_WINDOW_EXPIRED") == 1
        assert value(samples, "arcp_handshake_failures_total", code="INVALID_REQUEST") == 1
        assert value(samples, "arcp_handshake_timeouts_total") == 1
        assert value(samples, "arcp_sessions_opened_total") == 0
        assert rt.statistics().handshake_failures == {
            "UNAUTHENTICATED": 1,
            "RESUME_WINDOW_EXPIRED": 1,
            "INVALID_REQUEST": 1,
        }
        nursery.cancel_scope.cancel()


async def test_a_slow_consumer_counts_a_backpressure_episode(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = RuntimeConfig(backpressure_high_water=4, heartbeat_interval_sec=1000)
    async with (
        open_runtime(
            agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
        ) as rt,
        trio.open_nursery() as nursery,
    ):
        app = MetricsApp(rt)
        # A rendezvous transport: nothing moves unless the peer reads.
        client_side, runtime_side = memory_transport_pair(buffer=0)
        nursery.start_soon(rt.handle_transport, runtime_side)
        peer = Peer(client_side)
        await peer.hello()
        accepted = await peer.submit("chatty", {"n": 60})
        await trio.sleep(1)  # the peer reads nothing: the agent waits for it
        stalled = rt.statistics()
        assert stalled.backpressure_episodes == 1
        assert stalled.buffered_events >= 4  # stamped, not yet all written
        assert stalled.jobs_by_status["running"] == 1
        assert value(scrape_app(app), "arcp_backpressure_episodes_total") == 1
        assert value(scrape_app(app), "arcp_queued_frames") == stalled.queued_frames
        frames = await peer.recv_terminal(accepted["job_id"])
        assert len([f for f in frames if f["type"] == "job.event"]) == 60
        done = scrape_app(app)
        assert value(done, "arcp_backpressure_episodes_total") >= 1
        assert value(done, "arcp_events_emitted_total") == 60
        assert value(done, "arcp_queued_frames") == 0
        # The connection's figures outlive it.
        await client_side.aclose()
        await trio.sleep(1)
        gone = scrape_app(app)
        assert value(gone, "arcp_connections") == 0
        assert value(gone, "arcp_sessions", state="detached") == 1
        assert value(gone, "arcp_backpressure_episodes_total") == value(
            done, "arcp_backpressure_episodes_total"
        )
        assert value(gone, "arcp_frames_written_total") >= 62


async def test_buffer_overflow_episodes_and_evictions_are_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = RuntimeConfig(max_buffered_events=8, heartbeat_interval_sec=1000)
    async with (
        open_runtime(
            agents=demo_registry(), tokens=TOKENS, config=config, wall_clock=trio_wall_clock
        ) as rt,
        trio.open_nursery() as nursery,
    ):
        peer, _ = await connect(rt, nursery)
        await peer.hello()
        accepted = await peer.submit("chatty", {"n": 40})
        frames = await peer.recv_terminal(accepted["job_id"])
        notices = [
            f for f in frames if f["type"] == "job.event" and f["payload"].get("kind") == "status"
        ]
        assert notices  # §6.5: the client was told
        samples = scrape_app(MetricsApp(rt))
        assert value(samples, "arcp_buffer_overflows_total") == len(notices)
        assert value(samples, "arcp_events_evicted_total") > 0
        assert value(samples, "arcp_session_buffered_events_max") <= 8
        nursery.cancel_scope.cancel()


async def test_jobs_by_state_has_every_state(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_runtime(agents=demo_registry(), tokens=TOKENS, wall_clock=trio_wall_clock) as rt,
        trio.open_nursery() as nursery,
    ):
        peer, _ = await connect(rt, nursery)
        await peer.hello()
        done = await peer.submit("echo", 1)
        await peer.recv_terminal(done["job_id"])
        await peer.submit("slow", {"seconds": 100})
        cancelled = await peer.submit("slow", {"seconds": 100})
        await peer.send("job.cancel", {"reason": "test"}, job_id=cancelled["job_id"])
        await peer.recv_terminal(cancelled["job_id"])
        samples = scrape_app(MetricsApp(rt))
        states = {"pending", "running", "success", "error", "cancelled", "timed_out"}
        assert {
            dict(labels)["state"]: count
            for (name, labels), count in samples.items()
            if name == "arcp_jobs"
        } == dict.fromkeys(states, 0.0) | {"success": 1.0, "running": 1.0, "cancelled": 1.0}
        assert value(samples, "arcp_jobs_running_tasks") == 1
        nursery.cancel_scope.cancel()


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """The SQLite writer works in a thread: jump only after real idleness."""
    return trio.testing.MockClock(autojump_threshold=0.2)


async def test_unrevoked_credentials_are_exported(
    tmp_path: Path, nursery: trio.Nursery, patient_clock: trio.abc.Clock
) -> None:
    upstream = InProcessProvisioner()
    async with open_runtime(
        agents=demo_registry(),
        tokens=TOKENS,
        wall_clock=trio_wall_clock,
        store=SQLiteStore(tmp_path / "rt.sqlite3"),
        provisioner=upstream,
        config=RuntimeConfig(heartbeat_interval_sec=1000),
    ) as rt:
        app = MetricsApp(rt)
        assert value(scrape_app(app), "arcp_credentials_unrevoked") == 0
        owner, _ = await connect(rt, nursery)
        await owner.hello(features=[*REFERENCE_FEATURES, "provisioned_credentials"])
        doomed = await owner.submit("slow", {"seconds": 1})
        upstream.permanent_failure_ids.add(doomed["payload"]["credentials"][0]["id"])
        await owner.recv_terminal(doomed["job_id"])
        await trio.sleep(1)
        assert value(scrape_app(app), "arcp_credentials_unrevoked") == 1


# == registries and the ASGI app ===================================================================


async def test_each_runtime_has_its_own_registry(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_runtime(agents=demo_registry(), tokens=TOKENS) as one,
        open_runtime(agents=demo_registry(), tokens=TOKENS) as two,
        trio.open_nursery() as nursery,
    ):
        first, second = MetricsApp(one), MetricsApp(two)
        assert first.registry is not second.registry
        peer, _ = await connect(one, nursery)
        await peer.hello()
        assert value(scrape_app(first), "arcp_sessions", state="attached") == 1
        assert value(scrape_app(second), "arcp_sessions", state="attached") == 0
        # The caller's own registry, once; twice would be two sets of the same names.
        mine = CollectorRegistry()
        MetricsApp(one, registry=mine)
        assert b"arcp_sessions{" in generate_latest(mine)
        with pytest.raises(ValueError, match="Duplicated"):
            MetricsApp(two, registry=mine)
        nursery.cancel_scope.cancel()


class ASGICall:
    """One ASGI call: the app's ``send`` messages, fed ``messages`` to receive."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.incoming = list(messages)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return self.incoming.pop(0)

    async def send(self, message: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(dict(message))


def http_scope(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"example"), (b"accept", b"*/*")],
    }


async def test_the_asgi_app_serves_the_same_endpoints(autojump_clock: trio.abc.Clock) -> None:
    app = metrics_asgi_app()
    call = ASGICall({"type": "http.request", "body": b"", "more_body": False})
    await app(http_scope("GET", "/readyz"), call.receive, call.send)
    assert call.sent[0]["status"] == 503
    async with open_runtime(agents=demo_registry(), tokens=TOKENS) as rt:
        app.attach(rt)
        assert metrics_asgi_app(app) is app
        for method, path, status in [
            ("GET", "/readyz", 200),
            ("GET", "/healthz", 200),
            ("GET", "/metrics", 200),
            ("DELETE", "/metrics", 405),
            ("GET", "/elsewhere", 404),
        ]:
            call = ASGICall({"type": "http.request", "body": b"", "more_body": False})
            await app(http_scope(method, path), call.receive, call.send)
            start, body = call.sent
            assert start["type"] == "http.response.start"
            assert start["status"] == status, (method, path)
            assert body["type"] == "http.response.body"
            headers = dict(start["headers"])
            assert int(headers[b"content-length"]) == len(body["body"])
            if status == 200 and path == "/metrics":
                assert value(parse(body["body"]), "arcp_ready") == 1
    lifespan = ASGICall({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan.receive, lifespan.send)
    assert [m["type"] for m in lifespan.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    socket = ASGICall({"type": "websocket.connect"})
    await app({"type": "websocket", "path": "/metrics"}, socket.receive, socket.send)
    assert socket.sent == [{"type": "websocket.close", "code": 1000}]


async def test_the_asgi_app_under_hypercorn(nursery: trio.Nursery) -> None:
    """The same app behind a real ASGI server (hypercorn's Trio worker)."""
    pytest.importorskip("hypercorn")
    from hypercorn.config import Config
    from hypercorn.trio import serve

    async with open_runtime(agents=demo_registry(), tokens=TOKENS) as rt:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None
        stop = trio.Event()
        with trio.fail_after(10):
            binds: list[str] = await nursery.start(
                lambda task_status: serve(
                    metrics_asgi_app(rt),  # type: ignore[arg-type]
                    config,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
        port = int(binds[0].rsplit(":", 1)[1])
        metrics = await http(port, "GET", "/metrics")
        assert metrics.status == 200
        assert value(parse(metrics.body), "arcp_ready") == 1
        assert (await http(port, "GET", "/readyz")).status == 200
        assert (await http(port, "PUT", "/healthz")).status == 405
        stop.set()


def test_statistics_are_plain_data() -> None:
    """``RuntimeStatistics`` stays a hashable frozen record (the mappings are not
    part of its hash) with the fields it had before metrics."""
    from arcp_trio.runtime.runtime import RuntimeStatistics

    stats = RuntimeStatistics(
        sessions=0,
        attached_sessions=0,
        jobs_total=0,
        jobs_active=0,
        buffered_events=0,
        cached_events=0,
        cached_history_events=0,
    )
    assert hash(stats) == hash(stats)
    assert stats.handshake_failures == {}
    assert stats.ready is False
