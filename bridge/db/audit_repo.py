"""The audit log: who did what, to whom, where, when. Never message content."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

from ..clock import Clock, ms


@dataclass(frozen=True)
class AuditEntry:
    at: int
    actor: str
    action: str
    target: str | None
    room_id: str | None
    detail: dict[str, Any]


class AuditLog:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def record(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        room_id: str | None = None,
        **detail: Any,
    ) -> None:
        await self.db.execute(
            "INSERT INTO audit (at, actor, action, target, room_id, detail)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            ms(self.clock),
            actor,
            action,
            target,
            room_id,
            json.dumps(detail, sort_keys=True),
        )

    async def entries(
        self, action: str | None = None, target: str | None = None
    ) -> list[AuditEntry]:
        if action is not None and target is not None:
            rows = await self.db.fetch(
                "SELECT at, actor, action, target, room_id, detail FROM audit"
                " WHERE action = $1 AND target = $2 ORDER BY id",
                action,
                target,
            )
        elif action is None:
            rows = await self.db.fetch(
                "SELECT at, actor, action, target, room_id, detail FROM audit ORDER BY id"
            )
        else:
            rows = await self.db.fetch(
                "SELECT at, actor, action, target, room_id, detail FROM audit"
                " WHERE action = $1 ORDER BY id",
                action,
            )
        return [
            AuditEntry(
                r["at"],
                r["actor"],
                r["action"],
                r["target"],
                r["room_id"],
                json.loads(r["detail"] or "{}"),
            )
            for r in rows
        ]
