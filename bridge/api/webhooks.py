"""Webhooks out: "client.created" and "session.ended" POSTed to each configured URL, signed with
HMAC-SHA256, never carrying a name or message content.

They are read from the audit log, which is durable and append-only: each webhook keeps a cursor
(the last audit row it delivered, ``webhook_cursor``), so an event recorded before a crash or
while the receiver is down is delivered later, in order, retried with exponential backoff
(``api.webhook_retry_seconds``, doubled each time, at most an hour). A new webhook starts at the
end of the log (no history is replayed). Delivery is at least once: a receiver deduplicates on
``Alcove-Delivery``.

Signature: ``Alcove-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``;
a receiver recomputes it and refuses an old ``t`` (replays)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from typing import Any

import aiohttp
from mautrix.util.async_db import Database

from ..clock import Clock
from ..config import WEBHOOK_EVENTS, Config, Webhook

log = logging.getLogger("alcove.webhooks")

POLL_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 3600.0
_PENDING = (
    "SELECT id, at, actor, action, target, room_id, detail FROM audit"
    " WHERE id > (SELECT last_audit FROM webhook_cursor WHERE name = $1)"
)
_ACTIONS = {action: event for event, action in WEBHOOK_EVENTS.items()}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def payload(row: Any) -> dict[str, Any]:
    """What a webhook says about an audit row: IDs, times and counts only."""
    detail = json.loads(row["detail"] or "{}")
    event = _ACTIONS[row["action"]]
    out: dict[str, Any] = {"event": event, "delivery": int(row["id"]), "at": int(row["at"])}
    if event == "client.created":
        out.update(client_id=row["target"], therapist=row["actor"])
    else:
        out.update(
            booking_id=detail.get("session"),
            therapist=row["target"],
            room_id=row["room_id"],
            start=detail.get("start"),
            end=detail.get("end"),
            messages_purged=detail.get("messages_purged"),
            files_purged=detail.get("files_purged"),
            status=detail.get("status"),
        )
    return out


class Webhooks:
    def __init__(
        self,
        config: Config,
        db: Database,
        session: aiohttp.ClientSession,
        clock: Clock,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.hooks = config.api.webhooks
        self.retry = config.api.webhook_retry_seconds
        self.db = db
        self.session = session
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.delivered = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        last = int(await self.db.fetchval("SELECT COALESCE(MAX(id), 0) FROM audit"))
        for hook in self.hooks:
            await self.db.execute(
                "INSERT INTO webhook_cursor (name, last_audit) VALUES ($1, $2)"
                " ON CONFLICT (name) DO NOTHING",
                hook.name,
                last,
            )
            self._tasks.append(asyncio.create_task(self._run(hook), name=f"webhook:{hook.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _pending(self, hook: Webhook) -> list[Any]:
        actions = [WEBHOOK_EVENTS[e] for e in sorted(hook.events)]
        marks = ", ".join(f"${i + 2}" for i in range(len(actions)))
        where = f"{_PENDING} AND action IN ({marks}) ORDER BY id LIMIT 100"
        return list(await self.db.fetch(where, hook.name, *actions))

    async def _run(self, hook: Webhook) -> None:
        while True:
            try:
                rows = await self._pending(hook)
            except Exception:
                log.exception("Webhook %s: could not read the audit log", hook.name)
                rows = []
            for row in rows:
                await self._deliver(hook, row)
                await self.db.execute(
                    "UPDATE webhook_cursor SET last_audit = $1 WHERE name = $2",
                    row["id"],
                    hook.name,
                )
                self.delivered += 1
            if not rows:
                await self.clock.sleep(self.poll_seconds)

    async def _deliver(self, hook: Webhook, row: Any) -> None:
        """POST until the receiver answers 2xx (backoff in between)."""
        body = json.dumps(payload(row), sort_keys=True).encode()
        delay = self.retry
        attempt = 0
        while True:
            attempt += 1
            timestamp = int(self.clock.time())
            headers = {
                "Content-Type": "application/json",
                "Alcove-Event": _ACTIONS[row["action"]],
                "Alcove-Delivery": str(row["id"]),
                "Alcove-Signature": sign(hook.secret, timestamp, body),
            }
            try:
                async with self.session.post(
                    hook.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=15)
                ) as resp:
                    if 200 <= resp.status < 300:
                        return
                    problem = f"answered {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                problem = f"unreachable ({type(e).__name__})"
            log.warning(
                "Webhook %s: delivery %s %s (attempt %d); retrying in %.0f s",
                hook.name,
                row["id"],
                problem,
                attempt,
                delay,
            )
            await self.clock.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
