"""Text-only sessions: times, participants, status and the purge state. No content."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

SCHEDULED, PREPARED, OPEN, ENDING, ENDED, CANCELLED = (
    "scheduled",
    "prepared",
    "open",
    "ending",
    "ended",
    "cancelled",
)
LIVE = (SCHEDULED, PREPARED, OPEN)


@dataclass(frozen=True)
class Session:
    id: int
    therapist_id: str
    clients: tuple[str, ...]
    start_at: int
    end_at: int
    status: str
    room_id: str | None
    reminded: bool
    warned: bool
    delete_id: str | None
    purge_attempts: int
    left_at: int | None = None
    """When every member was removed and the messages purged; the room awaits deletion."""
    room_deleted_at: int | None = None


_COLS = (
    "id, therapist_id, clients, start_at, end_at, status, room_id, reminded, warned,"
    " delete_id, purge_attempts, left_at, room_deleted_at"
)


def _row(r: Any) -> Session:
    return Session(
        r["id"],
        r["therapist_id"],
        tuple(json.loads(r["clients"])),
        r["start_at"],
        r["end_at"],
        r["status"],
        r["room_id"],
        bool(r["reminded"]),
        bool(r["warned"]),
        r["delete_id"],
        r["purge_attempts"],
        r["left_at"],
        r["room_deleted_at"],
    )


class SessionRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self, therapist: str, clients: list[str], start_at: int, end_at: int, origin: str, now: int
    ) -> Session:
        await self.db.execute(
            "INSERT INTO text_session (therapist_id, clients, start_at, end_at, status,"
            " origin_event, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (origin_event) DO NOTHING",
            therapist,
            json.dumps(clients),
            start_at,
            end_at,
            SCHEDULED,
            origin,
            now,
        )
        row = await self.db.fetchrow(
            f"SELECT {_COLS} FROM text_session WHERE origin_event = $1", origin
        )
        assert row is not None
        return _row(row)

    async def get(self, session_id: int) -> Session | None:
        row = await self.db.fetchrow(f"SELECT {_COLS} FROM text_session WHERE id = $1", session_id)
        return _row(row) if row else None

    async def by_room(self, room_id: str) -> Session | None:
        row = await self.db.fetchrow(
            f"SELECT {_COLS} FROM text_session WHERE room_id = $1", room_id
        )
        return _row(row) if row else None

    async def session_rooms(self) -> set[str]:
        rows = await self.db.fetch(
            "SELECT room_id FROM text_session WHERE room_id IS NOT NULL AND status NOT IN ($1, $2)",
            ENDED,
            CANCELLED,
        )
        return {str(r["room_id"]) for r in rows}

    async def live_rooms(self) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT room_id, therapist_id FROM text_session WHERE room_id IS NOT NULL"
            " AND status IN ($1, $2, $3)",
            SCHEDULED,
            PREPARED,
            OPEN,
        )
        return [(str(r["room_id"]), str(r["therapist_id"])) for r in rows]

    async def unfinished(self) -> list[Session]:
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM text_session WHERE status IN ($1, $2, $3, $4) ORDER BY end_at",
            SCHEDULED,
            PREPARED,
            OPEN,
            ENDING,
        )
        return [_row(r) for r in rows]

    async def next_for_client(self, therapist: str, client_id: str, now: int) -> Session | None:
        """The client's next booked session with this therapist (JSON list match on the id)."""
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM text_session WHERE therapist_id = $1 AND status IN ($2, $3)"
            " AND start_at > $4 ORDER BY start_at",
            therapist,
            SCHEDULED,
            PREPARED,
            now,
        )
        for row in rows:
            session = _row(row)
            if client_id in session.clients:
                return session
        return None

    async def pending_purge(self) -> int:
        return int(
            await self.db.fetchval("SELECT COUNT(*) FROM text_session WHERE status = $1", ENDING)
        )

    async def of_therapist(self, therapist: str) -> list[Session]:
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM text_session WHERE therapist_id = $1 AND status IN ($2, $3, $4)"
            " ORDER BY start_at",
            therapist,
            SCHEDULED,
            PREPARED,
            OPEN,
        )
        return [_row(r) for r in rows]

    async def update(self, session_id: int, **fields: Any) -> None:
        allowed = {
            "status",
            "room_id",
            "end_at",
            "reminded",
            "warned",
            "delete_id",
            "purge_attempts",
            "purge_error",
            "messages_purged",
            "files_purged",
            "left_at",
            "room_deleted_at",
        }
        assert set(fields) <= allowed, fields
        names = sorted(fields)
        sets = ", ".join(f"{n} = ${i + 1}" for i, n in enumerate(names))
        await self.db.execute(
            f"UPDATE text_session SET {sets} WHERE id = ${len(names) + 1}",
            *(fields[n] for n in names),
            session_id,
        )

    async def rooms_awaiting_deletion(self) -> list[Session]:
        """Ended sessions whose members were removed and messages purged, but whose room (only
        state by now) is not deleted yet."""
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM text_session WHERE status IN ($1, $2) AND room_id IS NOT NULL"
            " AND left_at IS NOT NULL AND room_deleted_at IS NULL ORDER BY left_at",
            ENDED,
            CANCELLED,
        )
        return [_row(r) for r in rows]

    async def record_media(self, session_id: int, uris: list[str]) -> None:
        await self.db.executemany(
            "INSERT INTO session_media (session_id, mxc) VALUES ($1, $2)"
            " ON CONFLICT (session_id, mxc) DO NOTHING",
            [(session_id, uri) for uri in uris],
        )

    async def media(self, session_id: int) -> list[str]:
        rows = await self.db.fetch(
            "SELECT mxc FROM session_media WHERE session_id = $1 ORDER BY mxc", session_id
        )
        return [str(r["mxc"]) for r in rows]

    async def messages_counted(self, session_id: int) -> bool:
        value = await self.db.fetchval(
            "SELECT messages_purged FROM text_session WHERE id = $1", session_id
        )
        return value is not None

    async def purge_counts(self, session_id: int) -> tuple[int, int]:
        row = await self.db.fetchrow(
            "SELECT messages_purged, files_purged FROM text_session WHERE id = $1", session_id
        )
        if row is None:
            return 0, 0
        return int(row["messages_purged"] or 0), int(row["files_purged"] or 0)

    async def transition(self, session_id: int, from_status: tuple[str, ...], to: str) -> bool:
        placeholders = ", ".join(f"${i + 3}" for i in range(len(from_status)))
        got = await self.db.fetchval(
            f"UPDATE text_session SET status = $1 WHERE id = $2 AND status IN ({placeholders})"
            " RETURNING id",
            to,
            session_id,
            *from_status,
        )
        return got is not None

    # ------------------------------------------------------------------ transcript consent

    async def request_transcript(
        self, session_id: int, waiting_for: list[str], now: int, expires: int
    ) -> None:
        await self.db.execute(
            "INSERT INTO transcript_request (session_id, requested_at, expires_at, waiting_for,"
            " consents) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id) DO UPDATE SET"
            " requested_at = $2, expires_at = $3, waiting_for = $4, consents = $5",
            session_id,
            now,
            expires,
            json.dumps(sorted(waiting_for)),
            "{}",
        )

    async def transcript_request(
        self, session_id: int
    ) -> tuple[list[str], dict[str, int], int] | None:
        row = await self.db.fetchrow(
            "SELECT waiting_for, consents, expires_at FROM transcript_request"
            " WHERE session_id = $1",
            session_id,
        )
        if row is None:
            return None
        return json.loads(row["waiting_for"]), json.loads(row["consents"]), int(row["expires_at"])

    async def record_consent(self, session_id: int, consents: dict[str, int]) -> None:
        await self.db.execute(
            "UPDATE transcript_request SET consents = $1 WHERE session_id = $2",
            json.dumps(consents, sort_keys=True),
            session_id,
        )

    async def drop_transcript_request(self, session_id: int) -> None:
        await self.db.execute("DELETE FROM transcript_request WHERE session_id = $1", session_id)
