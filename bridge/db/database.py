"""Opening the database: SQLite (default) or PostgreSQL, migrated to the current schema."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mautrix.util.async_db import Database, UnsupportedDatabaseVersion

from ..config import DatabaseConfig
from ..errors import StartupError
from .migrations import upgrade_table

log = logging.getLogger("alcove.db")


@asynccontextmanager
async def transaction(db: Database) -> AsyncIterator[Any]:
    """One database transaction; repository calls made inside it (through ``db``) join it, as
    mautrix keeps the connection in a context variable. (mautrix annotates ``acquire()`` as the
    connection itself, hence the ``Any``.)"""
    raw: Any = db
    async with raw.acquire() as conn, conn.transaction():
        yield conn


def is_sqlite(url: str) -> bool:
    return url.startswith(("sqlite:", "sqlite3:"))


def create_database(config: DatabaseConfig) -> Database:
    db_args: dict[str, Any] = {}
    if is_sqlite(config.url):
        # WAL with FULL sync: a transaction acknowledged to Synapse survives power loss too.
        # secure_delete: a deleted or overwritten row's bytes are zeroed, not left in the page
        # (a session's text in the inbox until handled); the WAL is truncated after a purge.
        db_args["init_commands"] = [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = FULL",
            "PRAGMA secure_delete = ON",
        ]
    else:
        db_args["min_size"] = config.min_size
        db_args["max_size"] = config.max_size
    return Database.create(
        config.url,
        upgrade_table=upgrade_table,
        db_args=db_args,
        log=logging.getLogger("alcove.db.sql"),
        owner_name="alcove",
    )


async def open_database(config: DatabaseConfig) -> Database:
    """Start the pool and migrate. Refuses a schema newer than this code with an explanation."""
    db = create_database(config)
    try:
        await db.start()
    except UnsupportedDatabaseVersion as e:
        await db.stop()
        raise StartupError(
            f"{e}. The database was used by a newer Alcove: run that version (or restore a "
            "backup taken before the upgrade). Alcove never downgrades a database."
        ) from None
    except OSError as e:
        raise StartupError(f"Cannot open the database {redact_url(config.url)}: {e}") from None
    return db


def redact_url(url: str) -> str:
    """A database URL safe to log (no password)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
