"""!away on [until <YYYY-MM-DD>] [message] | !away off | !away"""

from __future__ import annotations

from datetime import date

from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from .service import AwayService

USAGE = "on [until <YYYY-MM-DD>] [message] | off"


class AwayCommands:
    def __init__(self, service: AwayService) -> None:
        self.service = service

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "away",
                self.away,
                "out of office: clients get one automatic reply",
                usage=USAGE,
                roles=("therapist",),
            )
        ]

    async def away(self, ctx: CommandContext) -> None:
        if not ctx.args:
            text = await self.service.reply_text(ctx.sender)
            manual = await self.service.manual(ctx.sender)
            if manual is not None:
                till = f" until {manual[0].isoformat()}" if manual[0] else ""
                await ctx.reply(f"You are away{till}. Clients get: {text}")
            elif text is not None:
                await ctx.reply(f"You are outside your working hours. Clients get: {text}")
            else:
                await ctx.reply("You are available; no automatic replies are sent.")
            return
        sub = ctx.args[0].lower()
        if sub == "off" and len(ctx.args) == 1:
            cleared = await self.service.clear(ctx.sender)
            await ctx.reply(
                "Welcome back: automatic replies are off."
                if cleared
                else "You were not marked away."
            )
            return
        if sub != "on":
            await ctx.reply(f"Usage: !away {USAGE}")
            return
        parts = ctx.raw_args.split(maxsplit=1)
        rest = parts[1] if len(parts) > 1 else ""
        until: date | None = None
        if rest.lower().startswith("until "):
            bits = rest.split(maxsplit=2)
            try:
                until = date.fromisoformat(bits[1])
            except (IndexError, ValueError):
                await ctx.reply(f"Usage: !away {USAGE}")
                return
            if until < self.service.local_now().date():
                await ctx.reply(f"{until.isoformat()} is in the past.")
                return
            rest = bits[2] if len(bits) > 2 else ""
        message = rest.strip() or None
        await self.service.set_away(ctx.sender, until, message)
        until_text = f" until {until.isoformat()}" if until else " until you send !away off"
        await ctx.reply(
            f"You are away{until_text}. Clients get: {message or self.service.config.away.message}"
        )
