"""Governance by any route on a real Synapse that loads alcove_synapse, with matrix-nio as the
clients' Matrix client: the homeserver refuses clients' renames, rooms, invites and joins
elsewhere; kicks, bans and leaves done outside Alcove revoke the history; a therapist's plain
invite of someone out of scope is withdrawn. (The reactive repairs for a homeserver without the
module are tested at component level: tests/component/test_governance.py.)"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import nio
import pytest
from mautrix.types import RoomCreatePreset
from mautrix.util.async_db import Database

from bridge.devstack import DevStack
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.scenario import (
    THERAPIST,
    Added,
    add_client,
    from_bot,
    management_room,
)

CARE = "@care:localhost"
FULL_NAME = "Bobby Brownlow"


@pytest.fixture
async def nio_clients() -> AsyncIterator[list[nio.AsyncClient]]:
    clients: list[nio.AsyncClient] = []
    yield clients
    for client in clients:
        await client.close()


async def nio_login(
    synapse: DevStack, added: Added, clients: list[nio.AsyncClient]
) -> nio.AsyncClient:
    client = nio.AsyncClient(synapse.homeserver_url, added.user_id)
    clients.append(client)
    response = await client.login(added.password, device_name="test")
    assert isinstance(response, nio.LoginResponse), response
    return client


async def group_of(therapist: MatrixUser, mgmt: str, title: str, *names: str) -> str:
    await therapist.send_text(mgmt, f'!group create "{title}" {" ".join(names)}')
    created = await therapist.wait_for(from_bot(mgmt, f"Created '{title}'"), timeout=30)
    found = re.search(r"matrix\.to/#/(!\S+)", created["content"]["body"])
    assert found
    return found[1]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.2)):
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the condition never held")


async def readable_by(client: nio.AsyncClient, room_id: str) -> str:
    """Everything this client can read of a room, as JSON text: /messages, and an initial
    /sync with full state."""
    messages = await client.room_messages(room_id, limit=500)
    assert isinstance(messages, nio.RoomMessagesResponse), messages
    sync = await client.sync(
        timeout=0, full_state=True, sync_filter={"room": {"timeline": {"limit": 500}}}
    )
    assert isinstance(sync, nio.SyncResponse), sync
    room = sync.rooms.join[room_id]
    events: list[Any] = [
        *(e.source for e in messages.chunk),
        *(e.source for e in room.timeline.events),
        *(e.source for e in room.state),
    ]
    return json.dumps(events)


async def messages_status(client: nio.AsyncClient, room_id: str) -> int:
    response = await client.room_messages(room_id, limit=1)
    assert response.transport_response is not None
    return int(response.transport_response.status)


# --------------------------------------------------------------------------- item 2 + 5: names


async def test_a_clients_rename_never_reaches_another_client(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    nio_clients: list[nio.AsyncClient],
) -> None:
    mgmt = await management_room(therapist)
    alice_added = await add_client(therapist, mgmt, "Alice Ames")
    bob_added = await add_client(therapist, mgmt, FULL_NAME)
    room = await group_of(therapist, mgmt, "Names circle", "Alice", "Bobby")
    alice = await nio_login(synapse, alice_added, nio_clients)
    bob = await nio_login(synapse, bob_added, nio_clients)

    # Per room: the homeserver refuses a name or an avatar other than the one Alcove set.
    for content in (
        {"membership": "join", "displayname": FULL_NAME},
        {"membership": "join", "displayname": bob_added.initials, "avatar_url": "mxc://x/face"},
    ):
        refused = await bob.room_put_state(room, "m.room.member", content, bob_added.user_id)
        assert isinstance(refused, nio.RoomPutStateError), refused
        assert refused.status_code == "M_FORBIDDEN"

    # Globally: Synapse stores it before asking modules, so the module puts it back at once,
    # before the change is sent into any room.
    await bob.set_displayname(FULL_NAME)
    shown = await bob.get_displayname(bob_added.user_id)
    assert isinstance(shown, nio.ProfileGetDisplayNameResponse)
    assert shown.displayname == bob_added.initials

    await asyncio.sleep(2)  # let Synapse's profile propagation to rooms run
    seen = await readable_by(alice, room)
    assert bob_added.user_id in seen and bob_added.initials in seen
    assert FULL_NAME not in seen


# --------------------------------------------------------------------------- item 5: elsewhere


async def test_clients_cannot_create_invite_or_join_rooms_alcove_does_not_govern(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    nio_clients: list[nio.AsyncClient],
) -> None:
    mgmt = await management_room(therapist)
    dan_added = await add_client(therapist, mgmt, "Dan Dee")
    eve_added = await add_client(therapist, mgmt, "Eve Ek")
    dan = await nio_login(synapse, dan_added, nio_clients)

    created = await dan.room_create(
        visibility=nio.RoomVisibility.public, alias="dans-room", invite=[eve_added.user_id]
    )
    assert isinstance(created, nio.RoomCreateError), created
    assert created.status_code == "M_FORBIDDEN"
    invited = await dan.room_invite(dan_added.room_id, THERAPIST)
    assert isinstance(invited, nio.RoomInviteError), invited

    # A public room a therapist made by hand: clients can neither join it nor be invited.
    public = await therapist.api.create_room(preset=RoomCreatePreset.PUBLIC)
    joined = await dan.join(str(public))
    assert isinstance(joined, nio.JoinError), joined
    assert joined.status_code == "M_FORBIDDEN"
    status, _ = await therapist.raw(
        "POST", f"/_matrix/client/v3/rooms/{quote(str(public))}/invite", {"user_id": dan.user_id}
    )
    assert status == 403

    # Alcove's own rooms work as before: Dan can talk in his 1:1 room.
    sent = await dan.room_send(
        dan_added.room_id, "m.room.message", {"msgtype": "m.text", "body": "still here"}
    )
    assert isinstance(sent, nio.RoomSendResponse), sent


# --------------------------------------------------------------------------- item 3: any route


async def test_kick_ban_and_leave_outside_alcove_revoke_the_history(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    alcove_db: Database,
    nio_clients: list[nio.AsyncClient],
) -> None:
    mgmt = await management_room(therapist)
    people = [await add_client(therapist, mgmt, n) for n in ("Kim Kay", "Ben Bo", "Lea Lu")]
    room = await group_of(therapist, mgmt, "Any route", "Kim", "Ben", "Lea")
    kim, ben, lea = [await nio_login(synapse, p, nio_clients) for p in people]
    for client in (kim, ben, lea):
        assert await messages_status(client, room) == 200

    # A plain kick and a plain ban by the therapist (as from Element), and a client leaving.
    kicked = await therapist.raw(
        "POST", f"/_matrix/client/v3/rooms/{quote(room)}/kick", {"user_id": people[0].user_id}
    )
    banned = await therapist.raw(
        "POST", f"/_matrix/client/v3/rooms/{quote(room)}/ban", {"user_id": people[1].user_id}
    )
    assert kicked[0] == 200 and banned[0] == 200
    left = await lea.room_leave(room)
    assert isinstance(left, nio.RoomLeaveResponse), left

    for client in (kim, ben, lea):

        async def refused(client: nio.AsyncClient = client) -> bool:
            return await messages_status(client, room) == 403

        await eventually(refused)

    async def recorded() -> bool:
        rows = await alcove_db.fetch(
            "SELECT client_id FROM group_member WHERE room_id = $1 AND removed_at IS NULL", room
        )
        return not rows

    await eventually(recorded)
    rows = await alcove_db.fetch("SELECT action, actor, target FROM audit WHERE room_id = $1", room)
    audit = {(r["action"], r["actor"], r["target"]) for r in rows}
    assert ("member.kicked", THERAPIST, people[0].user_id) in audit
    assert ("member.banned", THERAPIST, people[1].user_id) in audit
    assert ("member.left", people[2].user_id, people[2].user_id) in audit


# --------------------------------------------------------------------------- item 4: invites


async def test_a_plain_invite_of_someone_out_of_scope_is_withdrawn(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    alcove_db: Database,
    http: aiohttp.ClientSession,
) -> None:
    mgmt = await management_room(therapist)
    await add_client(therapist, mgmt, "Ian Ivy")
    room = await group_of(therapist, mgmt, "Scoped", "Ian")
    status, _ = await therapist.raw(
        "POST", f"/_matrix/client/v3/rooms/{quote(room)}/invite", {"user_id": CARE}
    )
    assert status == 200

    async def withdrawn() -> bool:
        _, body = await therapist.raw(
            "GET", f"/_matrix/client/v3/rooms/{quote(room)}/state/m.room.member/{quote(CARE)}"
        )
        return body.get("membership") == "leave"

    await eventually(withdrawn)
    await therapist.wait_for(from_bot(mgmt, f"invitation of {CARE} was withdrawn"), timeout=20)
    rows = await alcove_db.fetch(
        "SELECT actor, target FROM audit WHERE action = 'invite.rescinded' AND room_id = $1", room
    )
    assert [(r["actor"], r["target"]) for r in rows] == [(THERAPIST, CARE)]
