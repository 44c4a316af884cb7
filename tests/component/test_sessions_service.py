"""Text-only sessions on a real database (SQLite and PostgreSQL), a real outbox and a recording
gateway: booking, the reminder, opening, the warning, extending, the end and its purge (and the
retries when the purge fails), the re-arm at start-up, cancelling, consented transcripts, and
the inbox forgetting session-room events. Timers only record what is armed; a test runs them."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bots.features.conversations.repo import Client
from bots.features.conversations.service import ConversationService, NewClient
from bots.features.sessions.ending import ENDED_MARKER, ENDED_TOPIC
from bots.features.sessions.repo import (
    CANCELLED,
    ENDED,
    ENDING,
    OPEN,
    PREPARED,
    SCHEDULED,
    Session,
    SessionRepo,
)
from bots.features.sessions.service import ROOM_NAME, SessionService
from bots.features.sessions.transcript import Transcripts
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.db.inbox_repo import DONE
from bridge.db.outbox_repo import SENT
from bridge.matrix.gateway import TemporaryError
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from tests.support.builders import DOMAIN, make_config, message
from tests.support.fakes import (
    FakeClock,
    RecordingGateway,
    RecordingTimers,
    Sent,
    to_ms,
)
from tests.support.harness import BotHarness, Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
OTHER_THERAPIST = f"@other:{DOMAIN}"
BOT = f"@alcove:{DOMAIN}"
MGMT = "!management:test.local"
START = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # a Saturday, GMT (= UTC in London)
SECRET = "I have never told anyone about the lighthouse"
SECRET_2 = "my sister knows about the boat"
LOCAL_FILE = f"mxc://{DOMAIN}/abc"
REMOTE_FILE = "mxc://elsewhere/x"


@dataclass
class FlakyGateway(RecordingGateway):
    """A recording gateway whose room delete, delete status and upload can be told to fail."""

    delete_room_failures: int = 0
    """How many delete_room calls raise a TemporaryError before they succeed."""
    statuses: list[str] = field(default_factory=list)
    """What delete_status answers, one per poll, before it answers 'complete'."""
    failed_deletes: set[str] = field(default_factory=set)
    """Delete ids that failed for good: polling them always answers 'failed' (like Synapse)."""
    upload_failures: int = 0
    polls: list[str] = field(default_factory=list)
    purge_failures: int = 0
    """How many purge_history calls raise a TemporaryError before they succeed."""
    purge_statuses: list[str] = field(default_factory=list)
    """What purge_status answers, one per poll, before it answers 'complete'."""

    async def purge_history(self, room_id: str, up_to_event_id: str) -> str:
        if self.purge_failures:
            self.purge_failures -= 1
            raise TemporaryError("502 from the purge history admin API", status=502)
        return await super().purge_history(room_id, up_to_event_id)

    async def purge_status(self, purge_id: str) -> str:
        if self.purge_statuses:
            return self.purge_statuses.pop(0)
        return await super().purge_status(purge_id)

    async def delete_room(self, room_id: str) -> str:
        if self.delete_room_failures:
            self.delete_room_failures -= 1
            raise TemporaryError("502 from the room delete admin API", status=502)
        return await super().delete_room(room_id)

    async def delete_status(self, delete_id: str) -> str:
        self.polls.append(delete_id)
        if delete_id in self.failed_deletes:
            return "failed"
        if self.statuses:
            return self.statuses.pop(0)
        return await super().delete_status(delete_id)

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        if self.upload_failures:
            self.upload_failures -= 1
            raise TemporaryError("503 from the media repository", status=503)
        return await super().upload(data, filename, content_type)


@dataclass
class SlowCreateGateway(FlakyGateway):
    """Once ``slow`` is set, createRoom takes as long as a homeserver round trip: it waits
    (at most half a second) until a second createRoom is under way."""

    slow: bool = False
    creating: int = 0
    second: asyncio.Event = field(default_factory=asyncio.Event)

    async def create_room(self, body: dict[str, Any]) -> str:
        if self.slow:
            self.creating += 1
            if self.creating >= 2:
                self.second.set()
            try:
                await asyncio.wait_for(self.second.wait(), 0.5)
            except TimeoutError:
                pass
        return await super().create_room(body)


@dataclass
class World:
    db: Database
    config: Config
    gateway: FlakyGateway
    outbox: Outbox
    timers: RecordingTimers
    clock: FakeClock
    conversations: ConversationService
    audit: AuditLog
    metrics: Metrics
    service: SessionService
    transcripts: Transcripts
    forgotten_keys: list[str]  # rooms whose Megolm sessions the crypto was told to discard
    harness: BotHarness

    @property
    def repo(self) -> SessionRepo:
        return self.service.repo

    async def client(self, full_name: str, therapist: str = THERAPIST) -> NewClient:
        return await self.conversations.add_client(
            therapist, full_name, None, f"$add:{therapist}:{full_name}"
        )

    async def book(
        self,
        clients: list[Client],
        start: datetime,
        minutes: int = 50,
        origin: str = "$book1",
        therapist: str = THERAPIST,
    ) -> Session:
        return await self.service.book(therapist, clients, start, minutes, origin)

    async def get(self, session_id: int) -> Session:
        session = await self.repo.get(session_id)
        assert session is not None
        return session

    async def sent_to(self, room_id: str) -> list[Sent]:
        await self.outbox.join()
        return [s for s in self.gateway.sent if s.room_id == room_id]

    async def bodies(self, room_id: str) -> list[str]:
        return [str(s.content.get("body")) for s in await self.sent_to(room_id)]

    async def audit_rows(self) -> list[str]:
        """Every audit row as stored, all columns, for content checks."""
        rows = await self.db.fetch("SELECT * FROM audit ORDER BY id")
        return [json.dumps({k: row[k] for k in row.keys()}, default=str) for row in rows]

    async def purge_columns(self, session_id: int) -> dict[str, Any]:
        row = await self.db.fetchrow(
            "SELECT purge_error, messages_purged, files_purged FROM text_session WHERE id = $1",
            session_id,
        )
        assert row is not None
        return {k: row[k] for k in ("purge_error", "messages_purged", "files_purged")}

    def advance_to(self, when: datetime) -> None:
        self.clock.advance((when - self.clock.now()).total_seconds())

    def purge_failures(self) -> float:
        value = self.metrics.registry.get_sample_value("alcove_session_purge_failures_total")
        assert value is not None
        return value


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(harnesses: Harnesses, tmp_path: Path) -> Build:
    """Worlds built in one test share the database (and, when passed in, the gateway and the
    clock), like Alcove restarted: the bot as Alcove wires it (tests/support/harness.py), its
    session service under test; ``with_inbox`` runs the inbox → dispatcher → bot in front."""

    async def make(
        *,
        gateway: FlakyGateway | None = None,
        clock: FakeClock | None = None,
        with_inbox: bool = False,
    ) -> World:
        config = make_config(
            tmp_path, sessions={"purge_poll_seconds": 0.05, "purge_retry_seconds": 0.1}
        )
        gateway = gateway or FlakyGateway(
            bot_user_id=config.bot_user_id, existing_users={THERAPIST}
        )
        timers = RecordingTimers()
        forgotten_keys: list[str] = []

        async def forget_keys(room_id: str) -> None:
            forgotten_keys.append(room_id)

        h = await harnesses.build(
            config,
            gateway,
            clock or FakeClock(START),
            timers=timers,
            forget_room_keys=forget_keys,
            with_inbox=with_inbox,
        )
        h.bot.conversations.spaces = None  # rooms only: spaces are test_organise.py's
        service = h.bot.sessions
        return World(
            h.db,
            config,
            gateway,
            h.outbox,
            timers,
            h.clock,
            h.bot.conversations,
            h.bot.audit,
            h.metrics,
            service,
            Transcripts(service),
            forgotten_keys,
            h,
        )

    return make


@pytest.fixture
async def world(build: Build) -> World:
    w = await build()
    await w.conversations.repo.set_management_room(THERAPIST, MGMT)
    w.gateway.memberships[MGMT] = {THERAPIST: "join", BOT: "join"}
    return w


async def two_clients(world: World) -> tuple[NewClient, NewClient]:
    return await world.client("Jane Doe"), await world.client("Sam Roe")


async def open_session(world: World, minutes: int = 50) -> tuple[Session, NewClient, NewClient]:
    jane, sam = await two_clients(world)
    session = await world.book([jane.client, sam.client], START, minutes)
    assert session.status == OPEN and session.room_id is not None
    return session, jane, sam


def seed_room(world: World, room_id: str, jane: str, sam: str) -> None:
    """What the homeserver holds for the session room (oldest first)."""
    base = to_ms(START)
    world.gateway.events[room_id] = [
        {"type": "m.room.create", "sender": BOT, "origin_server_ts": base, "content": {}},
        {
            "type": "m.room.member",
            "sender": jane,
            "state_key": jane,
            "origin_server_ts": base + 1,
            "content": {"membership": "join", "displayname": "J.D."},
        },
        {
            "type": "m.room.message",
            "sender": BOT,
            "origin_server_ts": base + 2,
            "content": {"msgtype": "m.notice", "body": "The session is open"},
        },
        {
            "type": "m.room.message",
            "sender": jane,
            "origin_server_ts": base + 5 * 60_000,
            "content": {"msgtype": "m.text", "body": SECRET},
        },
        {
            "type": "m.room.message",
            "sender": THERAPIST,
            "origin_server_ts": base + 7 * 60_000,
            "content": {"msgtype": "m.text", "body": "Thank you for saying that"},
        },
        {
            "type": "m.room.message",
            "sender": sam,
            "origin_server_ts": base + 9 * 60_000 + 30_000,
            "content": {
                "msgtype": "m.file",
                "body": "worksheet.pdf",
                "url": LOCAL_FILE,
                "info": {"mimetype": "application/pdf"},
            },
        },
        {
            "type": "m.room.message",
            "sender": sam,
            "origin_server_ts": base + 61 * 60_000,
            "content": {"msgtype": "m.image", "body": "boat.png", "url": REMOTE_FILE},
        },
        {
            "type": "m.room.message",
            "sender": sam,
            "origin_server_ts": base + 62 * 60_000,
            "content": {"msgtype": "m.text", "body": SECRET_2},
        },
    ]


# --------------------------------------------------------------------------- booking


async def test_book_in_the_future_schedules_without_a_room(world: World) -> None:
    jane, sam = await two_clients(world)
    rooms_before = dict(world.gateway.rooms)
    start = START + timedelta(hours=2)

    session = await world.book([jane.client, sam.client], start, 45)

    assert session.status == SCHEDULED
    assert session.room_id is None
    assert session.therapist_id == THERAPIST
    assert session.clients == (jane.client.user_id, sam.client.user_id)
    assert session.start_at == to_ms(start)
    assert session.end_at == to_ms(start + timedelta(minutes=45))
    assert not session.reminded and not session.warned
    assert world.gateway.rooms == rooms_before  # no session room yet
    assert world.service.room_ids == set()

    for new in (jane, sam):
        key = f"session-booked:{session.id}:{new.client.user_id}"
        row = await world.outbox.repo.get(key)
        assert row is not None and row.room_id == new.room.room_id
        bodies = await world.bodies(new.room.room_id)
        booked = [b for b in bodies if "text-only session" in b]
        assert len(booked) == 1
        assert "Sat 2026-11-21 14:00 GMT" in booked[0] and "45 minutes" in booked[0]
        assert "deleted" in booked[0]

    armed = world.timers.armed
    sid = session.id
    assert set(armed) == {f"session:{sid}:{s}" for s in ("remind", "open", "warn", "end")}
    assert armed[f"session:{sid}:remind"].when == start - timedelta(minutes=10)
    assert armed[f"session:{sid}:remind"].callback == world.service.remind
    assert armed[f"session:{sid}:open"].when == start
    assert armed[f"session:{sid}:open"].callback == world.service.open
    assert armed[f"session:{sid}:warn"].when == start + timedelta(minutes=40)
    assert armed[f"session:{sid}:warn"].callback == world.service.warn
    assert armed[f"session:{sid}:end"].when == start + timedelta(minutes=45)
    assert armed[f"session:{sid}:end"].callback == world.service.end_by_timer
    assert all(a.args == (sid,) for a in armed.values())

    booked_audit = await world.audit.entries("session.booked")
    assert [(e.actor, e.detail) for e in booked_audit] == [
        (THERAPIST, {"session": sid, "clients": 2, "minutes": 45})
    ]


async def test_book_again_with_the_same_event_books_once(world: World) -> None:
    jane, sam = await two_clients(world)
    start = START + timedelta(hours=2)
    first = await world.book([jane.client, sam.client], start, 45, origin="$same")
    again = await world.book([jane.client], start + timedelta(hours=1), 30, origin="$same")
    assert again == first
    rows = await world.db.fetch("SELECT id FROM text_session")
    assert len(rows) == 1
    booked = [b for b in await world.bodies(jane.room.room_id) if "is booked" in b]
    assert len(booked) == 1 and "14:00" in booked[0]
    assert len([j for j in world.timers.armed if j.startswith(f"session:{first.id}:")]) == 4


async def test_book_now_opens_a_private_room_at_once(world: World) -> None:
    jane, sam = await two_clients(world)
    gw = world.gateway

    session = await world.book([jane.client, sam.client], START, 50)

    assert session.status == OPEN
    room = session.room_id
    assert room is not None
    assert room in world.service.room_ids
    body = gw.rooms[room]
    assert body["name"] == ROOM_NAME == "Text-only session"
    assert body["is_direct"] is False
    assert body["creation_content"] == {"m.federate": False}
    history = [s for s in body["initial_state"] if s["type"] == "m.room.history_visibility"]
    assert history == [
        {
            "type": "m.room.history_visibility",
            "state_key": "",
            "content": {"history_visibility": "joined"},
        }
    ]
    assert "deleted" in body["topic"] and "12:50" in body["topic"]
    dumped = json.dumps(body)
    for name in ("Jane", "Doe", "Sam", "Roe"):
        assert name not in dumped
    assert set(body["invite"]) == {THERAPIST, jane.client.user_id, sam.client.user_id}

    for user in (THERAPIST, jane.client.user_id, sam.client.user_id):
        assert (room, user) in gw.invited
        assert (user, room) in gw.joined  # the therapist through the double puppet
    assert gw.members[room] == {BOT, THERAPIST, jane.client.user_id, sam.client.user_id}

    opening = await world.sent_to(room)
    assert len(opening) == 1
    assert opening[0].sender == BOT
    assert opening[0].content["msgtype"] == "m.notice"
    assert "open until Sat 2026-11-21 12:50 GMT" in opening[0].content["body"]
    assert "deleted" in opening[0].content["body"]
    row = await world.outbox.repo.get(f"session-open:{session.id}")
    assert row is not None and row.status == SENT

    stored = await world.get(session.id)
    assert stored.reminded is True
    # No remind or open timer for an open session; warn and end are armed.
    assert set(world.timers.armed) == {f"session:{session.id}:warn", f"session:{session.id}:end"}
    assert world.timers.armed[f"session:{session.id}:end"].when == START + timedelta(minutes=50)
    created = await world.audit.entries("room.created")
    assert [(e.room_id, e.detail) for e in created if e.room_id == room] == [
        (room, {"kind": "session"})
    ]


# --------------------------------------------------------------------------- the reminder


async def test_remind_prepares_an_empty_room_and_sends_links(world: World) -> None:
    jane, sam = await two_clients(world)
    start = START + timedelta(hours=1)
    session = await world.book([jane.client, sam.client], start, 50)
    world.advance_to(start - timedelta(minutes=10))

    await world.timers.run(f"session:{session.id}:remind")

    stored = await world.get(session.id)
    assert stored.status == PREPARED
    assert stored.reminded is True
    room = stored.room_id
    assert room is not None
    assert room in world.service.room_ids
    assert world.gateway.rooms[room]["invite"] == []
    assert world.gateway.rooms[room]["name"] == ROOM_NAME
    assert not any(r == room for r, _ in world.gateway.invited)
    link = f"https://matrix.to/#/{room}"
    for new in (jane, sam):
        reminders = [b for b in await world.bodies(new.room.room_id) if link in b]
        assert len(reminders) == 1
        assert "13:00" in reminders[0]
        row = await world.outbox.repo.get(f"session-remind:{session.id}:{new.client.user_id}")
        assert row is not None and row.room_id == new.room.room_id
    assert [b for b in await world.bodies(MGMT) if link in b] != []
    assert await world.sent_to(room) == []  # nothing said in the empty room

    # A second reminder (a re-run timer) does nothing.
    sent_before = len(world.gateway.sent)
    await world.service.remind(session.id)
    await world.outbox.join()
    assert len(world.gateway.sent) == sent_before
    assert len(world.gateway.rooms) == 3  # two 1:1 rooms and one session room

    # Opening the prepared room invites and joins everyone into that same room.
    world.advance_to(start)
    await world.timers.run(f"session:{session.id}:open")
    opened = await world.get(session.id)
    assert opened.status == OPEN and opened.room_id == room
    assert len(world.gateway.rooms) == 3
    for user in (THERAPIST, jane.client.user_id, sam.client.user_id):
        assert (room, user) in world.gateway.invited
        assert (user, room) in world.gateway.joined


# --------------------------------------------------------------------------- warn, extend


async def test_warn_once(world: World) -> None:
    session, _, _ = await open_session(world)
    room = session.room_id
    assert room is not None

    await world.timers.run(f"session:{session.id}:warn")
    await world.service.warn(session.id)  # a repeated timer

    warnings = [b for b in await world.bodies(room) if "minutes left" in b]
    assert len(warnings) == 1
    assert warnings[0].startswith("5 minutes left") and "12:50" in warnings[0]
    assert (await world.get(session.id)).warned is True


async def test_extend_moves_the_end_and_rearms(world: World) -> None:
    session, _, _ = await open_session(world)
    room = session.room_id
    assert room is not None
    await world.service.warn(session.id)

    extended = await world.service.extend(session, 15)

    assert extended.end_at == session.end_at + 15 * 60_000
    assert extended.warned is False
    assert (await world.get(session.id)).end_at == extended.end_at
    end = world.timers.armed[f"session:{session.id}:end"]
    assert end.when == START + timedelta(minutes=65)
    assert end.callback == world.service.end_by_timer
    assert world.timers.armed[f"session:{session.id}:warn"].when == START + timedelta(minutes=60)
    entries = await world.audit.entries("session.extended")
    assert [(e.room_id, e.detail) for e in entries] == [
        (room, {"session": session.id, "minutes": 15})
    ]

    # The new end gets its own warning.
    await world.timers.run(f"session:{session.id}:warn")
    warnings = [b for b in await world.bodies(room) if "minutes left" in b]
    assert len(warnings) == 2
    assert "13:05" in warnings[1]


# --------------------------------------------------------------------------- the end


async def test_end_purges_the_room_and_writes_a_receipt(world: World) -> None:
    session, jane, sam = await open_session(world)
    room = session.room_id
    assert room is not None
    gw = world.gateway
    seed_room(world, room, jane.client.user_id, sam.client.user_id)
    jane_member = (room, "m.room.member", jane.client.user_id)
    gw.state[jane_member] = {"membership": "join", "displayname": "J.D."}
    world.advance_to(START + timedelta(minutes=50))

    await world.timers.run(f"session:{session.id}:end")

    # Only the bot could post once the end began.
    locked = gw.state[(room, "m.room.power_levels", "")]
    assert locked["events_default"] == 100 and locked["users"] == {} and locked["events"] == {}
    # Jane re-sent her join (a marker, same name) before the kick: a device of hers syncing
    # from a token older than the purge still finds a join, then the leave.
    assert gw.state[jane_member] == {
        "membership": "join",
        "displayname": "J.D.",
        ENDED_MARKER: session.id,
    }
    closing = [b for b in await world.bodies(room) if "has ended" in b]
    assert len(closing) == 1 and "deleted" in closing[0]
    row = await world.outbox.repo.get(f"session-close:{session.id}")
    assert row is not None and row.status == SENT

    everyone = (jane.client.user_id, sam.client.user_id, THERAPIST)
    assert sorted(gw.kicked) == sorted((room, u) for u in everyone)
    # Nobody forgets the room: that would hide the leave from an offline device's next sync.
    assert gw.forgotten == []
    # The bot's crypto discards the room's Megolm sessions (issue 11): after the end not even
    # Alcove could decrypt what a backup of the homeserver's database still holds.
    assert world.forgotten_keys == [room]
    # The purge point is the bot's content-free topic; everything before it is purged.
    assert gw.state[(room, "m.room.topic", "")] == {"topic": ENDED_TOPIC}
    assert [r for r, _ in gw.purged_history] == [room]
    assert [e for e in gw.events[room] if e["type"] == "m.room.message"] == []
    assert gw.deleted_media == [LOCAL_FILE]  # never the remote one
    assert REMOTE_FILE not in gw.deleted_media
    # The room (only state by now) goes from its own timer, armed for now: no member device
    # is waiting for the leave.
    assert gw.deleted_rooms == []
    room_timer = world.timers.armed[f"session:{session.id}:room"]
    assert room_timer.when == world.clock.now() and room_timer.args == (session.id, True)
    await world.timers.run(f"session:{session.id}:room")
    assert gw.deleted_rooms == [room]

    stored = await world.get(session.id)
    assert stored.status == ENDED
    assert stored.delete_id == "delete-1"
    assert stored.left_at == to_ms(START + timedelta(minutes=50))
    assert stored.room_deleted_at == stored.left_at
    assert await world.purge_columns(session.id) == {
        "purge_error": None,
        "messages_purged": 6,  # every m.room.message, notices and files included
        "files_purged": 1,
    }
    assert room not in world.service.room_ids
    assert await world.repo.session_rooms() == set()

    for new in (jane, sam):
        ended = [b for b in await world.bodies(new.room.room_id) if "has ended" in b]
        assert ended == ["Your text-only session has ended; its messages have been deleted."]
        key = f"session-ended:{session.id}:{new.client.user_id}"
        out = await world.outbox.repo.get(key)
        assert out is not None and out.room_id == new.room.room_id

    receipts = await world.audit.entries("session.purged")
    assert len(receipts) == 1
    receipt = receipts[0]
    assert receipt.actor == BOT
    assert receipt.target == THERAPIST
    assert receipt.room_id == room
    assert receipt.detail == {
        "session": session.id,
        "start": session.start_at,
        "end": session.end_at,
        "reason": "time is up",
        "messages_purged": 6,
        "files_purged": 1,
        "purge_id": "purge-1",
        "status": "complete",
    }
    for text in await world.audit_rows():
        for secret in (SECRET, SECRET_2, "worksheet.pdf", "boat.png", "Thank you for saying"):
            assert secret not in text
    # Every timer of the session is gone.
    assert not [j for j in world.timers.armed if j.startswith(f"session:{session.id}:")]

    # Ending again (a late timer) does nothing.
    await world.service.end(session.id, "again")
    assert gw.deleted_rooms == [room]
    assert len(await world.audit.entries("session.purged")) == 1


async def test_end_of_a_session_that_never_got_a_room(world: World) -> None:
    jane, _ = await two_clients(world)
    session = await world.book([jane.client], START + timedelta(hours=1), 30)

    await world.service.end(session.id, "test")

    assert (await world.get(session.id)).status == ENDED
    assert world.gateway.deleted_rooms == []
    receipts = await world.audit.entries("session.purged")
    assert len(receipts) == 1
    assert receipts[0].detail["status"] == "nothing created"
    assert receipts[0].detail["purge_id"] is None


async def test_the_room_waits_until_every_member_device_saw_the_leave(world: World) -> None:
    """Issue 9 item 7: until each member device has been seen after the leave, the room —
    state only by then — stays, so an offline device's next /sync still carries the leave."""
    session, jane, sam = await open_session(world)
    room = session.room_id
    gw = world.gateway
    end = START + timedelta(minutes=50)
    before_end = to_ms(end) - 60_000
    gw.user_device_list = {
        jane.client.user_id: [
            {"device_id": "JANEPHONE", "last_seen_ts": before_end},
            {"device_id": "ALCOVE", "last_seen_ts": None},  # Alcove's acting device: ignored
        ],
        THERAPIST: [{"device_id": "DESK", "last_seen_ts": before_end}],
    }
    world.advance_to(end)
    await world.timers.run(f"session:{session.id}:end")

    stored = await world.get(session.id)
    assert stored.status == ENDED and stored.left_at == to_ms(end)
    assert gw.purged_history and gw.deleted_rooms == [] and gw.forgotten == []
    await world.timers.run(f"session:{session.id}:room")  # the first check, at the end
    assert gw.deleted_rooms == []
    check = world.timers.armed[f"session:{session.id}:room"]
    assert check.when == end + timedelta(seconds=world.config.sessions.room_check_seconds)
    assert len(await world.audit.entries("session.purged")) == 1

    # The therapist's desk syncs; Jane's phone is still offline.
    world.advance_to(check.when)
    gw.user_device_list[THERAPIST] = [{"device_id": "DESK", "last_seen_ts": to_ms(end) + 5}]
    await world.timers.run(f"session:{session.id}:room")
    assert gw.deleted_rooms == []
    assert f"session:{session.id}:room" in world.timers.armed

    # Jane's phone comes back: its /sync from the old token got the leave.
    gw.user_device_list[jane.client.user_id][0]["last_seen_ts"] = to_ms(check.when) + 1
    world.clock.advance(world.config.sessions.room_check_seconds)
    await world.timers.run(f"session:{session.id}:room")
    assert gw.deleted_rooms == [room]
    stored = await world.get(session.id)
    assert stored.room_deleted_at == to_ms(world.clock.now())
    deleted = await world.audit.entries("session.room_deleted")
    assert len(deleted) == 1 and deleted[0].detail["after"] == "every device saw the leave"
    assert sam.client.user_id  # Sam has no device at all: nothing to wait for


