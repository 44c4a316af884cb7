"""Governance by any route: what Alcove does with membership events it did not cause.

Power levels stop clients from renaming rooms or inviting; they cannot stop a membership change
that Synapse allows everyone (leaving, a per-room rename), nor a therapist's plain invite from
Element. The homeserver module (``alcove_synapse``) refuses most of these up front; without it,
and for what it cannot see, Alcove repairs them here, after the fact:

- a managed client who leaves, is kicked or banned from a governed room is made to forget it
  (the homeserver then refuses them its history) and the departure is recorded;
- a managed client found joined to a room Alcove does not govern is made to leave and forget it;
- an invite into a governed room for anyone who is not in its scope is withdrawn (kick), and the
  inviter is told why;
- a rename in a shared room is reverted (see ``ConversationService.enforce_initials``).

Alcove's own invites and kicks are sent as the bot and never reach this module (``Dispatcher``
filters them): they are recorded where they are made. What Alcove does as a client or a
therapist (joins, declined invites) passes through here and is left alone by these rules."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.db.database import transaction
from bridge.matrix.gateway import MatrixGateway, PermanentError

from ...bot_types import Sender, notice
from .repo import CARE, DM, GROUP, TEAM, Client, ConversationRepo, Room
from .service import ConversationService

log = logging.getLogger("alcove.governance")

DEPARTURES = {"leave", "ban"}


class RoomGovernance:
    def __init__(
        self,
        config: Config,
        gateway: MatrixGateway,
        outbox: Sender,
        conversations: ConversationService,
        audit: AuditLog,
        clock: Clock,
        is_session_room: Callable[[str], bool],
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.outbox = outbox
        self.conversations = conversations
        self.repo: ConversationRepo = conversations.repo
        self.audit = audit
        self.clock = clock
        self.is_session_room = is_session_room

    @property
    def bot(self) -> str:
        return self.gateway.bot_user_id

    async def on_member(self, event: dict[str, Any]) -> None:
        """A membership event another user (not the bot) sent."""
        content = event.get("content") or {}
        target = event.get("state_key")
        sender = event.get("sender")
        room_id = event.get("room_id")
        if not (isinstance(target, str) and isinstance(sender, str) and isinstance(room_id, str)):
            return
        membership = content.get("membership")
        room = await self.repo.room(room_id)
        session = room is None and self.is_session_room(room_id)
        governed = room is not None or session
        if membership == "invite":
            if governed:
                await self.police_governed_invite(room, room_id, sender, target, event)
            else:
                await self.conversations.police_invite(room_id, sender, target)
            return
        client = await self.repo.client(target)
        if client is None:
            return
        if membership in DEPARTURES and governed:
            await self.departed(room_id, room, client, sender, str(membership), event)
        elif membership == "join" and sender == target:
            if not governed:
                await self.evict(room_id, client, event)
                return
            avatar = content.get("avatar_url")
            shared = session or (room is not None and room.kind == GROUP)
            name = content.get("displayname")
            await self.conversations.enforce_initials(
                room_id,
                target,
                name,
                event_id=event.get("event_id"),
                avatar_url=avatar if isinstance(avatar, str) else None,
                shared=shared,
            )
            if not shared and name is not None and name != client.initials:
                # Only the therapist reads a 1:1 room, but a global rename shows up here too,
                # and would reach the next group the client joins: put the global name back.
                await self.gateway.set_displayname(target, client.initials)

    # ------------------------------------------------------------------ removal by any route

    async def departed(
        self,
        room_id: str,
        room: Room | None,
        client: Client,
        sender: str,
        membership: str,
        event: dict[str, Any],
    ) -> None:
        """Left, kicked or banned outside Alcove: forget as the client, record it."""
        forgotten = await self._forget(client.user_id, room_id)
        if sender == client.user_id:
            action = "member.left"
        else:
            action = "member.banned" if membership == "ban" else "member.kicked"
        # The membership row and its audit row together: nobody reads one without the other.
        async with transaction(self.repo.db):
            if forgotten and room is not None and room.kind == GROUP:
                if client.user_id in await self.repo.members(room_id):
                    await self.repo.remove_member(room_id, client.user_id, ms(self.clock))
            await self.audit.record(
                sender,
                action,
                client.user_id,
                room_id,
                event_id=event.get("event_id"),
                forgotten=forgotten,
            )
        log.info("%s left %s (%s): made to forget it", client.user_id, room_id, action)

    async def _forget(self, user_id: str, room_id: str) -> bool:
        try:
            await self.gateway.forget(user_id, room_id)
            return True
        except PermanentError as e:
            # 400 "User … in room": they are back (re-added since); nothing to forget.
            log.warning("Could not make %s forget %s: %s", user_id, room_id, e)
            return False

    # ------------------------------------------------------------------ ungoverned rooms

    async def evict(self, room_id: str, client: Client, event: dict[str, Any]) -> None:
        """A managed client joined a room Alcove did not create (their own, or a public one):
        leave and forget it as them, and tell them where to write instead."""
        try:
            await self.gateway.leave_room(client.user_id, room_id)
        except PermanentError as e:
            log.info("%s is no longer in %s: %s", client.user_id, room_id, e)
        forgotten = await self._forget(client.user_id, room_id)
        await self.audit.record(
            self.bot,
            "room.left.ungoverned",
            client.user_id,
            room_id,
            event_id=event.get("event_id"),
            forgotten=forgotten,
        )
        dm = await self.repo.dm_of(client.therapist_id, client.user_id)
        if dm is not None:
            await self.outbox.send(
                f"ungoverned:{room_id}:{client.user_id}",
                self.bot,
                dm.room_id,
                notice(
                    "Conversations here are set up by your therapist, so you were taken out of a "
                    "room they did not set up. Please write in this chat instead."
                ),
            )

    # ------------------------------------------------------------------ who may be invited

    async def in_scope(self, room: Room | None, invitee: str) -> bool:
        """Who may be in a governed room: the 1:1's own pair; the therapist and their clients in
        a community room; staff in staff rooms. Session rooms: only those Alcove invites."""
        if room is None:
            return False
        if room.kind == DM:
            return invitee in (room.therapist_id, room.client_id)
        if room.kind == GROUP:
            if invitee == room.therapist_id:
                return True
            client = await self.repo.client(invitee)
            return client is not None and client.therapist_id == room.therapist_id
        if room.kind in (CARE, TEAM):
            return self.config.staff_member(invitee) is not None
        return False

    async def police_governed_invite(
        self, room: Room | None, room_id: str, inviter: str, invitee: str, event: dict[str, Any]
    ) -> bool:
        """A plain invite (from Element, not through Alcove) into a governed room: withdrawn when
        the invitee is out of the room's scope. Returns True if withdrawn."""
        if await self.in_scope(room, invitee):
            return False
        try:
            await self.gateway.kick(room_id, invitee, "Only Alcove adds people to this room")
        except PermanentError as e:
            log.warning("Could not withdraw the invite of %s to %s: %s", invitee, room_id, e)
            return False
        if await self.repo.client(invitee) is not None:
            await self._forget(invitee, room_id)
        await self.audit.record(
            inviter, "invite.rescinded", invitee, room_id, event_id=event.get("event_id")
        )
        where = await self.conversations.management_room_for(inviter) or room_id
        hint = (
            "staff rooms follow Alcove's configuration"
            if room is not None and room.kind in (CARE, TEAM)
            else "add your own clients with !group add <client> in a community chat"
        )
        await self.outbox.send(
            f"invite-rescinded:{event.get('event_id')}",
            self.bot,
            where,
            notice(f"Your invitation of {invitee} was withdrawn: {hint}."),
        )
        return True
