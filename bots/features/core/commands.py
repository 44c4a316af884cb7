"""Commands every Alcove has: !ping and !help."""

from __future__ import annotations

from ...commands.context import CommandContext
from ...commands.spec import EVERYONE, CommandSpec


async def ping(ctx: CommandContext) -> None:
    await ctx.reply("pong")


async def help_(ctx: CommandContext) -> None:
    await ctx.reply(ctx.registry.help_text(ctx.role))


COMMANDS = (
    CommandSpec("ping", ping, "check that Alcove is listening", roles=EVERYONE),
    CommandSpec("help", help_, "the commands you may use", roles=EVERYONE),
)
