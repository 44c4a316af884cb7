"""Outbox rows: every message Alcove sends, kept until the homeserver accepted it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

from .database import transaction
from .queue_repo import FAILED as FAILED
from .queue_repo import QueueTable

PENDING = "pending"
SENT = "sent"


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    key: str
    sender: str
    room_id: str
    event_type: str
    content: dict[str, Any] | None
    txn_id: str
    status: str
    attempts: int
    next_attempt_at: int
    event_id: str | None
    error: str | None


_COLUMNS = (
    "seq, key, sender, room_id, event_type, content, txn_id, status, attempts,"
    " next_attempt_at, event_id, error"
)


def _row(r: Any) -> OutboxRow:
    return OutboxRow(
        seq=r["seq"],
        key=r["key"],
        sender=r["sender"],
        room_id=r["room_id"],
        event_type=r["event_type"],
        content=json.loads(r["content"]) if r["content"] is not None else None,
        txn_id=r["txn_id"],
        status=r["status"],
        attempts=r["attempts"],
        next_attempt_at=r["next_attempt_at"],
        event_id=r["event_id"],
        error=r["error"],
    )


class OutboxRepo(QueueTable):
    table = "outbox"
    payload = "content"
    finished_at = None

    async def insert_many(
        self, items: list[tuple[str, str, str, str, dict[str, Any], str]], now_ms: int
    ) -> list[tuple[OutboxRow, bool]]:
        """(key, sender, room_id, event_type, content, txn_id) for each: one statement for all,
        keys that exist already are kept as they are. Returns each row and whether it is new,
        in the items' order."""
        if not items:
            return []
        values = []
        args: list[Any] = [PENDING, now_ms]
        for key, sender, room_id, event_type, content, txn_id in items:
            n = len(args)
            values.append(
                f"(${n + 1}, ${n + 2}, ${n + 3}, ${n + 4}, ${n + 5}, ${n + 6}, $1, 0, $2, $2)"
            )
            args += [key, sender, room_id, event_type, json.dumps(content), txn_id]
        inserted = await self.db.fetch(
            "INSERT INTO outbox (key, sender, room_id, event_type, content, txn_id, status,"
            " attempts, next_attempt_at, created_at) VALUES "
            + ", ".join(values)
            + " ON CONFLICT (key) DO NOTHING RETURNING seq, key",
            *args,
        )
        seqs = {r["key"]: r["seq"] for r in inserted}
        rows: list[tuple[OutboxRow, bool]] = []
        for key, sender, room_id, event_type, content, txn_id in items:
            if key in seqs:  # new (its first time in items): exactly what was just written
                row = OutboxRow(
                    seqs.pop(key),
                    key,
                    sender,
                    room_id,
                    event_type,
                    content,
                    txn_id,
                    PENDING,
                    0,
                    now_ms,
                    None,
                    None,
                )
                rows.append((row, True))
            else:  # written before (a re-run after a crash, or twice in items): as it is now
                existing = await self.get(key)
                assert existing is not None
                rows.append((existing, False))
        return rows

    async def get(self, key: str) -> OutboxRow | None:
        r = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM outbox WHERE key = $1", key)
        return _row(r) if r else None

    async def pending(self) -> list[OutboxRow]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM outbox WHERE status = $1 ORDER BY seq", PENDING
        )
        return [_row(r) for r in rows]

    async def finish_many(self, items: list[tuple[int, str, int]]) -> None:
        """Sent: (seq, event id, sent at) for each, in one transaction (bridge/batcher.py)."""
        # One statement for the batch (one database round trip, not one per message). Content
        # is dropped once the homeserver has it: Alcove is not a message archive.
        async with transaction(self.db):
            await self.db.executemany(
                "UPDATE outbox SET status = $1, event_id = $2, sent_at = $3, content = NULL,"
                " error = NULL WHERE seq = $4",
                [(SENT, event_id, now_ms, seq) for seq, event_id, now_ms in items],
            )

    async def known_event_ids(self, event_ids: list[str]) -> set[str]:
        """Those of ``event_ids`` that are messages Alcove sent (the homeserver's answer)."""
        found: set[str] = set()
        for start in range(0, len(event_ids), 1000):  # well below the databases' $n limits
            chunk = event_ids[start : start + 1000]
            marks = ", ".join(f"${n}" for n in range(1, len(chunk) + 1))
            rows = await self.db.fetch(
                f"SELECT event_id FROM outbox WHERE event_id IN ({marks})", *chunk
            )
            found |= {str(r["event_id"]) for r in rows}
        return found

    async def pending_senders(self) -> set[tuple[str, str]]:
        """(sender, room_id) of every message not yet marked sent."""
        rows = await self.db.fetch(
            "SELECT DISTINCT sender, room_id FROM outbox WHERE status = $1", PENDING
        )
        return {(str(r["sender"]), str(r["room_id"])) for r in rows}

    async def count(self, status: str) -> int:
        return int(await self.db.fetchval("SELECT COUNT(*) FROM outbox WHERE status = $1", status))


class DeviceRepo:
    """The device id Alcove uses for each acting user (so Synapse dedupes resends)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str) -> str | None:
        value = await self.db.fetchval(
            "SELECT device_id FROM acting_device WHERE user_id = $1", user_id
        )
        return str(value) if value is not None else None

    async def put(self, user_id: str, device_id: str) -> None:
        await self.db.execute(
            "INSERT INTO acting_device (user_id, device_id) VALUES ($1, $2)"
            " ON CONFLICT (user_id) DO UPDATE SET device_id = $2",
            user_id,
            device_id,
        )
