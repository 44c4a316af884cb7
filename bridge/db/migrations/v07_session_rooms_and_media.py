"""v7: what a session's end needs to reach every device and every file.

``session_media`` records each media URI (mxc) a session-room event carried, as it arrived —
before any redaction could hide it — so the end deletes them all. An mxc is a random id, not
content. ``left_at`` is when every member was removed (messages and files are deleted then);
the room itself, which holds only state by then, is deleted once every member device has been
seen after ``left_at`` (so it got the leave) or after a bound: ``room_deleted_at``."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v7(conn: Connection, scheme: Scheme) -> None:
    await conn.execute("ALTER TABLE text_session ADD COLUMN left_at BIGINT")
    await conn.execute("ALTER TABLE text_session ADD COLUMN room_deleted_at BIGINT")
    # Sessions ended before this version had their room deleted at the end.
    await conn.execute(
        "UPDATE text_session SET room_deleted_at = end_at"
        " WHERE status IN ('ended', 'cancelled') AND room_id IS NOT NULL"
    )
    await conn.execute(
        """CREATE TABLE session_media (
            session_id BIGINT NOT NULL,
            mxc        TEXT NOT NULL,
            PRIMARY KEY (session_id, mxc)
        )"""
    )


upgrade_table.register(
    upgrade_v7, description="Session media recorded on arrival; session rooms kept until the leave"
)
