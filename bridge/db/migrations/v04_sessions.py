"""v4: text-only sessions. Only times, participants, status and the purge receipt are kept —
never anything said in a session (the inbox deletes those events once handled)."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v4(conn: Connection, scheme: Scheme) -> None:
    serial = (
        "INTEGER PRIMARY KEY"
        if scheme == Scheme.SQLITE
        else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    )
    await conn.execute(
        f"""CREATE TABLE text_session (
            id             {serial},
            therapist_id   TEXT NOT NULL,
            clients        TEXT NOT NULL,
            start_at       BIGINT NOT NULL,
            end_at         BIGINT NOT NULL,
            status         TEXT NOT NULL,
            room_id        TEXT,
            origin_event   TEXT NOT NULL UNIQUE,
            created_at     BIGINT NOT NULL,
            reminded       BOOLEAN NOT NULL DEFAULT FALSE,
            warned         BOOLEAN NOT NULL DEFAULT FALSE,
            delete_id      TEXT,
            purge_attempts INTEGER NOT NULL DEFAULT 0,
            purge_error    TEXT,
            messages_purged INTEGER,
            files_purged   INTEGER
        )"""
    )
    await conn.execute("CREATE INDEX text_session_status ON text_session (status, end_at)")
    await conn.execute("CREATE INDEX text_session_room ON text_session (room_id)")
    await conn.execute(
        """CREATE TABLE transcript_request (
            session_id   BIGINT PRIMARY KEY,
            requested_at BIGINT NOT NULL,
            expires_at   BIGINT NOT NULL,
            waiting_for  TEXT NOT NULL,
            consents     TEXT NOT NULL
        )"""
    )


upgrade_table.register(upgrade_v4, description="Text-only sessions and transcript consent")
