"""Close/resume programs: scripted sessions against a real runtime, checked every step.

Theory of operation
-------------------
A *program* is a list of steps (``Open``, ``Submit``, ``Emit``, ``Drop``,
``Close``, ``HeartbeatStall``, ``Resume``, ``Ack``, ``Cancel``, ``Subscribe``,
``Unsubscribe``, ``Advance``, ...). ``ProgramRunner`` executes them one at a time
against an in-process runtime, on whatever clock the caller runs (MockClock, so a
resume window of a minute passes instantly), with two kinds of session:

* **peers**: raw connections driven frame by frame, so every resume variant can be
  spelled exactly (valid, stale token, expired window, wrong principal, another
  dialect's syntax, a rewound ``last_event_seq``);
* **clients**: real ``arcp_trio`` clients over a ``MemoryLink`` that records every
  frame, dropped, stalled or held offline by the steps.

Indices in steps are taken modulo what exists, so every program is executable
(and hypothesis can shrink any of them). After each step the runner lets every
task settle (``wait_all_tasks_blocked``, no virtual time passes) and checks:

1. no job ended by a session event: a job ends only by its agent, by a cancel from
   the session that submitted it, or by its deadline;
2. every session's ``event_seq`` is strictly increasing and gap-free on every
   connection, starting right after the ``last_event_seq`` its hello or resume
   named; a replay re-sends the original bytes;
3. a resume delivers exactly the events after ``last_event_seq``, once (2 + the
   replay check), and is refused exactly when it must be (stale token, wrong
   principal: ``PERMISSION_DENIED`` with the session untouched; window over or
   buffer no longer covering: ``RESUME_WINDOW_EXPIRED``);
4. terminals are delivered exactly once to every watcher (per watch);
5. cancel authority only with the submitting session, resumed or not;
6. no session sees another principal's job, a bearer token or another session's
   resume token;
7. buffers are bounded as configured: a session holds exactly
   ``min(max_buffered_events, last_seq - acked_through)`` events, and a job's
   history at most ``job_history_limit``;
8. a session is forgotten only after its resume window has run out.

``finish()`` then reconnects everyone, ends every puppet and checks that each
watcher received each terminal exactly once. ``run_program`` does all of it.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio
import trio.testing

from ..client.client import Backoff, Client, ClientClosed
from ..demo_agents import demo_registry
from ..protocol.job import JobStatus
from ..transport.base import TransportError
from ..transport.memory import MemoryTransport, memory_transport_pair
from ..wire.codec import decode
from ..wire.errors import ARCPError
from ..wire.ids import new_ulid
from .pairs import (
    REFERENCE_FEATURES,
    SPEC_FEATURES,
    TEST_TOKENS,
    MemoryLink,
    config_for_tests,
    open_test_client,
    open_test_runtime,
)
from .puppet import PUPPET, TICK, PuppetBoard

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from ..client.handles import Event, JobHandle
    from ..runtime.agents import AgentRegistry
    from ..runtime.config import RuntimeConfig
    from ..runtime.runtime import Runtime
    from ..runtime.session import Session

__all__ = [
    "Ack",
    "Advance",
    "Cancel",
    "Close",
    "Drop",
    "Emit",
    "Finish",
    "HeartbeatStall",
    "InvariantViolation",
    "ListJobs",
    "Open",
    "ProgramReport",
    "ProgramRunner",
    "Resume",
    "Step",
    "Submit",
    "Subscribe",
    "Unsubscribe",
    "program_config",
    "run_program",
]

SessionKind = Literal["peer", "client"]
DialectName = Literal["spec", "reference"]
ResumeVariant = Literal["valid", "stale_token", "expired", "wrong_principal", "wrong_dialect"]
ResumeForm = Literal["hello", "resume_frame", "flat", "ruby"]

_RESUME_TOKEN = re.compile(r"rtk_[0-9A-HJKMNP-TV-Z]{26}")
_TERMINALS = ("job.result", "job.error")
#: Code puppets fail with (outside §12, as agents may use).
PUPPET_FAILED = "PUPPET_FAILED"


# == steps =====================================================================================


@attrs.frozen
class Open:
    """Open a session: a raw ``peer`` or a real ``client``, in either wire dialect."""

    principal: Literal["alice", "bob"] = "alice"
    kind: SessionKind = "peer"
    dialect: DialectName = "spec"


@attrs.frozen
class Submit:
    """Submit a job from a session (``agent=None``: a puppet the program drives)."""

    session: int = 0
    agent: str | None = None
    input: Any = None


@attrs.frozen
class Emit:
    """A puppet job emits ``count`` events."""

    job: int = 0
    count: int = 1


@attrs.frozen
class Finish:
    """A puppet job ends: success, or ``job.error`` when ``fail``."""

    job: int = 0
    fail: bool = False


@attrs.frozen
class Drop:
    """The session's connection drops; ``hold`` keeps it offline until a ``Resume``."""

    session: int = 0
    hold: bool = False


@attrs.frozen
class Close:
    """``session.close`` (spec) / ``session.bye`` (reference); a client's ``aclose()``.

    A closed client's session is taken over by a raw peer holding its resume token,
    so a later ``Resume`` checks that nothing was lost across the close.
    """

    session: int = 0


@attrs.frozen
class HeartbeatStall:
    """The connection goes silent (half-open) until heartbeats end it (§6.4)."""

    session: int = 0


@attrs.frozen
class Resume:
    """A resume attempt; ``rewind`` asks again for that many already-seen events."""

    session: int = 0
    variant: ResumeVariant = "valid"
    rewind: int = 0
    form: ResumeForm = "hello"


@attrs.frozen
class Ack:
    """``session.ack`` of everything but the last ``lag`` events seen."""

    session: int = 0
    lag: int = 0


@attrs.frozen
class Cancel:
    """``job.cancel`` of any job, from any session (authority is checked)."""

    session: int = 0
    job: int = 0


@attrs.frozen
class Subscribe:
    session: int = 0
    job: int = 0
    history: bool = True


@attrs.frozen
class Unsubscribe:
    session: int = 0
    job: int = 0


@attrs.frozen
class ListJobs:
    """``session.list_jobs``: only the session's own principal's jobs, all of them."""

    session: int = 0


@attrs.frozen
class Advance:
    """Let virtual time pass (heartbeats, resume windows, timed agents)."""

    seconds: float = 1.0


Step = (
    Open
    | Submit
    | Emit
    | Finish
    | Drop
    | Close
    | HeartbeatStall
    | Resume
    | Ack
    | Cancel
    | Subscribe
    | Unsubscribe
    | ListJobs
    | Advance
)


class InvariantViolation(AssertionError):
    """The runtime or client broke one of the program invariants."""


def program_config(**overrides: Any) -> RuntimeConfig:
    """The runner's default runtime settings: small buffers, so the caps are exercised."""
    values: dict[str, Any] = {"max_buffered_events": 48, "job_history_limit": 64}
    values.update(overrides)
    return config_for_tests(**values)


