"""In-process timers on APScheduler 3.x (AsyncIOScheduler, memory job store). The database is
the source of truth: owners re-arm their timers from it at start-up; a timer here only says
"look at row X now". Lateness policy is the owner's, so APScheduler never drops a late job."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

log = logging.getLogger("alcove.timers")


class Timers:
    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
        )
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._scheduler.start()
            self._started = True

    def arm(
        self,
        job_id: str,
        when: datetime,
        callback: Callable[..., Awaitable[None]],
        *args: Any,
    ) -> None:
        """Await ``callback(*args)`` at ``when`` (aware). Re-arming an id replaces its timer.
        ``callback`` must be a coroutine function: APScheduler runs anything else in a thread,
        where a returned coroutine would never be awaited."""
        if not inspect.iscoroutinefunction(callback):
            raise TypeError(f"{callback!r} is not a coroutine function")
        self._scheduler.add_job(
            callback, DateTrigger(run_date=when), args=args, id=job_id, replace_existing=True
        )

    def cancel(self, job_id: str) -> None:
        try:
            self._scheduler.remove_job(job_id)
        except JobLookupError:
            pass

    def count(self) -> int:
        return len(self._scheduler.get_jobs())

    def stop(self) -> None:
        if self._started:
            self._scheduler.shutdown(wait=False)
            self._started = False
