"""Alcove unchanged against Synapse split into workers (issue 14): PostgreSQL, Redis, two event
persisters, the appservice pusher on a worker, client traffic through nginx. The stack starts
once for this module; Alcove runs as in every other integration test (on SQLite and PostgreSQL)
and does not know it talks to workers.

Skipped locally when nginx, Redis or PostgreSQL is missing (scripts/ensure-nginx, ensure-redis,
ensure-postgres); in CI (CI=true) that is a failure instead."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nio
import psycopg2
import pytest

from bridge.devstack_nginx import find_nginx
from bridge.devstack_workers import (
    APPSERVICE_WORKER,
    CLIENT_WORKER,
    DEFAULT_REDIS,
    WorkerDevStack,
    redis_subscribers,
)
from bridge.errors import StartupError
from tests.conftest import PG_DSN
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser, body_is
from tests.support.scenario import (
    BOT,
    THERAPIST,
    Added,
    add_client,
    add_many,
    bodies,
    from_bot,
    login,
    management_room,
)

from .conftest import USERS

REPO = Path(__file__).resolve().parents[2]


def _unavailable() -> str | None:
    if find_nginx() is None:
        subprocess.run([str(REPO / "scripts" / "ensure-nginx")], check=False)
        if find_nginx() is None:
            return "nginx is not installed and scripts/ensure-nginx could not install it"
    try:
        redis_subscribers(*DEFAULT_REDIS, "localhost")
    except OSError as e:
        return f"Redis is not reachable at {DEFAULT_REDIS} (scripts/ensure-redis): {e}"
    try:
        psycopg2.connect(PG_DSN, connect_timeout=5).close()
    except psycopg2.OperationalError as e:
        return f"PostgreSQL is not reachable at {PG_DSN}: {e}"
    return None


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerDevStack]:
    """Overrides the session's monolithic Synapse for this module: every fixture built on
    `synapse` (stack_config, proxy, alcove, therapist) now uses the worker-mode stack."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"The worker-mode stack is required in CI: {reason}")
        pytest.skip(reason)
    stack = WorkerDevStack(tmp_path_factory.mktemp("workers"), users=USERS, postgres_dsn=PG_DSN)
    try:
        config = stack.prepare()
        stack.start()
        asyncio.run(stack.bootstrap(config))
        yield stack
    finally:
        stack.stop()
        stack.drop_database()


def routed(stack: WorkerDevStack, method: str, path_part: str) -> set[str]:
    """The processes (by name) nginx sent matching requests to, from its access log."""
    by_port = {f"127.0.0.1:{port}": name for name, port in stack.ports.items()}
    seen: set[str] = set()
    for line in (stack.state_dir / "nginx" / "access.log").read_text().splitlines():
        verb, uri, upstream, _status = line.split(" ")
        if verb == method and path_part in uri:
            seen.add(by_port.get(upstream, upstream))
    return seen


async def test_ping_is_answered_through_the_workers(
    alcove: AlcoveProcess, therapist: MatrixUser, synapse: WorkerDevStack
) -> None:
    assert set(synapse.pids) == {
        "main",
        "persister1",
        "persister2",
        APPSERVICE_WORKER,
        CLIENT_WORKER,
        "nginx",
    }
    room = await management_room(therapist)
    await therapist.send_text(room, "!ping")
    pong = await therapist.wait_for(body_is(room, BOT, "pong"))
    assert pong["content"]["msgtype"] == "m.notice"
    await asyncio.sleep(1.2)  # nginx flushes its access log every second
    # Sends (Alcove's and the therapist's) went to the client worker, the admin API to main.
    assert routed(synapse, "PUT", "/send/m.room.message/") == {CLIENT_WORKER}
    assert routed(synapse, "PUT", "/_synapse/admin/v2/users/") == {"main"}


async def test_client_add_creates_the_client_and_their_room(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: WorkerDevStack,
    http: aiohttp.ClientSession,
) -> None:
    mgmt = await management_room(therapist)
    added = await add_client(therapist, mgmt, "Wren Walker")
    assert added.initials == "W.W."
    client = await login(http, synapse, added)
    assert added.room_id in await client.joined_rooms()
    members = await client.raw("GET", f"/_matrix/client/v3/rooms/{added.room_id}/joined_members")
    assert set(members[1]["joined"]) == {BOT, THERAPIST, added.user_id}


