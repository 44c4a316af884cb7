"""The command bot: what Alcove does with a room event once the inbox hands it over.

dispatch (bridge) → Bot.on_invite / on_member / on_message → command router → features;
everything the bot says goes through the outbox with a key derived from the event it answers."""

from __future__ import annotations

import logging
from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import MatrixGateway

from .bot_types import Sender, notice
from .commands.confirm import Confirmations
from .commands.registry import CommandRegistry
from .commands.router import CommandRouter
from .features.conversations.commands import ConversationCommands
from .features.conversations.repo import ConversationRepo
from .features.conversations.service import ConversationService
from .features.core.commands import COMMANDS as CORE_COMMANDS

log = logging.getLogger("alcove.bot")


class Bot:
    def __init__(
        self, config: Config, gateway: MatrixGateway, outbox: Sender, db: Database, clock: Clock
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.outbox = outbox
        self.audit = AuditLog(db, clock)
        self.conversations = ConversationService(
            config, gateway, outbox, ConversationRepo(db), self.audit, clock
        )
        confirmations = Confirmations(db, clock)
        self.registry = CommandRegistry(
            [
                *CORE_COMMANDS,
                *confirmations.specs(),
                *ConversationCommands(self.conversations, confirmations).specs(),
            ]
        )
        self.router = CommandRouter(self.registry, on_refused=self._refused)

    async def role_of(self, user_id: str) -> str | None:
        member = self.config.staff_member(user_id)
        if member is not None:
            return member.role
        if await self.conversations.repo.client(user_id) is not None:
            return "client"
        return None

    async def _refused(self, sender: str, command: str, room_id: str) -> None:
        await self.audit.record(sender, "command.refused", None, room_id, command=command)

    async def start(self) -> None:
        """Start-up work: the staff rooms follow the config."""
        await self.conversations.reconcile_staff_rooms()

    async def on_invite(self, room_id: str, inviter: str, content: dict[str, Any]) -> None:
        """Staff invite the bot: accept (a DM becomes their management room). Others: decline."""
        if self.config.staff_member(inviter) is None:
            log.info("Declining an invite from %s, who is not on the staff list", inviter)
            await self.gateway.leave_room(self.gateway.bot_user_id, room_id)
            return
        await self.gateway.join_room(self.gateway.bot_user_id, room_id)
        if content.get("is_direct"):
            await self.conversations.note_management_room(inviter, room_id)
        log.info("Joined %s on the invite of %s", room_id, inviter)

    async def on_member(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        user_id = event.get("state_key")
        if content.get("membership") == "invite" and isinstance(user_id, str):
            await self.conversations.police_invite(event["room_id"], event["sender"], user_id)
            return
        if (
            content.get("membership") == "join"
            and isinstance(user_id, str)
            and user_id == event["sender"]
        ):
            await self.conversations.enforce_initials(
                event["room_id"], user_id, content.get("displayname")
            )

    async def on_message(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        if content.get("msgtype") not in ("m.text", None) or not isinstance(
            content.get("body"), str
        ):
            return
        body: str = content["body"]
        if not body.lstrip().startswith("!"):
            return
        sender = event["sender"]
        room_id = event["room_id"]
        event_id = event["event_id"]
        replies = 0

        async def reply(text: str) -> None:
            nonlocal replies
            replies += 1
            await self.outbox.send(
                f"reply:{event_id}:{replies}", self.gateway.bot_user_id, room_id, notice(text)
            )

        await self.router.handle(
            body,
            sender=sender,
            role=await self.role_of(sender),
            room_id=room_id,
            event_id=event_id,
            reply=reply,
        )
