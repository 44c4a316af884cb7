"""What the two queue tables (inbox_event, outbox) share: the bookkeeping of failed attempts
that bridge/queue.py's ``Store`` asks for."""

from __future__ import annotations

from typing import ClassVar

from mautrix.util.async_db import Database

FAILED = "failed"


class QueueTable:
    table: ClassVar[str]
    payload: ClassVar[str]
    """The column with what was received or is to be sent: dropped when a row is given up."""
    finished_at: ClassVar[str | None]
    """The column that records when a row was given up, if the table keeps that."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def mark_retry(self, seq: int, attempts: int, next_attempt_at: int, error: str) -> None:
        await self.db.execute(
            f"UPDATE {self.table} SET attempts = $1, next_attempt_at = $2, error = $3"
            " WHERE seq = $4",
            attempts,
            next_attempt_at,
            error,
            seq,
        )

    async def mark_failed(self, seq: int, attempts: int, now_ms: int, error: str) -> None:
        finished = f", {self.finished_at} = $5" if self.finished_at else ""
        await self.db.execute(
            f"UPDATE {self.table} SET status = $1, attempts = $2, {self.payload} = NULL,"
            f" error = $3{finished} WHERE seq = $4",
            FAILED,
            attempts,
            error,
            seq,
            *([now_ms] if self.finished_at else []),
        )
