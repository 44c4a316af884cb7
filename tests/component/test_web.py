"""The appservice HTTP endpoint through aiohttp's test client, over the whole pipeline:
transaction → inbox (real database) → dispatch → bot → outbox → recording gateway."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from mautrix.util.async_db import Database

from bots.bot import Bot
from bots.bot_types import MAX_BODY_BYTES
from bots.features.conversations.repo import Client, ConversationRepo
from bridge.config import Config
from bridge.db.inbox_repo import InboxRepo
from bridge.db.outbox_repo import DeviceRepo, OutboxRepo
from bridge.dispatch import Dispatcher
from bridge.inbox import Inbox
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from bridge.web.server import READY, build_web_app
from bridge.web.transactions import TransactionEndpoint
from tests.support.builders import DOMAIN, invite, make_config, message
from tests.support.fakes import FakeClock, RecordingGateway

HS_TOKEN = "hs-token-for-tests"
THERAPIST = f"@therapist:{DOMAIN}"
AUTH = {"Authorization": f"Bearer {HS_TOKEN}"}


@dataclass
class Stack:
    client: TestClient[web.Request, web.Application]
    inbox: Inbox
    outbox: Outbox
    gateway: RecordingGateway
    config: Config

    async def settle(self) -> None:
        for _ in range(3):
            await self.inbox.join()
            await self.outbox.join()


@pytest.fixture
async def stack(db: Database, tmp_path: Path) -> AsyncIterator[Stack]:
    config = make_config(
        tmp_path,
        appservice={
            "address": "http://127.0.0.1:29340",
            "as_token": "a",
            "hs_token": HS_TOKEN,
            "max_body_size_mib": 10,
        },
    )
    metrics = Metrics()
    clock = FakeClock()
    gateway = RecordingGateway(bot_user_id=config.bot_user_id)
    outbox = Outbox(OutboxRepo(db), DeviceRepo(db), gateway, clock, metrics)
    bot = Bot(config, gateway, outbox, db, clock)
    inbox = Inbox(
        InboxRepo(db), Dispatcher(config.bot_user_id, bot).handle, clock, metrics, config.inbox
    )
    endpoint = TransactionEndpoint(HS_TOKEN, inbox, metrics)

    async def refresh() -> None:
        await inbox.refresh_metrics()
        await outbox.refresh_metrics()

    app = build_web_app(endpoint, metrics, refresh, config.appservice.max_body_size_mib)
    await outbox.start()
    await inbox.start()
    app[READY]["ready"] = True
    async with TestClient(TestServer(app)) as client:
        yield Stack(client, inbox, outbox, gateway, config)
    await inbox.stop()
    await outbox.stop()


async def put_txn(stack: Stack, txn: str, events: list[dict[str, object]]) -> int:
    resp = await stack.client.put(
        f"/_matrix/app/v1/transactions/{txn}", json={"events": events}, headers=AUTH
    )
    return resp.status


async def test_missing_token_401_wrong_token_403(stack: Stack) -> None:
    url = "/_matrix/app/v1/transactions/1"
    resp = await stack.client.put(url, json={"events": []})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNAUTHORIZED"
    resp = await stack.client.put(
        url, json={"events": []}, headers={"Authorization": "Bearer nope"}
    )
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await stack.client.put(url + "?access_token=nope", json={"events": []})
    assert resp.status == 403
    resp = await stack.client.put(f"{url}?access_token={HS_TOKEN}", json={"events": []})
    assert resp.status == 200


async def test_bad_json_is_400_and_nothing_is_stored(stack: Stack, db: Database) -> None:
    resp = await stack.client.put("/_matrix/app/v1/transactions/2", data=b"{not json", headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"
    resp = await stack.client.put("/_matrix/app/v1/transactions/3", json=[1, 2], headers=AUTH)
    assert resp.status == 400
    assert await db.fetchval("SELECT COUNT(*) FROM inbox_event") == 0


async def test_ten_mib_accepted_larger_than_limit_413(stack: Stack, db: Database) -> None:
    big = json.dumps({"events": [message("!r:x", "@someone:x", "x" * (10 * 1024 * 1024 - 4096))]})
    resp = await stack.client.put(
        "/_matrix/app/v1/transactions/big",
        data=io.BytesIO(big.encode()),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status == 200
    assert await db.fetchval("SELECT COUNT(*) FROM inbox_event") == 1
    huge = json.dumps({"events": [message("!r:x", "@someone:x", "x" * (11 * 1024 * 1024))]})
    resp = await stack.client.put(
        "/_matrix/app/v1/transactions/huge",
        data=io.BytesIO(huge.encode()),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status == 413
    assert (await resp.json())["errcode"] == "M_TOO_LARGE"


async def test_ping_command_round_trip_and_replay(stack: Stack) -> None:
    ping = message("!dm:x", THERAPIST, "!ping")
    assert await put_txn(stack, "10", [ping]) == 200
    assert await put_txn(stack, "10", [ping]) == 200  # replayed transaction
    await stack.settle()
    assert stack.gateway.bodies("!dm:x") == ["pong"]
    assert stack.gateway.sent[0].sender == stack.config.bot_user_id
    assert stack.gateway.sent[0].content["msgtype"] == "m.notice"


async def test_help_lists_commands(stack: Stack) -> None:
    assert await put_txn(stack, "11", [message("!dm:x", THERAPIST, "!help")]) == 200
    await stack.settle()
    (body,) = stack.gateway.bodies()
    assert "!ping" in body and "!help" in body


async def test_stranger_is_refused_politely(stack: Stack) -> None:
    assert await put_txn(stack, "12", [message("!dm:x", "@stranger:x", "!ping")]) == 200
    await stack.settle()
    (body,) = stack.gateway.bodies()
    assert "only take commands" in body


async def test_invites_from_staff_accepted_others_declined(stack: Stack) -> None:
    bot = stack.config.bot_user_id
    events = [invite("!staff:x", THERAPIST, bot), invite("!spam:x", "@stranger:x", bot)]
    assert await put_txn(stack, "13", events) == 200
    await stack.settle()
    assert stack.gateway.joined == [(bot, "!staff:x")]
    assert stack.gateway.left == [(bot, "!spam:x")]


async def test_bot_ignores_its_own_messages(stack: Stack) -> None:
    own = message("!dm:x", stack.config.bot_user_id, "!ping")
    assert await put_txn(stack, "14", [own]) == 200
    await stack.settle()
    assert stack.gateway.sent == []


async def test_health_ready_metrics(stack: Stack) -> None:
    assert (await stack.client.get("/health")).status == 200
    assert (await stack.client.get("/ready")).status == 200
    stack.client.app[READY]["ready"] = False
    assert (await stack.client.get("/ready")).status == 503
    await put_txn(stack, "20", [message("!dm:x", THERAPIST, "!ping")])
    await stack.settle()
    text = await (await stack.client.get("/metrics")).text()
    for name in (
        "alcove_inbox_depth",
        "alcove_inbox_oldest_unprocessed_age_seconds",
        "alcove_outbox_retries_total",
        "alcove_matrix_api_errors_total",
    ):
        assert name in text
    assert 'alcove_inbox_events_total{outcome="done"} 1.0' in text
    assert "pong" not in text and "!ping" not in text  # no content in metrics


async def test_appservice_ping_and_queries(stack: Stack) -> None:
    resp = await stack.client.post(
        "/_matrix/app/v1/ping", json={"transaction_id": "t"}, headers=AUTH
    )
    assert resp.status == 200
    resp = await stack.client.post("/_matrix/app/v1/ping", json={})
    assert resp.status == 401
    resp = await stack.client.get("/_matrix/app/v1/users/@c-x:test.local", headers=AUTH)
    assert resp.status == 404


async def test_a_reply_too_long_for_one_event_goes_out_in_parts(stack: Stack, db: Database) -> None:
    """Synapse refuses an event over 64 KiB: `!client list` for 1,500 clients must still arrive,
    every client once, in several notices."""
    repo = ConversationRepo(db)
    await repo.set_management_room(THERAPIST, "!dm:x")  # the list is said only there
    stack.gateway.memberships["!dm:x"] = {THERAPIST: "join", stack.config.bot_user_id: "join"}
    names = [f"Client{i:04d} Longsurname-Doublebarrelled" for i in range(1500)]
    for i, name in enumerate(names):
        await repo.add_client(
            Client(f"@c-{i:06d}:{DOMAIN}", THERAPIST, name, "C.L.", None), f"$origin{i}", 0
        )
    assert await put_txn(stack, "30", [message("!dm:x", THERAPIST, "!client list")]) == 200
    await stack.settle()
    parts = stack.gateway.bodies("!dm:x")
    assert len(parts) > 1
    assert all(len(p.encode()) <= MAX_BODY_BYTES for p in parts)
    text = "\n".join(parts)
    assert all(text.count(name) == 1 for name in names)
