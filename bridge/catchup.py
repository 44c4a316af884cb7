"""Catch-up after a homeserver restart.

Synapse queues appservice events in memory and records its stream position *before* it writes
them into a transaction (synapse/handlers/appservice.py, appservice/scheduler.py): a Synapse
restart drops whatever was queued but not yet sent. So whenever Alcove sees signs of a restart
(transaction ids going backwards, the homeserver answering again after connection errors, and
at Alcove's own start-up) it fetches the bot's recent timeline with one /sync and offers those
events to the inbox. The inbox dedupes by event id, so only what was really missed is handled.

Not everything it finds is a gap. Alcove's own messages: after a kill, the outbox resends at
start-up and Synapse has not pushed those events back yet (its retry of the failed push comes
later). And the events of a room from before the bot was invited (its creation, by a therapist
opening a management room): Synapse never pushes those, as the appservice had no interest in
the room yet. They are offered to the inbox like the others, but only real gaps are reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .clock import Clock, ms
from .inbox import Inbox
from .matrix.gateway import MatrixSendError

log = logging.getLogger("alcove.catchup")

RecentEvents = Callable[[int], Awaitable[list[dict[str, Any]]]]
SeenRange = Callable[[], Awaitable[tuple[int, int] | None]]
OwnEvents = Callable[[list[dict[str, Any]]], Awaitable[set[str]]]
SLACK_MS = 60_000  # clocks of Alcove and Synapse need not agree to the millisecond


class CatchUp:
    def __init__(
        self,
        recent_events: RecentEvents,
        seen_range: SeenRange,
        inbox: Inbox,
        clock: Clock,
        window_seconds: float = 900.0,
        per_room_limit: int = 50,
        own_events: OwnEvents | None = None,
        bot_user_id: str | None = None,
    ) -> None:
        self.recent_events = recent_events
        self.own_events = own_events
        self.bot_user_id = bot_user_id
        self.seen_range = seen_range
        self.inbox = inbox
        self.clock = clock
        self.window_ms = int(window_seconds * 1000)
        self.per_room_limit = per_room_limit
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def request(self, reason: str) -> None:
        """Ask for a catch-up soon; several requests while one runs coalesce into one more."""
        log.info("Catching up on missed events (%s)", reason)
        self._wanted.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="catchup")

    async def _loop(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.run_once()
            except MatrixSendError as e:
                log.warning("Catch-up failed (%s); will try again on the next signal", e)
            except Exception:
                log.exception("Catch-up failed")

    async def run_once(self) -> int:
        """Offer recent events to the inbox: those from shortly before the newest event the inbox
        has received, never older than the window, and never from before this database's first
        event (a new install does not act on history). Nothing seen yet: nothing to do.
        Returns how many new events were not Alcove's own (a real gap)."""
        seen = await self.seen_range()
        if seen is None:
            return 0
        first, last = seen
        since = max(ms(self.clock) - self.window_ms, last - SLACK_MS, first)
        events = await self.recent_events(self.per_room_limit)
        recent = [e for e in events if int(e.get("origin_server_ts", 0)) >= since]
        new = await self.inbox.offer("catch-up", recent) if recent else []
        self.runs += 1
        if not new:
            return 0
        fresh = [e for e in recent if e["event_id"] in set(new)]
        own = await self.own_events(fresh) if self.own_events is not None else set()
        unseen = set(new) - own - self._before_the_bot(recent)
        if own:
            log.info("Catch-up found %d of Alcove's own messages not delivered back yet", len(own))
        if unseen:
            log.warning("Catch-up found %d events the homeserver never delivered", len(unseen))
        return len(unseen)

    def _before_the_bot(self, events: list[dict[str, Any]]) -> set[str]:
        """Ids of events that precede, in their room, the bot's latest invite or join among
        ``events`` (oldest first per room): the homeserver had no reason to push those."""
        if self.bot_user_id is None:
            return set()
        by_room: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_room.setdefault(str(event.get("room_id")), []).append(event)
        earlier: set[str] = set()
        for room_events in by_room.values():
            marks = [
                i
                for i, e in enumerate(room_events)
                if e.get("type") == "m.room.member" and e.get("state_key") == self.bot_user_id
            ]
            if marks:
                earlier |= {str(e.get("event_id")) for e in room_events[: marks[-1]]}
        return earlier

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