async def test_a_room_delete_begun_by_an_older_alcove_is_finished(world: World) -> None:
    session, _, _ = await open_session(world)
    room = session.room_id
    await world.repo.update(session.id, status=ENDING, delete_id="delete-old")
    state_before = dict(world.gateway.state)

    await world.service.end(session.id, "ended while Alcove was not running")

    stored = await world.get(session.id)
    assert stored.status == ENDED and stored.room_deleted_at is not None
    assert world.gateway.deleted_rooms == []  # only polled: it was asked for already
    assert world.gateway.purged_history == [] and world.gateway.state == state_before
    assert room not in world.service.room_ids
    assert len(await world.audit.entries("session.purged")) == 1


async def test_a_member_alcove_cannot_act_as_is_kicked_without_the_marker(world: World) -> None:
    session, jane, _ = await open_session(world)
    room = session.room_id
    assert room is not None
    gw = world.gateway
    gw.doublepuppet = False  # the therapist's join cannot be re-sent
    therapist_member = (room, "m.room.member", THERAPIST)
    gw.state[therapist_member] = {"membership": "join", "displayname": "Dr T"}
    gw.state[(room, "m.room.member", jane.client.user_id)] = {"membership": "join"}

    await world.service.end(session.id, "test")

    assert gw.state[therapist_member] == {"membership": "join", "displayname": "Dr T"}
    assert gw.state[(room, "m.room.member", jane.client.user_id)][ENDED_MARKER] == session.id
    assert (room, THERAPIST) in gw.kicked and (room, jane.client.user_id) in gw.kicked


