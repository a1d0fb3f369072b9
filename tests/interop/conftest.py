"""Fixtures for the interop suite: runtime subprocesses and the reference-client driver.

Everything here is plain synchronous pytest + ``subprocess``: the runtime under test and the
reference client each run in their own process, on 127.0.0.1 only, and every wait is bounded.

``ARCP_INTEROP_RUNTIME=reference|arcp_trio`` (default ``arcp_trio``) picks the runtime the
tests talk to; ``reference`` serves ``ref_server.py`` (the reference SDK's runtime) so the
driver mechanics can be checked without our runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
REF_SERVER = HERE / "ref_server.py"
REF_DRIVER = HERE / "ref_driver.py"

READY_TIMEOUT = 15.0
DRIVER_TIMEOUT = 20.0
KINDS = ("arcp_trio", "reference")

# The shared runtime's principals. alice and bob are distinct principals; carol is used only
# by the list_jobs test so its pagination sees exactly the jobs that test submitted.
TOKENS: dict[str, str] = {"tok-alice": "alice", "tok-bob": "bob", "tok-carol": "carol"}
HEARTBEAT_SEC = 1
RESUME_WINDOW_SEC = 30


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interop: runs the reference SDK (agentruntimecontrolprotocol 1.1.3) in a subprocess",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def runtime_kind() -> str:
    kind = os.environ.get("ARCP_INTEROP_RUNTIME", "arcp_trio")
    if kind not in KINDS:
        raise pytest.UsageError(f"ARCP_INTEROP_RUNTIME must be one of {KINDS}, got {kind!r}")
    return kind


@dataclass
class RuntimeProcess:
    """A running runtime subprocess."""

    kind: str
    url: str
    proc: subprocess.Popen[str]
    stderr_file: IO[bytes]
    tokens: Mapping[str, str]
    heartbeat_sec: int | None
    resume_window_sec: int | None

    def token_for(self, principal: str) -> str:
        return next(t for t, p in self.tokens.items() if p == principal)

    def stderr_text(self, since: int = 0) -> str:
        self.stderr_file.flush()
        self.stderr_file.seek(since)
        return self.stderr_file.read().decode("utf-8", "replace")

    def stderr_offset(self) -> int:
        self.stderr_file.flush()
        return self.stderr_file.seek(0, os.SEEK_END)


def _command(
    kind: str,
    tokens: Mapping[str, str],
    heartbeat_sec: int | None,
    resume_window_sec: int | None,
    max_seconds: float,
    extra: Sequence[str] = (),
) -> list[str]:
    if kind == "arcp_trio":
        cmd = [sys.executable, "-m", "arcp_trio", "serve", *extra]
        if "--db" not in extra:
            cmd.append("--memory")
    elif kind == "reference":
        cmd = [sys.executable, str(REF_SERVER)]
    else:
        raise ValueError(f"unknown runtime kind {kind!r}")
    cmd += ["--host", "127.0.0.1", "--port", "0", "--max-seconds", str(max_seconds)]
    for token, principal in tokens.items():
        cmd += ["--token", f"{token}={principal}"]
    if heartbeat_sec is not None:
        cmd += ["--heartbeat-sec", str(heartbeat_sec)]
    if resume_window_sec is not None:
        cmd += ["--resume-window-sec", str(resume_window_sec)]
    return cmd


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            lines.put(line)
    except ValueError:  # stream closed under us at teardown
        pass
    finally:
        lines.put(None)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def serve_runtime(
    kind: str,
    tokens: Mapping[str, str] | None = None,
    heartbeat_sec: int | None = HEARTBEAT_SEC,
    resume_window_sec: int | None = RESUME_WINDOW_SEC,
    *,
    max_seconds: float = 600.0,
    extra: Sequence[str] = (),
) -> Iterator[RuntimeProcess]:
    """Start a runtime subprocess, wait for its READY line, yield it, then stop it.

    ``kind`` is ``arcp_trio`` (``python -m arcp_trio serve``) or ``reference``
    (``tests/interop/ref_server.py``). The process gets SIGTERM (then SIGKILL) on exit and
    ``--max-seconds`` as a backstop, so no runtime outlives a crashed test run for long.
    """
    tokens = dict(tokens or TOKENS)
    cmd = _command(kind, tokens, heartbeat_sec, resume_window_sec, max_seconds, extra)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with tempfile.TemporaryFile() as stderr_file:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
        )
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            url = _wait_ready(lines, READY_TIMEOUT)
            if url is None:
                _stop(proc)
                rp = RuntimeProcess(kind, "", proc, stderr_file, tokens, None, None)
                pytest.fail(
                    f"{kind} runtime did not print READY within {READY_TIMEOUT}s "
                    f"(exit code {proc.poll()}).\ncommand: {cmd}\n"
                    f"stderr:\n{rp.stderr_text()[-8000:]}",
                    pytrace=False,
                )
            yield RuntimeProcess(
                kind, url, proc, stderr_file, tokens, heartbeat_sec, resume_window_sec
            )
        finally:
            _stop(proc)
            proc.stdout.close()
            reader.join(timeout=2)


def _wait_ready(lines: queue.Queue[str | None], timeout: float) -> str | None:
    # Plain synchronous harness code (no Trio loop here), hence the stdlib clock.
    deadline = time.monotonic() + timeout  # noqa: TID251
    while True:
        remaining = deadline - time.monotonic()  # noqa: TID251
        if remaining <= 0:
            return None
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.startswith("READY "):
            return line.split(None, 1)[1].strip()


def run_driver(
    url: str,
    token: str,
    scenario: str,
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = DRIVER_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``ref_driver.py`` for one scenario and return its JSON report.

    The driver bounds the scenario itself (``--timeout``); the subprocess gets a few extra
    seconds on top. Its stderr is attached to the report as ``driver_stderr``. ``env``
    adds environment variables (``SSL_CERT_FILE`` for a ``wss://`` runtime).
    """
    cmd = [
        sys.executable,
        str(REF_DRIVER),
        "--url",
        url,
        "--token",
        token,
        "--scenario",
        scenario,
        "--args",
        json.dumps(dict(args or {})),
        "--timeout",
        str(timeout),
    ]
    try:
        done = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else e.stderr
        pytest.fail(f"driver {scenario!r} hung past {timeout + 10}s; stderr:\n{err}")
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(
            f"driver {scenario!r} printed no JSON report (exit {done.returncode}).\n"
            f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-8000:]}",
            pytrace=False,
        )
    report["driver_stderr"] = done.stderr[-8000:]
    return report


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def interop_kind() -> str:
    """Which runtime the suite talks to (``ARCP_INTEROP_RUNTIME``)."""
    return runtime_kind()


