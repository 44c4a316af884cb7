"""!away on [until <YYYY-MM-DD>] [message] | !away off | !away"""

from __future__ import annotations

from datetime import date

from ...commands.args import DATE, REST, Arg, Lit, Opt, Sub
from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from .service import AwayService


class AwayCommands:
    def __init__(self, service: AwayService) -> None:
        self.service = service

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "away",
                None,
                "out of office: clients get one automatic reply",
                roles=("therapist",),
                subs=(
                    Sub(
                        "on",
                        self._on,
                        (
                            Opt(Lit("until"), Arg("until", DATE)),
                            Arg("message", REST, "message", optional=True),
                        ),
                    ),
                    Sub("off", self._off),
                    Sub(None, self._status),
                ),
            )
        ]

    async def _status(self, ctx: CommandContext) -> None:
        text = await self.service.reply_text(ctx.sender)
        manual = await self.service.manual(ctx.sender)
        if manual is not None:
            till = f" until {manual[0].isoformat()}" if manual[0] else ""
            await ctx.reply(f"You are away{till}. Clients get: {text}")
        elif text is not None:
            await ctx.reply(f"You are outside your working hours. Clients get: {text}")
        else:
            await ctx.reply("You are available; no automatic replies are sent.")

    async def _off(self, ctx: CommandContext) -> None:
        cleared = await self.service.clear(ctx.sender)
        await ctx.reply(
            "Welcome back: automatic replies are off." if cleared else "You were not marked away."
        )

    async def _on(self, ctx: CommandContext) -> None:
        until: date | None = ctx.values["until"]
        if until is not None and until < self.service.local_now().date():
            await ctx.reply(f"{until.isoformat()} is in the past.")
            return
        message: str | None = ctx.values["message"] or None
        await self.service.set_away(ctx.sender, until, message)
        until_text = f" until {until.isoformat()}" if until else " until you send !away off"
        await ctx.reply(
            f"You are away{until_text}. Clients get: {message or self.service.config.away.message}"
        )
