"""Who speaks for a therapist: the therapist themselves through the double-puppet registration
(after checking the account exists, so nothing is registered by accident), or else the bot,
with "On behalf of ..." so nobody is misled."""

from __future__ import annotations

from typing import Any

from bridge.config import Config
from bridge.matrix.gateway import MatrixGateway
from bridge.matrix.outbox import AUTOMATED

__all__ = ["AUTOMATED", "TherapistVoice"]


class TherapistVoice:
    def __init__(self, config: Config, gateway: MatrixGateway) -> None:
        self.config = config
        self.gateway = gateway
        self._exists: set[str] = set()  # only positive answers: an account may be created later

    def name(self, user_id: str) -> str:
        member = self.config.staff_member(user_id)
        return member.displayname if member else user_id

    async def speaker(self, therapist: str) -> str:
        if not self.gateway.can_act_as(therapist):
            return self.gateway.bot_user_id
        if therapist not in self._exists:
            if not await self.gateway.user_exists(therapist):
                return self.gateway.bot_user_id
            self._exists.add(therapist)
        return therapist

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
