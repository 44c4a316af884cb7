"""From a parsed command to its handler: lookup, permission, arity, errors with a reference."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from bridge.matrix.gateway import TemporaryError

from .context import CommandContext
from .parse import ParseError, parse_command
from .registry import CommandRegistry

log = logging.getLogger("alcove.commands")

ReplyFactory = Callable[[str], Callable[[str], Awaitable[None]]]


Refused = Callable[[str, str, str], Awaitable[None]]


class CommandRouter:
    def __init__(self, registry: CommandRegistry, on_refused: Refused | None = None) -> None:
        self.registry = registry
        self.on_refused = on_refused

    async def handle(
        self,
        body: str,
        *,
        sender: str,
        role: str | None,
        room_id: str,
        event_id: str,
        reply: Callable[[str], Awaitable[None]],
        reply_private: Callable[[str], Awaitable[None]] | None = None,
    ) -> bool:
        """Run a command message. Returns False if the body is not a command."""
        parsed = parse_command(body)
        if parsed is None:
            return False
        spec = self.registry.get(parsed.name)
        if role is None:
            await reply("Sorry, I only take commands from this practice's staff and clients.")
            return True
        if spec is None:
            await reply(f"Unknown command !{parsed.name}. Send !help for the commands you can use.")
            return True
        if not spec.allows(role):
            log.info("Refused !%s for %s (role %s)", spec.name, sender, role)
            if self.on_refused is not None:
                await self.on_refused(sender, spec.name, room_id)
            await reply(f"Only {spec.role_phrase()} can use !{spec.name}.")
            return True
        if isinstance(parsed, ParseError):
            await reply(f"{parsed.reason}. Usage: {spec.usage_line}")
            return True
        if len(parsed.args) < spec.min_args or (
            spec.max_args is not None and len(parsed.args) > spec.max_args
        ):
            await reply(f"Usage: {spec.usage_line}")
            return True
        ctx = CommandContext(
            sender=sender,
            role=role,
            room_id=room_id,
            event_id=event_id,
            name=spec.name,
            args=parsed.args,
            raw_args=parsed.raw_args,
            registry=self.registry,
            _reply=reply,
            _private=reply_private,
        )
        try:
            await spec.handler(ctx)
        except TemporaryError:
            raise  # the homeserver is unwell: let the inbox retry the whole event later
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("Command !%s failed (reference %s)", spec.name, ref)
            await reply(f"Something went wrong on our side. Reference: {ref}")
        return True
