"""Which rooms are encrypted, and who a room's Megolm session was shared with: mautrix's
``StateStore`` for the OlmMachine, on Alcove's database (tables from migration v10)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

from mautrix.crypto import StateStore
from mautrix.types import JSON, RoomEncryptionStateEventContent, RoomID, UserID
from mautrix.util.async_db import Database

from ..db.database import transaction


class CryptoRoomRepo(StateStore):
    def __init__(self, db: Database) -> None:
        self.db = db
        self._known: dict[str, RoomEncryptionStateEventContent | None] = {}

    async def known(self, room_id: str) -> bool:
        """Whether the room's encryption state was recorded (encrypted or not)."""
        if room_id in self._known:
            return True
        row = await self.db.fetchrow(
            "SELECT encryption FROM crypto_room WHERE room_id = $1", room_id
        )
        if row is None:
            return False
        raw = row["encryption"]
        self._known[room_id] = (
            RoomEncryptionStateEventContent.deserialize(json.loads(raw)) if raw else None
        )
        return True

    async def put_encryption(self, room_id: str, content: dict[str, object] | None) -> None:
        """Record the room's ``m.room.encryption`` content (None: not encrypted). Encryption is
        never turned off in Matrix: an encrypted room stays encrypted."""
        if content is None and self._known.get(room_id) is not None:
            return
        await self.db.execute(
            "INSERT INTO crypto_room (room_id, encryption) VALUES ($1, $2)"
            " ON CONFLICT (room_id) DO UPDATE SET encryption = $2",
            room_id,
            json.dumps(content) if content is not None else None,
        )
        self._known[room_id] = (
            RoomEncryptionStateEventContent.deserialize(cast(JSON, content))
            if content is not None
            else None
        )

    async def put_members(self, room_id: str, user_ids: Sequence[str]) -> None:
        async with transaction(self.db):
            await self.db.execute("DELETE FROM crypto_member WHERE room_id = $1", room_id)
            await self.db.executemany(
                "INSERT INTO crypto_member (room_id, user_id) VALUES ($1, $2)",
                [(room_id, user_id) for user_id in sorted(set(user_ids))],
            )

    async def forget_room_keys(self, account_id: str, room_id: str) -> int:
        """Delete every Megolm session of the room from mautrix's crypto store (inbound ones,
        their message indexes, the outbound one): nothing encrypted in the room can be
        decrypted with this store any more. Returns how many inbound sessions there were."""
        async with transaction(self.db):
            await self.db.execute(
                "DELETE FROM crypto_message_index WHERE session_id IN (SELECT session_id"
                " FROM crypto_megolm_inbound_session WHERE account_id = $1 AND room_id = $2)",
                account_id,
                room_id,
            )
            gone = await self.db.fetchval(
                "SELECT COUNT(*) FROM crypto_megolm_inbound_session"
                " WHERE account_id = $1 AND room_id = $2",
                account_id,
                room_id,
            )
            await self.db.execute(
                "DELETE FROM crypto_megolm_inbound_session WHERE account_id = $1 AND room_id = $2",
                account_id,
                room_id,
            )
            await self.db.execute(
                "DELETE FROM crypto_megolm_outbound_session WHERE account_id = $1 AND room_id = $2",
                account_id,
                room_id,
            )
        return int(gone or 0)

    # ------------------------------------------------------------------ mautrix StateStore

    async def is_encrypted(self, room_id: RoomID) -> bool:
        return await self.get_encryption_info(room_id) is not None

    async def get_encryption_info(self, room_id: RoomID) -> RoomEncryptionStateEventContent | None:
        if not await self.known(room_id):
            return None
        return self._known[room_id]

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        rows = await self.db.fetch(
            "SELECT m.room_id FROM crypto_member m JOIN crypto_room r ON r.room_id = m.room_id"
            " WHERE m.user_id = $1 AND r.encryption IS NOT NULL",
            user_id,
        )
        return [RoomID(r["room_id"]) for r in rows]