async def test_blast_reaches_each_client_exactly_once(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: WorkerDevStack,
    http: aiohttp.ClientSession,
) -> None:
    mgmt = await management_room(therapist)
    names = ["Ada Arch", "Bo Bay", "Cal Cove", "Dot Dune", "Eve Elm", "Fay Fen"]
    people = await add_many(therapist, mgmt, names)
    await therapist.send_text(mgmt, "!blast all Workers hold together")
    report = await therapist.wait_for(from_bot(mgmt, "Delivered to"), timeout=60)
    assert (
        f"Delivered to {len(names)} of {len(names)} clients; failed: 0."
        in (report["content"]["body"])
    )
    # One client is a real third-party client (matrix-nio), syncing through nginx too.
    assert "Workers hold together" in await nio_timeline(synapse, people[0], "Workers hold")
    clients = [await login(http, synapse, p) for p in people]
    for person, client in zip(people, clients, strict=True):
        await client.wait_for(body_is(person.room_id, THERAPIST, "Workers hold together"))
    await asyncio.sleep(2)  # a duplicate would arrive by now
    for person, client in zip(people, clients, strict=True):
        got = bodies(await client.room_messages(person.room_id))
        assert got.count("Workers hold together") == 1, person
    assert_sharded(synapse, [p.room_id for p in people] + [mgmt])


async def nio_timeline(stack: WorkerDevStack, person: Added, wanted: str) -> list[str]:
    """The bodies in ``person``'s room as matrix-nio sees them once one contains ``wanted``."""
    client = nio.AsyncClient(
        stack.homeserver_url,
        person.user_id,
        config=nio.AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False),
    )
    try:
        login_resp = await client.login(person.password)
        assert isinstance(login_resp, nio.LoginResponse), login_resp
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sync = await client.sync(timeout=2000)
            assert isinstance(sync, nio.SyncResponse), sync
            room = sync.rooms.join.get(person.room_id)
            if room is not None:
                seen += [e.body for e in room.timeline.events if isinstance(e, nio.RoomMessageText)]
            if any(wanted in body for body in seen):
                return seen
        raise TimeoutError(f"nio never saw {wanted!r}; saw {seen}")
    finally:
        await client.close()


def assert_sharded(stack: WorkerDevStack, rooms: list[str]) -> None:
    """Every event of every room was written by the persister Synapse shards that room to, and
    over all the module's rooms (a dozen or more by now) both persisters wrote."""
    from synapse.config._base import RoutableShardedWorkerHandlingConfig

    shards = RoutableShardedWorkerHandlingConfig(instances=stack.persisters)
    conn = psycopg2.connect(stack.database_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DISTINCT room_id, instance_name FROM events")
            writers: list[tuple[str, str]] = cur.fetchall()
    finally:
        conn.close()
    assert set(rooms) <= {room for room, _ in writers}
    for room, instance in writers:
        assert instance == shards.get_instance(room), room
    assert len(writers) >= 12
    assert {instance for _, instance in writers} == set(stack.persisters)


async def test_scheduled_message_is_delivered_once(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: WorkerDevStack,
    http: aiohttp.ClientSession,
) -> None:
    mgmt = await management_room(therapist)
    gus = await add_client(therapist, mgmt, "Gus Glen")
    client = await login(http, synapse, gus)
    await therapist.send_text(gus.room_id, "!schedule in 2s See you at ten")
    await therapist.wait_for(from_bot(gus.room_id, "Scheduled #"))
    started = time.monotonic()
    await client.wait_for(body_is(gus.room_id, THERAPIST, "See you at ten"), timeout=20)
    assert time.monotonic() - started < 15
    await asyncio.sleep(2)
    assert bodies(await client.room_messages(gus.room_id)).count("See you at ten") == 1


def test_a_second_worker_stack_on_the_same_redis_is_refused(
    synapse: WorkerDevStack, tmp_path: Path
) -> None:
    """Redis pub/sub channels are named after the server name, whatever the database number:
    a second `localhost` stack would take this one's replication traffic."""
    with pytest.raises(StartupError, match="Another Synapse with server name 'localhost'"):
        WorkerDevStack(tmp_path)._check_redis()
