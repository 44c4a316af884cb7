"""Conversation commands: !client, !group, !title. Declared here; logic in service.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ...commands.args import CLIENT, TITLE, WORDS, Arg, Flag, Kind, Sub, UsageError, UserError
from ...commands.confirm import Confirmations
from ...commands.context import CommandContext
from ...commands.spec import CommandSpec
from .management import link
from .repo import DM, GROUP, Client, Room
from .service import ClientLookupError, ConversationService, EmailInUse, normalise_email

THERAPIST = ("therapist",)


def _email(text: str) -> str:
    try:
        return normalise_email(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an email address") from None


def _email_or_off(text: str) -> str | None:
    return None if text.lower() == "off" else _email(text)


EMAIL = Kind("ADDR", _email)
EMAIL_OR_OFF = Kind("ADDR|off", _email_or_off)


LiveSessions = Callable[[str], Awaitable[list[int]]]


def erasure_blocked(sessions: list[int]) -> str:
    listed = ", ".join(f"#{n}" for n in sessions)
    return (
        f"This client is booked in session(s) {listed} that have not ended: cancel them "
        "(!session cancel <id>) or wait for their end, then erase."
    )


def erased_text(client_id: str, rooms: int) -> str:
    return (
        f"Erased {client_id}: removed from {rooms} room(s), the account deactivated and erased "
        "on the homeserver, and deleted from Alcove (the audit log keeps only the ID)."
    )


class ConversationCommands:
    def __init__(
        self,
        service: ConversationService,
        confirmations: Confirmations,
        live_sessions: LiveSessions | None = None,
    ) -> None:
        self.service = service
        self.confirm = confirmations
        self.live_sessions = live_sessions
        confirmations.register("group.add", self._confirmed_add)
        confirmations.register("group.remove", self._confirmed_remove)
        confirmations.register("client.erase", self._confirmed_erase)

    def specs(self) -> list[CommandSpec]:
        client = Arg("client", CLIENT)
        return [
            CommandSpec(
                "client",
                None,
                "add a client (account + 1:1 room), list yours, set their email notifications, "
                "or erase one for good",
                roles=THERAPIST,
                subs=(
                    Sub(
                        "add",
                        self._client_add,
                        (
                            Arg("full_name", WORDS, "full name"),
                            Flag("--email", "email", EMAIL, "ADDR"),
                        ),
                    ),
                    Sub("list", self._client_list),
                    Sub("email", self._client_email, (client, Arg("email", EMAIL_OR_OFF))),
                    Sub("erase", self._client_erase, (client,)),
                ),
            ),
            CommandSpec(
                "group",
                None,
                "community chats where clients see each other as initials",
                roles=THERAPIST,
                subs=(
                    Sub(
                        "create",
                        self._group_create,
                        (Arg("title", TITLE), Arg("clients", CLIENT, many=True)),
                    ),
                    Sub("add", self._group_add, (client,)),
                    Sub("remove", self._group_remove, (client,)),
                    Sub("list", self._group_list),
                ),
            ),
            CommandSpec(
                "title",
                self.title,
                "rename this conversation",
                (Arg("title", WORDS),),
                roles=THERAPIST,
            ),
        ]

    # ------------------------------------------------------------------ helpers

    async def _own_room(self, ctx: CommandContext, kinds: tuple[str, ...]) -> Room | None:
        room = await self.service.room(ctx.room_id)
        if room is None or room.kind not in kinds or room.therapist_id != ctx.sender:
            return None
        return room

    async def _client_arg(self, ctx: CommandContext, token: str) -> Client:
        """A client argument (a pill is already its user ID): one of the sender's clients."""
        try:
            return await self.service.resolve_client(ctx.sender, token)
        except ClientLookupError as e:
            raise UserError(str(e), private=e.private) from None

    # ------------------------------------------------------------------ !client

    async def _client_add(self, ctx: CommandContext) -> None:
        email: str | None = ctx.values["email"]
        full_name: str = ctx.values["full_name"]
        if not any(ch.isalpha() for ch in full_name):
            raise UsageError()
        if await self._own_room(ctx, (DM, GROUP)) is not None:
            await ctx.reply(
                "Please add clients in your management room with me, not in a conversation: "
                "the reply contains a password."
            )
            return
        # Secrets go only to a management room that holds exactly the therapist and the bot:
        # checked before anything is created, and again when the password is sent.
        problem = await self.service.management.private_problem(ctx.sender)
        if problem is not None:
            await ctx.reply(problem)
            return
        if email and (problem := await self.service.email_problem(email)):
            await ctx.reply(problem + " Add the client without --email, or with another address.")
            return
        new = await self.service.add_client(ctx.sender, full_name, email, ctx.event_id)
        problem = await self.service.introduce(ctx.sender, new, f"secret:{ctx.event_id}")
        mgmt = await self.service.management_room_for(ctx.sender)
        if problem is not None:
            await ctx.reply(problem)
        elif mgmt is not None and mgmt != ctx.room_id:
            await ctx.reply(
                f"Done: the new client's details are in your management room: {link(mgmt)}"
            )

    async def _client_email(self, ctx: CommandContext) -> None:
        client = await self._client_arg(ctx, ctx.values["client"])
        email: str | None = ctx.values["email"]
        try:
            await self.service.set_client_email(client, email, ctx.sender)
        except EmailInUse as e:
            await ctx.reply_private(str(e))
            return
        who = f"{client.initials} ({client.user_id})"
        if email is None:
            await ctx.reply_private(f"Email notifications for {who} are off.")
            return
        await ctx.reply_private(
            f"Email notifications for {who} now go to {email}: when a message has waited "
            "unread for a while, the homeserver mails them that there is a new message (no text, "
            'no names). They can also set a password with it ("Forgot password" when signing in).'
        )

    async def _client_list(self, ctx: CommandContext) -> None:
        clients = await self.service.clients_of(ctx.sender)
        if not clients:
            await ctx.reply_private(
                "You have no clients yet. Add one with !client add <full name>."
            )
            return
        lines = [f"Your clients ({len(clients)}):"]
        for c in clients:
            room = await self.service.dm_of(ctx.sender, c.user_id)
            where = f" — {link(room.room_id)}" if room else ""
            lines.append(f"• {c.full_name} ({c.initials}) {c.user_id}{where}")
        await ctx.reply_private("\n".join(lines))

    async def _client_erase(self, ctx: CommandContext) -> None:
        mgmt = await self.service.management_room_for(ctx.sender)
        if mgmt != ctx.room_id:  # the question names the client in full
            where = f": {link(mgmt)}" if mgmt else ""
            await ctx.reply(f"Please erase clients in your management room with me{where}")
            return
        client = await self._client_arg(ctx, ctx.values["client"])
        if self.live_sessions is not None and (live := await self.live_sessions(client.user_id)):
            await ctx.reply(erasure_blocked(live))
            return
        await self.confirm.ask(
            ctx,
            "client.erase",
            {"client": client.user_id},
            f"Erase {client.full_name} ({client.user_id}) for good? They are removed from every "
            "room, their account is deactivated and erased on the homeserver, and Alcove "
            "forgets their name and email. This cannot be undone.",
        )

    async def _confirmed_erase(self, ctx: CommandContext, payload: dict[str, Any]) -> None:
        client_id = str(payload.get("client"))
        client = await self.service.client(client_id)
        if client is None:  # a replay of this !yes after the erasure: the same answer
            rooms = await self.service.erased(client_id)
            if rooms is None:
                await ctx.reply("That can no longer be done here.")
            else:
                await ctx.reply(erased_text(client_id, rooms))
            return
        if client.therapist_id != ctx.sender:
            await ctx.reply("That can no longer be done here.")
            return
        if self.live_sessions is not None and (live := await self.live_sessions(client_id)):
            await ctx.reply(erasure_blocked(live))
            return
        rooms = await self.service.erase_client(client, ctx.sender)
        await ctx.reply(erased_text(client_id, rooms))

    # ------------------------------------------------------------------ !group

    async def _group_create(self, ctx: CommandContext) -> None:
        title: str = ctx.values["title"]
        clients: list[Client] = []
        for token in ctx.values["clients"]:
            client = await self._client_arg(ctx, token)
            if client not in clients:
                clients.append(client)
        room = await self.service.create_group(ctx.sender, title, clients, ctx.event_id)
        names = ", ".join(c.initials for c in clients)
        await ctx.reply_private(  # it lists clients (by initials): not for another group
            f"Created {title!r} with {names}: https://matrix.to/#/{room.room_id}\n"
            "Clients see each other only by initials; new members do not see earlier messages."
        )

    async def _group_add(self, ctx: CommandContext) -> None:
        await self._group_member(ctx, "add")

    async def _group_remove(self, ctx: CommandContext) -> None:
        await self._group_member(ctx, "remove")

    async def _group_member(self, ctx: CommandContext, sub: str) -> None:
        room = await self._own_room(ctx, (GROUP,))
        if room is None:
            await ctx.reply(f"Use !group {sub} inside one of your community chats.")
            return
        client = await self._client_arg(ctx, ctx.values["client"])
        members = await self.service.members(room.room_id)
        if sub == "add" and client.user_id in members:
            await ctx.reply(f"{client.initials} is already in this chat.")
            return
        if sub == "remove" and client.user_id not in members:
            await ctx.reply(f"{client.initials} is not in this chat.")
            return
        verb = "Add" if sub == "add" else "Remove"
        extra = (
            " They will not see earlier messages."
            if sub == "add"
            else " They will lose access to the whole conversation."
        )
        await self.confirm.ask(
            ctx,
            f"group.{sub}",
            {"client": client.user_id},
            f"{verb} {client.initials} ({client.user_id}) {'to' if sub == 'add' else 'from'} "
            f"{room.title!r}?{extra}",
        )

    async def _confirmed(
        self, ctx: CommandContext, payload: dict[str, Any]
    ) -> tuple[Room, Client] | None:
        room = await self._own_room(ctx, (GROUP,))
        client = await self.service.client(str(payload.get("client")))
        if room is None or client is None or client.therapist_id != ctx.sender:
            await ctx.reply("That can no longer be done here.")
            return None
        return room, client

    async def _confirmed_add(self, ctx: CommandContext, payload: dict[str, Any]) -> None:
        found = await self._confirmed(ctx, payload)
        if found:
            await self.service.add_to_group(found[0], found[1], ctx.sender)
            await ctx.reply(f"Added {found[1].initials}.")

    async def _confirmed_remove(self, ctx: CommandContext, payload: dict[str, Any]) -> None:
        found = await self._confirmed(ctx, payload)
        if found:
            await self.service.remove_from_group(found[0], found[1], ctx.sender)
            await ctx.reply(f"Removed {found[1].initials}; they can no longer read this chat.")

    async def _group_list(self, ctx: CommandContext) -> None:
        groups = await self.service.groups_of(ctx.sender)
        if not groups:
            await ctx.reply(
                'You have no community chats. Create one with !group create "<title>" ...'
            )
            return
        lines = ["Your community chats:"]
        lines += [
            f"• {room.title} ({count} clients) — https://matrix.to/#/{room.room_id}"
            for room, count in groups
        ]
        await ctx.reply("\n".join(lines))

    # ------------------------------------------------------------------ !title

    async def title(self, ctx: CommandContext) -> None:
        room = await self._own_room(ctx, (DM, GROUP))
        if room is None:
            await ctx.reply("Use !title inside one of your conversations.")
            return
        title: str = ctx.values["title"]
        await self.service.set_title(room, title, ctx.sender)
        await ctx.reply(f"Renamed to {title!r}.")
