"""docs/testing.md's examples run as written (in a project of their own).

Rules: a pytest subprocess on a temporary directory, the real clock outside the
examples' own MockClock, bounded run time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "testing.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def test_the_testing_page_examples_pass(tmp_path: Path) -> None:
    blocks = python_blocks()
    conftest, agent_test, chaos_test, fuzz_test, machine, hostile = blocks
    assert "pytest_plugins" in conftest
    (tmp_path / "conftest.py").write_text(
        conftest
        + "\nfrom hypothesis import settings\n"
        + 'settings.register_profile("docs", max_examples=3, deadline=None)\n'
        + 'settings.load_profile("docs")\n'
    )
    (tmp_path / "test_agent.py").write_text(agent_test + "\n\n" + chaos_test)
    (tmp_path / "test_fuzz.py").write_text(fuzz_test + "\n\n" + machine)
    assert "def test_my_deployment" in hostile  # needs a deployment: compiled only
    compile(hostile, "hostile", "exec")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "trio",
            "-o",
            "trio_mode=true",
            "-p",
            "no:cacheprovider",
            "-q",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert "4 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
