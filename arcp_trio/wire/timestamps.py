"""Wall-clock timestamps on the wire: ISO 8601 UTC with microseconds and ``Z``.

The runtime never reads the wall clock directly: it is handed a ``WallClock``
(a zero-argument callable returning an aware UTC ``datetime``). Production uses
``system_wall_clock``; tests tie it to Trio's clock so lease expiry and timestamps
agree with ``MockClock`` (``trio_wall_clock``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = [
    "EPOCH",
    "WallClock",
    "format_epoch_ns",
    "format_timestamp",
    "parse_timestamp",
    "system_timestamp",
    "system_wall_clock",
]

WallClock = Callable[[], datetime]

#: Where ``trio_wall_clock`` puts Trio time zero (a fixed, recognisable instant).
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def system_wall_clock() -> datetime:
    return datetime.now(UTC)


#: ``format_epoch_ns``'s cache: the minute last formatted, and its text.
_minute: list[tuple[int, str]] = [(-1, "")]


def format_epoch_ns(ns: int) -> str:
    """``format_timestamp`` of the instant ``ns`` nanoseconds after the Unix epoch.

    The date, hour and minute change once a minute, so their text is kept; every
    event carries a ``ts``, and this is about twice as fast as formatting a
    ``datetime``.
    """
    seconds, rest = divmod(ns, 1_000_000_000)
    minute = seconds // 60
    cached_minute, prefix = _minute[0]
    if minute != cached_minute:
        prefix = datetime.fromtimestamp(minute * 60, UTC).isoformat()[:17]
        _minute[0] = (minute, prefix)
    return f"{prefix}{seconds % 60:02d}.{rest // 1000:06d}Z"


def system_timestamp() -> str:
    """``format_timestamp(system_wall_clock())``, the fast way."""
    return format_epoch_ns(time.time_ns())


def trio_wall_clock_at(trio_now: float, epoch: datetime = EPOCH) -> datetime:
    """The wall-clock instant that Trio time ``trio_now`` maps to under a test clock."""
    return epoch + timedelta(seconds=trio_now)


def format_timestamp(moment: datetime) -> str:
    """``2026-11-23T12:04:23.865195Z``: UTC, microseconds, ``Z`` suffix."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat is several times faster than strftime, and cutting its "+00:00" is
    # faster than a naive copy; every event carries a ts.
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_timestamp(text: str, *, require_utc: bool = False) -> datetime:
    """Parse an ISO 8601 timestamp with an explicit offset.

    Raises:
        ValueError: not ISO 8601, no timezone, or (``require_utc``) not UTC / no ``Z``.
    """
    if not isinstance(text, str):
        raise ValueError("timestamp must be a string")
    if require_utc and not text.endswith(("Z", "z")):
        raise ValueError("timestamp must be UTC with a 'Z' suffix")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError("timestamp must carry a timezone")
    if require_utc and moment.utcoffset() != timedelta(0):
        raise ValueError("timestamp must be UTC")
    return moment.astimezone(UTC)
