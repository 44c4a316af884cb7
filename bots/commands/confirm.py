"""Multi-step confirmation for any command: ask, then `!yes` runs it or `!no` drops it.
Pending questions live in the database (one per sender per room) and expire."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms

from .context import CommandContext
from .spec import EVERYONE, CommandSpec

Action = Callable[[CommandContext, dict[str, Any]], Awaitable[None]]


class Confirmations:
    def __init__(self, db: Database, clock: Clock, ttl_seconds: float = 300.0) -> None:
        self.db = db
        self.clock = clock
        self.ttl_ms = int(ttl_seconds * 1000)
        self._actions: dict[str, Action] = {}

    def register(self, name: str, action: Action) -> None:
        self._actions[name] = action

    async def ask(
        self, ctx: CommandContext, action: str, payload: dict[str, Any], prompt: str
    ) -> None:
        assert action in self._actions, action
        await self.db.execute(
            "INSERT INTO confirmation (room_id, user_id, action, payload, prompt, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room_id, user_id) DO UPDATE SET"
            " action = $3, payload = $4, prompt = $5, expires_at = $6",
            ctx.room_id,
            ctx.sender,
            action,
            json.dumps(payload),
            prompt,
            ms(self.clock) + self.ttl_ms,
        )
        minutes = max(1, self.ttl_ms // 60000)
        await ctx.reply(f"{prompt} Reply !yes to confirm or !no to cancel (within {minutes} min).")

    async def _take(self, ctx: CommandContext) -> tuple[str, dict[str, Any]] | None:
        row = await self.db.fetchrow(
            "SELECT action, payload, expires_at FROM confirmation WHERE room_id = $1"
            " AND user_id = $2",
            ctx.room_id,
            ctx.sender,
        )
        await self.db.execute(
            "DELETE FROM confirmation WHERE room_id = $1 AND user_id = $2", ctx.room_id, ctx.sender
        )
        if row is None or row["expires_at"] < ms(self.clock):
            return None
        return str(row["action"]), json.loads(row["payload"])

    async def yes(self, ctx: CommandContext) -> None:
        taken = await self._take(ctx)
        if taken is None:
            await ctx.reply("There is nothing waiting for your confirmation here (or it expired).")
            return
        action, payload = taken
        await self._actions[action](ctx, payload)

    async def no(self, ctx: CommandContext) -> None:
        taken = await self._take(ctx)
        await ctx.reply("Cancelled." if taken else "There was nothing to cancel.")

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec("yes", self.yes, "confirm what I just asked you", roles=EVERYONE),
            CommandSpec("no", self.no, "cancel what I just asked you", roles=EVERYONE),
        ]
