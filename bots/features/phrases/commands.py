"""Smart phrases: practice-wide ones from the config, personal ones per therapist.
`!p <name>` sends the expansion as the therapist and removes the command message."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from mautrix.util.async_db import Database

from bridge.config import PHRASE_PLACEHOLDERS, Config, check_template, placeholders
from bridge.matrix.gateway import MatrixGateway
from bridge.matrix.outbox import Outbox

from ...commands.args import REST, WORD, Arg, Kind, Sub, UsageError
from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from ..conversations.repo import DM, GROUP
from ..conversations.rules import render
from ..conversations.service import ConversationService
from ..voice import TherapistVoice

NextSession = Callable[[str, str], Awaitable[str | None]]
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
CLIENT_PLACEHOLDERS = {"client_first_name"}


def _new_name(text: str) -> str:
    if not NAME.match(text.lower()):
        raise UsageError(hint="name: a-z, 0-9, - and _")
    return text.lower()


NEW_NAME = Kind("name", _new_name)


class PhraseRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, therapist: str, name: str, text: str) -> None:
        await self.db.execute(
            "INSERT INTO phrase (therapist_id, name, text) VALUES ($1, $2, $3)"
            " ON CONFLICT (therapist_id, name) DO UPDATE SET text = $3",
            therapist,
            name,
            text,
        )

    async def get(self, therapist: str, name: str) -> str | None:
        value = await self.db.fetchval(
            "SELECT text FROM phrase WHERE therapist_id = $1 AND name = $2", therapist, name
        )
        return str(value) if value is not None else None

    async def all(self, therapist: str) -> dict[str, str]:
        rows = await self.db.fetch(
            "SELECT name, text FROM phrase WHERE therapist_id = $1 ORDER BY name", therapist
        )
        return {str(r["name"]): str(r["text"]) for r in rows}

    async def remove(self, therapist: str, name: str) -> bool:
        got = await self.db.fetchval(
            "DELETE FROM phrase WHERE therapist_id = $1 AND name = $2 RETURNING name",
            therapist,
            name,
        )
        return got is not None


class PhraseCommands:
    def __init__(
        self,
        config: Config,
        repo: PhraseRepo,
        rooms: ConversationService,
        voice: TherapistVoice,
        outbox: Outbox,
        gateway: MatrixGateway,
        next_session: NextSession | None = None,
    ) -> None:
        self.next_session = next_session
        self.config = config
        self.repo = repo
        self.rooms = rooms
        self.voice = voice
        self.outbox = outbox
        self.gateway = gateway

    def specs(self) -> list[CommandSpec]:
        name = Arg("name", WORD)
        return [
            CommandSpec(
                "phrase",
                None,
                "your saved texts",
                roles=("therapist",),
                subs=(
                    Sub("add", self._add, (Arg("name", NEW_NAME), Arg("text", REST))),
                    Sub("list", self._list),
                    Sub("show", self._show, (name,)),
                    Sub("remove", self._remove, (name,)),
                ),
            ),
            CommandSpec(
                "p",
                self.send,
                "send a saved text here as yourself",
                (name,),
                roles=("therapist",),
            ),
        ]

    async def lookup(self, therapist: str, name: str) -> str | None:
        return await self.repo.get(therapist, name) or self.config.phrases.get(name)

    async def _add(self, ctx: CommandContext) -> None:
        name: str = ctx.values["name"]
        text: str = ctx.values["text"]
        problem = check_template(text, PHRASE_PLACEHOLDERS)
        if problem:
            await ctx.reply(f"Not saved: {problem}.")
            return
        await self.repo.put(ctx.sender, name, text)
        await ctx.reply(f"Saved phrase {name!r}. Send it in a conversation with !p {name}")

    async def _list(self, ctx: CommandContext) -> None:
        mine = await self.repo.all(ctx.sender)
        practice = {k: v for k, v in self.config.phrases.items() if k not in mine}
        if not mine and not practice:
            await ctx.reply("No phrases yet. Add one with !phrase add <name> <text>.")
            return
        lines = []
        if mine:
            lines.append("Your phrases: " + ", ".join(sorted(mine)))
        if practice:
            lines.append("Practice phrases: " + ", ".join(sorted(practice)))
        await ctx.reply("\n".join(lines))

    async def _show(self, ctx: CommandContext) -> None:
        name: str = ctx.values["name"]
        found = await self.lookup(ctx.sender, name.lower())
        await ctx.reply(found if found is not None else f"No phrase called {name!r}.")

    async def _remove(self, ctx: CommandContext) -> None:
        name: str = ctx.values["name"]
        if await self.repo.remove(ctx.sender, name.lower()):
            await ctx.reply(f"Removed {name.lower()!r}.")
        elif name.lower() in self.config.phrases:
            await ctx.reply("That is a practice phrase; an admin changes it in the config.")
        else:
            await ctx.reply(f"No phrase called {name!r}.")

    async def send(self, ctx: CommandContext) -> None:
        name = str(ctx.values["name"]).lower()
        room = await self.rooms.room(ctx.room_id)
        if room is None or room.kind not in (DM, GROUP) or room.therapist_id != ctx.sender:
            await ctx.reply("Use !p inside one of your conversations.")
            return
        text = await self.lookup(ctx.sender, name)
        if text is None:
            await ctx.reply(f"No phrase called {name!r}. See !phrase list.")
            return
        if problem := check_template(text, PHRASE_PLACEHOLDERS):  # saved by an older Alcove
            await ctx.reply(f"{name!r} cannot be sent: {problem}. Save it again with !phrase add.")
            return
        used = placeholders(text)
        client = await self.rooms.client(room.client_id) if room.client_id else None
        if used & CLIENT_PLACEHOLDERS and (room.kind != DM or client is None):
            await ctx.reply(
                f"{name!r} uses the client's name, which would be shown to everyone here. "
                "Use it in a 1:1 conversation."
            )
            return
        next_session = "not booked yet"
        if client is not None and self.next_session is not None:
            found = await self.next_session(ctx.sender, client.user_id)
            if found:
                next_session = found
        expanded = render(
            text,
            {
                "client_first_name": client.first_name if client else "",
                "therapist_name": self.voice.name(ctx.sender),
                "practice_name": self.config.practice.name,
                "next_session": next_session,
            },
        )
        speaker = await self.voice.speaker(ctx.sender, ctx.room_id)
        content = self.voice.content(ctx.sender, speaker, {"msgtype": "m.text", "body": expanded})
        await self.outbox.send(f"phrase:{ctx.event_id}", speaker, ctx.room_id, content)
        await self.gateway.redact(ctx.room_id, ctx.event_id, "phrase sent")
