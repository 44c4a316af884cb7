"""Blasts, the auto-responder and personal phrases on a real database (SQLite and PostgreSQL),
a real outbox and a recording gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bots.features.away.service import MARK, AwayService
from bots.features.blasts.service import AudienceError, BlastService
from bots.features.conversations.repo import DM, GROUP, Client, ConversationRepo, Room
from bots.features.conversations.service import ConversationService
from bots.features.phrases.commands import PhraseRepo
from bots.features.voice import AUTOMATED
from bridge.clock import ms
from bridge.config import Config
from bridge.db.outbox_repo import FAILED, SENT
from bridge.matrix.gateway import PermanentError
from bridge.matrix.outbox import Outbox, txn_id_for
from tests.support.builders import DOMAIN, make_config, message
from tests.support.fakes import FakeClock, RecordingGateway, Sent
from tests.support.harness import Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
OTHER_THERAPIST = f"@other:{DOMAIN}"
BOT = f"@alcove:{DOMAIN}"
SATURDAY_NOON = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
WEDNESDAY_NOON = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
BLAST = {"msgtype": "m.text", "body": "Group is cancelled this week"}
WORKING_HOURS = [
    {
        "user_id": THERAPIST,
        "displayname": "Dr T",
        "role": "therapist",
        "working_hours": {
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "start": "09:00",
            "end": "17:00",
        },
    },
    {"user_id": f"@care:{DOMAIN}", "displayname": "Carla Care", "role": "care"},
]


@dataclass
class FailingGateway(RecordingGateway):
    """A recording gateway that refuses sends into some rooms and room creation for some
    names, like a homeserver answering 403."""

    fail_rooms: set[str] = field(default_factory=set)
    fail_room_names: set[str] = field(default_factory=set)

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        txn_id: str,
        device_id: str | None,
    ) -> str:
        if room_id in self.fail_rooms:
            raise PermanentError(f"not allowed to send into {room_id}", status=403)
        return await super().send_event(sender, room_id, event_type, content, txn_id, device_id)

    async def create_room(self, body: dict[str, Any]) -> str:
        if body.get("name") in self.fail_room_names:
            raise PermanentError("room creation refused", status=403)
        return await super().create_room(body)


@dataclass
class World:
    db: Database
    config: Config
    gateway: FailingGateway
    outbox: Outbox
    clock: FakeClock
    repo: ConversationRepo
    conversations: ConversationService
    blasts: BlastService
    away: AwayService
    phrases: PhraseRepo
    encrypted: set[str]

    async def add(self, full_name: str, therapist: str = THERAPIST) -> tuple[Client, Room]:
        new = await self.conversations.add_client(therapist, full_name, None, f"$add-{full_name}")
        return new.client, new.room

    async def add_without_room(self, full_name: str, localpart: str) -> Client:
        client = Client(f"@{localpart}:{DOMAIN}", THERAPIST, full_name, "X.X.", None)
        return await self.repo.add_client(client, f"$bare-{localpart}", ms(self.clock))

    async def sent_to(self, room_id: str) -> list[Sent]:
        await self.outbox.join()
        return [s for s in self.gateway.sent if s.room_id == room_id]

    async def all_sent(self) -> list[Sent]:
        await self.outbox.join()
        return list(self.gateway.sent)


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(harnesses: Harnesses, tmp_path: Path) -> Build:
    async def make(
        *,
        config: Config | None = None,
        gateway: FailingGateway | None = None,
        clock: FakeClock | None = None,
    ) -> World:
        encrypted: set[str] = set()  # rooms the (fake) crypto says are end-to-end encrypted

        class Crypto:
            async def is_encrypted(self, room_id: str) -> bool:
                return room_id in encrypted

            async def has_devices(self, user_id: str) -> bool:
                return True

        config = config or make_config(tmp_path)
        gateway = gateway or FailingGateway(
            bot_user_id=config.bot_user_id, existing_users={THERAPIST}
        )
        h = await harnesses.build(
            config, gateway, clock or FakeClock(SATURDAY_NOON), crypto=Crypto()
        )
        return World(
            h.db,
            config,
            gateway,
            h.outbox,
            h.clock,
            h.bot.conversations.repo,
            h.bot.conversations,
            h.bot.blasts.service,
            h.bot.away,
            PhraseRepo(h.db),
            encrypted,
        )

    return make


@pytest.fixture
async def world(build: Build) -> World:
    return await build()


def ids(clients: list[Client]) -> list[str]:
    return sorted(c.user_id for c in clients)


# --------------------------------------------------------------------------- blast audience


async def test_audience_all_is_every_client_of_the_therapist(world: World) -> None:
    a, _ = await world.add("Anna Bell")
    c, _ = await world.add("Carl Dunn")
    await world.add("Olga Other", therapist=OTHER_THERAPIST)
    assert await world.blasts.audience(THERAPIST, "all") == [a, c]
    assert await world.blasts.audience(THERAPIST, "  ALL ") == [a, c]


async def test_audience_group_is_its_current_members(world: World) -> None:
    a, _ = await world.add("Anna Bell")
    c, _ = await world.add("Carl Dunn")
    e, _ = await world.add("Eve Fox")
    room = await world.conversations.create_group(THERAPIST, "Tuesday circle", [a, c, e], "$g")
    assert ids(await world.blasts.audience(THERAPIST, "group:Tuesday circle")) == ids([a, c, e])
    assert ids(await world.blasts.audience(THERAPIST, "group:tuesday CIRCLE")) == ids([a, c, e])

    await world.conversations.remove_from_group(room, c, THERAPIST)
    assert ids(await world.blasts.audience(THERAPIST, "group:Tuesday circle")) == ids([a, e])


async def test_audience_unknown_group(world: World) -> None:
    a, _ = await world.add("Anna Bell")
    await world.conversations.create_group(THERAPIST, "Tuesday circle", [a], "$g")
    with pytest.raises(AudienceError, match="no community chat called 'Monday'"):
        await world.blasts.audience(THERAPIST, "group:Monday")


async def test_audience_group_of_another_therapist_is_unknown(world: World) -> None:
    o, _ = await world.add("Olga Other", therapist=OTHER_THERAPIST)
    await world.conversations.create_group(OTHER_THERAPIST, "Theirs", [o], "$g")
    with pytest.raises(AudienceError, match="no community chat"):
        await world.blasts.audience(THERAPIST, "group:Theirs")


async def test_audience_group_with_nobody_left(world: World) -> None:
    a, _ = await world.add("Anna Bell")
    room = await world.conversations.create_group(THERAPIST, "Empty", [a], "$g")
    await world.conversations.remove_from_group(room, a, THERAPIST)
    with pytest.raises(AudienceError, match="no clients"):
        await world.blasts.audience(THERAPIST, "group:Empty")


async def test_audience_list_of_clients(world: World) -> None:
    a, _ = await world.add("Anna Bell")
    c, _ = await world.add("Carl Dunn")
    e, _ = await world.add("Eve Fox")
    assert await world.blasts.audience(THERAPIST, "Carl,Anna") == [c, a]
    assert await world.blasts.audience(THERAPIST, f"anna, {e.user_id}") == [a, e]
    # Repeats and empty items are dropped.
    assert await world.blasts.audience(THERAPIST, "anna,Anna Bell,,anna,") == [a]


async def test_audience_list_with_an_unknown_client(world: World) -> None:
    await world.add("Anna Bell")
    with pytest.raises(AudienceError, match="No client of yours matches 'Zed'"):
        await world.blasts.audience(THERAPIST, "Anna,Zed")


async def test_audience_list_never_reaches_another_therapists_client(world: World) -> None:
    await world.add("Anna Bell")
    o, _ = await world.add("Olga Other", therapist=OTHER_THERAPIST)
    for token in ("Olga", o.user_id):
        with pytest.raises(AudienceError):
            await world.blasts.audience(THERAPIST, f"Anna,{token}")


async def test_audience_list_with_an_ambiguous_name(world: World) -> None:
    await world.conversations.add_client(THERAPIST, "Sam Smith", None, "$s1")
    await world.conversations.add_client(THERAPIST, "Sam Stone", None, "$s2")
    with pytest.raises(AudienceError, match="several clients"):
        await world.blasts.audience(THERAPIST, "Sam")


@pytest.mark.parametrize("spec", ["all", "", "   ", ",", " , ,"])
async def test_empty_audience(world: World, spec: str) -> None:
    await world.add("Olga Other", therapist=OTHER_THERAPIST)
    with pytest.raises(AudienceError, match="That audience has no clients"):
        await world.blasts.audience(THERAPIST, spec)


# --------------------------------------------------------------------------- blast send


async def test_blast_sends_one_message_into_each_clients_own_room(world: World) -> None:
    a, room_a = await world.add("Anna Bell")
    c, room_c = await world.add("Carl Dunn")
    e, room_e = await world.add("Eve Fox")
    before = len(await world.all_sent())  # the welcomes

    result = await world.blasts.send(THERAPIST, [a, c, e], BLAST, "$blast1")

    assert ids(result.delivered) == ids([a, c, e])
    assert result.failed == []
    assert result.pending == []
    sent = (await world.all_sent())[before:]
    assert len(sent) == 3
    for client, room in ((a, room_a), (c, room_c), (e, room_e)):
        mine = [s for s in sent if s.room_id == room.room_id]
        assert len(mine) == 1
        msg = mine[0]
        assert msg.sender == THERAPIST
        assert msg.content["body"] == BLAST["body"]
        assert msg.content["msgtype"] == "m.text"
        assert msg.content[AUTOMATED] is True
        assert msg.txn_id == txn_id_for(THERAPIST, f"blast:$blast1:{client.user_id}")
        row = await world.outbox.repo.get(f"blast:$blast1:{client.user_id}")
        assert row is not None and row.status == SENT
    # Nobody else's name or ID appears in anyone's message.
    assert all(who.user_id not in repr(s.content) for s in sent for who in (a, c, e))


async def test_blast_into_an_encrypted_room_comes_from_the_bot(world: World) -> None:
    """Issue 11's trust model: in an end-to-end encrypted 1:1 the blast is the bot's, on the
    therapist's behalf; in a plain one it is the therapist's (double puppet)."""
    a, room_a = await world.add("Anna Bell")
    c, room_c = await world.add("Carl Dunn")
    world.encrypted.add(room_a.room_id)
    before = len(await world.all_sent())

    result = await world.blasts.send(THERAPIST, [a, c], BLAST, "$blast1")

    assert ids(result.delivered) == ids([a, c])
    sent = {s.room_id: s for s in (await world.all_sent())[before:]}
    assert sent[room_a.room_id].sender == world.config.bot_user_id
    assert sent[room_a.room_id].content["body"] == f"On behalf of Dr T: {BLAST['body']}"
    assert sent[room_c.room_id].sender == THERAPIST
    assert sent[room_c.room_id].content["body"] == BLAST["body"]


async def test_blast_opens_a_missing_room(world: World) -> None:
    a, room_a = await world.add("Anna Bell")
    bare = await world.add_without_room("Bo Bare", "c-bare")
    assert await world.repo.dm_of(THERAPIST, bare.user_id) is None
    rooms_before = set(world.gateway.rooms)

    result = await world.blasts.send(THERAPIST, [a, bare], BLAST, "$blast1")

    assert ids(result.delivered) == ids([a, bare])
    new_room = await world.repo.dm_of(THERAPIST, bare.user_id)
    assert new_room is not None
    assert set(world.gateway.rooms) - rooms_before == {new_room.room_id}
    assert new_room.kind == DM
    assert await world.repo.room_by_origin(f"$blast1:{bare.user_id}") == new_room
    assert (bare.user_id, new_room.room_id) in world.gateway.joined
    bodies = [s.content["body"] for s in await world.sent_to(new_room.room_id)]
    assert len(bodies) == 2
    assert "Bo" in bodies[0]  # the welcome first
    assert bodies[1] == BLAST["body"]
    assert [s.content["body"] for s in await world.sent_to(room_a.room_id)][1:] == [BLAST["body"]]


async def test_blast_again_with_the_same_origin_sends_nothing_new(world: World) -> None:
    a, _ = await world.add("Anna Bell")
    bare = await world.add_without_room("Bo Bare", "c-bare")
    first = await world.blasts.send(THERAPIST, [a, bare], BLAST, "$blast1")
    sent = len(await world.all_sent())
    rooms = dict(world.gateway.rooms)

    again = await world.blasts.send(THERAPIST, [a, bare], BLAST, "$blast1")

    assert ids(again.delivered) == ids(first.delivered) == ids([a, bare])
    assert again.failed == []
    assert len(await world.all_sent()) == sent
    assert world.gateway.rooms == rooms

    # A different blast (another command event) is a new message.
    await world.blasts.send(THERAPIST, [a], BLAST, "$blast2")
    assert len(await world.all_sent()) == sent + 1


async def test_a_refused_send_is_reported_and_the_others_are_delivered(world: World) -> None:
    a, _ = await world.add("Anna Bell")
    c, room_c = await world.add("Carl Dunn")
    e, room_e = await world.add("Eve Fox")
    welcomed = await world.sent_to(room_c.room_id)  # the welcome went out before the failures
    world.gateway.fail_rooms.add(room_c.room_id)

    result = await world.blasts.send(THERAPIST, [a, c, e], BLAST, "$blast1")

    assert ids(result.delivered) == ids([a, e])
    assert [client for client, _ in result.failed] == [c]
    assert f"not allowed to send into {room_c.room_id}" in result.failed[0][1]
    assert result.pending == []
    assert [s.content["body"] for s in await world.sent_to(room_e.room_id)][-1] == BLAST["body"]
    assert await world.sent_to(room_c.room_id) == welcomed
    assert BLAST["body"] not in [s.content["body"] for s in welcomed]
    row = await world.outbox.repo.get(f"blast:$blast1:{c.user_id}")
    assert row is not None and row.status == FAILED


async def test_a_client_whose_room_cannot_be_opened_is_reported(world: World) -> None:
    a, _ = await world.add("Anna Bell")
    bare = await world.add_without_room("Bo Bare", "c-bare")
    world.gateway.fail_room_names.add("Bo Bare")

    result = await world.blasts.send(THERAPIST, [bare, a], BLAST, "$blast1")

    assert result.delivered == [a]
    assert result.failed == [(bare, "no conversation room (PermanentError)")]
    assert await world.outbox.repo.get(f"blast:$blast1:{bare.user_id}") is None


async def test_blast_without_the_double_puppet_comes_from_the_bot(build: Build) -> None:
    world = await build(gateway=FailingGateway(doublepuppet=False, existing_users={THERAPIST}))
    a, room_a = await world.add("Anna Bell")
    result = await world.blasts.send(THERAPIST, [a], BLAST, "$blast1")
    assert result.delivered == [a]
    msg = (await world.sent_to(room_a.room_id))[-1]
    assert msg.sender == BOT
    assert msg.content["body"] == f"On behalf of Dr T: {BLAST['body']}"


# --------------------------------------------------------------------------- away: throttle


CLIENT = f"@c-jane:{DOMAIN}"
DM_ROOM = Room("!dm:test.local", DM, THERAPIST, CLIENT, "Jane Doe")


def from_client(body: str = "hello", room: Room = DM_ROOM) -> dict[str, Any]:
    assert room.client_id is not None
    return message(room.room_id, room.client_id, body)


def from_therapist(content: dict[str, Any] | None = None) -> dict[str, Any]:
    event = message(DM_ROOM.room_id, THERAPIST, "I'm back")
    if content is not None:
        event["content"] = content
    return event


async def replies(world: World, room: Room = DM_ROOM) -> list[Sent]:
    return await world.sent_to(room.room_id)


async def test_available_therapist_means_no_reply(world: World) -> None:
    await world.away.on_message(from_client(), DM_ROOM)
    assert await replies(world) == []
    assert await world.away.reply_text(THERAPIST) is None


async def test_away_replies_once_per_throttle_window(world: World) -> None:
    await world.away.set_away(THERAPIST, None, None)
    first = from_client("are you there?")
    await world.away.on_message(first, DM_ROOM)

    got = await replies(world)
    assert len(got) == 1
    reply = got[0]
    assert reply.sender == THERAPIST
    assert reply.content["msgtype"] == "m.notice"
    assert reply.content["body"] == world.config.away.message
    assert reply.content[MARK] is True
    assert reply.content[AUTOMATED] is True
    assert reply.txn_id == txn_id_for(THERAPIST, f"away:{first['event_id']}")

    for _ in range(3):
        await world.away.on_message(from_client(), DM_ROOM)
    world.clock.advance(world.config.away.throttle_hours * 3600)  # exactly the window
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 1

    world.clock.advance(1)
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 2
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 2


async def test_the_same_event_twice_replies_once(world: World) -> None:
    await world.away.set_away(THERAPIST, None, None)
    event = from_client()
    await world.away.on_message(event, DM_ROOM)
    world.clock.advance(world.config.away.throttle_hours * 3600 + 1)
    await world.away.on_message(event, DM_ROOM)  # the inbox re-running the same event
    assert len(await replies(world)) == 1


async def test_throttle_is_per_conversation(world: World) -> None:
    await world.away.set_away(THERAPIST, None, None)
    other = Room("!dm2:test.local", DM, THERAPIST, f"@c-mark:{DOMAIN}", "Mark Twain")
    await world.away.on_message(from_client(), DM_ROOM)
    await world.away.on_message(from_client(room=other), other)
    await world.away.on_message(from_client(room=other), other)
    assert len(await replies(world)) == 1
    assert len(await replies(world, other)) == 1


async def test_custom_away_message(world: World) -> None:
    await world.away.set_away(THERAPIST, None, "On leave until Monday")
    await world.away.on_message(from_client(), DM_ROOM)
    assert [s.content["body"] for s in await replies(world)] == ["On leave until Monday"]
    assert await world.away.manual(THERAPIST) == (None, "On leave until Monday")


async def test_away_until_a_date(world: World) -> None:
    today = SATURDAY_NOON.date()
    await world.away.set_away(THERAPIST, today, None)
    assert await world.away.reply_text(THERAPIST) == world.config.away.message
    await world.away.set_away(THERAPIST, today - timedelta(days=1), None)
    assert await world.away.reply_text(THERAPIST) is None
    await world.away.on_message(from_client(), DM_ROOM)
    assert await replies(world) == []
    assert await world.away.manual(THERAPIST) == (today - timedelta(days=1), None)


async def test_away_off(world: World) -> None:
    await world.away.set_away(THERAPIST, date(2026, 12, 1), "x")
    assert await world.away.clear(THERAPIST) is True
    assert await world.away.clear(THERAPIST) is False
    assert await world.away.manual(THERAPIST) is None
    await world.away.on_message(from_client(), DM_ROOM)
    assert await replies(world) == []


async def test_notices_are_never_answered(world: World) -> None:
    await world.away.set_away(THERAPIST, None, None)
    event = from_client()
    event["content"] = {"msgtype": "m.notice", "body": "I'm a bot"}
    await world.away.on_message(event, DM_ROOM)
    assert await replies(world) == []
    # The window was not used up by the notice.
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 1


async def test_auto_replies_are_never_answered(world: World) -> None:
    await world.away.set_away(THERAPIST, None, None)
    event = from_client()
    event["content"] = {"msgtype": "m.text", "body": "I'm away too", MARK: True}
    await world.away.on_message(event, DM_ROOM)
    assert await replies(world) == []
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 1


async def test_only_the_client_of_a_one_to_one_room_is_answered(world: World) -> None:
    await world.away.set_away(THERAPIST, None, None)
    await world.away.on_message(message(DM_ROOM.room_id, BOT, "hi"), DM_ROOM)
    await world.away.on_message(message(DM_ROOM.room_id, f"@care:{DOMAIN}", "hi"), DM_ROOM)
    group = Room("!group:test.local", GROUP, THERAPIST, None, "Tuesday circle")
    await world.away.on_message(message(group.room_id, CLIENT, "hi"), group)
    assert await world.all_sent() == []


async def test_the_therapists_own_message_resets_the_throttle(world: World) -> None:
    await world.away.set_away(THERAPIST, None, None)
    await world.away.on_message(from_client(), DM_ROOM)
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 1

    await world.away.on_message(from_therapist(), DM_ROOM)
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 2
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 2


async def test_the_reset_holds_across_a_restart(world: World) -> None:
    """Which rooms have been answered is read from the database by a new service (Alcove
    restarted after the auto-reply): the therapist's message still resets the window."""
    await world.away.set_away(THERAPIST, None, None)
    await world.away.on_message(from_client(), DM_ROOM)
    restarted = AwayService(
        world.config, world.away.db, world.away.outbox, world.away.voice, world.away.clock
    )
    await restarted.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 1  # still within the window
    await restarted.on_message(from_therapist(), DM_ROOM)
    await restarted.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 2


