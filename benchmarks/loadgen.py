"""ARCP load generator: raw ARCP JSON over WebSocket, so it measures any runtime.

Run one workload against a runtime that is already listening and print one JSON
object (the measurements) on stdout::

    python -m benchmarks.loadgen throughput --url ws://127.0.0.1:PORT/arcp \
        --token T --pid RUNTIME_PID [--param n=20000 ...]

``--pid`` names the runtime's process: its CPU time (per-thread ``schedstat``, in
nanoseconds) and memory (``VmRSS``/``VmHWM`` from ``/proc/PID/status``) are sampled
around the measured phase. The generator runs in its own process (asyncio and the
small client in ``wsclient.py``); hot-path frames are classified by a substring scan
of the envelope's top-level ``"type"`` (both runtimes put it before ``payload``) and
counted, and only control frames and terminals are parsed as JSON. Counts are then
checked against the expected number of events and the terminal; a failed check is
reported in ``checks``, never raised.

Workloads (every parameter has a default, scale with ``--param``):

* ``throughput`` n: one session, one ``chatty`` job of n log events; events/s from
  sending the submit to the terminal, time to first event, submit→accepted.
* ``fanout`` sessions, n: that many hello'd sessions each submit ``chatty`` n at
  once; aggregate events/s and per-session submit→accepted p50/p99.
* ``idle`` sessions, idle_sec: that many sessions negotiate ``heartbeat`` (start the
  runtime with ``--heartbeat-sec 5``) and sit idle answering ``session.ping``;
  RSS growth per session and the runtime's CPU share over the idle period.
* ``backlog`` n: one session submits ``chatty`` n, reads every event live, drops the
  TCP connection, then resumes with ``last_event_seq: 0``; events replayed per second
  (from the resume hello to the replayed terminal).
* ``echo`` n: n sequential ``echo`` submits on one session, each waited to its
  terminal; round-trip p50/p99.
* ``subscribers`` k, n: k sessions subscribe (``history: true``) to one ``chatty`` n
  job as soon as it is accepted; aggregate delivered events/s to the subscribers.
* ``soak`` jobs, n: one session (``ack`` negotiated) runs ``jobs`` ``chatty`` n jobs
  one after another, acking every 1,000 events and at each terminal; the runtime's
  RSS growth from a warm point (after the first quarter of the jobs) to the end.
* ``slow`` consumers, n: that many sessions each submit one ``chatty`` n job at once
  and read slowly (a pause of the socket's reading every ``burst`` events), acking
  every 1,000 events; RSS growth and peak (VmHWM) growth from before the submits.

Cluster workloads (several nodes on one Redis): every node is named, ``--url``/``--pid``
first and each other one as ``--peer URL=PID``; ``--redis-port`` names the Redis they
share, whose CPU (``INFO cpu``: ``used_cpu_sys + used_cpu_user``) is sampled around the
measured phase like the nodes'. ``throughput`` reports Redis's CPU per event too when
given ``--redis-port``.

* ``spread`` sessions, n: sessions dealt round-robin over the nodes each submit
  ``chatty`` n at once; aggregate events/s, CPU per event of the nodes (summed) and of
  Redis.
* ``handoff`` n: a session on the first node submits ``chatty`` n and drops its TCP
  connection once accepted (the job emits into the detached session); once
  ``session.list_jobs`` on the last node reports the job ended, the session resumes
  there with ``last_event_seq: 0``; replayed frames per second, and the resuming
  node's and Redis's CPU per replayed frame.
* ``soak`` (above) with ``--peer``: one session per node, the jobs dealt to them in
  turn; every node's RSS, and with ``--redis-port`` Redis's ``used_memory``
  (``INFO memory``), at the warm point and at the end.
"""

# ruff: noqa: ASYNC109
from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import json
import math
import os
import random
import re
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

from .wsclient import WSConnection, connect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

FEATURES = ["heartbeat", "ack", "list_jobs", "subscribe"]
TERMINAL_STATUSES = {"success", "error", "cancelled", "timed_out"}
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TYPE_KEY = b'"type":"'
_LOG_KIND = b'"kind":"log"'
#: A frame's envelope ``event_seq``, read without parsing the frame (job events are
#: only counted); the demo agents' payloads never contain that key.
_SEQ_RE = re.compile(rb'"event_seq":(\d+)')


