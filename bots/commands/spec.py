"""A command is declared, not discovered: name, subcommands and arguments, help and who may
run it. The usage line and `!help` are generated from the declaration."""

from __future__ import annotations

from dataclasses import dataclass

from .args import Handler, Item, Sub

ROLES = ("therapist", "care", "admin", "client")
STAFF = ("therapist", "care", "admin")
EVERYONE = ROLES

__all__ = ["EVERYONE", "ROLES", "STAFF", "CommandSpec", "Handler"]


@dataclass(frozen=True)
class CommandSpec:
    """``handler`` and ``args`` for a command with one form; ``subs`` for one with several
    (each with its own handler), e.g. ``!client add …`` and ``!client list``."""

    name: str
    handler: Handler | None
    help: str
    args: tuple[Item, ...] = ()
    roles: tuple[str, ...] = EVERYONE
    subs: tuple[Sub, ...] = ()

    def __post_init__(self) -> None:
        if (self.handler is None) == (not self.subs):
            raise ValueError(f"!{self.name}: declare a handler or subcommands, not both")

    @property
    def forms(self) -> tuple[Sub, ...]:
        return self.subs or (Sub(None, self.handler, self.args),)

    @property
    def usage_line(self) -> str:
        return self.usage_of(" | ".join(u for u in (s.usage() for s in self.forms) if u))

    def usage_of(self, usage: str) -> str:
        return f"!{self.name} {usage}".rstrip()

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
