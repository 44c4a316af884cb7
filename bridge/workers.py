"""Per-key ordered work with bounded parallelism: items with the same key (a room) run one at a
time in submission order; different keys run in parallel, at most ``concurrency`` at once.

Every task is owned here and stopped by ``stop``; nothing is fired and forgotten."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("alcove.workers")


class KeyedWorkers(Generic[T]):
    def __init__(
        self, name: str, handler: Callable[[T], Awaitable[None]], concurrency: int = 32
    ) -> None:
        self.name = name
        self.handler = handler
        self._queues: dict[str, deque[T]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True

    def submit(self, key: str, item: T) -> None:
        if not self._accepting:
            return  # the item is still in the database; it is picked up at the next start
        self._queues.setdefault(key, deque()).append(item)
        if key not in self._tasks:
            self._idle.clear()
            self._tasks[key] = asyncio.create_task(self._drain(key), name=f"{self.name}:{key}")

    def stopping(self) -> bool:
        return not self._accepting

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue and self._accepting:
                item = queue[0]
                async with self._slots:
                    if self.stopping():
                        break  # stop() came while this lane waited for a slot
                    try:
                        await self.handler(item)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        # Handlers own their retries; this is a bug guard so a key never stalls.
                        log.exception("%s worker: unhandled error", self.name)
                queue.popleft()
        finally:
            self._tasks.pop(key, None)
            if not queue:
                self._queues.pop(key, None)
            if not self._tasks:
                self._idle.set()

    async def join(self) -> None:
        """Wait until everything submitted so far has been handled."""
        await self._idle.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work; let in-flight items finish for up to ``timeout``, then cancel.
        Unfinished items stay in the database and are processed at the next start."""
        self._accepting = False
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            log.warning(
                "%s: %d lanes still busy after %.0fs, cancelling: %s",
                self.name,
                len(pending),
                timeout,
                ", ".join(t.get_name() for t in pending),
            )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
