"""!archive, !unarchive, !find, !mute, !unmute, !video. Declared here; logic in service.py.

What a therapist types in a conversation is seen by the client in it. So the answer to
``!archive``, ``!unarchive``, ``!mute`` and ``!unmute`` typed there goes to the therapist's
management room, and the command itself is redacted: the client sees a deleted message and
nothing else (the management-room forms show them nothing at all)."""

from __future__ import annotations

from datetime import datetime

from bridge.matrix.gateway import MatrixGateway, PermanentError

from ...bot_types import Sender, notice
from ...commands.args import CLIENT, DATETIME, DURATION, WORDS, Arg, Sub, UsageError, UserError
from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from ..conversations.management import link
from ..conversations.repo import DM, GROUP, Room
from ..conversations.service import ClientLookupError, ConversationService
from ..schedule.timeparse import TimeError, parse_local
from .service import CannotActAs, Organiser

THERAPIST = ("therapist",)
NO_PUPPET = (
    "I cannot change that for you: acting as you needs Alcove's double-puppet registration "
    "on the homeserver (see alcove doctor)."
)


class OrganiseCommands:
    def __init__(
        self,
        service: Organiser,
        conversations: ConversationService,
        outbox: Sender,
        gateway: MatrixGateway,
    ) -> None:
        self.service = service
        self.conversations = conversations
        self.outbox = outbox
        self.gateway = gateway

    def specs(self) -> list[CommandSpec]:
        client = Arg("client", CLIENT, optional=True)
        return [
            CommandSpec(
                "archive",
                self._archive,
                "move a conversation to your Archive space (the client sees no change)",
                (client,),
                roles=THERAPIST,
            ),
            CommandSpec(
                "unarchive",
                self._unarchive,
                "bring an archived conversation back",
                (client,),
                roles=THERAPIST,
            ),
            CommandSpec(
                "find",
                self._find,
                "find conversations by client name, initials, ID or group title",
                (Arg("text", WORDS),),
                roles=THERAPIST,
            ),
            CommandSpec(
                "mute",
                None,
                "no notifications from this conversation (for a while, or until !unmute)",
                roles=THERAPIST,
                subs=(
                    Sub("for", self._mute_for, (Arg("duration", DURATION, "<N>h"),)),
                    Sub("until", self._mute_until, (Arg("when", DATETIME),)),
                    Sub(None, self._mute),
                ),
            ),
            CommandSpec(
                "unmute",
                self._unmute,
                "notifications from this conversation again",
                roles=THERAPIST,
            ),
            CommandSpec(
                "video",
                self._video,
                "start a video meeting in this conversation",
                roles=THERAPIST,
            ),
        ]

    # ------------------------------------------------------------------ helpers

    async def _own_room(self, ctx: CommandContext) -> Room | None:
        room = await self.conversations.room(ctx.room_id)
        if room is None or room.kind not in (DM, GROUP) or room.therapist_id != ctx.sender:
            return None
        return room

    async def _quiet(self, ctx: CommandContext, text: str) -> None:
        """Answer in the management room; typed in a conversation, redact the command there
        (no pointer: the client would read it)."""
        mgmt = await self.conversations.management.ensure(ctx.sender)
        if mgmt == ctx.room_id:
            await ctx.reply(text)
            return
        if mgmt is None:  # the text may name the client: not for this room
            await ctx.reply("Done. I say more only in your management room, and you have none.")
            return
        await self.outbox.send(
            f"quiet:{ctx.event_id}", self.gateway.bot_user_id, mgmt, notice(text)
        )
        if await self.conversations.room(ctx.room_id) is not None:
            try:
                await self.gateway.redact(ctx.room_id, ctx.event_id, "")
            except PermanentError:
                pass  # the answer went out; the command stays visible

    async def _target(self, ctx: CommandContext, verb: str) -> Room | None:
        """The conversation typed in, or the client's 1:1 (``!archive <client>``)."""
        token: str | None = ctx.values.get("client")
        if token is None:
            room = await self._own_room(ctx)
            if room is None:
                await ctx.reply(
                    f"Use !{verb} inside one of your conversations, or !{verb} <client> in your "
                    "management room."
                )
            return room
        try:
            client = await self.conversations.resolve_client(ctx.sender, token)
        except ClientLookupError as e:
            raise UserError(str(e), private=e.private) from None
        room = await self.conversations.dm_of(ctx.sender, client.user_id)
        if room is None:
            raise UserError(f"{client.initials} has no conversation with you.")
        return room

    def _name(self, room: Room) -> str:
        return repr(room.title) if room.title else link(room.room_id)

    # ------------------------------------------------------------------ !archive

    async def _archive(self, ctx: CommandContext) -> None:
        await self._set_archived(ctx, True)

    async def _unarchive(self, ctx: CommandContext) -> None:
        await self._set_archived(ctx, False)

    async def _set_archived(self, ctx: CommandContext, archived: bool) -> None:
        verb = "archive" if archived else "unarchive"
        room = await self._target(ctx, verb)
        if room is None:
            return

        async def answer(text: str) -> None:
            if ctx.values.get("client") is None:
                await self._quiet(ctx, text)
            else:
                await ctx.reply_private(text)

        if room.archived == archived:
            state = "already archived" if archived else "not archived"
            await answer(f"The conversation {self._name(room)} is {state}: {link(room.room_id)}")
            return
        tagged = await self.service.archive(room, ctx.sender, archived)
        if archived:
            text = (
                f"Archived {self._name(room)}: it is in your Archive space now"
                + (" and marked low priority" if tagged else "")
                + ". You can still read and write there; the client sees no change. "
                f"!unarchive brings it back. {link(room.room_id)}"
            )
        else:
            space = "Clients" if room.kind == DM else "Groups"
            text = (
                f"Unarchived {self._name(room)}: it is back in your {space} space"
                + (" and no longer low priority" if tagged else "")
                + f". {link(room.room_id)}"
            )
        if not tagged:
            text += " (I could not change its priority in your room list: " + NO_PUPPET + ")"
        await answer(text)

    # ------------------------------------------------------------------ !find

    async def _find(self, ctx: CommandContext) -> None:
        text: str = ctx.values["text"]
        found = await self.service.find(ctx.sender, text)
        if not found:
            await ctx.reply_private(f"No conversation of yours matches {text!r}.")
            return
        lines = [f"Conversations matching {text!r} ({len(found)}):"]
        for hit in found:
            mark = " (archived)" if hit.room.archived else ""
            if hit.client is not None:
                c = hit.client
                lines.append(
                    f"• {c.full_name} ({c.initials}) {c.user_id}{mark} — {link(hit.room.room_id)}"
                )
            else:
                why = f" ({hit.why})" if hit.why != "title" else ""
                lines.append(f"• group {hit.room.title!r}{why}{mark} — {link(hit.room.room_id)}")
        await ctx.reply_private("\n".join(lines))

    # ------------------------------------------------------------------ !mute

    async def _mute_for(self, ctx: CommandContext) -> None:
        await self._mute_at(ctx, self.service.clock.now() + ctx.values["duration"])

    async def _mute_until(self, ctx: CommandContext) -> None:
        day, hhmm = ctx.values["when"]
        try:
            until = parse_local(day, hhmm, self.service.config.practice.timezone)
        except TimeError as e:
            raise UsageError(str(e)) from None
        if until <= self.service.clock.now():
            raise UserError(f"{self.service.local(until)} is in the past.")
        await self._mute_at(ctx, until)

    async def _mute(self, ctx: CommandContext) -> None:
        await self._mute_at(ctx, None)

    async def _mute_at(self, ctx: CommandContext, until: datetime | None) -> None:
        room = await self._own_room(ctx)
        if room is None:
            await ctx.reply("Use !mute inside the conversation to mute.")
            return
        try:
            await self.service.mute(ctx.sender, room.room_id, until)
        except CannotActAs:
            await self._quiet(ctx, NO_PUPPET)
            return
        till = f"until {self.service.local(until)}" if until else "until you send !unmute there"
        await self._quiet(
            ctx,
            f"Muted {self._name(room)} {till}: no notifications from it, mentions included. "
            f"{link(room.room_id)}",
        )

    async def _unmute(self, ctx: CommandContext) -> None:
        room = await self._own_room(ctx)
        if room is None:
            await ctx.reply("Use !unmute inside the conversation to unmute.")
            return
        try:
            lifted = await self.service.unmute(ctx.sender, room.room_id)
        except CannotActAs:
            await self._quiet(ctx, NO_PUPPET)
            return
        await self._quiet(
            ctx,
            (
                f"Notifications are on again for {self._name(room)}."
                if lifted
                else f"{self._name(room)} was not muted."
            )
            + f" {link(room.room_id)}",
        )

    # ------------------------------------------------------------------ !video

    async def _video(self, ctx: CommandContext) -> None:
        room = await self._own_room(ctx)
        if room is None:
            await ctx.reply("Use !video inside the conversation the meeting is for.")
            return
        url = await self.service.start_video(room, ctx.sender)
        name = self.conversations.voice.name(ctx.sender)
        await ctx.reply(
            f'{name} started a video meeting: open "Video meeting" at the top of this room, '
            f"or join at {url}"
        )
