"""Prometheus metrics and health endpoints for a runtime (``arcp-trio[metrics]``).

``pip install 'arcp-trio[metrics]'`` (prometheus-client and h11), then either serve
the three endpoints on a port of their own::

    async with open_runtime(...) as runtime:
        nursery.start_soon(serve_metrics, runtime, "0.0.0.0", 9464)

or mount them in an ASGI app (``metrics_asgi_app(runtime)``). A ``MetricsApp`` may be
built before the runtime exists and ``attach``-ed to it once it is open, so
``/healthz`` answers while the store is still loading and ``/readyz`` says 503 until
recovery is done.

Theory of operation
-------------------
The runtime counts what it does in plain integers, on its own objects, and knows
nothing of Prometheus (``Runtime.statistics()``; the runtime never imports this
module). ``RuntimeCollector`` is a prometheus-client custom collector: each scrape
reads one ``statistics()`` snapshot, in the scraping task (the event loop's thread:
the runtime's state is not for other threads), and renders the families below. So
the hot path pays nothing for metrics and a scrape costs one pass over the sessions,
jobs and connections. Each ``MetricsApp`` has its own ``CollectorRegistry`` (not the
process-global default), so two runtimes in one process never clash; pass
``registry=`` to add them to one of yours.

Every metric name starts ``arcp_`` (a contract: dashboards and alerts depend on it):

=====================================  =======  ========  ==========================
name                                   type     labels    meaning
=====================================  =======  ========  ==========================
``arcp_ready``                         gauge              1 while ``/readyz`` is 200
``arcp_sessions``                      gauge    state     attached / detached
``arcp_connections``                   gauge              transports being served
``arcp_jobs``                          gauge    state     known jobs by status (§7.3)
``arcp_jobs_running_tasks``            gauge              jobs whose task runs here
``arcp_buffered_events``               gauge              events held for resume
``arcp_session_buffered_events_max``   gauge              largest one session's
``arcp_cached_events``                 gauge              of those, held in RAM
``arcp_cached_history_events``         gauge              job history held in RAM
``arcp_queued_frames``                 gauge              frames waiting to be written
``arcp_credentials_unrevoked``         gauge              revocations failed for good
``arcp_events_emitted_total``          counter            events agents emitted
``arcp_events_delivered_total``        counter            job frames into sessions
``arcp_frames_written_total``          counter            frames written to transports
``arcp_backpressure_episodes_total``   counter            producer waited on a peer
``arcp_buffer_overflows_total``        counter            §6.5 eviction episodes
``arcp_events_evicted_total``          counter            events those evicted
``arcp_sessions_opened_total``         counter            new sessions welcomed
``arcp_sessions_resumed_total``        counter            sessions resumed (§6.3)
``arcp_handshake_failures_total``      counter  code      hellos refused, by §12 code
``arcp_handshake_timeouts_total``      counter            no first frame in time
=====================================  =======  ========  ==========================

docs/deploy.md ("Metrics and health") says the same for operators.

The three endpoints have one implementation, ``MetricsApp.respond`` (method and
request target in; status, headers and body out), served two ways: ``serve_metrics``,
a small HTTP/1.1 server on Trio (h11; bounded request size, a deadline per request,
a cap on concurrent connections), and ``MetricsApp`` itself, an ASGI application.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import attrs
import trio

try:
    import h11
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import choose_encoder
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "metrics and health endpoints need the metrics extra: pip install 'arcp-trio[metrics]'"
    ) from exc

from ..protocol.job import JobStatus
from ..wire.errors import ErrorCode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, MutableMapping

    from prometheus_client.metrics_core import Metric

    from .runtime import Runtime, RuntimeStatistics

__all__ = [
    "HTTPResponse",
    "MetricsApp",
    "MetricsServerInfo",
    "RuntimeCollector",
    "metrics_asgi_app",
    "serve_metrics",
]

log = logging.getLogger(__name__)

#: Handshake refusal codes always exported (at 0 until one happens), so a rate over
#: them exists from the first scrape; any other code appears when first counted.
_HANDSHAKE_CODES = tuple(
    str(code)
    for code in (
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.RESUME_WINDOW_EXPIRED,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.INTERNAL_ERROR,
    )
)


class RuntimeCollector:
    """A prometheus-client collector of one runtime's ``statistics()``.

    ``source`` returns the runtime, or None while there is none yet (then only
    ``arcp_ready 0`` is exported). Register it in a ``CollectorRegistry``; a scrape
    calls ``collect`` in the scraping task.
    """

    def __init__(self, source: Callable[[], Runtime | None]) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (the registry checks names against it)."""
        return _families(None)

    def collect(self) -> Iterator[Metric]:
        runtime = self._source()
        if runtime is None:
            ready = GaugeMetricFamily("arcp_ready", _READY_HELP)
            ready.add_metric([], 0)
            return iter([ready])
        return _families(runtime.statistics())