async def test_a_device_that_never_comes_back_waits_only_until_the_bound(world: World) -> None:
    session, jane, _ = await open_session(world)
    gw = world.gateway
    gw.user_device_list = {jane.client.user_id: [{"device_id": "OLD", "last_seen_ts": None}]}
    end = START + timedelta(minutes=50)
    world.advance_to(end)
    await world.timers.run(f"session:{session.id}:end")
    keep = timedelta(days=world.config.sessions.room_keep_days)
    for _ in range(3):
        assert gw.deleted_rooms == []
        world.clock.advance(keep.total_seconds() / 3)
        await world.timers.run(f"session:{session.id}:room")
    assert gw.deleted_rooms == [session.room_id]
    deleted = await world.audit.entries("session.room_deleted")
    assert deleted[0].detail["after"] == "the bound"


async def test_start_rearms_the_rooms_awaiting_deletion(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST})
    clock = FakeClock(START)
    before = await build(gateway=gateway, clock=clock)
    jane = await before.client("Jane Doe")
    session = await before.book([jane.client], START, 30)
    gateway.user_device_list = {jane.client.user_id: [{"device_id": "P", "last_seen_ts": 1}]}
    await before.service.end(session.id, "test")
    assert gateway.deleted_rooms == []

    after = await build(gateway=gateway, clock=clock)
    await after.service.start()
    assert after.timers.armed[f"session:{session.id}:room"].when == clock.now()
    gateway.user_device_list = {}
    await after.timers.run(f"session:{session.id}:room")
    assert gateway.deleted_rooms == [session.room_id]