def ulid() -> str:
    """A fresh ULID (uppercase Crockford base32, 26 characters)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def envelope(type_: str, payload: dict[str, Any], **fields: Any) -> tuple[str, str]:
    """(id, compact JSON text) of a client envelope."""
    env_id = ulid()
    env: dict[str, Any] = {"arcp": "1.1", "id": env_id, "type": type_}
    env.update({k: v for k, v in fields.items() if v is not None})
    env["payload"] = payload
    return env_id, json.dumps(env, separators=(",", ":"))


def frame_type(msg: bytes) -> bytes:
    i = msg.find(_TYPE_KEY)
    if i < 0:
        return b""
    i += 8
    return msg[i : msg.find(b'"', i)]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


class Proc:
    """CPU and memory of the runtime process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float:
        """CPU seconds used so far, all threads.

        The sum of each thread's on-CPU nanoseconds (``/proc/PID/task/*/schedstat``),
        which is exact where ``utime + stime`` (``/proc/PID/stat``, the fallback) is
        counted in 10 ms ticks.
        """
        total, seen = 0, False
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            tids = []
        for tid in tids:
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    seen = True
            except (OSError, ValueError, IndexError):
                continue
        if seen:
            return total / 1e9
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick

    def mem(self) -> dict[str, int]:
        """VmRSS and VmHWM in KiB."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
        return out


class RedisCPU:
    """The CPU time of the Redis a cluster's nodes share: ``used_cpu_sys +
    used_cpu_user`` of ``INFO cpu`` (the whole server process, all threads), asked on
    a connection of its own (the inline protocol, no client library)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port

    async def info(self, section: str = "cpu") -> dict[str, str]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"INFO {section}\r\n".encode())
            head = await asyncio.wait_for(reader.readline(), 5)
            if not head.startswith(b"$"):
                raise RuntimeError(f"INFO {section}: unexpected reply {head[:80]!r}")
            body = await asyncio.wait_for(reader.readexactly(int(head[1:]) + 2), 5)
        finally:
            writer.close()
        return dict(line.split(":", 1) for line in body.decode().splitlines() if ":" in line)

    async def cpu(self) -> float:
        """CPU seconds Redis has used so far."""
        fields = await self.info()
        return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])

    async def used_memory(self) -> int:
        """Bytes Redis's allocator holds for its data (``used_memory``, ``INFO memory``)."""
        fields = await self.info("memory")
        return int(fields["used_memory"])


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Session:
    """One ARCP session over one WebSocket, counting job events on the hot path.

    Every ``job.event`` of kind ``log`` bumps ``events`` and stamps ``first_event_t``
    (other kinds bump ``other_events``); every frame stamps ``last_t``; terminals
    (``job.result``/``job.error``) are parsed and appended to ``terminals``;
    ``session.ping`` is answered with ``session.pong``; any other frame is parsed and
    offered to the waiters registered with ``expect``.

    Opt-in, for the memory workloads: ``track_seq`` keeps the highest envelope
    ``event_seq`` seen in ``last_seq`` (a bytes regex, no parse); ``ack_every`` sends
    ``session.ack`` of ``last_seq`` once it is that far past the last ack, and at every
    terminal; ``burst`` pauses reading the socket for ``pause_sec`` after every that
    many log events (a slow consumer).
    """

    def __init__(self, conn: WSConnection, token: str) -> None:
        self.conn = conn
        self.token = token
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.events = 0  # job.event frames of kind "log" (what the demo agents emit)
        self.other_events = 0  # job.event frames of any other kind
        self.first_event_t: float | None = None
        self.last_t = 0.0
        self.terminals: list[dict[str, Any]] = []
        self.terminal_t: float | None = None
        self.pings = 0
        self.errors: list[dict[str, Any]] = []
        self._terminal_target = 0
        self._terminal_fut: asyncio.Future[None] | None = None
        self._waiters: list[tuple[Any, asyncio.Future[dict[str, Any]]]] = []
        self._event_target = 0
        self._event_fut: asyncio.Future[None] | None = None
        #: Arrival times of every job.event frame, when a workload asks for them.
        self.event_times: list[float] | None = None
        self._error_target = 0
        self._error_fut: asyncio.Future[None] | None = None
        #: The features the welcome announced (``capabilities.features``).
        self.features: set[str] = set()
        self.track_seq = False
        self.last_seq = 0  # highest event_seq seen (when track_seq)
        self.ack_every = 0  # 0: never ack
        self.acked_seq = 0
        self.acks_sent = 0
        self.burst = 0  # 0: read as fast as possible
        self.pause_sec = 0.02
        self.pauses = 0
        self._paused = False
        conn.on_message = self._on_message
        conn.closed.add_done_callback(self._on_closed)

    @classmethod
    async def open(cls, url: str, token: str) -> Session:
        return cls(await connect(url), token)

    # -- receive ----------------------------------------------------------------------
    def _on_message(self, msg: bytes) -> None:
        now = time.perf_counter()
        self.last_t = now
        if self.track_seq:
            m = _SEQ_RE.search(msg)
            if m is not None:
                seq = int(m.group(1))
                if seq > self.last_seq:
                    self.last_seq = seq
        kind = frame_type(msg)
        if kind == b"job.event":
            if self.event_times is not None:
                self.event_times.append(now)
            if _LOG_KIND not in msg:
                # Not one of the agent's log events: e.g. a runtime's own status notice.
                self.other_events += 1
                return
            self.events += 1
            if self.first_event_t is None:
                self.first_event_t = now
            if self.ack_every and self.last_seq - self.acked_seq >= self.ack_every:
                self.ack()
            if self.burst and self.events % self.burst == 0:
                self._pause()
            fut = self._event_fut
            if fut is not None and self.events >= self._event_target and not fut.done():
                fut.set_result(None)
            return
        env = json.loads(msg)
        if kind == b"job.result" or kind == b"job.error":
            self.terminals.append(env)
            self.terminal_t = now
            if self.ack_every:
                self.ack()
            fut = self._terminal_fut
            if fut is not None and len(self.terminals) >= self._terminal_target and not fut.done():
                fut.set_result(None)
            return
        if kind == b"session.ping":
            self.pings += 1
            nonce = env.get("payload", {}).get("nonce")
            _, text = envelope(
                "session.pong",
                {"ping_nonce": nonce, "received_at": _now_iso()},
                session_id=self.session_id,
            )
            if not self.conn.closed.done():
                self.conn.send(text)
            return
        if kind == b"session.error":
            self.errors.append(env)
            fut = self._error_fut
            if fut is not None and len(self.errors) >= self._error_target and not fut.done():
                fut.set_result(None)
        env["_t"] = now
        for i, (pred, waiter) in enumerate(self._waiters):
            if not waiter.done() and pred(env):
                del self._waiters[i]
                waiter.set_result(env)
                return

    def _on_closed(self, _: Any) -> None:
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection closed"))
        self._waiters.clear()
        for fut in (self._terminal_fut, self._event_fut, self._error_fut):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("connection closed"))

    def ack(self) -> None:
        """``session.ack`` of the highest ``event_seq`` seen, if not acked yet."""
        if self.last_seq <= self.acked_seq or self.conn.closed.done():
            return
        _, text = envelope(
            "session.ack", {"last_processed_seq": self.last_seq}, session_id=self.session_id
        )
        self.conn.send(text)
        self.acked_seq = self.last_seq
        self.acks_sent += 1

    def _pause(self) -> None:
        """Stop reading the socket for ``pause_sec`` (the frames of the chunk being
        parsed are still delivered: a burst is ``burst`` events or a little more)."""
        transport = self.conn.transport
        if self._paused or transport is None or transport.is_closing():
            return
        transport.pause_reading()
        self._paused = True
        self.pauses += 1
        asyncio.get_running_loop().call_later(self.pause_sec, self._resume)

    def _resume(self) -> None:
        self._paused = False
        transport = self.conn.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def expect(self, pred: Any) -> asyncio.Future[dict[str, Any]]:
        """A future for the next non-hot frame matching ``pred`` (or a session.error)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def match(env: dict[str, Any]) -> bool:
            return env.get("type") == "session.error" or pred(env)

        self._waiters.append((match, fut))
        return fut

    async def wait_terminals(self, count: int, timeout: float) -> None:
        if len(self.terminals) >= count:
            return
        self._terminal_target = count
        self._terminal_fut = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self._terminal_fut, timeout)

    async def wait_errors(self, count: int, timeout: float) -> None:
        if len(self.errors) >= count:
            return
        self._error_target = count
        self._error_fut = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self._error_fut, timeout)

    async def wait_events(self, count: int, timeout: float) -> None:
        if self.events >= count:
            return
        self._event_target = count
        self._event_fut = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self._event_fut, timeout)

    # -- requests ---------------------------------------------------------------------
    async def hello(
        self, *, resume: dict[str, Any] | None = None, timeout: float = 20.0
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "client": {"name": "arcp-bench", "version": "1"},
            "auth": {"scheme": "bearer", "token": self.token},
            "capabilities": {"encodings": ["json"], "features": FEATURES},
        }
        if resume is not None:
            payload["resume"] = resume
        fut = self.expect(lambda e: e.get("type") == "session.welcome")
        self.conn.send(envelope("session.hello", payload)[1])
        env = await asyncio.wait_for(fut, timeout)
        if env["type"] != "session.welcome":
            raise RuntimeError(f"hello refused: {env.get('payload')}")
        self.session_id = env["payload"]["session_id"]
        self.resume_token = env["payload"]["resume_token"]
        self.features = set(env["payload"].get("capabilities", {}).get("features") or [])
        return env

    def submit(self, agent: str, input_: Any) -> tuple[float, asyncio.Future[dict[str, Any]]]:
        """Send a submit; (send time, future of its job.accepted)."""
        env_id, text = envelope(
            "job.submit", {"agent": agent, "input": input_}, session_id=self.session_id
        )
        fut = self.expect(
            lambda e: (
                e.get("type") == "job.accepted" and e.get("payload", {}).get("request_id") == env_id
            )
        )
        t = time.perf_counter()
        self.conn.send(text)
        return t, fut

    def close(self) -> None:
        self.conn.abort()


def _now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


async def open_sessions(url: str, token: str, count: int, parallel: int = 50) -> list[Session]:
    sem = asyncio.Semaphore(parallel)

    async def one() -> Session:
        async with sem:
            s = await Session.open(url, token)
            await s.hello()
            return s

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def warm_up(url: str, token: str) -> None:
    """One echo job on a throwaway session: imports and first-use caches, not timed."""
    s = await Session.open(url, token)
    await s.hello()
    _, acc = s.submit("echo", {"warm": True})
    await asyncio.wait_for(acc, 10)
    await s.wait_terminals(1, 10)
    s.close()
    await asyncio.sleep(0.05)


def _terminal_check(s: Session, n_events: int) -> dict[str, Any]:
    term = s.terminals[-1] if s.terminals else {}
    seq = term.get("event_seq")
    return {
        "events": s.events,
        "events_expected": n_events,
        "other_events": s.other_events,
        "terminal": term.get("type"),
        "final_status": term.get("payload", {}).get("final_status"),
        "terminal_seq": seq,
        "ok": s.events == n_events
        and term.get("type") == "job.result"
        and term.get("payload", {}).get("final_status") == "success",
    }


# -- workloads ------------------------------------------------------------------------


async def wl_throughput(
    url: str, token: str, proc: Proc, n: int = 20000, *, redis: RedisCPU | None = None
) -> dict[str, Any]:
    await warm_up(url, token)
    s = await Session.open(url, token)
    await s.hello()
    redis0 = await redis.cpu() if redis is not None else 0.0
    cpu0, me0 = proc.cpu(), self_cpu()
    t0, acc = s.submit("chatty", {"n": n, "kind": "log"})
    accepted = await asyncio.wait_for(acc, 30)
    await s.wait_terminals(1, timeout=max(60.0, n / 1000))
    t1 = s.terminal_t or time.perf_counter()
    cpu1, me1 = proc.cpu(), self_cpu()
    redis1 = await redis.cpu() if redis is not None else 0.0
    s.close()
    wall = t1 - t0
    metrics = {
        "events_per_s": s.events / wall,
        "first_event_ms": ((s.first_event_t or t1) - t0) * 1000,
        "accepted_ms": (accepted["_t"] - t0) * 1000,
        "cpu_us_per_event": (cpu1 - cpu0) / max(1, s.events) * 1e6,
    }
    if redis is not None:
        metrics["redis_cpu_us_per_event"] = (redis1 - redis0) / max(1, s.events) * 1e6
    return {
        "metrics": metrics,
        "wall_s": wall,
        "runtime_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "events": s.events,
        "checks": _terminal_check(s, n),
    }


async def wl_fanout(
    url: str, token: str, proc: Proc, sessions: int = 200, n: int = 100
) -> dict[str, Any]:
    await warm_up(url, token)
    ss = await open_sessions(url, token, sessions)
    await asyncio.sleep(0.2)
    cpu0, me0 = proc.cpu(), self_cpu()
    sent = [s.submit("chatty", {"n": n, "kind": "log"}) for s in ss]
    t0 = sent[0][0]
    accepted = await asyncio.wait_for(asyncio.gather(*(f for _, f in sent)), 60)
    lat = [(a["_t"] - t) * 1000 for (t, _), a in zip(sent, accepted, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(s.wait_terminals(1, 120) for s in ss)), 130)
    t1 = max(s.terminal_t or 0.0 for s in ss)
    cpu1, me1 = proc.cpu(), self_cpu()
    total = sum(s.events for s in ss)
    for s in ss:
        s.close()
    wall = t1 - t0
    bad = [c for c in (_terminal_check(s, n) for s in ss) if not c["ok"]]
    return {
        "metrics": {
            "events_per_s": total / wall,
            "accepted_p50_ms": percentile(lat, 50),
            "accepted_p99_ms": percentile(lat, 99),
            "cpu_us_per_event": (cpu1 - cpu0) / max(1, total) * 1e6,
        },
        "wall_s": wall,
        "runtime_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "events": total,
        "checks": {
            "ok": not bad,
            "sessions": sessions,
            "bad_sessions": len(bad),
            "first_bad": bad[0] if bad else None,
        },
    }


async def wl_idle(
    url: str, token: str, proc: Proc, sessions: int = 1000, idle_sec: float = 15.0
) -> dict[str, Any]:
    await warm_up(url, token)
    await asyncio.sleep(0.5)
    rss0 = proc.mem()["VmRSS"]
    ss = await open_sessions(url, token, sessions)
    await asyncio.sleep(1.0)
    rss1 = proc.mem()["VmRSS"]
    cpu0, me0 = proc.cpu(), self_cpu()
    t0 = time.perf_counter()
    await asyncio.sleep(idle_sec)
    wall = time.perf_counter() - t0
    cpu1, me1 = proc.cpu(), self_cpu()
    rss2 = proc.mem()["VmRSS"]
    alive = sum(1 for s in ss if not s.conn.closed.done())
    pings = sum(s.pings for s in ss)
    for s in ss:
        s.close()
    return {
        "metrics": {
            "rss_kib_per_session": (max(rss1, rss2) - rss0) / sessions,
            "idle_cpu_pct": (cpu1 - cpu0) / wall * 100,
        },
        "wall_s": wall,
        "runtime_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "rss_kib": {"before": rss0, "connected": rss1, "after_idle": rss2},
        "checks": {
            "ok": alive == sessions and pings > 0,
            "alive": alive,
            "sessions": sessions,
            "pings": pings,
        },
    }


async def wl_backlog(url: str, token: str, proc: Proc, n: int = 20000) -> dict[str, Any]:
    await warm_up(url, token)
    s = await Session.open(url, token)
    await s.hello()
    _, acc = s.submit("chatty", {"n": n, "kind": "log"})
    await asyncio.wait_for(acc, 30)
    await s.wait_terminals(1, timeout=max(60.0, n / 500))
    live = _terminal_check(s, n)
    resume = {
        "session_id": s.session_id,
        "resume_token": s.resume_token,
        "last_event_seq": 0,
    }
    s.close()  # TCP abort, no bye
    deadline = time.perf_counter() + 5.0
    attempts = 0
    while True:
        attempts += 1
        await asyncio.sleep(0.05)
        r = await Session.open(url, token)
        cpu0, me0 = proc.cpu(), self_cpu()
        t0 = time.perf_counter()
        try:
            await r.hello(resume=resume)
            break
        except (RuntimeError, ConnectionError):
            r.close()
            if time.perf_counter() > deadline:
                raise
    await r.wait_terminals(1, timeout=max(60.0, n / 500))
    t1 = r.terminal_t or time.perf_counter()
    cpu1, me1 = proc.cpu(), self_cpu()
    r.close()
    wall = t1 - t0
    replayed = r.events + len(r.terminals)
    return {
        "metrics": {
            "replay_events_per_s": replayed / wall,
            "cpu_us_per_event": (cpu1 - cpu0) / max(1, replayed) * 1e6,
        },
        "wall_s": wall,
        "runtime_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "events": replayed,
        "checks": {**_terminal_check(r, n), "live": live, "resume_attempts": attempts},
    }


async def wl_echo(url: str, token: str, proc: Proc, n: int = 500) -> dict[str, Any]:
    await warm_up(url, token)
    s = await Session.open(url, token)
    await s.hello()
    lat = []
    cpu0, me0 = proc.cpu(), self_cpu()
    t_start = time.perf_counter()
    for i in range(n):
        t0, acc = s.submit("echo", {"i": i})
        await asyncio.wait_for(acc, 10)
        await s.wait_terminals(i + 1, 10)
        lat.append(((s.terminal_t or time.perf_counter()) - t0) * 1000)
    wall = time.perf_counter() - t_start
    cpu1, me1 = proc.cpu(), self_cpu()
    s.close()
    ok = s.events == n and all(
        t.get("payload", {}).get("final_status") == "success" for t in s.terminals
    )
    return {
        "metrics": {
            "rtt_p50_ms": percentile(lat, 50),
            "rtt_p99_ms": percentile(lat, 99),
            "cpu_us_per_job": (cpu1 - cpu0) / n * 1e6,
        },
        "wall_s": wall,
        "runtime_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "checks": {"ok": ok, "jobs": n, "events": s.events, "terminals": len(s.terminals)},
    }


async def wl_subscribers(
    url: str, token: str, proc: Proc, k: int = 10, n: int = 2000
) -> dict[str, Any]:
    await warm_up(url, token)
    sub = await Session.open(url, token)
    await sub.hello()
    watchers = await open_sessions(url, token, k)
    await asyncio.sleep(0.2)
    cpu0, me0 = proc.cpu(), self_cpu()
    t0, acc = sub.submit("chatty", {"n": n, "kind": "log"})
    accepted = await asyncio.wait_for(acc, 30)
    job_id = accepted["payload"]["job_id"]
    subscribed = []
    for w in watchers:
        env_id, text = envelope(
            "job.subscribe",
            {"job_id": job_id, "history": True, "from_event_seq": 0},
            session_id=w.session_id,
            job_id=job_id,
        )
        subscribed.append(
            w.expect(
                lambda e, i=env_id: (
                    e.get("type") == "job.subscribed"
                    and e.get("payload", {}).get("request_id") == i
                )
            )
        )
        w.conn.send(text)
    await asyncio.wait_for(asyncio.gather(*subscribed), 60)

    async def finish(w: Session) -> None:
        # Done at the terminal; a subscriber that attached after the end and got no
        # terminal (the reference's history can miss it) is done after 1 s of quiet.
        while not w.terminals:
            before = w.events
            try:
                await w.wait_terminals(1, 1.0)
            except TimeoutError:
                if w.events == before:
                    return

    await asyncio.wait_for(sub.wait_terminals(1, 120), 130)
    await asyncio.wait_for(asyncio.gather(*(finish(w) for w in watchers)), 300)
    t1 = max(max(w.last_t for w in watchers), sub.terminal_t or 0.0)
    cpu1, me1 = proc.cpu(), self_cpu()
    delivered = sum(w.events for w in watchers)
    for w in [sub, *watchers]:
        w.close()
    wall = t1 - t0
    complete = sum(1 for w in watchers if w.events >= n and w.terminals)
    return {
        "metrics": {
            "delivered_events_per_s": delivered / wall,
            "cpu_us_per_event": (cpu1 - cpu0) / max(1, delivered + sub.events) * 1e6,
        },
        "wall_s": wall,
        "runtime_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "events": delivered,
        "checks": {
            "ok": complete == k and sub.events == n,
            "subscribers": k,
            "complete_subscribers": complete,
            "min_delivered": min(w.events for w in watchers),
            "submitter_events": sub.events,
        },
    }


def _job_check(s: Session, events: int, n: int) -> dict[str, Any] | None:
    """None if the last job delivered exactly ``n`` log events (``events``) and ended
    in success; otherwise what went wrong."""
    term = s.terminals[-1] if s.terminals else {}
    status = term.get("payload", {}).get("final_status")
    if events == n and term.get("type") == "job.result" and status == "success":
        return None
    return {"events": events, "terminal": term.get("type"), "final_status": status}


def _mib(kib: int) -> float:
    return kib / 1024


async def wl_soak(
    url: str,
    token: str,
    proc: Proc,
    jobs: int = 200,
    n: int = 5000,
    ack_every: int = 1000,
    *,
    nodes: list[Node] | None = None,
    redis: RedisCPU | None = None,
) -> dict[str, Any]:
    """``jobs`` ``chatty`` n jobs in a row on one session that acks as it goes (when
    ``ack`` is negotiated): the runtime's RSS must level off once warm. RSS is
    sampled after the first quarter of the jobs and at the end, each after a 1 s
    settle (not counted in events/s).

    On a cluster (``--peer``): one session per node, the jobs dealt to them in turn
    (still one job at a time); every node's RSS is sampled, and with ``--redis-port``
    Redis's ``used_memory`` (``INFO memory``) at the same two points."""
    nodes = nodes or [(url, proc)]
    for node_url, _ in nodes:
        await warm_up(node_url, token)
    ss: list[Session] = []
    for node_url, _ in nodes:
        s = await Session.open(node_url, token)
        await s.hello()
        s.track_seq = True
        s.ack_every = ack_every if "ack" in s.features else 0
        ss.append(s)
    acking = all(s.ack_every for s in ss)
    procs = [p for _, p in nodes]
    warm_at = max(1, jobs // 4)
    bad: list[dict[str, Any]] = []
    curve: list[int] = []  # VmRSS (KiB) of the first node after each job
    rss_warm = [0] * len(procs)
    redis_warm = redis_end = None
    settled = 0.0
    cpu0, me0 = sum(p.cpu() for p in procs), self_cpu()
    t0 = time.perf_counter()
    for i in range(jobs):
        s = ss[i % len(ss)]
        before = s.events
        _, acc = s.submit("chatty", {"n": n, "kind": "log"})
        await asyncio.wait_for(acc, 30)
        await s.wait_terminals(i // len(ss) + 1, timeout=max(60.0, n / 500))
        problem = _job_check(s, s.events - before, n)
        if problem is not None:
            bad.append({"job": i, **problem})
        curve.append(proc.mem()["VmRSS"])
        if i + 1 == warm_at:
            t_settle = time.perf_counter()
            await asyncio.sleep(1.0)
            rss_warm = [p.mem()["VmRSS"] for p in procs]
            if redis is not None:
                redis_warm = await redis.used_memory()
            settled += time.perf_counter() - t_settle
    t1 = max((s.terminal_t for s in ss if s.terminal_t is not None), default=None)
    t1 = t1 or time.perf_counter()
    cpu1, me1 = sum(p.cpu() for p in procs), self_cpu()
    await asyncio.sleep(1.0)
    rss_end = [p.mem()["VmRSS"] for p in procs]
    if redis is not None:
        redis_end = await redis.used_memory()
    for s in ss:
        s.close()
    wall = t1 - t0 - settled
    events = sum(s.events for s in ss)
    metrics: dict[str, float] = {
        "rss_growth_mib": _mib(rss_end[0] - rss_warm[0]),
        "rss_warm_mib": _mib(rss_warm[0]),
        "rss_end_mib": _mib(rss_end[0]),
        "events_per_s": events / wall,
        "events": events,
        "cpu_us_per_event": (cpu1 - cpu0) / max(1, events) * 1e6,
    }
    if len(procs) > 1:  # the largest growth of any node, and the sum of their RSS
        metrics["max_rss_growth_mib"] = max(
            _mib(e - w) for w, e in zip(rss_warm, rss_end, strict=True)
        )
    if redis_warm is not None and redis_end is not None:
        metrics["redis_used_memory_warm_mib"] = redis_warm / 2**20
        metrics["redis_used_memory_end_mib"] = redis_end / 2**20
        metrics["redis_used_memory_growth_mib"] = (redis_end - redis_warm) / 2**20
    result: dict[str, Any] = {
        "metrics": metrics,
        "wall_s": wall,
        "runtime_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "acking": acking,
        "acks_sent": sum(s.acks_sent for s in ss),
        "last_seq": ss[0].last_seq,
        "rss_curve_mib": [round(_mib(k), 1) for k in curve],
        "checks": {
            "ok": not bad
            and sum(len(s.terminals) for s in ss) == jobs
            and not any(s.errors for s in ss),
            "jobs": jobs,
            "terminals": sum(len(s.terminals) for s in ss),
            "session_errors": [e.get("payload") for s in ss for e in s.errors[:3]],
            "bad_jobs": len(bad),
            "first_bad": bad[0] if bad else None,
        },
    }
    if len(procs) > 1:
        result["nodes_rss_mib"] = [
            {"warm": _mib(w), "end": _mib(e), "growth": _mib(e - w)}
            for w, e in zip(rss_warm, rss_end, strict=True)
        ]
    return result


async def wl_slow(
    url: str,
    token: str,
    proc: Proc,
    consumers: int = 20,
    n: int = 20000,
    burst: int = 500,
    pause_ms: float = 20.0,
    ack_every: int = 1000,
) -> dict[str, Any]:
    """``consumers`` sessions, all at once, each submit one ``chatty`` n job and read
    it slowly: reading of the socket paused ``pause_ms`` after every ``burst`` events,
    acks every ``ack_every`` events (when negotiated). The runtime must hold what the
    consumers have not read yet in bounded memory."""
    await warm_up(url, token)
    ss = await open_sessions(url, token, consumers)
    acking = all("ack" in s.features for s in ss)
    for s in ss:
        s.track_seq = True
        s.ack_every = ack_every if acking else 0
        s.burst = burst
        s.pause_sec = pause_ms / 1000
    await asyncio.sleep(0.5)
    rss0 = proc.mem()["VmRSS"]
    cpu0, me0 = proc.cpu(), self_cpu()
    sent = [s.submit("chatty", {"n": n, "kind": "log"}) for s in ss]
    t0 = sent[0][0]
    await asyncio.wait_for(asyncio.gather(*(f for _, f in sent)), 60)
    limit = max(120.0, consumers * n / 1000)
    await asyncio.wait_for(asyncio.gather(*(s.wait_terminals(1, limit) for s in ss)), limit + 10)
    t1 = max(s.terminal_t or 0.0 for s in ss)
    cpu1, me1 = proc.cpu(), self_cpu()
    await asyncio.sleep(1.0)
    mem = proc.mem()
    total = sum(s.events for s in ss)
    pauses = sum(s.pauses for s in ss)
    acks = sum(s.acks_sent for s in ss)
    for s in ss:
        s.close()
    wall = t1 - t0
    bad = [c for c in (_terminal_check(s, n) for s in ss) if not c["ok"]]
    errors = [e.get("payload") for s in ss for e in s.errors]
    return {
        "metrics": {
            "rss_growth_mib": _mib(mem["VmRSS"] - rss0),
            "peak_growth_mib": _mib(mem["VmHWM"] - rss0),
            "events_per_s": total / wall,
            "cpu_us_per_event": (cpu1 - cpu0) / max(1, total) * 1e6,
        },
        "wall_s": wall,
        "runtime_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "events": total,
        "acking": acking,
        "acks_sent": acks,
        "pauses": pauses,
        "rss_kib": {"before": rss0, "end": mem["VmRSS"], "hwm": mem["VmHWM"]},
        "checks": {
            "ok": not bad and not errors,
            "consumers": consumers,
            "bad_consumers": len(bad),
            "first_bad": bad[0] if bad else None,
            "session_errors": errors[:3],
        },
    }


def _costly_lease(seed: int = 0) -> dict[str, list[str]]:
    """The costliest lease_request the runtime's limits allow (docs/limits.md): 4,096
    characters and 256 wildcards, as classes mixed with stars (the shape that needs a
    regex), whose very last pattern is malformed, so every pattern is compiled before
    the submit is refused and no job starts. Each ``seed`` gives other patterns (a
    regex compiled once is cached: an attacker would not repeat itself)."""
    rng = random.Random(seed)
    patterns = []
    for _ in range(8):
        classes = "".join(
            f"[{chr(97 + rng.randrange(25))}{chr(97 + rng.randrange(25))}]*" for _ in range(16)
        )
        # 16 classes + 16 stars = 32 wildcards (the most a pattern may have), then
        # literal text to 500 characters; 8 patterns: 4,000 characters, 256 wildcards.
        patterns.append(classes + "x" * (500 - len(classes)))
    # The last class of the last pattern is never closed: refused once the rest of
    # the lease, and that whole pattern, have been read.
    last = patterns[-1]
    patterns[-1] = last[:75] + "[xy" + last[79:]
    return {"tool.call": patterns}


def _stall_frames(max_message_size: int) -> dict[str, list[str] | bytes]:
    """One attack per kind: the costliest frame of each kind the limits allow (the
    lease attack, fresh each time, is made by ``_costly_lease``)."""
    big_input = ["x" * 100] * ((max_message_size - 4096) // 106)
    deep = "[" * 100_000 + "]" * 100_000
    head = '{"arcp":"1.1","id":"' + ulid() + '","type":"job.submit","payload":{"agent":"a",'
    return {
        "big_input": [envelope("job.submit", {"agent": "no-such-agent", "input": big_input})[1]],
        "oversized": [head + '"input":"' + "x" * max_message_size + '"}}'],
        "deep": [head + '"input":' + deep + "}}"],
        "burst": [envelope("session.ack", {"last_processed_seq": -1})[1] for _ in range(200)],
        "not_utf8": (head + '"input":"' + "x" * 60_000).encode() + b'\xff"}}',
        "bad_cursor": [envelope("session.list_jobs", {"cursor": "9" * 5000})[1]],
    }


async def wl_stall(
    url: str,
    token: str,
    proc: Proc,
    attackers: int = 4,
    duration: float = 10.0,
    max_message_size: int = 1 << 20,
) -> dict[str, Any]:
    """An honest ticker (an event every 100 ms) on one session while ``attackers``
    other connections send, back to back, the costliest frame of each kind the
    limits allow (each waits for its answer, so the runtime is kept saturated, not
    buffered). Reports the honest session's largest gap between two events."""
    await warm_up(url, token)
    honest = await Session.open(url, token)
    await honest.hello()
    honest.event_times = []
    ticks = int(duration * 10) + 20
    _, acc = honest.submit("ticker", {"count": ticks, "interval": 0.1})
    await asyncio.wait_for(acc, 10)
    await asyncio.sleep(1.0)  # a steady ticker before the attack
    frames = _stall_frames(max_message_size)
    kinds = ["lease", *frames]
    answered: dict[str, int] = dict.fromkeys(kinds, 0)
    latency: dict[str, list[float]] = {kind: [] for kind in kinds}
    unanswered = 0
    reconnects = 0
    stop_at = time.perf_counter() + duration

    async def attacker(index: int) -> None:
        nonlocal reconnects, unanswered
        turn = index
        opened = False
        session: Session | None = None
        while time.perf_counter() < stop_at:
            kind = kinds[turn % len(kinds)]
            turn += 1
            try:
                if session is None or session.conn.closed.done():
                    reconnects += opened  # every connection after this attacker's first
                    opened = True
                    session = await Session.open(url, token)
                    await session.hello()
                if kind == "lease":
                    lease = _costly_lease(index << 20 | turn)
                    attack: list[str] | bytes = [
                        envelope("job.submit", {"agent": "echo", "lease_request": lease})[1]
                    ]
                else:
                    attack = frames[kind]
                before = len(session.errors)
                sent = time.perf_counter()
                if isinstance(attack, bytes):
                    session.conn.send_binary(attack)
                    expected = 1
                else:
                    session.conn.send_many(attack)
                    expected = len(attack)
                await session.wait_errors(before + expected, 2)
                latency[kind].append((time.perf_counter() - sent) * 1000)
                answered[kind] += expected
            except (ConnectionError, TimeoutError, OSError, RuntimeError):
                # Silence (2 s) or a closed connection: a new connection goes on.
                unanswered += 1
                if session is not None:
                    session.close()
                session = None
        if session is not None:
            session.close()

    t_attack = time.perf_counter()
    cpu0 = proc.cpu()
    await asyncio.gather(*(attacker(i) for i in range(attackers)))
    t_end = time.perf_counter()
    cpu1 = proc.cpu()
    await asyncio.sleep(0.5)
    times = [t for t in honest.event_times if t_attack <= t <= t_end + 0.3]
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    honest_alive = not honest.conn.closed.done()
    honest.close()
    return {
        "metrics": {
            "max_gap_ms": max(gaps) if gaps else float("nan"),
            "gap_p99_ms": percentile(gaps, 99) if gaps else float("nan"),
            "attack_frames_per_s": sum(answered.values()) / (t_end - t_attack),
            "runtime_cpu_pct": (cpu1 - cpu0) / (t_end - t_attack) * 100,
        },
        "answered": answered,
        "answer_ms_p50": {k: round(percentile(v, 50), 2) for k, v in latency.items() if v},
        "unanswered": unanswered,
        "reconnects": reconnects,
        "honest_events_in_attack": len(times),
        "checks": {
            "ok": honest_alive and len(times) >= int((t_end - t_attack) * 10 * 0.8),
            "honest_connected": honest_alive,
            "events_in_attack": len(times),
        },
    }


# -- cluster: several nodes on one Redis ------------------------------------------------
#
# These take ``nodes``: (url, Proc) of every node of the cluster, the ``--url`` node
# first, then each ``--peer``; and ``redis``: the Redis they share (``--redis-port``),
# or None for a single process.

Node = tuple[str, Proc]


async def _cpu(procs: list[Proc], redis: RedisCPU | None) -> tuple[float, float]:
    """(the nodes' CPU seconds summed, Redis's CPU seconds, 0 without Redis)."""
    redis_cpu = await redis.cpu() if redis is not None else 0.0
    return sum(p.cpu() for p in procs), redis_cpu


async def wl_spread(
    url: str,
    token: str,
    proc: Proc,
    sessions: int = 8,
    n: int = 10000,
    *,
    nodes: list[Node],
    redis: RedisCPU | None = None,
) -> dict[str, Any]:
    """``sessions`` sessions dealt round-robin over the nodes each submit ``chatty`` n
    at once (so each node runs the jobs of its own sessions); aggregate events/s from
    the first submit to the last terminal, CPU per event of the nodes (summed) and of
    Redis."""
    for node_url, _ in nodes:
        await warm_up(node_url, token)
    per_node = [
        await open_sessions(node_url, token, len(range(i, sessions, len(nodes))))
        for i, (node_url, _) in enumerate(nodes)
    ]
    ss = [s for group in itertools.zip_longest(*per_node) for s in group if s is not None]
    await asyncio.sleep(0.2)
    procs = [p for _, p in nodes]
    (cpu0, redis0), me0 = await _cpu(procs, redis), self_cpu()
    sent = [s.submit("chatty", {"n": n, "kind": "log"}) for s in ss]
    t0 = sent[0][0]
    accepted = await asyncio.wait_for(asyncio.gather(*(f for _, f in sent)), 60)
    lat = [(a["_t"] - t) * 1000 for (t, _), a in zip(sent, accepted, strict=True)]
    limit = max(60.0, sessions * n / 1000)
    await asyncio.wait_for(asyncio.gather(*(s.wait_terminals(1, limit) for s in ss)), limit + 10)
    t1 = max(s.terminal_t or 0.0 for s in ss)
    (cpu1, redis1), me1 = await _cpu(procs, redis), self_cpu()
    total = sum(s.events for s in ss)
    for s in ss:
        s.close()
    wall = t1 - t0
    bad = [c for c in (_terminal_check(s, n) for s in ss) if not c["ok"]]
    metrics = {
        "events_per_s": total / wall,
        "accepted_p99_ms": percentile(lat, 99),
        "cpu_us_per_event": (cpu1 - cpu0) / max(1, total) * 1e6,
    }
    if redis is not None:
        metrics["redis_cpu_us_per_event"] = (redis1 - redis0) / max(1, total) * 1e6
    return {
        "metrics": metrics,
        "wall_s": wall,
        "nodes": len(nodes),
        "sessions_per_node": [len(group) for group in per_node],
        "runtime_cpu_s": cpu1 - cpu0,
        "redis_cpu_s": redis1 - redis0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "events": total,
        "checks": {
            "ok": not bad,
            "sessions": sessions,
            "bad_sessions": len(bad),
            "first_bad": bad[0] if bad else None,
        },
    }


async def _job_status(s: Session, job_id: str) -> str | None:
    """The job's status as ``session.list_jobs`` reports it (None: not listed)."""
    env_id, text = envelope("session.list_jobs", {"limit": 1000}, session_id=s.session_id)
    fut = s.expect(
        lambda e: (
            e.get("type") == "session.jobs" and e.get("payload", {}).get("request_id") == env_id
        )
    )
    s.conn.send(text)
    env = await asyncio.wait_for(fut, 10)
    if env["type"] != "session.jobs":
        raise RuntimeError(f"list_jobs refused: {env.get('payload')}")
    for job in env["payload"].get("jobs") or []:
        if job.get("job_id") == job_id:
            return str(job.get("status"))
    return None


async def wl_handoff(
    url: str,
    token: str,
    proc: Proc,
    n: int = 50000,
    poll_ms: float = 20.0,
    *,
    nodes: list[Node],
    redis: RedisCPU | None = None,
) -> dict[str, Any]:
    """A session on the first node submits ``chatty`` n and drops its TCP connection
    as soon as the job is accepted; the job goes on emitting into the detached
    session. A session on the last node polls ``session.list_jobs`` every ``poll_ms``
    until the job has ended; then the session resumes on the last node with
    ``last_event_seq: 0``. Replayed frames (events + terminal) per second, from sending
    the resume hello to the replayed terminal, and the CPU of the resuming node and of
    Redis per replayed frame. With one node, the resume is on the same node."""
    (url_a, _), (url_b, proc_b) = nodes[0], nodes[-1]
    for node_url, _ in nodes:
        await warm_up(node_url, token)
    s = await Session.open(url_a, token)
    await s.hello()
    t_submit, acc = s.submit("chatty", {"n": n, "kind": "log"})
    accepted = await asyncio.wait_for(acc, 30)
    job_id = accepted["payload"]["job_id"]
    resume = {"session_id": s.session_id, "resume_token": s.resume_token, "last_event_seq": 0}
    s.close()  # TCP abort, no bye: detached while the job runs
    live = s.events
    w = await Session.open(url_b, token)
    await w.hello()
    deadline = time.perf_counter() + max(60.0, n / 500)
    polls = 0
    while True:
        polls += 1
        status = await _job_status(w, job_id)
        if status in TERMINAL_STATUSES:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job still {status} after {polls} polls")
        await asyncio.sleep(poll_ms / 1000)
    t_done = time.perf_counter()
    w.close()
    resume_deadline = time.perf_counter() + 5.0
    attempts = 0
    while True:
        attempts += 1
        await asyncio.sleep(0.05)
        r = await Session.open(url_b, token)
        (cpu0, redis0), me0 = await _cpu([proc_b], redis), self_cpu()
        t0 = time.perf_counter()
        try:
            await r.hello(resume=resume)
            break
        except (RuntimeError, ConnectionError):
            r.close()
            if time.perf_counter() > resume_deadline:
                raise
    await r.wait_terminals(1, timeout=max(60.0, n / 500))
    t1 = r.terminal_t or time.perf_counter()
    (cpu1, redis1), me1 = await _cpu([proc_b], redis), self_cpu()
    r.close()
    wall = t1 - t0
    replayed = r.events + len(r.terminals)
    metrics = {
        "replay_events_per_s": replayed / wall,
        "cpu_us_per_event": (cpu1 - cpu0) / max(1, replayed) * 1e6,
        "detached_events_per_s": n / (t_done - t_submit),
    }
    if redis is not None:
        metrics["redis_cpu_us_per_event"] = (redis1 - redis0) / max(1, replayed) * 1e6
    return {
        "metrics": metrics,
        "wall_s": wall,
        "nodes": len(nodes),
        "runtime_cpu_s": cpu1 - cpu0,
        "redis_cpu_s": redis1 - redis0,
        "loadgen_cpu_frac": (me1 - me0) / wall,
        "events": replayed,
        "live_before_detach": live,
        "status_polls": polls,
        "checks": {
            **_terminal_check(r, n),
            "job_status": status,
            "resume_attempts": attempts,
        },
    }


WORKLOADS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "stall": wl_stall,
    "throughput": wl_throughput,
    "fanout": wl_fanout,
    "idle": wl_idle,
    "backlog": wl_backlog,
    "echo": wl_echo,
    "subscribers": wl_subscribers,
    "soak": wl_soak,
    "slow": wl_slow,
    "spread": wl_spread,
    "handoff": wl_handoff,
}


def _param(text: str) -> tuple[str, float | int]:
    key, _, value = text.partition("=")
    number = float(value)
    return key, int(number) if number.is_integer() else number


def _peer(text: str) -> tuple[str, int]:
    url, _, pid = text.rpartition("=")
    return url, int(pid)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--pid", type=int, required=True, help="the runtime's process id")
    p.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=300.0, help="overall time limit")
    p.add_argument(
        "--peer",
        action="append",
        type=_peer,
        default=[],
        metavar="URL=PID",
        help="another node of the same cluster (repeatable; the cluster workloads)",
    )
    p.add_argument(
        "--redis-port",
        type=int,
        default=None,
        help="the Redis the nodes share, on 127.0.0.1: its CPU is measured (INFO cpu)",
    )
    args = p.parse_args(argv)
    _raise_nofile()
    proc = Proc(args.pid)
    fn = WORKLOADS[args.workload]
    params = dict(args.param)
    accepts = inspect.signature(fn).parameters
    extra: dict[str, Any] = {}
    if "nodes" in accepts:
        extra["nodes"] = [(args.url, proc), *((url, Proc(pid)) for url, pid in args.peer)]
    if "redis" in accepts and args.redis_port is not None:
        extra["redis"] = RedisCPU(args.redis_port)
    started = time.perf_counter()

    async def run() -> dict[str, Any]:
        return await asyncio.wait_for(
            fn(args.url, args.token, proc, **params, **extra), args.timeout
        )

    try:
        result = asyncio.run(run())
        result["error"] = None
    except Exception as exc:  # report, never raise: benchmarks print figures only
        result = {"metrics": {}, "checks": {"ok": False}, "error": f"{type(exc).__name__}: {exc}"}
    result["workload"] = args.workload
    result["params"] = params
    result["elapsed_s"] = time.perf_counter() - started
    try:
        result["runtime_mem_kib"] = proc.mem()
    except OSError:
        result["runtime_mem_kib"] = {}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
