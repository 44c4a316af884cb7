"""The outbox: every message Alcove sends is written down first, then sent with a transaction id
derived from (sender, key) and a device of the acting user, so a resend after a crash, before or
after the homeserver accepted it, yields exactly one event.

send() → outbox row (idempotent on key) → per-room ordered lane → gateway.send_event
   5xx / network → retry with backoff; 429 → wait retry_after_ms; other 4xx → failed
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from ..batcher import Batcher
from ..clock import Clock, ms
from ..db.outbox_repo import PENDING, SENT, DeviceRepo, OutboxRepo, OutboxRow
from ..delayed import DelayQueue, backoff
from ..metrics import Metrics
from ..workers import KeyedWorkers
from .gateway import MatrixGateway, MatrixSendError, PermanentError, TemporaryError

log = logging.getLogger("alcove.outbox")

DEVICE_ID = "ALCOVE"
UNKNOWN_DEVICE = "M_UNKNOWN_DEVICE"
AUTOMATED = "org.alcove.automated"
"""Set in the content of every message Alcove sends. Alcove speaks as therapists through the
double puppet, so its messages come back as theirs: the dispatcher never takes a marked
message for a command (a scheduled "!ping" must not run), and the auto-responder does not
count one as the therapist's own reply."""


Encrypt = Callable[[str, str, dict[str, Any]], Awaitable[tuple[str, dict[str, Any]]]]
"""(room id, event type, content) → what to send: ``m.room.encrypted`` in an encrypted room.

Encryption happens at every delivery attempt, right before the send, never stored: exactly once
still holds because Synapse dedupes a send by (user, device, txn id) whatever its content, so a
resend whose first attempt did reach the homeserver returns the first event (its ciphertext
wasted one Megolm index, nothing more). Encrypting at each attempt also means a retry after a
member left uses the group session of the members at that time, where a stored ciphertext
would go out under a session the departed member holds; and no plaintext is kept any longer
than it would be for an unencrypted room."""


Hold = Callable[[str], Awaitable[str | None]]
"""(room id) → the user whose first device a message into that room must wait for, or None.

In an encrypted room a message can be read only by devices that exist when it is sent (its
Megolm key goes to those; clients accept a *forwarded* key only from their own devices), so a
message to a client who has never signed in waits in the outbox — pending in the database,
across restarts — until ``release`` says their first device appeared (see bridge/crypto)."""
HELD = "held"
"""The status a waiter (``expect``/``wait``) sees for a message held by ``Hold``: it stays
pending in the database and goes once released."""