async def test_a_file_is_deleted_even_when_its_message_was_redacted(world: World) -> None:
    """Issue 10 item 7: the media URI is recorded as the event arrives; a redaction strips it
    from the content the end scans, and a file posted just before the end is still found."""
    session, jane, _ = await open_session(world)
    room = session.room_id
    assert room is not None
    hidden = f"mxc://{DOMAIN}/redacted-later"
    thumb = f"mxc://{DOMAIN}/thumb"
    posted = {
        "type": "m.room.message",
        "room_id": room,
        "sender": jane.client.user_id,
        "event_id": "$file",
        "origin_server_ts": to_ms(START) + 1000,
        "content": {
            "msgtype": "m.image",
            "body": "photo.png",
            "url": hidden,
            "info": {"thumbnail_url": thumb},
        },
    }
    await world.service.on_event(posted)
    await world.service.on_event(  # not a session room: not recorded
        {**posted, "room_id": jane.room.room_id, "content": {"url": f"mxc://{DOMAIN}/x"}}
    )
    # What the homeserver holds at the end: the redacted event, its content gone.
    world.gateway.events[room] = [{**posted, "content": {}}]
    await world.service.end(session.id, "test")

    assert sorted(world.gateway.deleted_media) == sorted([hidden, thumb])
    assert await world.purge_columns(session.id) == {
        "purge_error": None,
        "messages_purged": 1,
        "files_purged": 2,
    }


