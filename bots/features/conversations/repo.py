"""Storage for clients and the rooms Alcove governs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

from bridge.db.database import transaction
from bridge.db.remembered import Remembered

DM, GROUP, CARE, TEAM, MANAGEMENT = "dm", "group", "care", "team", "management"


@dataclass(frozen=True)
class Client:
    user_id: str
    therapist_id: str
    full_name: str
    initials: str
    email: str | None
    external_id: str | None = None
    """The id a practice's booking system gave this client (HTTP API); never shown in Matrix."""

    @property
    def first_name(self) -> str:
        return self.full_name.split()[0] if self.full_name.split() else self.full_name


@dataclass(frozen=True)
class Room:
    room_id: str
    kind: str
    therapist_id: str | None
    client_id: str | None
    title: str | None
    archived_at: int | None = None
    """When the therapist archived it (``!archive``); None: not archived."""

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


@dataclass(frozen=True)
class Secret:
    """A message in a management room that carries a secret, until it is redacted."""

    outbox_key: str
    room_id: str
    staff_id: str
    client_id: str | None
    created_at: int
    expires_at: int


_REDACTABLE = "outbox_key, room_id, staff_id, client_id, created_at, expires_at"


def _secret(r: Any) -> Secret:
    return Secret(
        r["outbox_key"],
        r["room_id"],
        r["staff_id"],
        r["client_id"],
        int(r["created_at"]),
        int(r["expires_at"]),
    )


_CLIENT = "user_id, therapist_id, full_name, initials, email, external_id"
_ROOM = "room_id, kind, therapist_id, client_id, title"
_ROOM_READ = f"{_ROOM}, archived_at"


def _client(r: Any) -> Client:
    return Client(
        r["user_id"], r["therapist_id"], r["full_name"], r["initials"], r["email"], r["external_id"]
    )


def _room(r: object) -> Room:
    archived = r["archived_at"]  # type: ignore[index]
    return Room(
        r["room_id"],  # type: ignore[index]
        r["kind"],  # type: ignore[index]
        r["therapist_id"],  # type: ignore[index]
        r["client_id"],  # type: ignore[index]
        r["title"],  # type: ignore[index]
        int(archived) if archived is not None else None,
    )


REMEMBERED = 20_000
"""Rooms, clients and clients' unredacted passwords each that the repository keeps what it
read of (a few hundred bytes each)."""


