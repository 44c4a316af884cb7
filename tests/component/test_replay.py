"""Every command is safe to replay. The inbox hands an event over at least once — again after a
crash before its "handled" mark, again after a temporary error — so a command whose answer was
consumed before its effects were recorded must, handled again, find the same payload and give
the same reply. Here the whole pipeline (inbox → dispatch → bot → outbox → recording gateway)
runs on a real database (SQLite and PostgreSQL); a crash is a failure injected at the gap, then
a new Alcove on the same database and the same homeserver."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bots.features.away.service import MARK
from bots.features.blasts import service as blast_service
from bots.features.conversations.repo import Client
from bridge.clock import ms
from bridge.config import Config
from bridge.db.database import transaction
from bridge.db.inbox_repo import DONE
from bridge.dispatch import Dispatcher
from bridge.matrix.gateway import TemporaryError
from bridge.matrix.outbox import txn_id_for
from tests.support.builders import DOMAIN, make_config, message
from tests.support.fakes import FakeClock, RecordingGateway
from tests.support.harness import BotHarness, Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
MGMT = f"!mgmt:{DOMAIN}"
TEXT = "The practice is closed on Friday"
NOTHING = "nothing waiting for your confirmation"


class Crash(BaseException):
    """Alcove killed at this point: nothing after it runs, nothing is marked handled."""


@dataclass
class FlakyGateway(RecordingGateway):
    """user_exists fails with a temporary error ``flaky`` times (the homeserver is unwell)."""

    flaky: int = 0

    async def user_exists(self, user_id: str) -> bool | None:
        if self.flaky:
            self.flaky -= 1
            raise TemporaryError("502 from the homeserver", status=502)
        return await super().user_exists(user_id)


Alcove = BotHarness
"""One run of Alcove over the shared database and homeserver."""


@dataclass
class World:
    harnesses: Harnesses
    config: Config
    gateway: FlakyGateway
    clock: FakeClock
    runs: list[Alcove] = field(default_factory=list)

    @property
    def db(self) -> Database:
        return self.harnesses.db

    async def start(self) -> Alcove:
        run = await self.harnesses.build(
            self.config, self.gateway, self.clock, with_inbox=True, start=False
        )
        # The therapist types in their owned management room (private replies answer there).
        await run.bot.conversations.repo.set_management_room(THERAPIST, MGMT, owned=True)
        self.gateway.memberships[MGMT] = {THERAPIST: "join", self.config.bot_user_id: "join"}
        await run.start()
        self.runs.append(run)
        return run

    async def crash(self, run: Alcove, event: dict[str, Any]) -> None:
        """Deliver ``event`` (persisted first, as the transaction endpoint does) and handle it
        in ``run``, which dies with a Crash somewhere inside; then that Alcove is gone."""
        await run.inbox.repo.add("txn-crash", [event], ms(self.clock))
        with pytest.raises(Crash):
            await run.dispatcher.handle(event)
        await run.stop()

    def replies(self, event_id: str) -> list[str]:
        """The bot's replies to one event (wherever they went)."""
        return [
            str(s.content.get("body"))
            for s in self.gateway.sent
            if s.sender == self.config.bot_user_id and s.txn_id in self._reply_txns(event_id)
        ]

    def _reply_txns(self, event_id: str) -> set[str]:
        return {txn_id_for(self.config.bot_user_id, f"reply:{event_id}:{n}") for n in range(1, 5)}

    def blasts_received(self, clients: list[tuple[Client, str]]) -> dict[str, int]:
        """How many times each client's 1:1 room got the blast."""
        return {
            client.user_id: sum(
                1 for s in self.gateway.sent if s.room_id == room and TEXT in str(s.content)
            )
            for client, room in clients
        }


@pytest.fixture
async def world(harnesses: Harnesses, tmp_path: Path) -> World:
    config = make_config(tmp_path)
    # The therapist's account is not known to exist: the bot speaks on their behalf, and asks
    # the homeserver again at every blast (where FlakyGateway can fail).
    gateway = FlakyGateway(bot_user_id=config.bot_user_id)
    return World(harnesses, config, gateway, FakeClock())  # the harnesses stop every run


