"""Every script in ``examples/`` runs, as a user would run it, and says what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

#: Each example and lines its output must contain.
EXPECTED = {
    "quickstart.py": ["2 progress {'current': 1, 'total': 3, 'units': 'docs'}", "3 documents"],
    "my_agents.py": ["be\t2", "to\t2", "guarded: {'read': '/data/x'}"],
    "reconnect.py": [
        "-- cutting the network --",
        "event 8 ",
        "result: {'ticks': 8}",
        "reconnects: 1",
    ],
    "conformance_check.py": ["PASS  §6.3   resume.replay", "0 failed, 0 skipped"],
    "starlette_mount.py": [
        "GET / -> 200 {'sessions': 0, 'jobs': 0}",
        "event 3 {'current': 3, 'total': 3, 'units': 'ticks'}",
        "result: {'ticks': 3}",
        "GET / -> 200 {'sessions': 1, 'jobs': 1}",
    ],
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, done.stdout
    if name == "reconnect.py":
        seqs = [
            int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("event")
        ]
        assert seqs == list(range(1, 9))  # no gap, no duplicate across the cut
