"""Small building blocks shared across the package."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

import trio

__all__ = ["NoPublicConstructor", "ParkingSpot"]

T = TypeVar("T")


class NoPublicConstructor(type):
    """A metaclass for classes only the package builds (trio's idiom, STYLE.md).

    ``Cls(...)`` raises ``TypeError``; the package calls ``Cls._create(...)``. Users get
    instances from the documented entry point (``open_runtime``), which owns their
    lifetime.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor "
            "(use its documented entry point)"
        )

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]


class ParkingSpot:
    """Where one task waits until it is woken: a one-task ``ParkingLot``.

    ``wake`` may be called from any task, any number of times (with nobody parked it
    does nothing), and runs nothing but this: handed to another task as a callback
    (an ``IdleTransport``'s waker), it runs none of its owner's code there. Trio's
    ``ParkingLot`` does the same for any number of tasks at about 0.9 KiB more per
    parked task, which an idle connection cannot afford.
    """

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    @property
    def parked(self) -> bool:
        return self._task is not None

    async def park(self) -> None:
        """Wait until ``wake`` (or cancellation)."""
        if self._task is not None:
            raise RuntimeError("another task is parked here")
        self._task = trio.lowlevel.current_task()
        try:
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        finally:
            self._task = None

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def wake(self) -> None:
        """Reschedule the parked task, if one is parked."""
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)
