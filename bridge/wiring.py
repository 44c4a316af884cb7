"""The composition root: the one function that builds every collaborator of a running Alcove
(and the bot's features, which tests build the same way with fakes). Nothing here does I/O;
starting and stopping in the right order is ``bridge.app.Alcove``'s job."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from mautrix.util.async_db import Database

from bots.bot import Bot, Features
from bots.commands.awaiting import AwaitingInput
from bots.commands.confirm import Confirmations
from bots.commands.registry import CommandRegistry
from bots.commands.router import CommandRouter, Refused
from bots.commands.runs import CommandRuns
from bots.features.away.commands import AwayCommands
from bots.features.away.service import AwayService
from bots.features.blasts.commands import BlastCommands
from bots.features.blasts.service import BlastService
from bots.features.conversations.commands import ConversationCommands
from bots.features.conversations.governance import RoomGovernance
from bots.features.conversations.management import ManagementRooms
from bots.features.conversations.repo import ConversationRepo
from bots.features.conversations.service import ConversationService
from bots.features.core.commands import COMMANDS as CORE_COMMANDS
from bots.features.organise.commands import OrganiseCommands
from bots.features.organise.service import Organiser
from bots.features.organise.spaces import Spaces
from bots.features.phrases.commands import PhraseCommands, PhraseRepo
from bots.features.restore.commands import RestoreCommands
from bots.features.restore.service import RestoreService
from bots.features.schedule.commands import ScheduleCommands
from bots.features.schedule.service import ScheduleService
from bots.features.sessions.commands import SessionCommands
from bots.features.sessions.ending import DecryptEvents, ForgetKeys, Scrub
from bots.features.sessions.repo import SessionRepo
from bots.features.sessions.service import SessionService
from bots.features.voice import RoomCrypto, TherapistVoice

from .catchup import CatchUp
from .clock import Clock
from .config import Config
from .crypto.machine import Crypto
from .crypto.seams import Decrypting
from .db.audit_repo import AuditLog
from .db.inbox_repo import InboxRepo
from .db.outbox_repo import DeviceRepo, OutboxRepo
from .dispatch import Dispatcher
from .inbox import Inbox
from .matrix.gateway import MatrixGateway
from .matrix.mautrix_gateway import MautrixGateway
from .matrix.outbox import DEVICE_ID, Outbox
from .metrics import Metrics
from .registration import read_doublepuppet_token
from .scrub import HomeserverDatabase, Scrubber, homeserver_database
from .timers import Timers
from .web.transactions import TransactionEndpoint

log = logging.getLogger("alcove.wiring")


async def _is_session_room(sessions: SessionService, room_id: str) -> bool:
    return await sessions.by_room(room_id) is not None


def build_bot(
    config: Config,
    db: Database,
    gateway: MatrixGateway,
    outbox: Outbox,
    clock: Clock,
    timers: Timers | None = None,
    metrics: Metrics | None = None,
    scrub: Scrub | None = None,
    can_decrypt: Callable[[str], bool] | None = None,
    crypto: RoomCrypto | None = None,
    forget_room_keys: ForgetKeys | None = None,
    decrypt_events: DecryptEvents | None = None,
) -> Bot:
    """The command bot with every feature service and command it uses."""
    timers = timers or Timers(clock)
    audit = AuditLog(db, clock)
    rooms = ConversationRepo(db)
    voice = TherapistVoice(config, gateway, crypto)  # the bot speaks where encrypted
    management = ManagementRooms(
        config, gateway, outbox, rooms, audit, clock, voice, timers, metrics
    )
    conversations = ConversationService(
        config, gateway, outbox, rooms, audit, clock, voice, management
    )
    if crypto is not None:  # an encrypted 1:1's messages wait for the client's first device
        outbox.hold = conversations.waiting_for_device
    schedule = ScheduleService(
        config, db, outbox, voice, timers, clock, conversations.management_room_for
    )
    away = AwayService(config, db, outbox, voice, clock)
    sessions = SessionService(
        config,
        SessionRepo(db),
        gateway,
        outbox,
        timers,
        clock,
        conversations,
        audit,
        metrics,
        scrub,
        forget_room_keys,
        decrypt_events,
    )
    spaces = Spaces(config, gateway, conversations, db, audit, clock)
    spaces.live_sessions = sessions.live_rooms
    conversations.spaces = spaces  # rooms are filed in their owner's spaces as they are made
    organiser = Organiser(config, gateway, outbox, conversations, spaces, db, audit, timers, clock)
    governance = RoomGovernance(
        config,
        gateway,
        outbox,
        conversations,
        audit,
        clock,
        lambda room_id: room_id in sessions.room_ids,
    )
    awaiting = AwaitingInput(db, clock)
    confirmations = Confirmations(db, clock)
    blasts = BlastCommands(BlastService(conversations, outbox, voice), awaiting, confirmations)
    registry = CommandRegistry(
        [
            *CORE_COMMANDS,
            *confirmations.specs(),
            *ConversationCommands(conversations, confirmations, sessions.live_with).specs(),
            *blasts.specs(),
            *ScheduleCommands(schedule, conversations).specs(),
            *PhraseCommands(
                config,
                PhraseRepo(db),
                conversations,
                voice,
                outbox,
                gateway,
                sessions.next_session_at,
            ).specs(),
            *AwayCommands(away).specs(),
            *SessionCommands(sessions).specs(),
            *RestoreCommands(
                RestoreService(
                    config,
                    gateway,
                    outbox,
                    conversations,
                    audit,
                    clock,
                    lambda room_id: _is_session_room(sessions, room_id),
                )
            ).specs(),
            *OrganiseCommands(organiser, conversations, outbox, gateway).specs(),
        ]
    )
    router = CommandRouter(registry, on_refused=refused_into(audit), runs=CommandRuns(db))
    management.help_text = registry.help_text
    features = Features(
        audit=audit,
        management=management,
        conversations=conversations,
        schedule=schedule,
        away=away,
        sessions=sessions,
        governance=governance,
        awaiting=awaiting,
        confirmations=confirmations,
        blasts=blasts,
        registry=registry,
        router=router,
        spaces=spaces,
        organiser=organiser,
    )
    return Bot(config, gateway, outbox, clock, timers, features, metrics, can_decrypt)


def refused_into(audit: AuditLog) -> Refused:
    """A refused command is recorded in the audit log."""

    async def refused(sender: str, command: str, room_id: str) -> None:
        await audit.record(sender, "command.refused", None, room_id, command=command)

    return refused


@dataclass
class Runtime:
    """Every collaborator of one running Alcove, built and wired but not started."""

    gateway: MautrixGateway
    crypto: Crypto | None
    outbox: Outbox
    timers: Timers
    bot: Bot
    dispatcher: Dispatcher
    inbox: Inbox
    catchup: CatchUp
    endpoint: TransactionEndpoint


def build(
    config: Config,
    db: Database,
    session: aiohttp.ClientSession,
    clock: Clock,
    metrics: Metrics,
) -> Runtime:
    """Build and wire every collaborator of Alcove over an open database and HTTP session."""
    cfg = config
    gateway = MautrixGateway(
        session,
        cfg.homeserver.address,
        cfg.appservice.as_token,
        cfg.bot_user_id,
        metrics,
        doublepuppet_token=read_doublepuppet_token(cfg.appservice.doublepuppet_registration),
        client_namespace_prefix=f"@{cfg.appservice.client_prefix}",
    )
    crypto = None
    if cfg.encryption.enabled:
        # The bot's crypto device is its acting device: one identity for both.
        crypto = Crypto(db, gateway, DEVICE_ID, metrics)
    outbox = Outbox(
        OutboxRepo(db),
        DeviceRepo(db),
        gateway,
        clock,
        metrics,
        encrypt=crypto.encrypt if crypto is not None else None,
    )
    timers = Timers(clock)  # the clock runs them (APScheduler behind SystemClock)
    bot = build_bot(
        cfg,
        db,
        gateway,
        outbox,
        clock,
        timers,
        metrics,
        Scrubber(db, homeserver_database_of(cfg)),
        can_decrypt=crypto.can_decrypt if crypto is not None else None,
        crypto=crypto,
        forget_room_keys=crypto.forget_room if crypto is not None else None,
        decrypt_events=crypto.decrypt_history if crypto is not None else None,
    )
    dispatcher = Dispatcher(cfg.bot_user_id, bot, f"@{cfg.appservice.client_prefix}")
    handler = dispatcher.handle
    if crypto is not None:
        handler = Decrypting(crypto, handler, cfg.encryption.key_wait_minutes * 60).__call__
    inbox = Inbox(InboxRepo(db), handler, clock, metrics, cfg.inbox, echo=dispatcher.is_echo)
    catchup = CatchUp(
        gateway.recent_events,
        inbox.repo.received_range,
        inbox,
        clock,
        own_events=outbox.own_events,
        bot_user_id=cfg.bot_user_id,
    )
    gateway.on_recovered = lambda: catchup.request("the homeserver is reachable again")
    endpoint = TransactionEndpoint(
        cfg.appservice.hs_token,
        inbox,
        metrics,
        catchup.request,
        access_token_in_query=cfg.appservice.access_token_in_query,
        extensions=crypto.handle_transaction if crypto is not None else None,
    )
    return Runtime(gateway, crypto, outbox, timers, bot, dispatcher, inbox, catchup, endpoint)


def homeserver_database_of(config: Config) -> HomeserverDatabase | None:
    """The homeserver database to VACUUM after each purge, when configured (dev stack)."""
    sessions, hs = config.sessions, config.homeserver
    if not sessions.vacuum_homeserver:
        return None
    if hs.synapse_config is None:
        log.warning("sessions.vacuum_homeserver needs homeserver.synapse_config; not vacuuming")
        return None
    return homeserver_database(hs.synapse_config)
