"""Governance by any route, the reactive path (a homeserver without alcove_synapse), on a real
database (SQLite and PostgreSQL) and a recording gateway: renames redacted and reverted,
departures forgotten and recorded, managed clients taken out of rooms Alcove does not govern,
out-of-scope invites into governed rooms withdrawn."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bots.features.conversations.governance import RoomGovernance
from bots.features.conversations.repo import Client, ConversationRepo, Room
from bots.features.conversations.service import ConversationService
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import PermanentError
from bridge.matrix.outbox import Outbox
from tests.support.builders import DOMAIN, make_config
from tests.support.fakes import FakeClock, RecordingGateway
from tests.support.harness import Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
CARE_USER = f"@care:{DOMAIN}"
OTHER_THERAPIST = f"@other:{DOMAIN}"
STRANGER = f"@stranger:{DOMAIN}"
SESSION_ROOM = f"!session:{DOMAIN}"
_ids = itertools.count()


@dataclass
class OrderedGateway(RecordingGateway):
    """Records the order of the calls that matter for a rename: the redaction must come first."""

    calls: list[str] = field(default_factory=list)
    forget_errors: list[PermanentError] = field(default_factory=list)

    async def forget(self, user_id: str, room_id: str) -> None:
        if self.forget_errors:
            raise self.forget_errors.pop(0)
        await super().forget(user_id, room_id)

    async def redact(self, room_id: str, event_id: str, reason: str) -> None:
        self.calls.append(f"redact {event_id}")
        await super().redact(room_id, event_id, reason)

    async def send_state(
        self, sender: str, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> str:
        self.calls.append(f"state {event_type}")
        return await super().send_state(sender, room_id, event_type, state_key, content)

    async def set_displayname(self, user_id: str, name: str) -> None:
        self.calls.append("displayname")
        await super().set_displayname(user_id, name)


@dataclass
class World:
    gateway: OrderedGateway
    outbox: Outbox
    repo: ConversationRepo
    audit: AuditLog
    service: ConversationService
    governance: RoomGovernance
    anna: Client
    carl: Client
    group: Room

    async def notices(self, room_id: str) -> list[str]:
        await self.outbox.join()
        return self.gateway.bodies(room_id)

    async def actions(self, action: str) -> list[tuple[str, str | None, str | None]]:
        return [(e.actor, e.target, e.room_id) for e in await self.audit.entries(action)]


@pytest.fixture
async def world(harnesses: Harnesses, tmp_path: Path) -> World:
    config = make_config(tmp_path)
    gateway = OrderedGateway(bot_user_id=config.bot_user_id, existing_users={THERAPIST})
    bot = (await harnesses.build(config, gateway, FakeClock())).bot
    bot.sessions.room_ids.add(SESSION_ROOM)  # a live text-only session's room
    service, repo = bot.conversations, bot.conversations.repo
    anna = (await service.add_client(THERAPIST, "Anna Bell", None, "$a")).client
    carl = (await service.add_client(THERAPIST, "Carl Dunn", None, "$c")).client
    group = await service.create_group(THERAPIST, "Tuesday group", [anna, carl], "$g")
    await repo.set_management_room(THERAPIST, f"!mgmt:{DOMAIN}")
    gateway.calls.clear()
    return World(gateway, bot.outbox, repo, bot.audit, service, bot.governance, anna, carl, group)


def member(
    room_id: str, sender: str, target: str, membership: str, **content: Any
) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "room_id": room_id,
        "sender": sender,
        "state_key": target,
        "event_id": f"$m{next(_ids)}",
        "origin_server_ts": 1,
        "content": {"membership": membership, **content},
    }


# --------------------------------------------------------------------------- item 2: renames


async def test_a_rename_in_a_group_is_redacted_before_the_initials_go_back(world: World) -> None:
    gw = world.gateway
    rename = member(
        world.group.room_id, world.anna.user_id, world.anna.user_id, "join", displayname="Anna Bell"
    )
    await world.governance.on_member(rename)

    # The event carrying the name is redacted first: the next membership event's prev_content
    # is then computed from the redacted one, so no event another client reads holds the name.
    assert gw.calls == [f"redact {rename['event_id']}", "state m.room.member", "displayname"]
    assert gw.redacted == [(world.group.room_id, rename["event_id"])]
    assert gw.state[(world.group.room_id, "m.room.member", world.anna.user_id)] == {
        "membership": "join",
        "displayname": "A.B.",
    }
    assert gw.displaynames[world.anna.user_id] == "A.B."
    assert await world.actions("displayname.reset") == [
        (gw.bot_user_id, world.anna.user_id, world.group.room_id)
    ]


async def test_an_avatar_in_a_group_is_redacted_and_removed(world: World) -> None:
    event = member(
        world.group.room_id,
        world.anna.user_id,
        world.anna.user_id,
        "join",
        displayname="A.B.",
        avatar_url="mxc://x/face",
    )
    await world.governance.on_member(event)
    assert world.gateway.redacted == [(world.group.room_id, event["event_id"])]
    state = world.gateway.state[(world.group.room_id, "m.room.member", world.anna.user_id)]
    assert "avatar_url" not in state


async def test_a_rename_in_a_session_room_is_redacted(world: World) -> None:
    event = member(SESSION_ROOM, world.anna.user_id, world.anna.user_id, "join", displayname="Anna")
    await world.governance.on_member(event)
    assert world.gateway.redacted == [(SESSION_ROOM, event["event_id"])]


async def test_initials_are_left_alone(world: World) -> None:
    a = world.anna.user_id
    await world.governance.on_member(member(world.group.room_id, a, a, "join", displayname="A.B."))
    assert world.gateway.calls == []
    assert await world.actions("displayname.reset") == []


async def test_a_rename_seen_in_a_one_to_one_room_resets_only_the_global_name(
    world: World,
) -> None:
    """Only the therapist reads the 1:1 room: nothing to redact there, but the global name must
    not carry the full name into the next group the client joins."""
    dm = await world.repo.dm_of(THERAPIST, world.anna.user_id)
    assert dm is not None
    a = world.anna.user_id
    await world.governance.on_member(member(dm.room_id, a, a, "join", displayname="Anna Bell"))
    assert world.gateway.calls == ["displayname"]
    assert world.gateway.displaynames[a] == "A.B."
    assert world.gateway.redacted == []


# --------------------------------------------------------------------------- item 3: departures


@pytest.mark.parametrize(
    ("sender", "membership", "action"),
    [
        ("client", "leave", "member.left"),
        (THERAPIST, "leave", "member.kicked"),
        (THERAPIST, "ban", "member.banned"),
    ],
)
async def test_leaving_kicked_or_banned_from_a_group_forgets_and_records(
    world: World, sender: str, membership: str, action: str
) -> None:
    anna = world.anna.user_id
    actor = anna if sender == "client" else sender
    await world.governance.on_member(member(world.group.room_id, actor, anna, membership))

    assert world.gateway.forgotten == [(anna, world.group.room_id)]
    assert await world.repo.members(world.group.room_id) == [world.carl.user_id]
    assert await world.actions(action) == [(actor, anna, world.group.room_id)]


async def test_a_kick_from_the_one_to_one_room_forgets_it_too(world: World) -> None:
    dm = await world.repo.dm_of(THERAPIST, world.anna.user_id)
    assert dm is not None
    await world.governance.on_member(member(dm.room_id, THERAPIST, world.anna.user_id, "leave"))
    assert world.gateway.forgotten == [(world.anna.user_id, dm.room_id)]
    assert await world.actions("member.kicked") == [(THERAPIST, world.anna.user_id, dm.room_id)]


async def test_a_client_back_in_the_room_before_the_kick_is_handled_stays_a_member(
    world: World,
) -> None:
    """Synapse refuses to forget a room the user is in (400): they were added again since."""
    world.gateway.forget_errors.append(PermanentError("User in room", status=400))
    anna = world.anna.user_id
    await world.governance.on_member(member(world.group.room_id, THERAPIST, anna, "leave"))
    assert anna in await world.repo.members(world.group.room_id)
    entries = await world.audit.entries("member.kicked")
    assert [e.detail["forgotten"] for e in entries] == [False]


async def test_staff_leaving_or_clients_leaving_other_rooms_are_not_touched(world: World) -> None:
    await world.governance.on_member(member(world.group.room_id, THERAPIST, THERAPIST, "leave"))
    await world.governance.on_member(
        member(f"!elsewhere:{DOMAIN}", world.anna.user_id, world.anna.user_id, "leave")
    )
    assert world.gateway.forgotten == []
    assert len(await world.repo.members(world.group.room_id)) == 2


# --------------------------------------------------------------------------- item 4: ungoverned


async def test_a_client_in_a_room_alcove_does_not_govern_is_taken_out(world: World) -> None:
    room = f"!theirs:{DOMAIN}"
    anna = world.anna.user_id
    await world.governance.on_member(member(room, anna, anna, "join", displayname="A.B."))

    assert world.gateway.left == [(anna, room)]
    assert world.gateway.forgotten == [(anna, room)]
    assert await world.actions("room.left.ungoverned") == [(world.gateway.bot_user_id, anna, room)]
    dm = await world.repo.dm_of(THERAPIST, anna)
    assert dm is not None
    assert any("set up by your therapist" in b for b in await world.notices(dm.room_id))


async def test_staff_in_rooms_alcove_does_not_govern_are_free(world: World) -> None:
    await world.governance.on_member(member(f"!staff:{DOMAIN}", THERAPIST, THERAPIST, "join"))
    assert world.gateway.left == [] and world.gateway.forgotten == []


async def test_another_therapists_client_invited_into_a_group_is_uninvited(world: World) -> None:
    theirs = (await world.service.add_client(OTHER_THERAPIST, "Olga Other", None, "$other")).client
    event = member(world.group.room_id, THERAPIST, theirs.user_id, "invite")
    await world.governance.on_member(event)

    assert (world.group.room_id, theirs.user_id) in world.gateway.kicked
    assert (theirs.user_id, world.group.room_id) in world.gateway.forgotten
    assert await world.actions("invite.rescinded") == [
        (THERAPIST, theirs.user_id, world.group.room_id)
    ]
    # The inviter is told in their management room.
    assert any("withdrawn" in b for b in await world.notices(f"!mgmt:{DOMAIN}"))
    assert set(await world.repo.members(world.group.room_id)) == {
        world.anna.user_id,
        world.carl.user_id,
    }


async def test_any_local_user_invited_into_a_group_is_uninvited(world: World) -> None:
    await world.governance.on_member(member(world.group.room_id, THERAPIST, STRANGER, "invite"))
    assert world.gateway.kicked == [(world.group.room_id, STRANGER)]
    assert world.gateway.forgotten == []  # not ours to act as


async def test_own_clients_may_be_invited_into_a_group_but_not_into_anothers_dm(
    world: World,
) -> None:
    dina = (await world.service.add_client(THERAPIST, "Dina Ek", None, "$d")).client
    dm = await world.repo.dm_of(THERAPIST, world.anna.user_id)
    assert dm is not None
    await world.governance.on_member(member(world.group.room_id, THERAPIST, dina.user_id, "invite"))
    assert world.gateway.kicked == []
    await world.governance.on_member(member(dm.room_id, THERAPIST, dina.user_id, "invite"))
    assert world.gateway.kicked == [(dm.room_id, dina.user_id)]


async def test_staff_rooms_take_staff_only(world: World) -> None:
    await world.service.reconcile_staff_rooms()
    rooms = await world.repo.rooms_of(THERAPIST, "care")
    care = rooms[0].room_id
    world.gateway.kicked.clear()
    await world.governance.on_member(member(care, THERAPIST, CARE_USER, "invite"))
    assert world.gateway.kicked == []
    await world.governance.on_member(member(care, THERAPIST, world.anna.user_id, "invite"))
    assert world.gateway.kicked == [(care, world.anna.user_id)]
    assert any("configuration" in b for b in await world.notices(f"!mgmt:{DOMAIN}"))


async def test_plain_invites_into_a_session_room_are_withdrawn(world: World) -> None:
    await world.governance.on_member(member(SESSION_ROOM, THERAPIST, world.carl.user_id, "invite"))
    assert world.gateway.kicked == [(SESSION_ROOM, world.carl.user_id)]


async def test_invites_into_rooms_alcove_does_not_govern_are_still_declined(world: World) -> None:
    room = f"!theirs:{DOMAIN}"
    await world.governance.on_member(member(room, STRANGER, world.anna.user_id, "invite"))
    assert world.gateway.left == [(world.anna.user_id, room)]
    assert await world.actions("invite.refused") == [(STRANGER, world.anna.user_id, room)]


async def test_a_clients_invite_of_staff_into_their_own_room_is_declined_for_them(
    world: World,
) -> None:
    room = f"!theirs:{DOMAIN}"
    await world.governance.on_member(member(room, world.anna.user_id, THERAPIST, "invite"))
    assert world.gateway.left == [(THERAPIST, room)]  # through the double puppet
    dm = await world.repo.dm_of(THERAPIST, world.anna.user_id)
    assert dm is not None
    assert any("set up by your therapist" in b for b in await world.notices(dm.room_id))
