"""Prints what the fuzz tests did: state-machine steps, examples, failures, the seed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.fuzz import stats
from tests.fuzz.budget import PROFILE

if TYPE_CHECKING:
    import pytest
    from _pytest.terminal import TerminalReporter


def pytest_terminal_summary(
    terminalreporter: TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if not stats.EXAMPLES and not stats.STEPS:
        return
    failed = [
        report.nodeid
        for report in terminalreporter.stats.get("failed", [])
        if "tests/fuzz/" in report.nodeid
    ]
    write = terminalreporter.write_line
    terminalreporter.section(f"fuzz figures (profile {PROFILE})")
    for name in sorted(set(stats.EXAMPLES) | set(stats.STEPS)):
        write(f"{name}: {stats.EXAMPLES[name]} examples, {stats.STEPS[name]} steps")
    write(
        f"TOTAL: {sum(stats.STEPS.values())} state-machine steps, "
        f"{sum(stats.EXAMPLES.values())} examples, {len(failed)} failures"
    )
    seed = config.getoption("hypothesis_seed", None)
    if failed:
        for nodeid in failed:
            write(f"FAILED {nodeid}")
        write(
            "replay: HYPOTHESIS_PROFILE="
            f"{PROFILE} python -m pytest tests/fuzz --hypothesis-seed={seed} "
            "(and the @reproduce_failure blob printed with each failure)"
        )
    elif seed is not None:
        write(f"seed: --hypothesis-seed={seed}")
