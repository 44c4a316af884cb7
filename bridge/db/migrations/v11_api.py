"""v11: the HTTP API (issue 13).

``client.external_id``: the id a practice's booking system gives its client (optional, never
shown in Matrix). ``api_request``: one row per ``Idempotency-Key`` of an API integration
(token name + key): the SHA-256 of the request (method, path, body) and, once done, the status
and JSON answer, so the same request again gets the same answer and a different request with
the same key is refused. Rows hold IDs and times, never a client's name (a request body is kept
only as its hash). ``webhook_cursor``: per configured webhook, the last audit-log row it
delivered (webhooks are read from the append-only audit log: durable, in order, IDs only)."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v11(conn: Connection, scheme: Scheme) -> None:
    await conn.execute("ALTER TABLE client ADD COLUMN external_id TEXT")
    await conn.execute(
        """CREATE TABLE api_request (
            token_name   TEXT NOT NULL,
            key          TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            status       INTEGER,
            response     TEXT,
            created_at   BIGINT NOT NULL,
            PRIMARY KEY (token_name, key)
        )"""
    )
    await conn.execute(
        """CREATE TABLE webhook_cursor (
            name       TEXT PRIMARY KEY,
            last_audit BIGINT NOT NULL
        )"""
    )


upgrade_table.register(upgrade_v11, description="HTTP API: client external ids, idempotency keys")
