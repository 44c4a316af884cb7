"""v6: which command events ran, so an edit of a command can be judged (issue 9).

An edit (``m.replace``) of a command that did not run (unknown command, usage error) within
10 minutes runs the new text; an edit of one that ran is answered "edits are not applied".
Only ids and times are kept — never the command's text — and rows older than a day go."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v6(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        """CREATE TABLE command_run (
            event_id    TEXT PRIMARY KEY,
            room_id     TEXT NOT NULL,
            sender      TEXT NOT NULL,
            sent_at     BIGINT NOT NULL,
            thread_root TEXT,
            ran_by      TEXT
        )"""
    )
    await conn.execute("CREATE INDEX command_run_sent ON command_run (sent_at)")


upgrade_table.register(upgrade_v6, description="Command events and whether they ran (edits)")
