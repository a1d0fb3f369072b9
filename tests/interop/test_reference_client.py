"""The reference client (agentruntimecontrolprotocol 1.1.3) against our runtime.

Each test runs one ``ref_driver.py`` scenario in a subprocess and asserts the behaviour
arcp_trio promises (docs: /work/shared/WIRE.md "Decisions"), including where it deliberately
differs from the reference runtime: jobs and their events survive disconnects, resume
delivers every missed event and the terminal exactly once, ``RESUME_WINDOW_EXPIRED``,
correlated errors, ``job.cancelled``, one gap-free ``event_seq`` per session, and malformed
frames answered with ``INVALID_REQUEST`` without ending the session.

``ARCP_INTEROP_RUNTIME=reference`` runs the same assertions against the reference runtime
(``ref_server.py``); the tests that check those deliberate differences then fail there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.interop.conftest import runtime_kind
from tests.tls import make_tls

pytestmark = pytest.mark.interop

Report = dict[str, Any]
Driver = Callable[..., Report]

AGENTS = {
    "echo": (["1.0.0", "2.0.0"], "2.0.0"),
    "ticker": (["1.0.0"], "1.0.0"),
    "chunker": (["1.0.0"], "1.0.0"),
    "slow": (["1.0.0"], "1.0.0"),
    "spender": (["1.0.0"], "1.0.0"),
    "chatty": (["1.0.0"], "1.0.0"),
}


# --------------------------------------------------------------------------- helpers


def check(out: Report) -> Report:
    """Every scenario: no driver exception, and every frame parsed with the SDK's models."""
    assert out["ok"], f"driver failed: {out.get('exception')}\n{out.get('traceback')}"
    assert out["unparsed_frames"] == [], "frames the reference client cannot parse"
    assert out["body_violations"] == [], "event bodies the reference SDK rejects"
    return out


def job_frames(out: Report, conn: str, job_id: str) -> list[Report]:
    return [
        f
        for f in out["frames"]
        if f["conn"] == conn
        and not f.get("ignored")
        and f.get("job_id") == job_id
        and f.get("type") in ("job.event", "job.result", "job.error")
    ]


def shape(frames: list[Report]) -> list[tuple[str, int, str | None]]:
    """(type, event_seq, event kind) per job frame."""
    return [(f["type"], f["event_seq"], f["frame"]["payload"].get("kind")) for f in frames]


def payload(frame: Report | None) -> Report:
    assert frame is not None
    result: Report = frame["frame"]["payload"]
    return result


def run(driver: Driver, rt: Any, scenario: str, principal: str = "alice", **args: Any) -> Report:
    return check(driver(rt.url, rt.token_for(principal), scenario, args))


# --------------------------------------------------------------------------- handshake


def test_handshake(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "handshake")
    welcome = out["welcome"]
    frame = out["welcome_frame"]
    assert welcome["session_id"] == frame["session_id"] == out["session_id"]
    assert welcome["resume_token"]
    assert welcome["heartbeat_interval_sec"] == runtime.heartbeat_sec
    assert welcome["resume_window_sec"] == runtime.resume_window_sec
    assert set(out["negotiated"]) == set(out["client_features"])
    inventory = {
        a["name"]: (sorted(a["versions"]), a.get("default"))
        for a in welcome["capabilities"]["agents"]
    }
    # The six core demo agents, exactly; the runtime may host more.
    assert {name: inventory.get(name) for name in AGENTS} == AGENTS


# --------------------------------------------------------------------------- one job each


def test_echo(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "echo", input={"hello": "world"})
    assert out["accepted"]["agent"] == "echo@2.0.0"
    assert out["outcome"]["status"] == "result"
    assert out["outcome"]["payload"]["result"] == {"echo": {"hello": "world"}, "version": "2.0.0"}
    assert [e["kind"] for e in out["handle_events"]] == ["log"]
    assert shape(job_frames(out, "main", out["job_id"])) == [
        ("job.event", 1, "log"),
        ("job.result", 2, None),
    ]


