"""Rows remembered by the one repository that writes them.

Alcove is its database's only writer (the database-owner check refuses a second Alcove), so a
repository may keep what it read, as long as every write it makes goes through ``writing``:
what was remembered of the written keys is forgotten before and after the write, and a read
that overlapped any write is not remembered (it may have seen the row before the write
committed). On the hot path every handled message asks for its room, and a client's message
for the client: remembering them saves a database round trip each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Remembered(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[K, V] = {}
        self._writes = 0

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """The remembered value, or ``read()`` (remembered unless a write overlapped it)."""
        if key in self._items:
            return self._items[key]
        writes = self._writes
        value = await read()
        if writes == self._writes:
            if len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))  # the oldest remembered
            self._items[key] = value
        return value

    @asynccontextmanager
    async def writing(self, *keys: K) -> AsyncIterator[None]:
        """Around a write to these keys (none named: to any key)."""
        self._forget(keys)
        try:
            yield
        finally:
            self._forget(keys)

    def _forget(self, keys: tuple[K, ...]) -> None:
        self._writes += 1
        if not keys:
            self._items.clear()
        for key in keys:
            self._items.pop(key, None)
