"""Idempotency keys of the API: one row per (integration, key) with the request's hash and,
once answered, the answer."""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database


@dataclass(frozen=True)
class Stored:
    request_hash: str
    status: int | None
    response: str | None


class IdempotencyRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, token_name: str, key: str, request_hash: str, now_ms: int) -> Stored:
        """The key's row: this request's (new), or the one stored by an earlier request."""
        await self.db.execute(
            "INSERT INTO api_request (token_name, key, request_hash, created_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (token_name, key) DO NOTHING",
            token_name,
            key,
            request_hash,
            now_ms,
        )
        row = await self.db.fetchrow(
            "SELECT request_hash, status, response FROM api_request"
            " WHERE token_name = $1 AND key = $2",
            token_name,
            key,
        )
        assert row is not None
        return Stored(row["request_hash"], row["status"], row["response"])

    async def answer(self, token_name: str, key: str, status: int, response: str) -> None:
        await self.db.execute(
            "UPDATE api_request SET status = $1, response = $2 WHERE token_name = $3 AND key = $4",
            status,
            response,
            token_name,
            key,
        )

    async def release(self, token_name: str, key: str) -> None:
        """A request that was refused: its key may be used again."""
        await self.db.execute(
            "DELETE FROM api_request WHERE token_name = $1 AND key = $2 AND status IS NULL",
            token_name,
            key,
        )