def test_ticker(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "ticker", input={"count": 5, "interval": 0.05})
    assert [e["body"] for e in out["handle_events"]] == [
        {"current": i, "total": 5, "units": "ticks"} for i in range(1, 6)
    ]
    assert out["outcome"]["payload"]["result"] == {"ticks": 5}
    assert shape(job_frames(out, "main", out["job_id"])) == [
        *(("job.event", i, "progress") for i in range(1, 6)),
        ("job.result", 6, None),
    ]


def test_chunker(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "chunker", input={"chunks": 4, "size": 8})
    # Reassembled by the reference client's own JobHandle.collect_chunks().
    assert out["collected_text"] == "aaaaaaaa" + "bbbbbbbb" + "cccccccc" + "dddddddd"
    result = out["outcome"]["payload"]
    assert result["final_status"] == "success"
    assert result.get("result") is None
    assert result["result_id"]
    chunks = out["chunks"]
    assert {c["result_id"] for c in chunks} == {result["result_id"]}
    assert [c["chunk_seq"] for c in chunks] == list(range(len(chunks)))
    assert [c["more"] for c in chunks] == [True] * (len(chunks) - 1) + [False]
    data_chunks = [c for c in chunks if c["data"]]
    assert [c["encoding"] for c in data_chunks] == ["utf8", "base64", "utf8", "base64"]
    frames = job_frames(out, "main", out["job_id"])
    assert [f["event_seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1]["type"] == "job.result"


def test_slow(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "slow", input={"seconds": 0.3})
    assert out["handle_events"] == [
        {"kind": "status", "body": {"phase": "started"}, "ts": out["handle_events"][0]["ts"]}
    ]
    assert out["outcome"]["payload"]["result"] == {"slept": 0.3}


def test_spender_within_lease(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "spender", input={"steps": 2, "cost": 0.4})
    metrics = [e["body"] for e in out["handle_events"] if e["kind"] == "metric"]
    assert [m for m in metrics if m["name"] == "cost.inference"] == [
        {"name": "cost.inference", "value": 0.4, "unit": "USD"}
    ] * 2
    assert out["outcome"]["payload"]["result"] == {"steps": 2}


def test_chatty(runtime: Any, run_driver: Driver) -> None:
    n = 200
    out = run(run_driver, runtime, "chatty", input={"n": n, "kind": "log"})
    assert len(out["handle_events"]) == n
    assert {e["kind"] for e in out["handle_events"]} == {"log"}
    frames = job_frames(out, "main", out["job_id"])
    assert [f["event_seq"] for f in frames] == list(range(1, n + 2))
    assert out["outcome"]["payload"]["result"] == {"n": n}


def test_budget_exhausted(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "budget")
    assert out["accepted"]["budget"] == {"USD": "USD:1.00"}  # strings: the client needs them
    assert out["accepted"]["lease"] == {"cost.budget": ["USD:1.00"], "tool.call": ["search"]}
    assert out["outcome"]["status"] == "error"
    assert out["outcome"]["code"] == "BUDGET_EXHAUSTED"
    frames = job_frames(out, "main", out["job_id"])
    spent = [
        f["frame"]["payload"]["body"]
        for f in frames
        if f["frame"]["payload"].get("kind") == "metric"
        and f["frame"]["payload"]["body"]["name"] == "cost.inference"
    ]
    assert spent == [{"name": "cost.inference", "value": 0.4, "unit": "USD"}] * 3
    terminal = frames[-1]
    assert terminal["type"] == "job.error"
    assert payload(terminal)["code"] == "BUDGET_EXHAUSTED"
    assert payload(terminal).get("final_status", "error") == "error"
    assert [f["event_seq"] for f in frames] == list(range(1, len(frames) + 1))


# --------------------------------------------------------------------------- agent refs


def test_version_pinning(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "versions")
    got = [
        (r["ref"], r["accepted_agent"], r["outcome"]["payload"]["result"]["version"])
        for r in out["runs"]
    ]
    assert got == [
        ("echo@1.0.0", "echo@1.0.0", "1.0.0"),
        ("echo@2.0.0", "echo@2.0.0", "2.0.0"),
        ("echo", "echo@2.0.0", "2.0.0"),
    ]


@pytest.mark.parametrize(
    ("scenario", "code"),
    [("unknown_agent", "AGENT_NOT_AVAILABLE"), ("unknown_version", "AGENT_VERSION_NOT_AVAILABLE")],
)
def test_unknown_agent_refs(runtime: Any, run_driver: Driver, scenario: str, code: str) -> None:
    out = run(run_driver, runtime, scenario)
    assert out["accepted"] is None
    assert out["submit_error"]["code"] == code
    assert out["session_error"]["code"] == code
    # arcp_trio correlates errors with the request that caused them.
    assert out["session_error"].get("request_id") == out["submit_frame_id"]


# --------------------------------------------------------------------------- idempotency


def test_idempotent_resubmit(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "idempotent")
    first, second = out["first"], out["second"]
    assert first["outcome"]["status"] == "result"
    assert second["job_id"] == first["job_id"]
    # The finished job's terminal is replayed, so the duplicate's handle resolves.
    assert second["outcome"] == first["outcome"]
    accepted = [f for f in out["second_frames"] if f["type"] == "job.accepted"]
    assert len(accepted) == 1
    assert payload(accepted[0])["job_id"] == first["job_id"]
    assert payload(accepted[0])["request_id"] == second["submit_id"]
    terminals = [f for f in out["second_frames"] if f["type"] in ("job.result", "job.error")]
    assert [f["job_id"] for f in terminals] == [first["job_id"]]
    assert out["conflict"]["code"] == "DUPLICATE_KEY"
    assert out["conflict_session_error"]["request_id"] == out["conflict_submit_id"]


# --------------------------------------------------------------------------- cancel


def test_cancel(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "cancel", seconds=5)
    assert out["started"]
    assert out["outcome"]["status"] == "result"
    assert out["outcome"]["payload"]["final_status"] == "cancelled"
    assert out["cancel_latency_sec"] < 2.0
    types = [f["type"] for f in out["job_frames"]]
    assert "job.error" not in types
    assert "job.cancelled" in types  # spec frame; the reference client ignores it
    results = [f for f in out["job_frames"] if f["type"] == "job.result"]
    assert len(results) == 1
    assert payload(results[0])["final_status"] == "cancelled"


# --------------------------------------------------------------------------- resume


def assert_resumed_exactly_once(out: Report, count: int = 10, left_after: int = 3) -> None:
    assert out["pre_seqs"] == list(range(1, left_after + 1))
    assert out["last_event_seq"] == left_after
    attempts = out["resume_attempts"]
    assert attempts[-1]["code"] is None, f"resume refused: {attempts}"
    assert out["resumed_welcome"]["session_id"] == out["session_id"]
    # Every missed event and the terminal arrive after resume, exactly once, in order.
    assert out["post_progress"] == list(range(left_after + 1, count + 1))
    assert out["post_seqs"] == list(range(left_after + 1, count + 2))
    assert not set(out["pre_seqs"]) & set(out["post_seqs"])
    terminal = out["terminal"]
    assert terminal is not None, "the job's terminal never reached the resumed session"
    assert terminal["type"] == "job.result"
    assert payload(terminal)["final_status"] == "success"
    assert payload(terminal)["result"] == {"ticks": count}
    assert out["list_status"] == "success"


def test_drop_then_resume(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "drop_resume")
    assert_resumed_exactly_once(out)


def test_close_then_resume(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "close_resume")
    assert_resumed_exactly_once(out)


def test_heartbeat_loss_then_resume(runtime: Any, run_driver: Driver) -> None:
    assert runtime.heartbeat_sec == 1
    out = run(run_driver, runtime, "heartbeat_resume")
    assert out["dropped"], "the runtime did not drop the silent connection"
    assert_resumed_exactly_once(out)


def test_credentials_parse_with_the_reference_models(
    serve_runtime: Any, run_driver: Driver, interop_kind: str, tmp_path: Any
) -> None:
    """§9.8: provisioned credentials in job.accepted, in a shape the reference client
    parses (every frame went through its models), for the submitter."""
    if interop_kind != "arcp_trio":
        pytest.skip("the reference demo server has no provisioner")
    extra = ["--demo-credentials", "--db", str(tmp_path / "ledger.sqlite3")]
    with serve_runtime(extra=extra) as rt:
        out = run(run_driver, rt, "credentials")
    assert "provisioned_credentials" in out["negotiated"]
    [credential] = out["accepted"]["credentials"]
    assert credential["scheme"] == "bearer"
    assert credential["value"].startswith("sk-virt-")
    assert credential["id"].startswith("cred_")
    assert out["outcome"]["status"] == "result"
    assert out["outcome"]["payload"]["final_status"] == "success"


def test_resume_window_expired(serve_runtime: Any, run_driver: Driver) -> None:
    with serve_runtime(resume_window_sec=1) as rt:
        out = run(run_driver, rt, "resume_expired", wait=2.2)
    assert out["resume_window_sec"] == 1
    assert [a["code"] for a in out["resume_attempts"]] == ["RESUME_WINDOW_EXPIRED"]


def test_resume_bad_token_keeps_record(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "resume_bad_token")
    assert out["bad_attempts"][-1]["code"] is not None, "a wrong resume token was accepted"
    assert out["resumed"], f"the right token no longer works: {out['good_attempts']}"


# --------------------------------------------------------------------------- list / subscribe


def test_list_jobs_pagination(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "list_jobs", principal="carol", jobs=3, limit=2)
    pages = out["pages"]
    assert [len(p["jobs"]) for p in pages] == [2, 1]
    assert pages[0].get("next_cursor")
    assert pages[-1].get("next_cursor") is None
    listed = [j["job_id"] for p in pages for j in p["jobs"]]
    assert listed == out["job_ids"]
    for entry in (j for p in pages for j in p["jobs"]):
        assert entry["status"] == "success"
        assert entry["agent"] == "echo@2.0.0"
        assert entry["submitted_at"]
    assert [j["job_id"] for j in out["unpaged"]["jobs"]] == out["job_ids"]
    assert out["filtered_success"] == out["job_ids"]


def test_cross_session_subscribe(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "subscribe", count=6, interval=0.2, subscribe_after=2)
    job_id = out["job_id"]
    assert out["subscription"]["request_id"] == out["subscribe_frame_id"]
    subscribed = [f for f in out["b_job_frames"] if f["type"] == "job.subscribed"]
    assert len(subscribed) == 1
    assert payload(subscribed[0])["request_id"] == out["subscribe_frame_id"]
    # Raw frames: history plus live, every event exactly once (the reference client's
    # subscription handle misses the history, so we look at the wire).
    assert out["b_progress"] == list(range(1, 7))
    assert payload(out["b_terminal"])["result"] == {"ticks": 6}
    assert out["handle_outcome"]["payload"]["result"] == {"ticks": 6}
    assert out["a_outcome"]["payload"]["result"] == {"ticks": 6}
    # One gap-free event_seq across B's own job and the subscribed one.
    b_seqs = [f["event_seq"] for f in out["b_frames"] if f.get("event_seq") is not None]
    assert b_seqs == list(range(1, len(b_seqs) + 1))
    assert len(job_frames(out, "B", job_id)) == 7
    assert len(job_frames(out, "B", out["own_job_id"])) == 2


# --------------------------------------------------------------------------- errors / auth


def test_malformed_frames(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "malformed")
    assert out["welcome"]["type"] == "session.welcome"
    replies = {r["name"]: r for r in out["replies"]}
    assert list(replies) == ["unknown_type", "submit_missing_agent", "json_array", "not_json"]
    for name, r in replies.items():
        assert not r["closed"], f"session ended after {name}"
        assert r["reply"] is not None, f"no session.error for {name}"
        assert r["reply"]["code"] == "INVALID_REQUEST", name
    for name in ("unknown_type", "submit_missing_agent"):
        assert replies[name]["reply"]["request_id"] == replies[name]["sent_id"]
    terminal = out["echo_terminal"]
    assert terminal is not None
    assert terminal["type"] == "job.result"
    assert terminal["payload"]["result"]["echo"] == {"still": "alive"}
    assert not out["closed"]


def test_bad_token(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "bad_token")
    assert out["connect_error"]["code"] == "UNAUTHENTICATED"
    assert out["error_frame"]["type"] == "session.error"
    assert out["error_frame"]["payload"]["code"] == "UNAUTHENTICATED"
    assert out["closed"]


def test_cross_principal_isolation(runtime: Any, run_driver: Driver) -> None:
    out = run(run_driver, runtime, "isolation", other_token=runtime.token_for("bob"), seconds=1.5)
    mine = {out["a_running"], out["a_finished"]}
    assert not mine & set(out["b_listed"])
    for which in ("running", "finished"):
        assert out[f"b_subscribe_{which}"]["code"] == "JOB_NOT_FOUND", which
        assert out[f"b_cancel_{which}"] is not None, f"cancel of A's {which} job not refused"
        assert out[f"b_cancel_{which}"]["code"] == "JOB_NOT_FOUND", which
    assert [f for f in out["b_job_frames"] if f["type"].startswith("job.")] == []
    assert out["a_outcome"]["status"] == "result"
    assert out["a_outcome"]["payload"]["final_status"] == "success"


# --------------------------------------------------------------------------- TLS


@pytest.mark.skipif(
    runtime_kind() != "arcp_trio", reason="serve --certfile is arcp_trio's own flag"
)
def test_the_reference_client_over_wss(
    serve_runtime: Any, run_driver: Driver, tmp_path: Any
) -> None:
    """`arcp-trio serve --certfile --keyfile` serves wss:// (its READY line says so),
    and the reference client (websockets, the system's trust store plus
    SSL_CERT_FILE) runs a job over it; the CA is made for this test."""
    tls = make_tls(tmp_path)
    extra = ["--certfile", str(tls.cert_file), "--keyfile", str(tls.key_file)]
    with serve_runtime(extra=extra) as rt:
        assert rt.url.startswith("wss://127.0.0.1:")
        out = check(
            run_driver(
                rt.url,
                rt.token_for("alice"),
                "ticker",
                {"input": {"count": 3, "interval": 0.01}},
                env={"SSL_CERT_FILE": str(tls.ca_file)},
            )
        )
        assert out["outcome"]["status"] == "result"
        assert out["outcome"]["payload"]["result"] == {"ticks": 3}


# --------------------------------------------------------------------------- JWT


@pytest.mark.skipif(runtime_kind() != "arcp_trio", reason="serve --jwt-* are arcp_trio's own flags")
def test_the_reference_client_with_a_jwt(
    serve_runtime: Any, run_driver: Driver, tmp_path: Any
) -> None:
    """`serve --jwt-key-file` accepts a JWT signed by that key (the principal from
    `sub`) and refuses an expired one with UNAUTHENTICATED (§6.1); the reference
    client sends both as plain bearer tokens."""
    from datetime import datetime, timedelta

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "issuer.pem").write_bytes(public)
    # The runtime is another process on the system clock: so is the token.
    from arcp_trio.wire.timestamps import system_wall_clock

    now = system_wall_clock()

    def mint(expires: datetime) -> str:
        claims = {"sub": "carol", "iss": "https://id.test", "aud": "arcp", "exp": expires}
        return jwt.encode(claims, key, algorithm="RS256")

    extra = [
        "--jwt-key-file", str(tmp_path / "issuer.pem"),
        "--jwt-issuer", "https://id.test",
        "--jwt-audience", "arcp",
    ]  # fmt: skip
    with serve_runtime(extra=extra) as rt:
        good = check(
            run_driver(rt.url, mint(now + timedelta(minutes=5)), "ticker", {"input": {"count": 2}})
        )
        assert good["outcome"]["status"] == "result"
        assert good["outcome"]["payload"]["result"] == {"ticks": 2}
        expired = mint(now - timedelta(minutes=5))
        bad = check(run_driver(rt.url, rt.token_for("alice"), "bad_token", {"bad_token": expired}))
        assert bad["connect_error"]["code"] == "UNAUTHENTICATED"
        assert bad["error_frame"]["payload"]["code"] == "UNAUTHENTICATED"
        # The static tokens still work beside it.
        check(run_driver(rt.url, rt.token_for("alice"), "handshake", {}))
