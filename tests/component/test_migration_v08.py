"""v8 rebuilds the confirmation and pending_input tables: what was waiting for an answer before
the upgrade is still waiting after it, on both databases."""

from __future__ import annotations

import logging

from mautrix.util.async_db import Database, UpgradeTable

from bots.commands.awaiting import AwaitingInput
from bridge.config import DatabaseConfig
from bridge.db.database import open_database
from bridge.db.migrations import upgrade_table
from bridge.db.migrations.v01_inbox_outbox import upgrade_v1
from bridge.db.migrations.v02_conversations import upgrade_v2
from bridge.db.migrations.v03_therapist_tools import upgrade_v3
from bridge.db.migrations.v04_sessions import upgrade_v4
from tests.support.fakes import FakeClock


async def test_open_questions_survive_the_upgrade(db_url: str) -> None:
    before = UpgradeTable(version_table_name="alcove_version", database_name="Alcove")
    for step in (upgrade_v1, upgrade_v2, upgrade_v3, upgrade_v4):
        before.register(step, description=step.__name__)
    old = Database.create(
        db_url, upgrade_table=before, log=logging.getLogger("test.db"), owner_name="alcove"
    )
    await old.start()
    clock = FakeClock()
    later = int(clock.time() * 1000) + 60_000
    await old.execute(
        "INSERT INTO confirmation (room_id, user_id, action, payload, prompt, expires_at)"
        " VALUES ('!r', '@t', 'group.remove', '{\"client\": \"@c\"}', 'Remove?', $1)",
        later,
    )
    await old.execute(
        "INSERT INTO pending_input (room_id, user_id, kind, payload, expires_at)"
        " VALUES ('!r', '@t', 'blast', '{\"audience\": \"all\"}', $1)",
        later,
    )
    await old.stop()

    db: Database = await open_database(DatabaseConfig(url=db_url))
    try:
        assert await db.fetchval("SELECT version FROM alcove_version") == len(
            upgrade_table.upgrades
        )
        row = await db.fetchrow("SELECT kind, payload, used_by FROM confirmation")
        assert row is not None
        assert (row["kind"], row["payload"], row["used_by"]) == (
            "group.remove",
            '{"client": "@c"}',
            None,
        )
        taken = await AwaitingInput(db, clock).take("!r", "@t", "$next")
        assert taken == ("blast", {"audience": "all"})
    finally:
        await db.stop()
