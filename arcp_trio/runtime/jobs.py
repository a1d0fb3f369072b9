"""Jobs: the one room that starts, runs and ends them (DESIGN.md, "the one rule").

``JobRunner.start`` is the only place a task enters the job nursery. A job runs
there inside its own ``CancelScope``, which only this room holds (``_LiveJob``:
never exposed to sessions, never in the registry). It ends by returning or
raising, by ``job.cancel`` from the submitting session (§7.4, through
``Router.request_cancel``), by ``max_runtime_sec`` (the scope's deadline, §7.3),
by its lease's expiry (§9.5), by its parent's end (§10), or by runtime shutdown.
Before cancelling, the runner records *why* in the job's ``ending``, so the
terminal says cancelled, not timed out.

It is also the host a ``JobContext`` calls (context.py's ``_Host``): emit with
back-pressure, tools, budget, result streams, delegation, credential rotation.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..protocol.job import JobRecord, JobStatus, Terminal
from ..protocol.leases import Budget, child_lease, parse_lease
from ..wire.codec import dumps
from ..wire.errors import (
    ARCPError,
    ErrorCode,
    InternalError,
    InvalidRequest,
    JobNotFound,
    LeaseExpired,
    make_error,
)
from ..wire.ids import new_frame_id, new_id
from ..wire.messages import MessageType
from ..wire.timestamps import format_timestamp, parse_timestamp
from .config import LeaseExpiry
from .context import JobContext
from .shapes import rotation_body
from .tools import current_trace_id

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from decimal import Decimal

    from ..store.base import Store
    from ..wire.timestamps import WallClock
    from .agents import Agent, AgentRegistry
    from .config import RuntimeConfig
    from .ledger import CredentialLedger
    from .otel import Telemetry
    from .routing import Router
    from .state import JobRegistry, SessionDirectory
    from .timers import Timer, Timers
    from .tools import ToolRegistry

__all__ = ["JobRunner", "LiveJob"]

log = logging.getLogger(__name__)

#: Events an agent may emit between two scheduling points (see ``emit``).
_EMITS_PER_YIELD = 32


@attrs.define(eq=False)
class LiveJob:
    """The in-process part of a job that may still run (never exposed to sessions)."""

    scope: trio.CancelScope | None = None
    #: ``max_runtime_sec`` as a Trio deadline (§7.3).
    deadline: float = math.inf
    #: The lease's ``expires_at`` as a Trio deadline, when proactive (§9.5).
    expiry_deadline: float = math.inf
    #: Revokes the job's credentials at expiry even if the agent does not unwind then.
    expiry_timer: Timer | None = None
    #: Its credentials' revocation has been scheduled (at expiry, or at the terminal).
    revoked: bool = False
    #: Jobs this one delegated to (§10); they end when it ends.
    children: set[str] = attrs.field(factory=set)
    emits_since_yield: int = 0
    #: Why the runtime is ending the job (set before the scope is cancelled).
    ending: Terminal | None = None
    stream_result_id: str | None = None
    stream_open: bool = False
    stream_size: int | None = None
    stream_summary: str | None = None
    done: trio.Event = attrs.field(factory=trio.Event)


class JobRunner:
    """Starts jobs in the job nursery, and is the host their contexts call."""

    def __init__(
        self,
        *,
        job_nursery: trio.Nursery,
        registry: JobRegistry,
        sessions: SessionDirectory,
        router: Router,
        store: Store,
        ledger: CredentialLedger,
        config: RuntimeConfig,
        timers: Timers,
        telemetry: Telemetry,
        agents: AgentRegistry,
        tools: ToolRegistry,
        wall_clock: WallClock,
        timestamp: Callable[[], str],
    ) -> None:
        self._job_nursery = job_nursery
        self._registry = registry
        self._sessions = sessions
        self._router = router
        self._store = store
        self._ledger = ledger
        self.config = config
        self._timers = timers
        self._telemetry = telemetry
        self._agents = agents
        self._tools = tools
        self._wall_clock = wall_clock
        self._timestamp = timestamp
        #: With a durable store: the newest history events RAM keeps per running job.
        self._cache: int | None = config.event_cache_events if store.durable else None
        self._live: dict[str, LiveJob] = {}
        self._limiter = (
            trio.CapacityLimiter(config.max_concurrent_jobs)
            if config.max_concurrent_jobs is not None
            else None
        )
        router.set_canceller(self.end)

    # == the runner's own surface ================================================================

    @property
    def active(self) -> int:
        return sum(1 for live in self._live.values() if not live.done.is_set())

    def is_running(self, job_id: str) -> bool:
        return job_id in self._live

    def new_record(self, **fields: Any) -> JobRecord:
        """A new job's record: the next ordinal, and how it keeps its history (with a
        durable store RAM keeps the newest ``event_cache_events``; docs/store.md)."""
        return JobRecord(ordinal=self._registry.next_ordinal(), **fields, **self.history_settings())

    def history_settings(self) -> dict[str, Any]:
        return {
            "history_limit": self.config.job_history_limit,
            "history_spills": self._store.durable,
            "history_cache_limit": self._cache,
        }

    async def wait_done(self, job_id: str) -> JobRecord:
        """Wait until the job has reached a terminal state.

        Raises:
            JobNotFound: no such job.
        """
        job = self._registry.get(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id!r} not found")
        live = self._live.get(job_id)
        if live is not None:
            await live.done.wait()
        else:
            await trio.lowlevel.checkpoint()
        return job

    def start(self, job: JobRecord, live: LiveJob, function: Agent, input_: Any) -> None:
        """The one place jobs enter the job nursery."""
        if self.config.lease_expiry is LeaseExpiry.TERMINATE and job.lease.expires_at is not None:
            # §9.5 "MAY proactively terminate": the job's scope ends at the instant; the
            # timer (at most one timer granularity later) revokes its credentials even
            # if the agent does not unwind, so no credential outlives its lease (§9.8).
            live.expiry_deadline = self.trio_deadline(job.lease.expires_at)
            live.expiry_timer = self._timers.call_at(
                live.expiry_deadline, lambda _now: self._lease_expired(job, live)
            )
        self._live[job.job_id] = live
        self._job_nursery.start_soon(self._run, job, function, input_)

    def end(self, job_id: str, why: Terminal) -> bool:
        """End a running job with ``why`` (the router's canceller). False: it is not
        running here, or is already ending (its first reason stands)."""
        live = self._live.get(job_id)
        if live is None or live.done.is_set() or live.ending is not None:
            return False
        live.ending = why
        if live.scope is not None:
            live.scope.cancel()
        return True

    def interrupted(self, job: JobRecord) -> None:
        """A job the store says was running when the process died: it ends now with
        a retryable ``INTERNAL_ERROR`` (§1.2: agent state across restarts is out of
        scope), delivered to every session that watched it."""
        self._finish(job, LiveJob(), _internal("runtime restarted"))

    async def shutdown(self, grace: float) -> None:
        """Give running jobs ``grace`` seconds, then end them with a terminal.
        Bounded: at most ``grace`` plus five seconds. Call shielded."""
        with trio.move_on_after(grace):
            for live in list(self._live.values()):
                await live.done.wait()
        for job_id in list(self._live):
            if self.end(job_id, _internal("runtime shutting down")):
                log.info("cancelling job on shutdown job_id=%s", job_id)
        with trio.move_on_after(5):
            for live in list(self._live.values()):
                await live.done.wait()

    def reclaim(self) -> int:
        """Forget finished jobs past retention now; returns how many went."""
        horizon = self._wall_clock() - timedelta(seconds=self.config.job_retention_sec)
        expired = [
            job
            for job in self._registry
            if job.terminal is not None
            and job.job_id not in self._live
            and parse_timestamp(job.terminal.completed_at) < horizon
        ]
        for job in expired:
            self._registry.forget(job)
            self._router.uncache(job)
        if expired:
            log.info("janitor reclaimed jobs=%s", len(expired))
        return len(expired)

    async def janitor(self) -> None:
        """Retention: forget finished jobs older than ``job_retention_sec``."""
        while True:
            await trio.sleep(self.config.janitor_interval_sec)
            self.reclaim()

    def trio_deadline(self, moment: datetime) -> float:
        """A wall-clock instant on the wire as a Trio deadline (STYLE: one converter)."""
        return trio.current_time() + (moment - self._wall_clock()).total_seconds()

    def parse_expiry(self, text: str) -> datetime:
        """§9.5: UTC with ``Z``, in the future at submission time."""
        where = "$.payload.lease_constraints.expires_at"
        try:
            moment = parse_timestamp(text, require_utc=True)
        except ValueError as exc:
            raise InvalidRequest.at(where, str(exc)) from None
        if moment <= self._wall_clock():
            raise InvalidRequest.at(where, "must be in the future (§9.5)")
        return moment

    # == one job's life ==========================================================================

    async def _run(self, job: JobRecord, function: Agent, input_: Any) -> None:
        with self._telemetry.job(job):
            await self._run_body(job, function, input_)

    async def _run_body(self, job: JobRecord, function: Agent, input_: Any) -> None:
        live = self._live[job.job_id]
        terminal: Terminal | None = None
        try:
            with trio.CancelScope(deadline=min(live.deadline, live.expiry_deadline)) as scope:
                live.scope = scope
                if live.ending is not None:
                    scope.cancel()
                if self._limiter is not None:
                    await self._limiter.acquire_on_behalf_of(job.job_id)
                try:
                    job.transition(JobStatus.RUNNING)
                    self._registry.save(job)
                    terminal = await self._invoke(job, live, function, input_)
                finally:
                    if self._limiter is not None:
                        self._limiter.release_on_behalf_of(job.job_id)
            if live.ending is not None:
                # A cancel that was acknowledged wins, even over a late return.
                terminal = live.ending
            elif terminal is None and live.expiry_deadline <= live.deadline:
                # §9.5: proactive termination at the lease's expires_at.
                terminal = _lease_expired_terminal()
            elif terminal is None:
                terminal = Terminal(
                    status=JobStatus.TIMED_OUT,
                    completed_at="",
                    code=ErrorCode.TIMEOUT,
                    message="job exceeded max_runtime_sec",
                )
        finally:
            if terminal is None:
                # Cancelled from outside the runtime's control (the job nursery
                # itself is going away): still end the job visibly.
                terminal = live.ending or _internal("runtime stopped")
            self._finish(job, live, terminal)

    async def _invoke(
        self, job: JobRecord, live: LiveJob, function: Agent, input_: Any
    ) -> Terminal:
        """Run the agent; its exceptions stop here and become the terminal."""
        try:
            result = await function(input_, JobContext(self, job))
        except ARCPError as exc:
            return Terminal(
                status=JobStatus.ERROR,
                completed_at="",
                code=str(exc.code),
                message=exc.message,
                retryable=exc.retryable,
                details=exc.details,
            )
        except Exception as exc:
            log.warning("agent raised job_id=%s agent=%s", job.job_id, job.agent, exc_info=True)
            return _internal(f"{type(exc).__name__}: {exc}")
        if live.stream_result_id is not None:
            if live.stream_open or live.stream_size is None:
                return _internal("agent returned while its result stream was still open")
            if result is not None:
                # §8.4: "MUST NOT mix inline result and result_chunk in the same job".
                return _internal("agent returned an inline result after streaming one")
            return Terminal(
                status=JobStatus.SUCCESS,
                completed_at="",
                result_id=live.stream_result_id,
                result_size=live.stream_size,
                summary=live.stream_summary,
            )
        try:
            dumps(result)
        except (TypeError, ValueError, RecursionError) as exc:
            # RecursionError too: a result nested too deeply to serialise must end
            # this job, not escape into the job nursery (found by fuzzing).
            return _internal(f"agent result is not JSON-serialisable: {exc!r}"[:500])
        return Terminal(status=JobStatus.SUCCESS, completed_at="", result=result)

    def _finish(self, job: JobRecord, live: LiveJob, terminal: Terminal) -> None:
        terminal = attrs.evolve(terminal, completed_at=self._timestamp())
        job.finish(terminal)
        self._registry.save(job)
        # §9.8.2: revoke at every terminal state, however it ended.
        self._revoke_all(job, live)
        if live.expiry_timer is not None:
            live.expiry_timer.cancel()
            live.expiry_timer = None
        live.done.set()
        self._live.pop(job.job_id, None)
        if job.history_spills:
            self._router.uncache(job)  # the store has it; RAM keeps running jobs' only
        parent = self._registry.get(job.parent_job_id) if job.parent_job_id else None
        if (
            parent is not None
            and parent.budget is not None
            and job.budget is not None
            and job.budget is not parent.budget
        ):
            parent.budget.release(job.budget.remaining)
        for child_id in live.children:
            # §10: a child never outlives its parent's authority.
            self._router.request_cancel(
                child_id,
                Terminal(
                    status=JobStatus.CANCELLED,
                    completed_at="",
                    code=ErrorCode.CANCELLED,
                    message=f"parent job {job.job_id} ended",
                ),
            )
        log.info(
            "job finished job_id=%s status=%s code=%s", job.job_id, terminal.status, terminal.code
        )
        self._router.publish_terminal(job)

    def _lease_expired(self, job: JobRecord, live: LiveJob) -> None:
        """The lease's ``expires_at`` has passed (§9.5) and the job has not ended."""
        live.expiry_timer = None
        if live.done.is_set():
            return
        log.info("lease expired job_id=%s expires_at=%s", job.job_id, job.lease.expires_at)
        if live.ending is None:
            live.ending = _lease_expired_terminal()
        if live.scope is not None:
            live.scope.cancel()
        self._revoke_all(job, live)

    def _revoke_all(self, job: JobRecord, live: LiveJob) -> None:
        """§9.8.2: revoke every credential of the job, once."""
        if live.revoked:
            return
        live.revoked = True
        for credential in job.credentials:
            self._ledger.revoke(job.job_id, credential)

    # == the JobContext's host interface (context.py ``_Host``) ==================================

    async def _emit(self, job: JobRecord, kind: str, body: Any) -> None:
        """An agent's emitter: back-pressure (live connections only), then publish."""
        if job.is_terminal:
            raise RuntimeError(f"job {job.job_id} has already ended")
        congested = [
            session.connection
            for session in self._router.watching(job)
            if session.connection is not None and session.connection.congested
        ]
        live = self._live[job.job_id]
        if congested:
            # Only live connections slow an agent down, never a detached session
            # (DESIGN.md "The flow of one event").
            for connection in congested:
                await connection.wait_writable()
            live.emits_since_yield = 0
        elif live.emits_since_yield >= _EMITS_PER_YIELD:
            live.emits_since_yield = 0
            # Write-behind is bounded too: past the store's bound the writer catches up
            # before more is queued (looked at once a batch: a bound, not a cliff).
            await self._store.wait_writable()
        else:
            # A cancellation point on every emit; a full scheduling point only every
            # few, so a chatty agent pays one scheduler pass per batch, not per event,
            # and the send task still drains the batch promptly.
            live.emits_since_yield += 1
            await trio.lowlevel.checkpoint_if_cancelled()
        self._router.publish(job, kind, body)

    def _authorize(self, job: JobRecord, namespace: str, target: str) -> None:
        """§9.3: synchronous, before dispatch; a fatal denial also ends the job."""
        try:
            job.lease.authorize(namespace, target, now=self._wall_clock(), budget=job.budget)
        except ARCPError as denial:
            self._on_denial(job, denial)
            raise

    def _authorize_model(self, job: JobRecord, model: str) -> None:
        try:
            job.lease.authorize_model(
                model,
                now=self._wall_clock(),
                budget=job.budget,
                default_allow=self.config.model_use_default_allow,
            )
        except ARCPError as denial:
            self._on_denial(job, denial)
            raise

    def _on_denial(self, job: JobRecord, denial: ARCPError) -> None:
        log.info("operation denied job_id=%s code=%s %s", job.job_id, denial.code, denial.message)
        if denial.code in self.config.fatal_denials:
            status = JobStatus.CANCELLED if denial.code == ErrorCode.CANCELLED else JobStatus.ERROR
            self.end(
                job.job_id,
                Terminal(status=status, completed_at="", code=denial.code, message=denial.message),
            )

    async def _delegate(
        self,
        parent: JobRecord,
        agent: str,
        input_: Any,
        lease_request: dict[str, list[str]] | None,
        lease_constraints: dict[str, Any] | None,
    ) -> _Child:
        """§10: start a child job under a subset of ``parent``'s authority."""
        resolved = self._agents.resolve(agent)
        # Delegating is itself authority-bearing (§9.2 ``agent.delegate``).
        self._authorize(parent, "agent.delegate", resolved.name)
        requested = parse_lease(lease_request or {})
        constraints = dict(lease_constraints or {})
        if constraints.get("expires_at") is not None:
            requested = attrs.evolve(
                requested, expires_at=self.parse_expiry(str(constraints["expires_at"]))
            )
        # §9.4: the child's lease must be a subset of the parent's, its budget within
        # the parent's remaining budget, its expiry no later than the parent's.
        lease = child_lease(
            parent.lease,
            requested,
            parent_budget=parent.budget,
            model_default_allow=self.config.model_use_default_allow,
        )
        budget: Budget | None
        if "cost.budget" in requested.grants:
            budget = Budget.from_lease(lease)
            if budget is not None and parent.budget is not None:
                # A child's own budget is reserved from the parent's, so authority cannot
                # be multiplied by delegating the same remainder twice; what it leaves
                # unspent comes back when it ends.
                parent.budget.reserve(budget.initial)
        else:
            # No budget named: the child spends from the parent's counters.
            budget = parent.budget
        if lease.expires_at is not None:
            constraints["expires_at"] = format_timestamp(lease.expires_at)
        parent_live = self._live[parent.job_id]
        now = self._wall_clock()
        child = self.new_record(
            job_id=new_id("job"),
            principal=parent.principal,
            session_id=parent.session_id,
            agent_name=resolved.name,
            agent_version=resolved.version,
            lease=lease,
            lease_constraints=constraints or None,
            budget=budget,
            trace_id=parent.trace_id,  # §11: trace context flows to sub-agents
            parent_job_id=parent.job_id,
            delegate_id=None,
            created_at=now,
            accepted_at=format_timestamp(now),
        )
        await self._registry.admit(child, fingerprint=None)
        parent_live.children.add(child.job_id)
        # A child never outlives its parent: same max_runtime deadline at most.
        self.start(child, LiveJob(deadline=parent_live.deadline), resolved.function, input_)
        self._router.publish(
            parent,
            "delegate",
            {"child_job_id": child.job_id, "agent": child.agent, "lease": lease.as_wire()},
        )
        log.info(
            "job delegated parent_job_id=%s job_id=%s agent=%s",
            parent.job_id,
            child.job_id,
            child.agent,
        )
        await trio.lowlevel.checkpoint()
        return _Child(child.job_id, self)

    async def _call_tool(self, job: JobRecord, name: str, args: Any) -> Any:
        call_id = new_id("call")
        await self._emit(job, "tool_call", {"tool": name, "args": args, "call_id": call_id})
        try:
            self._authorize(job, "tool.call", name)
            tool = self._tools.get(name)
            if tool is None:
                raise InvalidRequest(f"no tool named {name!r} is registered")
            reset = current_trace_id.set(job.trace_id)
            try:
                with self._telemetry.tool(job, name):
                    result = await tool(args)
            finally:
                current_trace_id.reset(reset)
        except ARCPError as exc:
            await self._tool_error(job, call_id, exc)
            raise
        except Exception as exc:
            error = InternalError(f"tool {name!r} failed: {type(exc).__name__}: {exc}")
            await self._tool_error(job, call_id, error)
            raise error from exc
        await self._emit(job, "tool_result", {"call_id": call_id, "result": result})
        return result

    async def _tool_error(self, job: JobRecord, call_id: str, error: ARCPError) -> None:
        """§9.5, §9.6: a denial "surfaced via ... a tool_result event with the error code"."""
        body = {"code": str(error.code), "message": error.message, "retryable": error.retryable}
        # Published without a checkpoint, so it is recorded even when the denial was
        # fatal and the job's scope is already cancelled.
        self._router.publish(job, "tool_result", {"call_id": call_id, "error": body})
        await trio.lowlevel.checkpoint()

    def _charge(self, job: JobRecord, currency: str, value: Decimal) -> Decimal | None:
        if job.budget is None:
            return None
        return job.budget.charge(currency, value)

    def _begin_stream(self, job: JobRecord, result_id: str) -> None:
        live = self._live[job.job_id]
        if live.stream_result_id is not None:
            raise RuntimeError("a job streams at most one result")
        live.stream_result_id = result_id
        live.stream_open = True

    def _end_stream(self, job: JobRecord, result_id: str, size: int, summary: str | None) -> None:
        live = self._live[job.job_id]
        live.stream_open = False
        live.stream_size = size
        live.stream_summary = summary

    @property
    def _result_chunk_bytes(self) -> int:
        return self.config.result_chunk_bytes

    @property
    def _max_result_bytes(self) -> int:
        return self.config.max_result_bytes

    async def _rotate_credential(self, job: JobRecord, credential_id: str) -> dict[str, Any]:
        """§9.8.2 rotation: new value to the submitter only, then revoke the old one."""
        if not self._ledger.configured:
            raise InvalidRequest("no credential provisioner is configured")
        index = next((i for i, c in enumerate(job.credentials) if c["id"] == credential_id), None)
        if index is None:
            raise InvalidRequest(f"job has no credential {credential_id!r}")
        live = self._live.get(job.job_id)
        if live is None or live.revoked:
            # Its credentials went with its lease (§9.5, §9.8): none is issued again.
            raise LeaseExpired("the job's credentials have been revoked")
        old = job.credentials[index]
        fresh = await self._ledger.rotate(old)
        if _revoked(live):  # (re-read after the await)
            # Revoked while the upstream rotated: the new value must not outlive them.
            self._ledger.revoke(job.job_id, fresh)
            raise LeaseExpired("the job's credentials have been revoked")
        job.credentials[index] = fresh
        self._ledger.record_live(job.job_id, fresh)
        submitter = self._sessions.get(job.session_id)
        if submitter is not None:
            # Not in the job's history and not to subscribers (§14): the submitter only.
            body = rotation_body(credential_id, fresh["value"])
            payload_json = dumps({"kind": "status", "ts": self._timestamp(), "body": body})
            self._router.deliver(
                submitter, job, MessageType.JOB_EVENT, new_frame_id(), payload_json
            )
        self._ledger.revoke(job.job_id, old)
        await trio.lowlevel.checkpoint()
        return fresh


class _Child:
    """A delegated job, as the delegating agent sees it (``ctx.delegate``)."""

    def __init__(self, job_id: str, runner: JobRunner) -> None:
        self.job_id = job_id
        self._runner = runner

    async def result(self) -> Any:
        job = await self._runner.wait_done(self.job_id)
        terminal = job.terminal
        assert terminal is not None
        if terminal.status is JobStatus.SUCCESS:
            if terminal.result_id is not None:
                return {"result_id": terminal.result_id, "result_size": terminal.result_size}
            return terminal.result
        raise make_error(
            terminal.error_code,
            terminal.message or str(terminal.status),
            retryable=terminal.retryable,
            details=terminal.details,
        )


def _revoked(live: LiveJob) -> bool:
    return live.revoked


def _lease_expired_terminal() -> Terminal:
    # §12: LEASE_EXPIRED is never retryable; §9.5: final_status "error".
    return Terminal(
        status=JobStatus.ERROR,
        completed_at="",
        code=ErrorCode.LEASE_EXPIRED,
        message="the lease expired while the job was running",
    )


def _internal(message: str) -> Terminal:
    return Terminal(
        status=JobStatus.ERROR,
        completed_at="",
        code=ErrorCode.INTERNAL_ERROR,
        message=message,
        retryable=True,
    )
