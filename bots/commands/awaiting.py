""" "Send me the next message": a command can ask for the sender's next message in the room
(an image, a file, a voice message) instead of text in the command line. Stored in the
database with an expiry, one open per sender per room. Capturing is safe to replay: the
message that is captured marks the input used by its event id, so the same message handled
again captures the same input (see bridge/db/answers_repo.py)."""

from __future__ import annotations

from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms
from bridge.db.answers_repo import AnswerRepo


class AwaitingInput:
    def __init__(self, db: Database, clock: Clock, ttl_seconds: float = 600.0) -> None:
        self.repo = AnswerRepo(db, "pending_input")
        self.clock = clock
        self.ttl_ms = int(ttl_seconds * 1000)

    async def expect(
        self, room_id: str, user_id: str, kind: str, payload: dict[str, Any], asked_by: str
    ) -> None:
        """Wait for the next message of ``user_id`` in ``room_id``. ``asked_by`` is the event
        asking: a replay of it expects nothing new."""
        if await self.repo.asked_by(asked_by):
            return
        await self.repo.put(room_id, user_id, kind, payload, ms(self.clock) + self.ttl_ms, asked_by)

    async def take(
        self, room_id: str, user_id: str, event_id: str
    ) -> tuple[str, dict[str, Any]] | None:
        """The input the message ``event_id`` answers, if one was waiting (or if this same
        message took it before: a replay)."""
        found = await self.repo.used_by(event_id)
        if found is None:
            found = await self.repo.use(room_id, user_id, event_id, ms(self.clock))
            if found is not None and found.expires_at < ms(self.clock):
                await self.repo.delete_used(event_id)
                return None
        return (found.kind, found.payload) if found else None

    async def forget(self) -> int:
        """Housekeeping: expired inputs and used ones nothing can replay any more."""
        return await self.repo.forget(ms(self.clock))
