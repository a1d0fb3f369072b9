"""The conformance runner: a ``Checker`` context, the requirement registry, ``run_conformance``.

Theory of operation
-------------------
``run_conformance(url, token)`` opens one session to learn what the runtime
advertises (runtime name, features, heartbeat interval, resume window, agents),
probes which resume forms it accepts (§6.3 and the dialects of WIRE.md §20), then
runs every requirement in ``REQUIREMENTS`` (see ``checks``), a few at a time. A
requirement is an ``async`` function of the ``Checker``: it opens its own sessions,
drives the demo agents (their contract is in ``arcp_trio/demo_agents.py`` and
``docs/conformance.md``), and returns a detail string (PASS) or raises ``Fail`` or
``Skip``. An unexpected exception or a wait that runs out is a FAIL with what was
seen; nothing one check does can end another. Checks also record *dialect notes*
(which of the spec's and the reference SDK's shapes the runtime used), which the
report summarises as "the dialect the runtime speaks".
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from .peer import SPEC_FEATURES, Frame, Peer, PeerClosed, payload
from .report import CheckResult, DialectNote, Outcome, Report

__all__ = [
    "BASE_FEATURES",
    "REQUIREMENTS",
    "Checker",
    "Fail",
    "Requirement",
    "Skip",
    "requirement",
    "run_conformance",
]

#: Features asked for by default: all of §6.2's except heartbeat, so a check that is
#: busy with one connection is never dropped for not answering pings on another.
BASE_FEATURES: tuple[str, ...] = tuple(f for f in SPEC_FEATURES if f != "heartbeat")

#: The resume forms probed, in the order the checks prefer them.
RESUME_FORMS = ("hello.resume", "session.resume", "hello.flat")


class Fail(Exception):
    """The requirement is not met; the message says what was observed."""


class Skip(Exception):
    """The requirement cannot be checked here (feature, agent or time not available)."""


Check = Callable[["Checker"], Awaitable[str | None]]


@attrs.frozen
class Requirement:
    id: str
    section: str
    level: str
    title: str
    run: Check


REQUIREMENTS: list[Requirement] = []


def requirement(id_: str, section: str, title: str, level: str = "—") -> Callable[[Check], Check]:
    """Register a check (in declaration order).

    ``level`` is the spec's keyword for the requirement (``MUST``, ``SHOULD``), or
    ``—`` where the spec states the behaviour without one ("the runtime responds with").
    """

    def decorate(function: Check) -> Check:
        if any(existing.id == id_ for existing in REQUIREMENTS):
            raise ValueError(f"duplicate requirement id {id_!r}")
        REQUIREMENTS.append(Requirement(id_, section, level, title, function))
        return function

    return decorate


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Fail(message)


def brief(frame: Frame | None) -> str:
    """A frame in a few words, for details."""
    if frame is None:
        return "nothing"
    kind = str(frame.get("type"))
    body = payload(frame)
    if kind == "session.error" or kind == "job.error":
        return f"{kind} {body.get('code')} {str(body.get('message', ''))[:80]!r}"
    if kind == "job.result":
        return f"job.result {body.get('final_status')}"
    if kind == "job.event":
        return f"job.event {body.get('kind')} #{frame.get('event_seq')}"
    return kind


class Checker:
    """What a check gets: the runtime's address, tokens, limits and helpers."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        other_token: str | None = None,
        wait: float = 5.0,
        max_timing_sec: float = 5.0,
    ) -> None:
        self.url = url
        self.token = token
        self.other_token = other_token
        #: How long to wait for anything the runtime should send.
        self.wait = wait
        #: Longest heartbeat interval / resume window the timing checks will sit out.
        self.max_timing_sec = max_timing_sec
        self.welcome: Frame = {}
        self.features: list[str] = []
        self.agents: dict[str, dict[str, Any]] = {}
        self.heartbeat_interval: float | None = None
        self.resume_window: float | None = None
        self.resume_forms: dict[str, bool] = {}
        self.notes: dict[str, DialectNote] = {}
        #: Every frame any check received (for requirements over the whole run).
        self.all_frames: list[Frame] = []
        self._peers: list[Peer] = []

    # -- sessions ---------------------------------------------------------------------------

    async def connect(self, label: str) -> Peer:
        peer = await Peer.connect(self.url, label=label)
        peer.received = self.all_frames  # shared log: the checker reads every frame
        self._peers.append(peer)
        return peer

    async def session(
        self, label: str, *, token: str | None = None, features: Sequence[str] = BASE_FEATURES
    ) -> Peer:
        """A connected peer with a session (FAIL if the runtime will not welcome it)."""
        peer = await self.connect(label)
        reply = await peer.hello(token or self.token, features=features, within=self.wait)
        expect(reply.get("type") == "session.welcome", f"hello answered by {brief(reply)}")
        return peer

    async def other_session(self, label: str) -> Peer:
        if self.other_token is None:
            raise Skip("needs a second principal: pass --other-token")
        return await self.session(label, token=self.other_token)

    async def close_all(self) -> None:
        peers, self._peers = self._peers, []
        async with trio.open_nursery() as nursery:
            for peer in peers:
                if not peer.closed:
                    nursery.start_soon(_close_bounded, peer)

    def require_feature(self, feature: str) -> None:
        if feature not in self.features:
            raise Skip(f"the runtime does not advertise {feature!r}")

    def require_agent(self, name: str) -> None:
        if self.agents and name not in self.agents:
            raise Skip(f"the runtime does not host the demo agent {name!r}")

    def note(self, item: str, observed: str, side: str) -> None:
        self.notes[item] = DialectNote(item=item, observed=observed, side=side)

    # -- resume -------------------------------------------------------------------------------

    async def resume(
        self,
        old: Peer,
        last_event_seq: int,
        *,
        label: str = "resumed",
        form: str | None = None,
        features: Sequence[str] = BASE_FEATURES,
        retry: bool = True,
    ) -> tuple[Peer | None, Frame]:
        """Resume ``old``'s session on a new connection in ``form`` (default: the first
        form the runtime accepts). Returns the new peer (None if refused) and the reply.

        A runtime that has not yet noticed the old connection's end may refuse at first
        (the reference answers PERMISSION_DENIED until it does), so a refusal is retried
        for a short while; RESUME_WINDOW_EXPIRED is final at once.
        """
        if form is None:
            accepted = [name for name in RESUME_FORMS if self.resume_forms.get(name)]
            if not accepted:
                raise Skip("the runtime accepted none of the resume forms (see resume.*)")
            form = accepted[0]
        assert old.session_id is not None
        assert old.resume_token is not None
        deadline = trio.current_time() + min(self.wait, 3.0)
        while True:
            peer = await self.connect(label)
            if form == "session.resume":
                reply = await peer.resume_message(
                    self.token, old.resume_token, old.session_id, last_event_seq
                )
            elif form == "hello.flat":
                reply = await peer.hello(
                    self.token,
                    features=features,
                    within=self.wait,
                    resume_token=old.resume_token,
                    last_event_seq=last_event_seq,
                    session_id=old.session_id,
                )
            else:
                reply = await peer.hello(
                    self.token,
                    features=features,
                    within=self.wait,
                    resume={
                        "session_id": old.session_id,
                        "resume_token": old.resume_token,
                        "last_event_seq": last_event_seq,
                    },
                )
            if reply.get("type") == "session.welcome":
                return peer, reply
            await _close_bounded(peer)
            code = payload(reply).get("code")
            if not retry or code != "PERMISSION_DENIED" or trio.current_time() >= deadline:
                return None, reply
            await trio.sleep(0.1)

    # -- jobs ----------------------------------------------------------------------------------

    async def run_job(
        self, peer: Peer, agent: str, input_: Any = None, **submit: Any
    ) -> tuple[Frame, list[Frame]]:
        """Submit and read through the terminal: (job.accepted, frames up to the terminal)."""
        accepted = await peer.submit(agent, input_, **submit)
        expect(accepted.get("type") == "job.accepted", f"submit answered by {brief(accepted)}")
        job_id = str(accepted.get("job_id") or payload(accepted).get("job_id"))
        frames = await self.terminal(peer, job_id)
        return accepted, frames

    async def terminal(self, peer: Peer, job_id: str, wait: float | None = None) -> list[Frame]:
        try:
            return await peer.recv_terminal(job_id, within=wait or self.wait)
        except trio.TooSlowError:
            raise Fail(f"no terminal for {job_id} within {wait or self.wait:g} s") from None
        except PeerClosed as exc:
            raise Fail(f"connection closed before the terminal of {job_id}: {exc}") from None