_READY_HELP = "1 once the store is open and recovery is done, 0 before and from shutdown on."


def _families(s: RuntimeStatistics | None) -> Iterator[Metric]:
    """Every family, from one snapshot; without samples when ``s`` is None."""

    def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
        if s is None:
            return GaugeMetricFamily(name, documentation)
        return GaugeMetricFamily(name, documentation, value=value)

    def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
        if s is None:
            return CounterMetricFamily(name, documentation)
        return CounterMetricFamily(name, documentation, value=value)

    yield gauge("arcp_ready", _READY_HELP, 0 if s is None else int(s.ready))
    sessions = GaugeMetricFamily(
        "arcp_sessions", "Sessions the runtime holds, attached or detached.", labels=["state"]
    )
    jobs = GaugeMetricFamily(
        "arcp_jobs", "Jobs the runtime knows (finished ones until retention).", labels=["state"]
    )
    failures = CounterMetricFamily(
        "arcp_handshake_failures",
        "Handshakes refused with a session.error, by its code.",
        labels=["code"],
    )
    if s is not None:
        sessions.add_metric(["attached"], s.attached_sessions)
        sessions.add_metric(["detached"], s.sessions - s.attached_sessions)
        for status in JobStatus:
            jobs.add_metric([str(status)], s.jobs_by_status.get(str(status), 0))
        counts = dict.fromkeys(_HANDSHAKE_CODES, 0) | dict(s.handshake_failures)
        for code, count in sorted(counts.items()):
            failures.add_metric([code], count)
    yield sessions
    yield gauge(
        "arcp_connections",
        "Transports being served: in the handshake or attached to a session.",
        0 if s is None else s.connections,
    )
    yield jobs
    yield gauge(
        "arcp_jobs_running_tasks",
        "Jobs whose task is running in this process.",
        0 if s is None else s.jobs_active,
    )
    yield gauge(
        "arcp_buffered_events",
        "Events sessions hold for resume, in all (RAM or the store).",
        0 if s is None else s.buffered_events,
    )
    yield gauge(
        "arcp_session_buffered_events_max",
        "The most events any one session holds for resume.",
        0 if s is None else s.max_session_buffered_events,
    )
    yield gauge(
        "arcp_cached_events",
        "Of the buffered events, how many RAM holds.",
        0 if s is None else s.cached_events,
    )
    yield gauge(
        "arcp_cached_history_events",
        "Job-history events RAM holds, across all jobs.",
        0 if s is None else s.cached_history_events,
    )
    yield gauge(
        "arcp_queued_frames",
        "Frames queued on connections, not yet written to their transports.",
        0 if s is None else s.queued_frames,
    )
    yield gauge(
        "arcp_credentials_unrevoked",
        "Provisioned credentials whose revocation failed for good (each logged at ERROR).",
        0 if s is None else len(s.unrevoked_credentials),
    )
    yield counter(
        "arcp_events_emitted",
        "Events agents emitted (once each, however many sessions watch the job).",
        0 if s is None else s.events_published,
    )
    yield counter(
        "arcp_events_delivered",
        "Job frames (events, terminals, notices) stamped into a session's stream.",
        0 if s is None else s.events_delivered,
    )
    yield counter(
        "arcp_frames_written",
        "Frames written to transports, of every kind.",
        0 if s is None else s.frames_written,
    )
    yield counter(
        "arcp_backpressure_episodes",
        "Times a live connection fell so far behind that a producer waited for it.",
        0 if s is None else s.backpressure_episodes,
    )
    yield counter(
        "arcp_buffer_overflows",
        "Times a session's buffer cap evicted unacknowledged events (a back_pressure notice).",
        0 if s is None else s.buffer_overflows,
    )
    yield counter(
        "arcp_events_evicted",
        "Unacknowledged events evicted by a session's buffer cap.",
        0 if s is None else s.events_evicted,
    )
    yield counter(
        "arcp_sessions_opened",
        "New sessions welcomed.",
        0 if s is None else s.sessions_opened,
    )
    yield counter(
        "arcp_sessions_resumed",
        "Sessions resumed on a new connection.",
        0 if s is None else s.sessions_resumed,
    )
    yield failures
    yield counter(
        "arcp_handshake_timeouts",
        "Connections whose first frame did not arrive within handshake_timeout_sec.",
        0 if s is None else s.handshake_timeouts,
    )


# == the endpoints, once ==========================================================================


