"""Event → route. The inbox calls ``Dispatcher.handle`` with a plain event dict, one room at a
time in order; this module only decides *what kind* of event it is and who should see it."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .matrix.outbox import AUTOMATED

log = logging.getLogger("alcove.dispatch")


class EventSink(Protocol):
    async def on_event(self, event: dict[str, Any]) -> None:
        """Every event, before it is routed (text-only sessions record media here)."""

    async def on_invite(self, event: dict[str, Any]) -> None: ...

    async def on_member(self, event: dict[str, Any]) -> None: ...

    async def on_message(self, event: dict[str, Any]) -> None: ...

    async def on_encrypted(self, event: dict[str, Any]) -> None: ...


class Dispatcher:
    def __init__(self, bot_user_id: str, sink: EventSink, client_prefix: str = "@c-") -> None:
        self.bot_user_id = bot_user_id
        self.sink = sink
        self.client_prefix = client_prefix

    async def handle(self, event: dict[str, Any]) -> None:
        etype = event.get("type")
        sender = event.get("sender")
        if not isinstance(sender, str):
            return
        await self.sink.on_event(event)
        if etype == "m.room.member":
            content = event.get("content") or {}
            if event.get("state_key") == self.bot_user_id:
                if content.get("membership") == "invite":
                    await self.sink.on_invite(event)
                return
            if sender != self.bot_user_id:
                await self.sink.on_member(event)
            return
        if etype == "m.room.message":
            if sender == self.bot_user_id:
                return  # our own echo
            if self._automated(event, sender):
                log.debug("%s is Alcove's own message sent as %s", event.get("event_id"), sender)
                return
            await self.sink.on_message(event)
            return
        if etype == "m.room.encrypted" and sender != self.bot_user_id:
            await self.sink.on_encrypted(event)  # Alcove cannot decrypt yet: never silent

    def _automated(self, event: dict[str, Any], sender: str) -> bool:
        """Alcove's own message sent as a staff member (scheduled, blast, phrase, welcome,
        auto-reply): never a command, never the input a command awaits, not their reply. Alcove
        never sends as a managed client, so a client's message is handled whatever it says."""
        content = event.get("content")
        return (
            isinstance(content, dict)
            and content.get(AUTOMATED) is True
            and not sender.startswith(self.client_prefix)
        )