# == the model =================================================================================


@attrs.define(eq=False)
class _JobModel:
    index: int
    job_id: str
    principal: str
    session_id: str
    puppet: bool
    #: How the program ended it: "success", "error", "cancelled" (None: running).
    ended: str | None = None
    cancel_requested: bool = False


@attrs.define(eq=False)
class _View:
    """What one session should see of one job."""

    submitted: bool = False
    subscribed: bool = False
    #: Last tick number seen (the job's own numbering).
    ticks: int = 0
    #: Terminals seen since this watch began.
    terminals: int = 0
    #: A cap eviction was accepted during this watch: ticks may jump, the terminal
    #: may be gone.
    gap: bool = False
    #: A client unsubscribed while disconnected: the runtime hears of it when the
    #: client is connected again, and may watch for the session until then.
    unsubscribing: bool = False
    #: Once such an unsubscribe took effect: the session's last seq then. Frames of
    #: the job stamped up to it (replayed after a resume) are still legitimate.
    unwatched_after: int | None = None

    @property
    def watching(self) -> bool:
        return self.submitted or self.subscribed


@attrs.define(eq=False)
class _Conn:
    transport: MemoryTransport
    answer: dict[str, Any] | None = None
    broken: bool = False
    retired: bool = False


@attrs.define(eq=False)
class _Actor:
    index: int
    principal: str
    bearer: str
    dialect: DialectName
    session_id: str = ""
    #: Resume tokens this session was given, oldest first (the last is current).
    tokens: list[str] = attrs.field(factory=list)
    views: dict[str, _View] = attrs.field(factory=dict)
    #: The runtime forgot the session (window over): nothing more to check.
    lost: bool = False
    last_seq: int = 0
    max_seq: int = 0
    frames_by_seq: dict[int, str] = attrs.field(factory=dict)

    def view(self, job_id: str) -> _View:
        return self.views.setdefault(job_id, _View())

    @property
    def features(self) -> Sequence[str]:
        return SPEC_FEATURES if self.dialect == "spec" else REFERENCE_FEATURES


@attrs.define(eq=False)
class _Peer(_Actor):
    conn: _Conn | None = None
    stalled: bool = False
    acked: int = 0
    replies: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: The token the last successful resume presented: the runtime still accepts it
    #: until the peer speaks on the new connection (its welcome could have been lost).
    confirmed: str | None = None
    spoke: bool = True

    def speak(self) -> None:
        """The peer sent a frame on its attached connection: it holds the new token."""
        if self.attached:
            self.spoke = True
            self.confirmed = None

    @property
    def attached(self) -> bool:
        return (
            self.conn is not None
            and not self.conn.broken
            and self.conn.answer is not None
            and self.conn.answer.get("type") == "session.welcome"
        )


@attrs.define(eq=False)
class _HandleView:
    handle: JobHandle | None = None
    ticks: list[int] = attrs.field(factory=list)
    seqs: list[int] = attrs.field(factory=list)
    outcome: Any = None
    error: ARCPError | None = None
    done: bool = False
    stop: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class _ClientActor(_Actor):
    link: MemoryLink | None = None
    client: Client | None = None
    stop: trio.Event = attrs.field(factory=trio.Event)
    host_done: trio.Event = attrs.field(factory=trio.Event)
    host_error: BaseException | None = None
    handles: dict[str, _HandleView] = attrs.field(factory=dict)
    subscriptions: dict[str, _HandleView] = attrs.field(factory=dict)
    held: bool = False
    dropped_at: float | None = None
    #: Per transport: how many received frames were checked already.
    checked: dict[int, int] = attrs.field(factory=dict)

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.statistics().state == "connected"

    @property
    def state(self) -> str:
        return "closed" if self.client is None else self.client.statistics().state


@attrs.frozen
class ProgramReport:
    """What a program run did (for statistics and for reading failures)."""

    steps: int
    sessions: int
    jobs: int
    frames: int


# == the runner ================================================================================


