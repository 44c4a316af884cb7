"""One test harness: the bot exactly as Alcove wires it (``bridge.wiring.build_bot``), over a
real database (SQLite or PostgreSQL), a real outbox and recording fakes for the homeserver,
the clock and the timers — instead of a hand-wired world per component test file.

``BotHarness.build`` gives one Alcove; calling it again on the same database and gateway is
Alcove restarted. ``with_inbox`` runs the inbox in front of the dispatcher and the bot (the
whole pipeline: inbox → dispatch → bot → outbox → recording gateway); without it, tests call
the bot (or ``dispatcher.handle``) directly. Timers are ``RecordingTimers`` unless given: a
test fires one with ``timers.run(key)``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from mautrix.util.async_db import Database

from bots.bot import Bot
from bots.features.sessions.ending import ForgetKeys
from bots.features.voice import RoomCrypto
from bridge.config import Config
from bridge.db.inbox_repo import DONE, InboxRepo
from bridge.db.outbox_repo import DeviceRepo, OutboxRepo
from bridge.dispatch import Dispatcher
from bridge.inbox import Inbox
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from bridge.timers import Timers
from bridge.wiring import build_bot

from .fakes import FakeClock, RecordingGateway, RecordingTimers, Sent


@dataclass
class BotHarness:
    """One Alcove's bot and the collaborators it was built with."""

    db: Database
    config: Config
    gateway: RecordingGateway
    clock: FakeClock
    timers: Timers
    metrics: Metrics
    outbox: Outbox
    bot: Bot
    dispatcher: Dispatcher
    inbox: Inbox
    with_inbox: bool = False
    """Whether the inbox runs (hands events to the bot); otherwise tests call the bot."""

    async def settle(self) -> None:
        """Wait until the inbox (if any) and the outbox have nothing left to do."""
        for _ in range(3):
            if self.with_inbox:
                await self.inbox.join()
            await self.outbox.join()

    async def handled(self, event_id: str) -> None:
        """Wait until the inbox has handled ``event_id``, then settle."""
        assert self.with_inbox, "built without the inbox"
        async with asyncio.timeout(10):
            while await self.inbox.repo.status_of(event_id) != DONE:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await self.settle()

    async def sent_to(self, room_id: str) -> list[Sent]:
        await self.outbox.join()
        return [s for s in self.gateway.sent if s.room_id == room_id]

    async def all_sent(self) -> list[Sent]:
        await self.outbox.join()
        return list(self.gateway.sent)

    async def start(self) -> None:
        """Start the outbox, then the inbox (which hands over what is pending)."""
        await self.outbox.start()
        if self.with_inbox:
            await self.inbox.start()

    async def stop(self) -> None:
        await self.bot.stop()  # start-up work in the background (the spaces' repair)
        if self.with_inbox:
            await self.inbox.stop()
        await self.outbox.stop()


@dataclass
class Harnesses:
    """Builds bots over one database; stops every one it built at the end of the test."""

    db: Database
    built: list[BotHarness] = field(default_factory=list)

    async def build(
        self,
        config: Config,
        gateway: RecordingGateway,
        clock: FakeClock | None = None,
        *,
        timers: Timers | None = None,
        metrics: Metrics | None = None,
        with_inbox: bool = False,
        start: bool = True,
        crypto: RoomCrypto | None = None,
        forget_room_keys: ForgetKeys | None = None,
        outbox_class: type[Outbox] = Outbox,
    ) -> BotHarness:
        """A bot wired as Alcove wires it; ``start=False`` leaves the outbox and inbox for
        ``BotHarness.start`` (to prepare the database first). ``outbox_class``: an Outbox
        subclass that fails on purpose (a crash between two steps)."""
        clock = clock or FakeClock()
        timers = timers if timers is not None else RecordingTimers()
        metrics = metrics or Metrics()
        outbox = outbox_class(OutboxRepo(self.db), DeviceRepo(self.db), gateway, clock, metrics)
        bot = build_bot(
            config,
            self.db,
            gateway,
            outbox,
            clock,
            timers,
            metrics,
            crypto=crypto,
            forget_room_keys=forget_room_keys,
        )
        dispatcher = Dispatcher(config.bot_user_id, bot)
        inbox = Inbox(
            InboxRepo(self.db),
            dispatcher.handle,
            clock,
            metrics,
            config.inbox,
            echo=dispatcher.is_echo,
        )
        harness = BotHarness(
            self.db,
            config,
            gateway,
            clock,
            timers,
            metrics,
            outbox,
            bot,
            dispatcher,
            inbox,
            with_inbox,
        )
        self.built.append(harness)
        if start:
            await harness.start()
        return harness

    async def stop(self) -> None:
        for harness in self.built:
            await harness.stop()


@pytest.fixture
async def harnesses(db: Database) -> AsyncIterator[Harnesses]:
    built = Harnesses(db)
    yield built
    await built.stop()