# --------------------------------------------------------------------------- purge failures


async def test_a_failed_history_purge_is_reported_and_retried(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST}, purge_failures=1)
    world = await build(gateway=gateway)
    await world.conversations.repo.set_management_room(THERAPIST, MGMT)
    session, jane, sam = await open_session(world)
    room = session.room_id
    assert room is not None
    seed_room(world, room, jane.client.user_id, sam.client.user_id)

    await world.service.end(session.id, "ended by the therapist")

    stored = await world.get(session.id)
    assert stored.status == ENDING
    assert stored.purge_attempts == 1
    assert stored.delete_id is None
    assert "502" in str((await world.purge_columns(session.id))["purge_error"])
    assert world.purge_failures() == 1
    assert await world.repo.pending_purge() == 1
    assert room in world.service.room_ids  # still a session room: its events are not kept
    failed = [b for b in await world.bodies(MGMT) if "did not complete" in b]
    assert len(failed) == 1
    assert f"#{session.id}" in failed[0] and "TemporaryError" in failed[0]
    retry = world.timers.armed[f"session:{session.id}:retry"]
    assert retry.callback == world.service.end_by_timer
    assert retry.args == (session.id,)
    assert await world.audit.entries("session.purged") == []
    for new in (jane, sam):  # no "deleted" notice before the room is really gone
        assert not [b for b in await world.bodies(new.room.room_id) if "has ended" in b]

    await world.timers.run(f"session:{session.id}:retry")
    await world.timers.run(f"session:{session.id}:room")

    done = await world.get(session.id)
    assert done.status == ENDED
    assert done.delete_id == "delete-1"
    assert (await world.purge_columns(session.id))["purge_error"] is None
    assert gateway.deleted_rooms == [room]
    assert room not in world.service.room_ids
    assert world.purge_failures() == 1
    assert await world.repo.pending_purge() == 0
    receipts = await world.audit.entries("session.purged")
    assert len(receipts) == 1
    assert receipts[0].detail["status"] == "complete"
    assert receipts[0].detail["files_purged"] == 1
    assert receipts[0].detail["reason"] == "time is up"
    closing = [b for b in await world.bodies(room) if "has ended" in b]
    assert len(closing) == 1  # the closing notice is not repeated by the retry
    for new in (jane, sam):
        assert len([b for b in await world.bodies(new.room.room_id) if "has ended" in b]) == 1
    assert len([b for b in await world.bodies(MGMT) if "did not complete" in b]) == 1


async def test_a_second_failure_is_counted_but_not_reported_again(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST}, purge_failures=2)
    world = await build(gateway=gateway)
    await world.conversations.repo.set_management_room(THERAPIST, MGMT)
    session, _, _ = await open_session(world)

    await world.service.end(session.id, "test")
    await world.timers.run(f"session:{session.id}:retry")

    stored = await world.get(session.id)
    assert stored.status == ENDING
    assert stored.purge_attempts == 2
    assert world.purge_failures() == 2
    assert len([b for b in await world.bodies(MGMT) if "did not complete" in b]) == 1
    assert f"session:{session.id}:retry" in world.timers.armed

    await world.timers.run(f"session:{session.id}:retry")
    assert (await world.get(session.id)).status == ENDED
    assert len(await world.audit.entries("session.purged")) == 1


