"""v1: durable inbox, outbox and per-user devices.

inbox_event holds each event Synapse pushed until it is processed; the event JSON is cleared
once processed (privacy) and the row is kept a while only to dedupe replays by event id.
outbox holds every message Alcove sends until the homeserver accepted it; ``txn_id`` is
derived from the sender and the caller's idempotency key, so a resend after a crash is
deduplicated by Synapse (together with a device id of the acting user, see ``device``).
"""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


def _serial(scheme: Scheme) -> str:
    if scheme == Scheme.SQLITE:
        return "INTEGER PRIMARY KEY"  # rowid alias: monotonically assigned
    return "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"


async def upgrade_v1(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        f"""CREATE TABLE inbox_event (
            seq             {_serial(scheme)},
            event_id        TEXT NOT NULL UNIQUE,
            room_id         TEXT NOT NULL,
            txn_id          TEXT NOT NULL,
            body            TEXT,
            status          TEXT NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT NOT NULL,
            received_at     BIGINT NOT NULL,
            finished_at     BIGINT,
            error           TEXT
        )"""
    )
    await conn.execute("CREATE INDEX inbox_event_status ON inbox_event (status, seq)")
    await conn.execute(
        f"""CREATE TABLE outbox (
            seq             {_serial(scheme)},
            key             TEXT NOT NULL UNIQUE,
            sender          TEXT NOT NULL,
            room_id         TEXT NOT NULL,
            event_type      TEXT NOT NULL,
            content         TEXT,
            txn_id          TEXT NOT NULL,
            status          TEXT NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT NOT NULL,
            created_at      BIGINT NOT NULL,
            sent_at         BIGINT,
            event_id        TEXT,
            error           TEXT
        )"""
    )
    await conn.execute("CREATE INDEX outbox_status ON outbox (status, seq)")
    await conn.execute(
        """CREATE TABLE acting_device (
            user_id   TEXT PRIMARY KEY,
            device_id TEXT NOT NULL
        )"""
    )


upgrade_table.register(upgrade_v1, description="Durable inbox, outbox and acting-user devices")
