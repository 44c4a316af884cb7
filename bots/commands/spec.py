"""A command is declared, not discovered: name, arguments, help and who may run it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import CommandContext

ROLES = ("therapist", "care", "admin", "client")
STAFF = ("therapist", "care", "admin")
EVERYONE = ROLES

Handler = Callable[["CommandContext"], Awaitable[None]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Handler
    help: str
    usage: str = ""
    roles: tuple[str, ...] = EVERYONE
    min_args: int = 0
    max_args: int | None = None

    @property
    def usage_line(self) -> str:
        return f"!{self.name} {self.usage}".rstrip()

    def allows(self, role: str) -> bool:
        return role in self.roles

    def role_phrase(self) -> str:
        names = {
            "therapist": "therapists",
            "care": "care staff",
            "admin": "admins",
            "client": "clients",
        }
        parts = [names[r] for r in self.roles]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
