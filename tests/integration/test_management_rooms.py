"""Issue 9 items 1, 6 and issue 10 items 1, 9, 18 on a real Synapse, with matrix-nio as a
third-party client: the management room Alcove owns (created at start-up, reused after a
restart, re-created when left), an encrypted DM made the way Element X makes it (told once that
Alcove cannot read it, never adopted), a client's DM to the bot (answered, then left), the
initial password redacted once the client signed in, and client names only where they belong."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import nio
import pytest
from mautrix.util.async_db import Database

from bridge.devstack import DevStack
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import Event, MatrixUser
from tests.support.scenario import (
    BOT,
    THERAPIST,
    add_client,
    assert_no_full_names,
    from_bot,
    login,
    management_room,
    open_dm_with_bot,
    parse_added,
)


@pytest.fixture
async def nio_therapist(
    synapse: DevStack, passwords: dict[str, str], tmp_path: Path
) -> AsyncIterator[nio.AsyncClient]:
    """The therapist on a second device, as an end-to-end capable third-party client."""
    store = tmp_path / "nio-store"
    store.mkdir()
    client = nio.AsyncClient(
        synapse.homeserver_url,
        THERAPIST,
        store_path=str(store),
        config=nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
    )
    resp = await client.login(passwords[THERAPIST], device_name="nio test")
    assert isinstance(resp, nio.LoginResponse), resp
    if client.should_upload_keys:
        await client.keys_upload()
    yield client
    await client.close()


async def nio_messages(client: nio.AsyncClient, room_id: str) -> list[dict[str, Any]]:
    resp = await client.room_messages(room_id, start="", limit=100)
    assert isinstance(resp, nio.RoomMessagesResponse), resp
    return [e.source for e in reversed(resp.chunk)]


async def wait_bot_notices(
    client: nio.AsyncClient, room_id: str, count: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """The bot's plain-text messages in the room, once at least ``count`` arrived."""
    found: list[dict[str, Any]] = []
    for _ in range(int(timeout * 10)):
        found = [
            e
            for e in await nio_messages(client, room_id)
            if e.get("sender") == BOT and e.get("type") == "m.room.message"
        ]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{len(found)} of {count} bot messages in {room_id}")


async def metric(http: aiohttp.ClientSession, synapse: DevStack, name: str) -> float:
    async with http.get(f"http://127.0.0.1:{synapse.dev_secrets['as_port']}/metrics") as resp:
        text = await resp.text()
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def members(user: MatrixUser, room_id: str) -> dict[str, str]:
    status, body = await user.raw("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/members")
    assert status == 200, body
    return {e["state_key"]: e["content"]["membership"] for e in body["chunk"]}


async def test_the_management_room_is_owned_and_reused_after_a_restart(
    alcove: AlcoveProcess, therapist: MatrixUser, alcove_db: Database
) -> None:
    mgmt = await management_room(therapist)
    assert await members(therapist, mgmt) == {THERAPIST: "join", BOT: "join"}
    assert (await therapist.state(mgmt, "m.room.name"))["name"] == "Alcove"
    status, _ = await therapist.raw(
        "GET", f"/_matrix/client/v3/rooms/{quote(mgmt)}/state/m.room.encryption/"
    )
    assert status == 404  # unencrypted: Alcove must be able to read it
    levels = await therapist.state(mgmt, "m.room.power_levels")
    assert levels["users"][THERAPIST] < levels["invite"]  # nobody else can be let in
    history = [e["content"]["body"] for e in await therapist.room_messages(mgmt)]
    assert any("This is your management room" in b and "!client" in b for b in history)
    row = await alcove_db.fetchrow("SELECT room_id, owned FROM management_room")
    assert row is not None and row["room_id"] == mgmt and row["owned"]

    # Reused across a restart: no second room, no second welcome.
    await alcove.stop()
    await alcove.start()
    assert await management_room(therapist) == mgmt
    welcomes = [b for b in [e["content"]["body"] for e in await therapist.room_messages(mgmt)]]
    assert sum("This is your management room" in b for b in welcomes) == 1
    await therapist.send_text(mgmt, "!ping")
    await therapist.wait_for(from_bot(mgmt, "pong"))

    # Left by the staff member: a new one at the next start.
    status, _ = await therapist.raw("POST", f"/_matrix/client/v3/rooms/{quote(mgmt)}/leave", {})
    assert status == 200
    await alcove.stop()
    await alcove.start()
    renewed = await management_room(therapist)
    assert renewed != mgmt
    assert await members(therapist, renewed) == {THERAPIST: "join", BOT: "join"}


