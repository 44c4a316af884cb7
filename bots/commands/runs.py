"""Which command events ran: the record an edit of a command is judged by. Ids and times only."""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database

from bridge.batcher import GroupCommit

KEEP_MS = 24 * 3600 * 1000
"""Rows older than this (by the command's own time) are dropped: edits are judged within
minutes."""
_Run = tuple[str, str, str, int, str | None, str | None]
"""(event id, room id, sender, sent at, thread root, ran by)."""
PRUNE_EVERY_MS = 60 * 1000
"""Old rows are looked for at most this often (by commands' times), not at every command."""


@dataclass(frozen=True)
class CommandRun:
    event_id: str
    room_id: str
    sender: str
    sent_at: int
    thread_root: str | None
    ran_by: str | None
    """The event whose text ran: the command itself, or an edit of it; None if nothing ran."""


class CommandRuns:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pruned_at: int | None = None
        # Every command writes one row: concurrent commands share a commit.
        self._write: GroupCommit[_Run, None] = GroupCommit("command-run", db, self._insert)

    async def record(
        self,
        event_id: str,
        room_id: str,
        sender: str,
        sent_at: int,
        thread_root: str | None,
        ran: bool,
    ) -> None:
        await self._write(
            (event_id, room_id, sender, sent_at, thread_root, event_id if ran else None)
        )
        pruned = self._pruned_at
        if pruned is None or not 0 <= sent_at - pruned < PRUNE_EVERY_MS:
            # A statement per command would be a tenth of a command's database work.
            await self.db.execute("DELETE FROM command_run WHERE sent_at < $1", sent_at - KEEP_MS)
            self._pruned_at = sent_at

    async def _insert(self, runs: list[_Run]) -> list[None]:
        await self.db.executemany(
            "INSERT INTO command_run (event_id, room_id, sender, sent_at, thread_root, ran_by)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO UPDATE SET"
            " ran_by = COALESCE(command_run.ran_by, excluded.ran_by)",
            runs,
        )
        return [None] * len(runs)

    async def get(self, event_id: str) -> CommandRun | None:
        row = await self.db.fetchrow(
            "SELECT event_id, room_id, sender, sent_at, thread_root, ran_by FROM command_run"
            " WHERE event_id = $1",
            event_id,
        )
        if row is None:
            return None
        return CommandRun(
            str(row["event_id"]),
            str(row["room_id"]),
            str(row["sender"]),
            int(row["sent_at"]),
            row["thread_root"],
            row["ran_by"],
        )

    async def ran_by(self, event_id: str, edit_id: str) -> None:
        """The edit ``edit_id`` of ``event_id`` ran (first one wins)."""
        await self.db.execute(
            "UPDATE command_run SET ran_by = $2 WHERE event_id = $1 AND ran_by IS NULL",
            event_id,
            edit_id,
        )
