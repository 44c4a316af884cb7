"""v9: management rooms Alcove owns, and secrets it will redact.

``management_room.owned`` tells a room the bot created for the staff member (the only kind
that counts from now on) from a DM the staff member opened in an earlier version: at the next
start-up the latter is replaced by an owned room. ``secret_message`` remembers each message
that carries a secret (an initial password) until it is redacted: once the client has signed
in, or at ``expires_at``. It holds the outbox key, never the secret."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v9(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        "ALTER TABLE management_room ADD COLUMN owned BOOLEAN NOT NULL DEFAULT FALSE"
    )
    await conn.execute(
        """CREATE TABLE secret_message (
            outbox_key TEXT PRIMARY KEY,
            room_id    TEXT NOT NULL,
            staff_id   TEXT NOT NULL,
            client_id  TEXT,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX secret_message_client ON secret_message (client_id)")


upgrade_table.register(upgrade_v9, description="Owned management rooms, secrets to redact")
