"""The command bot: what Alcove does with a room event once the inbox hands it over.

dispatch (bridge) → Bot.on_invite / on_member / on_message → command router → features;
everything the bot says goes through the outbox with a key derived from the event it answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.delayed import backoff
from bridge.matrix.gateway import MatrixGateway, MatrixSendError
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from bridge.timers import Timers

from .bot_types import notice, split_text
from .commands.awaiting import AwaitingInput
from .commands.confirm import Confirmations
from .commands.context import CommandContext, Reply
from .commands.incoming import Incoming, read_message
from .commands.registry import CommandRegistry
from .commands.router import CommandRouter
from .features.away.service import AwayService
from .features.blasts.commands import BlastCommands
from .features.conversations.governance import RoomGovernance
from .features.conversations.management import ManagementRooms, link
from .features.conversations.service import ConversationService
from .features.organise.service import Organiser
from .features.organise.spaces import Spaces
from .features.read_receipts import hide_staff_read_receipts
from .features.schedule.service import ScheduleService
from .features.sessions.service import SessionService

log = logging.getLogger("alcove.bot")

STAFF_ROOMS_TIMER = "staff-rooms"
STAFF_ROOMS_RETRY_SECONDS = 10.0
"""The first retry of the staff rooms' set-up; doubled each time, up to the cap."""
STAFF_ROOMS_RETRY_CAP = 600.0


@dataclass
class Features:
    """The bot's feature services and commands, built by the composition root
    (``bridge.wiring.build_bot``)."""

    audit: AuditLog
    management: ManagementRooms
    conversations: ConversationService
    schedule: ScheduleService
    away: AwayService
    sessions: SessionService
    governance: RoomGovernance
    awaiting: AwaitingInput
    confirmations: Confirmations
    blasts: BlastCommands
    registry: CommandRegistry
    router: CommandRouter
    spaces: Spaces
    organiser: Organiser