def job_id_of(accepted: Frame) -> str:
    return str(accepted.get("job_id") or payload(accepted).get("job_id"))


async def _close_bounded(peer: Peer) -> None:
    with trio.move_on_after(1):
        await peer.aclose()


async def _establish(checker: Checker, report: Report) -> bool:
    """The first session: what the runtime advertises. False if none can be opened."""
    try:
        peer = await checker.connect("probe")
        welcome = await peer.hello(checker.token, features=SPEC_FEATURES, within=checker.wait)
    except (OSError, PeerClosed, trio.TooSlowError, Exception) as exc:
        report.fatal = f"cannot open a session at {checker.url}: {exc}"
        return False
    if welcome.get("type") != "session.welcome":
        report.fatal = f"hello answered by {brief(welcome)}"
        await checker.close_all()
        return False
    body = payload(welcome)
    checker.welcome = welcome
    capabilities = body.get("capabilities") or {}
    checker.features = [str(f) for f in capabilities.get("features") or []]
    for entry in capabilities.get("agents") or []:
        if isinstance(entry, dict) and "name" in entry:
            checker.agents[str(entry["name"])] = entry
        elif isinstance(entry, str):
            checker.agents[entry] = {"name": entry}
    interval = body.get("heartbeat_interval_sec")
    checker.heartbeat_interval = float(interval) if isinstance(interval, int | float) else None
    window = body.get("resume_window_sec")
    checker.resume_window = float(window) if isinstance(window, int | float) else None
    report.runtime = dict(body.get("runtime") or {})
    report.features = checker.features
    await checker.close_all()
    await _probe_resume_forms(checker)
    return True


