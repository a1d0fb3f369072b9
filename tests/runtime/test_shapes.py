"""The answers' payloads: one builder per message, per dialect, per observer (§14)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from arcp_trio.protocol.eventlog import OverflowNotice
from arcp_trio.protocol.leases import Budget, parse_lease
from arcp_trio.protocol.session import Dialect
from arcp_trio.runtime.shapes import (
    accepted_payload,
    job_summary,
    jobs_page_payload,
    overflow_body,
    subscribed_payload,
)
from tests.helpers import job_record

if TYPE_CHECKING:
    from arcp_trio.protocol.job import JobRecord

SECRET = {"id": "cred_1", "scheme": "bearer", "value": "s3cret", "endpoint": "https://x"}


def job() -> JobRecord:
    lease = parse_lease({"cost.budget": ["USD:5.00"]})
    record = job_record(
        agent_version="1.0.0",
        lease=lease,
        budget=Budget.from_patterns(lease.grants["cost.budget"]),
        trace_id="trace_1",
    )
    record.credentials.append(dict(SECRET))
    return record


def test_accepted_shows_credentials_to_the_submitting_principal_only() -> None:
    mine = accepted_payload(job(), request_id="r1", dialect=Dialect.SPEC, observer="alice")
    theirs = accepted_payload(job(), request_id="r1", dialect=Dialect.SPEC, observer="bob")
    assert mine["credentials"] == [SECRET]
    assert "credentials" not in theirs  # §14
    assert mine["agent"] == "ticker@1.0.0"
    assert mine["trace_id"] == "trace_1"
    assert "parent_job_id" not in mine


def test_budgets_are_numbers_for_the_spec_and_strings_for_the_reference() -> None:
    spec = accepted_payload(job(), request_id="r", dialect=Dialect.SPEC, observer="alice")
    reference = accepted_payload(job(), request_id="r", dialect=Dialect.REFERENCE, observer="alice")
    assert spec["budget"] == {"USD": 5.0}  # §7.1
    assert reference["budget"] == {"USD": "USD:5.00"}  # WIRE.md §10
    assert job_summary(job(), Dialect.REFERENCE)["budget"] == reference["budget"]


def test_subscribed_counts_for_the_reference_and_says_whether_for_the_spec() -> None:
    def build(dialect: Dialect, replayed: int, missing: int, observer: str = "alice") -> dict:  # type: ignore[type-arg]
        return subscribed_payload(
            job(),
            request_id="r",
            dialect=dialect,
            observer=observer,
            replayed=replayed,
            missing=missing,
        )

    assert build(Dialect.REFERENCE, 7, 0)["replayed"] == 7
    assert build(Dialect.SPEC, 7, 0)["replayed"] is True
    assert build(Dialect.SPEC, 0, 0)["replayed"] is False
    assert build(Dialect.SPEC, 3, 4)["history_missing"] == 4  # never a silent gap
    assert "history_missing" not in build(Dialect.SPEC, 3, 0)
    assert "credentials" not in build(Dialect.SPEC, 0, 0, observer="bob")


def test_the_overflow_notice_names_what_was_evicted() -> None:
    body = overflow_body(OverflowNotice(evicted_through=40, evicted_count=12))
    assert body["phase"] == "back_pressure"
    assert (body["evicted_through"], body["evicted"]) == (40, 12)


def test_a_jobs_page_says_where_the_next_begins_only_when_there_is_one() -> None:
    """§6.6: ``next_cursor`` is present exactly when more jobs follow."""
    last = jobs_page_payload([job()], request_id="r", dialect=Dialect.SPEC, next_cursor=None)
    more = jobs_page_payload([job()], request_id="r", dialect=Dialect.SPEC, next_cursor="7")
    assert "next_cursor" not in last
    assert more["next_cursor"] == "7"
    assert last["request_id"] == "r"
    assert last["jobs"] == [job_summary(job(), Dialect.SPEC)]
    assert "credentials" not in last["jobs"][0]  # a summary never carries them (§14)
