"""What a command handler receives: who, where, the arguments, and a way to answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .registry import CommandRegistry

Reply = Callable[[str], Awaitable[None]]


@dataclass
class CommandContext:
    sender: str
    role: str
    room_id: str
    event_id: str
    name: str
    args: tuple[str, ...]
    raw_args: str
    registry: CommandRegistry
    _reply: Reply = field(repr=False)
    values: dict[str, Any] = field(default_factory=dict)
    """The declared arguments, converted (by key); see ``args.py``."""

    async def reply(self, text: str) -> None:
        await self._reply(text)
