"""Named one-shot timers for the features, run by the clock (``Clock.call_at``): APScheduler
behind the real clock, deterministic on a fake one. See bridge/clock.py for the policy."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from .clock import Clock, SystemClock

log = logging.getLogger("alcove.timers")


class Timers:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    def start(self) -> None:
        self.clock.start_timers()

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
        self.clock.call_at(job_id, when, callback, *args)

    def cancel(self, job_id: str) -> None:
        self.clock.cancel(job_id)

    def count(self) -> int:
        return self.clock.pending_timers()

    def stop(self) -> None:
        self.clock.stop_timers()