@pytest.mark.parametrize(
    "content",
    [
        {"msgtype": "m.text", "body": "Scheduled reminder", AUTOMATED: True},
        {"msgtype": "m.notice", "body": "I'm away", AUTOMATED: True, MARK: True},
        {"msgtype": "m.notice", "body": "I'm away", MARK: True},
    ],
)
async def test_an_automated_therapist_message_does_not_reset(
    world: World, content: dict[str, Any]
) -> None:
    await world.away.set_away(THERAPIST, None, None)
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 1
    # What the auto-reply itself looks like when it comes back from the homeserver:
    echo = (await replies(world))[0].content
    await world.away.on_message(from_therapist(dict(echo)), DM_ROOM)
    await world.away.on_message(from_therapist(content), DM_ROOM)
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 1


async def test_without_the_therapist_account_the_bot_replies_on_behalf(build: Build) -> None:
    world = await build(gateway=FailingGateway(existing_users=set()))
    await world.away.set_away(THERAPIST, None, None)
    await world.away.on_message(from_client(), DM_ROOM)
    got = await replies(world)
    assert [s.sender for s in got] == [BOT]
    assert got[0].content["body"] == f"On behalf of Dr T: {world.config.away.message}"
    assert got[0].content[MARK] is True


# --------------------------------------------------------------------------- away: working hours


