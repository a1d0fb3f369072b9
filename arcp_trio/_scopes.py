"""Keeping users' exceptions their own across our context managers' nurseries.

``open_runtime`` and ``open_client`` run their background tasks in a nursery that
wraps the ``async with`` body. Trio groups whatever crosses a nursery, so an
exception raised in the *user's* body would reach them as an ``ExceptionGroup``.
Our background tasks never raise (they have their own boundaries), so when the
group holds nothing but the body's exception, that exception is re-raised as is;
anything else stays a group (a runtime bug must not be hidden).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["open_owner_nursery"]


def _only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    return leaves == [error]


class _BodyTracker:
    error: BaseException | None = None


@asynccontextmanager
async def open_owner_nursery() -> AsyncIterator[tuple[trio.Nursery, _BodyTracker]]:
    """A nursery whose ``async with`` body's own exception is not grouped.

    The caller records the body's exception in the tracker (``tracker.error``).
    """
    tracker = _BodyTracker()
    try:
        async with trio.open_nursery() as nursery:
            yield nursery, tracker
    except BaseExceptionGroup as group:
        if tracker.error is not None and _only(group, tracker.error):
            raise tracker.error from None
        raise
