"""bridge/workers.py KeyedWorkers: per-key order, cross-key parallelism, bounded, stoppable."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.workers import KeyedWorkers

WAIT = 2.0  # generous upper bound for things that should happen almost at once


class Gated:
    """A handler whose items each wait for their own gate; it records starts and ends."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.running = 0
        self.max_running = 0
        self._start_events: dict[str, asyncio.Event] = {}

    def gate(self, item: str) -> asyncio.Event:
        return self.gates.setdefault(item, asyncio.Event())

    def start_event(self, item: str) -> asyncio.Event:
        return self._start_events.setdefault(item, asyncio.Event())

    async def wait_started(self, item: str) -> None:
        await asyncio.wait_for(self.start_event(item).wait(), WAIT)

    async def __call__(self, item: str) -> None:
        self.started.append(item)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.start_event(item).set()
        try:
            await self.gate(item).wait()
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        finally:
            self.running -= 1
        self.finished.append(item)


async def test_same_key_runs_in_submission_order_one_at_a_time() -> None:
    handler = Gated()
    workers = KeyedWorkers("test", handler)
    for item in ("a1", "a2", "a3"):
        workers.submit("room-a", item)

    await handler.wait_started("a1")
    await asyncio.sleep(0)  # give a2 every chance to start early (it must not)
    assert handler.started == ["a1"]
    assert workers.queued == 3

    handler.gate("a2").set()  # opening a later gate first must not reorder anything
    handler.gate("a3").set()
    await asyncio.sleep(0)
    assert handler.started == ["a1"]

    handler.gate("a1").set()
    await asyncio.wait_for(workers.join(), WAIT)
    assert handler.started == ["a1", "a2", "a3"]
    assert handler.finished == ["a1", "a2", "a3"]
    assert handler.max_running == 1
    assert workers.queued == 0


async def test_different_keys_run_concurrently() -> None:
    handler = Gated()
    workers = KeyedWorkers("test", handler)
    workers.submit("room-a", "a1")
    workers.submit("room-b", "b1")

    # Both are in flight at once: neither can finish before the other has started.
    await handler.wait_started("a1")
    await handler.wait_started("b1")
    assert handler.running == 2

    handler.gate("b1").set()  # the later key finishes first
    handler.gate("a1").set()
    await asyncio.wait_for(workers.join(), WAIT)
    assert handler.finished == ["b1", "a1"]


async def test_concurrency_limit_is_respected() -> None:
    handler = Gated()
    workers = KeyedWorkers("test", handler, concurrency=2)
    for key in ("a", "b", "c", "d"):
        workers.submit(key, key)

    await handler.wait_started("a")
    await handler.wait_started("b")
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(handler.started) == ["a", "b"]

    handler.gate("a").set()
    await handler.wait_started("c")
    assert handler.running == 2

    for key in ("b", "c", "d"):
        handler.gate(key).set()
    await asyncio.wait_for(workers.join(), WAIT)
    assert sorted(handler.finished) == ["a", "b", "c", "d"]
    assert handler.max_running == 2


async def test_handler_exception_does_not_stall_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    async def handler(item: str) -> None:
        seen.append(item)
        if item == "bad":
            raise ValueError("handler bug")

    workers: KeyedWorkers[str] = KeyedWorkers("flaky", handler)
    with caplog.at_level(logging.ERROR, logger="alcove.workers"):
        for item in ("first", "bad", "after"):
            workers.submit("room", item)
        await asyncio.wait_for(workers.join(), WAIT)

    assert seen == ["first", "bad", "after"]
    assert any("flaky" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_key_can_be_reused_after_it_drained() -> None:
    seen: list[str] = []

    async def handler(item: str) -> None:
        seen.append(item)

    workers: KeyedWorkers[str] = KeyedWorkers("test", handler)
    workers.submit("room", "one")
    await asyncio.wait_for(workers.join(), WAIT)
    workers.submit("room", "two")
    await asyncio.wait_for(workers.join(), WAIT)
    assert seen == ["one", "two"]


async def test_join_returns_at_once_when_idle() -> None:
    handler = Gated()
    workers = KeyedWorkers("test", handler)
    await asyncio.wait_for(workers.join(), WAIT)
    assert handler.started == []


async def test_stop_lets_in_flight_items_finish_within_the_timeout() -> None:
    handler = Gated()
    workers = KeyedWorkers("test", handler)
    workers.submit("room", "a1")
    workers.submit("room", "a2")
    await handler.wait_started("a1")

    stopping = asyncio.create_task(workers.stop(timeout=WAIT))
    await asyncio.sleep(0)
    handler.gate("a1").set()
    await asyncio.wait_for(stopping, WAIT)

    assert handler.finished == ["a1"]
    assert handler.cancelled == []
    assert "a2" not in handler.started  # left for the next start


async def test_stop_cancels_after_the_timeout_and_leaves_later_items() -> None:
    handler = Gated()
    workers = KeyedWorkers("test", handler)
    workers.submit("room", "a1")
    workers.submit("room", "a2")
    workers.submit("other", "b1")
    await handler.wait_started("a1")
    await handler.wait_started("b1")

    await asyncio.wait_for(workers.stop(timeout=0.01), WAIT)

    assert sorted(handler.cancelled) == ["a1", "b1"]
    assert handler.finished == []
    assert "a2" not in handler.started
    assert handler.running == 0

    workers.submit("room", "late")  # refused after stop: it stays in the database
    for _ in range(5):
        await asyncio.sleep(0)
    assert "late" not in handler.started


async def test_lanes_waiting_for_a_slot_do_not_start_after_stop() -> None:
    started: list[str] = []
    release = asyncio.Event()

    async def handler(item: str) -> None:
        started.append(item)
        await release.wait()

    workers: KeyedWorkers[str] = KeyedWorkers("t", handler, concurrency=1)
    workers.submit("a", "a1")
    workers.submit("b", "b1")  # waits for the only slot
    await asyncio.sleep(0.01)
    assert started == ["a1"]
    stopping = asyncio.create_task(workers.stop(timeout=5))
    await asyncio.sleep(0.01)
    release.set()
    await stopping
    assert started == ["a1"]  # b1 stays in the database for the next start