async def test_outside_working_hours_the_after_hours_message_goes_out(
    build: Build, tmp_path: Path
) -> None:
    config = make_config(tmp_path, staff=WORKING_HOURS)
    world = await build(config=config, clock=FakeClock(SATURDAY_NOON))
    await world.away.on_message(from_client(), DM_ROOM)
    got = await replies(world)
    assert [s.content["body"] for s in got] == [config.away.after_hours_message]
    assert got[0].content[MARK] is True
    assert got[0].content["msgtype"] == "m.notice"
    await world.away.on_message(from_client(), DM_ROOM)
    assert len(await replies(world)) == 1


async def test_inside_working_hours_nothing_goes_out(build: Build, tmp_path: Path) -> None:
    config = make_config(tmp_path, staff=WORKING_HOURS)
    world = await build(config=config, clock=FakeClock(WEDNESDAY_NOON))
    await world.away.on_message(from_client(), DM_ROOM)
    assert await replies(world) == []
    assert await world.away.reply_text(THERAPIST) is None


@pytest.mark.parametrize(
    ("utc_time", "away"),
    [
        (datetime(2026, 7, 15, 8, 30, tzinfo=UTC), False),  # 09:30 BST: open
        (datetime(2026, 7, 15, 7, 59, tzinfo=UTC), True),  # 08:59 BST: not yet
        (datetime(2026, 7, 15, 15, 59, tzinfo=UTC), False),  # 16:59 BST
        (datetime(2026, 7, 15, 16, 0, tzinfo=UTC), True),  # 17:00 BST: closed
        (datetime(2026, 11, 18, 16, 30, tzinfo=UTC), False),  # 16:30 GMT
        (datetime(2026, 11, 18, 17, 0, tzinfo=UTC), True),  # 17:00 GMT
    ],
)
async def test_working_hours_are_in_the_practice_time_zone(
    build: Build, tmp_path: Path, utc_time: datetime, away: bool
) -> None:
    config = make_config(tmp_path, staff=WORKING_HOURS)
    world = await build(config=config, clock=FakeClock(utc_time))
    expected = config.away.after_hours_message if away else None
    assert await world.away.reply_text(THERAPIST) == expected


