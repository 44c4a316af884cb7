"""Scheduled messages: one-off and recurring, in the therapist's time zone, exactly once.

create → row (truth) + timer.  timer → fire(id):
    one transaction { claim the row (move due_at / close it) ; outbox row with key
                      sched:<id>:<due_at> } → after commit, hand the outbox row to a worker.
A crash before the commit: the row is still due and fires at start-up. A crash after: the
outbox row is pending and is resent with the same transaction id (Synapse dedupes)."""

from __future__ import annotations

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

    async def cancel(self, therapist: str, schedule_id: int) -> bool:
        if await self.repo.cancel(schedule_id, therapist):
            self.timers.cancel(f"sched:{schedule_id}")
            return True
        return False

    async def fire(self, schedule_id: int) -> None:
        try:
            await self._fire(schedule_id)
        except Exception:
            # The row is still pending: it fires again at the next start (or re-arm below).
            log.exception("Scheduled message %d could not be fired; retrying in 30 s", schedule_id)
            row = await self.repo.get(schedule_id)
            if row is not None and row.status == "pending":
                retry = datetime.fromtimestamp(ms(self.clock) / 1000 + 30, UTC)
                self.timers.arm(f"sched:{row.id}", retry, self.fire, schedule_id)

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
        speaker = await self.voice.speaker(row.therapist_id)
        content = self.voice.content(row.therapist_id, speaker, row.content, automated=True)
        if late and isinstance(content.get("body"), str):
            due_text = local_text(datetime.fromtimestamp(row.due_at / 1000, UTC), self.tz)
            content = {
                **content,
                "body": f"{content['body']}\n(Scheduled for {due_text}; sent late.)",
            }
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
