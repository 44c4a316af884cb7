"""Event → route. The inbox calls ``Dispatcher.handle`` with a plain event dict, one room at a
time in order; this module only decides *what kind* of event it is and who should see it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

from .matrix.outbox import AUTOMATED

log = logging.getLogger("alcove.dispatch")

ECHO_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})


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

    def is_echo(self, event: dict[str, Any]) -> bool:
        """Alcove's own message coming back, which handling would drop: the bot's text and
        notices, its automated ones sent as staff, and the bot's encrypted events (the
        decrypting handler drops those unread). The inbox does not keep them: at a busy time
        they are half of what the homeserver pushes (every reply to a command comes back).
        An echo that holds an mxc:// URI is kept, so a text-only session still records every
        file referenced in its room."""
        sender = event.get("sender")
        if not isinstance(sender, str):
            return False
        etype = event.get("type")
        if etype == "m.room.encrypted":
            return sender == self.bot_user_id
        if etype != "m.room.message":
            return False
        content = event.get("content")
        if not isinstance(content, dict) or content.get("msgtype") not in ECHO_MSGTYPES:
            return False
        if sender != self.bot_user_id and not self._automated(event, sender):
            return False
        return next(mxc_uris(content), None) is None

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


def mxc_uris(value: Any) -> Iterator[str]:
    """Every mxc:// URI a content value holds, at any depth (files, images, thumbnails)."""
    if isinstance(value, str):
        if value.startswith("mxc://"):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from mxc_uris(item)
    elif isinstance(value, list):
        for item in value:
            yield from mxc_uris(item)
