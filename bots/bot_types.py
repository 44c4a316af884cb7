"""Small shared types for features: how they send, and the notice shape."""

from __future__ import annotations

from typing import Any, Protocol


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
