"""What the conformance checker reports: one result per requirement, and the dialect."""

from __future__ import annotations

import enum
from typing import Any

import attrs

__all__ = ["CheckResult", "DialectNote", "Outcome", "Report"]


class Outcome(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@attrs.frozen(kw_only=True)
class CheckResult:
    """The verdict on one requirement.

    Attributes:
        id: the requirement's stable id, e.g. ``resume.replay``.
        section: the spec section, e.g. ``6.3``.
        level: ``MUST`` or ``SHOULD`` as the spec words it; ``—`` where the spec states
            the behaviour without a keyword.
        title: what is checked, in one line.
        outcome: PASS, FAIL or SKIP.
        detail: why (what was observed), one or two lines.
        seconds: how long the check took.
    """

    id: str
    section: str
    level: str
    title: str
    outcome: Outcome
    detail: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "section": f"§{self.section}",
            "level": self.level,
            "title": self.title,
            "outcome": str(self.outcome),
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@attrs.frozen(kw_only=True)
class DialectNote:
    """One observed point where the spec and the reference SDK's dialect differ.

    ``side`` is ``spec``, ``reference``, ``both`` (the runtime accepts either) or
    ``other``.
    """

    item: str
    observed: str
    side: str


@attrs.define(kw_only=True)
class Report:
    url: str
    runtime: dict[str, Any] = attrs.field(factory=dict)
    features: list[str] = attrs.field(factory=list)
    dialect_notes: list[DialectNote] = attrs.field(factory=list)
    results: list[CheckResult] = attrs.field(factory=list)
    seconds: float = 0.0
    #: Set when no session could be established at all.
    fatal: str | None = None

    def count(self, outcome: Outcome) -> int:
        return sum(1 for result in self.results if result.outcome is outcome)

    @property
    def passed(self) -> int:
        return self.count(Outcome.PASS)

    @property
    def failed(self) -> int:
        return self.count(Outcome.FAIL)

    @property
    def skipped(self) -> int:
        return self.count(Outcome.SKIP)

    @property
    def ok(self) -> bool:
        """No requirement failed and a session could be established."""
        return self.fatal is None and self.failed == 0

    @property
    def dialect(self) -> str:
        """A one-line summary of the dialect the runtime speaks."""
        sides = {note.side for note in self.dialect_notes}
        if not sides:
            return "unknown"
        if sides <= {"spec", "both"}:
            if "both" in sides:
                return "spec (also reads the reference SDK's forms)"
            return "spec"
        if sides <= {"reference"}:
            return "reference (Python SDK 1.1.3)"
        if sides <= {"reference", "both"}:
            return "reference (Python SDK 1.1.3), with some spec forms"
        return "mixed: " + ", ".join(sorted(sides))

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "runtime": self.runtime,
            "features": self.features,
            "dialect": self.dialect,
            "dialect_notes": [attrs.asdict(note) for note in self.dialect_notes],
            "summary": {
                "passed": self.passed,
                "failed": self.failed,
                "skipped": self.skipped,
                "ok": self.ok,
            },
            "fatal": self.fatal,
            "seconds": round(self.seconds, 3),
            "results": [result.to_json() for result in self.results],
        }
