"""A real Synapse (SQLite, 127.0.0.1) started once per test session (with pytest-xdist, once per
worker: its own state dir and free ports), Alcove as a subprocess per test on SQLite and
PostgreSQL, and users driving Synapse through the client-server API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from mautrix.util.async_db import Database

from bridge.config import Config, DatabaseConfig, load_config
from bridge.db.database import open_database
from bridge.devstack import DevStack, DevUser
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.proxy import FaultProxy

USERS = (
    DevUser("therapist", "therapist", "Dr Test Therapist"),
    DevUser("care", "care", "Carla Care"),
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # mail_delay: clients' email notifications (test_notify.py) go out a second after the
    # message instead of 10 minutes (Synapse has no minimum); nothing else has an email pusher.
    stack = DevStack(tmp_path_factory.mktemp("stack"), users=USERS, mail_delay="1s")
    config = stack.prepare()
    stack.start()
    try:
        asyncio.run(stack.bootstrap(config))
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack_config(synapse: DevStack) -> Config:
    return load_config(synapse.config_path, environ={})


@pytest.fixture
def passwords(synapse: DevStack) -> dict[str, str]:
    return {f"@{k}:localhost": v for k, v in synapse.dev_secrets["passwords"].items()}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def proxy(synapse: DevStack) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(synapse.dev_secrets["hs_port"])
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def alcove(
    synapse: DevStack, proxy: FaultProxy, db_url: str, tmp_path: Path
) -> AsyncIterator[AlcoveProcess]:
    process = AlcoveProcess(
        synapse.config_path,
        proxy.url,
        db_url,
        synapse.dev_secrets["as_port"],
        tmp_path / "alcove.log",
        # A scheduled message more than 2 s late is marked late (policy: send).
        extra_env={"ALCOVE__SCHEDULE__GRACE_SECONDS": "2"},
    )
    await process.start()
    yield process
    await process.stop()


@pytest.fixture
async def alcove_db(db_url: str) -> AsyncIterator[Database]:
    """The running Alcove's database, opened by the test to look at what it persisted."""
    db = await open_database(DatabaseConfig(url=db_url))
    yield db
    await db.stop()


@pytest.fixture
async def therapist(
    synapse: DevStack, http: aiohttp.ClientSession, passwords: dict[str, str]
) -> MatrixUser:
    user_id = "@therapist:localhost"
    return await MatrixUser(http, synapse.homeserver_url, user_id).login(passwords[user_id])
