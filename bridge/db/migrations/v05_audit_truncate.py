"""v05: the audit log refuses TRUNCATE too. v2's row triggers refuse UPDATE and DELETE, but on
PostgreSQL ``TRUNCATE audit`` fires no row trigger and emptied the log; a statement-level
BEFORE TRUNCATE trigger refuses it. SQLite has no TRUNCATE (its ``DELETE FROM audit`` without a
WHERE clause still fires the row trigger), so there is nothing to do there."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v05(conn: Connection, scheme: Scheme) -> None:
    if scheme == Scheme.SQLITE:
        return
    await conn.execute(
        """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"""
    )


upgrade_table.register(upgrade_v05, description="The audit log refuses TRUNCATE (PostgreSQL)")
