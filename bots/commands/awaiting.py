""" "Send me the next message": a command can ask for the sender's next message in the room
(an image, a file, a voice message) instead of text in the command line. Stored in the
database with an expiry, one per sender per room."""

from __future__ import annotations

import json
from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms


class AwaitingInput:
    def __init__(self, db: Database, clock: Clock, ttl_seconds: float = 600.0) -> None:
        self.db = db
        self.clock = clock
        self.ttl_ms = int(ttl_seconds * 1000)

    async def expect(self, room_id: str, user_id: str, kind: str, payload: dict[str, Any]) -> None:
        await self.db.execute(
            "INSERT INTO pending_input (room_id, user_id, kind, payload, expires_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, user_id) DO UPDATE SET"
            " kind = $3, payload = $4, expires_at = $5",
            room_id,
            user_id,
            kind,
            json.dumps(payload),
            ms(self.clock) + self.ttl_ms,
        )

    async def take(self, room_id: str, user_id: str) -> tuple[str, dict[str, Any]] | None:
        row = await self.db.fetchrow(
            "SELECT kind, payload, expires_at FROM pending_input WHERE room_id = $1"
            " AND user_id = $2",
            room_id,
            user_id,
        )
        if row is None:
            return None
        await self.db.execute(
            "DELETE FROM pending_input WHERE room_id = $1 AND user_id = $2", room_id, user_id
        )
        if row["expires_at"] < ms(self.clock):
            return None
        return str(row["kind"]), json.loads(row["payload"])
