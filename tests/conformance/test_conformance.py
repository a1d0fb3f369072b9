"""``arcp-trio conformance`` against both runtimes, as real processes.

Against ``arcp-trio serve`` every requirement must PASS (none is skipped: serve hosts
every demo agent, and the short heartbeat and resume window let the timing checks run).
Against the reference runtime (``tests/interop/ref_server.py``) the checker must still
produce a full report, name the reference dialect, fail exactly on the documented
divergences (WIRE.md §14), and exit non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from arcp_trio.cli import conformance_markdown
from arcp_trio.conformance import REQUIREMENTS, Report
from arcp_trio.conformance.checker import _selected
from tests.cli.conftest import REPO, run_cli, start_serve, stop

if TYPE_CHECKING:
    from collections.abc import Iterator

TIMING = ["--heartbeat-sec", "1", "--resume-window-sec", "2"]
#: The requirements the reference runtime (Python SDK 1.1.3) fails, each a documented
#: divergence from the spec (WIRE.md §14-§16).
REFERENCE_FAILS = {
    "resume.message",  # no session.resume: resume is a block in session.hello
    "resume.replay",  # events after a drop are never delivered (WIRE.md §16)
    "resume.not-covered",  # a resume below the acked point silently skips events
    "resume.window-expired",  # PERMISSION_DENIED, never RESUME_WINDOW_EXPIRED
    "close.closed",  # session.bye, no session.close / session.closed
    "close.jobs-continue",  # same loss after a graceful close
    "submit.budget",  # budget values are "USD:1.00" strings
    "cancel.ack",  # no job.cancelled
    "cancel.terminal",  # job.result cancelled, not job.error CANCELLED
    "cancel.subscriber",  # cancel authority is per principal: a subscriber can cancel
    "timeout",  # job.result timed_out, not job.error TIMEOUT
    "subscribe.seq",  # per-subscription numbering collides with the session's
    "seq.reconnects",  # events lost after the first drop
    "errors.not-json",  # closes the socket without an error
    "errors.not-object",  # same
    "errors.schema",  # INTERNAL_ERROR for a schema violation
    "lease.expires-utc",  # INTERNAL_ERROR for a non-UTC expires_at
}


def conformance(url: str, *extra: str, timeout: float = 90) -> tuple[int, dict[str, Any]]:
    done = run_cli(
        ["conformance", url, "--token", "t-alice", "--other-token", "t-bob", "--json", *extra],
        {**os.environ, "PYTHONPATH": str(REPO)},
        timeout=timeout,
    )
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def ours() -> Iterator[str]:
    process, url = start_serve(*TIMING)
    try:
        yield url
    finally:
        stop(process)


def test_every_requirement_passes_against_arcp_trio_serve(ours: str) -> None:
    code, report = conformance(ours, "--wait", "3", "--concurrency", "6")
    outcomes = {r["id"]: r["outcome"] for r in report["results"]}
    failed = {k: v for k, v in outcomes.items() if v != "PASS"}
    assert not failed, [r for r in report["results"] if r["outcome"] != "PASS"]
    assert code == 0
    assert len(outcomes) == len(REQUIREMENTS)
    assert report["runtime"]["name"] == "arcp-trio"
    assert report["dialect"].startswith("spec")
    assert report["summary"] == {
        "passed": len(REQUIREMENTS),
        "failed": 0,
        "skipped": 0,
        "ok": True,
    }
    for result in report["results"]:
        assert result["section"].startswith("§")


@pytest.mark.interop
def test_an_honest_report_against_the_reference_runtime() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "interop" / "ref_server.py"),
            "--port",
            "0",
            "--token",
            "t-alice=alice",
            "--token",
            "t-bob=bob",
            "--max-seconds",
            "120",
            *TIMING,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().removeprefix("READY ")
        code, report = conformance(url, "--wait", "2", "--concurrency", "8")
    finally:
        stop(process)
    assert code == 1
    outcomes = {r["id"]: r["outcome"] for r in report["results"]}
    failed = {k for k, v in outcomes.items() if v == "FAIL"}
    assert failed == REFERENCE_FAILS, sorted(failed ^ REFERENCE_FAILS)
    assert outcomes["lease.expired"] == "SKIP"  # the reference hosts no `toucher`
    assert report["runtime"]["version"] == "1.1.3"
    assert report["dialect"].startswith("reference")
    notes = {n["item"]: n for n in report["dialect_notes"]}
    assert notes["resume"]["observed"] == "accepts hello.resume"
    assert notes["error correlation"]["side"] == "reference"
    details = {r["id"]: r["detail"] for r in report["results"]}
    assert "events after the drop were lost" in details["resume.replay"]
    assert "PERMISSION_DENIED" in details["resume.window-expired"]


def test_only_selects_by_id_prefix_and_section(ours: str) -> None:
    code, report = conformance(ours, "--only", "resume.message,6.2", "--only", "§12")
    ids = [r["id"] for r in report["results"]]
    assert code == 0
    assert ids[0] == "hello.welcome"
    assert "resume.message" in ids
    assert "resume.replay" not in ids
    assert {r["section"] for r in report["results"]} == {"§6.2", "§6.3", "§12"}


def test_the_table_report_and_the_list(ours: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = run_cli(["conformance", "--url", ours, "--token", "t-alice", "--only", "errors"], env)
    assert done.returncode == 0, done.stderr
    assert "dialect: spec" in done.stdout
    assert "PASS" in done.stdout
    assert "errors.not-json" in done.stdout
    assert "6 requirements: 6 passed, 0 failed, 0 skipped" in done.stdout
    listed = run_cli(["conformance", "--list", "--json"], env)
    assert [r["id"] for r in json.loads(listed.stdout)] == [r.id for r in REQUIREMENTS]


def test_an_unreachable_runtime_exits_3() -> None:
    code, report = conformance("ws://127.0.0.1:9/arcp")
    assert code == 3
    assert report["fatal"]
    assert report["results"] == []


def test_selection_rules() -> None:
    by_id = {r.id: r for r in REQUIREMENTS}
    assert _selected(by_id["resume.replay"], ["resume"])
    assert _selected(by_id["resume.replay"], ["6"])
    assert _selected(by_id["resume.replay"], ["§6.3"])
    assert not _selected(by_id["resume.replay"], ["6.4"])
    assert not _selected(by_id["resume.replay"], ["res"])
    assert _selected(by_id["timeout"], [])


def test_markdown_rendering() -> None:
    report = Report(url="ws://x/arcp", runtime={"name": "r", "version": "1"})
    assert "| result | § | requirement" in conformance_markdown(report)