async def test_manual_away_wins_inside_working_hours(build: Build, tmp_path: Path) -> None:
    config = make_config(tmp_path, staff=WORKING_HOURS)
    world = await build(config=config, clock=FakeClock(WEDNESDAY_NOON))
    await world.away.set_away(THERAPIST, None, "At a conference")
    await world.away.on_message(from_client(), DM_ROOM)
    assert [s.content["body"] for s in await replies(world)] == ["At a conference"]


# --------------------------------------------------------------------------- phrases


async def test_phrase_repo_put_get_all_remove(world: World) -> None:
    repo = world.phrases
    assert await repo.get(THERAPIST, "hello") is None
    assert await repo.all(THERAPIST) == {}

    await repo.put(THERAPIST, "hello", "Hi {client_first_name}")
    await repo.put(THERAPIST, "bye", "Take care")
    await repo.put(OTHER_THERAPIST, "hello", "Theirs")
    assert await repo.get(THERAPIST, "hello") == "Hi {client_first_name}"
    assert await repo.get(OTHER_THERAPIST, "hello") == "Theirs"
    assert await repo.get(THERAPIST, "missing") is None
    assert list((await repo.all(THERAPIST)).items()) == [
        ("bye", "Take care"),
        ("hello", "Hi {client_first_name}"),
    ]

    await repo.put(THERAPIST, "hello", "Hello again")
    assert await repo.get(THERAPIST, "hello") == "Hello again"
    assert len(await repo.all(THERAPIST)) == 2

    assert await repo.remove(THERAPIST, "hello") is True
    assert await repo.remove(THERAPIST, "hello") is False
    assert await repo.remove(THERAPIST, "missing") is False
    assert await repo.get(THERAPIST, "hello") is None
    assert await repo.all(THERAPIST) == {"bye": "Take care"}
    assert await repo.all(OTHER_THERAPIST) == {"hello": "Theirs"}
