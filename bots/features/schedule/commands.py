"""!schedule in|at|every ... <message>, !schedule list, !schedule cancel <id>."""

from __future__ import annotations

from datetime import UTC, datetime

from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from ..conversations.repo import DM, GROUP, ConversationRepo
from .service import ScheduleService
from .timeparse import TimeError, local_text, next_fire, parse_delay, parse_local

USAGE = (
    "in <N>(s|m|h|d) <message> | at <YYYY-MM-DD HH:MM> <message> | "
    "every <weekday|day> <HH:MM> <message> | list | cancel <id>"
)


class ScheduleCommands:
    def __init__(self, service: ScheduleService, rooms: ConversationRepo) -> None:
        self.service = service
        self.rooms = rooms

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "schedule",
                self.schedule,
                "send a message later, once or every week/day",
                usage=USAGE,
                roles=("therapist",),
                min_args=1,
            )
        ]

    async def schedule(self, ctx: CommandContext) -> None:
        sub = ctx.args[0].lower()
        if sub == "list":
            await self._list(ctx)
            return
        if sub == "cancel":
            await self._cancel(ctx)
            return
        if sub not in ("in", "at", "every"):
            await ctx.reply(f"Usage: !schedule {USAGE}")
            return
        room = await self.rooms.room(ctx.room_id)
        if room is None or room.kind not in (DM, GROUP) or room.therapist_id != ctx.sender:
            await ctx.reply("Use !schedule inside the conversation the message is for.")
            return
        # The message is the rest of the line exactly as typed (spacing and quotes kept).
        needed = {"in": 2, "at": 3, "every": 3}[sub]
        parts = ctx.raw_args.split(maxsplit=needed)
        if len(parts) <= needed or not parts[needed].strip():
            await ctx.reply(f"Usage: !schedule {USAGE}")
            return
        text = parts[needed].strip()
        tz = self.service.tz
        now = self.service.now()
        rule = None
        try:
            if sub == "in":
                due = now + parse_delay(parts[1])
            elif sub == "at":
                due = parse_local(parts[1], parts[2], tz)
                if due <= now:
                    await ctx.reply(f"{local_text(due, tz)} is in the past.")
                    return
            else:
                rule = f"{parts[1].lower()} {parts[2]}"
                due = next_fire(rule, tz, now)
        except TimeError as e:
            await ctx.reply(f"{e}. Usage: !schedule {USAGE}")
            return
        row = await self.service.create(
            ctx.sender, ctx.room_id, {"msgtype": "m.text", "body": text}, due, rule, ctx.event_id
        )
        repeat = f", then every {rule.split()[0]} at {rule.split()[1]}" if rule else ""
        await ctx.reply(f"Scheduled #{row.id} for {local_text(due, tz)}{repeat}.")

    async def _list(self, ctx: CommandContext) -> None:
        rows = await self.service.repo.pending_of(ctx.sender)
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
        if len(ctx.args) != 2 or not ctx.args[1].lstrip("#").isdigit():
            await ctx.reply("Usage: !schedule cancel <id>")
            return
        schedule_id = int(ctx.args[1].lstrip("#"))
        if await self.service.cancel(ctx.sender, schedule_id):
            await ctx.reply(f"Cancelled #{schedule_id}.")
        else:
            await ctx.reply(f"You have no pending scheduled message #{schedule_id}.")
