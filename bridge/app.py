"""One running Alcove: opens the database, has ``bridge.wiring`` build every collaborator,
then starts and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import aiohttp
from aiohttp import web
from mautrix.util.async_db import Database

from .api.server import Api, ApiHandlers
from .api.webhooks import Webhooks
from .clock import Clock, SystemClock
from .config import Config
from .crypto.machine import Crypto
from .crypto.seams import wait_key
from .db.database import open_database, redact_url
from .errors import StartupError
from .metrics import Metrics
from .startup import run_startup
from .web.server import READY, build_web_app
from .wiring import Runtime, build

log = logging.getLogger("alcove.app")

HOUSEKEEPING_SECONDS = 3600.0
SETTLE_SECONDS = 10.0
"""A second catch-up this long after start-up. Synapse marks Alcove down when a push fails
(Alcove was stopped) and, until its recoverer has sent every stored transaction, stores new
events without sending them; the start-up ping makes it retry at once, but an event stored
just as the recoverer finishes can be left behind (synapse/appservice/scheduler.py: the
"is the service up" read and the recoverer's "nothing left" are not atomic), and to-device
messages (room keys) arriving while it is marked down are dropped, not stored. The first kind
is in the room's history: a catch-up once the recovery has settled finds it. (A room key
dropped that way is asked for again when its message arrives: ``Crypto._request_key``.)"""


class Alcove:
    """One running Alcove. ``start`` brings it to ready; ``stop`` shuts it down gracefully."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.db: Database | None = None
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.api_runner: web.AppRunner | None = None
        self.webhooks: Webhooks | None = None
        self.web: web.Application | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._settle: asyncio.Task[None] | None = None
        self.runtime: Runtime | None = None
        """Every collaborator, built at once by ``start`` (``bridge.wiring.build``)."""
        self.crypto: Crypto | None = None

    async def start(self) -> None:
        cfg = self.config
        log.info("Opening database %s", redact_url(cfg.database.url))
        self.db = await open_database(cfg.database)
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60, connect=10),
            connector=aiohttp.TCPConnector(limit=100, ssl=cfg.homeserver.verify_ssl),
        )
        self.runtime = rt = build(cfg, self.db, self.session, self.clock, self.metrics)
        self.gateway, self.crypto, self.outbox = rt.gateway, rt.crypto, rt.outbox
        self.bot, self.inbox, self.catchup = rt.bot, rt.inbox, rt.catchup
        if self.crypto is not None:
            self.crypto.on_session = self._room_key_arrived
            self.crypto.on_devices = self._devices_changed
        self.web = build_web_app(
            rt.endpoint, self.metrics, self.refresh_metrics, cfg.appservice.max_body_size_mib
        )
        # The web server comes up first: Synapse's ping during start-up calls us back, and
        # transactions that arrive meanwhile are persisted (processing starts once ready).
        self.runner = await _listen(
            self.web,
            cfg.appservice.hostname,
            cfg.appservice.port,
            "is another Alcove running, or is appservice.port taken?",
        )
        log.info("Listening on %s:%d", cfg.appservice.hostname, cfg.appservice.port)
        self.web[READY]["reason"] = "checking the homeserver"
        await run_startup(self.gateway, cfg, self.clock)
        await self.outbox.device_for(cfg.bot_user_id)  # before any send needs it
        if self.crypto is not None:
            await self.crypto.start()  # the acting device gets its keys
        await self.outbox.start()
        await self.bot.start_sessions()  # overdue sessions are purged before anything else
        await self.inbox.start()
        self.catchup.start()
        self.catchup.request("start-up")
        await self.bot.start()  # the staff rooms' set-up is retried by a timer when it fails
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        self._settle = asyncio.create_task(self._settled_catch_up(), name="settle-catch-up")
        self.web[READY].update(ready=True, reason="")
        self.metrics.ready.set(1)
        if cfg.api.enabled:
            await self._start_api()
        if cfg.api.webhooks:
            assert self.db is not None and self.session is not None
            self.webhooks = Webhooks(cfg, self.db, self.session, self.clock)
            await self.webhooks.start()
        log.info("Alcove is ready as %s", cfg.bot_user_id)

    async def _start_api(self) -> None:
        """The HTTP API on its own listener, once everything it calls is running."""
        cfg, bot = self.config, self.bot
        assert self.db is not None
        handlers = ApiHandlers(cfg, self.db, bot.conversations, bot.sessions, bot.audit, self.clock)
        self.api_runner = await _listen(
            Api(cfg, handlers).app(), cfg.api.host, cfg.api.port, "is api.port taken?", "the API"
        )
        log.info(
            "API listening on http://%s:%d/_alcove/v1/ (%d tokens, %d calendar feeds)",
            cfg.api.host,
            cfg.api.port,
            len(cfg.api.tokens),
            len(cfg.api.calendars),
        )

    def _room_key_arrived(self, session_id: str) -> None:
        """Encrypted events waiting for this Megolm session are handled now."""
        if woken := self.inbox.wake(wait_key(session_id)):
            log.debug("A room key arrived for %d waiting events", woken)

    async def _devices_changed(self, users: list[str]) -> None:
        """A member signed in on a new device (the crypto knows its keys now): what waited for
        their first device goes — messages the outbox held, in order, then a welcome an older
        Alcove left unsent."""
        if released := self.outbox.release(users):
            log.info("%d held messages go now that a member has a device", released)
        await self.bot.conversations.send_waiting_welcomes(users)

    async def refresh_metrics(self) -> None:
        await self.inbox.refresh_metrics()
        await self.outbox.refresh_metrics()
        self.metrics.sessions_pending_purge.set(await self.bot.sessions.pending_purge())

    async def _settled_catch_up(self) -> None:
        await self.clock.sleep(SETTLE_SECONDS)
        self.catchup.request("after start-up, once the homeserver's recovery has settled")
        self.outbox.release_all()  # a first sign-in whose device-list change was dropped

    async def _housekeep(self) -> None:
        while True:
            try:
                await self.inbox.prune()
                self.outbox.release_all()  # held for a first device: ask again (hourly)
                forgotten = await self.bot.housekeep()
                if forgotten:
                    log.info("Deleted %d expired or spent confirmations and inputs", forgotten)
            except Exception:
                log.exception("Housekeeping failed; will try again")
            await self.clock.sleep(HOUSEKEEPING_SECONDS)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking transactions, let in-flight work finish (up to ``timeout``), close.
        Anything unfinished stays in the database and is resumed at the next start."""
        log.info("Shutting down")
        if self.web is not None and READY in self.web:
            self.web[READY].update(ready=False, reason="shutting down")
        if self.api_runner is not None:
            await self.api_runner.cleanup()
        if self.webhooks is not None:
            await self.webhooks.stop()
        for task in (self._housekeeping, self._settle):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.runtime is not None:
            await self.runtime.bot.stop()  # start-up work still in the background
        if self.runner is not None:
            await self.runner.cleanup()
        log.debug("web server stopped")
        if (rt := self.runtime) is not None:
            rt.timers.stop()
            await rt.catchup.stop()
            await rt.inbox.stop(timeout)
            log.debug("inbox stopped")
            await rt.outbox.stop(timeout)
            log.debug("outbox stopped")
            if rt.crypto is not None:
                await rt.crypto.stop()
        if self.session is not None:
            await self.session.close()
        if self.db is not None:
            await self.db.stop()
        log.info("Stopped")


async def run_until_signalled(config: Config) -> None:
    alcove = Alcove(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.create_task(alcove.start())
        waiting = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            try:
                starting.result()  # raises StartupError
            except BaseException:
                waiting.cancel()
                raise
            await waiting
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    finally:
        await alcove.stop()


async def _listen(
    app: web.Application, host: str, port: int, hint: str, what: str = ""
) -> web.AppRunner:
    """Serve ``app`` on host:port; a port that cannot be had is a StartupError saying so."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        purpose = f" for {what}" if what else ""
        raise StartupError(f"Cannot listen on {host}:{port}{purpose} ({e}): {hint}") from None
    return runner