@pytest.fixture(scope="session")
def shared_runtime(interop_kind: str) -> Iterator[RuntimeProcess]:
    """One runtime for most tests: TOKENS, a 1 s heartbeat, a 30 s resume window."""
    with serve_runtime(interop_kind, TOKENS, HEARTBEAT_SEC, RESUME_WINDOW_SEC) as rt:
        yield rt


@pytest.fixture
def runtime(
    shared_runtime: RuntimeProcess, request: pytest.FixtureRequest
) -> Iterator[RuntimeProcess]:
    """The shared runtime; when the test fails, prints the runtime's stderr from this test."""
    offset = shared_runtime.stderr_offset()
    yield shared_runtime
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"--- {shared_runtime.kind} runtime stderr during this test ---")
        print(shared_runtime.stderr_text(offset)[-8000:])
    if shared_runtime.proc.poll() is not None:
        pytest.fail(f"runtime exited with {shared_runtime.proc.returncode}", pytrace=False)


@pytest.fixture(name="serve_runtime")
def serve_runtime_fixture(
    interop_kind: str,
) -> Callable[..., contextlib.AbstractContextManager[RuntimeProcess]]:
    """Factory: ``with serve_runtime(tokens=..., heartbeat_sec=..., resume_window_sec=...)``
    starts a dedicated runtime of the selected kind (``kind=`` overrides)."""

    def factory(
        kind: str | None = None,
        tokens: Mapping[str, str] | None = None,
        heartbeat_sec: int | None = HEARTBEAT_SEC,
        resume_window_sec: int | None = RESUME_WINDOW_SEC,
        extra: Sequence[str] = (),
    ) -> contextlib.AbstractContextManager[RuntimeProcess]:
        return serve_runtime(
            kind or interop_kind, tokens, heartbeat_sec, resume_window_sec, extra=extra
        )

    return factory


@pytest.fixture(name="run_driver")
def run_driver_fixture() -> Callable[..., dict[str, Any]]:
    """``run_driver(url, token, scenario, args) -> dict`` (see ``run_driver``)."""
    return run_driver


@pytest.fixture(scope="session")
def reference_runtime() -> Iterator[RuntimeProcess]:
    """The REFERENCE runtime (``ref_server.py``), whatever ``ARCP_INTEROP_RUNTIME`` says:
    TOKENS, a 1 s heartbeat, a 30 s resume window. For our client's interop tests."""
    with serve_runtime("reference", TOKENS, HEARTBEAT_SEC, RESUME_WINDOW_SEC) as rt:
        yield rt


@pytest.fixture(scope="session")
def arcp_trio_runtime() -> Iterator[RuntimeProcess]:
    """OUR runtime (``python -m arcp_trio serve``), whatever ``ARCP_INTEROP_RUNTIME`` says:
    TOKENS, a 1 s heartbeat, a 30 s resume window. For our client's interop tests."""
    with serve_runtime("arcp_trio", TOKENS, HEARTBEAT_SEC, RESUME_WINDOW_SEC) as rt:
        yield rt
