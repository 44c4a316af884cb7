"""bridge/delayed.py: backoff values and the DelayQueue that hands items back when due."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bridge.clock import SystemClock
from bridge.delayed import DelayQueue, backoff

WAIT = 2.0


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 1.5), (1, 1.5), (2, 3.0), (3, 6.0), (4, 12.0), (8, 192.0), (9, 300.0), (50, 300.0)],
)
def test_backoff_doubles_from_base_up_to_the_cap(attempt: int, expected: float) -> None:
    assert backoff(attempt, 1.5) == expected


def test_backoff_custom_cap_and_type() -> None:
    assert backoff(10, 1.0, cap=30.0) == 30.0
    assert backoff(3, 2.0, cap=30.0) == 8.0
    assert isinstance(backoff(2, 1), float)


def test_backoff_never_exceeds_the_cap_for_realistic_attempts() -> None:
    assert max(backoff(n, 0.5, cap=60.0) for n in range(1, 101)) == 60.0


def test_backoff_is_capped_for_any_attempt() -> None:
    assert backoff(2000, 1.0) == 300.0


# --------------------------------------------------------------------------- DelayQueue


class Released:
    def __init__(self, expected: int) -> None:
        self.items: list[str] = []
        self.expected = expected
        self.done = asyncio.Event()

    def __call__(self, item: str) -> None:
        self.items.append(item)
        if len(self.items) >= self.expected:
            self.done.set()


@pytest.fixture
async def queue_and_released() -> AsyncIterator[tuple[DelayQueue[str], Released]]:
    released = Released(expected=4)
    queue: DelayQueue[str] = DelayQueue(SystemClock(), released, "test")
    queue.start()
    try:
        yield queue, released
    finally:
        await queue.stop()


async def test_items_are_released_in_due_order(
    queue_and_released: tuple[DelayQueue[str], Released],
) -> None:
    queue, released = queue_and_released
    queue.add(0.05, "last")
    queue.add(0.01, "first")
    queue.add(0.03, "third")
    queue.add(0.02, "second")
    assert len(queue) == 4
    await asyncio.wait_for(released.done.wait(), WAIT)
    assert released.items == ["first", "second", "third", "last"]
    assert len(queue) == 0


async def test_an_earlier_item_added_later_wakes_the_timer(
    queue_and_released: tuple[DelayQueue[str], Released],
) -> None:
    queue, released = queue_and_released
    released.expected = 1
    queue.add(60.0, "much later")
    await asyncio.sleep(0)  # the timer is now asleep until "much later" is due
    queue.add(0.01, "soon")
    # Only a woken timer can release "soon" well before the minute is up.
    await asyncio.wait_for(released.done.wait(), WAIT)
    assert released.items == ["soon"]
    assert len(queue) == 1


async def test_equal_due_times_keep_insertion_order(
    queue_and_released: tuple[DelayQueue[str], Released],
) -> None:
    queue, released = queue_and_released
    released.expected = 3
    for item in ("a", "b", "c"):
        queue.add(0.0, item)
    await asyncio.wait_for(released.done.wait(), WAIT)
    assert released.items == ["a", "b", "c"]


async def test_items_added_before_start_are_released_after_start() -> None:
    released = Released(expected=2)
    queue: DelayQueue[str] = DelayQueue(SystemClock(), released, "test")
    queue.add(0.02, "b")
    queue.add(-5.0, "a")  # a negative delay means "now"
    try:
        queue.start()
        await asyncio.wait_for(released.done.wait(), WAIT)
    finally:
        await queue.stop()
    assert released.items == ["a", "b"]


async def test_stop_keeps_undue_items_unreleased() -> None:
    released = Released(expected=1)
    queue: DelayQueue[str] = DelayQueue(SystemClock(), released, "test")
    queue.start()
    queue.add(60.0, "much later")
    await asyncio.sleep(0)
    await asyncio.wait_for(queue.stop(), WAIT)
    assert released.items == []
    assert len(queue) == 1
