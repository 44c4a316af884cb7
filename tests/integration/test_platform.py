"""Issue 2 end to end on a real Synapse: the bot answers, and nothing is lost or duplicated
across a Synapse restart, an Alcove kill -9 with events in its inbox, or a crash between a send
and its acknowledgement."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from mautrix.util.async_db import Database

from bridge.config import Config, load_config
from bridge.devstack import DevStack, free_port
from bridge.matrix.outbox import txn_id_for
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser, body_is, wait_joined
from tests.support.proxy import BLACKHOLE, PASS, SWALLOW, FaultProxy

BOT = "@alcove:localhost"


async def dm_with_bot(user: MatrixUser) -> str:
    room = await user.create_dm(BOT)
    await wait_joined(user, room, BOT)
    # The bot says once where the management room is: let that land before faults start.
    await user.wait_for(
        lambda e: e.get("room_id") == room and e.get("sender") == BOT and "management" in str(e)
    )
    return room


def invite_of_bot(room: str) -> Callable[[dict[str, Any]], bool]:
    def match(e: dict[str, Any]) -> bool:
        return (
            e.get("room_id") == room
            and e.get("type") == "m.room.member"
            and e.get("state_key") == BOT
            and e["content"].get("membership") == "invite"
        )

    return match


async def pongs(user: MatrixUser, room: str) -> list[str]:
    return [
        e["event_id"] for e in await user.room_messages(room) if e["content"].get("body") == "pong"
    ]


async def wait_status(
    db: Database, table: str, column: str, value: str, status: str, timeout: float = 15
) -> None:
    for _ in range(int(timeout * 20)):
        got = await db.fetchval(f"SELECT status FROM {table} WHERE {column} = $1", value)
        if got == status:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{table} row {value} never reached {status} (last: {got})")


async def test_ping_and_help_round_trip(alcove: AlcoveProcess, therapist: MatrixUser) -> None:
    room = await dm_with_bot(therapist)
    await therapist.send_text(room, "!ping")
    pong = await therapist.wait_for(body_is(room, BOT, "pong"))
    assert pong["content"]["msgtype"] == "m.notice"
    await therapist.send_text(room, "!help")
    help_ = await therapist.wait_for(
        lambda e: (
            e.get("room_id") == room
            and e.get("sender") == BOT
            and "Commands you can use" in e.get("content", {}).get("body", "")
        )
    )
    assert "!ping" in help_["content"]["body"]
    await therapist.send_text(room, "!nonsense")
    unknown = await therapist.wait_for(
        lambda e: (
            e.get("room_id") == room and "Unknown command" in e.get("content", {}).get("body", "")
        )
    )
    assert "!help" in unknown["content"]["body"]


async def test_appservice_ping_reaches_alcove(
    alcove: AlcoveProcess, synapse: DevStack, stack_config: Config, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{synapse.homeserver_url}/_matrix/client/v1/appservice/alcove/ping",
        json={"transaction_id": "from-test"},
        headers={"Authorization": f"Bearer {stack_config.appservice.as_token}"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert body["duration_ms"] >= 0


async def test_synapse_restart_loses_nothing(
    alcove: AlcoveProcess, synapse: DevStack, therapist: MatrixUser
) -> None:
    room = await dm_with_bot(therapist)
    for _ in range(3):
        await therapist.send_text(room, "!ping")
    await asyncio.to_thread(synapse.stop)  # possibly before Synapse pushed them all
    await asyncio.to_thread(synapse.start)
    for _ in range(3):
        await therapist.send_text(room, "!ping")
    for _ in range(100):
        if len(await pongs(therapist, room)) >= 6:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # would a duplicate still arrive?
    assert len(await pongs(therapist, room)) == 6


async def test_kill9_with_events_in_the_inbox_loses_nothing(
    alcove: AlcoveProcess, proxy: FaultProxy, alcove_db: Database, therapist: MatrixUser
) -> None:
    proxy.mode = BLACKHOLE  # Alcove's calls to Synapse now hang: invites stay unprocessed
    rooms, invites = [], []
    for _ in range(2):
        room = await therapist.create_dm(BOT)
        event = await therapist.wait_for(invite_of_bot(room))
        rooms.append(room)
        invites.append(event["event_id"])
    for event_id in invites:  # persisted (Synapse got its 200) but not processed
        await wait_status(alcove_db, "inbox_event", "event_id", event_id, "pending")
    alcove.kill9()
    proxy.mode = PASS
    proxy.drop_connections()
    await alcove.start()
    for room in rooms:
        await wait_joined(therapist, room, BOT)
        await therapist.send_text(room, "!ping")
        await therapist.wait_for(body_is(room, BOT, "pong"))
    for event_id in invites:
        await wait_status(alcove_db, "inbox_event", "event_id", event_id, "done")


async def test_alcoves_own_replies_coming_back_are_not_kept(
    alcove: AlcoveProcess, alcove_db: Database, therapist: MatrixUser
) -> None:
    """Synapse pushes the bot's `pong` back to Alcove; the inbox neither keeps nor handles it
    (half of a busy homeserver's pushes are such echoes), while the `!ping`s are kept."""
    room = await dm_with_bot(therapist)
    first = await therapist.send_text(room, "!ping")
    pong = await therapist.wait_for(body_is(room, BOT, "pong"))
    second = await therapist.send_text(room, "!ping")  # pushed after the pong: in order
    await wait_status(alcove_db, "inbox_event", "event_id", second, "done")
    await wait_status(alcove_db, "inbox_event", "event_id", first, "done")
    kept = await alcove_db.fetchval(
        "SELECT COUNT(*) FROM inbox_event WHERE event_id = $1", pong["event_id"]
    )
    assert kept == 0


async def test_queued_outbox_message_sent_once_after_restart(
    alcove: AlcoveProcess, proxy: FaultProxy, alcove_db: Database, therapist: MatrixUser
) -> None:
    room = await dm_with_bot(therapist)
    proxy.mode = BLACKHOLE
    ping = await therapist.send_text(room, "!ping")
    key = f"reply:{ping}:1"
    await wait_status(alcove_db, "inbox_event", "event_id", ping, "done")
    await wait_status(alcove_db, "outbox", "key", key, "pending")
    alcove.kill9()
    proxy.mode = PASS
    proxy.drop_connections()
    await alcove.start()
    await therapist.wait_for(body_is(room, BOT, "pong"))
    await wait_status(alcove_db, "outbox", "key", key, "sent")
    await asyncio.sleep(1.0)
    assert len(await pongs(therapist, room)) == 1


async def test_crash_after_send_before_ack_sends_exactly_once(
    alcove: AlcoveProcess, proxy: FaultProxy, alcove_db: Database, therapist: MatrixUser
) -> None:
    room = await dm_with_bot(therapist)
    proxy.mode = SWALLOW  # Synapse gets the send; Alcove never hears back
    ping = await therapist.send_text(room, "!ping")
    first = await therapist.wait_for(body_is(room, BOT, "pong"), timeout=30)
    key = f"reply:{ping}:1"
    row = await alcove_db.fetchrow("SELECT status, txn_id FROM outbox WHERE key = $1", key)
    assert row is not None and row["status"] == "pending"
    assert row["txn_id"] == txn_id_for(BOT, key)
    alcove.kill9()
    proxy.mode = PASS
    proxy.drop_connections()
    await alcove.start()  # resends the same txn id from the same device: Synapse dedupes
    await wait_status(alcove_db, "outbox", "key", key, "sent")
    assert (
        await alcove_db.fetchval("SELECT event_id FROM outbox WHERE key = $1", key)
        == first["event_id"]
    )
    await asyncio.sleep(1.0)
    assert await pongs(therapist, room) == [first["event_id"]]


async def test_sigterm_shuts_down_cleanly(alcove: AlcoveProcess) -> None:
    assert await alcove.stop() == 0


def run_cli(
    args: list[str], env_extra: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALCOVE__")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_wrong_token_says_what_to_fix(synapse: DevStack, db_url: str) -> None:
    result = await asyncio.to_thread(
        run_cli,
        ["run", "-c", str(synapse.config_path)],
        {
            "ALCOVE__APPSERVICE__AS_TOKEN": "not-the-token",
            "ALCOVE__DATABASE__URL": db_url,
            "ALCOVE__APPSERVICE__PORT": str(free_port()),
        },
    )
    assert result.returncode == 1
    assert "app_service_config_files" in result.stderr


async def test_homeserver_down_says_what_to_fix(
    synapse: DevStack, db_url: str, tmp_path: Path
) -> None:
    result = await asyncio.to_thread(
        run_cli,
        ["run", "-c", str(synapse.config_path)],
        {
            "ALCOVE__HOMESERVER__ADDRESS": "http://127.0.0.1:9",
            "ALCOVE__HOMESERVER__STARTUP_TIMEOUT": "1",
            "ALCOVE__DATABASE__URL": db_url,
            "ALCOVE__APPSERVICE__PORT": str(free_port()),
        },
    )
    assert result.returncode == 1
    assert "Cannot reach the homeserver at http://127.0.0.1:9" in result.stderr


async def test_doctor_passes_against_the_running_stack(
    alcove: AlcoveProcess, synapse: DevStack, db_url: str
) -> None:
    result = await asyncio.to_thread(
        run_cli, ["doctor", "-c", str(synapse.config_path)], {"ALCOVE__DATABASE__URL": db_url}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok  ] bot is a server admin" in result.stdout
    assert "[ok  ] Synapse reaches Alcove (appservice ping)" in result.stdout
    assert "[ok  ] registration files current" in result.stdout
    # The dev homeserver is configured for text-only sessions; SQLite needs VACUUM (advice).
    assert "[ok  ] push notifications carry no message text" in result.stdout
    assert "[ok  ] redacted content is not kept" in result.stdout
    assert "[ok  ] Synapse does not log request content" in result.stdout
    assert "[warn] deleted rows leave no bytes on disk" in result.stdout
    # The dev homeserver loads Alcove's Synapse module; doctor asks the homeserver.
    assert "[ok  ] homeserver module alcove_synapse" in result.stdout


async def test_doctor_reports_wrong_token(synapse: DevStack, db_url: str) -> None:
    result = await asyncio.to_thread(
        run_cli,
        ["doctor", "-c", str(synapse.config_path)],
        {"ALCOVE__DATABASE__URL": db_url, "ALCOVE__APPSERVICE__AS_TOKEN": "wrong"},
    )
    assert result.returncode == 1
    assert "[FAIL] as_token accepted (whoami)" in result.stdout
    assert "app_service_config_files" in result.stdout


async def test_restarting_the_dev_stack_keeps_staff_signed_in(
    synapse: DevStack, therapist: MatrixUser
) -> None:
    """`alcove dev` re-applies the demo accounts at every start: that must not sign the
    therapist out of Element (nor delete the device Alcove acts through)."""
    assert (await therapist.raw("GET", "/_matrix/client/v3/account/whoami"))[0] == 200
    await synapse.bootstrap(load_config(synapse.config_path, environ={}))
    status, body = await therapist.raw("GET", "/_matrix/client/v3/account/whoami")
    assert status == 200, body
