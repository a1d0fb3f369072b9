"""arcp_trio._util: ParkingSpot, the one-task wait an idle connection parks in."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from arcp_trio._util import ParkingSpot


async def test_wake_reschedules_the_parked_task_and_is_a_no_op_otherwise() -> None:
    spot = ParkingSpot()
    spot.wake()  # nobody parked: nothing happens
    woken = 0

    async def parker() -> None:
        nonlocal woken
        for _ in range(2):
            await spot.park()
            woken += 1

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parker)
            await trio.testing.wait_all_tasks_blocked()
            assert spot.parked
            spot.wake()
            spot.wake()  # spurious: the task is already rescheduled
            await trio.testing.wait_all_tasks_blocked()
            assert woken == 1
            assert spot.parked  # parked again
            spot.wake()
    assert woken == 2
    assert not spot.parked


async def test_a_parked_task_can_be_cancelled_and_only_one_may_park() -> None:
    spot = ParkingSpot()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spot.park)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match="another task"):
                await spot.park()
            nursery.cancel_scope.cancel()
    assert not spot.parked
    spot.wake()  # after a cancellation: still nothing to wake
