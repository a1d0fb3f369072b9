"""Drive one interop scenario with the REFERENCE ARCP client and report what happened.

A standalone script, run as its own process by ``tests/interop``::

    python tests/interop/ref_driver.py --url ws://127.0.0.1:PORT/arcp --token T \
        --scenario NAME [--args JSON] [--timeout SEC]

It uses the reference SDK's client (``arcp.client.ARCPClient``) over the SDK's own WebSocket
transport, subclassed to record every raw inbound frame. Each frame is validated with the
SDK's own pydantic models, exactly as the client parses them (``arcp.Envelope.from_wire`` for
the envelope, the SDK's ``type -> payload model`` registry for the payload); a frame that fails
is listed in ``unparsed_frames`` (such a frame would kill the reference client's read loop).

The LAST stdout line is one JSON object. Keys present for every scenario:

- ``scenario``, ``args``, ``ok`` (no unexpected exception), ``exception`` (text or null)
- ``frames``: every inbound frame in arrival order, as ``{conn, t, type, id, job_id,
  event_seq, frame}`` (``ignored: true`` for frames received while we played deaf; ``text``
  instead of ``frame`` for non-JSON); ``conn`` names the connection within the scenario
- ``sent``: outbound frames ``{conn, type, id, job_id, dropped?}``
- ``unparsed_frames``: frames the reference models reject ``{conn, error, frame|text}``
- ``body_violations``: job.event bodies the SDK's body validators reject (the client itself
  does not validate bodies, so these do not break it)
- ``unknown_types``: frame types the reference does not know (it ignores them)

plus scenario-specific keys documented on each scenario function below.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from arcp import (
    V1_1_FEATURES,
    ARCPError,
    ClientInfo,
    Envelope,
    ListJobsFilter,
    SessionResume,
    TransportClosed,
    WebSocketTransport,
)
from arcp._messages import PAYLOAD_REGISTRY, parse_payload
from arcp._messages.execution import (
    validate_metric_body,
    validate_progress_body,
    validate_result_chunk_body,
)
from arcp._ulid import new_envelope_id
from arcp._version import PROVISIONED_CREDENTIAL_FEATURES
from arcp.client import ARCPClient, JobHandle
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

Frame = dict[str, Any]
JOB_FRAME_TYPES = ("job.event", "job.result", "job.error")
TERMINAL_TYPES = ("job.result", "job.error")
CONNECT_TIMEOUT = 5.0
STEP_TIMEOUT = 5.0

_BODY_VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "progress": validate_progress_body,
    "result_chunk": validate_result_chunk_body,
    "metric": validate_metric_body,
}


# --------------------------------------------------------------------------- recording


class Recorder:
    """Every inbound/outbound frame of one scenario run, across all its connections."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.sent: list[Frame] = []
        self.unparsed: list[Frame] = []
        self.body_violations: list[Frame] = []
        self.unknown_types: list[str] = []
        self._changed = asyncio.Event()
        self._t0 = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    def add_inbound(self, conn: str, text: str, *, ignored: bool = False) -> Any:
        """Record one raw inbound message; return the decoded JSON value (or None)."""
        rec: Frame = {"conn": conn, "t": self.now()}
        if ignored:
            rec["ignored"] = True
        self.frames.append(rec)
        self._changed.set()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            rec["text"] = text[:2000]
            self.unparsed.append({"conn": conn, "error": f"not JSON: {e}", "text": text[:2000]})
            return None
        if not isinstance(value, dict):
            rec["frame"] = value
            self.unparsed.append({"conn": conn, "error": "not a JSON object", "frame": value})
            return value
        rec.update(
            frame=value,
            type=value.get("type"),
            id=value.get("id"),
            job_id=value.get("job_id"),
            event_seq=value.get("event_seq"),
        )
        self._validate(conn, value)
        return value

    def _validate(self, conn: str, value: Frame) -> None:
        # The same two steps the reference client performs: envelope, then payload model.
        try:
            env = Envelope.from_wire(value)
            parse_payload(env.type, env.payload)
        except (ValidationError, ValueError, TypeError) as e:
            self.unparsed.append({"conn": conn, "error": str(e), "frame": value})
            return
        if env.type not in PAYLOAD_REGISTRY and env.type not in self.unknown_types:
            self.unknown_types.append(env.type)
        if env.type == "job.event":
            kind = env.payload.get("kind")
            validator = _BODY_VALIDATORS.get(str(kind))
            body = env.payload.get("body")
            if validator is not None and isinstance(body, dict):
                try:
                    validator(body)
                except ValueError as e:
                    self.body_violations.append({"conn": conn, "error": str(e), "frame": value})

    def add_sent(self, conn: str, frame: Frame, *, dropped: bool = False) -> None:
        rec: Frame = {
            "conn": conn,
            "t": self.now(),
            "type": frame.get("type"),
            "id": frame.get("id"),
            "job_id": frame.get("job_id"),
        }
        if dropped:
            rec["dropped"] = True
        self.sent.append(rec)

    async def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until ``pred()`` holds; re-checked on every recorded frame."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            if pred():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    # ---- queries over recorded frames (ignored ones excluded) ----------

    def seen(self, conn: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if not f.get("ignored") and (conn is None or f["conn"] == conn) and "type" in f
        ]

    def job_frames(self, conn: str, job_id: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.seen(conn)
            if f["type"] in JOB_FRAME_TYPES and (job_id is None or f["job_id"] == job_id)
        ]

    def terminal(self, conn: str, job_id: str) -> Frame | None:
        for f in self.job_frames(conn, job_id):
            if f["type"] in TERMINAL_TYPES:
                return f
        return None

    def of_type(self, conn: str, type_: str) -> list[Frame]:
        return [f for f in self.seen(conn) if f["type"] == type_]


