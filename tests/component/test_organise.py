"""Spaces, !archive/!unarchive, !find, !mute/!unmute and !video through the Bot, on a real
database (SQLite and PostgreSQL), a real outbox and a recording gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bots.bot import Bot
from bots.features.conversations.repo import CARE as CARE_KIND
from bots.features.conversations.repo import TEAM, Client, Room
from bots.features.organise.service import LOW_PRIORITY, WIDGETS, mute_rule
from bots.features.organise.spaces import ARCHIVE, CLIENTS, GROUPS, PRACTICE, SESSIONS
from bridge.matrix.gateway import PermanentError
from tests.support.builders import DOMAIN, make_config, message
from tests.support.fakes import FakeClock, RecordingGateway, RecordingTimers
from tests.support.harness import BotHarness, Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
OTHER = f"@other:{DOMAIN}"
CARE = f"@care:{DOMAIN}"
BOT = f"@alcove:{DOMAIN}"
NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
STAFF = [
    {"user_id": THERAPIST, "displayname": "Dr T", "role": "therapist"},
    {"user_id": OTHER, "displayname": "Dr O", "role": "therapist"},
    {"user_id": CARE, "displayname": "Carla Care", "role": "care"},
]


@dataclass
class World:
    h: BotHarness
    timers: RecordingTimers

    @property
    def bot(self) -> Bot:
        return self.h.bot

    @property
    def gw(self) -> RecordingGateway:
        return self.h.gateway

    async def say(self, room_id: str, body: str, sender: str = THERAPIST) -> str:
        event = message(room_id, sender, body)
        await self.bot.on_message(event)
        await self.h.settle()
        return str(event["event_id"])

    async def bodies(self, room_id: str) -> list[str]:
        return [str(s.content.get("body")) for s in await self.h.sent_to(room_id)]

    async def mgmt(self, user: str = THERAPIST) -> str:
        room = await self.bot.management.room_for(user)
        assert room is not None
        return room

    async def space(self, kind: str, owner: str = THERAPIST) -> str:
        space = await self.bot.spaces.spaces.get("" if kind == PRACTICE else owner, kind)
        assert space is not None
        return space

    def children(self, space: str) -> set[str]:
        return {
            k
            for (r, t, k), c in self.gw.state.items()
            if r == space and t == "m.space.child" and c.get("via")
        }

    async def add(self, name: str, therapist: str = THERAPIST) -> tuple[Client, Room]:
        new = await self.bot.conversations.add_client(therapist, name, None, f"$add-{name}")
        await self.h.settle()
        return new.client, new.room


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(harnesses: Harnesses, tmp_path: Path) -> Build:
    """The Bot started as Alcove starts it; a second build on the same gateway is a restart."""

    async def make(
        gateway: RecordingGateway | None = None, clock: FakeClock | None = None
    ) -> World:
        config = make_config(tmp_path, staff=STAFF)
        gateway = gateway or RecordingGateway(
            bot_user_id=config.bot_user_id, existing_users={THERAPIST, OTHER, CARE}
        )
        timers = RecordingTimers()
        h = await harnesses.build(config, gateway, clock or FakeClock(NOW), timers=timers)
        await h.bot.start()
        assert h.bot.background is not None
        await h.bot.background  # the spaces' repair
        await h.settle()
        return World(h, timers)

    return make


@pytest.fixture
async def world(build: Build) -> World:
    return await build()


def state_of(gw: RecordingGateway, room: str, etype: str) -> dict[str, dict[str, Any]]:
    return {k: c for (r, t, k), c in gw.state.items() if r == room and t == etype}


# --------------------------------------------------------------------------- spaces


def spaces_of(gw: RecordingGateway) -> set[str]:
    return {r for r, b in gw.rooms.items() if b["creation_content"].get("type") == "m.space"}


async def test_spaces_are_made_as_rooms_go_in_and_the_staff_rooms_are_filed(
    world: World,
) -> None:
    gw = world.gw
    # At start-up only the staff rooms exist: only the practice's space is made.
    practice = await world.space(PRACTICE)
    assert spaces_of(gw) == {practice}
    assert sorted(gw.rooms[practice]["invite"]) == sorted([THERAPIST, OTHER, CARE])
    assert gw.rooms[practice]["name"] == "Test Practice"
    staff_rooms = [
        r.room_id
        for kind in (TEAM, CARE_KIND)
        for r in await world.bot.conversations.repo.rooms_of(None, kind)
    ]
    assert len(staff_rooms) == 3  # the team room, a Client Care room per therapist
    assert world.children(practice) == set(staff_rooms)
    for room in staff_rooms:  # no client in a staff room: it names its space
        assert state_of(gw, room, "m.space.parent") == {
            practice: {"via": [DOMAIN], "canonical": True}
        }

    # A therapist's space comes with its first room; only they are in it, below the levels
    # that file rooms or let anyone in.
    jane, dm = await world.add("Jane Doe")
    await world.bot.conversations.create_group(THERAPIST, "Tuesday", [jane], "$g")
    await world.bot.sessions.book(THERAPIST, [jane], NOW, 30, "$session")
    await world.say(dm.room_id, "!archive")
    for kind, name in (
        (CLIENTS, "Clients"),
        (GROUPS, "Groups"),
        (SESSIONS, "Sessions"),
        (ARCHIVE, "Archive"),
    ):
        space = await world.space(kind)
        body = gw.rooms[space]
        assert body["name"] == name and body["invite"] == [THERAPIST]
        levels = body["power_level_content_override"]
        assert levels["users"] == {THERAPIST: 50}
        assert levels["invite"] > 50 and levels["state_default"] > 50
        assert levels["events_default"] > 90  # nobody writes in a space
        assert (THERAPIST, space) in gw.joined  # joined as them (double puppet)
    assert len(spaces_of(gw)) == 5
    assert await world.bot.spaces.spaces.of(OTHER) == {}


async def test_rooms_are_filed_as_they_are_made_and_clients_learn_nothing(world: World) -> None:
    jane, dm = await world.add("Jane Doe")
    sam, _ = await world.add("Sam Smith")
    group = await world.bot.conversations.create_group(THERAPIST, "Tuesday", [jane, sam], "$g")
    await world.h.settle()
    assert dm.room_id in world.children(await world.space(CLIENTS))
    assert world.children(await world.space(GROUPS)) == {group.room_id}
    assert await world.bot.spaces.spaces.get(OTHER, CLIENTS) is None  # none of theirs
    # A room a client is in holds no m.space.parent (they would read it, and it would change
    # on !archive); no client is ever invited to a space.
    for room in (dm.room_id, group.room_id):
        assert state_of(world.gw, room, "m.space.parent") == {}
    spaces = {r for r, b in world.gw.rooms.items() if b["creation_content"].get("type")}
    assert not [(r, u) for r, u in world.gw.invited if r in spaces and u.startswith("@c-")]
    assert not [(u, r) for u, r in world.gw.joined if r in spaces and u.startswith("@c-")]


async def test_repair_is_idempotent_and_puts_back_what_is_wrong(world: World, build: Build) -> None:
    _, dm = await world.add("Jane Doe")
    clients = await world.space(CLIENTS)
    rooms, state = dict(world.gw.rooms), dict(world.gw.state)
    restarted = await build(world.gw, world.h.clock)
    assert world.gw.rooms == rooms and world.gw.state == state  # nothing new, nothing changed

    # Someone (an admin by hand, a crash half-way) filed a stray room and lost the 1:1.
    world.gw.state[(clients, "m.space.child", dm.room_id)] = {}
    world.gw.state[(clients, "m.space.child", "!stray:test.local")] = {"via": [DOMAIN]}
    await restarted.bot.spaces.repair()
    assert world.children(clients) == {dm.room_id}


async def test_a_session_room_is_in_the_sessions_space_while_it_lasts(world: World) -> None:
    jane, _ = await world.add("Jane Doe")
    session = await world.bot.sessions.book(THERAPIST, [jane], NOW, 30, "$session")
    await world.h.settle()
    assert session.room_id is not None
    sessions = await world.space(SESSIONS)
    assert world.children(sessions) == {session.room_id}
    await world.bot.sessions.end(session.id, "test")
    await world.h.settle()
    assert world.children(sessions) == set()


# --------------------------------------------------------------------------- !archive


async def test_archive_in_the_conversation_moves_it_tags_it_and_tells_only_the_therapist(
    world: World,
) -> None:
    jane, dm = await world.add("Jane Doe")
    mgmt = await world.mgmt()
    before = await world.bodies(dm.room_id)
    command = await world.say(dm.room_id, "!archive")

    assert dm.room_id in world.children(await world.space(ARCHIVE))
    assert dm.room_id not in world.children(await world.space(CLIENTS))
    assert world.gw.tags[(THERAPIST, dm.room_id)] == {LOW_PRIORITY: {"order": 0.5}}
    room = await world.bot.conversations.room(dm.room_id)
    assert room is not None and room.archived
    # The client's room: nothing new from Alcove, and the command is removed.
    assert await world.bodies(dm.room_id) == before
    assert (dm.room_id, command) in world.gw.redacted
    answer = (await world.bodies(mgmt))[-1]
    assert answer.startswith("Archived 'Jane Doe'") and "client sees no change" in answer

    await world.say(dm.room_id, "!archive")
    assert "already archived" in (await world.bodies(mgmt))[-1]
    await world.say(mgmt, "!unarchive Jane")
    assert dm.room_id in world.children(await world.space(CLIENTS))
    assert dm.room_id not in world.children(await world.space(ARCHIVE))
    assert world.gw.tags[(THERAPIST, dm.room_id)] == {}
    assert (await world.bodies(mgmt))[-1].startswith("Unarchived 'Jane Doe'")
    assert await world.bodies(dm.room_id) == before
    assert len(await world.bot.audit.entries("room.archived")) == 1
    assert len(await world.bot.audit.entries("room.unarchived")) == 1
    assert await world.bot.conversations.client(jane.user_id) == jane


async def test_archive_from_the_management_room_and_misuse(world: World) -> None:
    jane, dm = await world.add("Jane Doe")
    mgmt = await world.mgmt()
    await world.say(mgmt, f"!archive {jane.user_id}")
    assert dm.room_id in world.children(await world.space(ARCHIVE))
    await world.say(mgmt, "!archive")
    assert "Use !archive inside one of your conversations" in (await world.bodies(mgmt))[-1]
    await world.say(mgmt, "!archive Nobody")
    assert "No client of yours matches 'Nobody'" in (await world.bodies(mgmt))[-1]
    # Without the double puppet the room still moves; the tag is the therapist's to set.
    world.gw.doublepuppet = False
    await world.say(mgmt, "!unarchive Jane")
    assert "double-puppet registration" in (await world.bodies(mgmt))[-1]
    assert dm.room_id in world.children(await world.space(CLIENTS))


# --------------------------------------------------------------------------- !find


async def test_find_matches_names_initials_ids_and_titles_in_the_management_room_only(
    world: World,
) -> None:
    jane, jane_dm = await world.add("Jane Doe")
    sam, sam_dm = await world.add("Sam Smith")
    group = await world.bot.conversations.create_group(THERAPIST, "Tuesday Circle", [sam], "$g")
    await world.say(jane_dm.room_id, "!archive")
    mgmt = await world.mgmt()

    await world.say(mgmt, "!find doe")
    found = (await world.bodies(mgmt))[-1]
    assert "Jane Doe (J.D.)" in found and "(archived)" in found and "Sam" not in found
    assert f"https://matrix.to/#/{jane_dm.room_id}" in found

    await world.say(mgmt, "!find ss")  # initials without their dots
    found = (await world.bodies(mgmt))[-1]
    assert "Sam Smith" in found and "Jane" not in found
    assert "group 'Tuesday Circle' (with S.S.)" in found  # the group, by its member

    await world.say(mgmt, f"!find {jane.user_id[3:9].upper()}")  # part of the ID, any case
    assert "Jane Doe" in (await world.bodies(mgmt))[-1]
    await world.say(mgmt, "!find circle")
    found = (await world.bodies(mgmt))[-1]
    assert f"group 'Tuesday Circle' — https://matrix.to/#/{group.room_id}" in found
    await world.say(mgmt, "!find zzz")
    assert (await world.bodies(mgmt))[-1] == "No conversation of yours matches 'zzz'."

    # Typed in a conversation: the answer goes to the management room, the room gets a pointer.
    await world.say(sam_dm.room_id, "!find Jane")
    assert "Jane Doe" in (await world.bodies(mgmt))[-1]
    in_room = await world.bodies(sam_dm.room_id)
    assert in_room[-1].startswith("I answered in your management room")
    assert not any("Jane" in b for b in in_room)
    # Another therapist finds none of them; a client cannot use it.
    await world.say(await world.mgmt(OTHER), "!find Jane", sender=OTHER)
    assert (await world.bodies(await world.mgmt(OTHER)))[-1].startswith("No conversation")
    await world.say(sam_dm.room_id, "!find Jane", sender=sam.user_id)
    assert "Only therapists can use !find" in (await world.bodies(sam_dm.room_id))[-1]


# --------------------------------------------------------------------------- !mute


async def test_a_timed_mute_ends_by_itself_even_after_a_restart(world: World, build: Build) -> None:
    _, dm = await world.add("Jane Doe")
    mgmt = await world.mgmt()
    before = await world.bodies(dm.room_id)
    await world.say(dm.room_id, "!mute for 2h")
    rule = (THERAPIST, "override", dm.room_id)
    assert world.gw.push_rules[rule] == mute_rule(dm.room_id)
    assert world.gw.push_rules[rule]["actions"] == []
    assert "Muted 'Jane Doe' until Wed 2026-11-18 14:00 GMT" in (await world.bodies(mgmt))[-1]
    assert await world.bodies(dm.room_id) == before  # the client is told nothing
    assert world.timers.armed[f"mute:{THERAPIST}:{dm.room_id}"].when == NOW + timedelta(hours=2)

    # Alcove restarts; the timer is armed again from the database, and fires.
    world.h.clock.advance(3 * 3600)
    restarted = await build(world.gw, world.h.clock)
    await restarted.timers.run(f"mute:{THERAPIST}:{dm.room_id}")
    await restarted.h.settle()
    assert rule not in world.gw.push_rules
    assert (await world.bodies(mgmt))[-1].startswith("Notifications are on again for Jane Doe")
    assert await restarted.bot.organiser.mutes.timed() == []


async def test_mute_until_a_time_unmute_and_misuse(world: World) -> None:
    _, dm = await world.add("Jane Doe")
    mgmt = await world.mgmt()
    rule = (THERAPIST, "override", dm.room_id)
    await world.say(dm.room_id, "!mute until 2026-11-19 09:30")
    assert "until Thu 2026-11-19 09:30 GMT" in (await world.bodies(mgmt))[-1]
    # A mute without an end replaces the timed one: no timer is left to lift it.
    await world.say(dm.room_id, "!mute")
    assert f"mute:{THERAPIST}:{dm.room_id}" not in world.timers.armed
    assert "until you send !unmute" in (await world.bodies(mgmt))[-1]
    await world.say(dm.room_id, "!unmute")
    assert rule not in world.gw.push_rules
    assert (await world.bodies(mgmt))[-1].startswith("Notifications are on again")
    await world.say(dm.room_id, "!unmute")
    assert "was not muted" in (await world.bodies(mgmt))[-1]

    await world.say(dm.room_id, "!mute until 2026-11-01 09:00")
    assert "is in the past" in (await world.bodies(dm.room_id))[-1]
    await world.say(dm.room_id, "!mute for ever")
    assert "Usage: !mute for <N>h" in (await world.bodies(dm.room_id))[-1]
    await world.say(mgmt, "!mute")
    assert "Use !mute inside the conversation" in (await world.bodies(mgmt))[-1]
    assert rule not in world.gw.push_rules


# --------------------------------------------------------------------------- !video


@pytest.mark.parametrize("provider", ["jitsi", "element_call"])
async def test_video_puts_a_meeting_widget_in_the_room(
    harnesses: Harnesses, tmp_path: Path, provider: str
) -> None:
    config = make_config(
        tmp_path,
        staff=STAFF,
        video={"provider": provider, "jitsi_domain": "jitsi.practice.test"},
    )
    gw = RecordingGateway(bot_user_id=BOT, existing_users={THERAPIST, OTHER, CARE})
    h = await harnesses.build(config, gw, FakeClock(NOW), timers=RecordingTimers())
    await h.bot.start()
    await h.bot.stop()  # the spaces' repair in the background: not this test's
    world = World(h, RecordingTimers())
    jane, dm = await world.add("Jane Doe")

    await world.say(dm.room_id, "!video", sender=jane.user_id)  # a client cannot
    assert "Only therapists can use !video" in (await world.bodies(dm.room_id))[-1]
    assert state_of(gw, dm.room_id, WIDGETS) == {}

    await world.say(dm.room_id, "!video")
    widgets = state_of(gw, dm.room_id, WIDGETS)
    assert len(widgets) == 1
    [(widget_id, content)] = widgets.items()
    assert content["id"] == widget_id and content["creatorUserId"] == THERAPIST
    if provider == "jitsi":
        assert content["type"] == "jitsi"
        assert content["data"]["domain"] == "jitsi.practice.test"
        conference = content["data"]["conferenceId"]
        assert content["url"] == f"https://jitsi.practice.test/{conference}"
        assert len(conference) >= 24
    else:
        assert content["url"].startswith("https://call.element.io/room/#/Alcove")
    layout = state_of(gw, dm.room_id, "io.element.widgets.layout")[""]
    assert layout["widgets"][widget_id]["container"] == "top"
    assert content["url"] in (await world.bodies(dm.room_id))[-1]
    await world.say(dm.room_id, "!video")  # a second meeting gets its own conference
    assert len(state_of(gw, dm.room_id, WIDGETS)) == 2
    await world.say(await world.mgmt(), "!video")
    assert "Use !video inside the conversation" in (await world.bodies(await world.mgmt()))[-1]
    assert len(await h.bot.audit.entries("video.started")) == 2


@dataclass
class GoneSpaceGateway(RecordingGateway):
    """A homeserver on which one room was deleted by an admin: the bot can no longer read it."""

    gone: set[str] | None = None

    async def room_members(self, room_id: str) -> dict[str, str]:
        if self.gone and room_id in self.gone:
            raise PermanentError("not in room", status=403)
        return await super().room_members(room_id)


async def test_a_space_that_cannot_be_read_does_not_stop_the_repair_of_the_others(
    build: Build,
) -> None:
    gw = GoneSpaceGateway(bot_user_id=BOT, existing_users={THERAPIST, OTHER, CARE})
    world = await build(gw)
    _, dm = await world.add("Jane Doe")
    practice, clients = await world.space(PRACTICE), await world.space(CLIENTS)
    gw.gone = {practice}
    gw.state[(clients, "m.space.child", dm.room_id)] = {}  # lost: put back at the next start
    await build(gw, world.h.clock)
    assert world.children(clients) == {dm.room_id}
