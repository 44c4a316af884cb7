"""!schedule in|at|every ... <message>, !schedule list, !schedule cancel <id>."""

from __future__ import annotations

from datetime import UTC, datetime

from ...commands.args import DATETIME, DURATION, ID, REST, WORD, Arg, Sub, UsageError
from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from ..conversations.repo import DM, GROUP
from ..conversations.service import ConversationService
from .service import ScheduleService
from .timeparse import TimeError, local_text, next_fire, parse_local

MESSAGE = Arg("message", REST)


class ScheduleCommands:
    def __init__(self, service: ScheduleService, rooms: ConversationService) -> None:
        self.service = service
        self.rooms = rooms

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "schedule",
                None,
                "send a message later, once or every week/day",
                roles=("therapist",),
                subs=(
                    Sub("in", self._in, (Arg("delay", DURATION), MESSAGE)),
                    Sub("at", self._at, (Arg("when", DATETIME), MESSAGE)),
                    Sub(
                        "every",
                        self._every,
                        (Arg("day", WORD, "weekday|day"), Arg("time", WORD, "HH:MM"), MESSAGE),
                    ),
                    Sub("list", self._list),
                    Sub("cancel", self._cancel, (Arg("id", ID),)),
                ),
            )
        ]

    async def _in(self, ctx: CommandContext) -> None:
        if await self._here(ctx):
            await self._create(ctx, self.service.now() + ctx.values["delay"], None)

    async def _at(self, ctx: CommandContext) -> None:
        if not await self._here(ctx):
            return
        try:
            day, hhmm = ctx.values["when"]
            due = parse_local(day, hhmm, self.service.tz)
        except TimeError as e:
            raise UsageError(str(e)) from None
        if due <= self.service.now():
            await ctx.reply(f"{local_text(due, self.service.tz)} is in the past.")
            return
        await self._create(ctx, due, None)

    async def _every(self, ctx: CommandContext) -> None:
        if not await self._here(ctx):
            return
        rule = f"{ctx.values['day'].lower()} {ctx.values['time']}"
        try:
            due = next_fire(rule, self.service.tz, self.service.now())
        except TimeError as e:
            raise UsageError(str(e)) from None
        await self._create(ctx, due, rule)

    async def _here(self, ctx: CommandContext) -> bool:
        room = await self.rooms.room(ctx.room_id)
        if room is None or room.kind not in (DM, GROUP) or room.therapist_id != ctx.sender:
            await ctx.reply("Use !schedule inside the conversation the message is for.")
            return False
        return True

    async def _create(self, ctx: CommandContext, due: datetime, rule: str | None) -> None:
        text: str = ctx.values["message"]
        row = await self.service.create(
            ctx.sender, ctx.room_id, {"msgtype": "m.text", "body": text}, due, rule, ctx.event_id
        )
        repeat = f", then every {rule.split()[0]} at {rule.split()[1]}" if rule else ""
        await ctx.reply(f"Scheduled #{row.id} for {local_text(due, self.service.tz)}{repeat}.")

    async def _list(self, ctx: CommandContext) -> None:
        rows = await self.service.pending_of(ctx.sender)
        if not rows:
            await ctx.reply("You have no scheduled messages.")
            return
        lines = ["Your scheduled messages:"]
        for row in rows:
            when = local_text(datetime.fromtimestamp(row.due_at / 1000, UTC), self.service.tz)
            room = await self.rooms.room(row.room_id)
            where = room.title if room and room.title else row.room_id
            words = " ".join(str(row.content.get("body", "")).split()[:6])
            repeat = f" (every {row.rule})" if row.rule else ""
            lines.append(f"#{row.id} {when}{repeat} → {where}: {words}…")
        await ctx.reply_private("\n".join(lines))

    async def _cancel(self, ctx: CommandContext) -> None:
        schedule_id: int = ctx.values["id"]
        if await self.service.cancel(ctx.sender, schedule_id, ctx.event_id):
            await ctx.reply(f"Cancelled #{schedule_id}.")
        else:
            await ctx.reply(f"You have no pending scheduled message #{schedule_id}.")
