"""Out of office: a manual `!away` state and per-therapist working hours. A client's message in
their 1:1 while the therapist is away gets one notice per conversation per throttle window;
notices, bots and auto-replies are never answered; the therapist's own message resets it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.database import transaction
from bridge.db.remembered import Remembered
from bridge.matrix.outbox import Outbox

from ..conversations.repo import DM, REMEMBERED, Room
from ..voice import AUTOMATED, TherapistVoice

MARK = "org.alcove.auto_reply"


class AwayService:
    def __init__(
        self, config: Config, db: Database, outbox: Outbox, voice: TherapistVoice, clock: Clock
    ) -> None:
        self.config = config
        self.db = db
        self.outbox = outbox
        self.voice = voice
        self.clock = clock
        self._manual: Remembered[str, tuple[date | None, str | None] | None] = Remembered(
            len(config.staff) + 100
        )
        self._answered: Remembered[str, bool] = Remembered(REMEMBERED)
        """Whether a room has an ``auto_reply`` row: the therapist's every message would
        otherwise cost a write to reset a throttle that is almost never set."""

    async def _was_answered(self, room_id: str) -> bool:
        async def read() -> bool:
            found = await self.db.fetchval("SELECT 1 FROM auto_reply WHERE room_id = $1", room_id)
            return found is not None

        return await self._answered.get(room_id, read)

    def local_now(self) -> datetime:
        return self.clock.now().astimezone(self.config.practice.timezone)

    async def set_away(self, therapist: str, until: date | None, message: str | None) -> None:
        async with self._manual.writing(therapist):
            await self.db.execute(
                "INSERT INTO away (therapist_id, until_date, message) VALUES ($1, $2, $3)"
                " ON CONFLICT (therapist_id) DO UPDATE SET until_date = $2, message = $3",
                therapist,
                until.isoformat() if until else None,
                message,
            )

    async def clear(self, therapist: str) -> bool:
        async with self._manual.writing(therapist):
            got = await self.db.fetchval(
                "DELETE FROM away WHERE therapist_id = $1 RETURNING therapist_id", therapist
            )
        return got is not None

    async def manual(self, therapist: str) -> tuple[date | None, str | None] | None:
        """The therapist's `!away` state (asked at every message from one of their clients)."""

        async def read() -> tuple[date | None, str | None] | None:
            row = await self.db.fetchrow(
                "SELECT until_date, message FROM away WHERE therapist_id = $1", therapist
            )
            if row is None:
                return None
            until = date.fromisoformat(row["until_date"]) if row["until_date"] else None
            return until, row["message"]

        return await self._manual.get(therapist, read)

    async def reply_text(self, therapist: str) -> str | None:
        """What to answer right now, or None when the therapist is available."""
        now = self.local_now()
        manual = await self.manual(therapist)
        if manual is not None:
            until, message = manual
            if until is None or now.date() <= until:
                return message or self.config.away.message
        member = self.config.staff_member(therapist)
        if member and member.working_hours and not member.working_hours.contains(now):
            return self.config.away.after_hours_message
        return None

    async def on_message(self, event: dict[str, Any], room: Room) -> None:
        if room.kind != DM or room.therapist_id is None:
            return
        content = event.get("content") or {}
        sender = event.get("sender")
        if sender == room.therapist_id:
            if not content.get(AUTOMATED) and not content.get(MARK):
                # The therapist wrote: the next away message may go out again.
                if await self._was_answered(room.room_id):
                    async with self._answered.writing(room.room_id):
                        await self.db.execute(
                            "DELETE FROM auto_reply WHERE room_id = $1", room.room_id
                        )
            return
        if sender != room.client_id or content.get("msgtype") == "m.notice" or content.get(MARK):
            return
        text = await self.reply_text(room.therapist_id)
        if text is None:
            return
        # Who speaks is asked of the homeserver first: the throttle claim and the notice are
        # then committed together, so a failure or a crash in between cannot leave the window
        # claimed with no notice sent (the replayed event would find it claimed).
        speaker = await self.voice.speaker(room.therapist_id, room.room_id)
        body = self.voice.content(
            room.therapist_id, speaker, {"msgtype": "m.notice", "body": text}, automated=True
        )
        now = ms(self.clock)
        window = int(self.config.away.throttle_hours * 3600 * 1000)
        async with self._answered.writing(room.room_id), transaction(self.db):
            claimed = await self.db.fetchval(
                "INSERT INTO auto_reply (room_id, sent_at) VALUES ($1, $2)"
                " ON CONFLICT (room_id) DO UPDATE SET sent_at = $2"
                " WHERE auto_reply.sent_at < $3 RETURNING room_id",
                room.room_id,
                now,
                now - window,
            )
            if claimed is None:
                return  # answered within the throttle window
            row, _ = await self.outbox.prepare(
                f"away:{event['event_id']}", speaker, room.room_id, {**body, MARK: True}
            )
        self.outbox.submit(row)
