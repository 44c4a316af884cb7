"""Restore a deleted message: care and admin staff re-post what was redacted, while the
homeserver still keeps the original (Synapse's ``redaction_retention_period``), read through
Synapse's moderator access to redacted content (MSC2815, ``experimental_features:
msc2815_enabled``) as the bot, a server admin. Never in a text-only session's room (nothing of
a session is kept). The audit log records who restored which event, never its text."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from bridge.clock import Clock
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import MatrixGateway, PermanentError

from ...bot_types import Sender, notice
from ..conversations.repo import MANAGEMENT
from ..conversations.service import ConversationService

log = logging.getLogger("alcove.restore")

CONTENT_DELETED = "FI.MAU.MSC2815_UNREDACTED_CONTENT_DELETED"
TEXT_TYPES = ("m.text", "m.notice", "m.emote")

_MATRIX_TO = re.compile(r"^(![^/?\s]+)/(\$[^?/\s]+)")
_MATRIX_URI = re.compile(r"^matrix:roomid/([^/?\s]+)/e/([^/?\s]+)")


class RestoreRefused(Exception):
    """Why this message cannot be restored (said to the staff member as it is)."""


@dataclass(frozen=True)
class EventLink:
    room_id: str
    event_id: str


def parse_event_link(text: str) -> EventLink | None:
    """Element's "Copy link" (``https://matrix.to/#/!room:server/$event?via=…``, the room part
    percent-encoded or not) or a ``matrix:roomid/…/e/…`` URI. None if it is neither."""
    text = text.strip().strip("<>")
    _, hash_, fragment = text.partition("#/")
    if hash_ and (match := _MATRIX_TO.match(unquote(fragment))):
        return EventLink(match[1], match[2])
    if match := _MATRIX_URI.match(text):
        return EventLink("!" + unquote(match[1]), "$" + unquote(match[2]))
    return None


class RestoreService:
    def __init__(
        self,
        config: Config,
        gateway: MatrixGateway,
        outbox: Sender,
        conversations: ConversationService,
        audit: AuditLog,
        clock: Clock,
        is_session_room: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.outbox = outbox
        self.conversations = conversations
        self.audit = audit
        self.clock = clock
        self.is_session_room = is_session_room
        """A text-only session's room (live or ended)."""

    async def restore(self, actor: str, link: EventLink, origin_event: str) -> str:
        """Re-post the deleted message in its room as a notice from the bot; returns what to
        tell the staff member. RestoreRefused says why not."""
        room_id, event_id = link.room_id, link.event_id
        if await self.is_session_room(room_id):
            raise RestoreRefused(
                "Messages of a text-only session are never restored: nothing of a session is kept."
            )
        room = await self.conversations.room(room_id)
        if room is None or room.kind == MANAGEMENT:
            raise RestoreRefused(
                "That message is not in a conversation Alcove manages, so I cannot restore it."
            )
        event = await self._original(room_id, event_id)
        if not (event.get("unsigned") or {}).get("redacted_because"):
            raise RestoreRefused("That message is not deleted: there is nothing to restore.")
        content = event.get("content") or {}
        if event.get("type") == "m.room.encrypted":
            raise RestoreRefused(
                "That message was encrypted: the homeserver keeps only ciphertext, which I "
                "cannot restore."
            )
        body = content.get("body")
        if (
            event.get("type") != "m.room.message"
            or content.get("msgtype") not in TEXT_TYPES
            or not isinstance(body, str)
        ):
            raise RestoreRefused("Only text messages can be restored.")
        author = await self.author_label(str(event.get("sender", "")))
        when = self.local_time(int(event.get("origin_server_ts", 0)))
        await self.outbox.send(
            f"restore:{origin_event}",
            self.gateway.bot_user_id,
            room_id,
            notice(f"Restored: message from {author} at {when}\n{body}"),
        )
        if not await self._audited(origin_event):  # a replayed command is recorded once
            await self.audit.record(
                actor,
                "message.restored",
                str(event.get("sender", "")),
                room_id,
                event_id=event_id,
                command=origin_event,
            )
        log.info("%s restored %s in %s", actor, event_id, room_id)
        return f"Restored the message from {author} at {when} in https://matrix.to/#/{room_id}"

    async def _audited(self, origin_event: str) -> bool:
        entries = await self.audit.entries("message.restored")
        return any(e.detail.get("command") == origin_event for e in entries)

    async def _original(self, room_id: str, event_id: str) -> dict[str, Any]:
        try:
            return await self.gateway.unredacted_event(room_id, event_id)
        except PermanentError as e:
            if e.errcode == CONTENT_DELETED:
                raise RestoreRefused(
                    "Too late: the homeserver has already erased that message's content. Deleted "
                    "messages can be restored only within its retention window "
                    "(redaction_retention_period in homeserver.yaml)."
                ) from None
            if e.status == 400 or e.status == 404:
                raise RestoreRefused(
                    "I cannot find that message. Copy its link in Element (Options → Share → "
                    "Copy link) and send !restore <link>."
                ) from None
            if e.status == 403:
                raise RestoreRefused(
                    "The homeserver does not let me read deleted messages there: it needs "
                    "experimental_features: {msc2815_enabled: true} in homeserver.yaml and the "
                    "bot as a server admin."
                ) from None
            raise

    async def author_label(self, sender: str) -> str:
        """A client by initials (never a full name: the notice is read in a shared room), staff
        by their configured name."""
        client = await self.conversations.client(sender)
        if client is not None:
            return client.initials
        staff = self.config.staff_member(sender)
        if staff is not None:
            return staff.displayname
        return sender

    def local_time(self, ts_ms: int) -> str:
        tz = self.config.practice.timezone
        return datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M")
