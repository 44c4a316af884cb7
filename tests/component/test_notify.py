"""Issue 12 on a real database with recording fakes: clients' email notifications
(`set_client_email`, `!client email`), `!restore` and its refusals, and staff's read receipts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bots.bot import Bot
from bots.features.read_receipts import SETTINGS, hide_staff_read_receipts
from bots.features.restore.service import (
    CONTENT_DELETED,
    EventLink,
    RestoreRefused,
    RestoreService,
    parse_event_link,
)
from bridge.config import Config
from bridge.matrix.gateway import PermanentError
from bridge.matrix.outbox import Outbox
from tests.support.builders import DOMAIN, make_config, message
from tests.support.fakes import FakeClock, RecordingGateway
from tests.support.harness import Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
CARE = f"@care:{DOMAIN}"
BOT = f"@alcove:{DOMAIN}"


@dataclass
class World:
    config: Config
    gateway: RecordingGateway
    outbox: Outbox
    bot: Bot

    async def bodies(self, room_id: str) -> list[str]:
        await self.outbox.join()
        return [str(s.content.get("body")) for s in self.gateway.sent if s.room_id == room_id]

    async def say(self, room_id: str, body: str, sender: str = THERAPIST) -> None:
        await self.bot.on_message(message(room_id, sender, body))
        await self.outbox.join()

    async def mgmt(self, user: str) -> str:
        room = await self.bot.management.room_for(user)
        assert room is not None
        return room


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def world(harnesses: Harnesses, tmp_path: Path) -> World:
    config = make_config(tmp_path)
    gateway = RecordingGateway(bot_user_id=config.bot_user_id, existing_users={THERAPIST, CARE})
    h = await harnesses.build(config, gateway, FakeClock())
    await h.bot.management.ensure_all()
    await h.outbox.join()
    return World(config, gateway, h.outbox, h.bot)


async def test_client_email_sets_3pid_and_pusher_and_the_welcome_says_how_to_sign_in(
    world: World,
) -> None:
    service, gw = world.bot.conversations, world.gateway
    new = await service.add_client(THERAPIST, "Jane Doe", "Jane@Example.org", "$add1")
    user = new.client.user_id
    assert new.client.email == "jane@example.org"
    assert gw.emails[user] == gw.email_pushers[user] == "jane@example.org"
    [welcome] = await world.bodies(new.room.room_id)
    assert f"your username is {user[1:].split(':')[0]}" in welcome and "Forgot password" in welcome
    assert [e.target for e in await world.bot.audit.entries("client.email_set")] == [user]

    mgmt = await world.mgmt(THERAPIST)
    await world.say(mgmt, f"!client email {user} nope")
    await world.say(mgmt, f"!client email {user} jd@example.net")
    await world.say(mgmt, "!client email Jane off")
    replies = await world.bodies(mgmt)
    assert "'nope' is not an email address. Usage: !client" in replies[-3]
    assert "J.D." in replies[-2] and "now go to jd@example.net" in replies[-2]
    assert "Jane Doe" not in replies[-2]
    assert replies[-1] == f"Email notifications for J.D. ({user}) are off."
    assert gw.emails[user] is None and gw.email_pushers[user] is None
    assert (await service.client(user)) is not None
    assert (await service.client(user)).email is None  # type: ignore[union-attr]
    assert len(await world.bot.audit.entries("client.email_set")) == 2
    audit = await world.bot.audit.entries("client.email_removed")
    assert [e.detail for e in audit] == [{}]  # never the address


async def test_an_address_of_another_account_is_refused(world: World) -> None:
    gw, mgmt = world.gateway, await world.mgmt(THERAPIST)
    gw.emails[CARE] = "carla@example.org"  # a staff member's own address
    await world.say(mgmt, "!client add Jo Bloggs --email Carla@example.org")
    new = await world.bot.conversations.add_client(THERAPIST, "Ann Other", None, "$add4")
    await world.say(mgmt, f"!client email {new.client.user_id} carla@example.org")
    replies = await world.bodies(mgmt)
    assert "carla@example.org already belongs to another account" in replies[-2]
    assert "carla@example.org already belongs to another account" in replies[-1]
    assert await world.bot.conversations.clients_of(THERAPIST) == [new.client]
    assert gw.emails == {CARE: "carla@example.org"}


async def test_a_client_without_email_gets_the_plain_welcome(world: World) -> None:
    new = await world.bot.conversations.add_client(THERAPIST, "Jo Bloggs", None, "$add2")
    assert new.client.user_id not in world.gateway.emails
    [welcome] = await world.bodies(new.room.room_id)
    assert "Forgot password" not in welcome


def test_event_links_as_element_copies_them() -> None:
    want = EventLink("!abc:example.org", "$ev1")
    assert parse_event_link("https://matrix.to/#/!abc:example.org/$ev1?via=example.org") == want
    assert parse_event_link("https://matrix.to/#/%21abc%3Aexample.org/%24ev1") == want
    assert parse_event_link("<https://matrix.to/#/!abc:example.org/$ev1>") == want
    assert parse_event_link("matrix:roomid/abc:example.org/e/ev1?via=x") == want
    assert parse_event_link("https://matrix.to/#/!v12roomid/$ev") == EventLink("!v12roomid", "$ev")
    for bad in ("yesterday", "https://matrix.to/#/@someone:example.org", "!abc $ev1"):
        assert parse_event_link(bad) is None


def deleted(sender: str, body: str, msgtype: str = "m.text") -> dict[str, object]:
    return {
        "type": "m.room.message",
        "sender": sender,
        "origin_server_ts": 1_796_000_000_000,  # 2026-11-30 00:53 UTC, the same in London in winter
        "content": {"msgtype": msgtype, "body": body},
        "unsigned": {"redacted_because": {"type": "m.room.redaction"}},
    }


async def test_restore_reposts_as_a_notice_and_refuses_with_reasons(world: World) -> None:
    gw = world.gateway
    new = await world.bot.conversations.add_client(THERAPIST, "Jane Doe", None, "$add3")
    room, client = new.room.room_id, new.client.user_id
    sessions = {"!session:test.local"}

    async def is_session(room_id: str) -> bool:
        return room_id in sessions

    service = RestoreService(
        world.config,
        gw,
        world.outbox,
        world.bot.conversations,
        world.bot.audit,
        FakeClock(),
        is_session,
    )
    gw.unredacted["$c"] = deleted(client, "private words")
    gw.unredacted["$t"] = deleted(THERAPIST, "therapist words")
    answer = await service.restore(CARE, EventLink(room, "$c"), "$cmd1")
    assert answer.startswith("Restored the message from J.D. at 2026-11-30 00:53")
    await service.restore(CARE, EventLink(room, "$t"), "$cmd2")
    await service.restore(CARE, EventLink(room, "$c"), "$cmd1")  # a replay sends nothing new
    bodies = await world.bodies(room)
    assert bodies[-2:] == [
        "Restored: message from J.D. at 2026-11-30 00:53\nprivate words",
        "Restored: message from Dr T at 2026-11-30 00:53\ntherapist words",
    ]
    entries = await world.bot.audit.entries("message.restored")
    assert (entries[0].actor, entries[0].target) == (CARE, client)
    assert entries[0].detail == {"event_id": "$c", "command": "$cmd1"}
    assert "words" not in str([e.detail for e in entries])

    not_deleted = deleted(client, "x")
    not_deleted["unsigned"] = {}
    gw.unredacted["$live"] = not_deleted
    gw.unredacted["$gone"] = PermanentError("erased", status=404, errcode=CONTENT_DELETED)
    gw.unredacted["$enc"] = {**deleted(client, "x"), "type": "m.room.encrypted"}
    gw.unredacted["$img"] = deleted(client, "photo.jpg", "m.image")
    mgmt = await world.mgmt(THERAPIST)
    refusals = {
        EventLink("!session:test.local", "$c"): "never restored",
        EventLink(mgmt, "$c"): "not in a conversation Alcove manages",
        EventLink("!unknown:test.local", "$c"): "not in a conversation Alcove manages",
        EventLink(room, "$live"): "not deleted",
        EventLink(room, "$gone"): "Too late",
        EventLink(room, "$missing"): "cannot find that message",
        EventLink(room, "$enc"): "encrypted",
        EventLink(room, "$img"): "Only text messages",
    }
    for link, reason in refusals.items():
        with pytest.raises(RestoreRefused, match=reason):
            await service.restore(CARE, link, f"$cmd-{link.event_id}")
    assert len(await world.bot.audit.entries("message.restored")) == 2


async def test_restore_is_for_care_and_admin_staff(world: World) -> None:
    mgmt = await world.mgmt(THERAPIST)
    await world.say(mgmt, "!restore https://matrix.to/#/!r:test.local/$e")
    [*_, refused] = await world.bodies(mgmt)
    assert "!restore" in refused and "care staff and admins" in refused
    care_room = await world.mgmt(CARE)
    await world.say(care_room, "!restore the one from yesterday", sender=CARE)
    [*_, usage] = await world.bodies(care_room)
    assert usage.startswith("That is not a link to a message. Usage: !restore <event link>")


async def test_staff_read_receipts_are_turned_off_once_keeping_other_settings(
    world: World,
) -> None:
    gw = world.gateway
    gw.account_data[(THERAPIST, SETTINGS)] = {"theme": "dark"}
    # The bot's start-up (Bot.start) already ran it once: run it again from a clean slate.
    gw.account_data.pop((CARE, SETTINGS), None)
    assert await hide_staff_read_receipts(world.config, gw) == [THERAPIST, CARE]
    assert gw.account_data[(THERAPIST, SETTINGS)] == {"theme": "dark", "sendReadReceipts": False}
    assert gw.account_data[(CARE, SETTINGS)] == {"sendReadReceipts": False}
    assert await hide_staff_read_receipts(world.config, gw) == []  # nothing to change
    gw.doublepuppet = False
    gw.account_data.pop((CARE, SETTINGS))
    assert await hide_staff_read_receipts(world.config, gw) == []  # cannot act as them