@attrs.frozen
class HTTPResponse:
    """What ``MetricsApp.respond`` answers: the same for both ways of serving it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _text(status: int, text: str, *extra: tuple[str, str]) -> HTTPResponse:
    body = text.encode()
    return HTTPResponse(
        status=status,
        headers=(
            ("content-type", "text/plain; charset=utf-8"),
            ("cache-control", "no-store"),
            *extra,
        ),
        body=body,
    )


class MetricsApp:
    """``/metrics``, ``/healthz`` and ``/readyz`` of one runtime; also an ASGI app.

    Args:
        runtime: the runtime, or None until ``attach`` (``/readyz`` is 503 meanwhile).
        registry: where the runtime's collector goes; a new ``CollectorRegistry`` by
            default (never the process-global one, so two runtimes never clash).

    Raises:
        ValueError: ``registry`` already has metrics of these names
            (prometheus-client's ``DuplicateTimeseries``).
    """

    def __init__(
        self, runtime: Runtime | None = None, *, registry: CollectorRegistry | None = None
    ) -> None:
        self._runtime = runtime
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector = RuntimeCollector(lambda: self._runtime)
        self.registry.register(self.collector)

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime

    def attach(self, runtime: Runtime) -> None:
        """Serve ``runtime``'s figures and readiness from now on."""
        self._runtime = runtime

    def respond(self, method: str, target: str, *, accept: str = "") -> HTTPResponse:
        """The answer to one request: ``target`` is its path (a query is ignored),
        ``accept`` its Accept header (Prometheus negotiates the text format)."""
        path = target.partition("?")[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            response = _text(404, "not found\n")
        elif method not in ("GET", "HEAD"):
            response = _text(405, "method not allowed\n", ("allow", "GET, HEAD"))
        elif path == "/healthz":
            # Liveness: the process answers. Nothing else is asked of it (a runtime
            # that is shutting down is still alive until it exits).
            response = _text(200, "ok\n")
        elif path == "/readyz":
            runtime = self._runtime
            if runtime is not None and runtime.ready:
                response = _text(200, "ready\n")
            else:
                response = _text(503, "not ready\n")
        else:
            encoder, content_type = choose_encoder(accept)
            response = HTTPResponse(
                status=200,
                headers=(("content-type", content_type), ("cache-control", "no-store")),
                body=encoder(self.registry),
            )
        headers = (*response.headers, ("content-length", str(len(response.body))))
        # HEAD: GET's headers, no body (RFC 9110 §9.3.2).
        body = b"" if method == "HEAD" else response.body
        return HTTPResponse(status=response.status, headers=headers, body=body)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        """ASGI 3: the three endpoints over ``http``; ``lifespan`` is acknowledged
        (the runtime's lifetime is the caller's); a ``websocket`` is refused."""
        kind = scope["type"]
        if kind == "http":
            accept = ""
            for name, value in scope.get("headers") or ():
                if name.lower() == b"accept":
                    accept = value.decode("latin-1")
            response = self.respond(scope["method"], scope["path"], accept=accept)
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(k.encode(), v.encode()) for k, v in response.headers],
                }
            )
            await send({"type": "http.response.body", "body": response.body})
        elif kind == "lifespan":
            for _ in range(2):  # startup, then shutdown
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})


def metrics_asgi_app(source: Runtime | MetricsApp | None = None) -> MetricsApp:
    """The ASGI application for ``/metrics``, ``/healthz`` and ``/readyz``.

    Mount it where http requests go (``arcp_trio.asgi``'s ``http_app``, or a path of
    your framework). Pass the ``MetricsApp`` that ``serve_metrics`` serves to share
    its registry; a ``Runtime`` (or nothing, then ``attach``) makes a new one.
    """
    return source if isinstance(source, MetricsApp) else MetricsApp(source)


# == a small HTTP/1.1 server on Trio ===============================================================


