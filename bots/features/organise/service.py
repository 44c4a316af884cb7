"""Archive, find, mute and video: what a therapist does to organise their conversations.

Everything that changes the therapist's own view (the low-priority tag, a push rule) is done
*as the therapist* through the double-puppet registration: it is their account data, which
the bot cannot touch. Nothing here changes what a client sees, except ``!video``, which puts
a meeting into the room for everyone in it."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import MatrixGateway, MatrixSendError, PermanentError
from bridge.timers import Timers

from ...bot_types import Sender, notice
from ..conversations.management import link
from ..conversations.repo import DM, GROUP, Client, Room
from ..conversations.service import ConversationService
from ..schedule.timeparse import local_text
from .spaces import Spaces

log = logging.getLogger("alcove.organise")

LOW_PRIORITY = "m.lowpriority"
WIDGETS = "im.vector.modular.widgets"
WIDGET_LAYOUT = "io.element.widgets.layout"


class CannotActAs(Exception):
    """Alcove may not act as this staff member (no double-puppet registration)."""


# ---------------------------------------------------------------------- pure parts


def mute_rule(room_id: str) -> dict[str, Any]:
    """The push rule clients write for "Mute" (Element Web and Element X: an override rule
    named after the room, matching its events, with no actions): nothing from the room
    notifies, mentions included."""
    return {
        "conditions": [{"kind": "event_match", "key": "room_id", "pattern": room_id}],
        "actions": [],
    }


@dataclass(frozen=True)
class Found:
    room: Room
    client: Client | None
    why: str


def matches(text: str, *candidates: str | None) -> bool:
    """``text`` is a case-insensitive substring of one of the candidates."""
    wanted = text.strip().lower()
    return bool(wanted) and any(c is not None and wanted in c.lower() for c in candidates)


def client_matches(text: str, client: Client) -> bool:
    """Full name, initials (with or without their dots: "J.D." and "jd") or user ID."""
    return matches(
        text, client.full_name, client.initials, client.initials.replace(".", ""), client.user_id
    )


def widget(config: Config, therapist: str, room_id: str) -> tuple[str, dict[str, Any], str]:
    """(widget id, the widget's state content, the meeting's link) for a new video meeting
    with a random, unguessable conference name."""
    video = config.video
    conference = "Alcove" + secrets.token_hex(12)
    widget_id = f"alcove_video_{secrets.token_hex(6)}"
    if video.provider == "jitsi":
        url = f"https://{video.jitsi_domain}/{conference}"
        content: dict[str, Any] = {
            "type": "jitsi",
            "url": url,
            "name": "Video meeting",
            "data": {
                "domain": video.jitsi_domain,
                "conferenceId": conference,
                "isAudioOnly": False,
                "roomName": "Video meeting",
            },
        }
    else:
        url = f"{video.element_call_url}/room/#/{quote(conference)}"
        content = {
            "type": "m.custom",
            "url": url,
            "name": "Video meeting (Element Call)",
            "data": {"title": "Video meeting"},
        }
    content.update({"id": widget_id, "creatorUserId": therapist, "roomId": room_id})
    return widget_id, content, url


# ---------------------------------------------------------------------- the service


class MuteRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, staff: str, room_id: str, until_at: int | None, now_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO room_mute (staff_id, room_id, until_at, created_at)"
            " VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (staff_id, room_id) DO UPDATE SET until_at = $3, created_at = $4",
            staff,
            room_id,
            until_at,
            now_ms,
        )

    async def get(self, staff: str, room_id: str) -> tuple[int | None] | None:
        row = await self.db.fetchrow(
            "SELECT until_at FROM room_mute WHERE staff_id = $1 AND room_id = $2", staff, room_id
        )
        if row is None:
            return None
        until = row["until_at"]
        return (int(until) if until is not None else None,)

    async def delete(self, staff: str, room_id: str) -> None:
        await self.db.execute(
            "DELETE FROM room_mute WHERE staff_id = $1 AND room_id = $2", staff, room_id
        )

    async def timed(self) -> list[tuple[str, str, int]]:
        rows = await self.db.fetch(
            "SELECT staff_id, room_id, until_at FROM room_mute WHERE until_at IS NOT NULL"
        )
        return [(str(r["staff_id"]), str(r["room_id"]), int(r["until_at"])) for r in rows]


class Organiser:
    def __init__(
        self,
        config: Config,
        gateway: MatrixGateway,
        outbox: Sender,
        conversations: ConversationService,
        spaces: Spaces,
        db: Database,
        audit: AuditLog,
        timers: Timers,
        clock: Clock,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.outbox = outbox
        self.conversations = conversations
        self.spaces = spaces
        self.mutes = MuteRepo(db)
        self.audit = audit
        self.timers = timers
        self.clock = clock

    @property
    def bot(self) -> str:
        return self.gateway.bot_user_id

    async def _acting_as(self, staff: str) -> None:
        if await self.conversations.voice.speaker(staff) != staff:
            raise CannotActAs(staff)

    # ------------------------------------------------------------------ archive

    async def archive(self, room: Room, actor: str, archived: bool) -> bool:
        """Move the conversation to the "Archive" space (or back) and set (or remove) the
        therapist's low-priority tag. Returns False if Alcove may not act as the therapist
        (the room moved, the tag is theirs to set)."""
        at = ms(self.clock) if archived else None
        await self.conversations.repo.set_archived(room.room_id, at)
        await self.spaces.file(replace(room, archived_at=at))
        await self.audit.record(
            actor, "room.archived" if archived else "room.unarchived", room.client_id, room.room_id
        )
        therapist = room.therapist_id or actor
        try:
            await self._acting_as(therapist)
        except CannotActAs:
            return False
        if archived:
            await self.gateway.set_room_tag(therapist, room.room_id, LOW_PRIORITY, {"order": 0.5})
        else:
            await self.gateway.delete_room_tag(therapist, room.room_id, LOW_PRIORITY)
        return True

    # ------------------------------------------------------------------ find

    async def find(self, therapist: str, text: str) -> list[Found]:
        """The therapist's conversations whose client (full name, initials, ID) or group title
        matches ``text``; a group also when one of its members matches. Archived included."""
        clients = {c.user_id: c for c in await self.conversations.clients_of(therapist)}
        hits = {c.user_id for c in clients.values() if client_matches(text, c)}
        found: list[Found] = []
        for room in await self.conversations.rooms_of(therapist, DM):
            client = clients.get(room.client_id or "")
            if client is not None and client.user_id in hits:
                found.append(Found(room, client, "client"))
        for room in await self.conversations.rooms_of(therapist, GROUP):
            members = await self.conversations.members(room.room_id)
            if matches(text, room.title):
                found.append(Found(room, None, "title"))
            elif any(m in hits for m in members):
                names = ", ".join(clients[m].initials for m in members if m in hits)
                found.append(Found(room, None, f"with {names}"))
        return found

    # ------------------------------------------------------------------ mute

    async def mute(self, staff: str, room_id: str, until: datetime | None) -> None:
        """The staff member's "Mute" push rule for the room, as them; with ``until`` it ends by
        itself then (the row re-arms the timer after a restart)."""
        await self._acting_as(staff)
        await self.gateway.set_push_rule(staff, "override", room_id, mute_rule(room_id))
        until_ms = int(until.timestamp() * 1000) if until is not None else None
        await self.mutes.set(staff, room_id, until_ms, ms(self.clock))
        key = _mute_key(staff, room_id)
        if until is None:
            self.timers.cancel(key)
        else:
            self.timers.arm(key, until, self.expire, staff, room_id)
        await self.audit.record(staff, "room.muted", None, room_id, until=until_ms)

    async def unmute(self, staff: str, room_id: str) -> bool:
        """Remove the mute (the push rule, as them). False if there was none."""
        await self._acting_as(staff)
        had_rule = await self.gateway.delete_push_rule(staff, "override", room_id)
        had_row = await self.mutes.get(staff, room_id) is not None
        await self.mutes.delete(staff, room_id)
        self.timers.cancel(_mute_key(staff, room_id))
        if had_rule or had_row:
            await self.audit.record(staff, "room.unmuted", None, room_id)
        return had_rule or had_row

    async def start(self) -> None:
        """Re-arm every timed mute (one whose end passed while Alcove was down ends at once)."""
        for staff, room_id, until_at in await self.mutes.timed():
            when = datetime.fromtimestamp(until_at / 1000, UTC)
            self.timers.arm(_mute_key(staff, room_id), when, self.expire, staff, room_id)

    async def expire(self, staff: str, room_id: str) -> None:
        """A timed mute's timer: end it if it is still due (not changed or lifted since)."""
        row = await self.mutes.get(staff, room_id)
        if row is None or row[0] is None:
            return
        if row[0] > ms(self.clock):  # extended since: its own timer is armed
            return
        try:
            await self.unmute(staff, room_id)
        except (MatrixSendError, CannotActAs) as e:
            log.warning("Could not end the mute of %s for %s: %s", room_id, staff, e)
            if isinstance(e, PermanentError | CannotActAs):
                await self.mutes.delete(staff, room_id)
            else:
                retry = datetime.fromtimestamp(ms(self.clock) / 1000 + 60, UTC)
                self.timers.arm(_mute_key(staff, room_id), retry, self.expire, staff, room_id)
            return
        mgmt = await self.conversations.management_room_for(staff)
        if mgmt is None:
            return
        room = await self.conversations.room(room_id)
        name = room.title if room is not None and room.title else "a conversation"
        await self.outbox.send(
            f"unmuted:{staff}:{room_id}:{row[0]}",
            self.bot,
            mgmt,
            notice(f"Notifications are on again for {name}: {link(room_id)}"),
        )

    def local(self, when: datetime) -> str:
        return local_text(when, self.config.practice.timezone)

    # ------------------------------------------------------------------ video

    async def start_video(self, room: Room, therapist: str) -> str:
        """Put a video meeting widget into the room (as the therapist where Alcove may act
        for them, else as the bot); returns the meeting's link."""
        widget_id, content, url = widget(self.config, therapist, room.room_id)
        try:
            await self._acting_as(therapist)
            sender = therapist
        except CannotActAs:
            sender = self.bot
        await self.gateway.send_state(sender, room.room_id, WIDGETS, widget_id, content)
        layout = {
            "widgets": {widget_id: {"container": "top", "index": 0, "width": 100, "height": 50}}
        }
        try:
            await self.gateway.send_state(sender, room.room_id, WIDGET_LAYOUT, "", layout)
        except PermanentError as e:  # the meeting works without being pinned
            log.info("Could not pin the video widget in %s: %s", room.room_id, e)
        await self.audit.record(therapist, "video.started", room.client_id, room.room_id)
        return url


def _mute_key(staff: str, room_id: str) -> str:
    return f"mute:{staff}:{room_id}"
