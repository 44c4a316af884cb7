"""The clock owns timers (bridge/clock.py): the real clock runs them on APScheduler, the fake
clock runs them only when told that time has passed — in order, deterministically."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from bridge.clock import SystemClock
from bridge.timers import Timers
from tests.support.fakes import FakeClock

NOON = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


async def test_the_fake_clock_fires_what_is_due_in_order_and_nothing_early() -> None:
    clock = FakeClock(NOON)
    timers = Timers(clock)
    ran: list[str] = []

    async def fire(name: str) -> None:
        ran.append(name)

    timers.arm("late", NOON + timedelta(seconds=10), fire, "late")
    timers.arm("early", NOON + timedelta(seconds=5), fire, "early")
    assert await clock.fire_due() == [] and ran == []
    assert await clock.advance_and_fire(5) == ["early"]
    assert ran == ["early"] and timers.count() == 1
    assert await clock.advance_and_fire(60) == ["late"]
    assert ran == ["early", "late"] and timers.count() == 0


async def test_the_fake_clock_rearms_cancels_and_runs_timers_armed_by_a_timer() -> None:
    clock = FakeClock(NOON)
    timers = Timers(clock)
    ran: list[str] = []

    async def fire(name: str) -> None:
        ran.append(name)
        if name == "first":  # a timer that re-arms a due follow-up: it runs in the same pass
            timers.arm("next", NOON, fire, "next")

    timers.arm("t", NOON + timedelta(hours=1), fire, "replaced")
    timers.arm("t", NOON, fire, "first")  # re-arming a key replaces its timer
    timers.arm("gone", NOON, fire, "gone")
    timers.cancel("gone")
    timers.cancel("gone")  # cancelling twice is fine
    assert await clock.fire_due() == ["t", "next"]
    assert ran == ["first", "next"]


async def test_the_system_clock_runs_timers_on_the_loop() -> None:
    clock = SystemClock()
    timers = Timers(clock)
    timers.start()
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def fire(value: int) -> None:
        done.set_result(value)

    async def never() -> None:
        raise AssertionError("cancelled timer ran")

    timers.arm("never", datetime.now(UTC) + timedelta(milliseconds=20), never)
    timers.cancel("never")
    clock.call_at("t1", datetime.now(UTC) + timedelta(milliseconds=50), fire, 7)
    assert await asyncio.wait_for(done, 5) == 7
    await asyncio.sleep(0.05)
    assert clock.pending_timers() == 0
    timers.stop()
