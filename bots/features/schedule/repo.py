"""Scheduled messages: the database is the truth for what fires when."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

PENDING, DONE, CANCELLED, SKIPPED = "pending", "done", "cancelled", "skipped"


@dataclass(frozen=True)
class Scheduled:
    id: int
    therapist_id: str
    room_id: str
    content: dict[str, Any]
    rule: str | None
    due_at: int
    status: str


_COLS = "id, therapist_id, room_id, content, rule, due_at, status"


def _row(r: Any) -> Scheduled:
    return Scheduled(
        r["id"],
        r["therapist_id"],
        r["room_id"],
        json.loads(r["content"] or "{}"),
        r["rule"],
        r["due_at"],
        r["status"],
    )


class ScheduleRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self,
        therapist_id: str,
        room_id: str,
        content: dict[str, Any],
        rule: str | None,
        due_at: int,
        origin_event: str,
        now_ms: int,
    ) -> Scheduled:
        await self.db.execute(
            "INSERT INTO scheduled_message (therapist_id, room_id, content, rule, due_at, status,"
            " origin_event, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (origin_event) DO NOTHING",
            therapist_id,
            room_id,
            json.dumps(content),
            rule,
            due_at,
            PENDING,
            origin_event,
            now_ms,
        )
        row = await self.db.fetchrow(
            f"SELECT {_COLS} FROM scheduled_message WHERE origin_event = $1", origin_event
        )
        assert row is not None
        return _row(row)

    async def get(self, schedule_id: int) -> Scheduled | None:
        row = await self.db.fetchrow(
            f"SELECT {_COLS} FROM scheduled_message WHERE id = $1", schedule_id
        )
        return _row(row) if row else None

    async def get_many(self, ids: list[int]) -> list[Scheduled]:
        if not ids:
            return []
        marks = ", ".join(f"${i + 1}" for i in range(len(ids)))
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM scheduled_message WHERE id IN ({marks})", *ids
        )
        return [_row(r) for r in rows]

    async def claim_once_many(self, ids: list[int]) -> set[int]:
        """Close the pending one-off messages among ``ids``; returns the ids this call closed
        (a row already closed by another caller is not among them)."""
        if not ids:
            return set()
        marks = ", ".join(f"${i + 3}" for i in range(len(ids)))
        rows = await self.db.fetch(
            "UPDATE scheduled_message SET status = $1, content = '{}',"
            " fired_count = fired_count + 1"
            f" WHERE status = $2 AND rule IS NULL AND id IN ({marks}) RETURNING id",
            DONE,
            PENDING,
            *ids,
        )
        return {int(r["id"]) for r in rows}

    async def pending(self) -> list[Scheduled]:
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM scheduled_message WHERE status = $1 ORDER BY due_at", PENDING
        )
        return [_row(r) for r in rows]

    async def pending_of(self, therapist_id: str) -> list[Scheduled]:
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM scheduled_message WHERE status = $1 AND therapist_id = $2"
            " ORDER BY due_at",
            PENDING,
            therapist_id,
        )
        return [_row(r) for r in rows]

    async def claim(self, schedule_id: int, due_at: int, next_due: int | None, status: str) -> bool:
        """Move a pending row past ``due_at``: to ``next_due`` (recurring) or to ``status``.
        Only one caller can win for a given (id, due_at); the loser gets False."""
        if next_due is not None:
            got = await self.db.fetchval(
                "UPDATE scheduled_message SET due_at = $1, fired_count = fired_count + 1"
                " WHERE id = $2 AND status = $3 AND due_at = $4 RETURNING id",
                next_due,
                schedule_id,
                PENDING,
                due_at,
            )
        else:
            # A one-off message is not kept once it has been handed to the outbox.
            got = await self.db.fetchval(
                "UPDATE scheduled_message SET status = $1, content = '{}',"
                " fired_count = fired_count + 1"
                " WHERE id = $2 AND status = $3 AND due_at = $4 RETURNING id",
                status,
                schedule_id,
                PENDING,
                due_at,
            )
        return got is not None

    async def cancel(self, schedule_id: int, therapist_id: str, event_id: str) -> bool:
        """Cancel a pending message of this therapist, recording the command's event. True also
        when this same event cancelled it before: the command handled again (after a crash
        before its reply) must not answer that there is no such message."""
        got = await self.db.fetchval(
            "UPDATE scheduled_message SET status = $1, content = '{}', cancelled_by = $5"
            " WHERE id = $2 AND therapist_id = $3"
            " AND (status = $4 OR (status = $1 AND cancelled_by = $5)) RETURNING id",
            CANCELLED,
            schedule_id,
            therapist_id,
            PENDING,
            event_id,
        )
        return got is not None