async def _probe_resume_forms(checker: Checker) -> None:
    """Which resume forms does the runtime accept? (§6.3 and WIRE.md §20.)"""
    for form in RESUME_FORMS:
        try:
            with trio.fail_after(checker.wait + 4):
                old = await checker.session(f"probe-{form}")
                await old.drop()
                peer, _reply = await checker.resume(old, 0, form=form, label=f"probe-{form}")
                same = peer is not None and peer.session_id == old.session_id
                checker.resume_forms[form] = same
        except (Fail, Skip, PeerClosed, trio.TooSlowError, OSError):
            checker.resume_forms[form] = False
        finally:
            await checker.close_all()
    spec = checker.resume_forms.get("session.resume", False)
    reference = checker.resume_forms.get("hello.resume", False)
    accepted = [form for form, ok in checker.resume_forms.items() if ok] or ["none"]
    side = (
        "both" if spec and reference else "spec" if spec else "reference" if reference else "other"
    )
    checker.note("resume", "accepts " + ", ".join(accepted), side)


async def run_conformance(
    url: str,
    token: str,
    *,
    other_token: str | None = None,
    only: Sequence[str] = (),
    wait: float = 5.0,
    max_timing_sec: float = 5.0,
    concurrency: int = 4,
    on_result: Callable[[CheckResult], None] | None = None,
) -> Report:
    """Drive the runtime at ``url`` through every requirement; never raises for a FAIL.

    Args:
        url: ``ws://host:port/arcp``.
        token: a bearer token the runtime accepts.
        other_token: a token of a *different* principal (for scoping checks).
        only: run only requirements whose id or section starts with one of these
            (``resume``, ``6.3``, ``errors.not-json``).
        wait: seconds to wait for anything the runtime should send.
        max_timing_sec: heartbeat intervals / resume windows longer than this make
            the checks that must sit them out SKIP.
        concurrency: how many checks run at once.
        on_result: called with each result as it is decided.
    """
    from . import checks  # noqa: F401  (registers the requirements)

    started = trio.current_time()
    report = Report(url=url)
    checker = Checker(url, token, other_token=other_token, wait=wait, max_timing_sec=max_timing_sec)
    selected = [r for r in REQUIREMENTS if _selected(r, only)]
    if await _establish(checker, report):
        limiter = trio.CapacityLimiter(max(1, concurrency))
        results: dict[str, CheckResult] = {}
        # Checks over the whole run's frames go last, after everything else.
        first = [r for r in selected if not r.id.startswith("run.")]
        last = [r for r in selected if r.id.startswith("run.")]
        for batch in (first, last):
            async with trio.open_nursery() as nursery:
                for req in batch:
                    nursery.start_soon(
                        _run_one, checker, req, limiter, results, on_result, url, token
                    )
        report.results = [results[r.id] for r in selected]
    report.dialect_notes = list(checker.notes.values())
    report.seconds = trio.current_time() - started
    return report


