"""!session, and inside a session room: !end, !extend, !transcript, !consent, !decline."""

from __future__ import annotations

import re
from datetime import UTC

from ...commands.context import CommandContext
from ...commands.spec import EVERYONE, CommandSpec
from ..conversations.repo import Client
from ..conversations.service import ClientLookupError
from ..schedule.timeparse import TimeError, parse_local
from .repo import OPEN, Session
from .service import SessionService
from .transcript import Transcripts

USAGE = (
    "<client>... at <YYYY-MM-DD HH:MM> [for <N>m] | <client>... now [for <N>m] | list | cancel <id>"
)
_MINUTES = re.compile(r"^(\d{1,3})m$")
THERAPIST = ("therapist",)


class SessionCommands:
    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.transcripts = Transcripts(service)

    def specs(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "session",
                self.session,
                "book a text-only session (nothing is kept)",
                usage=USAGE,
                roles=THERAPIST,
                min_args=1,
            ),
            CommandSpec(
                "end",
                self.end,
                "end this session now (its messages are deleted)",
                roles=THERAPIST,
                max_args=0,
            ),
            CommandSpec(
                "extend",
                self.extend,
                "make this session longer",
                usage="<N>m",
                roles=THERAPIST,
                min_args=1,
                max_args=1,
            ),
            CommandSpec(
                "transcript",
                self.transcript,
                "ask everyone here to agree to a transcript for your records",
                roles=THERAPIST,
                max_args=0,
            ),
            CommandSpec(
                "consent",
                self.consent,
                "agree to the transcript asked for here",
                roles=EVERYONE,
                max_args=0,
            ),
            CommandSpec(
                "decline",
                self.decline,
                "refuse the transcript asked for here",
                roles=EVERYONE,
                max_args=0,
            ),
        ]

    # ------------------------------------------------------------------ !session

    async def session(self, ctx: CommandContext) -> None:
        sub = ctx.args[0].lower()
        if sub == "list" and len(ctx.args) == 1:
            await self._list(ctx)
            return
        if sub == "cancel":
            if len(ctx.args) != 2 or not ctx.args[1].lstrip("#").isdigit():
                await ctx.reply("Usage: !session cancel <id>")
                return
            sid = int(ctx.args[1].lstrip("#"))
            ok = await self.service.cancel(ctx.sender, sid)
            await ctx.reply(
                f"Cancelled session #{sid}."
                if ok
                else f"You have no session #{sid} that has not started."
            )
            return
        await self._book(ctx)

    async def _book(self, ctx: CommandContext) -> None:
        words = list(ctx.args)
        lowered = [w.lower() for w in words]
        if "now" in lowered:
            split = lowered.index("now")
            when_words, rest = [], words[split + 1 :]
        elif "at" in lowered:
            split = lowered.index("at")
            when_words, rest = words[split + 1 : split + 3], words[split + 3 :]
        else:
            await ctx.reply(f"Usage: !session {USAGE}")
            return
        tokens = words[:split]
        minutes = self.service.cfg.default_minutes
        if rest:
            match = _MINUTES.match(rest[-1].lower()) if len(rest) == 2 else None
            if rest[0].lower() != "for" or match is None or not 0 < int(match[1]) <= 480:
                await ctx.reply(f"Usage: !session {USAGE} (for 1m to 480m)")
                return
            minutes = int(match[1])
        if not tokens:
            await ctx.reply(f"Usage: !session {USAGE}")
            return
        clients: list[Client] = []
        for token in tokens:
            try:
                client = await self.service.conversations.resolve_client(ctx.sender, token)
            except ClientLookupError as e:
                await (ctx.reply_private if e.private else ctx.reply)(str(e))
                return
            if client not in clients:
                clients.append(client)
        now = self.service.clock.now().astimezone(UTC)
        if when_words:
            if len(when_words) != 2:
                await ctx.reply(f"Usage: !session {USAGE}")
                return
            try:
                start = parse_local(
                    when_words[0], when_words[1], self.service.config.practice.timezone
                )
            except TimeError as e:
                await ctx.reply(f"{e}.")
                return
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
        sessions = await self.service.repo.of_therapist(ctx.sender)
        if not sessions:
            await ctx.reply("You have no text-only sessions booked.")
            return
        lines = ["Your text-only sessions:"]
        for s in sessions:
            names = []
            for cid in s.clients:
                client = await self.service.conversations.repo.client(cid)
                names.append(client.full_name if client else cid)
            lines.append(
                f"#{s.id} {self.service.local(s.start_at)} to "
                f"{self.service.local(s.end_at)} ({s.status}) with {', '.join(names)}"
            )
        await ctx.reply_private("\n".join(lines))

    # ------------------------------------------------------------------ in the session room

    async def _here(self, ctx: CommandContext, therapist_only: bool) -> Session | None:
        session = await self.service.repo.by_room(ctx.room_id)
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
        match = _MINUTES.match(ctx.args[0].lower())
        if match is None or not 0 < int(match[1]) <= 240:
            await ctx.reply("Usage: !extend <N>m (1 to 240 minutes)")
            return
        session = await self._here(ctx, therapist_only=True)
        if session is not None:
            extended = await self.service.extend(session, int(match[1]))
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
