"""Group commit for bookkeeping writes that need not be durable one by one ("this message was
sent", "this event was handled"): items collected for a few milliseconds are written in one
transaction, so one commit (one fsync on SQLite) covers many. Losing such a write in a crash
only means a resend with the same transaction id (Synapse dedupes) or a re-run of an idempotent
handler. Writes that must be durable before answering (the inbox itself) never go through here.

The flush loop is one owned task; ``add`` returns a future resolved once the item's batch was
written (or failed, which is logged: see above)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from mautrix.util.async_db import Database
from mautrix.util.async_db.database import conn_var

from .db.database import transaction

T = TypeVar("T")
log = logging.getLogger("alcove.batcher")


class Batcher(Generic[T]):
    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], Awaitable[None]],
        max_delay: float = 0.01,
        max_items: int = 500,
    ) -> None:
        self.name = name
        self.write = write
        self.max_delay = max_delay
        self.max_items = max_items
        self._items: list[tuple[T, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batch:{self.name}")

    def add(self, item: T) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.append((item, fut))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.max_delay)  # let a batch gather
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything added so far. Returns only when it is written — including items a
        concurrent flush (the loop's) had already taken and is still writing."""
        async with self._writing:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self._items:
            batch, self._items = self._items[: self.max_items], self._items[self.max_items :]
            try:
                await self.write([item for item, _ in batch])
            except Exception:
                # Not fatal by construction: the rows keep their earlier state and the work is
                # redone (deduplicated) after the next start.
                log.exception("%s: writing %d items failed", self.name, len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()


R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Group commit for writes that must be durable before their caller goes on (an outbox row
    before its send, the record of a command that ran): concurrent callers' items are written
    together in one database transaction — one commit, one fsync on SQLite — and each caller
    gets its own result, or the batch's error. No timer: a batch is whatever arrived while the
    previous one was being written, so a lone caller waits for nothing.

    A caller already inside a database transaction writes at once, in that transaction (its
    write must commit or roll back with the rest)."""

    def __init__(
        self,
        name: str,
        db: Database,
        write: Callable[[list[T]], Awaitable[list[R]]],
        max_items: int = 200,
    ) -> None:
        self.name = name
        self.db = db
        self.write = write
        self.max_items = max_items
        self._items: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        if conn_var.get(None) is not None:  # inside a transaction (or a held connection)
            (result,) = await self.write([item])
            return result
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append((item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"group-commit:{self.name}")
        return await fut

    async def _run(self) -> None:
        await asyncio.sleep(0)  # callers of this same turn of the loop join the first batch
        while self._items:
            batch, self._items = self._items[: self.max_items], self._items[self.max_items :]
            try:
                async with transaction(self.db):
                    results = await self.write([item for item, _ in batch])
            except Exception as e:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
