"""bridge/timers.py: timers await coroutine functions on the event loop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bridge.timers import Timers


async def test_armed_coroutine_runs_on_the_loop_with_its_arguments() -> None:
    timers = Timers()
    timers.start()
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def fire(value: int) -> None:
        done.set_result(value)

    timers.arm("t1", datetime.now(UTC) + timedelta(milliseconds=50), fire, 7)
    assert await asyncio.wait_for(done, 5) == 7
    timers.stop()


async def test_rearming_replaces_and_cancel_removes() -> None:
    timers = Timers()
    timers.start()

    async def fire() -> None:
        raise AssertionError("cancelled timer ran")

    later = datetime.now(UTC) + timedelta(hours=1)
    timers.arm("t", later, fire)
    timers.arm("t", later, fire)
    assert timers.count() == 1
    timers.cancel("t")
    timers.cancel("t")  # cancelling twice is fine
    assert timers.count() == 0
    timers.stop()


def test_a_plain_function_is_refused() -> None:
    timers = Timers()

    def not_async() -> None:
        return None

    with pytest.raises(TypeError):
        timers.arm("t", datetime.now(UTC), not_async)  # type: ignore[arg-type]