def _selected(req: Requirement, only: Sequence[str]) -> bool:
    """``resume`` matches ``resume.replay``; ``6`` matches §6.3; ``§6.3`` matches §6.3."""
    if not only:
        return True
    for raw in only:
        want = raw.strip().removeprefix("§").rstrip(".")
        if not want:
            continue
        for key in (req.id, req.section):
            if key == want or key.startswith(want + "."):
                return True
    return False


async def _run_one(
    parent: Checker,
    req: Requirement,
    limiter: trio.CapacityLimiter,
    results: dict[str, CheckResult],
    on_result: Callable[[CheckResult], None] | None,
    url: str,
    token: str,
) -> None:
    async with limiter:
        checker = Checker(
            url,
            token,
            other_token=parent.other_token,
            wait=parent.wait,
            max_timing_sec=parent.max_timing_sec,
        )
        # Share what the first session learned, and the dialect notes and frame log.
        checker.welcome = parent.welcome
        checker.features = parent.features
        checker.agents = parent.agents
        checker.heartbeat_interval = parent.heartbeat_interval
        checker.resume_window = parent.resume_window
        checker.resume_forms = parent.resume_forms
        checker.notes = parent.notes
        checker.all_frames = parent.all_frames
        started = trio.current_time()
        outcome, detail = Outcome.PASS, ""
        # A generous cap on any one check: it cannot hang the run.
        cap = 6 * parent.wait + 3 * max(parent.max_timing_sec, 1.0)
        try:
            with trio.fail_after(cap):
                detail = await req.run(checker) or ""
        except Fail as exc:
            outcome, detail = Outcome.FAIL, str(exc)
        except Skip as exc:
            outcome, detail = Outcome.SKIP, str(exc)
        except trio.TooSlowError:
            outcome, detail = Outcome.FAIL, "timed out waiting for the runtime"
        except PeerClosed as exc:
            outcome, detail = Outcome.FAIL, f"the runtime closed the connection: {exc}"
        except Exception as exc:
            outcome, detail = Outcome.FAIL, f"{type(exc).__name__}: {exc}"
        finally:
            with trio.CancelScope(shield=True):
                await checker.close_all()
        result = CheckResult(
            id=req.id,
            section=req.section,
            level=req.level,
            title=req.title,
            outcome=outcome,
            detail=detail,
            seconds=trio.current_time() - started,
        )
        results[req.id] = result
        if on_result is not None:
            on_result(result)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