class Bot:
    def __init__(
        self,
        config: Config,
        gateway: MatrixGateway,
        outbox: Outbox,
        clock: Clock,
        timers: Timers,
        features: Features,
        metrics: Metrics | None = None,
        can_decrypt: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        self.can_decrypt: Callable[[str], bool] = can_decrypt or (lambda _room_id: False)
        """Whether Alcove takes part in the encrypted room (bridge/crypto; issue 11): where it
        does, an encrypted room is not one it "cannot read"."""
        self.gateway = gateway
        self.outbox = outbox
        self.timers = timers
        self.clock = clock
        self.metrics = metrics
        self.audit = features.audit
        self.management = features.management
        self.conversations = features.conversations
        self.schedule = features.schedule
        self.away = features.away
        self.sessions = features.sessions
        self.governance = features.governance
        self.awaiting = features.awaiting
        self.confirmations = features.confirmations
        self.blasts = features.blasts
        self.registry = features.registry
        self.router = features.router
        self.spaces = features.spaces
        self.organiser = features.organiser
        self.background: asyncio.Task[None] | None = None

    async def role_of(self, user_id: str) -> str | None:
        member = self.config.staff_member(user_id)
        if member is not None:
            return member.role
        if await self.conversations.client(user_id) is not None:
            return "client"
        return None

    async def start_sessions(self) -> None:
        """First thing at start-up, before any event is processed: sessions whose end passed
        while Alcove was down are ended and purged; the others' timers are re-armed."""
        self.timers.start()
        await self.sessions.start()

    async def start(self) -> None:
        """Start-up work: scheduled messages and timed mutes are re-armed; secrets still
        readable are checked; every staff member has their management room and staff rooms
        follow the config (tried again while running when the homeserver fails); staff send
        private read receipts (read_receipts.py). The spaces are repaired in the background
        (``background``): they only organise the staff's room list, and Alcove is ready without
        waiting for them."""
        self.timers.start()
        await self.schedule.start()
        await self.organiser.start()
        await self.management.start()
        await self.set_up_staff_rooms()
        await hide_staff_read_receipts(self.config, self.gateway)
        self.background = asyncio.create_task(self._repair_spaces(), name="spaces-repair")

    async def _repair_spaces(self) -> None:
        try:
            await self.spaces.repair()
        except Exception:
            log.exception("Repairing the spaces failed; will try again at the next start")

    async def stop(self) -> None:
        """Cancel start-up work still running in the background (it resumes at the next
        start: it is idempotent)."""
        if self.background is not None:
            self.background.cancel()
            await asyncio.gather(self.background, return_exceptions=True)

    async def set_up_staff_rooms(self, attempt: int = 1) -> None:
        """Management rooms and staff rooms as the config says. When the homeserver fails
        (it restarts, it is overloaded), a timer tries again with backoff, up to
        STAFF_ROOMS_RETRY_CAP apart, until it works."""
        try:
            done = await self.management.ensure_all()
            await self.conversations.reconcile_staff_rooms()
        except MatrixSendError as e:
            log.error("Could not set up the staff rooms (%s)", e)
            done = False
        if done:
            if attempt > 1:
                log.info("Staff rooms set up (attempt %d)", attempt)
            return
        delay = backoff(attempt, STAFF_ROOMS_RETRY_SECONDS, cap=STAFF_ROOMS_RETRY_CAP)
        log.warning("Setting up the staff rooms again in %.0f s", delay)
        self.timers.arm(
            STAFF_ROOMS_TIMER,
            self.clock.now() + timedelta(seconds=delay),
            self.set_up_staff_rooms,
            attempt + 1,
        )

    async def on_event(self, event: dict[str, Any]) -> None:
        await self.sessions.on_event(event)

    async def housekeep(self) -> int:
        """Delete expired questions and captured inputs (they hold full names and blast
        payloads), and used ones once no replay of their answer can come. Returns the count."""
        return await self.confirmations.forget() + await self.awaiting.forget()

    async def on_invite(self, event: dict[str, Any]) -> None:
        """Staff invite the bot: accept (a DM takes commands but never becomes the management
        room; an encrypted room is told once that Alcove cannot read it). A managed client's
        DM is answered once, then left. Anyone else: decline."""
        room_id, inviter = event["room_id"], event["sender"]
        if self.config.staff_member(inviter) is None:
            client = await self.conversations.client(inviter)
            if client is not None:
                log.info("Answering a DM from client %s, then leaving it", inviter)
                await self.management.answer_client_dm(room_id, client)
                return
            log.info("Declining an invite from %s, who is not on the staff list", inviter)
            await self.gateway.leave_room(self.gateway.bot_user_id, room_id)
            return
        await self.gateway.join_room(self.gateway.bot_user_id, room_id)
        log.info("Joined %s on the invite of %s", room_id, inviter)
        if not self.can_decrypt(room_id) and (
            invited_encrypted(event) or await self.gateway.get_state(room_id, "m.room.encryption")
        ):
            await self.management.cannot_read(room_id, inviter, "invite")
            return
        if (event.get("content") or {}).get("is_direct"):
            await self.management.staff_dm(room_id, inviter)

    async def on_encrypted(self, event: dict[str, Any]) -> None:
        """An encrypted event: Alcove cannot read it (yet). Said once per room, never silent."""
        await self.management.cannot_read(event["room_id"], event["sender"], "message")

    async def on_member(self, event: dict[str, Any]) -> None:
        """Membership changes Alcove did not make: invites, departures, joins, renames."""
        await self.governance.on_member(event)

    async def on_message(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        if not isinstance(content.get("msgtype"), str):
            return
        sender = event["sender"]
        room_id = event["room_id"]
        event_id = event["event_id"]
        room = await self.conversations.room(room_id)
        if room is not None:
            await self.away.on_message(event, room)
        sent_at = event.get("origin_server_ts")
        incoming = read_message(content, sent_at if isinstance(sent_at, int) else ms(self.clock))
        is_command = (
            content["msgtype"] == "m.text"
            and incoming is not None
            and incoming.text.lstrip().startswith("!")
        )
        replies = 0

        async def reply(text: str) -> None:
            nonlocal replies
            for part in split_text(text):
                replies += 1
                await self.outbox.send(
                    f"reply:{event_id}:{replies}",
                    self.gateway.bot_user_id,
                    room_id,
                    {**notice(part), **answer_relation(incoming, event_id)},
                )

        private_parts = 0

        async def reply_private(text: str) -> None:
            nonlocal private_parts
            private_parts = await self._reply_private(
                sender, room_id, event_id, text, reply, private_parts
            )

        role = await self.role_of(sender)
        if role == "client":
            await self.management.client_active(sender)
        if is_command:
            assert incoming is not None
            await self.router.handle(
                incoming,
                sender=sender,
                role=role,
                room_id=room_id,
                event_id=event_id,
                reply=reply,
                reply_private=reply_private,
            )
            return
        if role not in ("therapist", "care", "admin") or content["msgtype"] == "m.notice":
            return
        if incoming is not None and incoming.edit_of is not None:
            return  # an edit is never the message a command waits for
        waiting = await self.awaiting.take(room_id, sender, event_id)
        if waiting is not None and waiting[0] == "blast":
            ctx = CommandContext(
                sender,
                role,
                room_id,
                event_id,
                "blast",
                (),
                "",
                self.registry,
                reply,
                _private=reply_private,
            )
            await self.blasts.capture(ctx, waiting[1], content)

    async def _reply_private(
        self, sender: str, room_id: str, event_id: str, text: str, reply: Reply, sent: int
    ) -> int:
        """The reply policy: what names a client or lists clients is said only in the sender's
        management room; typed anywhere else, the room gets a one-line pointer. ``sent``: parts
        already sent privately for this event (their outbox keys go on from there); returns
        the new count."""
        if self.config.staff_member(sender) is not None:
            mgmt = await self.management.ensure(sender)  # replaced if they left it
        else:
            mgmt = await self.management.room_for(sender)
        if mgmt == room_id:
            await reply(text)
            return sent
        if mgmt is None:
            await reply(
                "I can only answer that in your management room with me, and you have none."
            )
            return sent
        for part in split_text(text):
            sent += 1
            await self.outbox.send(
                f"private:{event_id}:{sent}", self.gateway.bot_user_id, mgmt, notice(part)
            )
        await reply(f"I answered in your management room: {link(mgmt)}")
        return sent


def answer_relation(incoming: Incoming | None, event_id: str) -> dict[str, Any]:
    """How an answer points at its command: into the command's thread when it was sent in one
    (a thread reply that falls back to a reply), otherwise a reply to it. For an edit, the
    edited (original) command is the one answered."""
    target = (incoming.reply_to if incoming else None) or event_id
    in_reply_to = {"m.in_reply_to": {"event_id": target}}
    if incoming is not None and incoming.thread_root:
        return {
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": incoming.thread_root,
                "is_falling_back": True,
                **in_reply_to,
            }
        }
    return {"m.relates_to": in_reply_to}


def invited_encrypted(event: dict[str, Any]) -> bool:
    """The invite's stripped room state says the room is end-to-end encrypted."""
    unsigned = event.get("unsigned") or {}
    state = unsigned.get("invite_room_state") or []
    return any(isinstance(e, dict) and e.get("type") == "m.room.encryption" for e in state)
