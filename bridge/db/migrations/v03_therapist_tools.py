"""v3: scheduled messages, personal phrases, out-of-office state, auto-reply throttle, and
"waiting for your next message" (a blast of an image or file).

scheduled_message is the source of truth for timers: APScheduler jobs are re-armed from it at
start-up. Firing inserts the outbox row and moves ``due_at`` (or closes the row) in one
transaction, so a message fires exactly once whatever the moment of a crash."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v3(conn: Connection, scheme: Scheme) -> None:
    serial = (
        "INTEGER PRIMARY KEY"
        if scheme == Scheme.SQLITE
        else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    )
    await conn.execute(
        f"""CREATE TABLE scheduled_message (
            id           {serial},
            therapist_id TEXT NOT NULL,
            room_id      TEXT NOT NULL,
            content      TEXT NOT NULL,
            rule         TEXT,
            due_at       BIGINT NOT NULL,
            status       TEXT NOT NULL,
            origin_event TEXT NOT NULL UNIQUE,
            created_at   BIGINT NOT NULL,
            fired_count  INTEGER NOT NULL DEFAULT 0
        )"""
    )
    await conn.execute("CREATE INDEX scheduled_message_due ON scheduled_message (status, due_at)")
    await conn.execute(
        """CREATE TABLE phrase (
            therapist_id TEXT NOT NULL,
            name         TEXT NOT NULL,
            text         TEXT NOT NULL,
            PRIMARY KEY (therapist_id, name)
        )"""
    )
    await conn.execute(
        """CREATE TABLE away (
            therapist_id TEXT PRIMARY KEY,
            until_date   TEXT,
            message      TEXT
        )"""
    )
    await conn.execute(
        """CREATE TABLE auto_reply (
            room_id TEXT PRIMARY KEY,
            sent_at BIGINT NOT NULL
        )"""
    )
    await conn.execute(
        """CREATE TABLE pending_input (
            room_id    TEXT NOT NULL,
            user_id    TEXT NOT NULL,
            kind       TEXT NOT NULL,
            payload    TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (room_id, user_id)
        )"""
    )


upgrade_table.register(upgrade_v3, description="Schedules, phrases, away, auto-replies")
