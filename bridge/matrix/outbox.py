"""The outbox: every message Alcove sends is written down first, then sent with a transaction id
derived from (sender, key) and a device of the acting user, so a resend after a crash, before or
after the homeserver accepted it, yields exactly one event.

send() → outbox row (idempotent on key) → DurableQueue (bridge/queue.py: one ordered lane per
room) → gateway.send_event
   5xx / network → retry with backoff; 429 → wait retry_after_ms; other 4xx → failed
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from ..batcher import GroupCommit
from ..clock import Clock, ms
from ..db.outbox_repo import PENDING, SENT, DeviceRepo, OutboxRepo, OutboxRow
from ..delayed import backoff
from ..metrics import Metrics
from ..queue import Decision, DurableQueue, GiveUp, Parked, Retry, Waiters
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


NewRow = tuple[str, str, str, str, dict[str, Any], str]
"""(key, sender, room id, event type, content, txn id): a message to write down."""
SentMark = tuple[int, str, int]
"""(seq, event id, sent at ms)."""


class _UnknownDevice(MatrixSendError):
    """The acting device was gone; it has been recreated: send again at once."""


class _Held(Exception):
    """The room waits for ``user``'s first device (an encrypted 1:1 before their first sign-in):
    the row is put aside until ``release`` (it stays pending, so a restart asks again)."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.user = user


class Outbox:
    """The durable queue configured for messages: written down first, sent in order per room;
    the homeserver's trouble is retried with backoff (or its ``retry_after``) up to
    ``max_attempts``, a refusal gives up at once."""

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
        # "Sent" marks are group-committed: losing one in a crash only means a resend with the
        # same transaction id, which Synapse dedupes.
        self.queue: DurableQueue[OutboxRow, SentMark] = DurableQueue(
            "outbox",
            repo,
            self,
            clock,
            concurrency=concurrency,
            done_name="outbox-sent",
            resume_when_due=False,
        )
        self.waiters: Waiters[str, OutboxRow] = Waiters()
        self._insert: GroupCommit[NewRow, tuple[OutboxRow, bool]] = GroupCommit(
            "outbox-insert", repo.db, self._insert_many
        )
        self._device_cache: dict[str, str | None] = {}
        self._device_epoch: dict[str, int] = {}
        self._device_lock = asyncio.Lock()

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
        if new:
            self.queue.offer([row])
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
        transaction that must commit together with it. Call ``submit`` after the commit.
        Outside a transaction, messages written at the same time share a commit."""
        return await self._insert(
            (key, sender, room_id, event_type, marked(event_type, content), txn_id_for(sender, key))
        )

    async def _insert_many(self, items: list[NewRow]) -> list[tuple[OutboxRow, bool]]:
        return await self.repo.insert_many(items, ms(self.clock))

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
        if row.status == PENDING:
            self.queue.offer([row])

    async def start(self) -> int:
        pending = await self.queue.start()
        if pending:
            log.info("Resending %d outbox messages queued before the restart", len(pending))
        return len(pending)

    def release(self, users: list[str]) -> int:
        """These users' devices changed: the messages held for them go (each asks ``hold``
        again, so one whose user still has no device is held again), in their order."""
        rows = [row for user in users for row in self._held.pop(user, [])]
        for row in sorted(rows, key=lambda r: r.seq):
            self.queue.submit(row)
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

    # The queue's policy.

    def describe(self, row: OutboxRow) -> str:
        return f"Send {row.txn_id} to {row.room_id}"

    async def work(self, row: OutboxRow) -> SentMark:
        assert row.content is not None
        epoch = self._device_epoch.get(row.sender, 0)
        device: str | None = None
        try:
            if self.hold is not None and (waiting := await self.hold(row.room_id)):
                raise _Held(waiting)
            device = await self.device_for(row.sender)
            event_type, content = row.event_type, row.content
            if self.encrypt is not None:
                event_type, content = await self.encrypt(row.room_id, event_type, content)
            event_id = await self.gateway.send_event(
                row.sender, row.room_id, event_type, content, row.txn_id, device
            )
        except PermanentError as e:
            if e.errcode != UNKNOWN_DEVICE or device is None:
                raise
            await self.renew_device(row.sender, epoch)
            raise _UnknownDevice(str(e)) from e
        self.metrics.outbox_sent.inc()
        return (row.seq, event_id, ms(self.clock))

    def finished(self, row: OutboxRow, mark: SentMark) -> None:
        """Waiters learn of a delivery once its batch of marks was written."""
        self.waiters.resolve(
            row.key,
            replace(row, status=SENT, event_id=mark[1], content=None, attempts=row.attempts + 1),
        )

    async def decide(self, row: OutboxRow, attempts: int, error: Exception) -> Decision:
        """A refusal gives up at once; the homeserver's trouble waits its ``retry_after`` or
        backs off, up to ``max_attempts``; so does anything else (a bug, or encryption failing
        for now), logged with its traceback when given up."""
        if isinstance(error, _Held):
            if not any(r.seq == row.seq for r in self._held.get(error.user, [])):
                self._held.setdefault(error.user, []).append(row)
            log.info("A message to %s waits for the first device of a member", row.room_id)
            self.waiters.resolve(row.key, replace(row, status=HELD))
            return Parked()
        bug = not isinstance(error, MatrixSendError)
        if isinstance(error, PermanentError):
            return GiveUp(str(error))
        if attempts >= self.max_attempts:
            return GiveUp(
                f"{type(error).__name__}: {error}" if bug else str(error), error if bug else None
            )
        if isinstance(error, _UnknownDevice):
            delay, note = 0.0, None
        elif isinstance(error, TemporaryError) and error.retry_after is not None:
            delay, note = error.retry_after, f"{error.status or 'network'}, max {self.max_attempts}"
        else:
            delay = backoff(attempts, self.retry_base_seconds)
            what = type(error).__name__ if bug else (getattr(error, "status", None) or "network")
            note = f"{what}, max {self.max_attempts}"
        self.metrics.outbox_retries.inc()
        return Retry(delay, note)

    def failed(self, row: OutboxRow, attempts: int, reason: str) -> None:
        self.metrics.outbox_failed.inc()
        self.waiters.resolve(
            row.key, replace(row, status="failed", error=reason, content=None, attempts=attempts)
        )

    def expect(self, key: str) -> asyncio.Future[OutboxRow]:
        """A future resolved when the message with ``key`` is sent or given up on. Register it
        before submitting the row, so a fast delivery cannot be missed and no read is needed."""
        return self.waiters.expect(key)

    async def wait(self, key: str, timeout: float | None = None) -> OutboxRow:
        """Wait until the message with ``key`` is sent or given up on."""
        # Register first, then look: a delivery between the two cannot be missed.
        fut = self.waiters.expect(key)
        try:
            row = await self.repo.get(key)
            if row is None:
                raise KeyError(key)
            if row.status != PENDING:
                return row
            if any(r.seq == row.seq for rows in self._held.values() for r in rows):
                return replace(row, status=HELD)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.waiters.forget(key, fut)

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
        await self.queue.join()

    async def stop(self, timeout: float = 10.0) -> None:
        await self.queue.stop(timeout)
