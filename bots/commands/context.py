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
    _private: Reply | None = field(default=None, repr=False)

    async def reply(self, text: str) -> None:
        """A reply in the room of the command: never a client's full name or a list of
        clients (see ``reply_private``)."""
        await self._reply(text)

    async def reply_private(self, text: str) -> None:
        """A reply that names a client or lists clients: it goes to the sender's management
        room, with a one-line pointer here when the command was typed elsewhere (the Bot
        routes it; a context built without that routing, in a test, answers in place)."""
        await (self._private or self._reply)(text)