class RecordingTransport(WebSocketTransport):
    """The reference WebSocket transport, recording every raw frame in both directions.

    ``deaf``: inbound frames are still read off the socket (so close handshakes complete)
    and recorded as ``ignored``, but never handed to the client. ``mute``: outbound frames
    (e.g. the client's automatic pongs) are dropped. ``on_frame`` runs synchronously for each
    inbound frame before the client sees it.
    """

    def __init__(self, conn: ClientConnection, rec: Recorder, label: str) -> None:
        super().__init__(conn)
        self.conn = conn
        self.rec = rec
        self.label = label
        self.deaf = False
        self.mute = False
        self.on_frame: Callable[[RecordingTransport, Frame], None] | None = None

    async def recv(self) -> dict[str, Any]:
        while True:
            if self.is_closed:
                raise TransportClosed("transport closed")
            try:
                msg = await self.conn.recv()
            except ConnectionClosed as e:
                self._closed = True
                raise TransportClosed(str(e)) from e
            text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
            if self.deaf:
                self.rec.add_inbound(self.label, text, ignored=True)
                continue
            value = self.rec.add_inbound(self.label, text)
            if not isinstance(value, dict):
                # What the reference transport does with a non-object frame.
                raise TransportClosed("malformed frame")
            if self.on_frame is not None:
                self.on_frame(self, value)
            return value

    async def send(self, envelope: dict[str, Any]) -> None:
        if self.mute:
            self.rec.add_sent(self.label, envelope, dropped=True)
            return
        self.rec.add_sent(self.label, envelope)
        await super().send(envelope)

    def abort(self) -> None:
        """Drop the TCP connection abruptly (RST, no WebSocket close frame)."""
        self.deaf = True
        tr = self.conn.transport
        sock = tr.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tr.abort()

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.conn.wait_closed(), timeout)
        except TimeoutError:
            return False
        return True


# --------------------------------------------------------------------------- helpers


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_none=True) if model is not None else None


def _err(e: BaseException) -> Frame:
    if isinstance(e, ARCPError):
        return {"code": e.code, "message": e.message, "error_class": type(e).__name__}
    return {"code": None, "message": str(e), "error_class": type(e).__name__}


class Run:
    """State of one scenario run: the recorder, its clients, and the JSON output."""

    def __init__(self, url: str, token: str, args: dict[str, Any]) -> None:
        self.url = url
        self.token = token
        self.args = args
        self.rec = Recorder()
        self.out: Frame = {}
        self._clients: list[ARCPClient] = []
        self._transports: list[RecordingTransport] = []

    async def transport(self, label: str) -> RecordingTransport:
        conn = await asyncio.wait_for(
            ws_connect(self.url, open_timeout=CONNECT_TIMEOUT), CONNECT_TIMEOUT + 1
        )
        t = RecordingTransport(conn, self.rec, label)
        self._transports.append(t)
        return t

    async def connect(
        self, label: str, *, token: str | None = None
    ) -> tuple[ARCPClient, RecordingTransport]:
        client = self.new_client(token)
        t = await self.transport(label)
        await client.connect(t)
        return client, t

    def new_client(self, token: str | None = None) -> ARCPClient:
        client = ARCPClient(
            client=ClientInfo(name="arcp-interop-ref-driver", version="1.1.3"),
            token=token if token is not None else self.token,
            handshake_timeout_sec=STEP_TIMEOUT,
        )
        self._clients.append(client)
        return client

    async def resume(
        self,
        label: str,
        *,
        session_id: str,
        resume_token: str,
        last_event_seq: int,
        retry_for: float = 2.0,
    ) -> tuple[ARCPClient | None, list[Frame]]:
        """Resume with the reference client's own facility; retry briefly on
        PERMISSION_DENIED (the runtime may not have noticed the disconnect yet)."""
        attempts: list[Frame] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        n = 0
        while True:
            n += 1
            client = self.new_client()
            t = await self.transport(f"{label}#{n}")
            try:
                await client.resume(
                    t,
                    resume=SessionResume(
                        session_id=session_id,
                        resume_token=resume_token,
                        last_event_seq=last_event_seq,
                    ),
                )
            except (ARCPError, TransportClosed, TimeoutError) as e:
                attempts.append({"conn": t.label, **_err(e)})
                with contextlib.suppress(Exception):
                    await t.close()
                if (
                    isinstance(e, ARCPError)
                    and e.code == "PERMISSION_DENIED"
                    and loop.time() < deadline
                ):
                    await asyncio.sleep(0.1)
                    continue
                return None, attempts
            attempts.append({"conn": t.label, "code": None, "welcome": _dump(client.welcome)})
            # The successful connection is addressable by the requested label; failed
            # attempts keep their "label#n" names.
            for f in (*self.rec.frames, *self.rec.sent):
                if f["conn"] == t.label:
                    f["conn"] = label
            attempts[-1]["conn"] = label
            t.label = label
            return client, attempts

    async def close_all(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)
        for t in self._transports:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t.close(), 2.0)

    def result(self) -> Frame:
        return {
            **self.out,
            "frames": self.rec.frames,
            "sent": self.rec.sent,
            "unparsed_frames": self.rec.unparsed,
            "body_violations": self.rec.body_violations,
            "unknown_types": self.rec.unknown_types,
        }


