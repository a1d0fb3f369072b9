"""``JobTable.list_for`` refuses what the wire layer would (for callers that bypass it)."""

from __future__ import annotations

import pytest

from arcp_trio.protocol.job import JobTable
from arcp_trio.wire.errors import InvalidRequest


@pytest.mark.parametrize("cursor", ["²", "9" * 5000, "9" * 20, "-1", "x"])
def test_a_cursor_that_is_not_a_short_ascii_decimal_is_invalid_request(cursor: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid cursor"):
        JobTable().list_for(
            "alice", statuses=None, agent=None, created_after=None, limit=10, cursor=cursor
        )


def test_the_largest_cursor_lists_nothing() -> None:
    page, cursor = JobTable().list_for(
        "alice", statuses=None, agent=None, created_after=None, limit=10, cursor="9" * 19
    )
    assert (page, cursor) == ([], None)
