"""Migrations on both databases; a newer schema is refused with an explanation."""

from __future__ import annotations

import pytest
from mautrix.util.async_db import Database, Scheme

from bridge.config import DatabaseConfig
from bridge.db.database import open_database, redact_url
from bridge.db.migrations import upgrade_table
from bridge.errors import StartupError


async def test_migrated_to_latest(db: Database) -> None:
    version = await db.fetchval("SELECT version FROM alcove_version")
    assert version == len(upgrade_table.upgrades)
    for table in ("inbox_event", "outbox", "acting_device"):
        assert await db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0


async def test_reopen_is_idempotent(db_url: str, db: Database) -> None:
    await db.execute(
        "INSERT INTO acting_device (user_id, device_id) VALUES ($1, $2)", "@a:b", "ALCOVE"
    )
    again = await open_database(DatabaseConfig(url=db_url))
    try:
        assert await again.fetchval("SELECT device_id FROM acting_device") == "ALCOVE"
    finally:
        await again.stop()


async def test_newer_schema_is_refused(db_url: str, db: Database) -> None:
    await db.execute("UPDATE alcove_version SET version = $1", len(upgrade_table.upgrades) + 5)
    with pytest.raises(StartupError) as err:
        await open_database(DatabaseConfig(url=db_url))
    message = str(err.value)
    assert "newer Alcove" in message
    assert "never downgrades" in message


def test_redact_url_hides_password() -> None:
    assert (
        redact_url("postgres://alcove:s3cret@db:5432/alcove")
        == "postgres://alcove:***@db:5432/alcove"
    )
    assert redact_url("sqlite:/var/lib/alcove.db") == "sqlite:/var/lib/alcove.db"


async def test_the_audit_log_is_append_only(db: Database) -> None:
    """UPDATE and DELETE are refused on both databases, and TRUNCATE on PostgreSQL (SQLite has
    none: its ``DELETE FROM`` without WHERE still fires the row trigger)."""
    await db.execute(
        "INSERT INTO audit (at, actor, action) VALUES ($1, $2, $3)", 1, "@x:test.local", "test"
    )
    statements = ["UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"]
    if db.scheme != Scheme.SQLITE:
        statements.append("TRUNCATE audit")
    for statement in statements:
        with pytest.raises(Exception, match="append-only"):  # sqlite3 / asyncpg error types
            await db.execute(statement)
    assert await db.fetchval("SELECT actor FROM audit") == "@x:test.local"
