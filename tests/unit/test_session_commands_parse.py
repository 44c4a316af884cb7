"""!session and the in-room session commands, parsed against a stub service: which words book
what, which are refused with a usage line, and who may use the in-room commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from bots.commands.context import CommandContext
from bots.commands.registry import CommandRegistry
from bots.commands.router import CommandRouter
from bots.features.conversations.repo import Client
from bots.features.conversations.service import ClientLookupError
from bots.features.schedule.timeparse import local_text
from bots.features.sessions.commands import SessionCommands
from bots.features.sessions.repo import OPEN, SCHEDULED, Session
from bots.features.sessions.service import SessionService
from bridge.config import Config
from tests.support.builders import DOMAIN, make_config
from tests.support.fakes import FakeClock

THERAPIST = f"@therapist:{DOMAIN}"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # GMT: local time = UTC
ROOM = "!session:test.local"
JANE = Client(f"@c-jane:{DOMAIN}", THERAPIST, "Jane Doe", "J.D.", None)
SAM = Client(f"@c-sam:{DOMAIN}", THERAPIST, "Sam Roe", "S.R.", None)


class StubConversations:
    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients

    async def resolve_client(self, therapist: str, token: str) -> Client:
        matches = [c for c in self.clients if c.full_name.lower().startswith(token.lower())]
        if len(matches) != 1:
            raise ClientLookupError(f"No client of yours matches {token!r}.")
        return matches[0]


@dataclass
class Booked:
    therapist: str
    clients: list[str]
    start: datetime
    minutes: int
    origin: str


class StubRepo:
    def __init__(self) -> None:
        self.rooms: dict[str, Session] = {}

    async def by_room(self, room_id: str) -> Session | None:
        return self.rooms.get(room_id)


@dataclass
class StubService:
    config: Config
    clock: FakeClock
    conversations: StubConversations = field(default_factory=lambda: StubConversations([JANE, SAM]))
    repo: StubRepo = field(default_factory=StubRepo)
    booked: list[Booked] = field(default_factory=list)
    cancelled: list[tuple[str, int]] = field(default_factory=list)
    ended: list[tuple[int, str]] = field(default_factory=list)
    extended: list[tuple[int, int]] = field(default_factory=list)

    @property
    def cfg(self) -> object:
        return self.config.sessions

    async def by_room(self, room_id: str) -> Session | None:
        return await self.repo.by_room(room_id)

    def local(self, at_ms: int) -> str:
        return local_text(datetime.fromtimestamp(at_ms / 1000, UTC), self.config.practice.timezone)

    async def book(
        self, therapist: str, clients: list[Client], start: datetime, minutes: int, origin: str
    ) -> Session:
        self.booked.append(Booked(therapist, [c.user_id for c in clients], start, minutes, origin))
        start_ms = int(start.timestamp() * 1000)
        opened = start <= self.clock.now()
        return Session(
            7,
            therapist,
            tuple(c.user_id for c in clients),
            start_ms,
            start_ms + minutes * 60_000,
            OPEN if opened else SCHEDULED,
            ROOM if opened else None,
            opened,
            False,
            None,
            0,
        )

    async def cancel(self, therapist: str, session_id: int) -> bool:
        self.cancelled.append((therapist, session_id))
        return session_id == 3

    async def end(self, session_id: int, reason: str) -> None:
        self.ended.append((session_id, reason))

    async def extend(self, session: Session, minutes: int) -> Session:
        self.extended.append((session.id, minutes))
        return Session(
            session.id,
            session.therapist_id,
            session.clients,
            session.start_at,
            session.end_at + minutes * 60_000,
            session.status,
            session.room_id,
            session.reminded,
            False,
            None,
            0,
        )


@dataclass
class Harness:
    service: StubService
    commands: SessionCommands
    replies: list[str]

    async def run(
        self, name: str, raw: str, sender: str = THERAPIST, room_id: str = "!mgmt:test.local"
    ) -> str:
        async def reply(text: str) -> None:
            self.replies.append(text)

        # Through the router, as the declared arguments are read there. Every sender is given
        # the therapist role: the handlers' own checks (this session's therapist) are tested.
        router = CommandRouter(CommandRegistry(self.commands.specs()))
        before = len(self.replies)
        handled = await router.handle(
            f"!{name} {raw}",
            sender=sender,
            role="therapist",
            room_id=room_id,
            event_id="$cmd",
            reply=reply,
        )
        assert handled
        assert len(self.replies) == before + 1, self.replies[before:]
        return self.replies[-1]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    service = StubService(make_config(tmp_path), FakeClock(NOW))
    return Harness(service, SessionCommands(cast(SessionService, service)), [])


def open_session(therapist: str = THERAPIST) -> Session:
    start = int(NOW.timestamp() * 1000)
    return Session(
        5, therapist, (JANE.user_id,), start, start + 50 * 60_000, OPEN, ROOM, True, False, None, 0
    )


# --------------------------------------------------------------------------- booking


async def test_book_at_a_local_time_with_a_length(harness: Harness) -> None:
    reply = await harness.run("session", "Jane Sam at 2026-11-22 09:30 for 30m")

    assert harness.service.booked == [
        Booked(
            THERAPIST,
            [JANE.user_id, SAM.user_id],
            datetime(2026, 11, 22, 9, 30, tzinfo=UTC),
            30,
            "$cmd",
        )
    ]
    assert reply == (
        "Booked session #7 with Jane Doe, Sam Roe for Sun 2026-11-22 09:30 GMT (30 minutes)."
    )


async def test_book_in_summer_time_converts_to_utc(harness: Harness) -> None:
    await harness.run("session", "Jane at 2027-07-01 09:30")
    assert harness.service.booked[0].start == datetime(2027, 7, 1, 8, 30, tzinfo=UTC)
    assert harness.service.booked[0].minutes == 50  # the configured default


async def test_book_now_opens_and_links(harness: Harness) -> None:
    reply = await harness.run("session", "jane NOW for 20m")

    assert harness.service.booked[0].start == NOW
    assert harness.service.booked[0].minutes == 20
    assert reply == (
        "Session #7 with Jane Doe is open until Sat 2026-11-21 12:20 GMT: "
        f"https://matrix.to/#/{ROOM}"
    )


async def test_a_client_named_twice_is_booked_once(harness: Harness) -> None:
    await harness.run("session", "Jane jane Sam now")
    assert harness.service.booked[0].clients == [JANE.user_id, SAM.user_id]


@pytest.mark.parametrize(
    "raw",
    [
        "Jane",  # neither now nor at
        "now",  # no client
        "Jane at 2026-11-22",  # no time
        "Jane now for",
        "Jane now for 0m",
        "Jane now for 481m",
        "Jane now for 30",
        "Jane now 30m",
        "Jane now for 30m please",
        "Jane at 2026-11-22 09:30 during 30m",
        "list all",
    ],
)
async def test_malformed_bookings_get_the_usage(harness: Harness, raw: str) -> None:
    reply = await harness.run("session", raw)
    assert reply.startswith("Usage: !session")
    assert harness.service.booked == []


async def test_the_longest_session_is_accepted(harness: Harness) -> None:
    await harness.run("session", "Jane now for 480m")
    assert harness.service.booked[0].minutes == 480


async def test_a_past_time_is_refused(harness: Harness) -> None:
    reply = await harness.run("session", "Jane at 2026-11-21 11:59")
    assert "in the past" in reply and "now" in reply
    assert harness.service.booked == []


async def test_a_bad_date_is_refused(harness: Harness) -> None:
    reply = await harness.run("session", "Jane at 2026-13-01 09:00")
    assert "is not a date and time" in reply
    assert harness.service.booked == []


async def test_an_unknown_client_is_refused(harness: Harness) -> None:
    reply = await harness.run("session", "Jane Zoe now")
    assert reply == "No client of yours matches 'Zoe'."
    assert harness.service.booked == []


# --------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("raw", ["cancel 3", "cancel #3", "CANCEL 3"])
async def test_cancel_by_id(harness: Harness, raw: str) -> None:
    reply = await harness.run("session", raw)
    assert reply == "Cancelled session #3."
    assert harness.service.cancelled == [(THERAPIST, 3)]


async def test_cancel_of_an_unknown_session(harness: Harness) -> None:
    reply = await harness.run("session", "cancel 4")
    assert reply == "You have no session #4 that has not started."


@pytest.mark.parametrize("raw", ["cancel", "cancel three", "cancel 3 4"])
async def test_cancel_usage(harness: Harness, raw: str) -> None:
    reply = await harness.run("session", raw)
    assert reply == "Usage: !session cancel <id>"
    assert harness.service.cancelled == []


# --------------------------------------------------------------------------- in the room


async def test_end_outside_a_session_room(harness: Harness) -> None:
    reply = await harness.run("end", "")
    assert reply == "Use !end inside an open text-only session."
    assert harness.service.ended == []


async def test_end_by_a_client_is_refused(harness: Harness) -> None:
    harness.service.repo.rooms[ROOM] = open_session()
    reply = await harness.run("end", "", sender=JANE.user_id, room_id=ROOM)
    assert reply == "Only this session's therapist can use !end."
    assert harness.service.ended == []


async def test_end_by_the_therapist(harness: Harness) -> None:
    harness.service.repo.rooms[ROOM] = open_session()
    ctx = CommandContext(
        THERAPIST, "therapist", ROOM, "$e", "end", (), "", CommandRegistry(), _no_reply
    )
    await harness.commands.end(ctx)  # no reply: the closing notice says it all
    assert harness.service.ended == [(5, "ended by the therapist")]


async def _no_reply(text: str) -> None:
    raise AssertionError(f"unexpected reply {text!r}")


@pytest.mark.parametrize("raw", ["0m", "241m", "30", "m"])
async def test_extend_bounds(harness: Harness, raw: str) -> None:
    harness.service.repo.rooms[ROOM] = open_session()
    reply = await harness.run("extend", raw, room_id=ROOM)
    assert reply == "Usage: !extend <N>m (1 to 240 minutes)"
    assert harness.service.extended == []


async def test_extend_in_an_open_session(harness: Harness) -> None:
    harness.service.repo.rooms[ROOM] = open_session()
    reply = await harness.run("extend", "15m", room_id=ROOM)
    assert reply == "Extended: the session now ends at Sat 2026-11-21 13:05 GMT."
    assert harness.service.extended == [(5, 15)]


async def test_extend_of_a_session_that_is_not_open(harness: Harness) -> None:
    start = int(NOW.timestamp() * 1000)
    harness.service.repo.rooms[ROOM] = Session(
        5, THERAPIST, (JANE.user_id,), start, start + 60_000, SCHEDULED, ROOM, True, False, None, 0
    )
    reply = await harness.run("extend", "15m", room_id=ROOM)
    assert reply == "Use !extend inside an open text-only session."
    assert harness.service.extended == []


def test_specs_restrict_the_therapist_commands(harness: Harness) -> None:
    specs = {s.name: s for s in harness.commands.specs()}
    assert set(specs) == {"session", "end", "extend", "transcript", "consent", "decline"}
    for name in ("session", "end", "extend", "transcript"):
        assert specs[name].roles == ("therapist",)
    assert specs["consent"].roles == specs["decline"].roles
    assert specs["consent"].roles != ("therapist",)
