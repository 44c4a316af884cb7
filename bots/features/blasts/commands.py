"""!blast <audience> [message] — with no message, the next message you send is blasted."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ...commands.args import CLIENT, REST, Arg, Kind, UsageError
from ...commands.awaiting import AwaitingInput
from ...commands.confirm import Confirmations
from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from .service import AudienceError, BlastResult, BlastService

LISTED_FAILURES = 50
"""Failures named one by one in the report; the rest are counted by reason."""

AUDIENCE = Kind("all | group:<title> | client,client,...", pills_as_ids=CLIENT.pills_as_ids)
"""One word (quote a group title with spaces: group:"Tuesday circle"); pills are user IDs."""


class BlastCommands:
    def __init__(
        self, service: BlastService, awaiting: AwaitingInput, confirmations: Confirmations
    ) -> None:
        self.service = service
        self.awaiting = awaiting
        self.confirm = confirmations
        confirmations.register("blast.send", self._confirmed)

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "blast",
                self.blast,
                "one message to many clients, each in their own chat",
                (Arg("audience", AUDIENCE), Arg("message", REST, optional=True)),
                roles=("therapist",),
            )
        ]

    async def blast(self, ctx: CommandContext) -> None:
        audience_spec: str = ctx.values["audience"]
        try:
            clients = await self.service.audience(ctx.sender, audience_spec)
        except AudienceError as e:
            raise UsageError(str(e), private=e.private) from None
        text: str = ctx.values["message"] or ""
        if not text:
            await self.awaiting.expect(
                ctx.room_id, ctx.sender, "blast", {"audience": audience_spec}, ctx.event_id
            )
            await ctx.reply(
                f"Send the message for {len(clients)} clients now (text, image, file or voice). "
                "I'll ask you to confirm before anything goes out."
            )
            return
        result = await self.service.send(
            ctx.sender, clients, {"msgtype": "m.text", "body": text}, ctx.event_id
        )
        await ctx.reply_private(report(result))

    async def capture(
        self, ctx: CommandContext, payload: dict[str, Any], content: dict[str, Any]
    ) -> None:
        """The message that follows `!blast <audience>`: confirm, then send."""
        audience = str(payload["audience"])
        try:
            clients = await self.service.audience(ctx.sender, audience)
        except AudienceError as e:
            await (ctx.reply_private if e.private else ctx.reply)(str(e))
            return
        kind = {
            "m.image": "image",
            "m.file": "file",
            "m.audio": "voice message",
            "m.video": "video",
        }.get(str(content.get("msgtype")), "message")
        await self.confirm.ask(
            ctx,
            "blast.send",
            {"audience": audience, "content": content, "origin": ctx.event_id},
            f"Send this {kind} to {len(clients)} clients ({audience}), each in their own chat?",
        )

    async def _confirmed(self, ctx: CommandContext, payload: dict[str, Any]) -> None:
        try:
            clients = await self.service.audience(ctx.sender, str(payload["audience"]))
        except AudienceError as e:
            await (ctx.reply_private if e.private else ctx.reply)(str(e))
            return
        content = {k: v for k, v in dict(payload["content"]).items() if k != "m.relates_to"}
        result = await self.service.send(ctx.sender, clients, content, str(payload["origin"]))
        await ctx.reply_private(report(result))


def report(result: BlastResult) -> str:
    total = len(result.delivered) + len(result.failed) + len(result.pending) + len(result.held)
    lines = [
        f"Delivered to {len(result.delivered)} of {total} clients; failed: {len(result.failed)}."
    ]
    for client, reason in result.failed[:LISTED_FAILURES]:
        lines.append(f"• {client.full_name} ({client.user_id}): {reason}")
    rest = Counter(reason for _, reason in result.failed[LISTED_FAILURES:])
    for reason, count in rest.most_common():
        lines.append(f"• {count} more: {reason}")
    if result.pending:
        lines.append(
            f"{len(result.pending)} still being retried: "
            + ", ".join(c.full_name for c in result.pending)
        )
    if result.held:
        named = ", ".join(c.full_name for c in result.held[:LISTED_FAILURES])
        more = len(result.held) - LISTED_FAILURES
        lines.append(
            f"{len(result.held)} will get it when they first sign in (their conversation is "
            f"end-to-end encrypted): {named}" + (f" and {more} more" if more > 0 else "")
        )
    return "\n".join(lines)
