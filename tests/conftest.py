"""Shared fixtures: the database under test runs on SQLite *and* PostgreSQL.

PostgreSQL tests use a fresh database per test on 127.0.0.1:5432 (override with
ALCOVE_TEST_POSTGRES). When PostgreSQL is unreachable they are skipped locally but fail in CI
(CI=true): CI must never pass with the PostgreSQL half silently missing."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from mautrix.util.async_db import Database

from bridge.config import DatabaseConfig
from bridge.db.database import open_database

PG_DSN = os.environ.get("ALCOVE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


async def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    name = f"alcove_test_{secrets.token_hex(6)}"
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_DSN}: {e}")
        pytest.skip(f"PostgreSQL unreachable at {PG_DSN}: {e}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_DSN.rsplit("/", 1)[0] + "/" + name


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'alcove.db'}"
        return
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(DatabaseConfig(url=db_url))
    try:
        yield database
    finally:
        await database.stop()
