"""An in-process runtime and the clients and raw peers that talk to it.

Everything here runs on whatever Trio clock the caller runs on; with
``trio.testing.MockClock(autojump_threshold=0)`` hours of protocol time (heartbeats,
resume windows, backoff) pass in milliseconds. The wall clock the runtime and the
clients stamp on the wire follows Trio time (``trio_wall_clock``), so lease expiry
agrees with MockClock.

* ``open_test_runtime``: a runtime with test-sized timings and two principals.
* ``MemoryLink``: a ``Connector`` for ``open_client`` that opens one in-memory
  connection per attempt, wrapped in a ``ChaosTransport``, and can be switched off,
  dropped or stalled.
* ``open_test_client`` / ``open_runtime_pair``: a real client over such a link.
* ``RawPeer``: one connection driven frame by frame, for hostile or exact tests.
* ``run_on_mock_clock`` and ``MockClockPortal``: run async code on a fresh MockClock
  from synchronous code (hypothesis ``@given`` tests and ``RuleBasedStateMachine``).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import random
import threading
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio
import trio.testing

from ..client.client import Client, open_client
from ..demo_agents import demo_registry
from ..protocol.session import ALL_FEATURES
from ..runtime.config import RuntimeConfig
from ..runtime.runtime import Runtime, open_runtime
from ..transport.base import DEFAULT_MAX_MESSAGE_SIZE, Transport, TransportBroken
from ..transport.memory import memory_transport_pair
from ..wire.codec import decode
from ..wire.ids import new_ulid
from ..wire.timestamps import trio_wall_clock_at
from .chaos import ChaosPlan, ChaosTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
    from datetime import datetime

    from ..runtime.agents import AgentRegistry

__all__ = [
    "REFERENCE_FEATURES",
    "SPEC_FEATURES",
    "TEST_TOKENS",
    "MemoryLink",
    "MockClockPortal",
    "RawPeer",
    "RuntimePair",
    "SequenceViolation",
    "config_for_tests",
    "connect_peer",
    "no_jitter",
    "open_runtime_pair",
    "open_test_client",
    "open_test_runtime",
    "run_on_mock_clock",
    "trio_wall_clock",
]

T = TypeVar("T")

#: Bearer token → principal: two principals, so isolation can be tested.
TEST_TOKENS: Mapping[str, str] = {"tok-alice": "alice", "tok-bob": "bob"}

#: Every feature arcp_trio implements, spec frame shapes included.
SPEC_FEATURES: tuple[str, ...] = ALL_FEATURES
#: What the reference SDK's client asks for (no vendor features: reference shapes).
REFERENCE_FEATURES: tuple[str, ...] = tuple(f for f in ALL_FEATURES if not f.startswith("x-"))


def trio_wall_clock() -> datetime:
    """Wall-clock time that follows Trio's clock (MockClock included)."""
    return trio_wall_clock_at(trio.current_time())


def no_jitter(delay: float) -> float:
    """Reconnect jitter that changes nothing (deterministic backoff in tests)."""
    return delay


def config_for_tests(**overrides: Any) -> RuntimeConfig:
    """Test-sized timings: heartbeat 8 s, resume window 64 s, shutdown grace 1 s.

    Powers of two keep MockClock arithmetic exact. Any ``RuntimeConfig`` field can
    be overridden.
    """
    values: dict[str, Any] = {
        "heartbeat_interval_sec": 8,
        "resume_window_sec": 64,
        "shutdown_grace_sec": 1.0,
    }
    values.update(overrides)
    return RuntimeConfig(**values)


@asynccontextmanager
async def open_test_runtime(
    agents: AgentRegistry | None = None,
    *,
    config: RuntimeConfig | None = None,
    tokens: Mapping[str, str] = TEST_TOKENS,
    **options: Any,
) -> AsyncIterator[Runtime]:
    """``open_runtime`` with the demo agents (by default), test timings and tokens."""
    async with open_runtime(
        agents=agents if agents is not None else demo_registry(),
        tokens=tokens,
        config=config or config_for_tests(),
        wall_clock=options.pop("wall_clock", trio_wall_clock),
        **options,
    ) as runtime:
        yield runtime