def marked(event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return {**content, AUTOMATED: True} if event_type == "m.room.message" else content


def txn_id_for(sender: str, key: str) -> str:
    """Deterministic: the same logical message from the same sender always has the same id.
    The sender is part of it because Synapse's appservice txn cache ignores user_id."""
    return "alcove." + hashlib.sha256(f"{sender}\x00{key}".encode()).hexdigest()[:40]


class Outbox:
    def __init__(
        self,
        repo: OutboxRepo,
        devices: DeviceRepo,
        gateway: MatrixGateway,
        clock: Clock,
        metrics: Metrics,
        *,
        max_attempts: int = 8,
        retry_base_seconds: float = 1.0,
        concurrency: int = 32,
        encrypt: Encrypt | None = None,
        hold: Hold | None = None,
    ) -> None:
        self.repo = repo
        self.encrypt = encrypt
        self.hold = hold
        self._held: dict[str, list[OutboxRow]] = {}
        self.devices = devices
        self.gateway = gateway
        self.clock = clock
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.workers: KeyedWorkers[OutboxRow] = KeyedWorkers("outbox", self._deliver, concurrency)
        self.retries: DelayQueue[OutboxRow] = DelayQueue(clock, self._submit, "outbox-retry")
        self._queued: set[int] = set()
        self._waiters: dict[str, list[asyncio.Future[OutboxRow]]] = {}
        self._device_cache: dict[str, str | None] = {}
        self._device_epoch: dict[str, int] = {}
        self._device_lock = asyncio.Lock()
        self._started = False
        # "Sent" marks are group-committed: losing one in a crash only means a resend with the
        # same transaction id, which Synapse dedupes.
        self._marks: Batcher[tuple[int, str, int]] = Batcher("outbox-sent", repo.mark_sent_many)

    async def send(
        self,
        key: str,
        sender: str,
        room_id: str,
        content: dict[str, Any],
        event_type: str = "m.room.message",
    ) -> OutboxRow:
        """Queue a message. ``key`` names the logical message (e.g. ``reply:<event id>``): queuing
        the same key twice sends once. Returns the row (pending until delivered)."""
        row, new = await self.prepare(key, sender, room_id, content, event_type)
        if new and self._started:
            self._submit(row)
        return row

    async def prepare(
        self,
        key: str,
        sender: str,
        room_id: str,
        content: dict[str, Any],
        event_type: str = "m.room.message",
    ) -> tuple[OutboxRow, bool]:
        """Write the message down without handing it to a worker: for use inside a database
        transaction that must commit together with it. Call ``submit`` after the commit."""
        return await self.repo.insert(
            key,
            sender,
            room_id,
            event_type,
            marked(event_type, content),
            txn_id_for(sender, key),
            ms(self.clock),
        )

    async def prepare_many(
        self, items: list[tuple[str, str, str, dict[str, Any]]], event_type: str = "m.room.message"
    ) -> list[OutboxRow]:
        """``prepare`` for many (key, sender, room_id, content) in one statement."""
        written = await self.repo.insert_many(
            [
                (
                    key,
                    sender,
                    room_id,
                    event_type,
                    marked(event_type, content),
                    txn_id_for(sender, key),
                )
                for key, sender, room_id, content in items
            ],
            ms(self.clock),
        )
        return [row for row, _ in written]

    def submit(self, row: OutboxRow) -> None:
        if self._started and row.status == PENDING:
            self._submit(row)

    async def start(self) -> int:
        pending = await self.repo.pending()
        self._started = True
        self._marks.start()
        for row in pending:
            self._submit(row)
        self.retries.start()
        if pending:
            log.info("Resending %d outbox messages queued before the restart", len(pending))
        return len(pending)

    def release(self, users: list[str]) -> int:
        """These users' devices changed: the messages held for them go (each asks ``hold``
        again, so one whose user still has no device is held again), in their order."""
        rows = [row for user in users for row in self._held.pop(user, [])]
        for row in sorted(rows, key=lambda r: r.seq):
            self._submit(row)
        return len(rows)

    def release_all(self) -> int:
        """Every held message asks again (a safety net: a device-list change Synapse dropped
        while it held Alcove for down must not keep a message waiting for good)."""
        return self.release(list(self._held))

    def held(self, user: str | None = None) -> int:
        """How many messages wait for a first device (of ``user``, or of anyone)."""
        if user is not None:
            return len(self._held.get(user, []))
        return sum(len(rows) for rows in self._held.values())

    def _submit(self, row: OutboxRow) -> None:
        if row.seq in self._queued:
            return
        self._queued.add(row.seq)
        self.workers.submit(row.room_id, row)

    async def device_for(self, user_id: str) -> str | None:
        if user_id in self._device_cache:
            return self._device_cache[user_id]
        async with self._device_lock:
            device = await self.devices.get(user_id) or await self._create_device(user_id)
            self._device_cache[user_id] = device
            return device

    async def _create_device(self, user_id: str) -> str | None:
        if not await self.gateway.ensure_device(user_id, DEVICE_ID):
            return None
        await self.devices.put(user_id, DEVICE_ID)
        return DEVICE_ID

    async def renew_device(self, user_id: str, epoch: int) -> None:
        """The homeserver says the acting device is gone (the user signed out of all sessions,
        or an admin reset the password): create it again. Only once for all the sends that
        failed with the old one: ``epoch`` is the generation they used."""
        async with self._device_lock:
            if self._device_epoch.get(user_id, 0) != epoch:
                return  # another send already renewed it
            self._device_epoch[user_id] = epoch + 1
            log.warning(
                "The acting device of %s was deleted on the homeserver; recreating it", user_id
            )
            self._device_cache[user_id] = await self._create_device(user_id)

    async def _deliver(self, row: OutboxRow) -> None:
        assert row.content is not None
        attempts = row.attempts + 1
        epoch = self._device_epoch.get(row.sender, 0)
        device: str | None = None
        try:
            if self.hold is not None and (waiting := await self.hold(row.room_id)):
                self._queued.discard(row.seq)
                if not any(r.seq == row.seq for r in self._held.get(waiting, [])):
                    self._held.setdefault(waiting, []).append(row)
                log.info("A message to %s waits for the first device of a member", row.room_id)
                self._resolve(_with(row, status=HELD))
                return
            device = await self.device_for(row.sender)
            event_type, content = row.event_type, row.content
            if self.encrypt is not None:
                event_type, content = await self.encrypt(row.room_id, event_type, content)
            event_id = await self.gateway.send_event(
                row.sender, row.room_id, event_type, content, row.txn_id, device
            )
        except PermanentError as e:
            if e.errcode != UNKNOWN_DEVICE or device is None:
                self._queued.discard(row.seq)
                await self._give_up(row, attempts, str(e))
                return
            await self.renew_device(row.sender, epoch)
            await self._retry(row, attempts, e, 0.0)
            return
        except TemporaryError as e:
            delay = (
                e.retry_after
                if e.retry_after is not None
                else backoff(attempts, self.retry_base_seconds)
            )
            await self._retry(row, attempts, e, delay, reason=str(e.status or "network"))
            return
        self._queued.discard(row.seq)
        self.metrics.outbox_sent.inc()
        sent = _with(row, status=SENT, event_id=event_id, content=None, attempts=attempts)
        written = self._marks.add((row.seq, event_id, ms(self.clock)))
        written.add_done_callback(lambda f: self._after_mark(f, sent))

    async def _retry(
        self,
        row: OutboxRow,
        attempts: int,
        error: MatrixSendError,
        delay: float,
        reason: str | None = None,
    ) -> None:
        """Send again after ``delay`` seconds, or give up once ``max_attempts`` are used up.
        With a ``reason`` the retry is logged."""
        self._queued.discard(row.seq)
        if attempts >= self.max_attempts:
            await self._give_up(row, attempts, str(error))
            return
        if reason is not None:
            log.warning(
                "Send %s to %s failed (%s, attempt %d/%d); retrying in %.1fs",
                row.txn_id,
                row.room_id,
                reason,
                attempts,
                self.max_attempts,
                delay,
            )
        self.metrics.outbox_retries.inc()
        next_at = ms(self.clock) + int(delay * 1000)
        await self.repo.mark_retry(row.seq, attempts, next_at, str(error)[:500])
        self.retries.add(delay, _with(row, attempts=attempts, next_attempt_at=next_at))

    def _after_mark(self, _written: asyncio.Future[None], sent: OutboxRow) -> None:
        """Waiters learn of a delivery once its batch of marks was written."""
        self._resolve(sent)

    async def _give_up(self, row: OutboxRow, attempts: int, reason: str) -> None:
        log.error(
            "Giving up on message %s to %s after %d attempts: %s",
            row.txn_id,
            row.room_id,
            attempts,
            reason,
        )
        await self.repo.mark_failed(row.seq, attempts, reason[:500])
        self.metrics.outbox_failed.inc()
        self._resolve(_with(row, status="failed", error=reason, content=None, attempts=attempts))

    def _resolve(self, row: OutboxRow) -> None:
        for fut in self._waiters.pop(row.key, []):
            if not fut.done():
                fut.set_result(row)

    def expect(self, key: str) -> asyncio.Future[OutboxRow]:
        """A future resolved when the message with ``key`` is sent or given up on. Register it
        before submitting the row, so a fast delivery cannot be missed and no read is needed."""
        fut: asyncio.Future[OutboxRow] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        return fut

    async def wait(self, key: str, timeout: float | None = None) -> OutboxRow:
        """Wait until the message with ``key`` is sent or given up on."""
        # Register first, then look: a delivery between the two cannot be missed.
        fut: asyncio.Future[OutboxRow] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        try:
            row = await self.repo.get(key)
            if row is None:
                raise KeyError(key)
            if row.status != PENDING:
                return row
            if any(r.seq == row.seq for rows in self._held.values() for r in rows):
                return _with(row, status=HELD)
            return await asyncio.wait_for(fut, timeout)
        finally:
            waiters = self._waiters.get(key)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(key, None)

    async def own_events(self, events: list[dict[str, Any]]) -> set[str]:
        """The ids of those ``events`` that Alcove itself sent: everything the bot sent, and
        every message whose event id the outbox recorded. A message the homeserver accepted but
        whose "sent" mark is not written yet (a resend after a restart, or a mark still in its
        batch) is still pending in the outbox: an event of the same sender in the same room is
        taken for it. (The event was read before the outbox, so one or the other holds.)"""
        ids = [str(e["event_id"]) for e in events if isinstance(e.get("event_id"), str)]
        own = {
            str(e["event_id"])
            for e in events
            if e.get("sender") == self.gateway.bot_user_id and isinstance(e.get("event_id"), str)
        }
        own |= await self.repo.known_event_ids([i for i in ids if i not in own])
        others = set(ids) - own
        rest = [e for e in events if e.get("event_id") in others]
        if rest:
            pending = await self.repo.pending_senders()
            own |= {
                str(e["event_id"]) for e in rest if (e.get("sender"), e.get("room_id")) in pending
            }
        return own

    async def refresh_metrics(self) -> None:
        self.metrics.outbox_pending.set(await self.repo.count(PENDING))

    async def join(self) -> None:
        await self.workers.join()
        await self._marks.flush()

    async def stop(self, timeout: float = 10.0) -> None:
        self._started = False
        await self.retries.stop()
        await self.workers.stop(timeout)
        await self._marks.stop()


def _with(row: OutboxRow, **changes: Any) -> OutboxRow:
    return replace(row, **changes)
