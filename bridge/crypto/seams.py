"""The two seams where encryption meets Alcove's data flow (DESIGN.md §5).

Inbox side: ``Decrypting`` wraps the inbox's event handler. An ``m.room.encrypted`` event is
decrypted before dispatch; one whose room key has not arrived raises ``inbox.Deferred`` (the
row stays pending and is handled again when the key comes); one that can never be decrypted, or
whose key did not come within ``encryption.key_wait_minutes``, is passed on as it is, so the
"I can't read this" answer (told once per room) still happens: never silently dropped.

Outbox side: ``Crypto.encrypt`` is the outbox's ``encrypt`` hook (see bridge/matrix/outbox.py).
"""

from __future__ import annotations

import logging
from typing import Any

from ..inbox import Deferred, EventHandler
from .machine import Crypto, KeysNotYet, Undecryptable

log = logging.getLogger("alcove.crypto.inbox")


class Decrypting:
    def __init__(self, crypto: Crypto, handler: EventHandler, key_wait_seconds: float) -> None:
        self.crypto = crypto
        self.handler = handler
        self.key_wait_seconds = key_wait_seconds

    async def __call__(self, event: dict[str, Any]) -> None:
        if "state_key" in event:
            await self.crypto.on_state(event)
        if event.get("type") == "m.room.encrypted":
            if event.get("sender") == self.crypto.bot:
                return  # our own message
            encrypted = event
            try:
                event = await self.crypto.decrypt(event)
            except KeysNotYet as e:
                raise Deferred(
                    wait_key(e.session_id),
                    str(e),
                    self.key_wait_seconds,
                    give_up=lambda: self.handler(encrypted),
                ) from None
            except Undecryptable as e:
                log.warning("Cannot decrypt %s in %s: %s", event["event_id"], event["room_id"], e)
        await self.handler(event)


def wait_key(session_id: str) -> str:
    """What an event waiting for a Megolm session waits for (``Inbox.wake``)."""
    return f"megolm:{session_id}"
