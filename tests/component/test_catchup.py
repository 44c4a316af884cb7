"""Catch-up on a real database (SQLite and PostgreSQL): what it finds that the homeserver never
pushed is handed to the inbox; Alcove's own just-sent messages are not reported as a gap."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bridge.catchup import CatchUp
from bridge.clock import ms
from bridge.db.inbox_repo import InboxRepo
from bridge.db.outbox_repo import DeviceRepo, OutboxRepo
from bridge.inbox import Inbox
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from tests.support.builders import DOMAIN, make_config, message
from tests.support.fakes import FakeClock, RecordingGateway

THERAPIST = f"@therapist:{DOMAIN}"
CLIENT = f"@c-abc:{DOMAIN}"
ROOM = f"!dm:{DOMAIN}"
OTHER_ROOM = f"!dm2:{DOMAIN}"


async def test_own_resent_messages_are_not_reported_as_missed(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a kill, the outbox resends and the homeserver has not pushed those events back
    yet: catch-up finds them. Delivered ones (event id known), the bot's own, and one accepted
    by the homeserver whose "sent" mark is not written yet are Alcove's own; a client's message
    nobody pushed is the one real gap."""
    config = make_config(tmp_path)
    clock = FakeClock()
    gateway = RecordingGateway(bot_user_id=config.bot_user_id)
    outbox = Outbox(OutboxRepo(db), DeviceRepo(db), gateway, clock, Metrics())
    await outbox.start()
    handled: list[str] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["event_id"])

    inbox = Inbox(InboxRepo(db), handle, clock, Metrics(), config.inbox)
    await inbox.start()
    await inbox.accept("1", [message(ROOM, THERAPIST, "hello", "$before")])

    blast = {"msgtype": "m.text", "body": "Closed on Friday"}
    sent = [await outbox.send(f"blast:$o:{n}", THERAPIST, ROOM, blast) for n in range(3)]
    await outbox.send("reply:$x:1", config.bot_user_id, ROOM, {"msgtype": "m.notice", "body": "ok"})
    await outbox.join()
    delivered = [await outbox.wait(row.key) for row in sent]
    await outbox.stop()
    # Accepted by the homeserver (it is in the room) but Alcove died before marking it sent:
    unmarked = await outbox.send("blast:$o:3", THERAPIST, OTHER_ROOM, blast)
    assert unmarked.status == "pending"

    def event(event_id: str, sender: str, room: str) -> dict[str, Any]:
        return {**message(room, sender, "…", event_id), "origin_server_ts": ms(clock)}

    timeline = [event("$before", THERAPIST, ROOM)]
    timeline += [event(str(row.event_id), THERAPIST, ROOM) for row in delivered]
    timeline += [event("$bot-reply", config.bot_user_id, ROOM)]
    timeline += [event("$resent-unmarked", THERAPIST, OTHER_ROOM)]
    timeline += [event("$missed", CLIENT, ROOM)]

    async def recent(_limit: int) -> list[dict[str, Any]]:
        return timeline

    catchup = CatchUp(recent, inbox.repo.received_range, inbox, clock, own_events=outbox.own_events)
    with caplog.at_level(logging.INFO, logger="alcove.catchup"):
        assert await catchup.run_once() == 1
    await inbox.join()
    await inbox.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["Catch-up found 1 events the homeserver never delivered"]
    assert any("5 of Alcove's own messages" in r.getMessage() for r in caplog.records)
    # Every new event is still handled (the inbox dedupes the later push).
    assert sorted(handled) == sorted(e["event_id"] for e in timeline)


async def test_without_own_messages_every_new_event_is_a_gap(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    clock = FakeClock()
    outbox = Outbox(
        OutboxRepo(db), DeviceRepo(db), RecordingGateway(config.bot_user_id), clock, Metrics()
    )

    async def handle(event: dict[str, Any]) -> None:
        pass

    inbox = Inbox(InboxRepo(db), handle, clock, Metrics(), config.inbox)
    await inbox.accept("1", [message(ROOM, THERAPIST, "hello", "$before")])
    timeline = [
        {**message(ROOM, user, "…", f"$m{n}"), "origin_server_ts": ms(clock)}
        for n, user in enumerate([THERAPIST, CLIENT])
    ]

    async def recent(_limit: int) -> list[dict[str, Any]]:
        return timeline

    catchup = CatchUp(recent, inbox.repo.received_range, inbox, clock, own_events=outbox.own_events)
    with caplog.at_level(logging.INFO, logger="alcove.catchup"):
        assert await catchup.run_once() == 2
        assert await catchup.run_once() == 0  # offered again: nothing new
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["Catch-up found 2 events the homeserver never delivered"]


async def test_a_rooms_events_from_before_the_bot_was_invited_are_no_gap(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A therapist opens a management room: its creation events come before the bot's invite,
    and Synapse never pushes them (the appservice had no interest in the room yet)."""
    config = make_config(tmp_path)
    clock = FakeClock()
    bot = config.bot_user_id

    async def handle(event: dict[str, Any]) -> None:
        pass

    inbox = Inbox(InboxRepo(db), handle, clock, Metrics(), config.inbox)

    def state(event_id: str, etype: str, state_key: str, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": etype,
            "room_id": ROOM,
            "sender": THERAPIST,
            "state_key": state_key,
            "event_id": event_id,
            "origin_server_ts": ms(clock),
            "content": content,
        }

    invite = state("$invite", "m.room.member", bot, {"membership": "invite"})
    await inbox.accept("1", [invite])  # pushed: it names the bot
    timeline = [
        state("$create", "m.room.create", "", {"room_version": "12"}),
        state("$join", "m.room.member", THERAPIST, {"membership": "join"}),
        state("$rules", "m.room.join_rules", "", {"join_rule": "invite"}),
        invite,
        {**message(ROOM, THERAPIST, "!ping", "$missed"), "origin_server_ts": ms(clock)},
    ]

    async def recent(_limit: int) -> list[dict[str, Any]]:
        return timeline

    catchup = CatchUp(recent, inbox.repo.received_range, inbox, clock, bot_user_id=bot)
    with caplog.at_level(logging.INFO, logger="alcove.catchup"):
        assert await catchup.run_once() == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["Catch-up found 1 events the homeserver never delivered"]
