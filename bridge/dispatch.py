"""Event → route. The inbox calls ``Dispatcher.handle`` with a plain event dict, one room at a
time in order; this module only decides *what kind* of event it is and who should see it."""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger("alcove.dispatch")


class EventSink(Protocol):
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
            await self.sink.on_message(event)
            return
        if etype == "m.room.encrypted" and sender != self.bot_user_id:
            await self.sink.on_encrypted(event)  # Alcove cannot decrypt yet: never silent
