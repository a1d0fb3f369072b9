"""Developer and CI sessions. ``nox -s tests`` is what CI runs."""

from __future__ import annotations

import os
import random

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = os.environ.get("ARCP_NOX_PYTHON") or None


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite, interop with the reference SDK included."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Only the interop tests (the reference SDK in a subprocess, real WebSockets)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-m", "interop", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, ruff format --check, mypy --strict, and the layer-arrow test."""
    session.install("-e", ".[test,lint]")
    session.run("ruff", "check", "arcp_trio", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "arcp_trio", "tests", "noxfile.py")
    session.run("mypy")
    session.run("python", "-m", "pytest", "-q", "tests/test_layers.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """arcp_trio vs the reference runtime, same workloads; ``-- --quick`` for a smoke run."""
    # The reference runtime (agentruntimecontrolprotocol) comes with the test extras; it
    # is a benchmark and test dependency only, never a runtime one.
    session.install("-e", ".[test]", "websockets")
    session.run("python", "-m", "benchmarks.run", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build docs/ into docs/_build/html with Sphinx; any warning fails the build."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """tests/fuzz at the thorough profile: over 100,000 state-machine steps.

    Prints the figures (steps, examples, failures) and the seed; ``-- --hypothesis-seed=N``
    replays a run.
    """
    session.install("-e", ".[test]")
    args = list(session.posargs)
    if not any(arg.startswith("--hypothesis-seed") for arg in args):
        args.append(f"--hypothesis-seed={random.SystemRandom().randrange(2**32)}")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/fuzz",
        "-q",
        "-p",
        "no:cacheprovider",
        "--show-capture=no",
        # A thorough state machine (shrinking included) may run for minutes: the suite's
        # 120 s hang dump would fire mid-run, and dumping a busy thread's frames can
        # crash the interpreter (it did once, with seed 1).
        "-o",
        "faulthandler_timeout=1800",
        *args,
        env={"HYPOTHESIS_PROFILE": "thorough"},
    )
