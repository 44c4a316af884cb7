"""The durable inbox: what Synapse pushed is persisted before Alcove acknowledges it, then
handled in order per room and in parallel across rooms.

accept()  ← web/transactions.py, after authentication and parsing
   │ persist (dedupe by event id) → 200 to Synapse
   ▼
DurableQueue (bridge/queue.py: one ordered lane per room) → handler(event dict)
   → done / retry / deferred (parked until woken) / failed
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .clock import Clock, ms
from .config import InboxConfig
from .db.inbox_repo import InboxRepo, InboxRow
from .delayed import DelayQueue, backoff
from .matrix.gateway import TemporaryError
from .metrics import Metrics
from .queue import Decision, DurableQueue, GiveUp, Parked, Retry

log = logging.getLogger("alcove.inbox")

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
RECHECK_SECONDS = 60.0
TEMPORARY_RETRY_SECONDS = 3600.0
"""How long a handler failing on the homeserver's trouble (TemporaryError) is retried."""


class Deferred(Exception):
    """Raised by a handler: the event cannot be handled until ``key`` arrives (an encrypted
    event waits for its room key). The row stays pending: it is handled again at ``wake(key)``,
    and every ``RECHECK_SECONDS`` in case the wake was missed (a restart), until it is
    ``give_up_seconds`` old; then ``give_up`` runs (or it is marked failed), logged either way.
    It does not use up attempts."""

    def __init__(
        self,
        key: str,
        reason: str,
        give_up_seconds: float,
        give_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.key = key
        self.give_up_seconds = give_up_seconds
        self.give_up = give_up
        """Run once the wait is over (instead of marking the event failed): e.g. dispatch an
        encrypted event as it is, so its room is told Alcove cannot read it."""


DoneMark = tuple[int, int]
"""(seq, finished at ms)."""


class Inbox:
    """The durable queue configured for events: persisted before Synapse hears 200, handled
    by ``handler``; a bug is retried ``max_attempts`` times, the homeserver's trouble for up to
    TEMPORARY_RETRY_SECONDS; an event that raises ``Deferred`` is parked until woken."""

    def __init__(
        self,
        repo: InboxRepo,
        handler: EventHandler,
        clock: Clock,
        metrics: Metrics,
        config: InboxConfig,
        echo: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """``echo``: whether an event is Alcove's own message coming back, which the handler
        would drop: such events are neither kept nor handled (Dispatcher.is_echo)."""
        self.repo = repo
        self.echo = echo
        self.handler = handler
        self.clock = clock
        self.metrics = metrics
        self.config = config
        # "Handled" marks are group-committed: losing one in a crash only means the event is
        # handled again, and handlers are idempotent (outbox keys, recorded steps).
        self.queue: DurableQueue[InboxRow, DoneMark] = DurableQueue(
            "inbox",
            repo,
            self,
            clock,
            concurrency=config.concurrency,
            done_name="inbox-done",
            resume_when_due=True,
        )
        self._parked: dict[int, str] = {}  # deferred rows (seq → what they wait for)
        self._waiting: dict[str, list[InboxRow]] = {}
        self.rechecks: DelayQueue[InboxRow] = DelayQueue(clock, self._unpark, "inbox-wait")

    async def accept(self, txn_id: str, events: list[dict[str, Any]]) -> int:
        """Persist a transaction's room events. Returns how many were new."""
        return len(await self.offer(txn_id, events))

    async def offer(self, txn_id: str, events: list[dict[str, Any]]) -> list[str]:
        """``accept``, returning the ids of the events that were new."""
        valid = [
            e
            for e in events
            if isinstance(e.get("event_id"), str) and isinstance(e.get("room_id"), str)
        ]
        if len(valid) != len(events):
            self.metrics.inbox_events.labels(outcome="malformed").inc(len(events) - len(valid))
            log.warning(
                "Transaction %s: ignored %d events without event_id/room_id",
                txn_id,
                len(events) - len(valid),
            )
        if self.echo is not None:
            kept = [e for e in valid if not self.echo(e)]
            if len(kept) != len(valid):
                self.metrics.inbox_events.labels(outcome="echo").inc(len(valid) - len(kept))
            valid = kept
        if not valid:
            return []
        async with self.queue.lock:
            new = await self.repo.add(txn_id, valid, ms(self.clock))
            self.metrics.inbox_events.labels(outcome="received").inc(len(new))
            self.metrics.inbox_events.labels(outcome="duplicate").inc(len(valid) - len(new))
            self.queue.offer(new)
        return [row.event_id for row in new]

    async def start(self) -> int:
        """Process what a previous run left unprocessed (in order), then everything new."""
        pending = await self.queue.start()
        self.rechecks.start()
        if pending:
            log.info("Resuming %d unprocessed inbox events from before the restart", len(pending))
        return len(pending)

    # The queue's policy.

    def describe(self, row: InboxRow) -> str:
        return f"Event {row.event_id} in {row.room_id}"

    async def work(self, row: InboxRow) -> DoneMark:
        log.debug("Handling %s %s in %s", row.event.get("type"), row.event_id, row.room_id)
        with self.metrics.handler_seconds.time():
            await self.handler(row.event)
        self.metrics.inbox_events.labels(outcome="done").inc()
        return (row.seq, ms(self.clock))

    def finished(self, row: InboxRow, mark: DoneMark) -> None:
        pass

    def failed(self, row: InboxRow, attempts: int, reason: str) -> None:
        self.metrics.inbox_events.labels(outcome="failed").inc()

    async def decide(self, row: InboxRow, attempts: int, error: Exception) -> Decision:
        """A bug gives up after ``max_attempts``; the homeserver's trouble (TemporaryError:
        5xx, 429, unreachable) is retried, at most a minute apart, until it has lasted
        TEMPORARY_RETRY_SECONDS — a restart or a burst of 429s longer than the few seconds
        ``max_attempts`` spans must not drop a command."""
        if isinstance(error, Deferred):
            return await self._defer(row, error)
        reason = f"{type(error).__name__}: {error}"
        temporary = isinstance(error, TemporaryError)
        waited = (ms(self.clock) - row.received_at) / 1000
        if (not temporary and attempts >= self.config.max_attempts) or (
            temporary and waited >= TEMPORARY_RETRY_SECONDS
        ):
            return GiveUp(reason, error)
        self.metrics.inbox_events.labels(outcome="retried").inc()
        delay = backoff(attempts, self.config.retry_base_seconds, cap=60.0 if temporary else 300.0)
        limit = "" if temporary else f"of {self.config.max_attempts}, "
        return Retry(delay, f"{limit}{type(error).__name__}")

    async def _defer(self, row: InboxRow, deferred: Deferred) -> Decision:
        """Park the row until ``wake(deferred.key)`` (or the recheck), without using up an
        attempt; past ``give_up_seconds`` run ``give_up`` (the event counts as handled) or
        mark it failed."""
        now = ms(self.clock)
        waited = (now - row.received_at) / 1000
        if waited >= deferred.give_up_seconds:
            log.error(
                "Event %s in %s could not be handled within %.0f minutes: %s",
                row.event_id,
                row.room_id,
                deferred.give_up_seconds / 60,
                deferred,
            )
            if deferred.give_up is None:
                await self.repo.mark_failed(row.seq, row.attempts, now, str(deferred)[:500])
                self.metrics.inbox_events.labels(outcome="failed").inc()
                return Parked()
            try:
                await deferred.give_up()
            except Exception as e:
                return await self.decide(row, row.attempts + 1, e)
            self.queue.finish(row, (row.seq, now))
            self.metrics.inbox_events.labels(outcome="given_up").inc()
            return Parked()
        delay = min(RECHECK_SECONDS, deferred.give_up_seconds - waited)
        next_at = now + int(delay * 1000)
        await self.repo.mark_retry(row.seq, row.attempts, next_at, str(deferred)[:500])
        self.metrics.inbox_events.labels(outcome="deferred").inc()
        log.debug("Event %s in %s waits: %s", row.event_id, row.room_id, deferred)
        self._parked[row.seq] = deferred.key
        self._waiting.setdefault(deferred.key, []).append(row)
        self.rechecks.add(delay, row)
        return Parked()

    def wake(self, key: str) -> int:
        """What ``key`` names has arrived: handle the events waiting for it now. Returns how
        many."""
        rows = self._waiting.pop(key, [])
        for row in rows:
            if self._parked.pop(row.seq, None) is not None:
                self.queue.submit(row)
        return len(rows)

    def _unpark(self, row: InboxRow) -> None:
        key = self._parked.pop(row.seq, None)
        if key is None:
            return  # woken already
        waiting = self._waiting.get(key, [])
        if row in waiting:
            waiting.remove(row)
            if not waiting:
                self._waiting.pop(key, None)
        self.queue.submit(row)

    async def refresh_metrics(self) -> None:
        depth, oldest = await self.repo.depth()
        self.metrics.inbox_depth.set(depth)
        self.metrics.inbox_oldest_age.set(
            max(0.0, (ms(self.clock) - oldest) / 1000) if oldest else 0
        )

    async def prune(self) -> None:
        await self.repo.prune(ms(self.clock) - int(self.config.keep_done_hours * 3600 * 1000))

    async def join(self) -> None:
        """Wait until every submitted event has been handled and recorded (tests, shutdown)."""
        await self.queue.join()

    async def stop(self, timeout: float = 10.0) -> None:
        await self.rechecks.stop()
        await self.queue.stop(timeout)
