"""Management rooms, the reply policy, secrets and rooms Alcove will not adopt, through the Bot
on a real database (SQLite and PostgreSQL), a real outbox and a recording gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bots.bot import STAFF_ROOMS_TIMER, Bot
from bots.commands.context import CommandContext
from bots.commands.spec import CommandSpec
from bots.features.conversations.repo import CARE as CARE_ROOM
from bots.features.conversations.repo import GROUP, TEAM, Client, Room
from bridge.config import Config
from bridge.matrix.gateway import TemporaryError
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from tests.support.builders import DOMAIN, invite, make_config, message
from tests.support.fakes import FakeClock, RecordingGateway, RecordingTimers, Sent
from tests.support.harness import Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
CARE = f"@care:{DOMAIN}"
BOT = f"@alcove:{DOMAIN}"
GROUP_ROOM = "!group:test.local"


@dataclass
class World:
    db: Database
    config: Config
    gateway: RecordingGateway
    outbox: Outbox
    clock: FakeClock
    timers: RecordingTimers
    metrics: Metrics
    bot: Bot

    async def sent_to(self, room_id: str) -> list[Sent]:
        await self.outbox.join()
        return [s for s in self.gateway.sent if s.room_id == room_id]

    async def bodies(self, room_id: str) -> list[str]:
        return [str(s.content.get("body")) for s in await self.sent_to(room_id)]

    async def mgmt(self, user: str = THERAPIST) -> str:
        room = await self.bot.management.room_for(user)
        assert room is not None
        return room

    async def say(self, room_id: str, body: str, sender: str = THERAPIST) -> None:
        await self.bot.on_message(message(room_id, sender, body))
        await self.outbox.join()


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(harnesses: Harnesses, tmp_path: Path) -> Build:
    """A Bot over the shared database; a second build is Alcove restarted."""

    async def make(
        gateway: RecordingGateway | None = None, clock: FakeClock | None = None
    ) -> World:
        config = make_config(tmp_path)
        gateway = gateway or RecordingGateway(
            bot_user_id=config.bot_user_id, existing_users={THERAPIST, CARE}
        )
        timers = RecordingTimers()
        h = await harnesses.build(config, gateway, clock or FakeClock(), timers=timers)
        return World(h.db, config, gateway, h.outbox, h.clock, timers, h.metrics, h.bot)

    return make


@pytest.fixture
async def world(build: Build) -> World:
    w = await build()
    await w.bot.management.ensure_all()
    await w.outbox.join()
    return w


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- owned rooms


async def test_every_staff_member_gets_an_owned_management_room(world: World) -> None:
    gw = world.gateway
    for staff in (THERAPIST, CARE):
        room = await world.mgmt(staff)
        body = gw.rooms[room]
        assert body["is_direct"] is True and body["invite"] == [staff]
        assert body["name"] == "Alcove"
        assert not any(e["type"] == "m.room.encryption" for e in body["initial_state"])
        levels = body["power_level_content_override"]
        assert levels["users"] == {staff: 50} and levels["invite"] > 50
        assert (staff, room) in gw.joined  # accepted as them (double puppet)
        assert gw.account_data[(staff, "m.direct")] == {BOT: [room]}
        welcome = await world.bodies(room)
        assert len(welcome) == 1 and "This is your management room" in welcome[0]
        assert "Commands you can use" in welcome[0]
    assert "!client" in (await world.bodies(await world.mgmt(THERAPIST)))[0]
    assert "!client" not in (await world.bodies(await world.mgmt(CARE)))[0]  # help by role


async def test_the_room_is_reused_across_restarts_and_recreated_when_left(
    world: World, build: Build
) -> None:
    first = await world.mgmt()
    created = len(world.gateway.rooms)
    again = await build(world.gateway)
    await again.bot.management.ensure_all()
    assert await again.mgmt() == first
    assert len(world.gateway.rooms) == created  # nothing new
    assert len(await again.bodies(first)) == 1  # no second welcome

    world.gateway.memberships[first] = {THERAPIST: "leave", BOT: "join"}
    third = await build(world.gateway)
    await third.bot.management.ensure_all()
    renewed = await third.mgmt()
    assert renewed != first
    assert world.gateway.account_data[(THERAPIST, "m.direct")] == {BOT: [first, renewed]}


async def test_a_dm_opened_by_staff_never_replaces_the_owned_room(world: World) -> None:
    owned = await world.mgmt()
    event = invite("!staffdm:test.local", THERAPIST, BOT)
    event["content"]["is_direct"] = True
    await world.bot.on_invite(event)
    await world.outbox.join()
    assert (BOT, "!staffdm:test.local") in world.gateway.joined
    assert await world.mgmt() == owned
    note = await world.bodies("!staffdm:test.local")
    assert len(note) == 1 and f"https://matrix.to/#/{owned}" in note[0]
    # Commands typed there still work.
    await world.say("!staffdm:test.local", "!ping")
    assert (await world.bodies("!staffdm:test.local"))[-1] == "pong"


async def test_a_management_room_from_an_earlier_version_is_replaced(
    build: Build, db: Database
) -> None:
    w = await build()
    old = "!old-dm:test.local"
    await w.bot.conversations.repo.set_management_room(THERAPIST, old, owned=False)
    w.gateway.memberships[old] = {THERAPIST: "join", BOT: "join"}
    await w.bot.management.ensure_all()
    new = await w.mgmt()
    assert new != old and new in w.gateway.rooms
    moved = await w.bodies(old)
    assert len(moved) == 1 and f"https://matrix.to/#/{new}" in moved[0]


# --------------------------------------------------------------------------- secrets


async def test_client_add_sends_the_password_only_to_a_private_management_room(
    world: World,
) -> None:
    mgmt = await world.mgmt()
    await world.say(mgmt, "!client add Jane Doe")
    reply = (await world.bodies(mgmt))[-1]
    assert reply.startswith("Added Jane Doe as @c-") and "Initial password: " in reply
    assert "once they have signed in, or after 24 hours" in reply

    # Someone else invited into the room: no password, no client, a clear sentence.
    world.gateway.memberships[mgmt] = {THERAPIST: "join", BOT: "join", "@x:test.local": "invite"}
    before = len(await world.bot.conversations.repo.clients_of(THERAPIST))
    await world.say(mgmt, "!client add Sam Roe")
    refusal = (await world.bodies(mgmt))[-1]
    assert refusal.startswith("I did not send it") and "only" in refusal
    assert "Initial password" not in refusal
    assert len(await world.bot.conversations.repo.clients_of(THERAPIST)) == before
    assert counter(world.metrics, "alcove_secrets_withheld_total") == 1


async def test_send_secret_checks_members_at_send_time(world: World) -> None:
    mgmt = await world.mgmt()
    management = world.bot.management
    assert await management.send_secret(THERAPIST, "s1", {"body": "one"}) is None
    world.gateway.memberships[mgmt] = {THERAPIST: "join", BOT: "join", CARE: "join"}
    problem = await management.send_secret(THERAPIST, "s2", {"body": "two"})
    assert problem is not None and "1 other member(s)" in problem
    assert (await world.bodies(mgmt))[1:] == ["one"]

    # Left by the staff member: a new room first, and the secret goes there.
    world.gateway.memberships[mgmt] = {THERAPIST: "leave", BOT: "join", CARE: "join"}
    assert await management.send_secret(THERAPIST, "s3", {"body": "three"}) is None
    renewed = await world.mgmt()
    assert renewed != mgmt
    assert (await world.bodies(renewed))[-1] == "three"
    assert (await world.bodies(mgmt))[1:] == ["one"]


async def added_client(world: World) -> tuple[str, str]:
    mgmt = await world.mgmt()
    await world.say(mgmt, "!client add Jane Doe")
    client = (await world.bot.conversations.repo.clients_of(THERAPIST))[0]
    return mgmt, client.user_id


async def test_the_password_is_redacted_once_the_client_has_signed_in(world: World) -> None:
    mgmt, client = await added_client(world)
    password_event = next(
        s for s in await world.sent_to(mgmt) if "Initial password" in str(s.content)
    )
    (job,) = [j for j in world.timers.armed if j.startswith("secret:")]

    await world.timers.run(job)  # nobody signed in yet; Alcove's own device does not count
    world.gateway.user_device_list[client] = [{"device_id": "ALCOVE", "last_seen_ts": 1}]
    await world.timers.run(job)
    assert world.gateway.redacted == [] and job in world.timers.armed

    world.gateway.user_device_list[client] = [
        {"device_id": "ALCOVE", "last_seen_ts": 1},
        {"device_id": "ELEMENTX1", "last_seen_ts": 1},
    ]
    await world.timers.run(job)
    await world.outbox.join()
    event_id = world.gateway._txn_events[(f"{BOT}/ALCOVE", password_event.txn_id)]
    assert world.gateway.redacted == [(mgmt, event_id)]
    assert "they have signed in" in (await world.bodies(mgmt))[-1]
    assert await world.bot.conversations.repo.secrets() == []
    assert job not in world.timers.armed


async def test_a_message_from_the_client_triggers_the_check(world: World) -> None:
    _, client = await added_client(world)
    world.gateway.user_device_list[client] = [{"device_id": "PHONE", "last_seen_ts": 1}]
    await world.say("!dm-of-client:test.local", "hello", sender=client)
    assert len(world.gateway.redacted) == 1


async def test_the_password_is_redacted_after_24_hours_even_across_a_restart(
    world: World, build: Build
) -> None:
    mgmt, _ = await added_client(world)
    world.clock.advance(timedelta(hours=24, seconds=1).total_seconds())
    restarted = await build(world.gateway, world.clock)
    await restarted.bot.management.start()  # re-armed from the database
    (job,) = [j for j in restarted.timers.armed if j.startswith("secret:")]
    await restarted.timers.run(job)
    await restarted.outbox.join()
    assert len(world.gateway.redacted) == 1
    assert "24 hours have passed" in (await restarted.bodies(mgmt))[-1]


# --------------------------------------------------------------------------- reply policy


async def with_group(world: World) -> tuple[Client, Client]:
    repo = world.bot.conversations.repo
    jane = Client(f"@c-jane:{DOMAIN}", THERAPIST, "Jane Doe", "J.D.", None)
    jan = Client(f"@c-jan:{DOMAIN}", THERAPIST, "Jan Dole", "J.D.", None)
    await repo.add_client(jane, "$o1", 0)
    await repo.add_client(jan, "$o2", 0)
    await repo.add_room(Room(GROUP_ROOM, GROUP, THERAPIST, None, "Tuesday"), 0)
    await repo.add_member(GROUP_ROOM, jane.user_id, 0)
    return jane, jan


@pytest.mark.parametrize(
    ("command", "private_text"),
    [
        ("!client list", "Jane Doe (J.D.)"),
        ("!group add Ja", "matches several clients: Jan Dole"),
        ("!blast Ja hello", "matches several clients"),
        ("!session Ja now", "matches several clients"),
    ],
)
async def test_replies_naming_clients_go_to_the_management_room(
    world: World, command: str, private_text: str
) -> None:
    await with_group(world)
    mgmt = await world.mgmt()
    await world.say(GROUP_ROOM, command)
    in_group = await world.bodies(GROUP_ROOM)
    assert in_group == [f"I answered in your management room: https://matrix.to/#/{mgmt}"]
    assert any(private_text in b for b in await world.bodies(mgmt))

    # Typed in the management room itself: answered there, no pointer.
    await world.say(mgmt, command)
    assert await world.bodies(GROUP_ROOM) == in_group


async def test_group_answers_in_the_group_use_initials(world: World) -> None:
    jane, jan = await with_group(world)
    await world.say(GROUP_ROOM, f"!group add {jane.user_id}")
    await world.say(GROUP_ROOM, f"!group remove {jan.user_id}")
    await world.say(GROUP_ROOM, f"!group remove {jane.user_id}")
    said = await world.bodies(GROUP_ROOM)
    assert said[0] == "J.D. is already in this chat."
    assert said[1] == "J.D. is not in this chat."
    assert said[2].startswith(f"Remove J.D. ({jane.user_id}) from 'Tuesday'?")
    for body in said:
        assert "Jane" not in body and "Dole" not in body


# --------------------------------------------------------------------------- not adopted


def encrypted_invite(room_id: str, sender: str) -> dict[str, Any]:
    event = invite(room_id, sender, BOT)
    event["content"]["is_direct"] = True
    event["unsigned"] = {
        "invite_room_state": [
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "x"}}
        ]
    }
    return event


async def test_an_encrypted_room_is_told_once_and_not_adopted(world: World) -> None:
    owned = await world.mgmt()
    room = "!e2ee:test.local"
    await world.bot.on_invite(encrypted_invite(room, THERAPIST))
    for n in range(2):
        await world.bot.on_encrypted(
            {"type": "m.room.encrypted", "room_id": room, "sender": THERAPIST, "event_id": f"$x{n}"}
        )
    said = await world.bodies(room)
    assert len(said) == 1
    assert "cannot read this room" in said[0] and f"https://matrix.to/#/{owned}" in said[0]
    assert await world.mgmt() == owned
    assert counter(world.metrics, "alcove_encrypted_unreadable_total", source="invite") == 1
    assert counter(world.metrics, "alcove_encrypted_unreadable_total", source="message") == 2


async def test_encryption_found_in_the_room_state_after_joining(world: World) -> None:
    room = "!e2ee-late:test.local"
    world.gateway.state[(room, "m.room.encryption", "")] = {"algorithm": "x"}
    await world.bot.on_invite(invite(room, THERAPIST, BOT))  # no stripped state in the invite
    assert "cannot read this room" in (await world.bodies(room))[0]


async def test_a_clients_dm_is_answered_then_left(world: World) -> None:
    repo = world.bot.conversations.repo
    client = Client(f"@c-kim:{DOMAIN}", THERAPIST, "Kim Lee", "K.L.", None)
    await repo.add_client(client, "$o", 0)
    await repo.add_room(Room("!kim-1to1:test.local", "dm", THERAPIST, client.user_id, "Kim"), 0)
    await world.bot.on_invite(encrypted_invite("!kim-dm:test.local", client.user_id))
    said = await world.bodies("!kim-dm:test.local")
    assert len(said) == 1
    assert "I do not read this room" in said[0]
    assert "https://matrix.to/#/!kim-1to1:test.local" in said[0]
    assert (BOT, "!kim-dm:test.local") in world.gateway.left
    assert world.gateway.joined.index((BOT, "!kim-dm:test.local")) >= 0


async def test_strangers_are_declined_without_joining(world: World) -> None:
    await world.bot.on_invite(invite("!spam:test.local", "@who:elsewhere.org", BOT))
    assert (BOT, "!spam:test.local") in world.gateway.left
    assert (BOT, "!spam:test.local") not in world.gateway.joined
    assert await world.bodies("!spam:test.local") == []


async def test_every_private_reply_of_one_command_arrives(world: World) -> None:
    async def twice(ctx: CommandContext) -> None:
        await ctx.reply_private("first about Jane Doe")
        await ctx.reply_private("second about Jane Doe")

    world.bot.registry.add(CommandSpec("twice", twice, "test", roles=("therapist",)))
    mgmt = await world.mgmt()
    await world.say(GROUP_ROOM, "!twice")
    assert (await world.bodies(mgmt))[-2:] == ["first about Jane Doe", "second about Jane Doe"]
    assert all("Jane" not in b for b in await world.bodies(GROUP_ROOM))


@dataclass
class DownGateway(RecordingGateway):
    """A homeserver that cannot create rooms while ``down``."""

    down: bool = False

    async def create_room(self, body: dict[str, Any]) -> str:
        if self.down:
            raise TemporaryError("Service Unavailable", status=503)
        return await super().create_room(body)


async def test_staff_rooms_are_set_up_again_with_backoff_while_running(build: Build) -> None:
    """The homeserver fails at start-up: Alcove starts anyway and a timer sets the management
    and staff rooms up again (10 s, then 20 s ...) until it works — not only at the next
    start."""
    gateway = DownGateway(bot_user_id=BOT, existing_users={THERAPIST, CARE}, down=True)
    w = await build(gateway)
    await w.bot.start()
    assert gateway.rooms == {}
    assert w.timers.armed[STAFF_ROOMS_TIMER].when == w.clock.now() + timedelta(seconds=10)

    await w.timers.run(STAFF_ROOMS_TIMER)  # still down: again, later
    assert gateway.rooms == {}
    assert w.timers.armed[STAFF_ROOMS_TIMER].when == w.clock.now() + timedelta(seconds=20)

    gateway.down = False
    await w.timers.run(STAFF_ROOMS_TIMER)
    assert STAFF_ROOMS_TIMER not in w.timers.armed  # done: not armed again
    assert await w.mgmt(THERAPIST) and await w.mgmt(CARE)
    assert len(await w.bot.conversations.repo.rooms_of(None, TEAM)) == 1
    assert len(await w.bot.conversations.repo.rooms_of(THERAPIST, CARE_ROOM)) == 1
    assert w.timers.history.count(STAFF_ROOMS_TIMER) == 2