class ConversationRepo:
    """Alcove's only writer of clients and rooms: it remembers what it read of them
    (bridge/db/remembered.py)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._rooms: Remembered[str, Room | None] = Remembered(REMEMBERED)
        self._clients: Remembered[str, Client | None] = Remembered(REMEMBERED)
        self._secrets: Remembered[str, tuple[Secret, ...]] = Remembered(REMEMBERED)

    # ------------------------------------------------------------------ clients

    async def add_client(self, client: Client, origin_event: str, now_ms: int) -> Client:
        """Insert once per originating command event; a retry gets the first row back."""
        async with self._clients.writing(client.user_id):
            await self.db.execute(
                f"INSERT INTO client ({_CLIENT}, origin_event, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (origin_event) DO NOTHING",
                client.user_id,
                client.therapist_id,
                client.full_name,
                client.initials,
                client.email,
                client.external_id,
                origin_event,
                now_ms,
            )
        row = await self.db.fetchrow(
            f"SELECT {_CLIENT} FROM client WHERE origin_event = $1", origin_event
        )
        assert row is not None
        return _client(row)

    async def set_email(self, user_id: str, email: str | None) -> None:
        async with self._clients.writing(user_id):
            await self.db.execute("UPDATE client SET email = $1 WHERE user_id = $2", email, user_id)

    async def client(self, user_id: str) -> Client | None:
        async def read() -> Client | None:
            row = await self.db.fetchrow(
                f"SELECT {_CLIENT} FROM client WHERE user_id = $1", user_id
            )
            return _client(row) if row else None

        return await self._clients.get(user_id, read)

    async def clients_of(self, therapist_id: str) -> list[Client]:
        rows = await self.db.fetch(
            f"SELECT {_CLIENT} FROM client WHERE therapist_id = $1 ORDER BY full_name, user_id",
            therapist_id,
        )
        return [_client(r) for r in rows]

    async def client_rooms(self, client_id: str) -> list[str]:
        """Every room Alcove put the client in: their 1:1 rooms and community rooms."""
        rows = await self.db.fetch(
            "SELECT room_id FROM conv_room WHERE client_id = $1 UNION"
            " SELECT room_id FROM group_member WHERE client_id = $1 AND removed_at IS NULL",
            client_id,
        )
        return sorted(str(r["room_id"]) for r in rows)

    async def forget_client(self, client_id: str) -> None:
        """Erasure: the client's row (full name, email), their 1:1 rows (titled with the full
        name), group memberships, secrets, scheduled messages to their 1:1 and the API answers
        that name their ID. One transaction; the audit log keeps its ID-only rows."""
        async with (
            self._rooms.writing(),
            self._clients.writing(client_id),
            self._secrets.writing(client_id),
            transaction(self.db) as conn,
        ):
            dms = await conn.fetch(
                "SELECT room_id FROM conv_room WHERE client_id = $1 AND kind = $2", client_id, DM
            )
            for row in dms:
                await conn.execute(
                    "DELETE FROM scheduled_message WHERE room_id = $1", str(row["room_id"])
                )
            await conn.execute("DELETE FROM conv_room WHERE client_id = $1", client_id)
            await conn.execute("DELETE FROM group_member WHERE client_id = $1", client_id)
            await conn.execute("DELETE FROM secret_message WHERE client_id = $1", client_id)
            await conn.execute("DELETE FROM api_request WHERE response LIKE $1", f"%{client_id}%")
            await conn.execute("DELETE FROM client WHERE user_id = $1", client_id)

    # ------------------------------------------------------------------ rooms

    async def add_room(self, room: Room, now_ms: int, origin_event: str | None = None) -> None:
        async with self._rooms.writing(room.room_id):
            await self.db.execute(
                f"INSERT INTO conv_room ({_ROOM}, origin_event, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (room_id) DO NOTHING",
                room.room_id,
                room.kind,
                room.therapist_id,
                room.client_id,
                room.title,
                origin_event,
                now_ms,
            )

    async def room(self, room_id: str) -> Room | None:
        async def read() -> Room | None:
            row = await self.db.fetchrow(
                f"SELECT {_ROOM_READ} FROM conv_room WHERE room_id = $1", room_id
            )
            return _room(row) if row else None

        return await self._rooms.get(room_id, read)

    async def room_by_origin(self, origin_event: str) -> Room | None:
        row = await self.db.fetchrow(
            f"SELECT {_ROOM_READ} FROM conv_room WHERE origin_event = $1", origin_event
        )
        return _room(row) if row else None

    async def dm_of(self, therapist_id: str, client_id: str) -> Room | None:
        row = await self.db.fetchrow(
            f"SELECT {_ROOM_READ} FROM conv_room WHERE kind = $1 AND therapist_id = $2"
            " AND client_id = $3",
            DM,
            therapist_id,
            client_id,
        )
        return _room(row) if row else None

    async def welcome_sent(self, room_id: str) -> bool:
        """Whether the room's welcome was handed to the outbox (its row, keyed
        ``welcome:<room>``, is kept for good)."""
        key = f"welcome:{room_id}"
        return await self.db.fetchval("SELECT 1 FROM outbox WHERE key = $1", key) is not None

    async def rooms_of(self, therapist_id: str | None, kind: str) -> list[Room]:
        if therapist_id is None:
            rows = await self.db.fetch(
                f"SELECT {_ROOM_READ} FROM conv_room WHERE kind = $1 ORDER BY created_at", kind
            )
        else:
            rows = await self.db.fetch(
                f"SELECT {_ROOM_READ} FROM conv_room WHERE therapist_id = $1 AND kind = $2"
                " ORDER BY created_at",
                therapist_id,
                kind,
            )
        return [_room(r) for r in rows]

    async def set_archived(self, room_id: str, at_ms: int | None) -> None:
        async with self._rooms.writing(room_id):
            await self.db.execute(
                "UPDATE conv_room SET archived_at = $1 WHERE room_id = $2", at_ms, room_id
            )

    async def set_title(self, room_id: str, title: str) -> None:
        async with self._rooms.writing(room_id):
            await self.db.execute(
                "UPDATE conv_room SET title = $1 WHERE room_id = $2", title, room_id
            )

    # ------------------------------------------------------------------ group members

    async def add_member(self, room_id: str, client_id: str, now_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO group_member (room_id, client_id, added_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (room_id, client_id) DO UPDATE SET removed_at = NULL, added_at = $3",
            room_id,
            client_id,
            now_ms,
        )

    async def remove_member(self, room_id: str, client_id: str, now_ms: int) -> None:
        await self.db.execute(
            "UPDATE group_member SET removed_at = $1 WHERE room_id = $2 AND client_id = $3",
            now_ms,
            room_id,
            client_id,
        )

    async def members(self, room_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT client_id FROM group_member WHERE room_id = $1 AND removed_at IS NULL"
            " ORDER BY added_at",
            room_id,
        )
        return [str(r["client_id"]) for r in rows]

    async def group_rooms_of_client(self, client_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT room_id FROM group_member WHERE client_id = $1 AND removed_at IS NULL",
            client_id,
        )
        return [str(r["room_id"]) for r in rows]

    # ------------------------------------------------------------------ management rooms

    async def set_management_room(self, user_id: str, room_id: str, owned: bool = True) -> None:
        await self.db.execute(
            "INSERT INTO management_room (user_id, room_id, owned) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id) DO UPDATE SET room_id = $2, owned = $3",
            user_id,
            room_id,
            owned,
        )

    async def management_room(self, user_id: str) -> str | None:
        row = await self.management_row(user_id)
        return row[0] if row is not None else None

    async def management_row(self, user_id: str) -> tuple[str, bool] | None:
        """(room id, created by the bot) of the staff member's management room."""
        row = await self.db.fetchrow(
            "SELECT room_id, owned FROM management_room WHERE user_id = $1", user_id
        )
        return (str(row["room_id"]), bool(row["owned"])) if row else None

    # ------------------------------------------------------------------ secrets to redact

    async def add_secret(self, secret: Secret) -> None:
        keys = (secret.client_id,) if secret.client_id is not None else ()
        async with self._secrets.writing(*keys):
            await self.db.execute(
                "INSERT INTO secret_message (outbox_key, room_id, staff_id, client_id,"
                " created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (outbox_key) DO NOTHING",
                secret.outbox_key,
                secret.room_id,
                secret.staff_id,
                secret.client_id,
                secret.created_at,
                secret.expires_at,
            )

    async def secret(self, outbox_key: str) -> Secret | None:
        row = await self.db.fetchrow(
            f"SELECT {_REDACTABLE} FROM secret_message WHERE outbox_key = $1", outbox_key
        )
        return _secret(row) if row else None

    async def secrets(self, client_id: str | None = None) -> list[Secret]:
        """Every secret not redacted yet, or those about one client."""
        if client_id is None:
            rows = await self.db.fetch(f"SELECT {_REDACTABLE} FROM secret_message")
            return [_secret(r) for r in rows]

        async def read() -> tuple[Secret, ...]:
            rows = await self.db.fetch(
                f"SELECT {_REDACTABLE} FROM secret_message WHERE client_id = $1", client_id
            )
            return tuple(_secret(r) for r in rows)

        # Asked at every message from a client (is their first password still readable?).
        return list(await self._secrets.get(client_id, read))

    async def delete_secret(self, outbox_key: str) -> None:
        async with self._secrets.writing():
            await self.db.execute("DELETE FROM secret_message WHERE outbox_key = $1", outbox_key)
