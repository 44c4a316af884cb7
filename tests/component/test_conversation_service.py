"""The conversation service on a real database (SQLite and PostgreSQL), a real outbox and a
recording gateway: clients, 1:1 rooms, community rooms, initials, titles, staff rooms, and the
confirmations behind !yes / !no. Every flow is re-run with the same origin event to check that a
retry after a crash creates nothing twice."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bots.commands.confirm import Confirmations
from bots.commands.context import CommandContext
from bots.commands.registry import CommandRegistry
from bots.features.conversations import rules
from bots.features.conversations.repo import CARE, DM, GROUP, TEAM, Client, ConversationRepo
from bots.features.conversations.service import (
    ClientLookupError,
    ConversationService,
    NewClient,
)
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import PermanentError
from bridge.matrix.outbox import HELD, Outbox
from tests.support.builders import DOMAIN, make_config
from tests.support.fakes import FakeClock, RecordingGateway, Sent
from tests.support.harness import Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
CARE_USER = f"@care:{DOMAIN}"
OTHER_THERAPIST = f"@other:{DOMAIN}"
BOT = f"@alcove:{DOMAIN}"


@dataclass
class KickGateway(RecordingGateway):
    """A recording gateway whose kick can be told to fail, like a homeserver refusing to kick
    someone who already left."""

    kick_errors: list[PermanentError] = field(default_factory=list)

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        if self.kick_errors:
            raise self.kick_errors.pop(0)
        await super().kick(room_id, user_id, reason)


class FakeCrypto:
    """The crypto as the voice asks it: a room is encrypted when its state says so; a user has
    a device with keys once listed in ``devices``."""

    def __init__(self, gateway: RecordingGateway) -> None:
        self.gateway = gateway
        self.devices: set[str] = set()

    async def is_encrypted(self, room_id: str) -> bool:
        return (room_id, "m.room.encryption", "") in self.gateway.state

    async def has_devices(self, user_id: str) -> bool:
        return user_id in self.devices


@dataclass
class World:
    config: Config
    gateway: RecordingGateway
    outbox: Outbox
    repo: ConversationRepo
    audit: AuditLog
    clock: FakeClock
    service: ConversationService
    crypto: FakeCrypto

    async def add(
        self, full_name: str, origin: str, therapist: str = THERAPIST, email: str | None = None
    ) -> NewClient:
        return await self.service.add_client(therapist, full_name, email, origin)

    async def sent_to(self, room_id: str) -> list[Sent]:
        await self.outbox.join()
        return [s for s in self.gateway.sent if s.room_id == room_id]

    async def actions(self, action: str) -> int:
        return len(await self.audit.entries(action))


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(harnesses: Harnesses, tmp_path: Path) -> Build:
    """Builds a service over the shared database; worlds built in one test share the database
    (and, when passed in, the gateway and clock), like Alcove restarted with a new config."""

    async def make(
        gateway: RecordingGateway | None = None,
        config: Config | None = None,
        clock: FakeClock | None = None,
    ) -> World:
        config = config or make_config(tmp_path)
        gateway = gateway or RecordingGateway(
            bot_user_id=config.bot_user_id, existing_users={THERAPIST}
        )
        crypto = FakeCrypto(gateway)
        h = await harnesses.build(config, gateway, clock or FakeClock(), crypto=crypto)
        service = h.bot.conversations
        service.spaces = None  # rooms only: spaces are tests/component/test_organise.py's
        return World(config, gateway, h.outbox, service.repo, h.bot.audit, h.clock, service, crypto)

    return make


@pytest.fixture
async def world(build: Build) -> World:
    return await build()


# --------------------------------------------------------------------------- add_client


async def test_add_client_creates_account_room_and_welcome(world: World) -> None:
    gw = world.gateway
    new = await world.add("Jane Doe", "$add1", email="jane@example.org")
    user, room = new.client.user_id, new.room.room_id

    localpart, domain = user[1:].split(":", 1)
    assert domain == DOMAIN
    assert localpart.startswith(world.config.appservice.client_prefix)
    assert re.fullmatch(r"[a-z0-9]+", localpart.removeprefix(world.config.appservice.client_prefix))
    assert "jane" not in localpart and "doe" not in localpart
    assert new.client == Client(user, THERAPIST, "Jane Doe", "J.D.", "jane@example.org")
    assert await world.repo.client(user) == new.client

    assert gw.registered == [user]
    assert gw.displaynames[user] == "J.D."
    assert gw.passwords[user] == new.password
    assert new.password == rules.initial_password(world.config.appservice.as_token, "$add1")

    assert list(gw.rooms) == [room]
    body = gw.rooms[room]
    assert body["name"] == "Jane Doe"
    assert body["is_direct"] is True
    assert set(body["invite"]) == {THERAPIST, user}
    assert new.room.kind == DM
    assert new.room.client_id == user
    assert new.room.therapist_id == THERAPIST
    assert await world.repo.dm_of(THERAPIST, user) == new.room

    assert (user, room) in gw.joined
    assert (THERAPIST, room) in gw.joined
    assert gw.account_data[(user, "m.direct")] == {THERAPIST: [room]}
    assert gw.account_data[(THERAPIST, "m.direct")] == {user: [room]}

    sent = await world.sent_to(room)
    assert len(sent) == 1
    welcome = sent[0]
    assert welcome.sender == THERAPIST
    assert welcome.event_type == "m.room.message"
    assert welcome.content["msgtype"] == "m.text"
    assert "Jane" in welcome.content["body"]
    assert "Test Practice" in welcome.content["body"]
    assert not welcome.content["body"].startswith("On behalf of")

    created = await world.audit.entries("client.created")
    assert [(e.actor, e.target) for e in created] == [(THERAPIST, user)]
    rooms = await world.audit.entries("room.created")
    assert [(e.actor, e.target, e.room_id, e.detail) for e in rooms] == [
        (THERAPIST, user, room, {"kind": DM})
    ]


async def test_add_client_again_with_the_same_event_creates_nothing_twice(world: World) -> None:
    gw = world.gateway
    first = await world.add("Jane Doe", "$add1")
    assert len(await world.sent_to(first.room.room_id)) == 1

    again = await world.add("Jane Doe", "$add1")
    assert again.client == first.client
    assert again.room == first.room
    assert again.password == first.password
    assert gw.passwords[first.client.user_id] == first.password
    assert len(gw.rooms) == 1
    assert set(gw.registered) == {first.client.user_id}
    assert len(await world.sent_to(first.room.room_id)) == 1
    assert len(gw.sent) == 1
    assert await world.repo.clients_of(THERAPIST) == [first.client]
    assert await world.actions("client.created") == 1
    assert await world.actions("room.created") == 1
    assert gw.account_data[(first.client.user_id, "m.direct")] == {THERAPIST: [first.room.room_id]}
    assert gw.account_data[(THERAPIST, "m.direct")] == {first.client.user_id: [first.room.room_id]}


async def test_two_clients_get_two_accounts_and_rooms(world: World) -> None:
    a = await world.add("Jane Doe", "$a")
    b = await world.add("Jane Doe", "$b")
    assert a.client.user_id != b.client.user_id
    assert a.room.room_id != b.room.room_id
    assert a.password != b.password
    assert len(world.gateway.rooms) == 2
    # The therapist's m.direct keeps both conversations.
    assert world.gateway.account_data[(THERAPIST, "m.direct")] == {
        a.client.user_id: [a.room.room_id],
        b.client.user_id: [b.room.room_id],
    }


async def test_add_client_keeps_existing_direct_chats(world: World) -> None:
    world.gateway.account_data[(THERAPIST, "m.direct")] = {"@friend:elsewhere": ["!old:x"]}
    new = await world.add("Jane Doe", "$add1")
    assert world.gateway.account_data[(THERAPIST, "m.direct")] == {
        "@friend:elsewhere": ["!old:x"],
        new.client.user_id: [new.room.room_id],
    }


async def test_without_double_puppet_the_bot_welcomes_on_behalf(build: Build) -> None:
    gw = RecordingGateway(doublepuppet=False, existing_users={THERAPIST})
    world = await build(gateway=gw)
    new = await world.add("Jane Doe", "$add1")
    room = new.room.room_id
    sent = await world.sent_to(room)
    assert len(sent) == 1
    assert sent[0].sender == world.gateway.bot_user_id
    assert sent[0].content["body"].startswith("On behalf of")
    assert "Dr T" in sent[0].content["body"]
    assert "Jane" in sent[0].content["body"]
    assert (THERAPIST, room) not in gw.joined
    assert (THERAPIST, "m.direct") not in gw.account_data
    assert (new.client.user_id, room) in gw.joined


async def test_unknown_therapist_account_is_never_acted_as(build: Build) -> None:
    gw = RecordingGateway(existing_users=set())
    world = await build(gateway=gw)
    new = await world.add("Jane Doe", "$add1")
    sent = await world.sent_to(new.room.room_id)
    assert [s.sender for s in sent] == [gw.bot_user_id]
    assert all(user != THERAPIST for user, _ in gw.joined)


# --------------------------------------------------------------------------- resolve_client


async def test_resolve_client_by_id_localpart_and_name_prefix(world: World) -> None:
    jane = (await world.add("Jane Doe", "$1")).client
    await world.add("Mark Twain", "$2")
    localpart = jane.user_id[1:].split(":", 1)[0]
    assert await world.service.resolve_client(THERAPIST, jane.user_id) == jane
    assert await world.service.resolve_client(THERAPIST, localpart) == jane
    assert await world.service.resolve_client(THERAPIST, localpart.upper()) == jane
    assert await world.service.resolve_client(THERAPIST, "Jan") == jane
    assert await world.service.resolve_client(THERAPIST, "jane d") == jane
    assert await world.service.resolve_client(THERAPIST, "  JANE  ") == jane


async def test_resolve_client_ambiguous_names_list_both_ids(world: World) -> None:
    a = (await world.add("Sam Smith", "$1")).client
    b = (await world.add("Sam Smith", "$2")).client
    with pytest.raises(ClientLookupError) as caught:
        await world.service.resolve_client(THERAPIST, "Sam")
    assert a.user_id in str(caught.value)
    assert b.user_id in str(caught.value)
    # Either is still reachable by its ID.
    assert await world.service.resolve_client(THERAPIST, b.user_id) == b


async def test_resolve_client_unknown(world: World) -> None:
    await world.add("Jane Doe", "$1")
    with pytest.raises(ClientLookupError, match="No client"):
        await world.service.resolve_client(THERAPIST, "Zed")


async def test_resolve_client_never_finds_another_therapists_client(world: World) -> None:
    theirs = (await world.add("Olga Other", "$1", therapist=OTHER_THERAPIST)).client
    for token in (theirs.user_id, theirs.user_id[1:].split(":", 1)[0], "Olga"):
        with pytest.raises(ClientLookupError):
            await world.service.resolve_client(THERAPIST, token)
    assert await world.service.resolve_client(OTHER_THERAPIST, "Olga") == theirs


async def test_resolve_client_blank_token_matches_nobody(world: World) -> None:
    await world.add("Jane Doe", "$1")
    with pytest.raises(ClientLookupError):
        await world.service.resolve_client(THERAPIST, "")


# --------------------------------------------------------------------------- community rooms


async def two_clients(world: World) -> tuple[Client, Client]:
    a = (await world.add("Anna Bell", "$a")).client
    b = (await world.add("Carl Dunn", "$b")).client
    return a, b


async def test_rooms_are_created_encrypted_per_kind(build: Build, tmp_path: Path) -> None:
    """encryption.rooms: with encryption enabled, a new 1:1 is encrypted from its creation
    (Megolm in the initial state) and its welcome comes from the bot on the therapist's behalf
    (the trust model); a kind turned off (group here) is created plain. Nothing changes while
    encryption is disabled (the default)."""
    config = make_config(tmp_path, encryption={"enabled": True, "rooms": {"group": False}})
    world = await build(config=config)
    gw = world.gateway
    a, b = await two_clients(world)
    dm = await world.repo.dm_of(THERAPIST, a.user_id)
    assert dm is not None
    megolm = [e for e in gw.rooms[dm.room_id]["initial_state"] if e["type"] == "m.room.encryption"]
    assert megolm == [
        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": rules.MEGOLM}}
    ]
    assert (THERAPIST, dm.room_id) in gw.joined  # the therapist is still a member as themselves
    # A new client has no device yet: a welcome now would be encrypted for nobody of theirs
    # (and clients take a forwarded key only from their own devices). It waits in the outbox,
    # and so does what follows it (a phrase, a blast, a scheduled message alike).
    assert await world.sent_to(dm.room_id) == []
    await world.outbox.send("later", config.bot_user_id, dm.room_id, {"body": "2nd"})
    assert (await world.outbox.wait("later", 5)).status == HELD
    assert world.outbox.held(a.user_id) == 2 and world.outbox.held(b.user_id) == 1
    assert world.outbox.release([THERAPIST, "@stranger:test.local"]) == 0
    assert world.outbox.release([a.user_id]) == 2
    assert await world.sent_to(dm.room_id) == []  # still no device: held again
    assert world.outbox.held(a.user_id) == 2
    assert world.outbox.release_all() == 3  # the hourly safety net asks again: same answer
    await world.outbox.join()
    assert world.outbox.held(a.user_id) == 2 and world.outbox.held(b.user_id) == 1
    world.crypto.devices.add(a.user_id)  # their first sign-in (a device-list change)
    assert world.outbox.release([a.user_id]) == 2
    welcome, later = await world.sent_to(dm.room_id)  # in their order
    assert welcome.sender == config.bot_user_id
    assert welcome.content["body"].startswith("On behalf of Dr T: ")
    assert later.content["body"] == "2nd" and world.outbox.held(a.user_id) == 0
    await world.service.send_waiting_welcomes([a.user_id])  # another device later: not again
    assert len(await world.sent_to(dm.room_id)) == 2
    # Elsewhere nothing waits: the management room, a 1:1 that is not encrypted.
    assert await world.service.waiting_for_device(dm.room_id) is None

    group = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")
    state = gw.rooms[group.room_id]["initial_state"]
    assert all(e["type"] != "m.room.encryption" for e in state)

    plain = await build(config=make_config(tmp_path))  # encryption.enabled: false
    new = await plain.add("Carl Dunn", "$add-plain")
    state = plain.gateway.rooms[new.room.room_id]["initial_state"]
    assert all(e["type"] != "m.room.encryption" for e in state)


async def test_create_group(world: World) -> None:
    gw = world.gateway
    a, b = await two_clients(world)
    rooms_before = set(gw.rooms)

    room = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")
    assert set(gw.rooms) - rooms_before == {room.room_id}
    body = gw.rooms[room.room_id]
    assert body["is_direct"] is False
    assert body["name"] == "Tuesday group"
    history = [e for e in body["initial_state"] if e["type"] == "m.room.history_visibility"]
    assert history[0]["content"] == {"history_visibility": "joined"}
    # Clients' full names never reach the shared room.
    assert "Anna" not in repr(body) and "Carl" not in repr(body)
    assert room.kind == GROUP
    assert room.title == "Tuesday group"
    assert await world.repo.room(room.room_id) == room

    assert sorted(await world.repo.members(room.room_id)) == sorted([a.user_id, b.user_id])
    assert (a.user_id, room.room_id) in gw.joined
    assert (b.user_id, room.room_id) in gw.joined
    assert (THERAPIST, room.room_id) in gw.joined
    assert await world.repo.group_rooms_of_client(a.user_id) == [room.room_id]
    assert await world.service.groups_of(THERAPIST) == [(room, 2)]
    assert await world.actions("member.added") == 2
    created = await world.audit.entries("room.created")
    assert created[-1].room_id == room.room_id
    assert created[-1].detail == {"kind": GROUP}


async def test_create_group_again_with_the_same_event(world: World) -> None:
    a, b = await two_clients(world)
    room = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")
    count = len(world.gateway.rooms)

    again = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")
    assert again == room
    assert len(world.gateway.rooms) == count
    assert sorted(await world.repo.members(room.room_id)) == sorted([a.user_id, b.user_id])
    assert len(await world.repo.rooms_of(THERAPIST, GROUP)) == 1
    assert await world.service.groups_of(THERAPIST) == [(room, 2)]
    assert (
        len([e for e in await world.audit.entries("room.created") if e.room_id == room.room_id])
        == 1
    )


async def test_groups_of_is_per_therapist(world: World) -> None:
    a, _ = await two_clients(world)
    theirs = (await world.add("Olga Other", "$o", therapist=OTHER_THERAPIST)).client
    mine = await world.service.create_group(THERAPIST, "Mine", [a], "$g1")
    other = await world.service.create_group(OTHER_THERAPIST, "Theirs", [theirs], "$g2")
    assert await world.service.groups_of(THERAPIST) == [(mine, 1)]
    assert await world.service.groups_of(OTHER_THERAPIST) == [(other, 1)]


async def test_remove_from_group_kicks_forgets_and_drops_empty_groups(world: World) -> None:
    gw = world.gateway
    a, b = await two_clients(world)
    room = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")

    await world.service.remove_from_group(room, a, THERAPIST)
    assert (room.room_id, a.user_id) in gw.kicked
    assert (a.user_id, room.room_id) in gw.forgotten
    assert await world.repo.members(room.room_id) == [b.user_id]
    assert await world.repo.group_rooms_of_client(a.user_id) == []
    assert await world.service.groups_of(THERAPIST) == [(room, 1)]
    removed = await world.audit.entries("member.removed")
    assert [(e.actor, e.target, e.room_id) for e in removed] == [
        (THERAPIST, a.user_id, room.room_id)
    ]

    await world.service.remove_from_group(room, b, THERAPIST)
    assert await world.repo.members(room.room_id) == []
    assert await world.service.groups_of(THERAPIST) == []


async def test_add_to_group_after_removal(world: World) -> None:
    a, b = await two_clients(world)
    room = await world.service.create_group(THERAPIST, "Tuesday group", [a], "$group1")
    await world.service.remove_from_group(room, a, THERAPIST)
    await world.service.add_to_group(room, b, THERAPIST)
    await world.service.add_to_group(room, a, THERAPIST)
    assert sorted(await world.repo.members(room.room_id)) == sorted([a.user_id, b.user_id])
    assert (room.room_id, b.user_id) in world.gateway.invited
    assert await world.service.groups_of(THERAPIST) == [(room, 2)]


async def test_remove_from_group_tolerates_403_from_kick_on_a_retry(build: Build) -> None:
    gw = KickGateway(existing_users={THERAPIST})
    world = await build(gateway=gw)
    a, b = await two_clients(world)
    room = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")
    await world.service.remove_from_group(room, a, THERAPIST)

    # The retry: the homeserver refuses a second kick of someone already gone.
    gw.kick_errors.append(PermanentError("not in the room", status=403, errcode="M_FORBIDDEN"))
    await world.service.remove_from_group(room, a, THERAPIST)
    assert gw.kick_errors == []
    assert gw.kicked == [(room.room_id, a.user_id)]
    assert gw.forgotten == [(a.user_id, room.room_id)] * 2
    assert await world.repo.members(room.room_id) == [b.user_id]


async def test_remove_from_group_other_kick_errors_propagate(build: Build) -> None:
    gw = KickGateway(existing_users={THERAPIST})
    world = await build(gateway=gw)
    a, b = await two_clients(world)
    room = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")
    gw.kick_errors.append(PermanentError("bad request", status=400))
    with pytest.raises(PermanentError):
        await world.service.remove_from_group(room, a, THERAPIST)
    assert gw.forgotten == []
    assert sorted(await world.repo.members(room.room_id)) == sorted([a.user_id, b.user_id])


# --------------------------------------------------------------------------- initials only


async def test_enforce_initials_in_a_group_room(world: World) -> None:
    gw = world.gateway
    a, b = await two_clients(world)
    room = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")
    gw.displaynames[a.user_id] = "Anna Bell"  # the client renamed themselves globally

    assert await world.service.enforce_initials(room.room_id, a.user_id, "Anna Bell") is True
    assert gw.state[(room.room_id, "m.room.member", a.user_id)] == {
        "membership": "join",
        "displayname": "A.B.",
    }
    assert gw.displaynames[a.user_id] == "A.B."
    resets = await world.audit.entries("displayname.reset")
    assert [(e.target, e.room_id) for e in resets] == [(a.user_id, room.room_id)]


async def test_enforce_initials_leaves_correct_names_alone(world: World) -> None:
    gw = world.gateway
    a, b = await two_clients(world)
    group = await world.service.create_group(THERAPIST, "Tuesday group", [a, b], "$group1")
    dm = await world.repo.dm_of(THERAPIST, a.user_id)
    assert dm is not None
    state_before = dict(gw.state)

    assert await world.service.enforce_initials(group.room_id, a.user_id, "A.B.") is False
    assert await world.service.enforce_initials(dm.room_id, a.user_id, "Anna Bell") is False
    assert await world.service.enforce_initials(group.room_id, THERAPIST, "Dr T") is False
    assert await world.service.enforce_initials(group.room_id, "@stranger:x", "Anna") is False
    assert await world.service.enforce_initials("!unknown:x", a.user_id, "Anna Bell") is False
    assert gw.state == state_before
    assert await world.actions("displayname.reset") == 0


# --------------------------------------------------------------------------- titles


async def test_set_title(world: World) -> None:
    a, _ = await two_clients(world)
    room = await world.service.create_group(THERAPIST, "Tuesday group", [a], "$group1")
    await world.service.set_title(room, "Wednesday group", THERAPIST)
    assert world.gateway.state[(room.room_id, "m.room.name", "")] == {"name": "Wednesday group"}
    stored = await world.repo.room(room.room_id)
    assert stored is not None and stored.title == "Wednesday group"
    changed = await world.audit.entries("title.changed")
    assert [(e.actor, e.room_id) for e in changed] == [(THERAPIST, room.room_id)]
    assert await world.service.groups_of(THERAPIST) == [(stored, 1)]


# --------------------------------------------------------------------------- staff rooms


def seed_power_levels(gw: RecordingGateway) -> None:
    """What the homeserver would hold after createRoom (the recording gateway does not apply
    power_level_content_override)."""
    for room_id, body in gw.rooms.items():
        gw.state[(room_id, "m.room.power_levels", "")] = dict(body["power_level_content_override"])


def users_in(gw: RecordingGateway, room_id: str) -> dict[str, int]:
    pl = gw.state[(room_id, "m.room.power_levels", "")]
    users: dict[str, int] = pl["users"]
    return users


async def staff_rooms(world: World) -> tuple[str, str]:
    team = await world.repo.rooms_of(None, TEAM)
    care = await world.repo.rooms_of(THERAPIST, CARE)
    assert len(team) == 1 and len(care) == 1
    return team[0].room_id, care[0].room_id


async def test_reconcile_creates_team_and_care_rooms(world: World) -> None:
    gw = world.gateway
    await world.service.reconcile_staff_rooms()
    team, care = await staff_rooms(world)
    assert set(gw.rooms) == {team, care}

    care_body = gw.rooms[care]
    assert care_body["power_level_content_override"]["users"] == {THERAPIST: 90, CARE_USER: 50}
    assert care_body["invite"] == sorted([THERAPIST, CARE_USER])
    assert "Dr T" in care_body["name"]
    assert care_body["is_direct"] is False
    assert care_body["creation_content"] == {"m.federate": False}
    team_body = gw.rooms[team]
    assert set(team_body["power_level_content_override"]["users"]) == {THERAPIST, CARE_USER}
    assert gw.bot_user_id not in team_body["power_level_content_override"]["users"]
    assert "Test Practice" in team_body["name"]
    assert users_in(gw, care) == {THERAPIST: 90, CARE_USER: 50}
    assert await world.actions("room.created") == 2


async def test_reconcile_twice_creates_nothing_new(world: World) -> None:
    gw = world.gateway
    await world.service.reconcile_staff_rooms()
    seed_power_levels(gw)
    rooms, state, invited = dict(gw.rooms), dict(gw.state), list(gw.invited)

    await world.service.reconcile_staff_rooms()
    assert gw.rooms == rooms
    assert gw.state == state
    assert gw.invited == invited
    assert gw.kicked == []
    assert await world.actions("room.created") == 2
    assert len(await world.repo.rooms_of(None, CARE)) == 1


async def test_reconcile_removes_staff_no_longer_listed(build: Build, tmp_path: Path) -> None:
    first = await build()
    gw = first.gateway
    await first.service.reconcile_staff_rooms()
    team, care = await staff_rooms(first)
    seed_power_levels(gw)

    only_therapist = make_config(
        tmp_path,
        staff=[{"user_id": THERAPIST, "displayname": "Dr T", "role": "therapist"}],
    )
    second = await build(gateway=gw, config=only_therapist, clock=first.clock)
    await second.service.reconcile_staff_rooms()
    assert (care, CARE_USER) in gw.kicked
    assert (team, CARE_USER) in gw.kicked
    assert (care, THERAPIST) not in gw.kicked
    assert users_in(gw, care) == {THERAPIST: 90}
    assert users_in(gw, team) == {THERAPIST: 50}
    # The rest of the power levels survive the update.
    assert gw.state[(care, "m.room.power_levels", "")]["events"]["m.room.power_levels"] == 100
    assert len(gw.rooms) == 2


async def test_reconcile_invites_new_staff(build: Build, tmp_path: Path) -> None:
    first = await build()
    gw = first.gateway
    await first.service.reconcile_staff_rooms()
    team, care = await staff_rooms(first)
    seed_power_levels(gw)

    newcomer = f"@newcare:{DOMAIN}"
    more = make_config(
        tmp_path,
        staff=[
            {"user_id": THERAPIST, "displayname": "Dr T", "role": "therapist"},
            {"user_id": CARE_USER, "displayname": "Carla Care", "role": "care"},
            {"user_id": newcomer, "displayname": "New Care", "role": "care"},
        ],
    )
    invited_before = len(gw.invited)
    second = await build(gateway=gw, config=more, clock=first.clock)
    await second.service.reconcile_staff_rooms()
    assert sorted(gw.invited[invited_before:]) == sorted([(team, newcomer), (care, newcomer)])
    assert users_in(gw, care) == {THERAPIST: 90, CARE_USER: 50, newcomer: 50}
    assert gw.kicked == []


async def test_reconcile_applies_a_changed_role(build: Build, tmp_path: Path) -> None:
    def staff(care_role: str) -> list[dict[str, str]]:
        return [
            {"user_id": THERAPIST, "displayname": "Dr T", "role": "therapist"},
            {"user_id": CARE_USER, "displayname": "Carla Care", "role": care_role},
        ]

    first = await build(config=make_config(tmp_path, staff=staff("admin")))
    gw = first.gateway
    await first.service.reconcile_staff_rooms()
    team = (await first.repo.rooms_of(None, TEAM))[0].room_id
    seed_power_levels(gw)
    assert users_in(gw, team)[CARE_USER] == 90

    demoted = make_config(tmp_path, staff=staff("care"))
    second = await build(gateway=gw, config=demoted, clock=first.clock)
    await second.service.reconcile_staff_rooms()
    assert users_in(gw, team)[CARE_USER] == 50


# --------------------------------------------------------------------------- confirmations


class Replies:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, text: str) -> None:
        self.texts.append(text)


@dataclass
class Confirm:
    confirmations: Confirmations
    clock: FakeClock
    runs: list[tuple[str, dict[str, Any]]]


@pytest.fixture
def confirm(db: Database) -> Confirm:
    clock = FakeClock()
    confirmations = Confirmations(db, clock, ttl_seconds=300)
    runs: list[tuple[str, dict[str, Any]]] = []

    async def action(ctx: CommandContext, payload: dict[str, Any]) -> None:
        runs.append((ctx.sender, payload))
        await ctx.reply("done")

    confirmations.register("test.action", action)
    return Confirm(confirmations, clock, runs)


def context(
    replies: Replies,
    sender: str = THERAPIST,
    room_id: str = "!room:test.local",
    event_id: str = "$cmd",
) -> CommandContext:
    return CommandContext(
        sender=sender,
        role="therapist",
        room_id=room_id,
        event_id=event_id,
        name="group",
        args=(),
        raw_args="",
        registry=CommandRegistry(),
        _reply=replies,
    )


def count_open(db: Database) -> Awaitable[int]:
    return db.fetchval("SELECT COUNT(*) FROM confirmation WHERE used_by IS NULL")


async def test_ask_stores_and_prompts(confirm: Confirm, db: Database) -> None:
    replies = Replies()
    await confirm.confirmations.ask(
        context(replies), "test.action", {"client": "@c-1:x"}, "Remove A.B.?"
    )
    assert len(replies.texts) == 1
    assert replies.texts[0].startswith("Remove A.B.?")
    assert "Reply !yes" in replies.texts[0]
    assert "!no" in replies.texts[0]
    assert "5 min" in replies.texts[0]
    assert await count_open(db) == 1
    assert confirm.runs == []


async def test_yes_runs_the_action_once(confirm: Confirm, db: Database) -> None:
    replies = Replies()
    ask = context(replies, event_id="$ask")
    await confirm.confirmations.ask(ask, "test.action", {"client": "@c-1:x", "n": 2}, "Sure?")
    await confirm.confirmations.yes(context(replies, event_id="$yes"))
    assert confirm.runs == [(THERAPIST, {"client": "@c-1:x", "n": 2})]
    assert replies.texts[-1] == "done"
    assert await count_open(db) == 0

    await confirm.confirmations.yes(context(replies, event_id="$yes-again"))
    assert len(confirm.runs) == 1
    assert "nothing waiting" in replies.texts[-1]


async def test_the_same_yes_handled_again_gets_the_same_payload(
    confirm: Confirm, db: Database
) -> None:
    """The inbox hands an event over at least once: a `!yes` handled again (after a crash
    between consuming the question and finishing, or a temporary error) must find what it
    confirmed, not "nothing waiting" — even after a new question was asked meanwhile."""
    replies = Replies()
    await confirm.confirmations.ask(context(replies, event_id="$ask"), "test.action", {"x": 1}, "?")
    await confirm.confirmations.yes(context(replies, event_id="$yes"))
    await confirm.confirmations.ask(
        context(replies, event_id="$ask2"), "test.action", {"x": 2}, "Again?"
    )
    await confirm.confirmations.yes(context(replies, event_id="$yes"))  # the replay
    assert confirm.runs == [(THERAPIST, {"x": 1}), (THERAPIST, {"x": 1})]
    assert replies.texts[-1] == "done"
    assert await count_open(db) == 1  # the new question is still open
    await confirm.confirmations.yes(context(replies, event_id="$yes2"))
    assert confirm.runs[-1] == (THERAPIST, {"x": 2})


async def test_the_asking_event_handled_again_asks_nothing_new(confirm: Confirm) -> None:
    replies = Replies()
    ask = context(replies, event_id="$ask")
    await confirm.confirmations.ask(ask, "test.action", {"x": 1}, "Sure?")
    await confirm.confirmations.yes(context(replies, event_id="$yes"))
    await confirm.confirmations.ask(ask, "test.action", {"x": 1}, "Sure?")  # the replay
    assert replies.texts[-1].startswith("Sure?")
    await confirm.confirmations.yes(context(replies, event_id="$yes2"))
    assert confirm.runs == [(THERAPIST, {"x": 1})]
    assert "nothing waiting" in replies.texts[-1]


async def test_no_cancels(confirm: Confirm, db: Database) -> None:
    replies = Replies()
    await confirm.confirmations.ask(context(replies, event_id="$ask"), "test.action", {}, "Sure?")
    await confirm.confirmations.no(context(replies, event_id="$no"))
    assert replies.texts[-1] == "Cancelled."
    await confirm.confirmations.no(context(replies, event_id="$no"))  # the replay
    assert replies.texts[-1] == "Cancelled."
    assert await db.fetchval("SELECT payload FROM confirmation WHERE used_by = '$no'") == "{}"
    await confirm.confirmations.yes(context(replies, event_id="$yes"))
    assert confirm.runs == []
    assert "nothing waiting" in replies.texts[-1]
    await confirm.confirmations.no(context(replies, event_id="$no2"))
    assert replies.texts[-1] == "There was nothing to cancel."


async def test_expired_question_is_not_run(confirm: Confirm, db: Database) -> None:
    replies = Replies()
    await confirm.confirmations.ask(context(replies, event_id="$ask"), "test.action", {"x": 1}, "?")
    confirm.clock.advance(301)
    await confirm.confirmations.yes(context(replies, event_id="$yes"))
    assert confirm.runs == []
    assert "nothing waiting" in replies.texts[-1]
    assert await db.fetchval("SELECT COUNT(*) FROM confirmation") == 0
    await confirm.confirmations.yes(context(replies, event_id="$yes"))  # the replay
    assert confirm.runs == []


async def test_question_within_ttl_is_run(confirm: Confirm) -> None:
    replies = Replies()
    await confirm.confirmations.ask(context(replies, event_id="$ask"), "test.action", {"x": 1}, "?")
    confirm.clock.advance(299)
    await confirm.confirmations.yes(context(replies, event_id="$yes"))
    assert confirm.runs == [(THERAPIST, {"x": 1})]


async def test_questions_are_per_sender_and_room(confirm: Confirm) -> None:
    replies = Replies()
    await confirm.confirmations.ask(context(replies, event_id="$ask"), "test.action", {"x": 1}, "?")
    await confirm.confirmations.yes(context(replies, sender=CARE_USER, event_id="$y1"))
    await confirm.confirmations.yes(
        context(replies, room_id="!elsewhere:test.local", event_id="$y2")
    )
    assert confirm.runs == []
    await confirm.confirmations.yes(context(replies, event_id="$y3"))
    assert confirm.runs == [(THERAPIST, {"x": 1})]


async def test_a_new_question_replaces_the_pending_one(confirm: Confirm) -> None:
    replies = Replies()
    await confirm.confirmations.ask(context(replies, event_id="$a1"), "test.action", {"x": 1}, "1?")
    await confirm.confirmations.ask(context(replies, event_id="$a2"), "test.action", {"x": 2}, "2?")
    await confirm.confirmations.yes(context(replies, event_id="$y1"))
    await confirm.confirmations.yes(context(replies, event_id="$y2"))
    assert confirm.runs == [(THERAPIST, {"x": 2})]