async def outcome(handle: JobHandle, timeout: float) -> Frame:
    """The handle's terminal as the reference client reports it."""

    async def done() -> Any:
        return await handle.done

    try:
        payload = await asyncio.wait_for(done(), timeout)
    except TimeoutError:
        return {"status": "timeout"}
    except ARCPError as e:
        return {"status": "error", **_err(e)}
    except (TransportClosed, Exception) as e:
        return {"status": "failed", **_err(e)}
    return {"status": "result", "payload": _dump(payload)}


async def drain(it: Any, timeout: float) -> list[Any]:
    """Collect an async iterator's items, bounded in time."""
    items: list[Any] = []

    async def go() -> None:
        async for item in it:
            items.append(item)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(go(), timeout)
    return items


async def submit(run: Run, client: ARCPClient, **kw: Any) -> tuple[JobHandle | None, Frame]:
    """Submit through the reference client; report accept or the error it raised."""
    try:
        handle = await client.submit(**kw)
    except (ARCPError, TimeoutError, TransportClosed) as e:
        return None, {"accepted": None, "submit_error": _err(e)}
    return handle, {"accepted": _dump(handle.accepted), "job_id": handle.job_id}


def _submit_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {"agent": args["agent"], "input": args.get("input")}
    for key in ("lease_request", "idempotency_key", "max_runtime_sec"):
        if args.get(key) is not None:
            kw[key] = args[key]
    return kw


def _session_error_after(run: Run, conn: str, index: int) -> Frame | None:
    errors = [f for f in run.rec.seen(conn)[index:] if f["type"] == "session.error"]
    return errors[0]["frame"]["payload"] if errors else None


# --------------------------------------------------------------------------- scenarios

