"""The requirements, section by section (§5-§12 of draft-arcp-1.1).

Each check drives the demo agents (``arcp_trio/demo_agents.py``; the contract is
restated in ``docs/conformance.md``): ``echo`` 1.0.0/2.0.0, ``ticker``, ``chunker``,
``slow``, ``spender``, ``chatty``, and ``toucher`` where hosted. Declaration order is
report order.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import trio

from ..wire.timestamps import format_timestamp, system_wall_clock
from .checker import (
    Checker,
    Fail,
    Skip,
    brief,
    expect,
    job_id_of,
    requirement,
)
from .peer import SPEC_FEATURES, Frame, Peer, PeerClosed, is_terminal, payload

if TYPE_CHECKING:
    from collections.abc import Sequence

TICKS: dict[str, Any] = {"count": 8, "interval": 0.15}
FAST_TICKS: dict[str, Any] = {"count": 4, "interval": 0.05}


# == helpers ===================================================================================


def events_of(frames: Sequence[Frame], job_id: str, kind: str | None = None) -> list[Frame]:
    return [
        f
        for f in frames
        if f.get("type") == "job.event"
        and f.get("job_id") == job_id
        and (kind is None or payload(f).get("kind") == kind)
    ]


def seqs(frames: Sequence[Frame]) -> list[int]:
    return [int(f["event_seq"]) for f in frames if isinstance(f.get("event_seq"), int)]


def check_consecutive(numbers: Sequence[int], after: int, what: str) -> None:
    expected = list(range(after + 1, after + 1 + len(numbers)))
    expect(numbers == expected, f"{what}: event_seq {numbers[:12]} (expected {expected[:12]})")


async def collect(peer: Peer, job_id: str, wait: float) -> tuple[list[Frame], bool]:
    """Frames (pings excluded) until ``job_id``'s terminal or ``wait`` seconds; and
    whether the terminal came."""
    frames: list[Frame] = []
    with trio.move_on_after(wait):
        try:
            while True:
                frame = await peer.recv(within=wait + 1)
                if frame.get("type") == "session.ping":
                    continue
                frames.append(frame)
                if is_terminal(frame, job_id):
                    return frames, True
        except PeerClosed:
            pass
    return frames, False


def code(frame: Frame) -> str | None:
    value = payload(frame).get("code")
    return str(value) if value is not None else None


def future(seconds: float) -> str:
    return format_timestamp(system_wall_clock() + timedelta(seconds=seconds))


async def send_cancel(peer: Peer, job_id: str) -> str:
    # job_id on the envelope (reference SDK) and in the payload (other dialects).
    return await peer.send("job.cancel", {"job_id": job_id, "reason": "conformance"}, job_id=job_id)


async def subscribe(peer: Peer, job_id: str, *, history: bool, **extra: Any) -> Frame:
    await peer.send("job.subscribe", {"job_id": job_id, "history": history, **extra}, job_id=job_id)
    return await peer.recv_type("job.subscribed", "session.error")


async def list_jobs(peer: Peer, **request: Any) -> Frame:
    await peer.send("session.list_jobs", request)
    return await peer.recv_type("session.jobs", "session.error")


async def error_reply(peer: Peer, wait: float) -> Frame:
    try:
        return await peer.recv_type("session.error", within=wait)
    except trio.TooSlowError:
        raise Fail(f"no session.error within {wait:g} s") from None
    except PeerClosed:
        raise Fail("the runtime closed the connection without an error frame") from None


async def still_alive(peer: Peer, wait: float) -> bool:
    """Does the session still answer a ping?"""
    try:
        nonce = f"conformance-{trio.current_time():.6f}"
        await peer.send("session.ping", {"nonce": nonce, "sent_at": future(0)})
        while True:
            frame = await peer.recv_type("session.pong", within=wait)
            if payload(frame).get("ping_nonce") == nonce:
                return True
    except (PeerClosed, trio.TooSlowError):
        return False


def note_error_correlation(checker: Checker, error: Frame, request_id: str) -> None:
    correlated = payload(error).get("request_id") == request_id
    checker.note(
        "error correlation",
        "session.error carries request_id" if correlated else "session.error has no request_id",
        "spec" if correlated else "reference",
    )


# == §5 wire format ============================================================================


@requirement("wire.unknown-fields", "5", "unknown top-level envelope fields are ignored", "MUST")
async def unknown_fields(ch: Checker) -> str:
    peer = await ch.session("a")
    request_id = await peer.send(
        "job.submit", {"agent": "echo", "input": {"n": 1}}, x_conformance_future={"v": 2}
    )
    reply = await peer.recv_type("job.accepted", "session.error")
    expect(reply.get("type") == "job.accepted", f"answered by {brief(reply)}")
    expect(payload(reply).get("request_id") in (None, request_id), "request_id mismatch")
    frames = await ch.terminal(peer, job_id_of(reply))
    expect(frames[-1].get("type") == "job.result", f"ended with {brief(frames[-1])}")
    return "job.submit with an extra top-level field was accepted and ran"


# == §6.1-§6.2 hello / welcome =================================================================


@requirement(
    "hello.welcome", "6.2", "session.welcome carries session_id, resume_token, runtime, features"
)
async def hello_welcome(ch: Checker) -> str:
    peer = await ch.connect("a")
    welcome = await peer.hello(ch.token, features=SPEC_FEATURES, within=ch.wait)
    expect(welcome.get("type") == "session.welcome", f"answered by {brief(welcome)}")
    body = payload(welcome)
    expect(isinstance(welcome.get("session_id") or body.get("session_id"), str), "no session_id")
    expect(isinstance(body.get("resume_token"), str), "no resume_token")
    expect(isinstance((body.get("runtime") or {}).get("name"), str), "no runtime.name")
    features = (body.get("capabilities") or {}).get("features")
    if not isinstance(features, list):
        raise Fail("capabilities.features is not a list")
    if "heartbeat" in features:
        expect(
            isinstance(body.get("heartbeat_interval_sec"), int | float),
            "heartbeat negotiated but no heartbeat_interval_sec",
        )
    return f"{len(features)} features; resume_window_sec={body.get('resume_window_sec')}"


@requirement(
    "hello.unauthenticated", "6.1", "a wrong bearer token gets UNAUTHENTICATED, no session"
)
async def hello_unauthenticated(ch: Checker) -> str:
    peer = await ch.connect("a")
    try:
        reply = await peer.hello(ch.token + "-wrong", within=ch.wait)
    except PeerClosed:
        raise Fail("connection closed without an error frame") from None
    expect(reply.get("type") != "session.welcome", "a wrong token was welcomed")
    expect(code(reply) == "UNAUTHENTICATED", f"answered by {brief(reply)}")
    return "UNAUTHENTICATED"


@requirement(
    "hello.negotiation",
    "6.2",
    "a feature outside the intersection is not used (list_jobs)",
    "MUST",
)
async def hello_negotiation(ch: Checker) -> str:
    ch.require_feature("list_jobs")
    peer = await ch.session("a", features=["progress"])
    reply = await list_jobs(peer)
    expect(
        reply.get("type") == "session.error",
        "session.list_jobs was served although list_jobs was not negotiated",
    )
    return f"refused with {code(reply)}"


@requirement(
    "hello.agents", "7.5", "welcome lists agents with versions and default (agent_versions)"
)
async def hello_agents(ch: Checker) -> str:
    ch.require_feature("agent_versions")
    echo = ch.agents.get("echo")
    expect(echo is not None, f"no echo agent in the inventory {sorted(ch.agents)}")
    assert echo is not None
    versions = echo.get("versions")
    expect(isinstance(versions, list), f"echo entry has no versions list: {echo}")
    expect({"1.0.0", "2.0.0"} <= set(versions or []), f"echo versions {versions}")
    expect(echo.get("default") == "2.0.0", f"echo default {echo.get('default')!r}")
    return f"echo versions {versions}, default 2.0.0"


# == §6.3 resume ===============================================================================


@requirement(
    "resume.message", "6.3", "session.resume {resume_token, last_event_seq} resumes the session"
)
async def resume_message(ch: Checker) -> str:
    old = await ch.session("old")
    await old.drop()
    peer, reply = await ch.resume(old, 0, form="session.resume")
    expect(peer is not None, f"session.resume answered by {brief(reply)}")
    assert peer is not None
    expect(peer.session_id == old.session_id, "welcome for a different session")
    return "resumed with the spec's session.resume message"


@requirement("resume.token-rotates", "6.3", "the resume token rotates on every successful welcome")
async def resume_token_rotates(ch: Checker) -> str:
    old = await ch.session("old")
    await old.drop()
    peer, reply = await ch.resume(old, 0)
    expect(peer is not None, f"resume answered by {brief(reply)}")
    assert peer is not None
    expect(peer.resume_token != old.resume_token, "the same resume_token was issued again")
    return "new token after resume"


@requirement(
    "resume.replay", "6.3", "after a drop, resume replays exactly the events after last_event_seq"
)
async def resume_replay(ch: Checker) -> str:
    old = await ch.session("old")
    accepted = await old.submit("ticker", TICKS)
    expect(accepted.get("type") == "job.accepted", f"submit answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    first = await old.recv_until(lambda f: len(events_of([f], job_id)) == 1 and f["event_seq"] >= 2)
    last_seq = seqs(first)[-1]
    await old.drop()
    peer, reply = await ch.resume(old, last_seq)
    expect(peer is not None, f"resume answered by {brief(reply)}")
    assert peer is not None
    rest, finished = await collect(peer, job_id, ch.wait)
    if not finished:
        got = seqs(rest)
        raise Fail(
            f"after resume from seq {last_seq}: no terminal within {ch.wait:g} s; "
            f"received {f'seq {got}' if got else 'nothing'} (events after the drop were lost)"
        )
    numbers = seqs(rest)
    check_consecutive(numbers, last_seq, "replay")
    ticks = [payload(f)["body"].get("current") for f in events_of(first + rest, job_id)]
    expect(ticks == list(range(1, TICKS["count"] + 1)), f"progress currents {ticks}")
    return f"replayed seq {numbers[0]}..{numbers[-1]} after {last_seq}, no gap, no duplicate"


@requirement(
    "resume.not-covered",
    "6.3",
    "a resume the buffer no longer covers gets RESUME_WINDOW_EXPIRED, never a silent gap",
)
async def resume_not_covered(ch: Checker) -> str:
    ch.require_feature("ack")
    old = await ch.session("old")
    _accepted, frames = await ch.run_job(old, "chatty", {"n": 5})
    numbers = seqs(frames)
    await old.send("session.ack", {"last_processed_seq": numbers[-1]})
    await trio.sleep(0.2)
    await old.drop()
    peer, reply = await ch.resume(old, numbers[0])
    if peer is None:
        expect(
            code(reply) == "RESUME_WINDOW_EXPIRED",
            f"refused with {brief(reply)}, not RESUME_WINDOW_EXPIRED",
        )
        ch.note("uncovered resume", "RESUME_WINDOW_EXPIRED", "spec")
        return "RESUME_WINDOW_EXPIRED after the acked events were freed"
    # Welcomed: acceptable only if the runtime kept the events (ack is advisory, §6.5).
    replay = await peer.quiet(min(ch.wait, 1.0))
    replayed = seqs(replay)
    wanted = numbers[1:]
    expect(
        replayed[: len(wanted)] == wanted,
        f"welcomed from seq {numbers[0]} but replayed {replayed or 'nothing'} "
        f"(expected {wanted} or RESUME_WINDOW_EXPIRED): a silent gap",
    )
    return "the runtime kept the acknowledged events and replayed them"


@requirement(
    "resume.window-expired", "6.3", "resume after the resume window gets RESUME_WINDOW_EXPIRED"
)
async def resume_window_expired(ch: Checker) -> str:
    window = ch.resume_window
    if window is None or window > ch.max_timing_sec:
        raise Skip(
            f"resume_window_sec={window} is longer than --max-timing {ch.max_timing_sec:g} s"
        )
    old = await ch.session("old")
    await old.drop()
    await trio.sleep(window + 0.5)
    peer, reply = await ch.resume(old, 0, retry=False)
    expect(peer is None, "resumed after the window had ended")
    note = code(reply)
    ch.note("expired resume", str(note), "spec" if note == "RESUME_WINDOW_EXPIRED" else "reference")
    expect(note == "RESUME_WINDOW_EXPIRED", f"refused with {brief(reply)}")
    return "RESUME_WINDOW_EXPIRED"


# == §6.4 heartbeats ===========================================================================


@requirement(
    "heartbeat.pong",
    "6.4",
    "session.ping is answered promptly by a session.pong with its nonce",
    "MUST",
)
async def heartbeat_pong(ch: Checker) -> str:
    peer = await ch.session("a", features=SPEC_FEATURES)
    limit = min(ch.wait, ch.heartbeat_interval or ch.wait)
    expect(await still_alive(peer, limit), f"no session.pong with our nonce within {limit:g} s")
    return "pong with ping_nonce"


@requirement(
    "heartbeat.ping",
    "6.4",
    "an idle session gets a session.ping (no event_seq) each interval",
    "SHOULD",
)
async def heartbeat_ping(ch: Checker) -> str:
    ch.require_feature("heartbeat")
    interval = ch.heartbeat_interval
    if interval is None or interval > ch.max_timing_sec:
        raise Skip(f"heartbeat_interval_sec={interval} is longer than --max-timing")
    peer = await ch.session("a", features=SPEC_FEATURES)
    limit = interval * 1.5 + 1
    ping: Frame | None = None
    with trio.move_on_after(limit):
        while ping is None:
            frame = await peer.recv(within=limit + 1)
            if frame.get("type") == "session.ping":
                ping = frame
    expect(ping is not None, f"no session.ping within {limit:g} s of silence")
    assert ping is not None
    expect("event_seq" not in ping, "session.ping carries an event_seq")
    expect(isinstance(payload(ping).get("nonce"), str), "session.ping has no nonce")
    return f"pinged within 1.5 intervals ({interval:g} s)"


@requirement(
    "heartbeat.jobs-survive", "6.4", "heartbeat loss ends the connection, never the job", "MUST"
)
async def heartbeat_jobs_survive(ch: Checker) -> str:
    ch.require_feature("heartbeat")
    ch.require_feature("list_jobs")
    interval = ch.heartbeat_interval
    if interval is None or interval > ch.max_timing_sec:
        raise Skip(f"heartbeat_interval_sec={interval} is longer than --max-timing")
    seconds = round(3 * interval + 0.5, 1)
    peer = await ch.session("silent", features=SPEC_FEATURES)
    accepted = await peer.submit("slow", {"seconds": seconds})
    expect(accepted.get("type") == "job.accepted", f"submit answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    # Go silent: read, but answer nothing, until the runtime gives up on us.
    peer.answer_pings = False
    closed = False
    with trio.move_on_after(3 * interval + 1):
        try:
            while True:
                await peer.recv(within=4 * interval + 2)
        except PeerClosed:
            closed = True
    watcher = await ch.session("watcher")
    status = await job_status(watcher, job_id)
    expect(status in ("running", "pending"), f"job status {status!r} after the silence")
    deadline = trio.current_time() + seconds + ch.wait
    while status in ("running", "pending") and trio.current_time() < deadline:
        await trio.sleep(0.25)
        status = await job_status(watcher, job_id)
    expect(status == "success", f"job ended {status!r} (expected success)")
    how = "the runtime closed the silent connection" if closed else "connection stayed open"
    return f"{how}; the job still ran to success"


async def job_status(peer: Peer, job_id: str) -> str | None:
    cursor: str | None = None
    for _ in range(100):
        request: dict[str, Any] = {"limit": 100}
        if cursor:
            request["cursor"] = cursor
        reply = await list_jobs(peer, **request)
        expect(reply.get("type") == "session.jobs", f"list_jobs answered by {brief(reply)}")
        body = payload(reply)
        for entry in body.get("jobs") or []:
            if entry.get("job_id") == job_id:
                return str(entry.get("status"))
        cursor = body.get("next_cursor")
        if not cursor:
            return None
    return None


# == §6.5 ack ==================================================================================


@requirement("ack.not-in-seq", "6.5", "session.ack is accepted silently and takes no event_seq")
async def ack_not_in_seq(ch: Checker) -> str:
    ch.require_feature("ack")
    peer = await ch.session("a")
    _accepted, frames = await ch.run_job(peer, "echo", {"ack": 1})
    first = seqs(frames)
    await peer.send("session.ack", {"last_processed_seq": first[-1]})
    _accepted, more = await ch.run_job(peer, "echo", {"ack": 2})
    errors = [f for f in more if f.get("type") == "session.error"]
    expect(not errors, f"ack answered by {brief(errors[0]) if errors else ''}")
    check_consecutive(seqs(more), first[-1], "after the ack")
    return "no reply; numbering continued"


@requirement(
    "ack.unacked-kept", "6.5", "events not yet acknowledged are replayed on resume", "MUST"
)
async def ack_unacked_kept(ch: Checker) -> str:
    ch.require_feature("ack")
    old = await ch.session("old")
    _accepted, frames = await ch.run_job(old, "chatty", {"n": 6})
    numbers = seqs(frames)
    acked = numbers[1]
    await old.send("session.ack", {"last_processed_seq": acked})
    await trio.sleep(0.2)
    await old.drop()
    peer, reply = await ch.resume(old, acked)
    expect(peer is not None, f"resume answered by {brief(reply)}")
    assert peer is not None
    replay = await peer.quiet(min(ch.wait, 1.0))
    expect(seqs(replay) == numbers[2:], f"replayed {seqs(replay)}, expected {numbers[2:]}")
    return f"acked {acked}, replayed {numbers[2]}..{numbers[-1]}"


# == §6.6 list_jobs ============================================================================


@requirement(
    "list_jobs.own", "6.6", "list_jobs shows the principal's jobs with name@version and status"
)
async def list_jobs_own(ch: Checker) -> str:
    ch.require_feature("list_jobs")
    peer = await ch.session("a")
    accepted, _frames = await ch.run_job(peer, "echo", {"list": 1})
    job_id = job_id_of(accepted)
    other = await ch.session("b")
    entry = await find_entry(other, job_id)
    expect(entry is not None, f"{job_id} not listed for its own principal")
    assert entry is not None
    expect(entry.get("agent") == "echo@2.0.0", f"agent {entry.get('agent')!r}, not echo@2.0.0")
    expect(entry.get("status") == "success", f"status {entry.get('status')!r}")
    return "listed from another session of the same principal"


async def find_entry(peer: Peer, job_id: str, **filters: Any) -> dict[str, Any] | None:
    cursor: str | None = None
    for _ in range(200):
        request: dict[str, Any] = {"limit": 100, **filters}
        if cursor:
            request["cursor"] = cursor
        reply = await list_jobs(peer, **request)
        expect(reply.get("type") == "session.jobs", f"list_jobs answered by {brief(reply)}")
        body = payload(reply)
        for entry in body.get("jobs") or []:
            if entry.get("job_id") == job_id:
                return dict(entry)
        cursor = body.get("next_cursor")
        if not cursor:
            return None
    return None


@requirement(
    "list_jobs.scoping",
    "6.6",
    "another principal's jobs are not listed (no existence leak)",
    "MUST",
)
async def list_jobs_scoping(ch: Checker) -> str:
    ch.require_feature("list_jobs")
    stranger = await ch.other_session("b")
    peer = await ch.session("a")
    accepted, _frames = await ch.run_job(peer, "echo", {"scope": 1})
    entry = await find_entry(stranger, job_id_of(accepted))
    expect(entry is None, "another principal sees the job in list_jobs")
    return "not listed for the other principal"


@requirement("list_jobs.filter", "6.6", "status and agent filters select matching jobs only")
async def list_jobs_filter(ch: Checker) -> str:
    ch.require_feature("list_jobs")
    peer = await ch.session("a")
    accepted, _frames = await ch.run_job(peer, "echo@1.0.0", {"filter": 1})
    job_id = job_id_of(accepted)
    reply = await list_jobs(peer, filter={"status": ["success"], "agent": "echo@1.0.0"}, limit=1000)
    expect(reply.get("type") == "session.jobs", f"answered by {brief(reply)}")
    jobs = payload(reply).get("jobs") or []
    wrong = [j for j in jobs if j.get("status") != "success" or j.get("agent") != "echo@1.0.0"]
    expect(not wrong, f"filter let through {wrong[:1]}")
    if not any(j.get("job_id") == job_id for j in jobs):
        expect(payload(reply).get("next_cursor"), f"{job_id} missing from the filtered list")
    reply = await list_jobs(peer, filter={"status": ["cancelled"], "agent": "echo@1.0.0"})
    jobs = payload(reply).get("jobs") or []
    expect(all(j.get("job_id") != job_id for j in jobs), "a success job matched status=cancelled")
    return "status + agent filters"


@requirement(
    "list_jobs.paging", "6.6", "limit and next_cursor page through jobs without duplicates"
)
async def list_jobs_paging(ch: Checker) -> str:
    ch.require_feature("list_jobs")
    peer = await ch.session("a")
    mine = []
    for i in range(3):
        accepted, _frames = await ch.run_job(peer, "echo", {"page": i})
        mine.append(job_id_of(accepted))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while pages < 500:
        request: dict[str, Any] = {"limit": 2}
        if cursor:
            request["cursor"] = cursor
        reply = await list_jobs(peer, **request)
        expect(reply.get("type") == "session.jobs", f"answered by {brief(reply)}")
        body = payload(reply)
        jobs = body.get("jobs") or []
        expect(len(jobs) <= 2, f"a page of {len(jobs)} jobs for limit=2")
        seen += [str(j.get("job_id")) for j in jobs]
        pages += 1
        cursor = body.get("next_cursor")
        if not cursor:
            break
    duplicates = {j for j in seen if seen.count(j) > 1}
    expect(not duplicates, f"listed twice: {sorted(duplicates)[:3]}")
    missing = [j for j in mine if j not in seen]
    expect(not missing, f"never listed: {missing}")
    return f"{pages} pages of ≤2, {len(seen)} jobs, no duplicates"


# == §6.7 close ================================================================================


@requirement("close.closed", "6.7", "session.close is acknowledged with session.closed")
async def close_closed(ch: Checker) -> str:
    peer = await ch.session("a")
    await peer.send("session.close", {"reason": "conformance"})
    try:
        reply = await peer.recv_type("session.closed", "session.error", within=min(ch.wait, 3))
    except (trio.TooSlowError, PeerClosed):
        reply = None
    ok = reply is not None and reply.get("type") == "session.closed"
    ch.note(
        "close",
        "session.close → session.closed" if ok else "session.close refused",
        "spec" if ok else "reference",
    )
    expect(ok, f"session.close answered by {brief(reply)}")
    return "session.closed"


@requirement("close.jobs-continue", "6.7", "after close, jobs keep running and remain resumable")
async def close_jobs_continue(ch: Checker) -> str:
    old = await ch.session("old")
    accepted = await old.submit("ticker", TICKS)
    expect(accepted.get("type") == "job.accepted", f"submit answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    first = await old.recv_until(lambda f: len(events_of([f], job_id)) == 1 and f["event_seq"] >= 2)
    last_seq = seqs(first)[-1]
    await old.send("session.close", {"reason": "conformance"})
    try:
        closing = await old.recv_type("session.closed", "session.error", within=2)
    except (trio.TooSlowError, PeerClosed):
        closing = None
    how = "session.close"
    if closing is None or closing.get("type") != "session.closed":
        how = "session.bye (session.close was refused)"
        await old.send("session.bye", {"reason": "conformance"})
    seen = seqs([f for f in old.backlog if is_terminal(f) or f.get("type") == "job.event"])
    last_seq = max([last_seq, *seen])
    await old.aclose()
    peer, reply = await ch.resume(old, last_seq)
    expect(peer is not None, f"resume after {how} answered by {brief(reply)}")
    assert peer is not None
    rest, finished = await collect(peer, job_id, ch.wait)
    if not finished:
        got = seqs(rest)
        raise Fail(
            f"closed with {how} after seq {last_seq}; after resume no terminal within "
            f"{ch.wait:g} s, received {f'seq {got}' if got else 'nothing'}"
        )
    check_consecutive(seqs(rest), last_seq, "after resume")
    expect(rest[-1].get("type") == "job.result", f"ended {brief(rest[-1])}")
    return f"closed with {how}; resumed and the job finished"


# == §7.1 submit ===============================================================================


@requirement(
    "submit.accepted", "7.1", "job.accepted echoes the effective lease and lease_constraints"
)
async def submit_accepted(ch: Checker) -> str:
    peer = await ch.session("a")
    lease = {"fs.read": ["/data/**"]}
    expires = future(3600)
    accepted = await peer.submit(
        "echo", {"lease": 1}, lease_request=lease, lease_constraints={"expires_at": expires}
    )
    expect(accepted.get("type") == "job.accepted", f"answered by {brief(accepted)}")
    body = payload(accepted)
    expect(isinstance(body.get("job_id"), str), "no job_id in the payload")
    expect(body.get("lease") == lease, f"lease echoed as {body.get('lease')!r}")
    constraints = body.get("lease_constraints") or {}
    expect("expires_at" in constraints, f"lease_constraints echoed as {constraints!r}")
    return "lease and expires_at echoed"


@requirement("submit.budget", "7.1", "job.accepted initialises budget counters as numbers")
async def submit_budget(ch: Checker) -> str:
    ch.require_feature("cost.budget")
    peer = await ch.session("a")
    accepted = await peer.submit("echo", {"budget": 1}, lease_request={"cost.budget": ["USD:1.00"]})
    expect(accepted.get("type") == "job.accepted", f"answered by {brief(accepted)}")
    budget = payload(accepted).get("budget")
    expect(isinstance(budget, dict) and "USD" in budget, f"budget {budget!r}")
    assert isinstance(budget, dict)
    value = budget["USD"]
    if isinstance(value, str):
        ch.note("budget values", f"strings ({value!r})", "reference")
        raise Fail(f'budget {{"USD": {value!r}}}: a string, §7.1 shows numbers ({{"USD": 1.0}})')
    ch.note("budget values", "numbers", "spec")
    expect(isinstance(value, int | float) and float(value) == 1.0, f"budget USD={value!r}")
    return 'budget {"USD": 1.0}'


# == §7.2 idempotency ==========================================================================


@requirement(
    "idempotency.replay", "7.2", "same idempotency_key and parameters return the same job", "MUST"
)
async def idempotency_replay(ch: Checker) -> str:
    peer = await ch.session("a")
    key = f"conformance-{trio.current_time():.9f}"
    first = await peer.submit("echo", {"idem": 1}, idempotency_key=key)
    expect(first.get("type") == "job.accepted", f"answered by {brief(first)}")
    await ch.terminal(peer, job_id_of(first))
    again_peer = await ch.session("b")
    again = await again_peer.submit("echo", {"idem": 1}, idempotency_key=key)
    expect(again.get("type") == "job.accepted", f"the repeat was answered by {brief(again)}")
    expect(job_id_of(again) == job_id_of(first), "the repeat started a different job")
    return "same job_id from another session"


@requirement("idempotency.conflict", "7.2", "a reused key with other parameters gets DUPLICATE_KEY")
async def idempotency_conflict(ch: Checker) -> str:
    peer = await ch.session("a")
    key = f"conformance-dup-{trio.current_time():.9f}"
    first = await peer.submit("echo", {"idem": 1}, idempotency_key=key)
    expect(first.get("type") == "job.accepted", f"answered by {brief(first)}")
    second = await peer.submit("echo", {"idem": 2}, idempotency_key=key)
    expect(code(second) == "DUPLICATE_KEY", f"answered by {brief(second)}")
    note_error_correlation(ch, second, str(second.get("_request_id")))
    return "DUPLICATE_KEY"


# == §7.3-§7.4 lifecycle, cancellation, timeout ================================================


async def cancelled_job(ch: Checker) -> tuple[Peer, str, list[Frame]]:
    peer = await ch.session("a")
    accepted = await peer.submit("slow", {"seconds": 30})
    expect(accepted.get("type") == "job.accepted", f"answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    await peer.recv_until(lambda f: f.get("job_id") == job_id and f.get("type") == "job.event")
    await send_cancel(peer, job_id)
    frames = await ch.terminal(peer, job_id)
    frames += await peer.quiet(0.2)
    return peer, job_id, frames


@requirement("cancel.ack", "7.4", "job.cancel is acknowledged with job.cancelled")
async def cancel_ack(ch: Checker) -> str:
    _peer, _job_id, frames = await cancelled_job(ch)
    acks = [f for f in frames if f.get("type") == "job.cancelled"]
    expect(acks, "no job.cancelled frame")
    return "job.cancelled"


@requirement(
    "cancel.terminal", "7.4", "a cancelled job ends in job.error CANCELLED, final_status cancelled"
)
async def cancel_terminal(ch: Checker) -> str:
    _peer, job_id, frames = await cancelled_job(ch)
    terminal = next(f for f in frames if is_terminal(f, job_id))
    body = payload(terminal)
    if terminal.get("type") == "job.result" and body.get("final_status") == "cancelled":
        ch.note("cancel terminal", "job.result {final_status: cancelled}", "reference")
        raise Fail(
            "job.result {final_status: cancelled} (reference dialect), not job.error CANCELLED"
        )
    expect(
        terminal.get("type") == "job.error"
        and body.get("code") == "CANCELLED"
        and body.get("final_status") == "cancelled",
        f"ended with {brief(terminal)} final_status={body.get('final_status')!r}",
    )
    ch.note("cancel terminal", "job.error {CANCELLED, final_status: cancelled}", "spec")
    return "job.error CANCELLED / cancelled"


@requirement("cancel.subscriber", "7.6", "a subscriber cannot cancel the job it observes", "MUST")
async def cancel_subscriber(ch: Checker) -> str:
    ch.require_feature("subscribe")
    owner = await ch.session("owner")
    accepted = await owner.submit("slow", {"seconds": 30})
    expect(accepted.get("type") == "job.accepted", f"answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    watcher = await ch.session("watcher")
    subscribed = await subscribe(watcher, job_id, history=False)
    expect(subscribed.get("type") == "job.subscribed", f"subscribe answered by {brief(subscribed)}")
    await send_cancel(watcher, job_id)
    refused = await watcher.quiet(0.5)
    ended = [f for f in await owner.quiet(0.3) if is_terminal(f, job_id)]
    await send_cancel(owner, job_id)  # clean up
    expect(not ended, f"the subscriber's cancel ended the job: {brief(ended[0]) if ended else ''}")
    errors = [code(f) for f in refused if f.get("type") == "session.error"]
    return f"refused ({', '.join(str(e) for e in errors) or 'no reply'}); the job kept running"


@requirement(
    "timeout", "7.3", "max_runtime_sec ends the job in job.error TIMEOUT, final_status timed_out"
)
async def timeout(ch: Checker) -> str:
    peer = await ch.session("a")
    accepted = await peer.submit("slow", {"seconds": 30}, max_runtime_sec=1)
    expect(accepted.get("type") == "job.accepted", f"answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    frames = await ch.terminal(peer, job_id, wait=ch.wait + 1)
    terminal = frames[-1]
    body = payload(terminal)
    if terminal.get("type") == "job.result" and body.get("final_status") == "timed_out":
        ch.note("timeout terminal", "job.result {final_status: timed_out}", "reference")
        raise Fail(
            "job.result {final_status: timed_out} (reference dialect), not job.error TIMEOUT"
        )
    expect(
        terminal.get("type") == "job.error"
        and body.get("code") == "TIMEOUT"
        and body.get("final_status") == "timed_out",
        f"ended with {brief(terminal)} final_status={body.get('final_status')!r}",
    )
    ch.note("timeout terminal", "job.error {TIMEOUT, final_status: timed_out}", "spec")
    return "job.error TIMEOUT / timed_out after 1 s"


# == §7.5 versions =============================================================================


async def _echo_runs_version(ch: Checker, ref: str, version: str) -> None:
    """Submit ``echo`` as ``ref``: it must be accepted as, and run, ``echo@version``."""
    peer = await ch.session("a")
    accepted, frames = await ch.run_job(peer, ref, {"v": ref})
    expect(
        payload(accepted).get("agent") == f"echo@{version}",
        f"accepted as {payload(accepted).get('agent')!r}",
    )
    result = payload(frames[-1]).get("result") or {}
    expect(result.get("version") == version, f"ran version {result.get('version')!r}")


@requirement("versions.default", "7.5", "a bare agent name resolves to the advertised default")
async def versions_default(ch: Checker) -> str:
    await _echo_runs_version(ch, "echo", "2.0.0")
    return "echo → echo@2.0.0"


@requirement("versions.pinned", "7.5", "name@version runs exactly that version")
async def versions_pinned(ch: Checker) -> str:
    await _echo_runs_version(ch, "echo@1.0.0", "1.0.0")
    return "echo@1.0.0 ran 1.0.0"


@requirement(
    "versions.unknown-version", "7.5", "an unknown version gets AGENT_VERSION_NOT_AVAILABLE"
)
async def versions_unknown_version(ch: Checker) -> str:
    peer = await ch.session("a")
    reply = await peer.submit("echo@9.9.9", {})
    expect(code(reply) == "AGENT_VERSION_NOT_AVAILABLE", f"answered by {brief(reply)}")
    return "AGENT_VERSION_NOT_AVAILABLE"


@requirement("versions.unknown-agent", "12", "an unknown agent gets AGENT_NOT_AVAILABLE")
async def versions_unknown_agent(ch: Checker) -> str:
    peer = await ch.session("a")
    reply = await peer.submit("no-such-agent", {})
    expect(code(reply) == "AGENT_NOT_AVAILABLE", f"answered by {brief(reply)}")
    note_error_correlation(ch, reply, str(reply.get("_request_id")))
    return "AGENT_NOT_AVAILABLE"


# == §7.6 subscribe ============================================================================


@requirement(
    "subscribe.history", "7.6", "subscribe with history replays the job's events, then its terminal"
)
async def subscribe_history(ch: Checker) -> str:
    ch.require_feature("subscribe")
    owner = await ch.session("owner")
    accepted, _frames = await ch.run_job(owner, "ticker", FAST_TICKS)
    job_id = job_id_of(accepted)
    watcher = await ch.session("watcher")
    subscribed = await subscribe(watcher, job_id, history=True, from_event_seq=0)
    expect(subscribed.get("type") == "job.subscribed", f"answered by {brief(subscribed)}")
    body = payload(subscribed)
    for key in ("job_id", "current_status", "agent"):
        expect(key in body, f"job.subscribed has no {key}")
    frames = await watcher.quiet(min(ch.wait, 1.0))
    ticks = [payload(f)["body"].get("current") for f in events_of(frames, job_id, "progress")]
    expect(ticks == list(range(1, FAST_TICKS["count"] + 1)), f"history progress {ticks}")
    terminals = [f for f in frames if is_terminal(f, job_id)]
    expect(terminals, "history ended without the job's terminal")
    return f"{len(ticks)} events and the terminal replayed"


@requirement("subscribe.live", "7.6", "a subscriber receives the job's live events and terminal")
async def subscribe_live(ch: Checker) -> str:
    ch.require_feature("subscribe")
    owner = await ch.session("owner")
    accepted = await owner.submit("ticker", TICKS)
    expect(accepted.get("type") == "job.accepted", f"answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    watcher = await ch.session("watcher")
    subscribed = await subscribe(watcher, job_id, history=False)
    expect(subscribed.get("type") == "job.subscribed", f"answered by {brief(subscribed)}")
    frames = await ch.terminal(watcher, job_id)
    live = events_of(frames, job_id, "progress")
    expect(live, "no live events")
    return f"{len(live)} live events and the terminal"


@requirement(
    "subscribe.seq",
    "8.3",
    "a session that submits and subscribes sees one gap-free event_seq across both jobs",
)
async def subscribe_seq(ch: Checker) -> str:
    ch.require_feature("subscribe")
    owner = await ch.session("owner")
    accepted, _frames = await ch.run_job(owner, "ticker", FAST_TICKS)
    job_id = job_id_of(accepted)
    watcher = await ch.session("watcher")
    _own, own_frames = await ch.run_job(watcher, "echo", {"seq": 1})
    subscribed = await subscribe(watcher, job_id, history=True, from_event_seq=0)
    expect(subscribed.get("type") == "job.subscribed", f"answered by {brief(subscribed)}")
    frames = await watcher.quiet(min(ch.wait, 1.0))
    numbers = seqs(own_frames) + seqs(frames)
    if len(set(numbers)) != len(numbers):
        ch.note("event_seq", "numbered per subscription (collides)", "reference")
    else:
        ch.note("event_seq", "one sequence per session", "spec")
    check_consecutive(numbers, 0, "submitted then subscribed")
    return f"seq 1..{numbers[-1]} across both jobs"


@requirement(
    "subscribe.authz",
    "7.6",
    "another principal's subscribe is refused (PERMISSION_DENIED / JOB_NOT_FOUND)",
    "MUST",
)
async def subscribe_authz(ch: Checker) -> str:
    ch.require_feature("subscribe")
    stranger = await ch.other_session("b")
    owner = await ch.session("owner")
    accepted, _frames = await ch.run_job(owner, "echo", {"authz": 1})
    reply = await subscribe(stranger, job_id_of(accepted), history=True)
    expect(reply.get("type") == "session.error", "another principal was subscribed")
    expect(code(reply) in ("PERMISSION_DENIED", "JOB_NOT_FOUND"), f"answered by {brief(reply)}")
    leaked = events_of(stranger.backlog, job_id_of(accepted))
    expect(not leaked, "history was sent to the other principal")
    return str(code(reply))


@requirement(
    "subscribe.unsubscribe", "7.6", "after job.unsubscribe no more of the job's frames arrive"
)
async def subscribe_unsubscribe(ch: Checker) -> str:
    ch.require_feature("subscribe")
    owner = await ch.session("owner")
    accepted = await owner.submit("ticker", {"count": 12, "interval": 0.1})
    expect(accepted.get("type") == "job.accepted", f"answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    watcher = await ch.session("watcher")
    subscribed = await subscribe(watcher, job_id, history=False)
    expect(subscribed.get("type") == "job.subscribed", f"answered by {brief(subscribed)}")
    await watcher.recv_until(lambda f: f.get("job_id") == job_id and f.get("type") == "job.event")
    await watcher.send("job.unsubscribe", {"job_id": job_id}, job_id=job_id)
    await watcher.quiet(0.25)  # frames already in flight
    late = [f for f in await watcher.quiet(0.6) if f.get("job_id") == job_id]
    expect(not late, f"{len(late)} frames of the job after unsubscribe")
    await ch.terminal(owner, job_id)
    return "quiet after unsubscribe"


# == §8 events =================================================================================


@requirement(
    "events.envelope", "8.1", "job.event carries session_id, job_id, event_seq, kind and body"
)
async def events_envelope(ch: Checker) -> str:
    peer = await ch.session("a")
    accepted, frames = await ch.run_job(peer, "ticker", FAST_TICKS)
    events = events_of(frames, job_id_of(accepted))
    expect(events, "no job.event")
    for frame in events:
        body = payload(frame)
        expect(isinstance(frame.get("session_id"), str), f"no session_id on {brief(frame)}")
        expect(isinstance(frame.get("event_seq"), int), f"no event_seq on {brief(frame)}")
        expect(isinstance(body.get("kind"), str), "no payload.kind")
        expect(isinstance(body.get("body"), dict), "payload.body is not an object")
    return f"{len(events)} events well-formed"


@requirement("events.progress", "8.2.1", "progress bodies: current ≥ 0, ≤ total, units", "MUST")
async def events_progress(ch: Checker) -> str:
    peer = await ch.session("a")
    accepted, frames = await ch.run_job(peer, "ticker", FAST_TICKS)
    bodies = [payload(f)["body"] for f in events_of(frames, job_id_of(accepted), "progress")]
    expect(len(bodies) == FAST_TICKS["count"], f"{len(bodies)} progress events")
    for body in bodies:
        current, total = body.get("current"), body.get("total")
        expect(isinstance(current, int | float) and current >= 0, f"current {current!r}")
        expect(total is None or current <= total, f"current {current} > total {total}")
        expect(body.get("units") == "ticks", f"units {body.get('units')!r}")
    return f"{len(bodies)} progress events"


@requirement(
    "seq.monotonic", "8.3", "event_seq is strictly increasing and gap-free across concurrent jobs"
)
async def seq_monotonic(ch: Checker) -> str:
    peer = await ch.session("a")
    one = await peer.submit("ticker", FAST_TICKS)
    two = await peer.submit("chatty", {"n": 20})
    ids = {job_id_of(one), job_id_of(two)}
    done: set[str] = set()
    frames: list[Frame] = []

    def finished(frame: Frame) -> bool:
        if is_terminal(frame) and frame.get("job_id") in ids:
            done.add(str(frame["job_id"]))
        return done == ids

    frames = await peer.recv_until(finished, within=ch.wait)
    check_consecutive(seqs(frames), 0, "two concurrent jobs")
    return f"seq 1..{seqs(frames)[-1]}"


@requirement("seq.reconnects", "8.3", "event_seq stays gap-free across two drops and resumes")
async def seq_reconnects(ch: Checker) -> str:
    peer = await ch.session("first")
    accepted = await peer.submit("ticker", {"count": 10, "interval": 0.1})
    expect(accepted.get("type") == "job.accepted", f"answered by {brief(accepted)}")
    job_id = job_id_of(accepted)
    everything: list[Frame] = []
    for round_ in range(2):
        try:
            everything += await peer.recv_until(
                lambda f: f.get("type") == "job.event" and f.get("job_id") == job_id,
                within=ch.wait,
            )
        except trio.TooSlowError:
            raise Fail(
                f"after resume {round_}: no event within {ch.wait:g} s "
                f"(received seq {seqs(everything)}; events after the drop were lost)"
            ) from None
        await peer.drop()
        resumed, reply = await ch.resume(peer, seqs(everything)[-1], label=f"resumed-{round_}")
        expect(resumed is not None, f"resume {round_ + 1} answered by {brief(reply)}")
        assert resumed is not None
        peer = resumed
    rest, finished = await collect(peer, job_id, ch.wait)
    everything += rest
    if not finished:
        raise Fail(
            f"after two resumes: no terminal within {ch.wait:g} s "
            f"(received seq {seqs(everything)}; events after the drops were lost)"
        )
    check_consecutive(seqs(everything), 0, "across reconnects")
    ticks = [payload(f)["body"].get("current") for f in events_of(everything, job_id)]
    expect(ticks == list(range(1, 11)), f"progress currents {ticks}")
    return f"seq 1..{seqs(everything)[-1]} through two resumes"


@requirement(
    "result.chunks",
    "8.4",
    "a streamed result: ordered chunks, more=false last, job.result result_id",
    "MUST",
)
async def result_chunks(ch: Checker) -> str:
    peer = await ch.session("a")
    accepted, frames = await ch.run_job(peer, "chunker", {"chunks": 4, "size": 8})
    chunks = [payload(f)["body"] for f in events_of(frames, job_id_of(accepted), "result_chunk")]
    expect(chunks, "no result_chunk events")
    result_ids = {c.get("result_id") for c in chunks}
    expect(len(result_ids) == 1, f"result_ids {result_ids}")
    expect([c.get("chunk_seq") for c in chunks] == list(range(len(chunks))), "chunk_seq not 0..n")
    expect(all(c.get("more") is True for c in chunks[:-1]), "more=false before the last chunk")
    expect(chunks[-1].get("more") is False, "the last chunk does not say more=false")
    data = b""
    for c in chunks:
        expect(c.get("encoding") in ("utf8", "base64"), f"encoding {c.get('encoding')!r}")
        raw = str(c.get("data", ""))
        data += base64.b64decode(raw) if c.get("encoding") == "base64" else raw.encode()
    expected = b"".join(bytes([ord("a") + i]) * 8 for i in range(4))
    expect(data == expected, f"assembled {data!r}")
    terminal = payload(frames[-1])
    expect(frames[-1].get("type") == "job.result", f"ended with {brief(frames[-1])}")
    expect(terminal.get("result_id") in result_ids, "job.result has no matching result_id")
    expect(terminal.get("result") is None, "inline result mixed with chunks")
    return f"{len(chunks)} chunks assembled to {len(data)} bytes"


# == §9 leases and budgets =====================================================================


@requirement("lease.expires-past", "9.5", "an expires_at in the past is INVALID_REQUEST", "MUST")
async def lease_expires_past(ch: Checker) -> str:
    peer = await ch.session("a")
    reply = await peer.submit("echo", {}, lease_constraints={"expires_at": future(-60)})
    expect(code(reply) == "INVALID_REQUEST", f"answered by {brief(reply)}")
    return "INVALID_REQUEST"


@requirement(
    "lease.expires-utc", "9.5", "an expires_at that is not UTC ('Z') is INVALID_REQUEST", "MUST"
)
async def lease_expires_utc(ch: Checker) -> str:
    peer = await ch.session("a")
    moment = (system_wall_clock() + timedelta(hours=1)).astimezone()
    text = moment.replace(microsecond=0).isoformat()
    if text.endswith("+00:00"):
        text = text.replace("+00:00", "+02:00")
    reply = await peer.submit("echo", {}, lease_constraints={"expires_at": text})
    expect(code(reply) == "INVALID_REQUEST", f"{text} answered by {brief(reply)}")
    return "INVALID_REQUEST"


@requirement(
    "lease.denied", "9.3", "an operation outside the lease fails with PERMISSION_DENIED", "MUST"
)
async def lease_denied(ch: Checker) -> str:
    peer = await ch.session("a")
    _accepted, frames = await ch.run_job(
        peer, "spender", {"steps": 1, "cost": 0.1}, lease_request={"tool.call": ["other-tool"]}
    )
    expect(code(frames[-1]) == "PERMISSION_DENIED", f"ended with {brief(frames[-1])}")
    expect(payload(frames[-1]).get("retryable") is False, "PERMISSION_DENIED marked retryable")
    return "job.error PERMISSION_DENIED"


@requirement(
    "lease.expired",
    "9.5",
    "an operation after expires_at fails with LEASE_EXPIRED, not retryable",
    "MUST",
)
async def lease_expired(ch: Checker) -> str:
    ch.require_agent("toucher")
    ch.require_feature("lease_expires_at")
    peer = await ch.session("a")
    _accepted, frames = await ch.run_job(
        peer,
        "toucher",
        {"namespace": "fs.read", "target": "/data/a", "delay": 1.5},
        lease_request={"fs.read": ["/data/**"]},
        lease_constraints={"expires_at": future(1.0)},
    )
    expect(code(frames[-1]) == "LEASE_EXPIRED", f"ended with {brief(frames[-1])}")
    expect(payload(frames[-1]).get("retryable") is False, "LEASE_EXPIRED marked retryable")
    return "job.error LEASE_EXPIRED"


@requirement(
    "budget.exhausted",
    "9.6",
    "cost metrics decrement the budget; at ≤ 0 BUDGET_EXHAUSTED, not retryable",
    "MUST",
)
async def budget_exhausted(ch: Checker) -> str:
    ch.require_feature("cost.budget")
    peer = await ch.session("a")
    accepted, frames = await ch.run_job(
        peer,
        "spender",
        {"steps": 5, "cost": 0.4},
        lease_request={"tool.call": ["search"], "cost.budget": ["USD:1.00"]},
    )
    costs = [
        f
        for f in events_of(frames, job_id_of(accepted), "metric")
        if payload(f)["body"].get("name") == "cost.inference"
    ]
    expect(len(costs) == 3, f"{len(costs)} cost metrics before the budget ran out (expected 3)")
    terminal = frames[-1]
    expect(code(terminal) == "BUDGET_EXHAUSTED", f"ended with {brief(terminal)}")
    body = payload(terminal)
    expect(body.get("retryable") is False, "BUDGET_EXHAUSTED marked retryable")
    expect(
        body.get("final_status", "error") == "error", f"final_status {body.get('final_status')!r}"
    )
    return "3 x 0.4 USD against 1.00, then BUDGET_EXHAUSTED"


# == §12 errors and malformed input ============================================================


async def malformed(ch: Checker, text: str) -> str:
    peer = await ch.session("a")
    await peer.send_text(text)
    reply = await error_reply(peer, min(ch.wait, 3))
    expect(code(reply) == "INVALID_REQUEST", f"answered by {brief(reply)}")
    alive = await still_alive(peer, min(ch.wait, 2))
    return "INVALID_REQUEST; " + ("the session continued" if alive else "then the session ended")


@requirement("errors.not-json", "12", "a frame that is not JSON gets INVALID_REQUEST")
async def errors_not_json(ch: Checker) -> str:
    return await malformed(ch, "{not json")


@requirement("errors.not-object", "12", "JSON that is not an object gets INVALID_REQUEST")
async def errors_not_object(ch: Checker) -> str:
    return await malformed(ch, "[1, 2, 3]")


@requirement("errors.bad-envelope", "12", "an envelope without an id gets INVALID_REQUEST")
async def errors_bad_envelope(ch: Checker) -> str:
    return await malformed(ch, '{"arcp":"1.1","type":"job.submit","payload":{"agent":"echo"}}')


@requirement("errors.unknown-type", "12", "an unknown message type gets INVALID_REQUEST")
async def errors_unknown_type(ch: Checker) -> str:
    peer = await ch.session("a")
    request_id = await peer.send("x.conformance.bogus", {})
    reply = await error_reply(peer, min(ch.wait, 3))
    expect(code(reply) == "INVALID_REQUEST", f"answered by {brief(reply)}")
    note_error_correlation(ch, reply, request_id)
    return "INVALID_REQUEST"


@requirement(
    "errors.schema", "12", "a schema violation (job.submit without agent) gets INVALID_REQUEST"
)
async def errors_schema(ch: Checker) -> str:
    peer = await ch.session("a")
    await peer.send("job.submit", {"input": {}})
    reply = await error_reply(peer, min(ch.wait, 3))
    expect(code(reply) == "INVALID_REQUEST", f"answered by {brief(reply)}")
    return "INVALID_REQUEST"


@requirement("errors.job-not-found", "12", "cancelling an unknown job gets JOB_NOT_FOUND")
async def errors_job_not_found(ch: Checker) -> str:
    peer = await ch.session("a")
    await send_cancel(peer, "job_01JZZZZZZZZZZZZZZZZZZZZZZZ")
    reply = await error_reply(peer, min(ch.wait, 3))
    expect(code(reply) == "JOB_NOT_FOUND", f"answered by {brief(reply)}")
    return "JOB_NOT_FOUND"


@requirement(
    "run.retryable",
    "12",
    "errors carry a boolean retryable: INTERNAL_ERROR true, LEASE_EXPIRED/BUDGET_EXHAUSTED false",
    "MUST",
)
async def run_retryable(ch: Checker) -> str:
    errors = [f for f in ch.all_frames if f.get("type") in ("session.error", "job.error")]
    if not errors:
        raise Skip("no error frames were seen in this run")
    for frame in errors:
        body = payload(frame)
        retryable = body.get("retryable")
        expect(isinstance(retryable, bool), f"{brief(frame)}: retryable={retryable!r}")
        if body.get("code") == "INTERNAL_ERROR":
            expect(retryable is True, f"{brief(frame)} is not retryable")
        if body.get("code") in ("LEASE_EXPIRED", "BUDGET_EXHAUSTED"):
            expect(retryable is False, f"{brief(frame)} is retryable")
    return f"{len(errors)} error frames checked"
