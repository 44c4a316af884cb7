"""Time is an input: everything that needs "now" — or "later" — gets a Clock.

The clock also owns timers (``call_at`` / ``cancel``): the real clock runs them on APScheduler
3.x (AsyncIOScheduler, memory job store); a fake clock runs them when a test says time has
passed, deterministically. The database is the source of truth: owners re-arm their timers from
it at start-up; a timer only says "look at row X now". Lateness policy is the owner's, so
APScheduler never drops a late job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

TimerCallback = Callable[..., Awaitable[None]]


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC datetime."""

    def time(self) -> float:
        """Seconds since the epoch (wall clock)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    async def sleep(self, seconds: float) -> None: ...

    def call_at(self, key: str, when: datetime, fn: TimerCallback, *args: Any) -> None:
        """Await ``fn(*args)`` at ``when`` (aware). Re-using a key replaces its timer."""

    def cancel(self, key: str) -> None:
        """Forget the timer ``key``; nothing happens when there is none."""

    def pending_timers(self) -> int:
        """How many timers are armed."""

    def start_timers(self) -> None:
        """Timers run from now on (those armed before wait until then)."""

    def stop_timers(self) -> None: ...


class SystemClock:
    def __init__(self) -> None:
        self._scheduler: AsyncIOScheduler | None = None
        self._started = False

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @property
    def scheduler(self) -> AsyncIOScheduler:
        if self._scheduler is None:
            self._scheduler = AsyncIOScheduler(
                job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
            )
        return self._scheduler

    def call_at(self, key: str, when: datetime, fn: TimerCallback, *args: Any) -> None:
        self.scheduler.add_job(
            fn, DateTrigger(run_date=when), args=args, id=key, replace_existing=True
        )

    def cancel(self, key: str) -> None:
        try:
            self.scheduler.remove_job(key)
        except JobLookupError:
            pass

    def pending_timers(self) -> int:
        return len(self.scheduler.get_jobs())

    def start_timers(self) -> None:
        if not self._started:
            self.scheduler.start()
            self._started = True

    def stop_timers(self) -> None:
        if self._started:
            self.scheduler.shutdown(wait=False)
            self._started = False


def ms(clock: Clock) -> int:
    """Milliseconds since the epoch, as stored in the database."""
    return int(clock.time() * 1000)