Scenario = Callable[[Run], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {}
DEFAULT_ARGS: dict[str, dict[str, Any]] = {}


def scenario(name: str, **defaults: Any) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        DEFAULT_ARGS[name] = defaults
        return fn

    return register


@scenario("handshake")
async def handshake(run: Run) -> None:
    """Out: ``welcome`` (parsed by the client), ``welcome_frame``, ``negotiated``,
    ``client_features`` (what the client asked for), ``session_id``."""
    client, _ = await run.connect("main")
    run.out["welcome"] = _dump(client.welcome)
    run.out["welcome_frame"] = run.rec.of_type("main", "session.welcome")[0]["frame"]
    run.out["negotiated"] = list(client.negotiated_features)
    run.out["client_features"] = list(client.features)
    run.out["session_id"] = client.session_id


async def _submit_and_collect(run: Run) -> None:
    a = run.args
    client, _ = await run.connect("main")
    run.out["session_id"] = client.session_id
    handle, info = await submit(run, client, **_submit_kwargs(a))
    run.out.update(info)
    if handle is None:
        err = run.rec.of_type("main", "session.error")
        run.out["session_error"] = err[0]["frame"]["payload"] if err else None
        run.out["submit_frame_id"] = next(
            (s["id"] for s in run.rec.sent if s["type"] == "job.submit"), None
        )
        return
    run.out["outcome"] = await outcome(handle, float(a.get("job_timeout", 10)))
    # After the terminal both handle queues are closed, so these drains are immediate.
    run.out["handle_events"] = await drain(handle.events(), 1.0)
    # The reference client's own reassembly: JobHandle.collect_chunks() drains chunks()
    # and decodes utf8/base64 pieces.
    try:
        collected = await asyncio.wait_for(handle.collect_chunks(), 1.0)
        run.out["collected_text"] = collected.decode("utf-8", "replace")
    except TimeoutError:
        run.out["collected_text"] = None
    run.out["chunks"] = [
        f["frame"]["payload"]["body"]
        for f in run.rec.job_frames("main", handle.job_id)
        if f["type"] == "job.event" and f["frame"]["payload"].get("kind") == "result_chunk"
    ]
    run.out["terminal"] = run.rec.terminal("main", handle.job_id)


def _submit_scenario(name: str, **defaults: Any) -> None:
    """Submit + stream + terminal. Out: ``job_id``, ``accepted``, ``outcome`` (handle
    terminal), ``handle_events`` (``handle.events()``), ``collected_text`` (the client's own
    ``handle.collect_chunks()``, decoded), ``chunks`` (raw result_chunk bodies), ``terminal``;
    on a refused submit ``submit_error``, ``session_error`` and ``submit_frame_id``."""

    async def fn(run: Run) -> None:
        await _submit_and_collect(run)

    fn.__doc__ = _submit_scenario.__doc__
    scenario(name, **defaults)(fn)


_submit_scenario("submit", agent="echo", input={"hello": "world"})
_submit_scenario("echo", agent="echo", input={"hello": "world"})
_submit_scenario("ticker", agent="ticker", input={"count": 5, "interval": 0.05})
_submit_scenario("chunker", agent="chunker", input={"chunks": 4, "size": 8})
_submit_scenario("slow", agent="slow", input={"seconds": 0.5})
_submit_scenario(
    "spender",
    agent="spender",
    input={"steps": 2, "cost": 0.4},
    lease_request={"tool.call": ["search"]},
)
_submit_scenario("chatty", agent="chatty", input={"n": 200, "kind": "log"})
_submit_scenario(
    "budget",
    agent="spender",
    input={"steps": 5, "cost": 0.4},
    lease_request={"cost.budget": ["USD:1.00"], "tool.call": ["search"]},
)


@scenario("credentials", agent="echo", input={"with": "credentials"})
async def credentials(run: Run) -> None:
    """The reference client asks for ``provisioned_credentials`` too (as its runtime
    would advertise with a provisioner) and submits. Out: ``negotiated``, ``accepted``
    (as the client parsed it), ``outcome``."""
    client = ARCPClient(
        client=ClientInfo(name="arcp-interop-ref-driver", version="1.1.3"),
        token=run.token,
        handshake_timeout_sec=STEP_TIMEOUT,
        features=V1_1_FEATURES + PROVISIONED_CREDENTIAL_FEATURES,
    )
    run._clients.append(client)
    await client.connect(await run.transport("main"))
    run.out["negotiated"] = list(client.negotiated_features)
    handle, info = await submit(run, client, **_submit_kwargs(run.args))
    run.out.update(info)
    if handle is not None:
        run.out["outcome"] = await outcome(handle, 10.0)


_submit_scenario("unknown_agent", agent="no-such-agent", input={})
_submit_scenario("unknown_version", agent="echo@9.9.9", input={})


@scenario("versions", refs=["echo@1.0.0", "echo@2.0.0", "echo"])
async def versions(run: Run) -> None:
    """Out: ``runs``: per agent ref ``{ref, accepted_agent, outcome}``."""
    client, _ = await run.connect("main")
    runs: list[Frame] = []
    for ref in run.args["refs"]:
        handle, info = await submit(run, client, agent=ref, input={"ref": ref})
        entry: Frame = {"ref": ref, **info}
        if handle is not None:
            entry["accepted_agent"] = handle.accepted.agent
            entry["outcome"] = await outcome(handle, STEP_TIMEOUT)
        runs.append(entry)
    run.out["runs"] = runs


@scenario("idempotent", key=None)
async def idempotent(run: Run) -> None:
    """Same key twice after the job finished, then the key with different input.
    Out: ``first``/``second`` ``{job_id, outcome, submit_id}``, ``second_frames`` (raw
    frames after the second submit), ``conflict`` (the error the third submit raised),
    ``conflict_submit_id``, ``conflict_session_error`` (its raw session.error payload)."""
    key = run.args["key"] or f"idem-{new_envelope_id()}"
    client, _ = await run.connect("main")
    results: dict[str, Frame] = {}
    for name in ("first", "second"):
        mark = len(run.rec.seen("main"))
        handle, info = await submit(run, client, agent="echo", input={"x": 1}, idempotency_key=key)
        submit_id = [s for s in run.rec.sent if s["type"] == "job.submit"][-1]["id"]
        entry: Frame = {**info, "submit_id": submit_id}
        if handle is not None:
            entry["outcome"] = await outcome(handle, STEP_TIMEOUT)
        results[name] = entry
        run.out[f"{name}_frames"] = run.rec.seen("main")[mark:]
    run.out.update(results)
    mark = len(run.rec.seen("main"))
    _, info = await submit(run, client, agent="echo", input={"x": 2}, idempotency_key=key)
    run.out["conflict_submit_id"] = [s for s in run.rec.sent if s["type"] == "job.submit"][-1]["id"]
    run.out["conflict"] = info.get("submit_error")
    run.out["conflict_session_error"] = _session_error_after(run, "main", mark)


@scenario("cancel", seconds=5)
async def cancel(run: Run) -> None:
    """Cancel a running ``slow`` job. Out: ``job_id``, ``outcome``, ``cancel_latency_sec``
    (cancel sent -> handle resolved), ``job_frames`` (raw frames of the job, plus any
    ``job.cancelled``)."""
    client, _ = await run.connect("main")
    handle, info = await submit(run, client, agent="slow", input={"seconds": run.args["seconds"]})
    run.out.update(info)
    if handle is None:
        return
    job_id = handle.job_id
    run.out["started"] = await run.rec.wait_for(
        lambda: any(
            f["type"] == "job.event" and f["frame"]["payload"].get("kind") == "status"
            for f in run.rec.job_frames("main", job_id)
        ),
        STEP_TIMEOUT,
    )
    t0 = time.monotonic()
    await client.cancel_job(job_id)
    run.out["outcome"] = await outcome(handle, STEP_TIMEOUT)
    run.out["cancel_latency_sec"] = round(time.monotonic() - t0, 3)
    # Give a trailing frame (e.g. job.cancelled after the terminal) a moment to arrive.
    await asyncio.sleep(0.3)
    run.out["job_frames"] = [
        f for f in run.rec.seen("main") if f.get("job_id") == job_id and f["type"] != "job.accepted"
    ]


async def _resume_flow(run: Run, mode: str) -> None:
    """Shared by drop/close/heartbeat resume: ticker, leave after event N, resume, collect.

    Out: ``job_id``, ``session_id``, ``pre_seqs`` (event_seq of job frames the client saw
    before leaving), ``last_event_seq`` (resume point), ``left_at``, ``dropped`` (heartbeat:
    the runtime closed the socket), ``resume_attempts``, ``resumed_welcome``,
    ``post_frames`` (raw job frames on the resumed connection), ``post_seqs``,
    ``post_progress`` (body.current of post-resume progress events), ``terminal``,
    ``list_status`` (job status via list_jobs on the resumed session).
    """
    a = run.args
    count, interval, leave_after = int(a["count"]), float(a["interval"]), int(a["leave_after"])
    client, t = await run.connect("pre")
    left = asyncio.Event()

    def hook(tr: RecordingTransport, frame: Frame) -> None:
        seq = frame.get("event_seq")
        if frame.get("type") == "job.event" and isinstance(seq, int) and seq >= leave_after:
            if mode == "drop":
                tr.abort()
            elif mode == "heartbeat":
                tr.deaf = True
                tr.mute = True
            else:
                tr.deaf = True
            tr.on_frame = None
            left.set()

    t.on_frame = hook
    welcome = client.welcome
    assert welcome is not None
    session_id = welcome.session_id
    resume_token = welcome.resume_token
    run.out["session_id"] = session_id
    started = time.monotonic()
    handle, info = await submit(
        run, client, agent="ticker", input={"count": count, "interval": interval}
    )
    run.out.update(info)
    if handle is None:
        return
    job_id = handle.job_id
    await asyncio.wait_for(left.wait(), count * interval + STEP_TIMEOUT)
    run.out["left_at"] = run.rec.now()
    if mode == "close":
        await asyncio.wait_for(client.close(), STEP_TIMEOUT)
    elif mode == "heartbeat":
        hb = welcome.heartbeat_interval_sec or 1
        run.out["dropped"] = await t.wait_closed(hb * 4 + 2)
        run.out["dropped_at"] = run.rec.now()
    # What the reference client itself says about the job it was watching (it fails every
    # handle when its connection ends).
    run.out["pre_outcome"] = await outcome(handle, 1.0)
    pre = run.rec.job_frames("pre", job_id)
    run.out["pre_seqs"] = [f["event_seq"] for f in pre]
    last_seq = max((f["event_seq"] for f in run.rec.job_frames("pre")), default=0)
    run.out["last_event_seq"] = last_seq
    await asyncio.sleep(float(a["pause"]))
    resumed, attempts = await run.resume(
        "post", session_id=session_id, resume_token=resume_token, last_event_seq=last_seq
    )
    run.out["resume_attempts"] = attempts
    if resumed is None:
        return
    run.out["resumed_welcome"] = _dump(resumed.welcome)
    remaining = max(0.0, started + count * interval - time.monotonic())
    await run.rec.wait_for(
        lambda: run.rec.terminal("post", job_id) is not None, remaining + float(a["grace"])
    )
    post = run.rec.job_frames("post", job_id)
    run.out["post_frames"] = post
    run.out["post_seqs"] = [f["event_seq"] for f in post]
    run.out["post_progress"] = [
        f["frame"]["payload"]["body"].get("current")
        for f in post
        if f["type"] == "job.event" and f["frame"]["payload"].get("kind") == "progress"
    ]
    run.out["terminal"] = run.rec.terminal("post", job_id)
    try:
        jobs = await asyncio.wait_for(resumed.list_jobs(), STEP_TIMEOUT)
        run.out["list_status"] = next((j.status for j in jobs.jobs if j.job_id == job_id), None)
    except (ARCPError, TimeoutError) as e:
        run.out["list_status"] = _err(e)


_RESUME_DEFAULTS: dict[str, Any] = {
    "count": 10,
    "interval": 0.2,
    "leave_after": 3,
    "pause": 0.3,
    "grace": 1.5,
}


@scenario("drop_resume", **_RESUME_DEFAULTS)
async def drop_resume(run: Run) -> None:
    """Abort the TCP connection (RST) after event N, resume. See ``_resume_flow``."""
    await _resume_flow(run, "drop")


@scenario("close_resume", **_RESUME_DEFAULTS)
async def close_resume(run: Run) -> None:
    """Graceful ``client.close()`` (session.bye) after event N, resume."""
    await _resume_flow(run, "close")


@scenario("heartbeat_resume", **_RESUME_DEFAULTS)
async def heartbeat_resume(run: Run) -> None:
    """Go silent after event N (no pongs, inbound ignored) until the runtime drops us, resume."""
    await _resume_flow(run, "heartbeat")


@scenario("resume_expired", wait=2.5)
async def resume_expired(run: Run) -> None:
    """Close, wait past the resume window, resume. Out: ``resume_attempts``."""
    client, _ = await run.connect("pre")
    welcome = client.welcome
    assert welcome is not None
    run.out["resume_window_sec"] = welcome.resume_window_sec
    await client.close()
    await asyncio.sleep(float(run.args["wait"]))
    _, attempts = await run.resume(
        "post",
        session_id=welcome.session_id,
        resume_token=welcome.resume_token,
        last_event_seq=0,
        retry_for=0,
    )
    run.out["resume_attempts"] = attempts


@scenario("resume_bad_token")
async def resume_bad_token(run: Run) -> None:
    """Close, resume with a wrong token (refused), then with the right one.
    Out: ``bad_attempts``, ``good_attempts``, ``resumed`` (bool)."""
    client, _ = await run.connect("pre")
    welcome = client.welcome
    assert welcome is not None
    await client.close()
    await asyncio.sleep(0.3)
    _, bad = await run.resume(
        "bad",
        session_id=welcome.session_id,
        resume_token="rtk_" + new_envelope_id(),
        last_event_seq=0,
        retry_for=0,
    )
    run.out["bad_attempts"] = bad
    resumed, good = await run.resume(
        "good",
        session_id=welcome.session_id,
        resume_token=welcome.resume_token,
        last_event_seq=0,
        retry_for=0,
    )
    run.out["good_attempts"] = good
    run.out["resumed"] = resumed is not None


@scenario("list_jobs", jobs=3, limit=2)
async def list_jobs(run: Run) -> None:
    """Submit N echo jobs, then page through ``list_jobs(limit=L)``.
    Out: ``job_ids`` (submitted), ``pages`` (each ``{jobs, next_cursor}``), ``unpaged``."""
    client, _ = await run.connect("main")
    job_ids: list[str] = []
    for i in range(int(run.args["jobs"])):
        handle, _info = await submit(run, client, agent="echo", input={"i": i})
        if handle is not None:
            job_ids.append(handle.job_id)
            await outcome(handle, STEP_TIMEOUT)
    run.out["job_ids"] = job_ids
    pages: list[Frame] = []
    cursor: str | None = None
    for _ in range(50):
        page = await asyncio.wait_for(
            client.list_jobs(limit=int(run.args["limit"]), cursor=cursor), STEP_TIMEOUT
        )
        pages.append(_dump(page))
        cursor = page.next_cursor
        if cursor is None:
            break
    run.out["pages"] = pages
    run.out["unpaged"] = _dump(await asyncio.wait_for(client.list_jobs(), STEP_TIMEOUT))
    filtered = await asyncio.wait_for(
        client.list_jobs(filter=ListJobsFilter(status=("success",))), STEP_TIMEOUT
    )
    run.out["filtered_success"] = [j.job_id for j in filtered.jobs]


@scenario("subscribe", count=6, interval=0.2, subscribe_after=2)
async def subscribe(run: Run) -> None:
    """Session A submits ticker; session B (same principal) first runs its own echo job, then
    subscribes with history after A saw event K. Out: ``job_id``, ``own_job_id`` (B's echo),
    ``subscription`` (JobSubscription fields), ``b_frames`` (ALL raw frames on B),
    ``b_job_frames`` (raw frames of the ticker job on B), ``b_progress`` (body.current of
    those), ``b_terminal``, ``handle_events`` (what the client's subscription handle got),
    ``handle_outcome``, ``a_terminal``."""
    a = run.args
    count, interval = int(a["count"]), float(a["interval"])
    client_a, _ = await run.connect("A")
    client_b, _ = await run.connect("B")
    own, _ = await submit(run, client_b, agent="echo", input={"own": True})
    if own is not None:
        run.out["own_job_id"] = own.job_id
        await outcome(own, STEP_TIMEOUT)
    handle, info = await submit(
        run, client_a, agent="ticker", input={"count": count, "interval": interval}
    )
    run.out.update(info)
    if handle is None:
        return
    job_id = handle.job_id
    k = int(a["subscribe_after"])
    await run.rec.wait_for(
        lambda: any(
            f["type"] == "job.event" and (f["event_seq"] or 0) >= k
            for f in run.rec.job_frames("A", job_id)
        ),
        STEP_TIMEOUT,
    )
    try:
        sub = await asyncio.wait_for(client_b.subscribe(job_id, history=True), STEP_TIMEOUT)
    except (ARCPError, TimeoutError) as e:
        run.out["subscribe_error"] = _err(e)
        return
    run.out["subscription"] = {
        "job_id": sub.job_id,
        "request_id": sub.request_id,
        "subscribed_from": sub.subscribed_from,
        "replayed": sub.replayed,
    }
    run.out["subscribe_frame_id"] = [s for s in run.rec.sent if s["type"] == "job.subscribe"][-1][
        "id"
    ]
    run.out["handle_outcome"] = await outcome(sub.handle, count * interval + STEP_TIMEOUT)
    run.out["handle_events"] = await drain(sub.handle.events(), 0.5)
    run.out["a_outcome"] = await outcome(handle, STEP_TIMEOUT)
    await run.rec.wait_for(lambda: run.rec.terminal("B", job_id) is not None, 1.0)
    b_job = [f for f in run.rec.seen("B") if f.get("job_id") == job_id]
    run.out["b_frames"] = run.rec.seen("B")
    run.out["b_job_frames"] = b_job
    run.out["b_progress"] = [
        f["frame"]["payload"]["body"].get("current")
        for f in b_job
        if f["type"] == "job.event" and f["frame"]["payload"].get("kind") == "progress"
    ]
    run.out["b_terminal"] = run.rec.terminal("B", job_id)


@scenario("bad_token", bad_token="definitely-not-a-valid-token")
async def bad_token(run: Run) -> None:
    """Connect with an unknown token. Out: ``connect_error``, ``error_frame``, ``closed``."""
    client = run.new_client(run.args["bad_token"])
    t = await run.transport("main")
    try:
        await client.connect(t)
        run.out["connect_error"] = None
    except (ARCPError, TransportClosed, TimeoutError) as e:
        run.out["connect_error"] = _err(e)
    errs = run.rec.of_type("main", "session.error")
    run.out["error_frame"] = errs[0]["frame"] if errs else None
    run.out["closed"] = await t.wait_closed(STEP_TIMEOUT)


@scenario("isolation", other_token=None, seconds=1.5)
async def isolation(run: Run) -> None:
    """Principal A runs a slow and a finished echo job; principal B (``other_token``) lists
    jobs, subscribes to and cancels both. Out: ``a_running``/``a_finished`` job ids,
    ``b_listed`` (job ids B sees), ``b_subscribe_running``/``b_subscribe_finished`` (error the
    client raised), ``b_cancel_running``/``b_cancel_finished`` (``session.error`` payload B got
    within 1 s of the cancel, or null), ``a_outcome`` (the running job's terminal)."""
    other = run.args["other_token"]
    if not other:
        raise ValueError("isolation needs args.other_token (a token of another principal)")
    client_a, _ = await run.connect("A")
    fin, _ = await submit(run, client_a, agent="echo", input={"secret": True})
    running, _ = await submit(
        run, client_a, agent="slow", input={"seconds": float(run.args["seconds"])}
    )
    if fin is None or running is None:
        raise RuntimeError("principal A could not submit")
    await outcome(fin, STEP_TIMEOUT)
    run.out["a_running"] = running.job_id
    run.out["a_finished"] = fin.job_id
    client_b, _ = await run.connect("B", token=other)
    listed = await asyncio.wait_for(client_b.list_jobs(), STEP_TIMEOUT)
    run.out["b_listed"] = [j.job_id for j in listed.jobs]
    for label, job_id in (("running", running.job_id), ("finished", fin.job_id)):
        try:
            await asyncio.wait_for(client_b.subscribe(job_id, history=True), STEP_TIMEOUT)
            run.out[f"b_subscribe_{label}"] = None
        except (ARCPError, TimeoutError) as e:
            run.out[f"b_subscribe_{label}"] = _err(e)
        mark = len(run.rec.seen("B"))
        await client_b.cancel_job(job_id)

        def refused(mark: int = mark) -> bool:
            return _session_error_after(run, "B", mark) is not None

        await run.rec.wait_for(refused, 1.0)
        run.out[f"b_cancel_{label}"] = _session_error_after(run, "B", mark)
    run.out["b_job_frames"] = [
        f for f in run.rec.seen("B") if f.get("job_id") in (running.job_id, fin.job_id)
    ]
    run.out["a_outcome"] = await outcome(running, float(run.args["seconds"]) + STEP_TIMEOUT)


@scenario("malformed")
async def malformed(run: Run) -> None:
    """Raw ``websockets`` session: hello, then four bad frames, then an echo submit.
    Out: ``welcome``, ``replies`` (per bad frame ``{name, sent_id, reply|null, closed}``),
    ``echo_terminal`` (raw job.result/job.error of the echo job, or null), ``closed``."""
    conn = await asyncio.wait_for(
        ws_connect(run.url, open_timeout=CONNECT_TIMEOUT), CONNECT_TIMEOUT + 1
    )
    raw = RawSession(conn, run.rec, "main")
    try:
        await raw.run_malformed(run)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2.0)


