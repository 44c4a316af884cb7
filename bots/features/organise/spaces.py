"""Spaces Alcove owns: for each therapist "Clients" (their 1:1s), "Groups" (community rooms),
"Sessions" (live text-only sessions) and "Archive" (archived conversations); and one space of
the practice for the staff rooms (team room, Client Care rooms), for all staff. Each is
created when the first room goes into it.

Rooms are filed with ``m.space.child`` in the space only. A room a client is in gets no
``m.space.parent``: that would be state of the client's own room, readable by them, naming a
space they cannot see — and it would change when the therapist archives the conversation, which
must change nothing the client can see. Staff rooms (no client in them) get both.

Clients are never members of any space (invite-only, staff invited; staff below the invite and
state levels, so only the bot files rooms and nobody can be let in). The database says which
spaces exist and which conversations are archived; the homeserver's ``m.space.child`` state is
made to match it as rooms are created, archived or ended, and repaired at start-up
(``repair``): idempotent, so a crash half-way is finished at the next start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import MatrixGateway, MatrixSendError, PermanentError

from ..conversations import rules
from ..conversations.repo import CARE, DM, GROUP, TEAM, ConversationRepo, Room
from ..conversations.service import ConversationService

log = logging.getLogger("alcove.spaces")

CLIENTS, GROUPS, SESSIONS, ARCHIVE, PRACTICE = (
    "clients",
    "groups",
    "sessions",
    "archive",
    "practice",
)
THERAPIST_SPACES = (CLIENTS, GROUPS, SESSIONS, ARCHIVE)
SESSION = "session"
"""The kind of a text-only session's room (they are not in ``conv_room``)."""
PRACTICE_OWNER = ""
NAMES = {CLIENTS: "Clients", GROUPS: "Groups", SESSIONS: "Sessions", ARCHIVE: "Archive"}
TOPICS = {
    CLIENTS: "Your 1:1 conversations with clients. Only you see this space.",
    GROUPS: "Your community chats. Only you see this space.",
    SESSIONS: "Your text-only sessions while they last. Only you see this space.",
    ARCHIVE: "Conversations you archived (!unarchive brings one back). Only you see this space.",
}
PRESENT = ("join", "invite")

LiveSessions = Callable[[], Awaitable[list[tuple[str, str]]]]
"""(room id, therapist) of every live session room."""


def space_for(kind: str, archived: bool) -> str | None:
    """Which of its owner's spaces a room of ``kind`` belongs in (None: in none)."""
    if kind in (DM, GROUP):
        return ARCHIVE if archived else (CLIENTS if kind == DM else GROUPS)
    if kind == SESSION:
        return SESSIONS
    if kind in (CARE, TEAM):
        return PRACTICE
    return None


def owner_of(room: Room) -> str:
    return PRACTICE_OWNER if room.kind in (CARE, TEAM) else (room.therapist_id or "")


class SpaceRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, owner: str, kind: str) -> str | None:
        value = await self.db.fetchval(
            "SELECT room_id FROM space WHERE owner = $1 AND kind = $2", owner, kind
        )
        return str(value) if value is not None else None

    async def add(self, owner: str, kind: str, room_id: str, now_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO space (owner, kind, room_id, created_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (owner, kind) DO NOTHING",
            owner,
            kind,
            room_id,
            now_ms,
        )

    async def of(self, owner: str) -> dict[str, str]:
        rows = await self.db.fetch("SELECT kind, room_id FROM space WHERE owner = $1", owner)
        return {str(r["kind"]): str(r["room_id"]) for r in rows}

    async def all(self) -> list[tuple[str, str, str]]:
        rows = await self.db.fetch("SELECT owner, kind, room_id FROM space ORDER BY created_at")
        return [(str(r["owner"]), str(r["kind"]), str(r["room_id"])) for r in rows]


class Spaces:
    def __init__(
        self,
        config: Config,
        gateway: MatrixGateway,
        conversations: ConversationService,
        db: Database,
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.conversations = conversations
        self.repo: ConversationRepo = conversations.repo
        self.spaces = SpaceRepo(db)
        self.audit = audit
        self.clock = clock
        self.live_sessions: LiveSessions = _no_sessions
        self._lock = asyncio.Lock()
        """One change of the spaces at a time: the start-up repair runs while commands
        already file rooms, and a space must never be created twice."""

    @property
    def bot(self) -> str:
        return self.gateway.bot_user_id

    @property
    def via(self) -> list[str]:
        return [self.config.homeserver.domain]

    # ------------------------------------------------------------------ the spaces

    def _members(self, owner: str) -> list[str]:
        if owner == PRACTICE_OWNER:
            return [m.user_id for m in self.config.staff]
        return [owner]

    async def space(self, owner: str, kind: str) -> str:
        """The owner's space of ``kind``: the recorded one, or a new one (its members invited,
        and joined where Alcove may act for them)."""
        existing = await self.spaces.get(owner, kind)
        if existing is not None:
            return existing
        if kind == PRACTICE:
            name = self.config.practice.name
            topic = "The practice's staff rooms. Membership follows Alcove's configuration."
        else:
            name, topic = NAMES[kind], TOPICS[kind]
        members = self._members(owner)
        room_id = await self.gateway.create_room(
            rules.space_body(name, dict.fromkeys(members, rules.STAFF_LEVEL), topic)
        )
        await self.spaces.add(owner, kind, room_id, ms(self.clock))
        recorded = await self.spaces.get(owner, kind)
        assert recorded is not None
        if recorded != room_id:  # created concurrently: keep the recorded one
            log.warning("Space %s of %s was created twice; %s is unused", kind, owner, room_id)
            return recorded
        await self.audit.record(self.bot, "room.created", owner or None, room_id, kind="space")
        log.info("Created the %s space %s for %s", kind, room_id, owner or "the practice")
        for member in members:
            await self.conversations.join_as_staff(member, room_id)
        return room_id

    async def _keep_members(self, owner: str, space_id: str) -> None:
        """Members follow the config: a staff member who left is invited again (and joined
        where Alcove may act for them); in the practice's space, one no longer on the staff
        list is removed."""
        members = await self.gateway.room_members(space_id)
        wanted = self._members(owner)
        pl = await self.gateway.get_state(space_id, "m.room.power_levels") or {}
        levels = dict.fromkeys(wanted, rules.STAFF_LEVEL)
        if pl and pl.get("users") != levels:
            await self.gateway.send_state(
                self.bot, space_id, "m.room.power_levels", "", {**pl, "users": levels}
            )
        for user in wanted:
            if members.get(user) not in PRESENT:
                await self.gateway.invite(space_id, user)
                await self.conversations.join_as_staff(user, space_id)
        for user, membership in members.items():
            if user != self.bot and user not in wanted and membership in PRESENT:
                try:
                    await self.gateway.kick(space_id, user, "No longer on the staff list")
                except PermanentError as e:
                    log.info("Could not remove %s from space %s: %s", user, space_id, e)

    def _staff(self, owner: str) -> bool:
        return bool(owner) and self.config.staff_member(owner) is not None

    # ------------------------------------------------------------------ filing rooms

    async def file(self, room: Room) -> None:
        """Put the room in the one space it belongs in and take it out of its owner's others."""
        async with self._lock:
            await self._file(room)

    async def _file(self, room: Room) -> None:
        kind = space_for(room.kind, room.archived)
        owner = owner_of(room)
        if kind is None or (kind != PRACTICE and not self._staff(owner)):
            return
        target = await self.space(owner, kind)
        await self._add_child(target, room.room_id)
        for other in (await self.spaces.of(owner)).values():
            if other != target:
                await self._remove_child(other, room.room_id)
        if kind == PRACTICE:  # no client in a staff room: it may name its space
            await self._set_parent(room.room_id, target)

    async def unfile(self, room_id: str, owner: str) -> None:
        """Take the room out of every space of its owner (a session that ended)."""
        async with self._lock:
            await self._unfile(room_id, owner)

    async def _unfile(self, room_id: str, owner: str) -> None:
        for space_id in (await self.spaces.of(owner)).values():
            await self._remove_child(space_id, room_id)

    async def _add_child(self, space_id: str, room_id: str) -> None:
        current = await self.gateway.get_state(space_id, "m.space.child", room_id)
        if not current or not current.get("via"):
            await self.gateway.send_state(
                self.bot, space_id, "m.space.child", room_id, {"via": self.via}
            )

    async def _remove_child(self, space_id: str, room_id: str) -> None:
        current = await self.gateway.get_state(space_id, "m.space.child", room_id)
        if current and current.get("via"):
            await self.gateway.send_state(self.bot, space_id, "m.space.child", room_id, {})

    async def _set_parent(self, room_id: str, space_id: str) -> None:
        current = await self.gateway.get_state(room_id, "m.space.parent", space_id)
        if not current or not current.get("via"):
            await self.gateway.send_state(
                self.bot,
                room_id,
                "m.space.parent",
                space_id,
                {"via": self.via, "canonical": True},
            )

    # ------------------------------------------------------------------ at start-up

    async def repair(self) -> None:
        """Each space has exactly the rooms that belong in it, and the members the config
        says; a space some room belongs in is created if it is missing. (A space is created
        when its first room goes in: an Alcove with no conversations yet makes no spaces, so
        starting one costs no room creations.)"""
        async with self._lock:
            await self._repair()

    async def _repair(self) -> None:
        wanted: dict[str, set[str]] = {}
        staff_rooms: list[tuple[str, str]] = []
        try:
            for owner, _kind, space_id in await self.spaces.all():
                wanted.setdefault(space_id, set())
                if owner == PRACTICE_OWNER or self.config.staff_member(owner) is not None:
                    try:
                        await self._keep_members(owner, space_id)
                    except PermanentError as e:  # e.g. deleted by an admin: the others go on
                        log.error("Could not check the members of space %s: %s", space_id, e)
            for kind in (DM, GROUP, CARE, TEAM):
                for room in await self.repo.rooms_of(None, kind):
                    target = space_for(room.kind, room.archived)
                    owner = owner_of(room)
                    if target is None or (target != PRACTICE and not self._staff(owner)):
                        continue
                    space_id = await self.space(owner, target)
                    wanted.setdefault(space_id, set()).add(room.room_id)
                    if target == PRACTICE:
                        staff_rooms.append((room.room_id, space_id))
            for room_id, therapist in await self.live_sessions():
                if not self._staff(therapist):
                    continue
                wanted.setdefault(await self.space(therapist, SESSIONS), set()).add(room_id)
        except MatrixSendError as e:
            log.error("Could not set up the spaces: %s", e)
            return
        added = removed = 0
        for space_id, children in wanted.items():
            try:
                a, r = await self._repair_children(space_id, children)
            except MatrixSendError as e:
                log.error("Could not repair space %s: %s", space_id, e)
                continue
            added, removed = added + a, removed + r
        for room_id, space_id in staff_rooms:
            try:
                await self._set_parent(room_id, space_id)
            except MatrixSendError as e:
                log.warning("Could not name the space of staff room %s: %s", room_id, e)
        if added or removed:
            log.info("Spaces repaired: %d rooms filed, %d taken out", added, removed)

    async def _repair_children(self, space_id: str, children: set[str]) -> tuple[int, int]:
        current = {
            str(e["state_key"])
            for e in await self.gateway.room_state(space_id)
            if e.get("type") == "m.space.child" and _filed(e)
        }
        for room_id in sorted(children - current):
            await self.gateway.send_state(
                self.bot, space_id, "m.space.child", room_id, {"via": self.via}
            )
        for room_id in sorted(current - children):
            await self.gateway.send_state(self.bot, space_id, "m.space.child", room_id, {})
        return len(children - current), len(current - children)


def _filed(event: dict[str, Any]) -> bool:
    content = event.get("content") or {}
    return isinstance(event.get("state_key"), str) and bool(content.get("via"))


async def _no_sessions() -> list[tuple[str, str]]:
    return []
