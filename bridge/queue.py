"""One durable queue, two configurations: the inbox (events Synapse pushed → handler) and the
outbox (messages Alcove sends → homeserver).

Rows live in the database (the store) before they reach the queue; the queue only decides when
each is worked on:

    offer/submit(row) → one ordered lane per room (KeyedWorkers), ``concurrency`` lanes at once
        → policy.work(row) ─ ok ──→ done mark, group-committed (Batcher) → policy.finished
                           └ error → policy.decide → retry in N s (mark_retry, DelayQueue)
                                                   → give up (mark_failed) → policy.failed
                                                   → parked (the policy re-submits it later)

A row is queued at most once at a time (by ``seq``). At ``start`` the rows a previous run left
pending are queued again in order. ``stop`` stops taking work, lets in-flight rows finish for a
while, and leaves everything else in the database for the next start.

The policy (``QueuePolicy``) is what differs: what working a row means, which failures are
retried and how soon, and who hears of the outcome."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from .batcher import Batcher
from .clock import Clock, ms
from .delayed import DelayQueue
from .workers import KeyedWorkers

log = logging.getLogger("alcove.queue")


class Row(Protocol):
    """A queued row: a frozen dataclass with at least these fields."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def seq(self) -> int: ...

    @property
    def room_id(self) -> str: ...

    @property
    def attempts(self) -> int: ...

    @property
    def next_attempt_at(self) -> int: ...


R = TypeVar("R", bound=Row)
M = TypeVar("M")  # what marks a row done (written in batches)
R_contra = TypeVar("R_contra", bound=Row, contravariant=True)
K = TypeVar("K")
V = TypeVar("V")


class Store(Protocol[R, M]):
    """The queue's table."""

    async def pending(self) -> list[R]:
        """Every row not done nor failed, in order."""

    async def finish_many(self, marks: list[M]) -> None:
        """Mark rows done, in one transaction (group commit)."""

    async def mark_retry(self, seq: int, attempts: int, next_attempt_at: int, error: str) -> None:
        """Record a failed attempt; the row stays pending."""

    async def mark_failed(self, seq: int, attempts: int, now_ms: int, error: str) -> None:
        """Give the row up for good."""


@dataclass(frozen=True)
class Retry:
    """Try again in ``seconds``; ``note`` (when given) is logged as the failure's reason."""

    seconds: float
    note: str | None = None


@dataclass(frozen=True)
class GiveUp:
    reason: str
    error: BaseException | None = None
    """Logged with its traceback (a bug, not the homeserver's trouble)."""


@dataclass(frozen=True)
class Parked:
    """The policy has put the row aside itself and will ``submit`` it again."""


Decision = Retry | GiveUp | Parked


class QueuePolicy(Protocol[R_contra, M]):
    async def work(self, row: R_contra) -> M:
        """Work on the row; returns its done mark. Raising hands the error to ``decide``."""

    async def decide(self, row: R_contra, attempts: int, error: Exception) -> Decision:
        """What to do after ``attempts`` failed (counting this one) with ``error``."""

    def finished(self, row: R_contra, mark: M) -> None:
        """The row's done mark was written."""

    def failed(self, row: R_contra, attempts: int, reason: str) -> None:
        """The row was given up (and marked failed)."""

    def describe(self, row: R_contra) -> str:
        """The row in a log line (ids, never content)."""


@dataclass
class Waiters(Generic[K, V]):
    """Futures resolved when something named ``K`` is settled (tests, benches, features that
    wait for a delivery)."""

    _futures: dict[K, list[asyncio.Future[V]]] = field(default_factory=dict)

    def expect(self, key: K) -> asyncio.Future[V]:
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(key, []).append(fut)
        return fut

    def resolve(self, key: K, value: V) -> None:
        for fut in self._futures.pop(key, []):
            if not fut.done():
                fut.set_result(value)

    def forget(self, key: K, fut: asyncio.Future[V]) -> None:
        futures = self._futures.get(key)
        if futures and fut in futures:
            futures.remove(fut)
            if not futures:
                self._futures.pop(key, None)