async def test_a_purge_that_reports_failed_is_retried(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST}, purge_statuses=["failed"])
    world = await build(gateway=gateway)
    await world.conversations.repo.set_management_room(THERAPIST, MGMT)
    session, _, _ = await open_session(world)

    await world.service.end(session.id, "test")

    stored = await world.get(session.id)
    assert stored.status == ENDING
    assert stored.purge_attempts == 1
    assert "failed" in str((await world.purge_columns(session.id))["purge_error"])
    assert world.purge_failures() == 1
    assert f"session:{session.id}:retry" in world.timers.armed
    assert await world.audit.entries("session.purged") == []

    await world.timers.run(f"session:{session.id}:retry")

    assert (await world.get(session.id)).status == ENDED
    assert len(await world.audit.entries("session.purged")) == 1


async def test_a_failed_room_delete_is_issued_again_later(build: Build) -> None:
    """The room delete comes after the messages are gone: its failure does not hold the end
    back, and is retried by the room timer under a fresh delete id."""
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST}, failed_deletes={"delete-1"})
    world = await build(gateway=gateway)
    await world.conversations.repo.set_management_room(THERAPIST, MGMT)
    session, _, _ = await open_session(world)
    room = session.room_id

    await world.service.end(session.id, "test")
    stored = await world.get(session.id)
    assert stored.status == ENDED and stored.room_deleted_at is None and stored.delete_id is None
    assert len(await world.audit.entries("session.purged")) == 1
    await world.timers.run(f"session:{session.id}:room")
    assert world.purge_failures() == 1
    assert gateway.deleted_rooms == [room]
    await world.timers.run(f"session:{session.id}:room")

    assert gateway.deleted_rooms == [room, room]  # a fresh delete, polled under its new id
    assert (await world.get(session.id)).room_deleted_at is not None
    deleted = await world.audit.entries("session.room_deleted")
    assert len(deleted) == 1 and deleted[0].detail["delete_id"] == "delete-2"


async def test_a_room_delete_error_is_retried_by_the_room_timer(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST}, delete_room_failures=1)
    world = await build(gateway=gateway)
    await world.conversations.repo.set_management_room(THERAPIST, MGMT)
    session, _, _ = await open_session(world)

    await world.service.end(session.id, "test")
    await world.timers.run(f"session:{session.id}:room")
    assert gateway.deleted_rooms == []
    assert f"session:{session.id}:room" in world.timers.armed
    await world.timers.run(f"session:{session.id}:room")
    assert gateway.deleted_rooms == [session.room_id]


# --------------------------------------------------------------------------- start-up


async def test_start_purges_overdue_sessions_and_rearms_the_others(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST})
    clock = FakeClock(START)
    before = await build(gateway=gateway, clock=clock)
    jane, sam = await two_clients(before)
    overdue = await before.book([jane.client], START, 30, origin="$overdue")
    ending = await before.book([sam.client], START, 240, origin="$ending")
    await before.repo.update(ending.id, status=ENDING)
    future = await before.book(
        [jane.client, sam.client], START + timedelta(hours=3), 50, origin="$future"
    )
    assert overdue.room_id and ending.room_id and future.room_id is None
    await before.outbox.join()

    # Alcove was down from 12:00 to 13:00; a fresh service starts.
    clock.advance(3600)
    after = await build(gateway=gateway, clock=clock)
    await after.service.start()

    assert (await after.get(overdue.id)).status == ENDED
    assert (await after.get(ending.id)).status == ENDED
    for ended in (overdue, ending):  # armed once by the purge, not again by the re-arm
        assert after.timers.history.count(f"session:{ended.id}:room") == 1
        await after.timers.run(f"session:{ended.id}:room")
    assert sorted(gateway.deleted_rooms) == sorted([overdue.room_id, ending.room_id])
    reasons = {
        e.detail["session"]: e.detail["reason"]
        for e in await after.audit.entries()
        if e.action == "session.purged"
    }
    assert reasons == {
        overdue.id: "ended while Alcove was not running",
        ending.id: "ended while Alcove was not running",
    }
    assert after.service.room_ids == set()
    assert (await after.get(future.id)).status == SCHEDULED
    sid = future.id
    assert set(after.timers.armed) == {
        f"session:{sid}:{s}" for s in ("remind", "open", "warn", "end")
    }
    assert after.timers.armed[f"session:{sid}:open"].when == START + timedelta(hours=3)
    assert after.timers.armed[f"session:{sid}:end"].when == START + timedelta(hours=3, minutes=50)


async def test_start_knows_the_rooms_of_live_sessions(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST})
    clock = FakeClock(START)
    before = await build(gateway=gateway, clock=clock)
    session, _, _ = await open_session(before)

    after = await build(gateway=gateway, clock=clock)
    assert after.service.room_ids == set()
    await after.service.start()

    assert after.service.room_ids == {session.room_id}
    assert (await after.get(session.id)).status == OPEN
    assert set(after.timers.armed) == {f"session:{session.id}:warn", f"session:{session.id}:end"}
    assert gateway.deleted_rooms == []


async def test_start_after_a_missed_start_creates_one_room(build: Build) -> None:
    gateway = SlowCreateGateway(bot_user_id=BOT, existing_users={THERAPIST})
    clock = FakeClock(START)
    before = await build(gateway=gateway, clock=clock)
    jane, _ = await two_clients(before)
    session = await before.book([jane.client], START + timedelta(hours=1), 50)

    # Alcove was down from 12:00 to 13:01, through the reminder and the start.
    clock.advance(3600 + 60)
    after = await build(gateway=gateway, clock=clock)
    await after.service.start()
    rooms_before = set(gateway.rooms)
    gateway.slow = True
    # Overdue timers fire together, as APScheduler runs every due job as its own task.
    due = [j for j in after.timers.armed if j.split(":")[2] in ("remind", "open")]
    await asyncio.gather(*(after.timers.run(j) for j in due))

    stored = await after.get(session.id)
    assert stored.status == OPEN
    new_rooms = set(gateway.rooms) - rooms_before
    assert new_rooms == {stored.room_id}
    assert after.service.room_ids == {stored.room_id}


# --------------------------------------------------------------------------- cancel


