"""Multi-step confirmation for any command: ask, then `!yes` runs it or `!no` drops it.
Pending questions live in the database (one open per sender per room) and expire. Answering is
safe to replay: `!yes` marks the question used by its own event id, so the same `!yes` handled
again (after a crash or a temporary error) runs the same action with the same payload and gives
the same reply; the action's effects are keyed on the event ids, so nothing happens twice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms
from bridge.db.answers_repo import Answer, AnswerRepo

from .context import CommandContext
from .spec import EVERYONE, CommandSpec

Action = Callable[[CommandContext, dict[str, Any]], Awaitable[None]]


class Confirmations:
    def __init__(self, db: Database, clock: Clock, ttl_seconds: float = 300.0) -> None:
        self.repo = AnswerRepo(db, "confirmation")
        self.clock = clock
        self.ttl_ms = int(ttl_seconds * 1000)
        self._actions: dict[str, Action] = {}

    def register(self, name: str, action: Action) -> None:
        self._actions[name] = action

    async def ask(
        self, ctx: CommandContext, action: str, payload: dict[str, Any], prompt: str
    ) -> None:
        assert action in self._actions, action
        # A replay of the asking event asks nothing new (it may have been answered already).
        if not await self.repo.asked_by(ctx.event_id):
            await self.repo.put(
                ctx.room_id,
                ctx.sender,
                action,
                payload,
                ms(self.clock) + self.ttl_ms,
                ctx.event_id,
            )
        minutes = max(1, self.ttl_ms // 60000)
        await ctx.reply(f"{prompt} Reply !yes to confirm or !no to cancel (within {minutes} min).")

    async def _take(self, ctx: CommandContext) -> Answer | None:
        """The question this answer is for: the one it used before (a replay), or the open
        one, now marked used by this event. None if there is none or it expired."""
        used = await self.repo.used_by(ctx.event_id)
        if used is not None:
            return used
        taken = await self.repo.use(ctx.room_id, ctx.sender, ctx.event_id, ms(self.clock))
        if taken is not None and taken.expires_at < ms(self.clock):
            await self.repo.delete_used(ctx.event_id)
            return None
        return taken

    async def yes(self, ctx: CommandContext) -> None:
        taken = await self._take(ctx)
        if taken is None or taken.kind not in self._actions:
            await ctx.reply("There is nothing waiting for your confirmation here (or it expired).")
            return
        await self._actions[taken.kind](ctx, taken.payload)

    async def no(self, ctx: CommandContext) -> None:
        taken = await self._take(ctx)
        if taken is not None:
            await self.repo.drop_payload(ctx.event_id)
        await ctx.reply("Cancelled." if taken else "There was nothing to cancel.")

    async def forget(self) -> int:
        """Housekeeping: expired questions and used ones nothing can replay any more."""
        return await self.repo.forget(ms(self.clock))

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec("yes", self.yes, "confirm what I just asked you", roles=EVERYONE),
            CommandSpec("no", self.no, "cancel what I just asked you", roles=EVERYONE),
        ]
