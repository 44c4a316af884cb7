"""Who speaks for a therapist: the therapist themselves through the double-puppet registration
(after checking the account exists, so nothing is registered by accident), or else the bot,
with "On behalf of ..." so nobody is misled.

In an end-to-end encrypted room the bot always speaks (issue 11, README "Trust model"): a
message from the therapist's user ID encrypted by a device the therapist has not cross-signed
(Alcove's device; it does not hold the therapist's cross-signing keys) is shown by current
clients with a red warning, or not at all with "exclude insecure devices". The bot's own device
is cross-signed by the bot, so its "On behalf of ..." message is shown without one."""

from __future__ import annotations

from typing import Any, Protocol

from bridge.config import Config
from bridge.matrix.gateway import MatrixGateway
from bridge.matrix.outbox import AUTOMATED

__all__ = ["AUTOMATED", "RoomCrypto", "TherapistVoice"]


class RoomCrypto(Protocol):
    """What the voice asks of the crypto (bridge/crypto's ``Crypto``)."""

    async def is_encrypted(self, room_id: str) -> bool:
        """Whether the room is end-to-end encrypted."""

    async def has_devices(self, user_id: str) -> bool:
        """Whether the user has a device with encryption keys (one that can be sent a key)."""


class TherapistVoice:
    def __init__(
        self, config: Config, gateway: MatrixGateway, crypto: RoomCrypto | None = None
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.crypto = crypto
        self._exists: set[str] = set()  # only positive answers: an account may be created later

    def name(self, user_id: str) -> str:
        member = self.config.staff_member(user_id)
        return member.displayname if member else user_id

    async def speaker(self, therapist: str, room_id: str | None = None) -> str:
        """Who sends a message for ``therapist`` (in ``room_id``: the bot where the room is
        encrypted; without a room, who may act for them at all, e.g. to join)."""
        if not self.gateway.can_act_as(therapist):
            return self.gateway.bot_user_id
        if therapist not in self._exists:
            if not await self.gateway.user_exists(therapist):
                return self.gateway.bot_user_id
            self._exists.add(therapist)
        return await self.in_room(therapist, room_id) if room_id is not None else therapist

    async def in_room(self, speaker: str, room_id: str) -> str:
        """``speaker`` where the room is not end-to-end encrypted; the bot where it is."""
        if self.crypto is not None and await self.crypto.is_encrypted(room_id):
            return self.gateway.bot_user_id
        return speaker

    async def can_read(self, user_id: str, room_id: str) -> bool:
        """Whether a message sent now into the room could be read by ``user_id`` at all: in an
        encrypted room only if they have a device to share the room key with (a key is never
        sent to a device that signs in later, and clients accept a forwarded one only from
        their own devices)."""
        if self.crypto is None or not await self.crypto.is_encrypted(room_id):
            return True
        return await self.crypto.has_devices(user_id)

    def content(
        self,
        therapist: str,
        speaker: str,
        content: dict[str, Any],
        *,
        automated: bool = False,
    ) -> dict[str, Any]:
        """The content as sent by ``speaker``: marked "on behalf of" when the bot speaks.
        (The outbox marks every message it sends as automated; ``automated`` only makes that
        explicit before the content reaches it.)"""
        out = dict(content)
        if automated:
            out[AUTOMATED] = True
        if speaker != therapist and isinstance(out.get("body"), str):
            out["body"] = f"On behalf of {self.name(therapist)}: {out['body']}"
        return out