async def clients_of(run: Alcove, names: list[str]) -> list[tuple[Client, str]]:
    out = []
    for name in names:
        new = await run.bot.conversations.add_client(THERAPIST, name, None, f"$add-{name}")
        out.append((new.client, new.room.room_id))
    return out


NAMES = ["Anna Bell", "Carl Dunn", "Eve Fox"]


async def two_step_blast_until_yes(world: World, run: Alcove) -> dict[str, Any]:
    """`!blast all`, then the message, answered with the question; returns the `!yes`."""
    await run.inbox.accept("t1", [message(MGMT, THERAPIST, "!blast all", "$blast")])
    await run.settle()
    await run.inbox.accept("t2", [message(MGMT, THERAPIST, TEXT, "$text")])
    await run.settle()
    assert "Reply !yes" in world.replies("$text")[0]
    return message(MGMT, THERAPIST, "!yes", "$yes")


def crash_when(
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    name: str,
    *,
    after: bool,
) -> None:
    """Make ``target.name`` die with a Crash, before it runs or after it returned."""
    original: Callable[..., Awaitable[Any]] = getattr(target, name)

    async def crashing(*args: Any, **kwargs: Any) -> Any:
        if after:
            await original(*args, **kwargs)
        raise Crash(name)

    monkeypatch.setattr(target, name, crashing)