class RawSession:
    """A hand-driven connection (no reference client) that still records/validates frames."""

    def __init__(self, conn: ClientConnection, rec: Recorder, label: str) -> None:
        self.conn = conn
        self.rec = rec
        self.label = label
        self.session_id: str | None = None
        self.closed = False

    async def send_text(self, text: str) -> None:
        await self.conn.send(text)

    async def send(self, type_: str, payload: dict[str, Any], **env: Any) -> str:
        frame: Frame = {"arcp": "1.1", "id": new_envelope_id(), "type": type_, "payload": payload}
        if self.session_id is not None:
            frame["session_id"] = self.session_id
        frame.update(env)
        self.rec.add_sent(self.label, frame)
        await self.conn.send(json.dumps(frame, separators=(",", ":")))
        return str(frame["id"])

    async def next_frame(self, timeout: float, pred: Callable[[Frame], bool]) -> Frame | None:
        """Next inbound object frame matching ``pred``; answers pings meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                msg = await asyncio.wait_for(self.conn.recv(), remaining)
            except TimeoutError:
                return None
            except ConnectionClosed:
                self.closed = True
                return None
            text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
            value = self.rec.add_inbound(self.label, text)
            if not isinstance(value, dict):
                continue
            if value.get("type") == "session.ping":
                nonce = value.get("payload", {}).get("nonce", "")
                await self.send(
                    "session.pong",
                    {"ping_nonce": nonce, "received_at": _now_z()},
                )
                continue
            if pred(value):
                return value
        return None

    async def run_malformed(self, run: Run) -> None:
        await self.send(
            "session.hello",
            {
                "client": {"name": "arcp-interop-raw", "version": "1.1.3"},
                "auth": {"scheme": "bearer", "token": run.token},
                "capabilities": {
                    "encodings": ["json"],
                    "features": list(V1_1_FEATURES),
                    "agents": [],
                },
            },
        )
        welcome = await self.next_frame(STEP_TIMEOUT, lambda f: True)
        run.out["welcome"] = welcome
        if welcome is None or welcome.get("type") != "session.welcome":
            return
        self.session_id = welcome.get("session_id")
        replies: list[Frame] = []

        async def bad(name: str, sender: Callable[[], Awaitable[str | None]]) -> None:
            sent_id = await sender()
            reply = await self.next_frame(2.0, lambda f: f.get("type") == "session.error")
            replies.append(
                {
                    "name": name,
                    "sent_id": sent_id,
                    "reply": reply.get("payload") if reply else None,
                    "closed": self.closed,
                }
            )

        async def unknown_type() -> str | None:
            return await self.send("x.no_such_type", {})

        async def submit_no_agent() -> str | None:
            return await self.send("job.submit", {"input": {"a": 1}, "lease_request": {}})

        async def json_array() -> str | None:
            await self.send_text("[1,2,3]")
            return None

        async def not_json() -> str | None:
            await self.send_text("this is {not json")
            return None

        for name, sender in (
            ("unknown_type", unknown_type),
            ("submit_missing_agent", submit_no_agent),
            ("json_array", json_array),
            ("not_json", not_json),
        ):
            if self.closed:
                replies.append({"name": name, "sent_id": None, "reply": None, "closed": True})
                continue
            try:
                await bad(name, sender)
            except ConnectionClosed:
                self.closed = True
                replies.append({"name": name, "sent_id": None, "reply": None, "closed": True})
        run.out["replies"] = replies
        run.out["echo_terminal"] = None
        if not self.closed:
            with contextlib.suppress(ConnectionClosed):
                await self.send("job.submit", {"agent": "echo", "input": {"still": "alive"}})
                term = await self.next_frame(
                    STEP_TIMEOUT, lambda f: f.get("type") in TERMINAL_TYPES
                )
                run.out["echo_terminal"] = term
        run.out["closed"] = self.closed


def _now_z() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- main


async def amain(url: str, token: str, name: str, args: dict[str, Any], timeout: float) -> Frame:
    merged = {**DEFAULT_ARGS[name], **args}
    run = Run(url, token, merged)
    run.out.update(scenario=name, args=merged, ok=False, exception=None)
    try:
        await asyncio.wait_for(SCENARIOS[name](run), timeout)
        run.out["ok"] = True
    except Exception as e:
        run.out["exception"] = "".join(traceback.format_exception_only(type(e), e)).strip()
        run.out["traceback"] = traceback.format_exc()
    finally:
        await run.close_all()
    return run.result()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    p.add_argument("--args", default="{}", help="JSON object overriding the scenario defaults")
    p.add_argument("--timeout", type=float, default=30.0, help="bound on the whole scenario")
    ns = p.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    args = json.loads(ns.args)
    if not isinstance(args, dict):
        p.error("--args must be a JSON object")
    result = asyncio.run(amain(ns.url, ns.token, ns.scenario, args, ns.timeout))
    sys.stdout.write(json.dumps(result, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
