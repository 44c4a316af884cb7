"""Questions that wait for the sender's next event — a confirmation (`!yes` / `!no`) or a
captured input (the message after `!blast all`) — kept so that answering them is safe to
replay.

The inbox hands every event over at least once: after a crash, or a temporary error, the same
event is handled again. So an answer is never consumed by deleting it; it is *marked used by
the answering event's id*, and a replay of that event finds the same payload and gives the same
answer, while any other event finds nothing. One open question per sender and room (a new one
replaces it); ``asked_by`` remembers the asking event, so a replay of that event asks nothing
new. Housekeeping deletes open questions once expired and used ones once the inbox has
forgotten the event that used them (no replay of it can come any more)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

TABLES = ("confirmation", "pending_input")


@dataclass(frozen=True)
class Answer:
    kind: str
    payload: dict[str, Any]
    expires_at: int


def _answer(row: Any) -> Answer:
    return Answer(str(row["kind"]), json.loads(row["payload"]), int(row["expires_at"]))


class AnswerRepo:
    def __init__(self, db: Database, table: str) -> None:
        if table not in TABLES:
            raise ValueError(table)
        self.db = db
        self.table = table

    async def asked_by(self, event_id: str) -> bool:
        """Whether ``event_id`` already asked a question (open, used or expired-but-kept)."""
        found = await self.db.fetchval(
            f"SELECT 1 FROM {self.table} WHERE asked_by = $1 LIMIT 1", event_id
        )
        return found is not None

    async def put(
        self,
        room_id: str,
        user_id: str,
        kind: str,
        payload: dict[str, Any],
        expires_at: int,
        asked_by: str,
    ) -> None:
        """The open question of ``user_id`` in ``room_id`` (replacing an open one)."""
        await self.db.execute(
            f"INSERT INTO {self.table} (room_id, user_id, kind, payload, expires_at, asked_by)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (room_id, user_id) WHERE used_by IS NULL DO UPDATE SET"
            " kind = $3, payload = $4, expires_at = $5, asked_by = $6",
            room_id,
            user_id,
            kind,
            json.dumps(payload),
            expires_at,
            asked_by,
        )

    async def used_by(self, event_id: str) -> Answer | None:
        """What ``event_id`` used when it was handled before (a replay), if anything."""
        row = await self.db.fetchrow(
            f"SELECT kind, payload, expires_at FROM {self.table} WHERE used_by = $1", event_id
        )
        return _answer(row) if row else None

    async def use(self, room_id: str, user_id: str, event_id: str, now_ms: int) -> Answer | None:
        """Mark the open question of ``user_id`` in ``room_id`` used by ``event_id``, in one
        statement; returns it (expired or not), or None when there is none."""
        row = await self.db.fetchrow(
            f"UPDATE {self.table} SET used_by = $3, used_at = $4"
            " WHERE room_id = $1 AND user_id = $2 AND used_by IS NULL"
            " RETURNING kind, payload, expires_at",
            room_id,
            user_id,
            event_id,
            now_ms,
        )
        return _answer(row) if row else None

    async def drop_payload(self, event_id: str) -> None:
        """Keep only the fact that ``event_id`` used a question (a cancel needs no payload)."""
        await self.db.execute(
            f"UPDATE {self.table} SET payload = '{{}}' WHERE used_by = $1", event_id
        )

    async def delete_used(self, event_id: str) -> None:
        await self.db.execute(f"DELETE FROM {self.table} WHERE used_by = $1", event_id)

    async def forget(self, now_ms: int) -> int:
        """Delete open questions past their expiry, and used ones whose answering event the
        inbox no longer holds (pruned after its dedupe window, or a session room's event,
        deleted once handled): nothing can replay those. Returns how many rows went."""
        expired = await self.db.fetch(
            f"DELETE FROM {self.table} WHERE used_by IS NULL AND expires_at < $1 RETURNING id",
            now_ms,
        )
        used = await self.db.fetch(
            f"DELETE FROM {self.table} WHERE used_by IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM inbox_event i WHERE i.event_id = {self.table}.used_by)"
            " RETURNING id"
        )
        return len(expired) + len(used)