@pytest.mark.parametrize("after", [False, True], ids=["before-the-outbox", "before-the-report"])
async def test_two_step_blast_killed_after_yes_is_sent_once_with_the_report(
    world: World, monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    """Killed right after `!yes` consumed the question: before the blast's outbox rows were
    written (the whole blast was lost) or after they were delivered (the therapist got "nothing
    waiting" instead of the report). The new Alcove replays `!yes`: each client gets the blast
    exactly once and the therapist gets the report."""
    first = await world.start()
    clients = await clients_of(first, NAMES)
    await first.settle()
    yes = await two_step_blast_until_yes(world, first)
    with monkeypatch.context() as patch:
        crash_when(patch, first.bot.blasts.service, "send", after=after)
        await world.crash(first, yes)

    second = await world.start()
    await second.settle()
    assert world.blasts_received(clients) == {c.user_id: 1 for c, _ in clients}
    replies = world.replies("$yes")
    assert replies == ["Delivered to 3 of 3 clients; failed: 0."]


async def test_a_temporary_error_after_yes_is_retried_with_the_same_blast(world: World) -> None:
    """The homeserver answers 502 while the confirmed blast starts: the router lets the inbox
    retry the whole `!yes`, which must still find the confirmed blast (no crash involved)."""
    run = await world.start()
    clients = await clients_of(run, NAMES)
    await run.settle()
    yes = await two_step_blast_until_yes(world, run)
    world.gateway.flaky = 1
    await run.inbox.accept("t3", [yes])
    await run.settle()
    assert world.gateway.flaky == 0
    await run.handled("$yes")  # the retry comes from the inbox's delay queue
    assert world.blasts_received(clients) == {c.user_id: 1 for c, _ in clients}
    assert world.replies("$yes") == ["Delivered to 3 of 3 clients; failed: 0."]


async def test_the_captured_message_killed_before_the_question_is_asked_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the message following `!blast all` was captured but before the question
    went out: the replayed message must be captured again (it was deleted first, so the replay
    ignored it and the blast never happened)."""
    first = await world.start()
    clients = await clients_of(first, NAMES)
    await first.settle()
    await first.inbox.accept("t1", [message(MGMT, THERAPIST, "!blast all", "$blast")])
    await first.settle()
    text = message(MGMT, THERAPIST, TEXT, "$text")
    with monkeypatch.context() as patch:
        crash_when(patch, first.bot.blasts.confirm, "ask", after=False)
        await world.crash(first, text)

    second = await world.start()
    await second.settle()
    assert "Reply !yes" in world.replies("$text")[0]
    await second.inbox.accept("t3", [message(MGMT, THERAPIST, "!yes", "$yes")])
    await second.settle()
    assert world.blasts_received(clients) == {c.user_id: 1 for c, _ in clients}
    assert world.replies("$yes") == ["Delivered to 3 of 3 clients; failed: 0."]


async def test_the_blast_command_handled_again_waits_for_nothing_new(world: World) -> None:
    """`!blast all` handled again after its message was captured must not capture the next
    ordinary message as another blast."""
    run = await world.start()
    await clients_of(run, NAMES)
    await run.settle()
    blast = message(MGMT, THERAPIST, "!blast all", "$blast")
    await run.inbox.accept("t1", [blast])
    await run.settle()
    await run.inbox.accept("t2", [message(MGMT, THERAPIST, TEXT, "$text")])
    await run.settle()
    await Dispatcher(world.config.bot_user_id, run.bot).handle(blast)  # the replay
    await run.inbox.accept("t3", [message(MGMT, THERAPIST, "just talking", "$chat")])
    await run.settle()
    assert world.replies("$chat") == []


async def test_a_replayed_blast_counts_a_delivery_finishing_while_it_reads(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a restart the outbox resends the blast's pending rows while the replayed `!yes`
    reads them: a row read as pending and delivered right after must count as delivered, and
    must not be sent a second time."""
    monkeypatch.setattr(blast_service, "WAIT_SECONDS", 0.5)
    run = await world.start()
    clients = await clients_of(run, NAMES)
    await run.settle()
    await run.outbox.stop()  # the blast's rows are written, then Alcove dies before sending
    service = run.bot.blasts.service
    content = {"msgtype": "m.text", "body": TEXT}
    first = await service.send(THERAPIST, [c for c, _ in clients], content, "$origin")
    assert len(first.pending) == 3 and world.blasts_received(clients)[clients[0][0].user_id] == 0

    again = await world.start()  # its outbox resends the three rows...
    again_service = again.bot.blasts.service
    write = transaction

    @contextlib.asynccontextmanager
    async def write_then_deliver(db: Database) -> AsyncIterator[Any]:
        async with write(db) as conn:
            yield conn
        await again.outbox.join()  # ...each delivered right after the replay read its row

    monkeypatch.setattr(blast_service, "transaction", write_then_deliver)
    result = await again_service.send(THERAPIST, [c for c, _ in clients], content, "$origin")
    assert (len(result.delivered), result.pending, result.failed) == (3, [], [])
    assert world.blasts_received(clients) == {c.user_id: 1 for c, _ in clients}
    # ...and not by handing the delivered rows to the outbox again: that second request is
    # only harmless while the homeserver still remembers the transaction id.
    attempts = [a for a in world.gateway.attempts if TEXT in str(a.content)]
    assert len(attempts) == 3


async def test_housekeeping_deletes_expired_and_spent_questions(world: World) -> None:
    """Unanswered questions and captured inputs (full names, blast payloads) are deleted once
    expired; a used one stays as long as the inbox holds its answering event (a replay is still
    possible), then goes too."""
    run = await world.start()
    await clients_of(run, NAMES)
    await run.settle()
    await two_step_blast_until_yes(world, run)  # input used by $text, question open
    await run.inbox.accept("t9", [message(MGMT, THERAPIST, "!blast all", "$blast2")])
    await run.settle()  # a second input, open

    async def rows() -> tuple[int, int]:
        return (
            int(await world.db.fetchval("SELECT COUNT(*) FROM confirmation")),
            int(await world.db.fetchval("SELECT COUNT(*) FROM pending_input")),
        )

    assert await rows() == (1, 2)
    assert await run.bot.housekeep() == 0  # nothing expired, $text still in the inbox
    world.clock.advance(601)  # past both time limits (5 and 10 minutes)
    assert await run.bot.housekeep() == 2
    assert await rows() == (0, 1)  # the input used by $text is kept while $text may replay
    world.clock.advance(25 * 3600)
    await run.inbox.prune()  # the inbox forgets $text after its dedupe window
    assert await run.bot.housekeep() == 1
    assert await rows() == (0, 0)


async def test_group_remove_killed_after_yes_gets_its_reply(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`!group remove`, `!yes`, and Alcove dies once the client is removed but before the
    reply: the replayed `!yes` confirms the same removal again (idempotent) and says so."""
    first = await world.start()
    clients = await clients_of(first, NAMES)
    group = await first.bot.conversations.create_group(
        THERAPIST, "Circle", [c for c, _ in clients], "$group"
    )
    await first.settle()
    await first.inbox.accept("t1", [message(group.room_id, THERAPIST, "!group remove Anna", "$rm")])
    await first.settle()
    assert "Reply !yes" in world.replies("$rm")[0]
    with monkeypatch.context() as patch:
        crash_when(patch, first.bot.conversations, "remove_from_group", after=True)
        await world.crash(first, message(group.room_id, THERAPIST, "!yes", "$yes"))

    second = await world.start()
    await second.settle()
    anna = clients[0][0]
    assert world.replies("$yes") == [f"Removed {anna.initials}; they can no longer read this chat."]
    assert anna.user_id not in await second.bot.conversations.repo.members(group.room_id)


async def test_schedule_cancel_killed_before_its_reply_says_cancelled(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await world.start()
    clients = await clients_of(first, NAMES)
    await first.settle()
    room = clients[0][1]
    await first.inbox.accept("t1", [message(room, THERAPIST, "!schedule in 1h Hello", "$s")])
    await first.settle()
    (scheduled,) = world.replies("$s")
    number = scheduled.split("#", 1)[1].split(" ", 1)[0]
    with monkeypatch.context() as patch:
        crash_when(patch, first.bot.schedule, "cancel", after=True)
        await world.crash(first, message(room, THERAPIST, f"!schedule cancel {number}", "$c"))

    second = await world.start()
    await second.settle()
    assert world.replies("$c") == [f"Cancelled #{number}."]
    # Another cancel of the same message is still told there is none.
    await second.inbox.accept("t2", [message(room, THERAPIST, f"!schedule cancel {number}", "$c2")])
    await second.settle()
    assert world.replies("$c2") == [f"You have no pending scheduled message #{number}."]


async def test_an_away_notice_survives_a_temporary_error(world: World) -> None:
    """A client writes while the therapist is away and the homeserver fails once while the
    notice is prepared: the inbox retries the message, and the notice still goes out once
    (the throttle window was claimed before the failure, so the retry sent nothing)."""
    run = await world.start()
    clients = await clients_of(run, NAMES)
    await run.settle()
    await run.inbox.accept("t1", [message(MGMT, THERAPIST, "!away on Back Monday", "$away")])
    await run.settle()
    client, room = clients[0]
    world.gateway.flaky = 1
    await run.inbox.accept("t2", [message(room, client.user_id, "Are you there?", "$q")])
    await run.handled("$q")
    assert world.gateway.flaky == 0
    notices = [s for s in world.gateway.sent if s.room_id == room and MARK in s.content]
    assert [str(s.content["body"]) for s in notices] == ["On behalf of Dr T: Back Monday"]


async def test_a_phrase_handled_again_is_sent_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`!p` sends the phrase (keyed on the command's event) and then removes the command: killed
    after the removal, the replay sends nothing twice and removes the same event again (the
    redaction's transaction id is derived from it)."""
    first = await world.start()
    clients = await clients_of(first, NAMES)
    await first.settle()
    await first.inbox.accept("t1", [message(MGMT, THERAPIST, "!phrase add hi Hello!", "$add")])
    await first.settle()
    room = clients[0][1]
    with monkeypatch.context() as patch:
        crash_when(patch, world.gateway, "redact", after=True)
        await world.crash(first, message(room, THERAPIST, "!p hi", "$p"))

    second = await world.start()
    await second.settle()
    assert [b for b in world.gateway.bodies(room) if "Hello!" in b] == ["On behalf of Dr T: Hello!"]
    assert world.gateway.redacted == [(room, "$p"), (room, "$p")]
    assert await second.inbox.repo.status_of("$p") == DONE


async def test_session_cancel_killed_before_telling_the_clients(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`!session cancel` dies after the session is cancelled but before its clients are told:
    the replay tells them (once) and answers "Cancelled", not that there is no such session."""
    first = await world.start()
    clients = await clients_of(first, NAMES)
    await first.settle()
    book = message(MGMT, THERAPIST, "!session Anna at 2026-11-22 10:00 for 30m", "$book")
    await first.inbox.accept("t1", [book])
    await first.settle()
    (booked,) = world.replies("$book")
    number = booked.split("#", 1)[1].split(" ", 1)[0]
    with monkeypatch.context() as patch:
        crash_when(patch, first.bot.sessions.audit, "record", after=True)
        await world.crash(first, message(MGMT, THERAPIST, f"!session cancel {number}", "$c"))

    second = await world.start()
    await second.settle()
    assert world.replies("$c") == [f"Cancelled session #{number}."]
    anna_room = clients[0][1]
    told = [b for b in world.gateway.bodies(anna_room) if "is cancelled" in b]
    assert len(told) == 1


@pytest.mark.parametrize("after", [False, True], ids=["before-the-erasure", "before-the-reply"])
async def test_client_erase_killed_after_yes_erases_once_and_replies(
    world: World, monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    """`!client erase`, `!yes`, and Alcove dies before the erasure ran or after it, before the
    reply: the replayed `!yes` finishes it (or finds it done) and gives the same reply."""
    first = await world.start()
    clients = await clients_of(first, NAMES)
    anna = clients[0][0]
    await first.bot.conversations.create_group(THERAPIST, "Circle", [anna], "$group")
    # Outside the management room the question (it names the client) is not asked.
    await first.inbox.accept("t0", [message(clients[0][1], THERAPIST, "!client erase Anna", "$x")])
    await first.settle()
    assert "in your management room" in world.replies("$x")[0]
    # A booked session holds the erasure back.
    session = await first.bot.sessions.book(
        THERAPIST, [anna], first.clock.now() + timedelta(days=1), 30, "$book"
    )
    await first.inbox.accept("t1", [message(MGMT, THERAPIST, "!client erase Anna", "$e1")])
    await first.settle()
    assert f"#{session.id}" in world.replies("$e1")[0]
    await first.bot.sessions.cancel(THERAPIST, session.id)
    await first.inbox.accept("t2", [message(MGMT, THERAPIST, "!client erase Anna", "$e2")])
    await first.settle()
    assert world.replies("$e2")[0].startswith(f"Erase Anna Bell ({anna.user_id}) for good?")
    with monkeypatch.context() as patch:
        crash_when(patch, first.bot.conversations, "erase_client", after=after)
        await world.crash(first, message(MGMT, THERAPIST, "!yes", "$yes"))
    assert world.gateway.deactivated == ([(anna.user_id, True)] if after else [])

    second = await world.start()
    await second.settle()
    assert world.replies("$yes") == [
        f"Erased {anna.user_id}: removed from 2 room(s), the account deactivated and erased on "
        "the homeserver, and deleted from Alcove (the audit log keeps only the ID)."
    ]
    assert world.gateway.deactivated == [(anna.user_id, True)]
    assert await second.bot.conversations.client(anna.user_id) is None
    erased = [e for e in await second.bot.audit.entries("client.erased")]
    assert [(e.actor, e.target, e.detail) for e in erased] == [
        (THERAPIST, anna.user_id, {"rooms": 2})
    ]
    # The other clients are untouched.
    assert len(await second.bot.conversations.clients_of(THERAPIST)) == 2
