"""Opening the database: SQLite (default) or PostgreSQL, migrated to the current schema."""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import aiosqlite
from mautrix.util.async_db import Database, UnsupportedDatabaseVersion
from mautrix.util.async_db import aiosqlite as mautrix_sqlite

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


class OneTripConnection(mautrix_sqlite.TxnConnection):
    """A read in one trip to SQLite's thread instead of three (execute, fetch, close the
    cursor): every trip is a hand-over between threads that costs the event loop a wake-up,
    and on the hot path (a command) reads are most of the database's work."""

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[sqlite3.Row]:
        rows = await self._execute(self._fetch, _positional(query), args, False)  # type: ignore[no-untyped-call]
        return cast(list[sqlite3.Row], rows)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> sqlite3.Row | None:
        row = await self._execute(self._fetch, _positional(query), args, True)  # type: ignore[no-untyped-call]
        return cast(sqlite3.Row | None, row)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # type: ignore[override]
        return await aiosqlite.Connection.execute(self, _positional(query), args)

    async def executemany(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # type: ignore[override]
        return await aiosqlite.Connection.executemany(self, _positional(query), *args)

    def _fetch(self, sql: str, args: tuple[Any, ...], one: bool) -> Any:
        """In SQLite's thread."""
        cursor = self._conn.execute(sql, args)
        try:
            return cursor.fetchone() if one else cursor.fetchall()
        finally:
            cursor.close()


@functools.lru_cache(maxsize=1024)
def _positional(query: str) -> str:
    """``$1`` → ``?1``, once per distinct query (the regular expression cost 5% of the CPU of a
    command when run on every statement)."""
    return mautrix_sqlite.POSITIONAL_PARAM_PATTERN.sub(r"?\1", query)


# mautrix's SQLite pool makes its connections from the class of this name in its module.
mautrix_sqlite.TxnConnection = OneTripConnection  # type: ignore[misc]


async def _keep_session(conn: Any) -> None:
    """A connection going back to the pool: asyncpg still rolls back an open transaction
    (that is not this hook), but skips its default reset query (`RESET ALL`, `UNLISTEN *`,
    unlocking advisory locks: a round trip to the server on every release, a tenth of the CPU
    of a command). Alcove sets no session state, listens to nothing and takes no advisory
    lock."""


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
        db_args["reset"] = _keep_session
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