@attrs.frozen
class MetricsServerInfo:
    """Where ``serve_metrics`` listens (reported via ``task_status``)."""

    host: str
    #: The bound port (the real one when 0 was asked for).
    port: int

    @property
    def url(self) -> str:
        """``http://host:port`` (the endpoints are ``/metrics``, ``/healthz``, ``/readyz``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


#: Bytes asked of the socket per read.
_READ_SIZE = 4096
#: Requests one kept-alive connection may make before it is closed.
_MAX_REQUESTS_PER_CONNECTION = 1000


async def serve_metrics(
    source: Runtime | MetricsApp | None,
    host: str,
    port: int,
    *,
    max_connections: int = 64,
    request_timeout: float = 10.0,
    max_request_size: int = 8192,
    task_status: trio.TaskStatus[MetricsServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET``/``HEAD`` ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP/1.1
    on ``http://host:port`` until cancelled.

    ``task_status.started`` reports a ``MetricsServerInfo`` with the bound address
    (port 0 picks a free one). Other paths get 404, other methods 405.

    Args:
        source: a runtime, or a ``MetricsApp`` (which may be ``attach``-ed to its
            runtime later: ``/healthz`` answers at once, ``/readyz`` 503 until then).
        max_connections: connections served at once; one more is closed at accept.
        request_timeout: each request must arrive and its answer be written within
            this; a connection idle that long is closed.
        max_request_size: bytes of request line and headers (431 past it), and of a
            body (413 past it).

    Cancellation: stops accepting and closes every connection; the runtime is
    untouched.
    """
    app = source if isinstance(source, MetricsApp) else MetricsApp(source)
    server = _HTTPServer(
        app,
        max_connections=max_connections,
        request_timeout=request_timeout,
        max_request_size=max_request_size,
    )
    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        bound = listeners[0].socket.getsockname()
        info = MetricsServerInfo(host=str(bound[0]), port=int(bound[1]))
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        raise
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.serve, listeners)
        log.info("metrics listening url=%s", info.url)
        task_status.started(info)


class _HTTPServer:
    """One ``serve_metrics`` server's connections (h11 drives the protocol)."""

    def __init__(
        self,
        app: MetricsApp,
        *,
        max_connections: int,
        request_timeout: float,
        max_request_size: int,
    ) -> None:
        if max_connections < 1 or request_timeout <= 0 or max_request_size < 1:
            raise ValueError("max_connections, request_timeout and max_request_size must be > 0")
        self._app = app
        self._max_connections = max_connections
        self._timeout = request_timeout
        self._max_size = max_request_size
        self._active = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        """One connection's task; never raises (``serve_listeners`` would end)."""
        if self._active >= self._max_connections:
            log.warning("metrics connection refused: %s already open", self._active)
            await trio.aclose_forcefully(stream)
            return
        self._active += 1
        try:
            await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("metrics connection ended error=%r", exc)
        except Exception:
            log.error("metrics connection failed", exc_info=True)
        finally:
            self._active -= 1
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_size)
        for _ in range(_MAX_REQUESTS_PER_CONNECTION):
            with trio.move_on_after(self._timeout):
                if not await self._one_request(conn, stream):
                    return
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                continue
            return  # the deadline passed: a slow or idle peer is closed

    async def _one_request(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        """Read one request and answer it; False: the connection is over."""
        try:
            event = await self._next_event(conn, stream)
            if not isinstance(event, h11.Request):
                return False  # closed by the peer (between requests)
            body_size = 0
            # A body is read (and dropped) so the connection can be kept alive; none of
            # the endpoints takes one, and it is bounded like the headers.
            while not isinstance(part := await self._next_event(conn, stream), h11.EndOfMessage):
                if not isinstance(part, h11.Data):
                    return False  # the peer went away mid-request
                body_size += len(part.data)
                if body_size > self._max_size:
                    await self._refuse(conn, stream, 413, "request body too large")
                    return False
        except h11.RemoteProtocolError as exc:
            # Malformed, or a request line and headers past the bound (431).
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._refuse(conn, stream, exc.error_status_hint, f"bad request: {exc}")
            return False
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        accept = ", ".join(v.decode("latin-1") for k, v in event.headers if k == b"accept")
        response = self._app.respond(method, target, accept=accept)
        log.debug("metrics request method=%s target=%s status=%s", method, target, response.status)
        await self._send(conn, stream, response, False)
        return True

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        # Each read brings at least a byte (or the end), and h11 keeps at most
        # ``max_size`` of an incomplete event: so this many reads always suffice.
        for _ in range(self._max_size + 2):
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(_READ_SIZE))
        raise h11.RemoteProtocolError("request never completed", error_status_hint=400)

    async def _refuse(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, reason: str
    ) -> None:
        """Answer a request that cannot be served, then close without a reset.

        Closing with unread input makes the kernel send a reset, which can destroy
        the answer before the peer reads it; so: answer, end our half, and read
        (and drop) what the peer still sends, for a moment and a bounded amount.
        """
        await self._send(conn, stream, _text(status, reason + "\n"), True)
        with trio.move_on_after(1):
            await stream.send_eof()
            for _ in range(64):
                if not await stream.receive_some(_READ_SIZE):
                    break

    @staticmethod
    async def _send(
        conn: h11.Connection, stream: trio.SocketStream, response: HTTPResponse, close: bool
    ) -> None:
        headers = list(response.headers)
        if not any(name == "content-length" for name, _ in headers):
            headers.append(("content-length", str(len(response.body))))
        if close:
            headers.append(("connection", "close"))
        reason = HTTPStatus(response.status).phrase.encode()
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if response.body:
            data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
        data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(data)
