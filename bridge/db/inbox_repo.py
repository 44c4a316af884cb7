"""Inbox rows: events Synapse pushed, persisted before Alcove answers 200."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .database import transaction
from .queue_repo import FAILED as FAILED
from .queue_repo import QueueTable

PENDING = "pending"
DONE = "done"
ADD_CHUNK = 100  # events per INSERT: 300 parameters, well below either database's limit


@dataclass(frozen=True)
class InboxRow:
    seq: int
    event_id: str
    room_id: str
    event: dict[str, Any]
    attempts: int
    next_attempt_at: int
    received_at: int


def _row(record: Any) -> InboxRow:
    return InboxRow(
        seq=record["seq"],
        event_id=record["event_id"],
        room_id=record["room_id"],
        event=json.loads(record["body"]),
        attempts=record["attempts"],
        next_attempt_at=record["next_attempt_at"],
        received_at=record["received_at"],
    )


class InboxRepo(QueueTable):
    table = "inbox_event"
    payload = "body"
    finished_at = "finished_at"

    async def add(self, txn_id: str, events: list[dict[str, Any]], now_ms: int) -> list[InboxRow]:
        """Persist a transaction's events in one database transaction. Returns only the events
        not seen before (dedupe by event id), in the order Synapse sent them."""
        new: list[InboxRow] = []
        async with transaction(self.db):
            for start in range(0, len(events), ADD_CHUNK):
                new += await self._add_chunk(txn_id, events[start : start + ADD_CHUNK], now_ms)
        return new

    async def _add_chunk(
        self, txn_id: str, events: list[dict[str, Any]], now_ms: int
    ) -> list[InboxRow]:
        """One multi-row INSERT: on SQLite every statement is a round trip to the database
        thread, so one per event would cost more than the writing."""
        values = []
        args: list[Any] = [txn_id, PENDING, now_ms]
        for event in events:
            n = len(args)
            values.append(f"(${n + 1}, ${n + 2}, $1, ${n + 3}, $2, 0, $3, $3)")
            args += [event["event_id"], event["room_id"], json.dumps(event)]
        inserted = await self.db.fetch(
            "INSERT INTO inbox_event (event_id, room_id, txn_id, body, status, attempts,"
            " next_attempt_at, received_at) VALUES "
            + ", ".join(values)
            + " ON CONFLICT (event_id) DO NOTHING RETURNING seq, event_id",
            *args,
        )
        seqs = {r["event_id"]: r["seq"] for r in inserted}
        new: list[InboxRow] = []
        for event in events:  # in the transaction's order; a repeated id counts once
            seq = seqs.pop(event["event_id"], None)
            if seq is not None:
                new.append(
                    InboxRow(seq, event["event_id"], event["room_id"], event, 0, now_ms, now_ms)
                )
        return new

    async def pending(self) -> list[InboxRow]:
        rows = await self.db.fetch(
            "SELECT seq, event_id, room_id, body, attempts, next_attempt_at, received_at"
            " FROM inbox_event WHERE status = $1 ORDER BY seq",
            PENDING,
        )
        return [_row(r) for r in rows]

    async def finish_many(self, items: list[tuple[int, int]]) -> None:
        """(seq, finished at) for each handled event, marked done in one statement. The event
        JSON is dropped: only the id remains — a content-free "seen" marker, so a replay of the
        same event (catch-up after a restart) is recognised and never handled twice. Session
        rooms included: their ids are kept like any other, their text is not."""
        if not items:
            return
        # In one transaction: on SQLite each statement outside one commits (and syncs) alone.
        async with transaction(self.db):
            await self.db.executemany(
                "UPDATE inbox_event SET status = $1, body = NULL, finished_at = $2,"
                " error = NULL WHERE seq = $3",
                [(DONE, now_ms, seq) for seq, now_ms in items],
            )

    async def status_of(self, event_id: str) -> str | None:
        value = await self.db.fetchval(
            "SELECT status FROM inbox_event WHERE event_id = $1", event_id
        )
        return str(value) if value is not None else None

    async def depth(self) -> tuple[int, int | None]:
        """(number of unprocessed events, received_at of the oldest one)."""
        row = await self.db.fetchrow(
            "SELECT COUNT(*) AS n, MIN(received_at) AS oldest FROM inbox_event WHERE status = $1",
            PENDING,
        )
        assert row is not None
        return int(row["n"]), (int(row["oldest"]) if row["oldest"] is not None else None)

    async def received_range(self) -> tuple[int, int] | None:
        """(first, last) received_at of the events still on record; None when empty."""
        row = await self.db.fetchrow(
            "SELECT MIN(received_at) AS first, MAX(received_at) AS last FROM inbox_event"
        )
        if row is None or row["first"] is None:
            return None
        return int(row["first"]), int(row["last"])

    async def prune(self, finished_before_ms: int) -> None:
        """Forget processed events once no replay can be expected (bounded dedupe window)."""
        await self.db.execute(
            "DELETE FROM inbox_event WHERE status <> $1 AND finished_at < $2",
            PENDING,
            finished_before_ms,
        )
