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


MAX_BODY_BYTES = 32_000
"""Synapse refuses events over 65,536 bytes; a reply longer than this goes out in parts."""


def split_text(text: str, limit: int = MAX_BODY_BYTES) -> list[str]:
    """Split at line breaks into parts of at most ``limit`` UTF-8 bytes (a line longer than
    that is cut, at a character boundary)."""
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.split("\n"):
        while len(line.encode()) > limit:
            cut = line.encode()[:limit].decode(errors="ignore") or line[0]
            if current:
                parts.append("\n".join(current))
                current, size = [], 0
            parts.append(cut)
            line = line[len(cut) :]
        extra = len(line.encode()) + (1 if current else 0)
        if current and size + extra > limit:
            parts.append("\n".join(current))
            current, size = [], 0
            extra = len(line.encode())
        current.append(line)
        size += extra
    parts.append("\n".join(current))
    return parts