async def test_cancel_before_any_room(world: World) -> None:
    jane, sam = await two_clients(world)
    session = await world.book([jane.client, sam.client], START + timedelta(hours=2), 50)
    rooms_before = len(world.gateway.rooms)

    assert await world.service.cancel(THERAPIST, session.id) is True

    stored = await world.get(session.id)
    assert stored.status == CANCELLED
    assert stored.room_id is None
    assert len(world.gateway.rooms) == rooms_before  # no create_room call
    assert world.gateway.deleted_rooms == []
    assert not [j for j in world.timers.armed if j.startswith(f"session:{session.id}:")]
    for new in (jane, sam):
        cancelled = [b for b in await world.bodies(new.room.room_id) if "cancelled" in b]
        assert len(cancelled) == 1 and "14:00" in cancelled[0]
    assert len(await world.audit.entries("session.cancelled")) == 1
    assert await world.repo.of_therapist(THERAPIST) == []

    # A timer that fires anyway does not bring it back.
    await world.service.remind(session.id)
    await world.service.open(session.id)
    assert (await world.get(session.id)).status == CANCELLED
    assert len(world.gateway.rooms) == rooms_before


async def test_cancel_of_another_therapists_session_is_refused(world: World) -> None:
    jane, _ = await two_clients(world)
    session = await world.book([jane.client], START + timedelta(hours=2), 50)

    assert await world.service.cancel(OTHER_THERAPIST, session.id) is False
    assert await world.service.cancel(THERAPIST, session.id + 1000) is False

    assert (await world.get(session.id)).status == SCHEDULED
    assert await world.audit.entries("session.cancelled") == []
    assert f"session:{session.id}:end" in world.timers.armed


async def test_cancel_after_open_is_refused(world: World) -> None:
    session, _, _ = await open_session(world)

    assert await world.service.cancel(THERAPIST, session.id) is False

    stored = await world.get(session.id)
    assert stored.status == OPEN
    assert world.gateway.deleted_rooms == []
    assert f"session:{session.id}:end" in world.timers.armed


async def test_cancel_of_a_prepared_session_deletes_its_empty_room(world: World) -> None:
    jane, _ = await two_clients(world)
    session = await world.book([jane.client], START + timedelta(hours=1), 50)
    await world.service.remind(session.id)
    room = (await world.get(session.id)).room_id
    assert room is not None

    assert await world.service.cancel(THERAPIST, session.id) is True

    stored = await world.get(session.id)
    assert stored.status == CANCELLED
    room_timer = world.timers.armed[f"session:{session.id}:room"]
    assert room_timer.args == (session.id, False)  # no member device to wait for
    await world.timers.run(f"session:{session.id}:room")
    assert world.gateway.deleted_rooms == [room]
    assert room not in world.service.room_ids


async def test_cancel_of_a_prepared_session_keeps_retrying_the_purge(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST}, delete_room_failures=1)
    world = await build(gateway=gateway)
    await world.conversations.repo.set_management_room(THERAPIST, MGMT)
    jane, _ = await two_clients(world)
    session = await world.book([jane.client], START + timedelta(hours=1), 50)
    await world.service.remind(session.id)
    room = (await world.get(session.id)).room_id
    assert room is not None

    assert await world.service.cancel(THERAPIST, session.id) is True
    assert (await world.get(session.id)).status == CANCELLED
    # The client has a device that never synced: a cancelled room had no members, so that
    # does not hold its deletion back.
    gateway.user_device_list[jane.client.user_id] = [{"device_id": "PHONE", "last_seen_ts": 1}]
    await world.timers.run(f"session:{session.id}:room")
    assert gateway.deleted_rooms == []  # the 502
    await world.timers.run(f"session:{session.id}:room")

    assert gateway.deleted_rooms == [room]


# --------------------------------------------------------------------------- transcripts


async def test_transcript_declined_makes_nothing(world: World) -> None:
    session, jane, sam = await open_session(world)
    seed_room(world, str(session.room_id), jane.client.user_id, sam.client.user_id)

    prompt = await world.transcripts.request(session)
    assert "!consent" in prompt and "!decline" in prompt and "Dr T" in prompt
    assert f"session:{session.id}:transcript" in world.timers.armed

    reply = await world.transcripts.answer(session, jane.client.user_id, consent=False)

    assert "declined" in reply
    assert world.gateway.uploads == {}
    assert await world.repo.transcript_request(session.id) is None
    assert f"session:{session.id}:transcript" not in world.timers.armed
    declined = await world.audit.entries("transcript.declined")
    assert [(e.actor, e.room_id) for e in declined] == [(jane.client.user_id, session.room_id)]
    # The other client's answer comes too late.
    late = await world.transcripts.answer(session, sam.client.user_id, consent=True)
    assert "No transcript" in late
    assert world.gateway.uploads == {}


async def test_transcript_with_everyones_consent_goes_to_the_management_room(
    world: World,
) -> None:
    session, jane, sam = await open_session(world)
    room = session.room_id
    assert room is not None
    seed_room(world, room, jane.client.user_id, sam.client.user_id)

    await world.transcripts.request(session)
    first = await world.transcripts.answer(session, jane.client.user_id, consent=True)
    assert "Waiting for 1 more" in first
    assert world.gateway.uploads == {}
    last = await world.transcripts.answer(session, sam.client.user_id, consent=True)

    assert "Everyone agreed" in last
    assert len(world.gateway.uploads) == 1
    uri, data = next(iter(world.gateway.uploads.items()))
    text = data.decode()
    header = text.partition("\n\n")[0]
    assert header.splitlines() == [
        f"Text-only session #{session.id}",
        "Date: Saturday 2026-11-21, 12:00 to 12:50",
        "Time zone: Europe/London (GMT, UTC+0000); every time below is in it",
        "Participants: Dr T (therapist), J.D., S.R.",
    ]
    assert "Jane" not in text and "Sam" not in text and "Doe" not in text
    assert f"12:05 J.D.: {SECRET}" in text
    assert "12:07 Dr T: Thank you for saying that" in text
    assert "12:09 S.R.: [attachment: worksheet.pdf]" in text
    assert "13:01 S.R.: [attachment: boat.png]" in text
    assert f"13:02 S.R.: {SECRET_2}" in text
    assert "The session is open" not in text  # Alcove's own notices are left out
    assert "m.room.member" not in text and "join" not in text

    files = [s for s in await world.sent_to(MGMT) if s.content.get("msgtype") == "m.file"]
    assert len(files) == 1
    assert files[0].sender == BOT
    assert files[0].content["url"] == uri
    assert files[0].content["body"] == "chat-history.txt"
    assert files[0].content["info"]["size"] == len(data)
    assert not [s for s in await world.sent_to(room) if s.content.get("msgtype") == "m.file"]

    delivered = await world.audit.entries("transcript.delivered")
    assert len(delivered) == 1
    assert delivered[0].detail["sha256"] == hashlib.sha256(data).hexdigest()
    assert delivered[0].detail["size"] == len(data)
    assert set(delivered[0].detail["consents"]) == {jane.client.user_id, sam.client.user_id}
    assert len(await world.audit.entries("transcript.consented")) == 2
    for row in await world.audit_rows():
        for secret in (SECRET, SECRET_2, "worksheet.pdf", "Thank you for saying"):
            assert secret not in row
    assert await world.repo.transcript_request(session.id) is None
    assert f"session:{session.id}:transcript" not in world.timers.armed


