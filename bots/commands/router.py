"""From a message to its handler: parse, lookup, permission, declared arguments, edits, errors
with a reference."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridge.matrix.gateway import TemporaryError

from .args import UsageError, UserError, best_usage, match
from .context import CommandContext
from .incoming import Incoming
from .parse import ParsedCommand, ParseError, parse_command
from .registry import CommandRegistry
from .runs import CommandRuns

log = logging.getLogger("alcove.commands")

Refused = Callable[[str, str, str], Awaitable[None]]

EDIT_WINDOW_MS = 10 * 60 * 1000
EDIT_NOT_APPLIED = (
    "Edits to a command are not applied once it has run (or after 10 minutes). "
    "Please send the command again."
)


Say = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class _Call:
    """Who sent the command where, and how to answer: the same for an edit and its run."""

    sender: str
    role: str | None
    room_id: str
    event_id: str
    reply: Say
    reply_private: Say | None


class CommandRouter:
    def __init__(
        self,
        registry: CommandRegistry,
        on_refused: Refused | None = None,
        runs: CommandRuns | None = None,
    ) -> None:
        self.registry = registry
        self.on_refused = on_refused
        self.runs = runs

    async def handle(
        self,
        message: str | Incoming,
        *,
        sender: str,
        role: str | None,
        room_id: str,
        event_id: str,
        reply: Callable[[str], Awaitable[None]],
        reply_private: Callable[[str], Awaitable[None]] | None = None,
    ) -> bool:
        """Run a command message. Returns False if it is not a command (or an edit of one)."""
        incoming = Incoming(message) if isinstance(message, str) else message
        parsed = parse_command(incoming.text, incoming.pills)
        if parsed is None:
            return False
        call = _Call(sender, role, room_id, event_id, reply, reply_private)
        if incoming.edit_of is not None:
            return await self._edit(incoming, parsed, call)
        ran = await self._run(parsed, call)
        if self.runs is not None and role is not None:
            await self.runs.record(
                event_id, room_id, sender, incoming.sent_at, incoming.thread_root, ran
            )
        return True

    async def _edit(
        self, incoming: Incoming, parsed: ParsedCommand | ParseError, call: _Call
    ) -> bool:
        """An edit runs only if the command it edits did not, and within 10 minutes of it."""
        assert incoming.edit_of is not None
        original = await self.runs.get(incoming.edit_of) if self.runs is not None else None
        if original is None or original.sender != call.sender or original.room_id != call.room_id:
            return False  # not an edit of a command we saw from this sender here: ignored
        incoming.thread_root = original.thread_root
        incoming.reply_to = original.event_id
        if original.ran_by is not None and original.ran_by != call.event_id:
            await call.reply(EDIT_NOT_APPLIED)
            return True
        if original.ran_by is None and incoming.sent_at - original.sent_at > EDIT_WINDOW_MS:
            await call.reply(EDIT_NOT_APPLIED)
            return True
        ran = await self._run(parsed, call)
        if ran and self.runs is not None:
            await self.runs.ran_by(original.event_id, call.event_id)
        return True

    async def _run(self, parsed: ParsedCommand | ParseError, call: _Call) -> bool:
        """True if a handler ran; False for an unknown command, a refusal or wrong use."""
        sender, role, room_id, reply = call.sender, call.role, call.room_id, call.reply
        spec = self.registry.get(parsed.name)
        if role is None:
            await reply("Sorry, I only take commands from this practice's staff and clients.")
            return False
        if spec is None:
            await reply(f"Unknown command !{parsed.name}. Send !help for the commands you can use.")
            return False
        if not spec.allows(role):
            log.info("Refused !%s for %s (role %s)", spec.name, sender, role)
            if self.on_refused is not None:
                await self.on_refused(sender, spec.name, room_id)
            await reply(f"Only {spec.role_phrase()} can use !{spec.name}.")
            return False
        if isinstance(parsed, ParseError):
            await reply(f"{parsed.reason}. Usage: {spec.usage_line}")
            return False
        try:
            matched = match(spec.forms, parsed)
        except UsageError as e:
            await reply(e.render(spec.usage_of(best_usage(spec.forms, parsed))))
            return False
        handler = matched.sub.handler
        assert handler is not None
        ctx = CommandContext(
            sender=sender,
            role=role,
            room_id=room_id,
            event_id=call.event_id,
            name=spec.name,
            args=parsed.args,
            raw_args=parsed.raw_args,
            registry=self.registry,
            _reply=reply,
            values=matched.values,
            _private=call.reply_private,
        )
        try:
            await handler(ctx)
        except TemporaryError:
            raise  # the homeserver is unwell: let the inbox retry the whole event later
        except UserError as e:
            private = call.reply_private
            say = private if e.private and private is not None else reply
            if isinstance(e, UsageError):
                await say(e.render(spec.usage_of(matched.sub.usage())))
            else:
                await say(str(e))
            return False
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("Command !%s failed (reference %s)", spec.name, ref)
            await reply(f"Something went wrong on our side. Reference: {ref}")
        return True
