"""Scheduled messages: one-off and recurring, in the therapist's time zone, exactly once.

create → row (truth) + timer.  timer → fire(id):
    one transaction { claim the row (move due_at / close it) ; outbox row with key
                      sched:<id>:<due_at> } → after commit, hand the outbox row to a worker.
Messages whose timers fire together share one such transaction (10,000 due in 20 s would
otherwise be 10,000 commits, each a round of database calls).
A crash before the commit: the row is still due and fires at start-up. A crash after: the
outbox row is pending and is resent with the same transaction id (Synapse dedupes)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.database import transaction
from bridge.matrix.outbox import Outbox
from bridge.timers import Timers

from ...bot_types import notice
from ..voice import TherapistVoice
from .repo import DONE, SKIPPED, Scheduled, ScheduleRepo
from .timeparse import local_text, next_fire

log = logging.getLogger("alcove.schedule")

FIRE_BATCH = 200
"""At most this many messages are fired in one transaction."""


class ScheduleService:
    def __init__(
        self,
        config: Config,
        db: Database,
        outbox: Outbox,
        voice: TherapistVoice,
        timers: Timers,
        clock: Clock,
        management_room: Any,
    ) -> None:
        self.config = config
        self.db = db
        self.repo = ScheduleRepo(db)
        self.outbox = outbox
        self.voice = voice
        self.timers = timers
        self.clock = clock
        self.management_room = management_room  # async (user_id) -> room_id | None
        self.fired = 0
        self._due: list[tuple[int, asyncio.Future[None]]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def tz(self) -> Any:
        return self.config.practice.timezone

    def now(self) -> datetime:
        return self.clock.now().astimezone(UTC)

    async def create(
        self,
        therapist: str,
        room_id: str,
        content: dict[str, Any],
        due: datetime,
        rule: str | None,
        origin_event: str,
    ) -> Scheduled:
        row = await self.repo.add(
            therapist,
            room_id,
            content,
            rule,
            int(due.timestamp() * 1000),
            origin_event,
            ms(self.clock),
        )
        self._arm(row)
        return row

    def _arm(self, row: Scheduled) -> None:
        when = datetime.fromtimestamp(row.due_at / 1000, UTC)
        self.timers.arm(f"sched:{row.id}", when, self.fire, row.id)

    async def start(self) -> int:
        """Re-arm every pending message from the database; overdue ones fire at once."""
        rows = await self.repo.pending()
        for row in rows:
            self._arm(row)
        if rows:
            log.info("Re-armed %d scheduled messages", len(rows))
        return len(rows)

    async def pending_of(self, therapist: str) -> list[Scheduled]:
        return await self.repo.pending_of(therapist)

    async def cancel(self, therapist: str, schedule_id: int, event_id: str) -> bool:
        """``event_id`` is the cancelling command's: handled again, it is cancelled again."""
        if await self.repo.cancel(schedule_id, therapist, event_id):
            self.timers.cancel(f"sched:{schedule_id}")
            return True
        return False

    async def fire(self, schedule_id: int) -> None:
        """The timer of one message. Messages whose timers fire together are fired as a batch:
        one read, one transaction (claims + outbox rows), one commit for all of them."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._due.append((schedule_id, fut))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain(), name="schedule-fire")
        await fut

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # timers due at the same moment join this batch
        while self._due:
            batch, self._due = self._due[:FIRE_BATCH], self._due[FIRE_BATCH:]
            ids = list(dict.fromkeys(i for i, _ in batch))
            try:
                try:
                    one_by_one = await self._fire_many(ids)
                except Exception:
                    log.exception("Firing %d scheduled messages together failed", len(ids))
                    one_by_one = ids
                for schedule_id in one_by_one:
                    try:
                        await self._fire_one(schedule_id)
                    except Exception:  # the database is gone: the row fires at the next start
                        log.exception("Scheduled message %d could not be fired", schedule_id)
            finally:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def _fire_many(self, ids: list[int]) -> list[int]:
        """Fire the plain cases (pending one-off messages that are due and not skipped) together;
        returns the ids left for ``_fire_one`` (recurring, early, skipped)."""
        now_ms = ms(self.clock)
        plain: list[tuple[Scheduled, str, dict[str, Any]]] = []
        others: list[int] = []
        for row in await self.repo.get_many(ids):
            if row.status != "pending":
                continue
            late = (now_ms - row.due_at) / 1000 > self.config.schedule.grace_seconds
            if (
                row.rule
                or row.due_at > now_ms + 1000
                or (late and self.config.schedule.late_policy == "skip")
            ):
                others.append(row.id)
                continue
            speaker = await self.voice.speaker(row.therapist_id, row.room_id)
            plain.append((row, speaker, self._content(row, speaker, late)))
        if plain:
            async with transaction(self.db):
                claimed = await self.repo.claim_once_many([row.id for row, _, _ in plain])
                outs = await self.outbox.prepare_many(
                    [
                        (f"sched:{row.id}:{row.due_at}", speaker, row.room_id, content)
                        for row, speaker, content in plain
                        if row.id in claimed
                    ]
                )
            for out in outs:
                self.outbox.submit(out)
            self.fired += len(outs)
        return others

    async def _fire_one(self, schedule_id: int) -> None:
        try:
            await self._fire(schedule_id)
        except Exception:
            # The row is still pending: it fires again at the next start (or re-arm below).
            log.exception("Scheduled message %d could not be fired; retrying in 30 s", schedule_id)
            row = await self.repo.get(schedule_id)
            if row is not None and row.status == "pending":
                retry = datetime.fromtimestamp(ms(self.clock) / 1000 + 30, UTC)
                self.timers.arm(f"sched:{row.id}", retry, self.fire, schedule_id)

    def _content(self, row: Scheduled, speaker: str, late: bool) -> dict[str, Any]:
        content = self.voice.content(row.therapist_id, speaker, row.content, automated=True)
        if late and isinstance(content.get("body"), str):
            due_text = local_text(datetime.fromtimestamp(row.due_at / 1000, UTC), self.tz)
            content = {
                **content,
                "body": f"{content['body']}\n(Scheduled for {due_text}; sent late.)",
            }
        return content

    async def _fire(self, schedule_id: int) -> None:
        row = await self.repo.get(schedule_id)
        if row is None or row.status != "pending":
            return
        now_ms = ms(self.clock)
        if row.due_at > now_ms + 1000:  # woken early (clock change): wait for the real time
            self._arm(row)
            return
        late_s = (now_ms - row.due_at) / 1000
        late = late_s > self.config.schedule.grace_seconds
        next_due = None
        if row.rule:
            after = max(self.now(), datetime.fromtimestamp(row.due_at / 1000, UTC))
            next_due = int(next_fire(row.rule, self.tz, after).timestamp() * 1000)
        if late and self.config.schedule.late_policy == "skip":
            await self._skip(row, next_due)
            return
        speaker = await self.voice.speaker(row.therapist_id, row.room_id)
        content = self._content(row, speaker, late)
        async with transaction(self.db):
            if not await self.repo.claim(row.id, row.due_at, next_due, DONE):
                return  # fired already (a concurrent timer or a previous run)
            out, _ = await self.outbox.prepare(
                f"sched:{row.id}:{row.due_at}", speaker, row.room_id, content
            )
        self.outbox.submit(out)
        self.fired += 1
        if next_due is not None:
            self._arm(replace(row, due_at=next_due))

    async def _skip(self, row: Scheduled, next_due: int | None) -> None:
        if not await self.repo.claim(row.id, row.due_at, next_due, SKIPPED):
            return
        due_text = local_text(datetime.fromtimestamp(row.due_at / 1000, UTC), self.tz)
        log.warning("Skipped scheduled message %d (due %s, Alcove was down)", row.id, due_text)
        room = await self.management_room(row.therapist_id)
        if room:
            await self.outbox.send(
                f"sched-skip:{row.id}:{row.due_at}",
                self.voice.gateway.bot_user_id,
                room,
                notice(
                    f"Scheduled message #{row.id} due {due_text} was skipped: Alcove was not "
                    "running at that time (late policy: skip)."
                ),
            )
        if next_due is not None:
            self._arm(replace(row, due_at=next_due))
