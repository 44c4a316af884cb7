"""bridge/batcher.py: group commit of bookkeeping writes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.batcher import Batcher


async def test_items_added_together_are_written_in_one_batch() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)

    batcher: Batcher[int] = Batcher("t", write, max_delay=0.02)
    batcher.start()
    futures = [batcher.add(i) for i in range(50)]
    await asyncio.wait_for(asyncio.gather(*futures), 2)
    assert writes == [list(range(50))]
    await batcher.stop()


async def test_large_batches_are_split_and_stop_flushes() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)

    batcher: Batcher[int] = Batcher("t", write, max_delay=10, max_items=4)
    batcher.start()
    for i in range(10):
        batcher.add(i)
    await batcher.stop()  # long before max_delay: stop writes everything
    assert writes == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_failed_write_is_logged_and_does_not_block(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def write(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk full")

    batcher: Batcher[int] = Batcher("t", write, max_delay=0.01)
    batcher.start()
    with caplog.at_level(logging.ERROR, logger="alcove.batcher"):
        await asyncio.wait_for(batcher.add(1), 2)
    assert "writing 1 items failed" in caplog.text
    await asyncio.wait_for(batcher.add(2), 2)
    assert calls == 2
    await batcher.stop()


async def test_flush_waits_for_a_write_already_in_progress() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    written: list[int] = []

    async def write(items: list[int]) -> None:
        started.set()
        await release.wait()
        written.extend(items)

    batcher: Batcher[int] = Batcher("t", write, max_delay=0)
    batcher.start()
    batcher.add(1)
    await asyncio.wait_for(started.wait(), 2)  # the loop has taken item 1 and is writing it
    flushing = asyncio.create_task(batcher.flush())
    await asyncio.sleep(0.01)
    assert not flushing.done()  # must not return while item 1 is not written yet
    release.set()
    await asyncio.wait_for(flushing, 2)
    assert written == [1]
    await batcher.stop()
