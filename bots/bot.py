"""The command bot: what Alcove does with a room event once the inbox hands it over.

dispatch (bridge) → Bot.on_message / Bot.on_invite → command router → feature handlers;
everything the bot says goes through the outbox with a key derived from the event it answers."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from bridge.config import Config
from bridge.matrix.gateway import MatrixGateway

from .commands.registry import CommandRegistry
from .commands.router import CommandRouter
from .features.core.commands import COMMANDS as CORE_COMMANDS

log = logging.getLogger("alcove.bot")


class Sender(Protocol):
    async def send(
        self,
        key: str,
        sender: str,
        room_id: str,
        content: dict[str, Any],
        event_type: str = ...,
    ) -> Any: ...


def notice(text: str) -> dict[str, Any]:
    return {"msgtype": "m.notice", "body": text}


class Bot:
    def __init__(self, config: Config, gateway: MatrixGateway, outbox: Sender) -> None:
        self.config = config
        self.gateway = gateway
        self.outbox = outbox
        self.registry = CommandRegistry(CORE_COMMANDS)
        self.router = CommandRouter(self.registry)

    def role_of(self, user_id: str) -> str | None:
        member = self.config.staff_member(user_id)
        if member is not None:
            return member.role
        return None

    async def on_invite(self, room_id: str, inviter: str) -> None:
        """Staff invite the bot to a DM (their management room): accept. Others: decline."""
        if self.role_of(inviter) is None:
            log.info("Declining an invite from %s, who is not on the staff list", inviter)
            await self.gateway.leave_room(self.gateway.bot_user_id, room_id)
            return
        await self.gateway.join_room(self.gateway.bot_user_id, room_id)
        log.info("Joined %s on the invite of %s", room_id, inviter)

    async def on_message(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        if content.get("msgtype") not in ("m.text", None) or not isinstance(
            content.get("body"), str
        ):
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
            content["body"],
            sender=sender,
            role=self.role_of(sender),
            room_id=room_id,
            event_id=event_id,
            reply=reply,
        )
