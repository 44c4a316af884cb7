"""!session, and inside a session room: !end, !extend, !transcript, !consent, !decline."""

from __future__ import annotations

from datetime import UTC

from ...commands.args import (
    CLIENT,
    DATETIME,
    ID,
    Arg,
    Lit,
    Opt,
    Sub,
    UserError,
    minutes,
)
from ...commands.context import CommandContext
from ...commands.spec import EVERYONE, CommandSpec
from ..conversations.repo import Client
from ..conversations.service import ClientLookupError
from ..schedule.timeparse import TimeError, parse_local
from .repo import OPEN, Session
from .service import SessionService
from .transcript import Transcripts

THERAPIST = ("therapist",)
CLIENTS = Arg("clients", CLIENT, many=True)
LENGTH = Opt(Lit("for"), Arg("minutes", minutes(480, "for 1m to 480m")))


class SessionCommands:
    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.transcripts = Transcripts(service)

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "session",
                None,
                "book a text-only session (nothing is kept)",
                roles=THERAPIST,
                subs=(
                    Sub(None, self._book, (CLIENTS, Lit("at"), Arg("when", DATETIME), LENGTH)),
                    Sub(None, self._book, (CLIENTS, Lit("now"), LENGTH)),
                    Sub("list", self._list),
                    Sub("cancel", self._cancel, (Arg("id", ID),)),
                ),
            ),
            CommandSpec(
                "end",
                self.end,
                "end this session now (its messages are deleted)",
                roles=THERAPIST,
            ),
            CommandSpec(
                "extend",
                self.extend,
                "make this session longer",
                (Arg("minutes", minutes(240, "1 to 240 minutes")),),
                roles=THERAPIST,
            ),
            CommandSpec(
                "transcript",
                self.transcript,
                "ask everyone here to agree to a transcript for your records",
                roles=THERAPIST,
            ),
            CommandSpec(
                "consent",
                self.consent,
                "agree to the transcript asked for here",
                roles=EVERYONE,
            ),
            CommandSpec(
                "decline",
                self.decline,
                "refuse the transcript asked for here",
                roles=EVERYONE,
            ),
        ]

    # ------------------------------------------------------------------ !session

    async def _cancel(self, ctx: CommandContext) -> None:
        sid: int = ctx.values["id"]
        ok = await self.service.cancel(ctx.sender, sid)
        await ctx.reply(
            f"Cancelled session #{sid}."
            if ok
            else f"You have no session #{sid} that has not started."
        )

    async def _book(self, ctx: CommandContext) -> None:
        when: tuple[str, str] | None = ctx.values.get("when")
        minutes = ctx.values["minutes"] or self.service.cfg.default_minutes
        clients: list[Client] = []
        for token in ctx.values["clients"]:
            try:
                client = await self.service.conversations.resolve_client(ctx.sender, token)
            except ClientLookupError as e:
                raise UserError(str(e), private=e.private) from None
            if client not in clients:
                clients.append(client)
        now = self.service.clock.now().astimezone(UTC)
        if when is not None:
            try:
                start = parse_local(when[0], when[1], self.service.config.practice.timezone)
            except TimeError as e:
                raise UserError(f"{e}.") from None
            if start <= now:
                await ctx.reply("That time is in the past; use `now` to start at once.")
                return
        else:
            start = now
        session = await self.service.book(ctx.sender, clients, start, minutes, ctx.event_id)
        who = ", ".join(c.full_name for c in clients)
        if session.status == OPEN and session.room_id:
            await ctx.reply_private(
                f"Session #{session.id} with {who} is open until "
                f"{self.service.local(session.end_at)}: "
                f"https://matrix.to/#/{session.room_id}"
            )
        else:
            await ctx.reply_private(
                f"Booked session #{session.id} with {who} for "
                f"{self.service.local(session.start_at)} ({minutes} minutes)."
            )

    async def _list(self, ctx: CommandContext) -> None:
        sessions = await self.service.of_therapist(ctx.sender)
        if not sessions:
            await ctx.reply("You have no text-only sessions booked.")
            return
        lines = ["Your text-only sessions:"]
        for s in sessions:
            names = []
            for cid in s.clients:
                client = await self.service.conversations.client(cid)
                names.append(client.full_name if client else cid)
            lines.append(
                f"#{s.id} {self.service.local(s.start_at)} to "
                f"{self.service.local(s.end_at)} ({s.status}) with {', '.join(names)}"
            )
        await ctx.reply_private("\n".join(lines))

    # ------------------------------------------------------------------ in the session room

    async def _here(self, ctx: CommandContext, therapist_only: bool) -> Session | None:
        session = await self.service.by_room(ctx.room_id)
        if session is None or session.status != OPEN:
            await ctx.reply(f"Use !{ctx.name} inside an open text-only session.")
            return None
        if therapist_only and session.therapist_id != ctx.sender:
            await ctx.reply(f"Only this session's therapist can use !{ctx.name}.")
            return None
        return session

    async def end(self, ctx: CommandContext) -> None:
        session = await self._here(ctx, therapist_only=True)
        if session is not None:
            await self.service.end(session.id, "ended by the therapist")

    async def extend(self, ctx: CommandContext) -> None:
        session = await self._here(ctx, therapist_only=True)
        if session is not None:
            extended = await self.service.extend(session, ctx.values["minutes"])
            await ctx.reply(
                f"Extended: the session now ends at {self.service.local(extended.end_at)}."
            )

    async def transcript(self, ctx: CommandContext) -> None:
        session = await self._here(ctx, therapist_only=True)
        if session is not None:
            await ctx.reply(await self.transcripts.request(session))

    async def consent(self, ctx: CommandContext) -> None:
        session = await self._here(ctx, therapist_only=False)
        if session is not None:
            await ctx.reply(await self.transcripts.answer(session, ctx.sender, consent=True))

    async def decline(self, ctx: CommandContext) -> None:
        session = await self._here(ctx, therapist_only=False)
        if session is not None:
            await ctx.reply(await self.transcripts.answer(session, ctx.sender, consent=False))
