"""v8: confirmations and captured inputs are kept once used, marked with the event that used
them, so a replay of that event (the inbox handles every event at least once) finds the same
payload and gives the same answer; unanswered ones are deleted once expired (housekeeping).

Both tables are rebuilt (the old key, one row per sender and room, could not hold a used row
next to a new question): one *open* row per sender and room (a partial unique index), any
number of used ones. ``asked_by`` is the event that asked, so a replay of the asking event does
not ask again. The confirmation's prompt (it named clients in full) is no longer stored.

And the outbox gets an index on event_id: catch-up asks which of the events it found are
Alcove's own sends, so that they are not reported as events the homeserver never delivered.
A scheduled message records the event that cancelled it (that event, handled again, gets the
same answer)."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table

_OLD_KIND = {"confirmation": "action", "pending_input": "kind"}


async def upgrade_v8(conn: Connection, scheme: Scheme) -> None:
    serial = (
        "INTEGER PRIMARY KEY"
        if scheme == Scheme.SQLITE
        else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    )
    for table, old_kind in _OLD_KIND.items():
        await conn.execute(
            f"""CREATE TABLE {table}_v8 (
                id         {serial},
                room_id    TEXT NOT NULL,
                user_id    TEXT NOT NULL,
                kind       TEXT NOT NULL,
                payload    TEXT NOT NULL,
                expires_at BIGINT NOT NULL,
                asked_by   TEXT,
                used_by    TEXT,
                used_at    BIGINT
            )"""
        )
        # Table and column names are module constants.
        copy = (
            f"INSERT INTO {table}_v8 (room_id, user_id, kind, payload, expires_at)"  # noqa: S608
            f" SELECT room_id, user_id, {old_kind}, payload, expires_at FROM {table}"
        )
        await conn.execute(copy)
        await conn.execute(f"DROP TABLE {table}")
        await conn.execute(f"ALTER TABLE {table}_v8 RENAME TO {table}")
        await conn.execute(
            f"CREATE UNIQUE INDEX {table}_open ON {table} (room_id, user_id) WHERE used_by IS NULL"
        )
        await conn.execute(f"CREATE INDEX {table}_used_by ON {table} (used_by)")
        await conn.execute(f"CREATE INDEX {table}_asked_by ON {table} (asked_by)")
        await conn.execute(f"CREATE INDEX {table}_expires ON {table} (expires_at)")
    await conn.execute("CREATE INDEX outbox_event_id ON outbox (event_id)")
    await conn.execute("ALTER TABLE scheduled_message ADD COLUMN cancelled_by TEXT")


upgrade_table.register(
    upgrade_v8, description="Answers used by an event, then expired; outbox event ids; cancelled_by"
)
