"""v12: spaces per therapist, archived conversations, muted conversations (issue 12).

``space``: the spaces Alcove owns — one per (therapist, kind) for "clients", "groups",
"sessions" and "archive", and the practice's space for staff rooms (owner ``''``, kind
``practice``). Which room is a child of which space is the homeserver's state
(``m.space.child``), repaired from the rows below at start-up.

``conv_room.archived_at``: when the therapist archived the conversation (NULL: not archived).

``room_mute``: a staff member's mute of a conversation (their push rule on the homeserver);
``until_at`` NULL is a mute until ``!unmute``, otherwise it ends by itself then — the timer is
re-armed from this row at start-up."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v12(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        """CREATE TABLE space (
            owner      TEXT NOT NULL,
            kind       TEXT NOT NULL,
            room_id    TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (owner, kind)
        )"""
    )
    await conn.execute("ALTER TABLE conv_room ADD COLUMN archived_at BIGINT")
    await conn.execute(
        """CREATE TABLE room_mute (
            staff_id   TEXT NOT NULL,
            room_id    TEXT NOT NULL,
            until_at   BIGINT,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (staff_id, room_id)
        )"""
    )


upgrade_table.register(upgrade_v12, description="Spaces, archived and muted conversations")
