"""A single owned task that hands items back at a due time (retries with backoff).

One timer for all delayed items, woken when an earlier item arrives; not a poll loop."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

from .clock import Clock

T = TypeVar("T")


class DelayQueue(Generic[T]):
    def __init__(self, clock: Clock, release: Callable[[T], None], name: str) -> None:
        self.clock = clock
        self.release = release
        self.name = name
        self._heap: list[tuple[float, int, T]] = []
        self._counter = itertools.count()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"delay:{self.name}")

    def add(self, delay: float, item: T) -> None:
        heapq.heappush(
            self._heap, (self.clock.monotonic() + max(0.0, delay), next(self._counter), item)
        )
        self._changed.set()

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            now = self.clock.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, item = heapq.heappop(self._heap)
                self.release(item)
            timeout = self._heap[0][0] - now if self._heap else None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def backoff(attempt: int, base: float, cap: float = 300.0) -> float:
    """Exponential backoff: base, 2*base, 4*base ... capped."""
    exponent = min(max(0, attempt - 1), 62)  # 2**62 * any sane base is past any cap
    return float(min(cap, base * (2**exponent)))
