"""Hypothesis profiles and per-test budgets for the property tests.

Profiles (chosen by ``HYPOTHESIS_PROFILE``; ``ci`` when ``CI=true``, else ``dev``):

* ``dev``: quick, local example database.
* ``ci``: quick, derandomized (the same examples every run), no database,
  failures print a ``@reproduce_failure`` blob.
* ``thorough``: what ``nox -s fuzz`` runs: ``budget`` scales every fuzz test up
  (at least 100,000 state-machine steps in total), seeded by ``--hypothesis-seed``.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

_TRUE = ("1", "true", "yes")


def profile_name() -> str:
    explicit = os.environ.get("HYPOTHESIS_PROFILE")
    if explicit:
        return explicit
    return "ci" if os.environ.get("CI", "").lower() in _TRUE else "dev"


PROFILE = profile_name()
THOROUGH = PROFILE == "thorough"


def register_profiles() -> None:
    quiet = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("dev", deadline=None, max_examples=50, suppress_health_check=quiet)
    settings.register_profile(
        "ci",
        deadline=None,
        max_examples=50,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=quiet,
    )
    settings.register_profile(
        "thorough",
        deadline=None,
        max_examples=500,
        database=None,
        print_blob=True,
        suppress_health_check=quiet,
    )
    settings.load_profile(PROFILE)


def budget(quick: int, thorough: int) -> int:
    """Examples (or steps) for this test: ``quick`` in dev/ci, ``thorough`` when fuzzing."""
    return thorough if THOROUGH else quick


#: Demo agents the fuzzed programs submit besides puppets, with inputs they read.
DEMO_AGENTS = ("echo", "ticker@1.0.0", "chatty@1.0.0", "chunker@1.0.0", "slow@1.0.0")


def demo_inputs() -> Any:
    """Inputs for ``DEMO_AGENTS`` (timings in powers of two: exact on MockClock)."""
    from hypothesis import strategies as st

    return st.none() | st.fixed_dictionaries(
        {},
        optional={
            "count": st.integers(0, 6),
            "interval": st.sampled_from([0.5, 1, 2]),
            "n": st.integers(0, 40),
            "chunks": st.integers(0, 4),
            "size": st.integers(1, 16),
            "seconds": st.sampled_from([1, 4, 16]),
        },
    )
