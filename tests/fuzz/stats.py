"""Counters the fuzz tests bump, printed by ``tests/fuzz/conftest.py`` at the end."""

from __future__ import annotations

from collections import Counter

#: State-machine steps executed, per test.
STEPS: Counter[str] = Counter()
#: Examples (hypothesis inputs or state-machine runs), per test.
EXAMPLES: Counter[str] = Counter()


def step(test: str, count: int = 1) -> None:
    STEPS[test] += count


def example(test: str) -> None:
    EXAMPLES[test] += 1