async def test_an_encrypted_dm_is_told_once_and_never_adopted(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    nio_therapist: nio.AsyncClient,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
) -> None:
    mgmt = await management_room(therapist)
    before = await metric(http, synapse, "alcove_encrypted_unreadable_total")
    # The way Element X creates a DM: encryption in the initial state, is_direct, the invitee.
    created = await nio_therapist.room_create(
        is_direct=True,
        invite=[BOT],
        preset=nio.RoomPreset.trusted_private_chat,
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    assert isinstance(created, nio.RoomCreateResponse), created
    room = created.room_id

    notices = await wait_bot_notices(nio_therapist, room, 1)
    body = notices[0]["content"]["body"]
    assert notices[0]["type"] == "m.room.message"  # plain text, readable by every client
    assert "cannot read this room" in body and "encrypted" in body
    assert f"https://matrix.to/#/{mgmt}" in body

    # Encrypted commands get no second notice (once per room), and nothing is adopted.
    await nio_therapist.sync(timeout=0, full_state=True)
    for text in ("!help", "!ping"):
        sent = await nio_therapist.room_send(
            room, "m.room.message", {"msgtype": "m.text", "body": text}, None, True
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
    status, history = await therapist.raw(
        "GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b&limit=100"
    )
    assert status == 200
    encrypted = [e for e in history["chunk"] if e["type"] == "m.room.encrypted"]
    assert len(encrypted) == 2
    for _ in range(50):
        if await metric(http, synapse, "alcove_encrypted_unreadable_total") >= before + 3:
            break
        await asyncio.sleep(0.1)
    assert await metric(http, synapse, "alcove_encrypted_unreadable_total") >= before + 3
    assert len(await wait_bot_notices(nio_therapist, room, 1)) == 1
    row = await alcove_db.fetchrow(
        "SELECT room_id FROM management_room WHERE user_id = $1", THERAPIST
    )
    assert row is not None and row["room_id"] == mgmt

    # The owned room still works, and the password goes there.
    added = await add_client(therapist, mgmt, "John Smith")
    assert added.user_id.startswith("@c-")
    assert await alcove_db.fetchval("SELECT COUNT(*) FROM conv_room WHERE room_id = $1", room) == 0


async def test_a_staff_dm_takes_commands_but_names_go_to_the_management_room(
    alcove: AlcoveProcess, therapist: MatrixUser
) -> None:
    mgmt = await management_room(therapist)
    dm = await open_dm_with_bot(therapist)
    await therapist.wait_for(
        from_bot(dm, f"Your management room with me is https://matrix.to/#/{mgmt}")
    )
    await therapist.send_text(dm, "!ping")
    await therapist.wait_for(from_bot(dm, "pong"))

    await therapist.send_text(dm, "!client add Mira Staffdm")
    pointer = await therapist.wait_for(from_bot(dm, "management room"), timeout=30, fresh=True)
    assert "Mira" not in pointer["content"]["body"]
    await therapist.wait_for(from_bot(mgmt, "Added Mira Staffdm as"), timeout=30)
    await therapist.send_text(dm, "!client list")
    await therapist.wait_for(from_bot(mgmt, "Mira Staffdm (M.S.)"), timeout=30)
    said_in_dm = [e["content"]["body"] for e in await therapist.room_messages(dm)]
    assert not any("Staffdm" in b for b in said_in_dm if not b.startswith("!"))


async def test_a_clients_dm_with_the_bot_is_refused_by_the_homeserver(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    tmp_path: Path,
) -> None:
    """With Alcove's Synapse module (loaded here, as the README advises) a client cannot open a
    room at all: the client is told at once (M_FORBIDDEN), never left alone in an empty room.
    Without the module Alcove answers such a DM once and leaves, and takes the client out of the
    room with a pointer in their 1:1 (tests/component/test_management_rooms.py and
    tests/component/test_governance.py)."""
    mgmt = await management_room(therapist)
    added = await add_client(therapist, mgmt, "Kim Nio")
    client = nio.AsyncClient(synapse.homeserver_url, added.user_id, store_path=str(tmp_path))
    try:
        assert isinstance(await client.login(added.password), nio.LoginResponse)
        created = await client.room_create(is_direct=True, invite=[BOT])
        assert isinstance(created, nio.RoomCreateError), created
        assert created.status_code == "M_FORBIDDEN"
    finally:
        await client.close()


async def test_the_initial_password_is_redacted_once_the_client_signed_in(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
) -> None:
    mgmt = await management_room(therapist)
    await therapist.send_text(mgmt, "!client add Rita Redact")
    reply = await therapist.wait_for(from_bot(mgmt, "Added Rita Redact"), timeout=30)
    assert "once they have signed in, or after 24 hours" in reply["content"]["body"]
    added = parse_added(reply["content"]["body"])
    client = await login(http, synapse, added)
    await client.send_text(added.room_id, "hello, I am in")  # signing in is noticed at once
    await therapist.wait_for(from_bot(mgmt, "I removed the message with the initial password"), 30)
    status, event = await therapist.raw(
        "GET", f"/_matrix/client/v3/rooms/{quote(mgmt)}/event/{quote(reply['event_id'])}"
    )
    assert status == 200 and event.get("content") == {}  # redacted
    assert added.password not in str(await therapist.room_messages(mgmt))


async def test_no_group_event_a_client_can_read_names_another_client(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
) -> None:
    """Every group command typed in the group, answered: what the clients can read holds
    initials only (the replies that name or list clients went to the management room)."""
    mgmt = await management_room(therapist)
    names = ("Li Wei Chen", "Lisa Marsh", "Omar Ode")
    people = [await add_client(therapist, mgmt, n) for n in names]
    li, lisa, omar = [await login(http, synapse, p) for p in people]
    await therapist.send_text(
        mgmt, f'!group create "Thursday" {people[0].user_id} {people[2].user_id}'
    )
    created = await therapist.wait_for(from_bot(mgmt, "Created 'Thursday'"), timeout=30)
    found = re.search(r"matrix\.to/#/(!\S+)", created["content"]["body"])
    assert found
    room = found[1]

    async def command(text: str, answer: str) -> Event:
        await therapist.send_text(room, text)
        return await therapist.wait_for(from_bot(room, answer), timeout=30, fresh=True)

    await command('!group add "Li Wei"', "already in this chat")
    await command("!group remove Lisa", "not in this chat")
    await command('!group add "Li Wei"', "already in this chat")
    pointer = await command("!group add L", "management room")  # ambiguous: Li…, Lisa…
    assert "Li Wei Chen" not in pointer["content"]["body"]
    await therapist.wait_for(from_bot(mgmt, "matches several clients"), timeout=30)
    await command("!client list", "management room")
    await command("!session list", "text-only sessions")
    await command("!schedule list", "scheduled messages")
    await command("!blast Omar hello", "management room")
    await therapist.wait_for(from_bot(mgmt, "Delivered to 1 of 1"), timeout=60)
    await command("!group add Lisa", "Reply !yes to confirm")
    await command("!yes", "Added L.M.")
    await command('!group remove "Li Wei"', "Reply !yes to confirm")
    await command("!yes", "Removed L.W.C.")

    for viewer, own in ((lisa, "Lisa Marsh"), (omar, "Omar Ode")):
        await assert_no_full_names(viewer, room, [n for n in names if n != own])
    del li
