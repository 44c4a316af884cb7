"""v2: managed clients, the rooms Alcove governs, group membership, management rooms,
pending confirmations, and the audit log.

The full name of a client lives only here (never in Matrix profile or room state of shared
rooms). The audit log is append-only at the database level: triggers refuse UPDATE and DELETE.
"""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v2(conn: Connection, scheme: Scheme) -> None:
    serial = (
        "INTEGER PRIMARY KEY"
        if scheme == Scheme.SQLITE
        else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    )
    await conn.execute(
        """CREATE TABLE client (
            user_id      TEXT PRIMARY KEY,
            therapist_id TEXT NOT NULL,
            full_name    TEXT NOT NULL,
            initials     TEXT NOT NULL,
            email        TEXT,
            origin_event TEXT NOT NULL UNIQUE,
            created_at   BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX client_therapist ON client (therapist_id)")
    await conn.execute(
        """CREATE TABLE conv_room (
            room_id      TEXT PRIMARY KEY,
            kind         TEXT NOT NULL,
            therapist_id TEXT,
            client_id    TEXT,
            title        TEXT,
            origin_event TEXT UNIQUE,
            created_at   BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX conv_room_therapist ON conv_room (therapist_id, kind)")
    await conn.execute(
        """CREATE TABLE group_member (
            room_id    TEXT NOT NULL,
            client_id  TEXT NOT NULL,
            added_at   BIGINT NOT NULL,
            removed_at BIGINT,
            PRIMARY KEY (room_id, client_id)
        )"""
    )
    await conn.execute(
        """CREATE TABLE management_room (
            user_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL
        )"""
    )
    await conn.execute(
        """CREATE TABLE confirmation (
            room_id    TEXT NOT NULL,
            user_id    TEXT NOT NULL,
            action     TEXT NOT NULL,
            payload    TEXT NOT NULL,
            prompt     TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (room_id, user_id)
        )"""
    )
    await conn.execute(
        f"""CREATE TABLE audit (
            id      {serial},
            at      BIGINT NOT NULL,
            actor   TEXT NOT NULL,
            action  TEXT NOT NULL,
            target  TEXT,
            room_id TEXT,
            detail  TEXT
        )"""
    )
    if scheme == Scheme.SQLITE:
        for op in ("UPDATE", "DELETE"):
            await conn.execute(
                f"""CREATE TRIGGER audit_no_{op.lower()} BEFORE {op} ON audit
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"""
            )
    else:
        await conn.execute(
            """CREATE FUNCTION audit_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION 'the audit log is append-only'; END; $$ LANGUAGE plpgsql"""
        )
        await conn.execute(
            """CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
            FOR EACH ROW EXECUTE FUNCTION audit_append_only()"""
        )


upgrade_table.register(upgrade_v2, description="Clients, conversations, confirmations, audit log")