class ProgramRunner:
    """Executes close/resume steps against one runtime and checks the invariants.

    Build one with ``ProgramRunner.open()``. ``execute(step)`` runs a step, lets
    everything settle and checks every invariant; ``finish()`` reconnects
    everyone, ends every puppet and checks terminal delivery.

    Args:
        lenient: names of checks to relax while a known bug is being fixed
            (``"cancel_finished_job"``, ``"overflow_notice_per_event"``).
    """

    def __init__(
        self,
        runtime: Runtime,
        nursery: trio.Nursery,
        board: PuppetBoard,
        *,
        lenient: frozenset[str] = frozenset(),
    ) -> None:
        self.runtime = runtime
        self.nursery = nursery
        self.board = board
        self.lenient = lenient
        self.config = runtime.config
        self.actors: list[_Actor] = []
        self.jobs: list[_JobModel] = []
        self._jobs_by_id: dict[str, _JobModel] = {}
        self.steps = 0
        self.frames = 0
        self.violations: list[str] = []
        self.trace: list[str] = []
        self._token_owner: dict[str, str] = {}
        #: When each session was last seen attached: it cannot be forgotten before
        #: that plus the resume window.
        self._attached_at: dict[str, float] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        agents: AgentRegistry | None = None,
        *,
        config: RuntimeConfig | None = None,
        lenient: frozenset[str] = frozenset(),
        **runtime_options: Any,
    ) -> AsyncIterator[ProgramRunner]:
        """A runtime (the demo agents plus the puppet, unless ``agents``) and a runner.

        ``runtime_options`` go to ``open_runtime`` (``observe_policy``, ``tools``, ...).
        """
        board = PuppetBoard()
        registry = agents if agents is not None else demo_registry()
        board.register_on(registry)
        async with (
            open_test_runtime(
                registry, config=config or program_config(), **runtime_options
            ) as runtime,
            trio.open_nursery() as nursery,
        ):
            runner = cls(runtime, nursery, board, lenient=lenient)
            try:
                yield runner
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(30):
                    await runner._close_clients()
                nursery.cancel_scope.cancel()

    # -- bookkeeping --------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        self.violations.append(message)

    def _live_actors(self) -> list[_Actor]:
        return [a for a in self.actors if not a.lost]

    def _actor(self, index: int) -> _Actor | None:
        live = self._live_actors()
        return live[index % len(live)] if live else None

    def _job(self, index: int, *, puppets_only: bool = False) -> _JobModel | None:
        jobs = [j for j in self.jobs if j.puppet] if puppets_only else self.jobs
        return jobs[index % len(jobs)] if jobs else None

    def _rt_session(self, actor: _Actor) -> Session | None:
        return self.runtime.session(actor.session_id) if actor.session_id else None

    async def settle(self) -> None:
        """Let every task run to a standstill without moving virtual time."""
        await trio.testing.wait_all_tasks_blocked()
        now = trio.current_time()
        for actor in self.actors:
            session = self._rt_session(actor)
            if session is not None and session.connection is not None:
                self._attached_at[actor.session_id] = now

    async def advance(self, seconds: float) -> None:
        await trio.sleep(seconds)
        await self.settle()

    # -- frames ---------------------------------------------------------------------------

    def _on_frame(self, actor: _Actor, text: str, frame: dict[str, Any]) -> None:
        """Checks every frame a session receives, peers and clients alike."""
        self.frames += 1
        where = f"session #{actor.index} ({actor.principal})"
        try:
            decode(text)
        except ARCPError as exc:
            self._fail(f"{where}: the runtime sent a frame our codec rejects: {exc}")
        if frame.get("type") == "session.welcome":
            token = frame.get("payload", {}).get("resume_token")
            if isinstance(token, str):
                self._token_owner[token] = str(frame.get("session_id"))
        elif frame.get("type") == "job.accepted":
            # Sent before the job's first event: from here on the session watches it.
            job_id = (frame.get("payload") or {}).get("job_id")
            if isinstance(job_id, str):
                actor.view(job_id).submitted = True
        for bearer in TEST_TOKENS:
            if bearer in text:
                self._fail(f"{where}: a frame carries a bearer token: {text[:200]}")
        for token in _RESUME_TOKEN.findall(text):
            owner = self._token_owner.get(token)
            if owner != (frame.get("session_id") or actor.session_id) or (
                frame.get("type") != "session.welcome"
            ):
                self._fail(f"{where}: a resume token leaked in {frame.get('type')}")
        if frame.get("event_seq") is not None:
            self._on_seq_frame(actor, text, frame, where)

    def _on_seq_frame(self, actor: _Actor, text: str, frame: dict[str, Any], where: str) -> None:
        seq = frame["event_seq"]
        if seq != actor.last_seq + 1:
            self._fail(
                f"{where}: event_seq {seq} after {actor.last_seq} "
                f"({'duplicate' if seq <= actor.last_seq else 'gap'})"
            )
        actor.last_seq = seq
        if seq <= actor.max_seq:
            original = actor.frames_by_seq.get(seq)
            if original is not None and original != text:
                self._fail(f"{where}: replayed event_seq {seq} differs from the original")
            return
        actor.max_seq = seq
        actor.frames_by_seq[seq] = text
        job_id = str(frame.get("job_id"))
        record = self.runtime.job(job_id)
        if record is None:
            self._fail(f"{where}: a frame for an unknown job {job_id}")
            return
        if record.principal != actor.principal:
            self._fail(f"{where}: saw a job of principal {record.principal!r}")
        view = actor.view(job_id)
        stamped_while_watched = view.unsubscribing or (
            view.unwatched_after is not None and seq <= view.unwatched_after
        )
        if not view.watching and record.terminal is None and not stamped_while_watched:
            # (A finished job's history and terminal answer a subscribe without a watch.)
            self._fail(f"{where}: an event for {job_id}, which it does not watch")
        kind = frame.get("type")
        payload = frame.get("payload") or {}
        if kind in _TERMINALS:
            view.terminals += 1
            if view.terminals > 1:
                self._fail(f"{where}: a second terminal for {job_id}")
        elif kind == "job.event" and payload.get("kind") == TICK:
            n = payload.get("body", {}).get("n")
            if not isinstance(n, int):
                self._fail(f"{where}: a tick without a number")
            elif n != view.ticks + 1 and not (view.gap and n > view.ticks):
                self._fail(f"{where}: tick {n} of {job_id} after tick {view.ticks}")
            else:
                view.ticks = n

    # -- peers ----------------------------------------------------------------------------

    async def _peer_reader(self, peer: _Peer, conn: _Conn) -> None:
        try:
            while True:
                text = await conn.transport.receive_message()
                if conn.retired:
                    continue
                frame: dict[str, Any] = json.loads(text)
                if conn.answer is None:
                    conn.answer = frame
                    if frame.get("type") == "session.welcome":
                        peer.session_id = str(frame["session_id"])
                        peer.tokens.append(str(frame["payload"]["resume_token"]))
                        peer.spoke = False
                self._on_frame(peer, text, frame)
                kind = frame.get("type")
                request_id = (frame.get("payload") or {}).get("request_id")
                if isinstance(request_id, str):
                    peer.replies[request_id] = frame
                elif kind == "session.error" and conn.answer is not frame:
                    peer.replies.setdefault("", frame)
                if kind == "session.ping" and not peer.stalled:
                    if peer.conn is conn:
                        peer.speak()
                    with suppress(TransportError):
                        await conn.transport.send_message(
                            json.dumps(
                                {
                                    "arcp": "1.1",
                                    "id": new_ulid(),
                                    "type": "session.pong",
                                    "payload": {"ping_nonce": frame["payload"]["nonce"]},
                                }
                            )
                        )
        except TransportError:
            conn.broken = True

    async def _peer_connect(self, peer: _Peer, first: dict[str, Any]) -> dict[str, Any] | None:
        """Open a connection, send its first frame, wait for the answer."""
        if peer.conn is not None:
            peer.conn.retired = True
        client_side, runtime_side = memory_transport_pair()
        conn = _Conn(client_side)
        peer.conn = conn
        self.nursery.start_soon(self.runtime.handle_transport, runtime_side)
        self.nursery.start_soon(self._peer_reader, peer, conn)
        await client_side.send_message(json.dumps(first))
        await self.settle()
        return conn.answer

    def _hello_frame(
        self,
        peer: _Peer,
        *,
        bearer: str,
        resume: Mapping[str, Any] | None = None,
        form: ResumeForm = "hello",
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "client": {"name": "arcp-trio-program", "version": "0"},
            "auth": {"scheme": "bearer", "token": bearer},
            "capabilities": {"encodings": ["json"], "features": list(peer.features)},
        }
        frame: dict[str, Any] = {"arcp": "1.1", "id": new_ulid(), "type": "session.hello"}
        if resume is not None:
            if form == "resume_frame":
                frame["type"] = "session.resume"
                payload = dict(resume)
                if bearer != peer.bearer:
                    payload["auth"] = {"scheme": "bearer", "token": bearer}
            elif form == "flat":
                payload.update(resume)
            elif form == "ruby":
                payload["resume"] = {
                    "token": resume["resume_token"],
                    "last_event_seq": resume["last_event_seq"],
                }
            else:
                payload["resume"] = dict(resume)
        frame["payload"] = payload
        return frame

    async def _peer_request(
        self, peer: _Peer, type_: str, payload: dict[str, Any], **envelope: Any
    ) -> tuple[str, dict[str, Any] | None]:
        """Send a request on the peer's live connection; the reply naming it, if any."""
        assert peer.conn is not None
        frame_id = new_ulid()
        frame = {
            "arcp": "1.1",
            "id": frame_id,
            "type": type_,
            "session_id": peer.session_id,
            "payload": payload,
            **envelope,
        }
        peer.speak()
        try:
            await peer.conn.transport.send_message(json.dumps(frame))
        except TransportError:
            return frame_id, None
        await self.settle()
        return frame_id, peer.replies.pop(frame_id, None)

    def _expected_resume(
        self, peer: _Peer, *, token: str, principal: str, last: int
    ) -> tuple[str, str]:
        """What the runtime must answer a resume (code, reason), from the model."""
        session = self._rt_session(peer)
        if session is None:
            return "RESUME_WINDOW_EXPIRED", "forgotten"
        accepted = {peer.tokens[-1]} if peer.tokens else set()
        if peer.confirmed is not None and not peer.spoke:
            accepted.add(peer.confirmed)
        if token not in accepted or principal != peer.principal:
            return "PERMISSION_DENIED", "credentials"
        if session.window.expired(trio.current_time()):
            return "RESUME_WINDOW_EXPIRED", "window"
        last_seq = session.buffer.last_seq
        if last > last_seq:
            return "INVALID_REQUEST", "beyond"
        held = min(self.config.max_buffered_events, last_seq - session.buffer.acked_through)
        if last + 1 < last_seq - held + 1:
            return "RESUME_WINDOW_EXPIRED", "not covered"
        return "session.welcome", "ok"

    async def _peer_resume(
        self,
        peer: _Peer,
        *,
        token: str,
        bearer: str,
        last: int,
        form: ResumeForm = "hello",
    ) -> str:
        """One resume attempt; checks the answer against the model. Returns the code."""
        principal = TEST_TOKENS[bearer]
        expected, reason = self._expected_resume(peer, token=token, principal=principal, last=last)
        session = self._rt_session(peer)
        connection_before = session.connection if session is not None else None
        tokens_before = list(peer.tokens)
        previous_last = peer.last_seq
        resume = {"session_id": peer.session_id, "resume_token": token, "last_event_seq": last}
        old = peer.conn
        peer.last_seq = last
        answer = await self._peer_connect(
            peer, self._hello_frame(peer, bearer=bearer, resume=resume, form=form)
        )
        where = f"session #{peer.index}: resume ({reason}, {form})"
        got = "none" if answer is None else str(answer.get("type"))
        if got == "session.error":
            got = str(answer["payload"].get("code")) if answer is not None else got
        if got != expected:
            self._fail(f"{where}: expected {expected}, got {got}: {answer}")
        if got == "session.welcome":
            assert answer is not None
            if answer.get("session_id") != peer.session_id:
                self._fail(f"{where}: welcomed into another session")
            if peer.tokens[-1] in tokens_before:
                self._fail(f"{where}: the resume token did not rotate")
            if form == "resume_frame":
                peer.dialect = "spec"
            peer.confirmed = token
            return got
        # Refused: nothing about the session may have changed.
        peer.conn = old
        if old is not None:
            old.retired = False
        peer.last_seq = previous_last
        after = self._rt_session(peer)
        if after is not None and after.connection is not connection_before:
            self._fail(f"{where}: a refused resume changed the session's connection")
        if peer.tokens != tokens_before:
            self._fail(f"{where}: a refused resume rotated the token")
        if after is None:
            self._mark_lost(peer)
        return got

    def _mark_lost(self, actor: _Actor) -> None:
        actor.lost = True
        if isinstance(actor, _Peer) and actor.conn is not None:
            actor.conn.retired = True

    async def _peer_drop(self, peer: _Peer) -> None:
        if peer.conn is not None:
            peer.conn.transport.abort()
            await self.settle()

    async def _peer_valid_resume(self, peer: _Peer, *, rewind: int = 0) -> None:
        """Resume with the current token; accept an eviction gap if the cap forces one."""
        if not peer.tokens:
            return
        last = max(0, peer.last_seq - rewind)
        code = await self._peer_resume(peer, token=peer.tokens[-1], bearer=peer.bearer, last=last)
        if code != "RESUME_WINDOW_EXPIRED" or peer.lost:
            return
        if last != peer.last_seq:
            code = await self._peer_resume(
                peer, token=peer.tokens[-1], bearer=peer.bearer, last=peer.last_seq
            )
            if code != "RESUME_WINDOW_EXPIRED" or peer.lost:
                return
        # The cap evicted events this peer never saw: resume from what is held, with
        # the gap visible to the test (§6.5: never a silent gap).
        session = self._rt_session(peer)
        if session is None:
            return
        first_held = session.buffer.first_held_seq()
        for view in peer.views.values():
            view.gap = True
        peer.max_seq = max(peer.max_seq, first_held - 1)
        await self._peer_resume(
            peer, token=peer.tokens[-1], bearer=peer.bearer, last=first_held - 1
        )

    # -- clients --------------------------------------------------------------------------

    async def _client_host(
        self, actor: _ClientActor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert actor.link is not None
        try:
            async with open_test_client(
                actor.link,
                token=actor.bearer,
                features=list(actor.features),
                backoff=Backoff(initial=0.25, factor=2.0, cap=2.0),
                auto_ack_every=16,
                auto_ack_interval=None,
            ) as client:
                actor.client = client
                actor.session_id = client.session_id or ""
                task_status.started()
                await actor.stop.wait()
        except Exception as exc:
            actor.host_error = exc
            task_status.started()
        finally:
            actor.host_done.set()

    def _check_client_wire(self, actor: _ClientActor) -> None:
        """Every frame the client received, per connection, as a peer's would be."""
        assert actor.link is not None
        for index, transport in enumerate(actor.link.transports):
            start = actor.checked.get(index, 0)
            received = transport.received
            if start >= len(received):
                continue
            if start == 0:
                hello = json.loads(transport.sent[0]) if transport.sent else {}
                resume = (hello.get("payload") or {}).get("resume") or {}
                actor.last_seq = int(resume.get("last_event_seq", 0))
            for text in received[start:]:
                frame = json.loads(text)
                if frame.get("type") == "session.welcome":
                    actor.session_id = str(frame["session_id"])
                    actor.tokens.append(str(frame["payload"]["resume_token"]))
                self._on_frame(actor, text, frame)
            actor.checked[index] = len(received)

    async def _watch(self, view: _HandleView, handle: JobHandle) -> None:
        try:
            async for event in handle.events():
                self._note_event(view, event)
            view.outcome = await handle.result()
        except ARCPError as exc:
            view.error = exc
        finally:
            view.done = True

    def _note_event(self, view: _HandleView, event: Event) -> None:
        if view.seqs and event.event_seq <= view.seqs[-1]:
            self._fail(f"a client stream went back from seq {view.seqs[-1]} to {event.event_seq}")
        view.seqs.append(event.event_seq)
        if event.kind == TICK:
            n = event.body.get("n") if isinstance(event.body, dict) else None
            if view.ticks and n != view.ticks[-1] + 1:
                self._fail(f"a client stream saw tick {n} after {view.ticks[-1]}")
            if isinstance(n, int):
                view.ticks.append(n)

    async def _hold_subscription(
        self, actor: _ClientActor, job_id: str, history: bool, view: _HandleView
    ) -> None:
        assert actor.client is not None
        try:
            async with (
                actor.client.subscribe(job_id, history=history) as subscription,
                trio.open_nursery() as inner,
            ):

                async def read() -> None:
                    try:
                        async for event in subscription.events():
                            self._note_event(view, event)
                        view.outcome = await subscription.result()
                    except ARCPError as exc:
                        view.error = exc

                inner.start_soon(read)
                await view.stop.wait()
                inner.cancel_scope.cancel()
        except ARCPError as exc:
            view.error = exc
        finally:
            view.done = True

    async def _wait_connected(self, actor: _ClientActor, *, limit: float) -> None:
        """Let time pass until the client is connected again, lost, or ``limit`` is up."""
        deadline = trio.current_time() + limit
        while actor.state not in ("connected", "lost", "closed") and (
            trio.current_time() < deadline
        ):
            await self.advance(0.25)
        self._check_client_wire(actor)

    # -- step handlers ----------------------------------------------------------------------

    async def execute(self, step: Step) -> None:
        """Run one step, settle, and check every invariant."""
        self.trace.append(repr(step))
        if not self.actors and not isinstance(step, Open):
            await self._open(Open())
        handler = getattr(self, f"_do_{type(step).__name__.lower()}")
        await handler(step)
        await self.settle()
        self.steps += 1
        self.check()

    async def _open(self, step: Open) -> None:
        bearer = "tok-alice" if step.principal == "alice" else "tok-bob"
        index = len(self.actors)
        if step.kind == "peer":
            peer = _Peer(index=index, principal=step.principal, bearer=bearer, dialect=step.dialect)
            self.actors.append(peer)
            answer = await self._peer_connect(peer, self._hello_frame(peer, bearer=bearer))
            if answer is None or answer.get("type") != "session.welcome":
                self._fail(f"a hello was not welcomed: {answer}")
            return
        actor = _ClientActor(
            index=index, principal=step.principal, bearer=bearer, dialect=step.dialect
        )
        actor.link = MemoryLink(self.runtime, self.nursery, record=True)
        self.actors.append(actor)
        await self.nursery.start(self._client_host, actor)
        if actor.host_error is not None:
            self._fail(f"a client could not connect: {actor.host_error!r}")
        self._check_client_wire(actor)

    _do_open = _open

    async def _do_submit(self, step: Submit) -> None:
        actor = self._actor(step.session)
        if actor is None:
            return
        agent = step.agent or PUPPET
        job_id: str | None = None
        if isinstance(actor, _Peer):
            if not actor.attached:
                return
            payload: dict[str, Any] = {"agent": agent, "idempotency_key": new_ulid()}
            if step.input is not None:
                payload["input"] = step.input
            _, reply = await self._peer_request(actor, "job.submit", payload)
            if reply is not None and reply.get("type") == "job.accepted":
                job_id = str(reply["payload"]["job_id"])
            elif step.agent is None:
                self._fail(f"a puppet submit was not accepted: {reply}")
        elif isinstance(actor, _ClientActor):
            if not actor.connected or actor.client is None:
                return
            try:
                handle = await actor.client.submit(agent, input=step.input)
            except ARCPError as exc:
                if step.agent is None:
                    self._fail(f"a client's puppet submit failed: {exc!r}")
                return
            job_id = handle.job_id
            view = actor.handles[job_id] = _HandleView(handle=handle)
            self.nursery.start_soon(self._watch, view, handle)
        if job_id is None:
            return
        actor.view(job_id).submitted = True
        model = _JobModel(
            index=len(self.jobs),
            job_id=job_id,
            principal=actor.principal,
            session_id=actor.session_id,
            puppet=step.agent is None,
        )
        self.jobs.append(model)
        self._jobs_by_id[job_id] = model

    async def _do_emit(self, step: Emit) -> None:
        job = self._job(step.job, puppets_only=True)
        if job is not None and job.ended is None:
            self.board.emit(job.job_id, step.count)

    async def _do_finish(self, step: Finish) -> None:
        job = self._job(step.job, puppets_only=True)
        if job is None or job.ended is not None:
            return
        if step.fail:
            self.board.fail(job.job_id, PUPPET_FAILED)
            job.ended = "error"
        else:
            self.board.finish(job.job_id)
            job.ended = "success"

    async def _do_drop(self, step: Drop) -> None:
        actor = self._actor(step.session)
        if isinstance(actor, _Peer):
            if actor.attached:
                await self._peer_drop(actor)
                if not step.hold:
                    await self._peer_valid_resume(actor)
        elif isinstance(actor, _ClientActor) and actor.link is not None and actor.link.transports:
            if actor.state != "connected":
                return
            if step.hold:
                actor.link.up = False
                actor.held = True
                actor.dropped_at = trio.current_time()
            actor.link.drop()
            await self.settle()
            if not step.hold:
                await self._wait_connected(actor, limit=8)
                self._expect_connected(actor, "after a drop")

    def _expect_connected(self, actor: _ClientActor, when: str) -> None:
        session = self._rt_session(actor)
        covered = session is not None and (
            session.buffer.first_held_seq()
            <= (actor.client.last_event_seq if actor.client else 0) + 1
        )
        if covered and actor.state != "connected":
            self._fail(f"client #{actor.index} did not reconnect {when} (state {actor.state})")

    async def _do_close(self, step: Close) -> None:
        actor = self._actor(step.session)
        if isinstance(actor, _Peer):
            if not actor.attached:
                return
            close_type = "session.close" if actor.dialect == "spec" else "session.bye"
            _, reply = await self._peer_request(actor, close_type, {"reason": "program"})
            if reply is None or reply.get("type") != "session.closed":
                self._fail(f"session #{actor.index}: {close_type} got {reply}")
            if actor.attached:
                self._fail(f"session #{actor.index}: the connection survived {close_type}")
            if close_type == "session.close":
                actor.dialect = "spec"
        elif isinstance(actor, _ClientActor) and actor.client is not None:
            if actor.state != "connected":
                return
            await actor.client.aclose()
            actor.stop.set()
            await actor.host_done.wait()
            await self.settle()
            self._check_client_wire(actor)
            self._adopt(actor)

    def _adopt(self, actor: _ClientActor) -> None:
        """A raw peer takes over a closed client's session (it holds the token)."""
        client = actor.client
        peer = _Peer(
            index=actor.index,
            principal=actor.principal,
            bearer=actor.bearer,
            dialect="spec" if actor.dialect == "spec" else "reference",
            session_id=actor.session_id,
            tokens=list(actor.tokens),
            views=actor.views,
            last_seq=client.last_event_seq if client is not None else actor.last_seq,
            max_seq=actor.max_seq,
            frames_by_seq=actor.frames_by_seq,
        )
        for job_id, view in actor.handles.items():
            record = self.runtime.job(job_id)
            # aclose() ends the handles, never the jobs (client.md).
            running = record is not None and record.terminal is None
            if running and not isinstance(view.error, ClientClosed):
                self._fail(f"client #{actor.index}: handle of {job_id} ended {view.error!r}")
        actor.lost = True  # the client object is gone; the peer carries the session
        self.actors[self.actors.index(actor)] = peer
        peer.lost = False
        # The client may have acknowledged what it saw.
        session = self._rt_session(peer)
        if session is not None:
            peer.acked = session.buffer.acked_through

    async def _do_heartbeatstall(self, step: HeartbeatStall) -> None:
        actor = self._actor(step.session)
        interval = self.config.heartbeat_interval_sec
        if isinstance(actor, _Peer):
            if not actor.attached:
                return
            actor.stalled = True
            try:
                for _ in range(8):
                    session = self._rt_session(actor)
                    if session is None or session.connection is None:
                        break
                    await self.advance(interval / 2)
            finally:
                actor.stalled = False
            session = self._rt_session(actor)
            if session is not None and session.connection is not None:
                self._fail(f"session #{actor.index}: a silent connection was never dropped")
            if actor.conn is not None:
                actor.conn.transport.abort()
                await self.settle()
        elif isinstance(actor, _ClientActor) and actor.link is not None:
            if actor.state != "connected":
                return
            before = actor.link.connects
            actor.link.stall()
            deadline = trio.current_time() + 4 * interval
            while actor.link.connects == before and trio.current_time() < deadline:
                await self.advance(1)
            await self._wait_connected(actor, limit=8)
            self._expect_connected(actor, "after a heartbeat stall")

    async def _do_resume(self, step: Resume) -> None:
        actor = self._actor(step.session)
        if isinstance(actor, _ClientActor):
            await self._client_resume(actor, step)
            return
        if not isinstance(actor, _Peer) or not actor.tokens:
            return
        peer = actor
        variant = step.variant
        if variant == "expired":
            if peer.attached:
                await self._peer_drop(peer)
            session = self._rt_session(peer)
            if session is not None and session.window.deadline is not None:
                await trio.sleep_until(session.window.deadline)
                await self.settle()
            await self._peer_resume(
                peer, token=peer.tokens[-1], bearer=peer.bearer, last=peer.last_seq
            )
            if not peer.lost:
                self._fail(f"session #{peer.index}: resumable after its window ended")
            return
        if variant == "stale_token":
            if peer.attached and not peer.spoke:
                # Speak first, so the previous token is no longer held in reserve.
                await self._peer_request(
                    peer, "session.ping", {"nonce": "n", "sent_at": "2026-01-01T00:00:00Z"}
                )
            reserve = peer.confirmed if not peer.spoke else None
            stale = [t for t in peer.tokens[:-1] if t != reserve]
            if stale:
                await self._peer_resume(
                    peer, token=stale[-1], bearer=peer.bearer, last=peer.last_seq
                )
            return
        if variant == "wrong_principal":
            other = "tok-bob" if peer.bearer == "tok-alice" else "tok-alice"
            await self._peer_resume(peer, token=peer.tokens[-1], bearer=other, last=peer.last_seq)
            return
        if variant == "wrong_dialect":
            form: ResumeForm = step.form if step.form != "hello" else "resume_frame"
            last = max(0, peer.last_seq - step.rewind)
            code = await self._peer_resume(
                peer, token=peer.tokens[-1], bearer=peer.bearer, last=last, form=form
            )
            if code == "RESUME_WINDOW_EXPIRED" and not peer.lost:
                await self._peer_valid_resume(peer)
            return
        await self._peer_valid_resume(peer, rewind=step.rewind)

    async def _client_resume(self, actor: _ClientActor, step: Resume) -> None:
        if actor.link is None or actor.client is None:
            return
        if step.variant in ("stale_token", "wrong_principal") and actor.tokens:
            # Someone else presents this session's credentials; the client must not notice.
            attacker = _Peer(
                index=-1, principal=actor.principal, bearer=actor.bearer, dialect=actor.dialect
            )
            attacker.session_id = actor.session_id
            spoke = bool(actor.link.transports) and len(actor.link.current.sent) > 1
            if step.variant == "stale_token" and (len(actor.tokens) < 2 or not spoke):
                return  # no token is stale yet (the previous one is still held in reserve)
            token = actor.tokens[-2] if step.variant == "stale_token" else actor.tokens[-1]
            bearer = actor.bearer
            if step.variant == "wrong_principal":
                bearer = "tok-bob" if actor.bearer == "tok-alice" else "tok-alice"
            if token == actor.tokens[-1] and bearer == actor.bearer:
                return  # that would be the client's own valid resume
            session = self._rt_session(actor)
            connection = session.connection if session is not None else None
            frame = self._hello_frame(
                attacker,
                bearer=bearer,
                resume={
                    "session_id": actor.session_id,
                    "resume_token": token,
                    "last_event_seq": 0,
                },
            )
            answer = await self._peer_connect(attacker, frame)
            code = (answer or {}).get("payload", {}).get("code")
            if session is not None and code != "PERMISSION_DENIED":
                self._fail(f"client #{actor.index}: a {step.variant} resume got {answer}")
            after = self._rt_session(actor)
            if after is not None and after.connection is not connection:
                self._fail(f"client #{actor.index}: a refused resume took over the connection")
            if attacker.conn is not None:
                await attacker.conn.transport.aclose()
            return
        if step.variant == "expired":
            if not actor.held:
                if actor.state != "connected":
                    return
                actor.link.up = False
                actor.held = True
                actor.dropped_at = trio.current_time()
                actor.link.drop()
                await self.settle()
            assert actor.dropped_at is not None
            wait = actor.dropped_at + self.config.resume_window_sec + 1 - trio.current_time()
            if wait > 0:
                await self.advance(wait)
            actor.link.up = True
            actor.held = False
            await self._wait_connected(actor, limit=8)
            if actor.state != "lost":
                self._fail(f"client #{actor.index}: resumed after its window ended")
            return
        if actor.held:
            elapsed = trio.current_time() - (actor.dropped_at or 0.0)
            actor.link.up = True
            actor.held = False
            await self._wait_connected(actor, limit=8)
            if elapsed + 8 < self.config.resume_window_sec / 2:
                self._expect_connected(actor, "inside its resume window")

    async def _do_ack(self, step: Ack) -> None:
        actor = self._actor(step.session)
        if isinstance(actor, _Peer):
            if not actor.attached or "ack" not in actor.features:
                return
            seq = max(0, actor.last_seq - step.lag)
            _, reply = await self._peer_request(actor, "session.ack", {"last_processed_seq": seq})
            if reply is not None or actor.replies.pop("", None) is not None:
                self._fail(f"session #{actor.index}: an ack of {seq} was answered: {reply}")
            actor.acked = max(actor.acked, seq)
        elif (
            isinstance(actor, _ClientActor)
            and actor.client is not None
            and actor.connected
            and "ack" in actor.client.features
        ):
            await actor.client.ack(max(0, actor.client.last_event_seq - step.lag))

    async def _do_cancel(self, step: Cancel) -> None:
        actor = self._actor(step.session)
        job = self._job(step.job)
        if actor is None or job is None:
            return
        owner = job.session_id == actor.session_id
        if isinstance(actor, _ClientActor):
            handle_view = actor.handles.get(job.job_id)
            if not owner or handle_view is None or not actor.connected or actor.client is None:
                return
            # Through the user API: JobHandle.cancel.
            record = self.runtime.job(job.job_id)
            running = record is not None and not record.is_terminal
            handle = handle_view.handle
            if handle is None:
                return
            with trio.move_on_after(30):
                await handle.cancel()
            if running and job.ended is None:
                job.ended = "cancelled"
                job.cancel_requested = True
            return
        if not isinstance(actor, _Peer) or not actor.attached:
            return
        record = self.runtime.job(job.job_id)
        assert record is not None
        running = not record.is_terminal
        _, reply = await self._peer_request(
            actor, "job.cancel", {"reason": "program"}, job_id=job.job_id
        )
        code = (reply or {}).get("payload", {}).get("code") if reply else None
        kind = reply.get("type") if reply else None
        where = f"session #{actor.index}: cancel of {job.job_id}"
        if job.principal != actor.principal:
            if code != "JOB_NOT_FOUND":
                self._fail(f"{where} (another principal's) got {reply}")
        elif not owner:
            if code != "PERMISSION_DENIED":
                self._fail(f"{where} (not the submitting session) got {reply}")
        elif not running:
            if reply is not None and not (
                "cancel_finished_job" in self.lenient and code == "INTERNAL_ERROR"
            ):
                self._fail(f"{where} (already finished) got {reply}")
        elif job.cancel_requested:
            if reply is not None:
                self._fail(f"{where} (already cancelling) got {reply}")
        else:
            if kind != "job.cancelled":
                self._fail(f"{where} (by its submitter) got {reply}")
            job.cancel_requested = True
            if job.ended is None:
                job.ended = "cancelled"

    async def _do_subscribe(self, step: Subscribe) -> None:
        actor = self._actor(step.session)
        job = self._job(step.job)
        if actor is None or job is None:
            return
        record = self.runtime.job(job.job_id)
        assert record is not None
        view = actor.view(job.job_id)
        if isinstance(actor, _ClientActor):
            if not actor.connected or job.job_id in actor.subscriptions:
                return
            sub_view = actor.subscriptions[job.job_id] = _HandleView()
            if not view.watching and job.principal == actor.principal:
                view.unsubscribing = False  # the client forgets a pending unsubscribe
                view.subscribed = record.terminal is None
                view.terminals = 0
                view.ticks = 0 if step.history else record.last_event_index
            self.nursery.start_soon(
                self._hold_subscription, actor, job.job_id, step.history, sub_view
            )
            await self.settle()
            if job.principal != actor.principal and not isinstance(sub_view.error, ARCPError):
                self._fail(f"client #{actor.index} subscribed to another principal's job")
            return
        if not isinstance(actor, _Peer) or not actor.attached:
            return
        already = view.watching
        before = (view.ticks, view.terminals, view.subscribed)
        if not already and job.principal == actor.principal:
            view.terminals = 0
            view.ticks = 0 if step.history else record.last_event_index
            view.subscribed = True
        _, reply = await self._peer_request(
            actor, "job.subscribe", {"job_id": job.job_id, "history": step.history}
        )
        where = f"session #{actor.index}: subscribe to {job.job_id}"
        if job.principal != actor.principal:
            view.ticks, view.terminals, view.subscribed = before
            code = (reply or {}).get("payload", {}).get("code")
            if code != "JOB_NOT_FOUND":
                self._fail(f"{where} (another principal's) got {reply}")
            return
        if reply is None or reply.get("type") != "job.subscribed":
            self._fail(f"{where} got {reply}")
            return
        if record.terminal is not None and not already:
            # A finished job is not watched: history and the terminal, once, now.
            view.subscribed = False
            if view.terminals != 1 and not view.gap:
                self._fail(f"{where}: a finished job's terminal came {view.terminals} times")

    async def _do_unsubscribe(self, step: Unsubscribe) -> None:
        actor = self._actor(step.session)
        job = self._job(step.job)
        if actor is None or job is None:
            return
        if isinstance(actor, _ClientActor):
            sub = actor.subscriptions.pop(job.job_id, None)
            if sub is not None:
                sub.stop.set()
                view = actor.view(job.job_id)
                if view.subscribed:
                    view.subscribed = False
                    # Offline, the client tells the runtime when it is back (§7.6).
                    view.unsubscribing = actor.state != "connected"
            return
        if not isinstance(actor, _Peer) or not actor.attached:
            return
        _, reply = await self._peer_request(actor, "job.unsubscribe", {"job_id": job.job_id})
        if reply is not None:
            self._fail(f"session #{actor.index}: unsubscribe got {reply}")
        actor.view(job.job_id).subscribed = False

    async def _do_listjobs(self, step: ListJobs) -> None:
        actor = self._actor(step.session)
        if not isinstance(actor, _Peer) or not actor.attached:
            return
        _, reply = await self._peer_request(actor, "session.list_jobs", {"limit": 1000})
        if reply is None or reply.get("type") != "session.jobs":
            self._fail(f"session #{actor.index}: list_jobs got {reply}")
            return
        listed = {entry["job_id"] for entry in reply["payload"].get("jobs", [])}
        mine = {j.job_id for j in self.jobs if j.principal == actor.principal}
        if not listed <= {
            job_id
            for job_id in self.runtime.job_ids()
            if getattr(self.runtime.job(job_id), "principal", None) == actor.principal
        }:
            self._fail(f"session #{actor.index}: list_jobs shows another principal's jobs")
        if not mine <= listed:
            self._fail(f"session #{actor.index}: list_jobs misses {sorted(mine - listed)}")

    async def _do_advance(self, step: Advance) -> None:
        await self.advance(max(0.0, step.seconds))
        for actor in self.actors:
            if isinstance(actor, _ClientActor) and not actor.lost and actor.link is not None:
                self._check_client_wire(actor)

    # -- invariants ----------------------------------------------------------------------

    def check(self) -> None:
        """Every invariant, now. Raises ``InvariantViolation`` listing what broke."""
        now = trio.current_time()
        config = self.config
        for actor in self.actors:
            if isinstance(actor, _ClientActor) and actor.link is not None and not actor.lost:
                self._check_client_wire(actor)
        for actor in self.actors:
            if actor.lost or not actor.session_id:
                continue
            where = f"session #{actor.index}"
            session = self._rt_session(actor)
            if session is None:
                attached_at = self._attached_at.get(actor.session_id, -math.inf)
                if now < attached_at + config.resume_window_sec:
                    self._fail(
                        f"{where} was forgotten at {now}, attached at {attached_at}: "
                        "before its resume window ended"
                    )
                self._mark_lost(actor)
                continue
            buffer = session.buffer
            held = len(buffer)
            expected = min(config.max_buffered_events, buffer.last_seq - buffer.acked_through)
            if held != expected:
                self._fail(f"{where}: buffer holds {held} events, expected {expected}")
            if held > config.max_buffered_events:
                self._fail(f"{where}: buffer over its cap ({held})")
            if buffer.acked_through > actor.max_seq:
                self._fail(f"{where}: acknowledged {buffer.acked_through}, never saw it")
            if isinstance(actor, _Peer):
                if actor.attached != (session.connection is not None):
                    self._fail(
                        f"{where}: the peer is {'attached' if actor.attached else 'detached'} "
                        f"but the runtime says {session.connection is not None}"
                    )
                if actor.attached and actor.last_seq != buffer.last_seq:
                    self._fail(
                        f"{where}: attached and settled at seq {actor.last_seq}, "
                        f"the runtime stamped {buffer.last_seq}"
                    )
            for job_id, view in actor.views.items():
                record = self.runtime.job(job_id)
                if record is None:
                    continue
                in_watchers = actor.session_id in record.watchers
                if view.unsubscribing and not in_watchers:
                    view.unsubscribing = False  # delivered
                    view.unwatched_after = session.buffer.last_seq
                connected = isinstance(actor, _ClientActor) and actor.state == "connected"
                if view.unsubscribing and connected and record.terminal is None:
                    self._fail(f"{where}: reconnected, but its unsubscribe of {job_id} was lost")
                if (
                    record.terminal is None
                    and in_watchers != view.watching
                    and not (view.unsubscribing and in_watchers)
                ):
                    self._fail(
                        f"{where}: watches {job_id}: model {view.watching}, runtime {in_watchers}"
                    )
        for job in self.jobs:
            record = self.runtime.job(job.job_id)
            if record is None:
                self._fail(f"job {job.job_id} disappeared")
                continue
            if len(record.history) > config.job_history_limit:
                self._fail(f"job {job.job_id}: history over its cap")
            status = record.status
            if job.puppet:
                expected_status = {
                    None: (JobStatus.RUNNING, JobStatus.PENDING),
                    "success": (JobStatus.SUCCESS,),
                    "error": (JobStatus.ERROR,),
                    "cancelled": (JobStatus.CANCELLED,),
                }[job.ended]
                if status not in expected_status:
                    self._fail(
                        f"job {job.job_id} is {status}, the program made it {job.ended or 'run'}"
                        f" ({record.terminal})"
                    )
            elif status is JobStatus.CANCELLED and not job.cancel_requested:
                self._fail(f"job {job.job_id} was cancelled, not by its submitter")
            if record.terminal is not None and record.terminal.message in (
                "runtime stopped",
                "runtime shutting down",
            ):
                self._fail(f"job {job.job_id} was ended by the runtime: {record.terminal}")
        stats = self.runtime.statistics()
        if stats.buffered_events > stats.sessions * config.max_buffered_events:
            self._fail(f"runtime buffers {stats.buffered_events} events over the caps")
        if self.violations:
            message = "\n".join(self.violations)
            trace = "\n".join(f"  {i}: {s}" for i, s in enumerate(self.trace))
            raise InvariantViolation(f"{message}\nsteps:\n{trace}")

    # -- the end ---------------------------------------------------------------------------

    async def finish(self) -> None:
        """Reconnect everyone, end every puppet, check each watcher got each terminal once."""
        for actor in list(self.actors):
            if actor.lost:
                continue
            if isinstance(actor, _ClientActor) and actor.link is not None:
                actor.link.up = True
                actor.held = False
                await self._wait_connected(actor, limit=16)
            elif isinstance(actor, _Peer) and not actor.attached:
                await self._peer_valid_resume(actor)
        for job in self.jobs:
            if job.puppet and job.ended is None:
                self.board.finish(job.job_id)
                job.ended = "success"
        await self.settle()
        for _ in range(64):
            if self.runtime.statistics().jobs_active == 0:
                break
            await self.advance(8)
        await self.settle()
        self.check()
        for actor in self.actors:
            if actor.lost:
                continue
            if isinstance(actor, _Peer):
                attached = actor.attached
            else:
                attached = isinstance(actor, _ClientActor) and actor.state == "connected"
            if not attached:
                continue
            for job_id, view in actor.views.items():
                record = self.runtime.job(job_id)
                if record is None or record.terminal is None or not view.watching or view.gap:
                    continue
                if view.terminals != 1:
                    self._fail(f"session #{actor.index}: {view.terminals} terminals for {job_id}")
            if isinstance(actor, _ClientActor):
                self._check_handles(actor)
        self.check()

    def _check_handles(self, actor: _ClientActor) -> None:
        for job_id, view in actor.handles.items():
            record = self.runtime.job(job_id)
            if record is None or record.terminal is None:
                continue
            if not view.done:
                self._fail(f"client #{actor.index}: handle of finished {job_id} never ended")
                continue
            model = self._jobs_by_id.get(job_id)
            if record.status is JobStatus.SUCCESS:
                if view.outcome is None:
                    self._fail(f"client #{actor.index}: {job_id} succeeded, handle: {view.error!r}")
            elif (
                view.error is None or str(view.error.code) != str(record.terminal.code or "")
            ) and not (record.status is JobStatus.CANCELLED and view.error is not None):
                self._fail(
                    f"client #{actor.index}: {job_id} ended {record.terminal}, "
                    f"handle: {view.outcome!r} / {view.error!r}"
                )
            if model is not None and model.puppet and record.status is JobStatus.SUCCESS:
                expected = list(range(1, self.board.jobs[job_id].emitted + 1))
                if view.ticks != expected:
                    self._fail(f"client #{actor.index}: handle of {job_id} saw ticks {view.ticks}")

    async def _close_clients(self) -> None:
        for actor in self.actors:
            if isinstance(actor, _ClientActor):
                actor.stop.set()
        for actor in self.actors:
            if isinstance(actor, _ClientActor):
                await actor.host_done.wait()

    def report(self) -> ProgramReport:
        return ProgramReport(
            steps=self.steps, sessions=len(self.actors), jobs=len(self.jobs), frames=self.frames
        )


async def run_program(
    program: Sequence[Step],
    *,
    agents: AgentRegistry | None = None,
    config: RuntimeConfig | None = None,
    lenient: frozenset[str] = frozenset(),
    **runtime_options: Any,
) -> ProgramReport:
    """Run ``program`` against a fresh runtime, checking every invariant after each step.

    Run it on a MockClock (``run_on_mock_clock(run_program, program)``).

    Raises:
        InvariantViolation: with the broken invariants and the steps so far.
    """
    try:
        async with ProgramRunner.open(
            agents, config=config, lenient=lenient, **runtime_options
        ) as runner:
            for step in program:
                await runner.execute(step)
            await runner.finish()
            return runner.report()
    except BaseExceptionGroup as group:
        # The runner's nurseries wrap it; callers want the violation itself.
        matched, _ = group.split(InvariantViolation)
        violation: BaseException | None = matched
        while isinstance(violation, BaseExceptionGroup):
            violation = violation.exceptions[0]
        if isinstance(violation, InvariantViolation):
            raise InvariantViolation(str(violation)) from group
        raise
