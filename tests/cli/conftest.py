"""Fixtures for the command-line tests: a real ``arcp-trio serve`` process.

Every command runs as its own process (``python -m arcp_trio ...``) against a runtime
that is also a real process, over real WebSockets on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent.parent
TOKENS = {"t-alice": "alice", "t-bob": "bob", "t-carol": "carol"}


def start_serve(*extra: str, cwd: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """``python -m arcp_trio serve --port 0 ...``; returns the process and its URL."""
    tokens = [arg for token, who in TOKENS.items() for arg in ("--token", f"{token}={who}")]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arcp_trio",
            "serve",
            "--memory",
            "--port",
            "0",
            "--log-level",
            "WARNING",
            "--max-seconds",
            "300",
            *tokens,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("READY "):
        process.kill()
        process.wait()
        process.stdout.close()
        raise AssertionError(f"serve did not print READY: {line!r}")
    return process, line.removeprefix("READY ")


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    process, url = start_serve("--heartbeat-sec", "1", "--resume-window-sec", "30")
    try:
        yield url
    finally:
        stop(process)


@pytest.fixture
def cli_env(tmp_path: Path, serve_url: str) -> dict[str, str]:
    """The environment every command runs with: URL and token from ARCP_URL/ARCP_TOKEN."""
    return {
        **os.environ,
        "ARCP_URL": serve_url,
        "ARCP_TOKEN": "t-alice",
        "ARCP_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": str(REPO),
        "COLUMNS": "120",
    }


def run_cli(
    args: Sequence[str], env: dict[str, str], *, timeout: float = 30, input_: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arcp_trio", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_,
        check=False,
        cwd=REPO,
    )