class MemoryLink:
    """Connects clients to an in-process runtime; one in-memory pair per attempt.

    Use ``link.connect`` as ``open_client(connect=...)``. Every transport is a
    ``ChaosTransport`` (calm unless a ``plan`` is given), so a test can fault the
    current connection (``drop()``, ``stall()``) or the link itself (``up = False``
    refuses connects until set back).

    Args:
        runtime: where connections go (``runtime.handle_transport`` in ``nursery``).
        nursery: runs the runtime side of each connection.
        plan: random faults; ``duplicate_connect`` and ``refuse_connect`` apply here.
        seed: seeds every random decision of this link.
        record: keep every frame each transport sent and received.
        buffer: frames each direction holds before a send blocks (``math.inf``: a
            fast network; small numbers model a slow consumer's full socket).
    """

    def __init__(
        self,
        runtime: Runtime,
        nursery: trio.Nursery,
        *,
        plan: ChaosPlan | None = None,
        seed: int = 0,
        record: bool = False,
        buffer: float = math.inf,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.runtime = runtime
        self.nursery = nursery
        self.plan = plan or ChaosPlan()
        self.rng = random.Random(seed)
        self.record = record
        self.buffer = buffer
        self.max_message_size = max_message_size
        #: While False, every connect is refused (the runtime is unreachable).
        self.up = True
        #: Refuse this many further connects.
        self.refuse = 0
        self.connects = 0
        self.refused = 0
        self.transports: list[ChaosTransport] = []
        #: First frame each duplicate connection attempt got back (parsed).
        self.duplicate_replies: list[dict[str, Any]] = []

    async def connect(self) -> Transport:
        """Open one connection (the ``Connector`` protocol)."""
        await trio.lowlevel.checkpoint()
        refused = not self.up or self.refuse > 0
        if self.refuse > 0:
            self.refuse -= 1
        if refused or (self.plan.refuse_connect and self.rng.random() < self.plan.refuse_connect):
            self.refused += 1
            raise TransportBroken("connection refused")
        self.connects += 1
        client_side, runtime_side = memory_transport_pair(
            buffer=self.buffer, max_message_size=self.max_message_size
        )
        self.nursery.start_soon(self.runtime.handle_transport, runtime_side)
        duplicate = bool(
            self.plan.duplicate_connect and self.rng.random() < self.plan.duplicate_connect
        )
        transport = ChaosTransport(
            client_side,
            plan=self.plan,
            rng=self.rng,
            record=self.record or duplicate,
            on_first_receive=(lambda _text: self._duplicate(transport)) if duplicate else None,
        )
        self.transports.append(transport)
        return transport

    def _duplicate(self, original: ChaosTransport) -> None:
        if original.sent:
            self.nursery.start_soon(self._ghost_attempt, original.sent[0])

    async def _ghost_attempt(self, first_frame: str) -> None:
        """A second connection repeating the real one's handshake (a retried dial)."""
        ghost, runtime_side = memory_transport_pair()
        self.nursery.start_soon(self.runtime.handle_transport, runtime_side)
        try:
            await ghost.send_message(first_frame)
            reply = json.loads(await ghost.receive_message())
            self.duplicate_replies.append(reply)
        except TransportBroken:
            pass
        finally:
            await ghost.aclose()

    @property
    def current(self) -> ChaosTransport:
        """The most recent connection."""
        return self.transports[-1]

    def drop(self) -> None:
        """Abort the current connection (a network drop)."""
        self.current.drop()

    def stall(self) -> None:
        """Black-hole the current connection (only heartbeats can notice)."""
        self.current.stall()


@asynccontextmanager
async def open_test_client(
    link: MemoryLink, *, token: str = "tok-alice", **options: Any
) -> AsyncIterator[Client]:
    """``open_client`` over ``link`` with deterministic backoff and Trio wall time."""
    options.setdefault("jitter", no_jitter)
    options.setdefault("wall_clock", trio_wall_clock)
    async with open_client(token=token, connect=link.connect, **options) as client:
        yield client


@attrs.define(eq=False)
class RuntimePair:
    """A runtime, a connected client, and the link between them."""

    runtime: Runtime
    client: Client
    link: MemoryLink
    nursery: trio.Nursery

    async def peer(self, token: str = "tok-alice", **hello: Any) -> RawPeer:
        """A raw peer on its own connection to the same runtime, already welcomed."""
        peer = connect_peer(self.runtime, self.nursery)
        await peer.hello(token, **hello)
        return peer


@asynccontextmanager
async def open_runtime_pair(
    agents: AgentRegistry | None = None,
    *,
    config: RuntimeConfig | None = None,
    token: str = "tok-alice",
    plan: ChaosPlan | None = None,
    seed: int = 0,
    record: bool = False,
    **client_options: Any,
) -> AsyncIterator[RuntimePair]:
    """A runtime and a real client connected to it over a ``MemoryLink``.

    Cancellation: leaving the block closes the client (jobs keep running), then the
    connections, then shuts the runtime down.
    """
    async with (
        open_test_runtime(agents, config=config) as runtime,
        trio.open_nursery() as nursery,
    ):
        link = MemoryLink(runtime, nursery, plan=plan, seed=seed, record=record)
        async with open_test_client(link, token=token, **client_options) as client:
            yield RuntimePair(runtime=runtime, client=client, link=link, nursery=nursery)
        nursery.cancel_scope.cancel()


def run_on_mock_clock(
    async_fn: Callable[..., Awaitable[T]], *args: Any, autojump_threshold: float = 0.0
) -> T:
    """``trio.run(async_fn, *args)`` on a fresh ``MockClock`` (one per call).

    The pattern for hypothesis: a synchronous ``@given`` test calls this once per
    example, so every example starts at time zero with nothing left over.
    """
    clock = trio.testing.MockClock(autojump_threshold=autojump_threshold)
    return trio.run(async_fn, *args, clock=clock)


class SequenceViolation(AssertionError):
    """A peer saw an ``event_seq`` out of order: a gap or a duplicate (§8.3)."""


class RawPeer:
    """One connection to a runtime, driven frame by frame.

    Every inbound frame must decode with arcp_trio's own codec, and seq-bearing
    frames must continue the session's sequence with no gap and no duplicate
    (``SequenceViolation`` otherwise). Pings are answered when ``auto_pong`` is set.
    """

    def __init__(
        self, transport: Transport, *, auto_pong: bool = True, receive_timeout: float = 60
    ) -> None:
        self.transport = transport
        self.auto_pong = auto_pong
        #: Seconds (of the current clock) ``recv`` waits before ``trio.TooSlowError``.
        self.receive_timeout = receive_timeout
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.last_event_seq = 0
        #: Every frame received, parsed.
        self.received: list[dict[str, Any]] = []
        self._backlog: list[dict[str, Any]] = []

    async def send(
        self, type_: str, payload: Mapping[str, Any] | None = None, **envelope: Any
    ) -> str:
        """Send one frame; returns its id (``id=`` to choose it)."""
        frame_id = envelope.pop("id", None) or new_ulid()
        frame: dict[str, Any] = {
            "arcp": "1.1",
            "id": frame_id,
            "type": type_,
            "payload": dict(payload or {}),
        }
        if self.session_id is not None:
            frame["session_id"] = self.session_id
        frame.update(envelope)
        await self.transport.send_message(json.dumps(frame))
        return str(frame_id)

    async def send_raw(self, text: str) -> None:
        await self.transport.send_message(text)

    async def recv(self) -> dict[str, Any]:
        """The next frame (pings answered and skipped when ``auto_pong``)."""
        if self._backlog:
            return self._backlog.pop(0)
        while True:
            with trio.fail_after(self.receive_timeout):
                text = await self.transport.receive_message()
            decode(text)  # whatever a runtime sends must parse
            frame: dict[str, Any] = json.loads(text)
            self.received.append(frame)
            seq = frame.get("event_seq")
            if seq is not None:
                if seq != self.last_event_seq + 1:
                    raise SequenceViolation(
                        f"event_seq {seq} after {self.last_event_seq}: "
                        + ("a duplicate" if seq <= self.last_event_seq else "a gap")
                    )
                self.last_event_seq = seq
            if frame.get("type") == "session.ping" and self.auto_pong:
                await self.send(
                    "session.pong",
                    {"ping_nonce": frame["payload"].get("nonce", ""), "received_at": None},
                )
                continue
            return frame

    async def recv_type(self, *types: str) -> dict[str, Any]:
        """The next frame of one of ``types``; others are kept for ``recv``."""
        for index, frame in enumerate(self._backlog):
            if frame.get("type") in types:
                return self._backlog.pop(index)
        while True:
            frame = await self._recv_fresh()
            if frame.get("type") in types:
                return frame
            self._backlog.append(frame)

    async def _recv_fresh(self) -> dict[str, Any]:
        backlog, self._backlog = self._backlog, []
        try:
            return await self.recv()
        finally:
            self._backlog = backlog + self._backlog

    async def request(
        self, type_: str, payload: Mapping[str, Any] | None = None, **envelope: Any
    ) -> dict[str, Any]:
        """Send a request and return the reply that names it (``request_id``)."""
        request_id = await self.send(type_, payload, **envelope)
        while True:
            frame = await self.recv_type(
                "session.error",
                "job.accepted",
                "job.subscribed",
                "job.cancelled",
                "session.jobs",
                "session.closed",
            )
            if frame.get("payload", {}).get("request_id") == request_id:
                return frame
            self._backlog.append(frame)

    async def hello(
        self,
        token: str = "tok-alice",
        *,
        features: Sequence[str] = SPEC_FEATURES,
        resume: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Send ``session.hello`` (optionally with a ``resume`` block); return the answer."""
        payload: dict[str, Any] = {
            "client": {"name": "arcp-trio-raw-peer", "version": "0"},
            "auth": {"scheme": "bearer", "token": token},
            "capabilities": {"encodings": ["json"], "features": list(features)},
            **extra,
        }
        if resume is not None:
            payload["resume"] = dict(resume)
            self.last_event_seq = int(resume.get("last_event_seq", 0))
        await self.send("session.hello", payload)
        return self._note_welcome(await self.recv())

    async def resume(self, session_id: str, resume_token: str, last_event_seq: int) -> Any:
        """§6.3 ``session.resume`` as the first frame; return the answer."""
        self.last_event_seq = last_event_seq
        await self.send(
            "session.resume",
            {
                "session_id": session_id,
                "resume_token": resume_token,
                "last_event_seq": last_event_seq,
            },
        )
        return self._note_welcome(await self.recv())

    def _note_welcome(self, frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("type") == "session.welcome":
            self.session_id = frame["session_id"]
            self.resume_token = frame["payload"]["resume_token"]
        return frame

    async def aclose(self) -> None:
        await self.transport.aclose()


def connect_peer(runtime: Runtime, nursery: trio.Nursery, *, auto_pong: bool = True) -> RawPeer:
    """A ``RawPeer`` on a new in-memory connection to ``runtime`` (not yet welcomed)."""
    client_side, runtime_side = memory_transport_pair()
    nursery.start_soon(runtime.handle_transport, runtime_side)
    return RawPeer(client_side, auto_pong=auto_pong)


class MockClockPortal:
    """Drive one Trio run on a ``MockClock`` from synchronous code, step by step.

    Hypothesis ``RuleBasedStateMachine`` rules are synchronous; this runs Trio in a
    background thread and lets each rule ``call`` into it. Virtual time moves only
    during a call (autojump on); between calls the world is frozen, so a rule sees
    exactly the state the previous one left.

    Usage::

        portal = MockClockPortal()
        runtime = portal.enter(open_test_runtime())
        portal.call(some_async_step, runtime)
        portal.close()

    Args:
        step_timeout: virtual seconds one call may take before ``trio.TooSlowError``.
        real_timeout: wall seconds one call may take before the run is torn down
            (a busy loop never lets virtual time move).
    """

    def __init__(self, *, step_timeout: float = 3600.0, real_timeout: float = 60.0) -> None:
        self.clock = trio.testing.MockClock(autojump_threshold=math.inf)
        self.step_timeout = step_timeout
        self.real_timeout = real_timeout
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._exits: list[trio.Event] = []
        self._hosts: list[trio.Event] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="arcp-mock-clock", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:  # pragma: no cover - trio failed to start
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._async_main, clock=self.clock)
        except BaseException as exc:  # reported by call()/close()
            self._error = exc
        finally:
            self._ready.set()

    async def _async_main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await trio.sleep_forever()

    @property
    def now(self) -> float:
        """Current virtual time."""
        return self.clock.current_time()

    def call(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``async_fn(*args)`` in the Trio thread and return its result.

        Raises whatever it raises; if the background run itself crashed (a task in
        a hosted context failed), raises that crash.
        """
        if self._closed:
            raise RuntimeError("the portal is closed")
        self._raise_if_crashed()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def runner() -> None:
            self.clock.autojump_threshold = 0
            try:
                with trio.fail_after(self.step_timeout):
                    result = await async_fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                future.set_result(result)
            finally:
                self.clock.autojump_threshold = math.inf

        assert self._token is not None
        assert self._nursery is not None
        nursery = self._nursery
        try:
            self._token.run_sync_soon(lambda: nursery.start_soon(runner))
        except trio.RunFinishedError:
            self._raise_if_crashed()
            raise
        try:
            return future.result(timeout=self.real_timeout)
        except concurrent.futures.TimeoutError:
            self._abort()
            raise TimeoutError(
                f"a portal call did not finish within {self.real_timeout} s of real time "
                "(a task busy-looping at one virtual instant?)"
            ) from None
        except trio.Cancelled:
            self._thread.join(self.real_timeout)
            self._raise_if_crashed()
            raise

    def enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter an async context manager in a task that keeps it open until ``close``."""
        entered: list[T] = []
        exit_event = trio.Event()
        done = trio.Event()

        async def host(task_status: trio.TaskStatus[None]) -> None:
            try:
                async with manager as value:
                    entered.append(value)
                    task_status.started()
                    await exit_event.wait()
            finally:
                done.set()

        async def start() -> None:
            assert self._nursery is not None
            await self._nursery.start(host)

        self.call(start)
        self._exits.append(exit_event)
        self._hosts.append(done)
        return entered[0]

    def start_soon(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a background task in the portal's nursery (it runs during calls)."""

        async def start() -> None:
            assert self._nursery is not None
            self._nursery.start_soon(async_fn, *args)
            await trio.lowlevel.checkpoint()

        self.call(start)

    def close(self) -> None:
        """Exit every entered context (newest first), stop the run, re-raise a crash."""
        if self._closed:
            return
        try:
            if self._error is None and self._thread.is_alive():

                async def exit_all() -> None:
                    for exit_event, done in zip(
                        reversed(self._exits), reversed(self._hosts), strict=True
                    ):
                        exit_event.set()
                        await done.wait()
                    assert self._nursery is not None
                    self._nursery.cancel_scope.cancel()

                self.call(exit_all)
        finally:
            self._closed = True
            self._abort()
        self._raise_if_crashed()

    def _abort(self) -> None:
        token, nursery = self._token, self._nursery
        if token is not None and nursery is not None and self._thread.is_alive():
            self.clock.autojump_threshold = 0
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(nursery.cancel_scope.cancel)
        self._thread.join(self.real_timeout)

    def _raise_if_crashed(self) -> None:
        error = self._error
        if error is not None and not isinstance(error, trio.Cancelled):
            raise RuntimeError(f"the portal's Trio run crashed: {error!r}") from error
