"""Nothing of an ended session on disk: deleted rows leave their bytes in database files.

SQLite keeps a deleted row's bytes in the page (unless ``secure_delete``), in free pages and in
the WAL until a checkpoint; PostgreSQL keeps them in the heap page and its indexes until the
space is reused, and in WAL segments until they are recycled and overwritten. So after a purge:

- Alcove's own database: SQLite runs with ``secure_delete`` (database.py) and is checkpointed
  with TRUNCATE here; PostgreSQL gets VACUUM FULL of the inbox (small; the only table that ever
  held a session's text, until the event was handled).
- The homeserver's database, read from ``homeserver.synapse_config``: SQLite gets ``VACUUM``
  (every page rewritten) and ``wal_checkpoint(TRUNCATE)``; PostgreSQL gets ``VACUUM FULL`` of
  the tables that hold event content and file names (plain VACUUM leaves them: measured, see
  the README), then a CHECKPOINT. Alcove does this after each purge when
  ``sessions.vacuum_homeserver`` is set (the dev stack); in production an operator runs
  ``alcove vacuum-homeserver -c config.yaml`` (e.g. nightly, or after a session).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from mautrix.util.async_db import Database, Scheme
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .errors import ConfigError

log = logging.getLogger("alcove.scrub")

# Synapse tables that hold message text or file names (content, full-text index, media).
SYNAPSE_CONTENT_TABLES = ("event_json", "event_search", "local_media_repository")


@dataclass(frozen=True)
class HomeserverDatabase:
    """Where Synapse keeps its data: a SQLite file, or PostgreSQL connection arguments."""

    sqlite_path: Path | None = None
    postgres: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.sqlite_path is not None:
            return f"SQLite {self.sqlite_path}"
        pg = self.postgres or {}
        return f"PostgreSQL {pg.get('database')} on {pg.get('host') or 'localhost'}"


def homeserver_database(synapse_config: Path) -> HomeserverDatabase:
    """Read the ``database`` section of homeserver.yaml (relative paths: its directory)."""
    try:
        hs = YAML(typ="safe").load(synapse_config.read_text()) or {}
    except (OSError, YAMLError) as e:
        raise ConfigError(
            "homeserver.synapse_config", f"cannot read {synapse_config}: {e}"
        ) from None
    section = hs.get("database") or {}
    name = section.get("name", "sqlite3")
    args = section.get("args") or {}
    if name == "sqlite3":
        path = Path(str(args.get("database", "homeserver.db")))
        if not path.is_absolute():
            path = synapse_config.parent / path
        return HomeserverDatabase(sqlite_path=path)
    if name in ("psycopg2", "psycopg"):
        return HomeserverDatabase(
            postgres={
                "user": args.get("user"),
                "password": args.get("password"),
                "database": args.get("database") or args.get("dbname"),
                "host": args.get("host"),
                "port": args.get("port"),
            }
        )
    raise ConfigError("homeserver.synapse_config", f"unknown database engine {name!r}")


def _vacuum_sqlite(path: Path, timeout: float) -> None:
    """VACUUM rewrites every page (free pages and deleted cells gone); the TRUNCATE checkpoint
    copies the WAL into the file and empties it. Safe while Synapse runs: SQLite's locks make
    Synapse wait (its busy timeout) for the second or so this takes."""
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    try:
        conn.execute("VACUUM")
        deadline = time.monotonic() + timeout
        while True:
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: the WAL stayed in use; it was not truncated")
            time.sleep(0.1)
    finally:
        conn.close()


async def vacuum_homeserver(hs_db: HomeserverDatabase, timeout: float = 60.0) -> None:
    if hs_db.sqlite_path is not None:
        await asyncio.to_thread(_vacuum_sqlite, hs_db.sqlite_path, timeout)
        return
    pg = {k: v for k, v in (hs_db.postgres or {}).items() if v is not None}
    conn = await asyncpg.connect(timeout=timeout, **pg)
    try:
        for table in SYNAPSE_CONTENT_TABLES:
            # VACUUM FULL rewrites the table and its indexes into new files and unlinks the old
            # ones; it locks the table (Synapse waits) for as long as the copy takes.
            await conn.execute(f'VACUUM FULL "{table}"')
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def checkpoint_alcove(db: Database) -> None:
    if db.scheme == Scheme.SQLITE:
        row = await db.fetchrow("PRAGMA wal_checkpoint(TRUNCATE)")
        if row is not None and row[0]:
            log.warning("Alcove's WAL was busy; it is truncated at the next purge")
    else:
        await db.execute("VACUUM FULL inbox_event")  # small; plain VACUUM leaves bytes


class Scrubber:
    """Called after each purge (sessions.ending): one scrub at a time."""

    def __init__(self, db: Database, homeserver: HomeserverDatabase | None) -> None:
        self.db = db
        self.homeserver = homeserver
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        async with self._lock:
            await checkpoint_alcove(self.db)
            if self.homeserver is not None:
                await vacuum_homeserver(self.homeserver)
                log.info("Vacuumed the homeserver's database (%s)", self.homeserver.describe())