class DurableQueue(Generic[R, M]):
    def __init__(
        self,
        name: str,
        store: Store[R, M],
        policy: QueuePolicy[R, M],
        clock: Clock,
        *,
        concurrency: int,
        done_name: str,
        resume_when_due: bool,
    ) -> None:
        """``name`` names the lanes and the retry timer (``<name>-retry``), ``done_name`` the
        batch of done marks. With ``resume_when_due`` a row that failed before a restart waits
        out its backoff at the next start; without, it is tried again at once."""
        self.name = name
        self.store = store
        self.policy = policy
        self.clock = clock
        self.resume_when_due = resume_when_due
        self.workers: KeyedWorkers[R] = KeyedWorkers(name, self._run, concurrency)
        self.retries: DelayQueue[R] = DelayQueue(clock, self.submit, f"{name}-retry")
        self._queued: set[int] = set()  # seqs queued or in flight: bounded by pending rows
        self._done: Batcher[M] = Batcher(done_name, store.finish_many)
        self.started = False
        self.lock = asyncio.Lock()
        """Held by ``start`` while it reads what is pending; a writer that must not slip between
        that read and ``started`` (the inbox) holds it around its write and ``offer``."""

    def offer(self, rows: list[R]) -> None:
        """Rows just written: queue them, once started (before, ``start`` finds them)."""
        if self.started:
            for row in rows:
                self.submit(row)

    def submit(self, row: R) -> None:
        if row.seq in self._queued:
            return
        self._queued.add(row.seq)
        self.workers.submit(row.room_id, row)

    async def start(self) -> list[R]:
        """Queue what a previous run left pending (in order), then everything new. Returns the
        pending rows."""
        async with self.lock:
            pending = await self.store.pending()
            now = ms(self.clock)
            for row in pending:
                delay = (row.next_attempt_at - now) / 1000
                if self.resume_when_due and row.attempts and delay > 0:
                    self.retries.add(delay, row)
                else:
                    self.submit(row)
            self.started = True
        self._done.start()
        self.retries.start()
        return pending

    async def _run(self, row: R) -> None:
        try:
            mark = await self.policy.work(row)
        except asyncio.CancelledError:
            self._queued.discard(row.seq)
            raise
        except Exception as e:
            self._queued.discard(row.seq)
            await self._failed_attempt(row, e)
            return
        self._queued.discard(row.seq)
        self.finish(row, mark)

    def finish(self, row: R, mark: M) -> None:
        """Record the row done (group-committed); the policy hears of it once written."""
        written = self._done.add(mark)
        written.add_done_callback(lambda _: self.policy.finished(row, mark))

    async def _failed_attempt(self, row: R, error: Exception) -> None:
        attempts = row.attempts + 1
        decision = await self.policy.decide(row, attempts, error)
        if isinstance(decision, Parked):
            return
        if isinstance(decision, GiveUp):
            await self.give_up(row, attempts, decision.reason, decision.error)
            return
        if decision.note is not None:
            log.warning(
                "%s failed (%s, attempt %d); retrying in %.1fs",
                self.policy.describe(row),
                decision.note,
                attempts,
                decision.seconds,
            )
            log.debug("Failure detail for %s", self.policy.describe(row), exc_info=error)
        await self.retry(row, attempts, decision.seconds, f"{type(error).__name__}: {error}")

    async def retry(self, row: R, attempts: int, seconds: float, error: str) -> R:
        """Record the attempt and queue the row again in ``seconds``. Returns the row as
        queued."""
        next_at = ms(self.clock) + int(seconds * 1000)
        await self.store.mark_retry(row.seq, attempts, next_at, error[:500])
        again = replace(row, attempts=attempts, next_attempt_at=next_at)
        self.retries.add(seconds, again)
        return again

    async def give_up(
        self, row: R, attempts: int, reason: str, error: BaseException | None = None
    ) -> None:
        log.error(
            "%s failed %d times, giving up: %s",
            self.policy.describe(row),
            attempts,
            reason,
            exc_info=error,
        )
        await self.store.mark_failed(row.seq, attempts, ms(self.clock), reason[:500])
        self.policy.failed(row, attempts, reason)

    async def join(self) -> None:
        """Wait until every queued row has been worked on and its mark written (tests,
        shutdown). Rows waiting for a retry are not waited for."""
        await self.workers.join()
        await self._done.flush()

    async def stop(self, timeout: float = 10.0) -> None:
        self.started = False
        await self.retries.stop()
        await self.workers.stop(timeout)
        await self._done.stop()
