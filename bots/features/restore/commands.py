"""!restore <event link>: care and admin staff restore a deleted message. Logic in service.py."""

from __future__ import annotations

from ...commands.args import Arg, Kind, UsageError
from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from .service import EventLink, RestoreRefused, RestoreService, parse_event_link

ROLES = ("care", "admin")


def _link(text: str) -> EventLink:
    link = parse_event_link(text)
    if link is None:
        raise UsageError(
            "That is not a link to a message",
            "in Element: the message's Options → Share → Copy link",
        )
    return link


LINK = Kind("event link", tail="raw")  # a tail is not converted: _link reads it


class RestoreCommands:
    def __init__(self, service: RestoreService) -> None:
        self.service = service

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "restore",
                self.restore,
                "re-post a deleted message in its conversation (while the homeserver keeps it)",
                (Arg("link", LINK),),
                roles=ROLES,
            )
        ]

    async def restore(self, ctx: CommandContext) -> None:
        link = _link(ctx.values["link"])
        try:
            answer = await self.service.restore(ctx.sender, link, ctx.event_id)
        except RestoreRefused as e:
            await ctx.reply(str(e))
            return
        await ctx.reply(answer)
