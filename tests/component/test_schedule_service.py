"""Scheduled messages on a real database (SQLite and PostgreSQL), a real outbox and a recording
gateway: create/arm, fire exactly once (also across a crash on either side of the commit),
recurrences, the late policy, cancel and the re-arm at start-up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from bots.features.conversations.repo import ConversationRepo
from bots.features.schedule.repo import CANCELLED, DONE, PENDING, SKIPPED, Scheduled
from bots.features.schedule.service import ScheduleService
from bots.features.schedule.timeparse import local_text, next_fire
from bots.features.voice import AUTOMATED
from bridge.config import Config
from bridge.db.outbox_repo import SENT, OutboxRow
from bridge.matrix.outbox import Outbox, txn_id_for
from bridge.timers import Timers
from tests.support.builders import DOMAIN, make_config
from tests.support.fakes import (
    FakeClock,
    RecordingGateway,
    RecordingTimers,
    Sent,
    from_ms,
    to_ms,
)
from tests.support.harness import Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
OTHER_THERAPIST = f"@other:{DOMAIN}"
BOT = f"@alcove:{DOMAIN}"
ROOM = "!client-dm:test.local"
MGMT = "!management:test.local"
START = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # a Saturday, GMT
TEXT = {"msgtype": "m.text", "body": "Remember to fill in your mood diary"}


@dataclass
class SignallingGateway(RecordingGateway):
    """A recording gateway that says when something was sent."""

    sent_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        txn_id: str,
        device_id: str | None,
    ) -> str:
        event_id = await super().send_event(sender, room_id, event_type, content, txn_id, device_id)
        self.sent_event.set()
        return event_id


class CrashingOutbox(Outbox):
    """Writes the outbox row, then dies before the transaction commits."""

    async def prepare(
        self,
        key: str,
        sender: str,
        room_id: str,
        content: dict[str, Any],
        event_type: str = "m.room.message",
    ) -> tuple[OutboxRow, bool]:
        await super().prepare(key, sender, room_id, content, event_type)
        raise RuntimeError("simulated crash before commit")

    async def prepare_many(
        self, items: list[tuple[str, str, str, dict[str, Any]]], event_type: str = "m.room.message"
    ) -> list[OutboxRow]:
        await super().prepare_many(items, event_type)
        raise RuntimeError("simulated crash before commit")


@dataclass
class World:
    db: Database
    config: Config
    gateway: RecordingGateway
    outbox: Outbox
    timers: RecordingTimers
    clock: FakeClock
    rooms: ConversationRepo
    service: ScheduleService

    async def create(
        self,
        due: datetime,
        origin: str,
        rule: str | None = None,
        therapist: str = THERAPIST,
        content: dict[str, Any] | None = None,
    ) -> Scheduled:
        return await self.service.create(therapist, ROOM, content or TEXT, due, rule, origin)

    def advance_to(self, when: datetime) -> None:
        self.clock.advance((when - self.clock.now()).total_seconds())

    async def sent_to(self, room_id: str) -> list[Sent]:
        await self.outbox.join()
        return [s for s in self.gateway.sent if s.room_id == room_id]

    async def row(self, schedule_id: int) -> Scheduled:
        row = await self.service.repo.get(schedule_id)
        assert row is not None
        return row

    async def outbox_keys(self) -> list[str]:
        rows = await self.db.fetch("SELECT key FROM outbox ORDER BY seq")
        return [str(r["key"]) for r in rows]


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(harnesses: Harnesses, tmp_path: Path) -> Build:
    """Worlds built in one test share the database, like Alcove restarted: the bot as Alcove
    wires it (tests/support/harness.py), its schedule service under test."""

    async def make(
        *,
        config: Config | None = None,
        gateway: RecordingGateway | None = None,
        clock: FakeClock | None = None,
        outbox_class: type[Outbox] = Outbox,
        start_outbox: bool = True,
        schedule: dict[str, Any] | None = None,
    ) -> World:
        if config is None:
            config = make_config(tmp_path, schedule=schedule) if schedule else make_config(tmp_path)
        gateway = gateway or RecordingGateway(
            bot_user_id=config.bot_user_id, existing_users={THERAPIST}
        )
        timers = RecordingTimers()
        h = await harnesses.build(
            config,
            gateway,
            clock or FakeClock(START),
            timers=timers,
            start=start_outbox,
            outbox_class=outbox_class,
        )
        rooms = ConversationRepo(h.db)
        return World(h.db, config, gateway, h.outbox, timers, h.clock, rooms, h.bot.schedule)

    return make


@pytest.fixture
async def world(build: Build) -> World:
    return await build()


# --------------------------------------------------------------------------- create


async def test_create_stores_a_row_and_arms_a_timer(world: World) -> None:
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")

    assert row == Scheduled(row.id, THERAPIST, ROOM, TEXT, None, to_ms(due), PENDING)
    assert await world.service.repo.get(row.id) == row
    assert await world.service.repo.pending_of(THERAPIST) == [row]

    armed = world.timers.armed[f"sched:{row.id}"]
    assert armed.when == due
    assert armed.args == (row.id,)
    assert armed.callback == world.service.fire
    assert world.gateway.attempts == []


async def test_create_again_with_the_same_event_stores_one_row(world: World) -> None:
    due = START + timedelta(hours=1)
    first = await world.create(due, "$s1")
    again = await world.create(due + timedelta(hours=5), "$s1", content={"body": "other"})
    assert again == first
    assert await world.service.repo.pending() == [first]
    assert list(world.timers.armed) == [f"sched:{first.id}"]
    assert world.timers.armed[f"sched:{first.id}"].when == due


# --------------------------------------------------------------------------- fire


async def test_fire_sends_once_as_the_therapist_and_forgets_the_content(world: World) -> None:
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due)

    await world.timers.run(f"sched:{row.id}")

    sent = await world.sent_to(ROOM)
    assert len(sent) == 1
    msg = sent[0]
    assert msg.sender == THERAPIST
    assert msg.event_type == "m.room.message"
    assert msg.content["body"] == TEXT["body"]
    assert msg.content["msgtype"] == "m.text"
    assert msg.content[AUTOMATED] is True
    key = f"sched:{row.id}:{to_ms(due)}"
    assert msg.txn_id == txn_id_for(THERAPIST, key)
    assert await world.outbox_keys() == [key]
    out = await world.outbox.repo.get(key)
    assert out is not None and out.status == SENT

    stored = await world.row(row.id)
    assert stored.status == DONE
    assert stored.content == {}
    assert await world.service.repo.pending() == []
    assert world.service.fired == 1
    assert world.timers.armed == {}


async def test_fire_twice_sends_once(world: World) -> None:
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due)
    await world.service.fire(row.id)
    await world.service.fire(row.id)
    assert len(await world.sent_to(ROOM)) == 1
    assert len(await world.outbox_keys()) == 1
    assert world.service.fired == 1


async def test_concurrent_fires_send_once(world: World) -> None:
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due)
    await asyncio.gather(*(world.service.fire(row.id) for _ in range(3)))
    assert len(await world.sent_to(ROOM)) == 1
    assert len(await world.outbox_keys()) == 1
    assert (await world.row(row.id)).status == DONE


async def test_fire_of_an_unknown_id_does_nothing(world: World) -> None:
    await world.service.fire(12345)
    await world.outbox.join()
    assert world.gateway.attempts == []
    assert world.timers.armed == {}


async def test_without_the_therapist_account_the_bot_speaks_on_behalf(build: Build) -> None:
    world = await build(gateway=RecordingGateway(existing_users=set()))
    due = START + timedelta(minutes=10)
    row = await world.create(due, "$s1")
    world.advance_to(due)
    await world.service.fire(row.id)
    sent = await world.sent_to(ROOM)
    assert [s.sender for s in sent] == [BOT]
    assert sent[0].content["body"] == f"On behalf of Dr T: {TEXT['body']}"
    assert sent[0].content[AUTOMATED] is True


async def test_a_timer_that_wakes_early_rearms_and_sends_nothing(world: World) -> None:
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due - timedelta(minutes=5))
    await world.timers.run(f"sched:{row.id}")
    await world.outbox.join()
    assert world.gateway.attempts == []
    assert await world.outbox_keys() == []
    assert (await world.row(row.id)).status == PENDING
    assert world.timers.armed[f"sched:{row.id}"].when == due

    world.advance_to(due)
    await world.timers.run(f"sched:{row.id}")
    assert len(await world.sent_to(ROOM)) == 1


async def test_a_timer_within_a_second_of_due_fires(world: World) -> None:
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due - timedelta(milliseconds=500))
    await world.service.fire(row.id)
    sent = await world.sent_to(ROOM)
    assert len(sent) == 1
    assert "sent late" not in sent[0].content["body"]


# --------------------------------------------------------------------------- recurring


async def test_recurring_row_advances_to_the_next_occurrence_and_rearms(world: World) -> None:
    rule = "monday 09:00"
    tz = world.service.tz
    first = next_fire(rule, tz, START)
    assert first == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    row = await world.create(first, "$weekly", rule=rule)

    world.advance_to(first)
    await world.timers.run(f"sched:{row.id}")
    second = next_fire(rule, tz, first)
    assert second == first + timedelta(days=7)
    stored = await world.row(row.id)
    assert stored.status == PENDING
    assert stored.due_at == to_ms(second)
    assert stored.content == TEXT
    assert stored.rule == rule
    assert world.timers.armed[f"sched:{row.id}"].when == second
    assert world.timers.armed[f"sched:{row.id}"].args == (row.id,)

    # The same timer firing again (a duplicate) sends nothing: the row has moved on.
    await world.service.fire(row.id)
    assert len(await world.sent_to(ROOM)) == 1

    world.advance_to(second)
    await world.timers.run(f"sched:{row.id}")
    sent = await world.sent_to(ROOM)
    assert len(sent) == 2
    assert await world.outbox_keys() == [
        f"sched:{row.id}:{to_ms(first)}",
        f"sched:{row.id}:{to_ms(second)}",
    ]
    assert all(s.content["body"] == TEXT["body"] for s in sent)
    assert (await world.row(row.id)).due_at == to_ms(second + timedelta(days=7))
    fired_count = await world.db.fetchval(
        "SELECT fired_count FROM scheduled_message WHERE id = $1", row.id
    )
    assert fired_count == 2


async def test_recurring_row_keeps_local_time_across_the_clock_change(build: Build) -> None:
    world = await build(clock=FakeClock(datetime(2026, 10, 17, 12, 0, tzinfo=UTC)))
    rule = "monday 09:00"
    first = datetime(2026, 10, 19, 8, 0, tzinfo=UTC)  # 09:00 BST
    assert next_fire(rule, world.service.tz, world.clock.now()) == first
    row = await world.create(first, "$weekly", rule=rule)
    world.advance_to(first)
    await world.service.fire(row.id)
    after_change = datetime(2026, 10, 26, 9, 0, tzinfo=UTC)  # 09:00 GMT
    assert (await world.row(row.id)).due_at == to_ms(after_change)
    assert world.timers.armed[f"sched:{row.id}"].when == after_change


async def test_daily_row_in_the_repeated_hour_is_sent_once_that_night(build: Build) -> None:
    world = await build(clock=FakeClock(datetime(2026, 10, 24, 12, 0, tzinfo=UTC)))
    rule = "day 01:30"
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 01:30 BST
    assert next_fire(rule, world.service.tz, world.clock.now()) == first
    row = await world.create(first, "$daily", rule=rule)
    world.advance_to(first)
    await world.service.fire(row.id)
    assert len(await world.sent_to(ROOM)) == 1
    assert (await world.row(row.id)).due_at == to_ms(datetime(2026, 10, 26, 1, 30, tzinfo=UTC))


async def test_recurring_row_fired_days_late_moves_past_now(build: Build) -> None:
    world = await build(schedule={"late_policy": "send", "grace_seconds": 60})
    rule = "day 09:00"
    first = next_fire(rule, world.service.tz, START)
    row = await world.create(first, "$daily", rule=rule)
    world.advance_to(first + timedelta(days=3, hours=2))  # Alcove was down for three days
    await world.service.fire(row.id)

    sent = await world.sent_to(ROOM)
    assert len(sent) == 1  # the missed days are not sent one by one
    assert "sent late" in sent[0].content["body"]
    expected = next_fire(rule, world.service.tz, world.clock.now())
    assert expected > world.clock.now()
    assert (await world.row(row.id)).due_at == to_ms(expected)
    assert world.timers.armed[f"sched:{row.id}"].when == expected


# --------------------------------------------------------------------------- late policy


async def test_late_beyond_grace_with_send_policy_says_so(build: Build) -> None:
    world = await build(schedule={"late_policy": "send", "grace_seconds": 60})
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due + timedelta(minutes=30))
    await world.service.fire(row.id)

    sent = await world.sent_to(ROOM)
    assert len(sent) == 1
    due_text = local_text(due, world.service.tz)
    assert due_text == "Sat 2026-11-21 13:00 GMT"
    assert sent[0].content["body"] == (f"{TEXT['body']}\n(Scheduled for {due_text}; sent late.)")
    assert sent[0].sender == THERAPIST
    assert sent[0].content[AUTOMATED] is True
    assert (await world.row(row.id)).status == DONE


async def test_late_within_grace_is_sent_unchanged(build: Build) -> None:
    world = await build(schedule={"late_policy": "skip", "grace_seconds": 60})
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due + timedelta(seconds=59))
    await world.service.fire(row.id)
    sent = await world.sent_to(ROOM)
    assert [s.content["body"] for s in sent] == [TEXT["body"]]
    assert (await world.row(row.id)).status == DONE


async def test_late_with_skip_policy_sends_nothing_to_the_client(build: Build) -> None:
    world = await build(schedule={"late_policy": "skip", "grace_seconds": 60})
    await world.rooms.set_management_room(THERAPIST, MGMT)
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due + timedelta(hours=2))
    await world.service.fire(row.id)

    assert await world.sent_to(ROOM) == []
    stored = await world.row(row.id)
    assert stored.status == SKIPPED
    assert stored.content == {}
    assert world.service.fired == 0

    notices = await world.sent_to(MGMT)
    assert len(notices) == 1
    notice = notices[0]
    assert notice.sender == world.gateway.bot_user_id
    assert notice.content["msgtype"] == "m.notice"
    assert f"#{row.id}" in notice.content["body"]
    assert "skipped" in notice.content["body"]
    assert local_text(due, world.service.tz) in notice.content["body"]
    assert TEXT["body"] not in notice.content["body"]

    # A second fire neither sends nor notifies again.
    await world.service.fire(row.id)
    assert await world.sent_to(ROOM) == []
    assert len(await world.sent_to(MGMT)) == 1


async def test_skip_without_a_management_room_just_skips(build: Build) -> None:
    world = await build(schedule={"late_policy": "skip", "grace_seconds": 60})
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due + timedelta(hours=2))
    await world.service.fire(row.id)
    await world.outbox.join()
    assert world.gateway.attempts == []
    assert (await world.row(row.id)).status == SKIPPED


async def test_skip_of_a_recurring_row_moves_it_on(build: Build) -> None:
    world = await build(schedule={"late_policy": "skip", "grace_seconds": 60})
    await world.rooms.set_management_room(THERAPIST, MGMT)
    rule = "day 09:00"
    first = next_fire(rule, world.service.tz, START)
    row = await world.create(first, "$daily", rule=rule)
    world.advance_to(first + timedelta(hours=3))
    await world.service.fire(row.id)

    assert await world.sent_to(ROOM) == []
    assert len(await world.sent_to(MGMT)) == 1
    stored = await world.row(row.id)
    nxt = next_fire(rule, world.service.tz, world.clock.now())
    assert stored.status == PENDING
    assert stored.due_at == to_ms(nxt)
    assert stored.content == TEXT
    assert world.timers.armed[f"sched:{row.id}"].when == nxt

    world.advance_to(nxt)
    await world.timers.run(f"sched:{row.id}")
    sent = await world.sent_to(ROOM)
    assert [s.content["body"] for s in sent] == [TEXT["body"]]


# --------------------------------------------------------------------------- cancel


async def test_cancel_only_cancels_the_therapists_own_pending_rows(world: World) -> None:
    due = START + timedelta(hours=1)
    mine = await world.create(due, "$mine")
    theirs = await world.create(due, "$theirs", therapist=OTHER_THERAPIST)

    assert await world.service.cancel(OTHER_THERAPIST, mine.id, "$c0") is False
    assert (await world.row(mine.id)).status == PENDING
    assert f"sched:{mine.id}" in world.timers.armed
    assert world.timers.cancelled == []

    assert await world.service.cancel(THERAPIST, mine.id, "$c1") is True
    stored = await world.row(mine.id)
    assert stored.status == CANCELLED
    assert stored.content == {}
    assert f"sched:{mine.id}" not in world.timers.armed
    assert world.timers.cancelled == [f"sched:{mine.id}"]
    assert await world.service.cancel(THERAPIST, mine.id, "$c2") is False
    assert await world.service.cancel(THERAPIST, 999999, "$c3") is False
    # The same command handled again (a crash before its reply): the same answer.
    assert await world.service.cancel(THERAPIST, mine.id, "$c1") is True

    assert (await world.row(theirs.id)).status == PENDING
    assert await world.service.repo.pending() == [theirs]

    # A cancelled message's timer, had it already been running, sends nothing.
    world.advance_to(due)
    await world.service.fire(mine.id)
    await world.outbox.join()
    assert world.gateway.attempts == []


async def test_a_sent_message_cannot_be_cancelled(world: World) -> None:
    due = START + timedelta(hours=1)
    row = await world.create(due, "$s1")
    world.advance_to(due)
    await world.service.fire(row.id)
    assert await world.service.cancel(THERAPIST, row.id, "$c") is False
    assert (await world.row(row.id)).status == DONE


# --------------------------------------------------------------------------- start


async def test_start_rearms_every_pending_row(build: Build) -> None:
    first = await build()
    a = await first.create(START + timedelta(hours=1), "$a")
    b = await first.create(START + timedelta(days=2), "$b", rule="monday 10:00")
    c = await first.create(START + timedelta(hours=3), "$c", therapist=OTHER_THERAPIST)
    cancelled = await first.create(START + timedelta(hours=4), "$cancelled")
    done = await first.create(START + timedelta(minutes=1), "$done")
    assert await first.service.cancel(THERAPIST, cancelled.id, "$cancel")
    first.advance_to(START + timedelta(minutes=1))
    await first.service.fire(done.id)

    restarted = await build(gateway=first.gateway, clock=first.clock)
    assert restarted.timers.armed == {}
    assert await restarted.service.start() == 3
    armed = restarted.timers.armed
    assert set(armed) == {f"sched:{a.id}", f"sched:{b.id}", f"sched:{c.id}"}
    for row in (a, b, c):
        assert armed[f"sched:{row.id}"].when == from_ms(row.due_at)
        assert armed[f"sched:{row.id}"].args == (row.id,)
        assert armed[f"sched:{row.id}"].callback == restarted.service.fire


async def test_start_with_nothing_pending(world: World) -> None:
    assert await world.service.start() == 0
    assert world.timers.armed == {}


async def test_start_with_real_timers_fires_an_overdue_row(
    build: Build, harnesses: Harnesses
) -> None:
    """End to end through APScheduler: an overdue row is fired as soon as it is re-armed."""
    real_now = datetime.now(UTC)
    gateway = SignallingGateway(existing_users={THERAPIST})
    first = await build(clock=FakeClock(real_now), gateway=gateway)
    row = await first.create(real_now - timedelta(seconds=30), "$overdue")

    timers = Timers()
    timers.start()
    try:
        # Alcove restarted with real timers (APScheduler behind the clock's call_at).
        restarted = await harnesses.build(first.config, gateway, first.clock, timers=timers)
        service = restarted.bot.schedule
        assert await service.start() == 1
        await asyncio.wait_for(gateway.sent_event.wait(), 10)
        assert len(await first.sent_to(ROOM)) == 1
        assert (await first.row(row.id)).status == DONE
        assert timers.count() == 0
    finally:
        timers.stop()


# --------------------------------------------------------------------------- crash safety


async def test_crash_after_commit_before_submit_is_sent_once_after_restart(build: Build) -> None:
    crashed = await build(start_outbox=False)  # nothing it queues is ever handed to a worker
    due = START + timedelta(hours=1)
    row = await crashed.create(due, "$s1")
    crashed.advance_to(due)
    await crashed.service.fire(row.id)

    # The claim and the outbox row committed together; nothing reached the homeserver.
    key = f"sched:{row.id}:{to_ms(due)}"
    assert crashed.gateway.attempts == []
    assert (await crashed.row(row.id)).status == DONE
    out = await crashed.outbox.repo.get(key)
    assert out is not None and out.status == PENDING
    assert out.sender == THERAPIST
    assert out.content is not None and out.content["body"] == TEXT["body"]

    restarted = await build(gateway=crashed.gateway, clock=crashed.clock)
    assert await restarted.service.start() == 0  # the row is done: no second firing
    await restarted.outbox.join()
    sent = await restarted.sent_to(ROOM)
    assert len(sent) == 1
    assert sent[0].txn_id == txn_id_for(THERAPIST, key)
    assert sent[0].content[AUTOMATED] is True
    delivered = await restarted.outbox.repo.get(key)
    assert delivered is not None and delivered.status == SENT

    await restarted.service.fire(row.id)
    assert len(await restarted.sent_to(ROOM)) == 1
    assert await restarted.outbox_keys() == [key]


async def test_crash_after_commit_of_a_recurring_row(build: Build) -> None:
    crashed = await build(start_outbox=False)
    rule = "day 09:00"
    first = next_fire(rule, crashed.service.tz, START)
    row = await crashed.create(first, "$daily", rule=rule)
    crashed.advance_to(first)
    await crashed.service.fire(row.id)
    assert crashed.gateway.attempts == []

    restarted = await build(gateway=crashed.gateway, clock=crashed.clock)
    assert await restarted.service.start() == 1
    second = next_fire(rule, restarted.service.tz, first)
    assert restarted.timers.armed[f"sched:{row.id}"].when == second
    await restarted.service.fire(row.id)  # a stale timer for the old occurrence: too early
    assert len(await restarted.sent_to(ROOM)) == 1
    assert await restarted.outbox_keys() == [f"sched:{row.id}:{to_ms(first)}"]


async def test_crash_before_commit_leaves_the_row_due_and_it_is_sent_once(build: Build) -> None:
    crashed = await build(outbox_class=CrashingOutbox)
    due = START + timedelta(hours=1)
    row = await crashed.create(due, "$s1")
    crashed.advance_to(due)
    await crashed.service.fire(row.id)  # logs the failure, does not raise

    # The transaction rolled back: the row is still due and no outbox row survived.
    stored = await crashed.row(row.id)
    assert stored.status == PENDING
    assert stored.due_at == to_ms(due)
    assert stored.content == TEXT
    assert await crashed.outbox_keys() == []
    await crashed.outbox.join()
    assert crashed.gateway.attempts == []
    assert crashed.service.fired == 0
    # fire() asked to be retried in 30 s.
    retry = crashed.timers.armed[f"sched:{row.id}"]
    assert retry.when == crashed.clock.now() + timedelta(seconds=30)

    restarted = await build(gateway=crashed.gateway, clock=crashed.clock)
    assert await restarted.service.start() == 1
    await restarted.timers.run(f"sched:{row.id}")
    await restarted.service.fire(row.id)
    sent = await restarted.sent_to(ROOM)
    assert len(sent) == 1
    assert sent[0].txn_id == txn_id_for(THERAPIST, f"sched:{row.id}:{to_ms(due)}")
    assert (await restarted.row(row.id)).status == DONE


async def test_crash_before_the_timer_fired_is_sent_once_after_restart(build: Build) -> None:
    first = await build()
    due = START + timedelta(hours=1)
    row = await first.create(due, "$s1")
    first.advance_to(due + timedelta(seconds=10))  # Alcove was down when it was due

    restarted = await build(gateway=first.gateway, clock=first.clock)
    assert await restarted.service.start() == 1
    await restarted.timers.run(f"sched:{row.id}")
    await restarted.service.fire(row.id)
    sent = await restarted.sent_to(ROOM)
    assert len(sent) == 1
    assert sent[0].content["body"] == TEXT["body"]


async def test_timers_firing_together_share_one_transaction_and_each_sends_once(
    world: World,
) -> None:
    """One-off, recurring and not-yet-due messages whose timers fire in the same moment: the
    one-offs go out in one batch, the others take their own path, nothing twice."""
    due = START + timedelta(hours=1)
    once = [
        await world.create(due, f"$o{i}", content={"msgtype": "m.text", "body": f"one-off {i}"})
        for i in range(30)
    ]
    weekly = await world.create(
        due, "$w", rule="monday 09:00", content={"msgtype": "m.text", "body": "weekly"}
    )
    later = await world.create(
        due + timedelta(hours=2), "$l", content={"msgtype": "m.text", "body": "later"}
    )
    world.advance_to(due)
    batches: list[int] = []
    get_many = world.service.repo.get_many

    async def counting(ids: list[int]) -> Any:
        batches.append(len(ids))
        return await get_many(ids)

    world.service.repo.get_many = counting  # type: ignore[method-assign]
    ids = [r.id for r in once] + [weekly.id, later.id]
    await asyncio.gather(*(world.service.fire(i) for i in ids + ids))  # every timer twice
    bodies = sorted(str(s.content["body"]) for s in await world.sent_to(ROOM))
    assert bodies == sorted([f"one-off {i}" for i in range(30)] + ["weekly"])
    assert batches == [32]  # the duplicates were folded, everything read in one query
    assert world.service.fired == 31
    assert [(await world.row(r.id)).status for r in once] == [DONE] * 30
    assert (await world.row(weekly.id)).status == PENDING  # re-armed for next week
    assert (await world.row(later.id)).status == PENDING
    assert f"sched:{later.id}" in world.timers.armed  # woken early: armed again


async def test_a_batch_rerun_after_a_crash_after_commit_sends_nothing_twice(build: Build) -> None:
    first = await build()
    due = START + timedelta(hours=1)
    rows = [await first.create(due, f"$c{i}") for i in range(5)]
    first.advance_to(due)
    await asyncio.gather(*(first.service.fire(r.id) for r in rows))
    await first.outbox.join()
    restarted = await build(gateway=first.gateway, clock=first.clock)
    assert await restarted.service.start() == 0  # nothing left pending
    await asyncio.gather(*(restarted.service.fire(r.id) for r in rows))
    assert len(await restarted.sent_to(ROOM)) == 5
    assert len(await restarted.outbox_keys()) == 5
