"""Webhooks out on a real database (SQLite and PostgreSQL) to a real HTTP receiver: read from
the audit log in order, signed with HMAC-SHA256, retried with backoff while the receiver fails,
resumed after a restart from the cursor, and never carrying a name."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from mautrix.util.async_db import Database

from bridge.api.webhooks import Webhooks
from bridge.db.audit_repo import AuditLog
from tests.support.builders import DOMAIN, make_config
from tests.support.fakes import FakeClock

THERAPIST = f"@therapist:{DOMAIN}"
SECRET = "s" * 40


class Receiver:
    """Answers ``fail`` times 500, then 200; records what arrived."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        self.got.set()
        if self.fail:
            self.fail -= 1
            return web.Response(status=500)
        return web.Response(status=204)

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.received) < count:
                self.got.clear()
                await self.got.wait()


async def delivered(hooks: Webhooks, count: int) -> None:
    """Until the cursor moved past ``count`` deliveries (at least once: a stop between the
    receiver's answer and the cursor's update sends that one again)."""
    async with asyncio.timeout(10):
        while hooks.delivered < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def verify(headers: dict[str, str], body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in headers["Alcove-Signature"].split(","))
    mac = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), parts["v1"])


async def test_webhooks_are_signed_retried_and_resumed(db: Database, tmp_path: Path) -> None:
    receiver = Receiver(fail=2)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    clock = FakeClock()
    audit = AuditLog(db, clock)
    await audit.record(THERAPIST, "client.created", f"@c-before:{DOMAIN}")  # before: not sent
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        config = make_config(
            tmp_path,
            api={
                "webhooks": [
                    {"name": "crm", "url": str(server.make_url("/hook")), "secret": SECRET}
                ],
                "webhook_retry_seconds": 0.01,
            },
        )
        hooks = Webhooks(config, db, http, clock, poll_seconds=0.01)
        await hooks.start()
        await audit.record(THERAPIST, "client.created", f"@c-one:{DOMAIN}")
        await audit.record(THERAPIST, "title.changed", None, "!r:x")  # not a webhook event
        await audit.record(
            "@alcove:test.local",
            "session.purged",
            THERAPIST,
            "!session:x",
            session=7,
            start=1,
            end=2,
            reason="ended by the therapist",
            messages_purged=3,
            files_purged=1,
            purge_id="p1",
            status="complete",
        )
        await receiver.wait(4)  # two failures, then the two events
        await delivered(hooks, 2)
        await hooks.stop()
        bodies = [json.loads(body) for _, body in receiver.received]
        assert [b["event"] for b in bodies] == [
            "client.created",
            "client.created",
            "client.created",
            "session.ended",
        ]
        assert bodies[0] == bodies[2]  # the same delivery, retried
        assert bodies[2]["client_id"] == f"@c-one:{DOMAIN}"
        assert bodies[3]["booking_id"] == 7 and bodies[3]["messages_purged"] == 3
        assert "reason" not in bodies[3]
        for headers, body in receiver.received:
            assert verify(headers, body)
            assert headers["Alcove-Delivery"] == str(json.loads(body)["delivery"])
        assert not verify(receiver.received[0][0], receiver.received[0][1] + b" ")

        # Restarted: nothing is sent again; a new event is.
        hooks = Webhooks(config, db, http, clock, poll_seconds=0.01)
        await hooks.start()
        await audit.record(THERAPIST, "client.created", f"@c-two:{DOMAIN}")
        await receiver.wait(5)
        await delivered(hooks, 1)
        await hooks.stop()
    assert len(receiver.received) == 5
    assert json.loads(receiver.received[4][1])["client_id"] == f"@c-two:{DOMAIN}"
