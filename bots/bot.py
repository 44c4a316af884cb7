"""The command bot: what Alcove does with a room event once the inbox hands it over.

dispatch (bridge) → Bot.on_invite / on_member / on_message → command router → features;
everything the bot says goes through the outbox with a key derived from the event it answers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mautrix.util.async_db import Database

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import MatrixGateway
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from bridge.timers import Timers

from .bot_types import notice, split_text
from .commands.awaiting import AwaitingInput
from .commands.confirm import Confirmations
from .commands.context import CommandContext
from .commands.incoming import Incoming, read_message
from .commands.registry import CommandRegistry
from .commands.router import CommandRouter
from .commands.runs import CommandRuns
from .features.away.commands import AwayCommands
from .features.away.service import AwayService
from .features.blasts.commands import BlastCommands
from .features.blasts.service import BlastService
from .features.conversations.commands import ConversationCommands
from .features.conversations.repo import ConversationRepo
from .features.conversations.service import ConversationService
from .features.core.commands import COMMANDS as CORE_COMMANDS
from .features.phrases.commands import PhraseCommands, PhraseRepo
from .features.schedule.commands import ScheduleCommands
from .features.schedule.service import ScheduleService
from .features.sessions.commands import SessionCommands
from .features.sessions.repo import SessionRepo
from .features.sessions.service import SessionService
from .features.voice import TherapistVoice

log = logging.getLogger("alcove.bot")


class Bot:
    def __init__(
        self,
        config: Config,
        gateway: MatrixGateway,
        outbox: Outbox,
        db: Database,
        clock: Clock,
        timers: Timers | None = None,
        metrics: Metrics | None = None,
        can_decrypt: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        self.can_decrypt: Callable[[str], bool] = can_decrypt or (lambda _room_id: False)
        """Whether Alcove takes part in the encrypted room (bridge/crypto; issue 11): where it
        does, an encrypted room is not one it "cannot read"."""
        self.gateway = gateway
        self.outbox = outbox
        self.timers = timers or Timers()
        self.clock = clock
        self.audit = AuditLog(db, clock)
        rooms = ConversationRepo(db)
        voice = TherapistVoice(config, gateway)
        self.conversations = ConversationService(
            config, gateway, outbox, rooms, self.audit, clock, voice
        )
        self.schedule = ScheduleService(
            config, db, outbox, voice, self.timers, clock, self.conversations.management_room_for
        )
        self.away = AwayService(config, db, outbox, voice, clock)
        self.sessions = SessionService(
            config,
            SessionRepo(db),
            gateway,
            outbox,
            self.timers,
            clock,
            self.conversations,
            self.audit,
            metrics,
        )
        self.awaiting = AwaitingInput(db, clock)
        confirmations = Confirmations(db, clock)
        self.blasts = BlastCommands(
            BlastService(self.conversations, outbox, voice), self.awaiting, confirmations
        )
        self.registry = CommandRegistry(
            [
                *CORE_COMMANDS,
                *confirmations.specs(),
                *ConversationCommands(self.conversations, confirmations).specs(),
                *self.blasts.specs(),
                *ScheduleCommands(self.schedule, rooms).specs(),
                *PhraseCommands(
                    config, PhraseRepo(db), rooms, voice, outbox, gateway, self._next_session
                ).specs(),
                *AwayCommands(self.away).specs(),
                *SessionCommands(self.sessions).specs(),
            ]
        )
        self.router = CommandRouter(self.registry, on_refused=self._refused, runs=CommandRuns(db))

    async def _next_session(self, therapist: str, client_id: str) -> str | None:
        found = await self.sessions.repo.next_for_client(therapist, client_id, ms(self.clock))
        return self.sessions.local(found.start_at) if found else None

    async def role_of(self, user_id: str) -> str | None:
        member = self.config.staff_member(user_id)
        if member is not None:
            return member.role
        if await self.conversations.repo.client(user_id) is not None:
            return "client"
        return None

    async def _refused(self, sender: str, command: str, room_id: str) -> None:
        await self.audit.record(sender, "command.refused", None, room_id, command=command)

    async def start_sessions(self) -> None:
        """First thing at start-up, before any event is processed: sessions whose end passed
        while Alcove was down are ended and purged; the others' timers are re-armed."""
        self.timers.start()
        await self.sessions.start()

    async def start(self) -> None:
        """Start-up work: scheduled messages are re-armed; staff rooms follow the config."""
        self.timers.start()
        await self.schedule.start()
        await self.conversations.reconcile_staff_rooms()

    def keeps_events_of(self, room_id: str) -> bool:
        """False for text-only session rooms: their events leave the inbox once handled."""
        return room_id not in self.sessions.room_ids

    async def on_invite(self, room_id: str, inviter: str, content: dict[str, Any]) -> None:
        """Staff invite the bot: accept (a DM becomes their management room). Others: decline."""
        if self.config.staff_member(inviter) is None:
            log.info("Declining an invite from %s, who is not on the staff list", inviter)
            await self.gateway.leave_room(self.gateway.bot_user_id, room_id)
            return
        await self.gateway.join_room(self.gateway.bot_user_id, room_id)
        if content.get("is_direct"):
            await self.conversations.note_management_room(inviter, room_id)
        log.info("Joined %s on the invite of %s", room_id, inviter)

    async def on_member(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        user_id = event.get("state_key")
        if content.get("membership") == "invite" and isinstance(user_id, str):
            await self.conversations.police_invite(event["room_id"], event["sender"], user_id)
            return
        if (
            content.get("membership") == "join"
            and isinstance(user_id, str)
            and user_id == event["sender"]
        ):
            await self.conversations.enforce_initials(
                event["room_id"], user_id, content.get("displayname")
            )

    async def on_message(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        if not isinstance(content.get("msgtype"), str):
            return
        sender = event["sender"]
        room_id = event["room_id"]
        event_id = event["event_id"]
        room = await self.conversations.repo.room(room_id)
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

        role = await self.role_of(sender)
        if is_command:
            assert incoming is not None
            await self.router.handle(
                incoming, sender=sender, role=role, room_id=room_id, event_id=event_id, reply=reply
            )
            return
        if role not in ("therapist", "care", "admin") or content["msgtype"] == "m.notice":
            return
        if incoming is not None and incoming.edit_of is not None:
            return  # an edit is never the message a command waits for
        waiting = await self.awaiting.take(room_id, sender)
        if waiting is not None and waiting[0] == "blast":
            ctx = CommandContext(
                sender, role, room_id, event_id, "blast", (), "", self.registry, reply
            )
            await self.blasts.capture(ctx, waiting[1], content)


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