async def test_transcript_of_a_summer_session_across_midnight_dates_its_lines(
    world: World,
) -> None:
    jane = await world.client("Jane Doe")
    late = datetime(2027, 7, 3, 22, 30, tzinfo=UTC)  # 23:30 BST
    world.advance_to(late)
    session = await world.book([jane.client], late, 60)
    assert session.room_id is not None
    world.gateway.events[session.room_id] = [
        {
            "type": "m.room.message",
            "sender": jane.client.user_id,
            "origin_server_ts": to_ms(late + timedelta(minutes=50)),
            "content": {"msgtype": "m.text", "body": "after midnight"},
        }
    ]
    text = (await world.transcripts.render(session)).decode()
    assert text.splitlines()[1:4] == [
        "Date: Saturday 2027-07-03, 23:30 to 00:30 on 2027-07-04",
        "Time zone: Europe/London (BST, UTC+0100); every time below is in it",
        "Participants: Dr T (therapist), J.D.",
    ]
    assert text.endswith("-- Sunday 2027-07-04 --\n00:20 J.D.: after midnight\n")


async def test_transcript_is_withheld_while_the_management_room_is_not_private(
    world: World,
) -> None:
    session, jane, sam = await open_session(world)
    room = session.room_id
    assert room is not None
    seed_room(world, room, jane.client.user_id, sam.client.user_id)
    world.gateway.memberships[MGMT] = {THERAPIST: "join", BOT: "join", "@x:test.local": "invite"}
    await world.transcripts.request(session)
    await world.transcripts.answer(session, jane.client.user_id, consent=True)
    last = await world.transcripts.answer(session, sam.client.user_id, consent=True)

    assert "was not sent" in last and "not private" in last
    assert not [s for s in await world.sent_to(MGMT) if s.content.get("msgtype") == "m.file"]
    assert world.gateway.deleted_media == list(world.gateway.uploads)  # the upload is gone
    assert await world.audit.entries("transcript.delivered") == []
    assert await world.repo.transcript_request(session.id) is not None  # consents kept

    # Once the room is private again, a !consent sent again delivers it.
    world.gateway.memberships[MGMT] = {THERAPIST: "join", BOT: "join"}
    again = await world.transcripts.answer(session, sam.client.user_id, consent=True)
    assert "Everyone agreed: the transcript was sent" in again
    assert len([s for s in await world.sent_to(MGMT) if s.content.get("msgtype") == "m.file"]) == 1


async def test_transcript_answer_by_a_non_participant_is_refused(world: World) -> None:
    session, jane, _ = await open_session(world)
    outsider = await world.client("Olga Out")
    await world.transcripts.request(session)

    for user in (outsider.client.user_id, THERAPIST):
        reply = await world.transcripts.answer(session, user, consent=True)
        assert reply == "Only the other participants are asked for consent."
    reply = await world.transcripts.answer(session, outsider.client.user_id, consent=False)
    assert reply == "Only the other participants are asked for consent."

    pending = await world.repo.transcript_request(session.id)
    assert pending is not None
    waiting_for, consents, _ = pending
    assert jane.client.user_id in waiting_for
    assert consents == {}
    assert world.gateway.uploads == {}
    assert await world.audit.entries("transcript.declined") == []


async def test_transcript_expiry_drops_the_request(world: World) -> None:
    session, jane, _ = await open_session(world)
    room = session.room_id
    assert room is not None
    await world.transcripts.request(session)
    armed = world.timers.armed[f"session:{session.id}:transcript"]
    assert armed.callback == world.transcripts.expire

    await world.timers.run(f"session:{session.id}:transcript")

    assert await world.repo.transcript_request(session.id) is None
    assert len(await world.audit.entries("transcript.expired")) == 1
    assert [b for b in await world.bodies(room) if "no transcript is made" in b] != []
    reply = await world.transcripts.answer(session, jane.client.user_id, consent=True)
    assert "No transcript" in reply
    assert world.gateway.uploads == {}


async def test_transcript_answer_after_the_deadline_is_refused(world: World) -> None:
    session, jane, _ = await open_session(world)
    await world.transcripts.request(session)
    world.clock.advance(6 * 60)

    reply = await world.transcripts.answer(session, jane.client.user_id, consent=True)

    assert "expired" in reply
    assert world.gateway.uploads == {}


async def test_transcript_survives_a_failed_upload(build: Build) -> None:
    gateway = FlakyGateway(bot_user_id=BOT, existing_users={THERAPIST}, upload_failures=1)
    world = await build(gateway=gateway)
    await world.conversations.repo.set_management_room(THERAPIST, MGMT)
    jane = await world.client("Jane Doe")
    session = await world.book([jane.client], START, 50)
    await world.transcripts.request(session)

    with pytest.raises(TemporaryError):
        await world.transcripts.answer(session, jane.client.user_id, consent=True)
    await world.transcripts.answer(session, jane.client.user_id, consent=True)  # inbox retry

    assert len(gateway.uploads) == 1


# --------------------------------------------------------------------------- inbox privacy


async def test_a_replayed_session_event_is_handled_once_and_keeps_no_text(
    build: Build, db: Database
) -> None:
    """Catch-up (start-up, a homeserver restart) offers the last minutes of every room again:
    a handled session-room event must be recognised by its id — a content-free marker — so
    `!extend 30m` does not extend twice and no text is written back. The whole pipeline:
    inbox → dispatcher → bot."""
    world = await build(with_inbox=True)
    await world.conversations.repo.set_management_room(THERAPIST, MGMT)
    world.gateway.memberships[MGMT] = {THERAPIST: "join", BOT: "join"}
    session, jane, _ = await open_session(world)
    room = session.room_id
    assert room is not None
    inbox = world.harness.inbox
    in_session = message(room, THERAPIST, "!extend 30m")
    secret = message(room, jane.client.user_id, SECRET)
    elsewhere = message(jane.room.room_id, jane.client.user_id, "hello")
    assert await inbox.accept("txn1", [in_session, secret, elsewhere]) == 3
    await world.harness.settle()
    assert await inbox.accept("catch-up", [in_session, secret, elsewhere]) == 0
    await world.harness.settle()

    assert (await world.get(session.id)).end_at == session.end_at + 30 * 60_000  # once
    for event in (in_session, secret, elsewhere):
        assert await inbox.repo.status_of(event["event_id"]) == DONE
    rows = await db.fetch("SELECT * FROM inbox_event")
    assert {r["body"] for r in rows} == {None}
    for row in rows:
        assert SECRET not in json.dumps({k: row[k] for k in row.keys()}, default=str)
