"""Group commit on both databases: concurrent writers share one transaction, each gets its own
result or the batch's error, and a writer already in a transaction writes in it. Reads in one
trip on SQLite return what the usual three trips did."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bridge.batcher import GroupCommit
from bridge.config import DatabaseConfig
from bridge.db.database import OneTripConnection, open_database, transaction
from bridge.db.outbox_repo import OutboxRepo


class Devices:
    """Writes acting_device rows; remembers each batch it was given."""

    def __init__(self, db: Database, fail_on: str | None = None) -> None:
        self.db = db
        self.batches: list[list[str]] = []
        self.fail_on = fail_on

    async def write(self, users: list[str]) -> list[int]:
        self.batches.append(users)
        for user in users:
            if user == self.fail_on:
                raise RuntimeError("disk full")
            await self.db.execute(
                "INSERT INTO acting_device (user_id, device_id) VALUES ($1, 'D')", user
            )
        return [len(user) for user in users]

    async def stored(self) -> set[str]:
        rows = await self.db.fetch("SELECT user_id FROM acting_device")
        return {str(r["user_id"]) for r in rows}


async def test_concurrent_writers_share_one_transaction(db: Database) -> None:
    devices = Devices(db)
    write: GroupCommit[str, int] = GroupCommit("t", db, devices.write)
    users = [f"@u{i}:x" for i in range(1, 13)]
    results = await asyncio.gather(*(write(u) for u in users))
    assert results == [len(u) for u in users]  # each caller its own result
    assert devices.batches == [users]  # written together
    assert await devices.stored() == set(users)
    assert await write("@alone:x") == len("@alone:x")  # a lone caller waits for nothing
    assert devices.batches[-1] == ["@alone:x"]


async def test_a_failed_batch_fails_every_caller_and_writes_nothing(db: Database) -> None:
    devices = Devices(db, fail_on="@bad:x")
    write: GroupCommit[str, int] = GroupCommit("t", db, devices.write)
    results = await asyncio.gather(
        *(write(u) for u in ("@a:x", "@bad:x", "@b:x")), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await devices.stored() == set()  # rolled back together
    assert await write("@c:x") == 4  # the next batch goes on
    assert await devices.stored() == {"@c:x"}


async def test_a_writer_in_a_transaction_writes_in_it(db: Database) -> None:
    devices = Devices(db)
    write: GroupCommit[str, int] = GroupCommit("t", db, devices.write)
    with pytest.raises(RuntimeError):
        async with transaction(db):
            await write("@inside:x")
            raise RuntimeError("the caller's transaction fails after the write")
    assert await devices.stored() == set()  # rolled back with the caller's transaction


async def test_insert_many_with_a_key_twice_reports_it_new_once(db: Database) -> None:
    """Two callers' batches can hold the same key: one row, new for the first only."""
    repo = OutboxRepo(db)
    item: tuple[str, str, str, str, dict[str, Any], str] = (
        "k",
        "@s:x",
        "!r:x",
        "m.room.message",
        {"body": "x"},
        "txn",
    )
    written = await repo.insert_many([item, item], 1)
    assert [new for _, new in written] == [True, False]
    assert written[0][0].seq == written[1][0].seq
    assert await db.fetchval("SELECT COUNT(*) FROM outbox") == 1


async def test_sqlite_reads_in_one_trip(tmp_path: Path) -> None:
    """SQLite only (PostgreSQL's asyncpg has no thread to make trips to): its own database, so
    the PostgreSQL run is not a skip."""
    db = await open_database(DatabaseConfig(url=f"sqlite:{tmp_path / 'one-trip.db'}"))
    try:
        await _reads_in_one_trip(db)
    finally:
        await db.stop()


async def _reads_in_one_trip(db: Database) -> None:
    raw: Any = db
    async with raw.acquire() as conn:
        assert isinstance(conn.wrapped, OneTripConnection)
    await db.execute("INSERT INTO acting_device (user_id, device_id) VALUES ('@a:x', 'A')")
    await db.execute("INSERT INTO acting_device (user_id, device_id) VALUES ('@b:x', 'B')")
    rows = await db.fetch("SELECT user_id, device_id FROM acting_device ORDER BY user_id")
    assert [(r["user_id"], r["device_id"]) for r in rows] == [("@a:x", "A"), ("@b:x", "B")]
    row = await db.fetchrow("SELECT device_id FROM acting_device WHERE user_id = $1", "@b:x")
    assert row is not None and row["device_id"] == "B"
    assert (
        await db.fetchval("SELECT device_id FROM acting_device WHERE user_id = $1", "@c:x") is None
    )
