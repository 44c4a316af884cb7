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

from bots.bot_types import MAX_BODY_BYTES
from bots.features.conversations.repo import DM, Client, ConversationRepo, Room
from bots.features.phrases.commands import PhraseRepo
from bridge.config import Config
from bridge.inbox import Inbox
from bridge.matrix.outbox import AUTOMATED, Outbox
from bridge.metrics import Metrics
from bridge.web.server import READY, build_web_app
from bridge.web.transactions import TransactionEndpoint
from tests.support.builders import DOMAIN, invite, make_config, message
from tests.support.fakes import FakeClock, RecordingGateway, RecordingTimers, Sent
from tests.support.harness import Harnesses

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
    clock: FakeClock
    timers: RecordingTimers

    async def settle(self) -> None:
        for _ in range(3):
            await self.inbox.join()
            await self.outbox.join()


@pytest.fixture
async def stack(harnesses: Harnesses, tmp_path: Path) -> AsyncIterator[Stack]:
    config = make_config(
        tmp_path,
        appservice={
            "address": "http://127.0.0.1:29340",
            "as_token": "a",
            "hs_token": HS_TOKEN,
            "max_body_size_mib": 10,
        },
    )
    gateway = RecordingGateway(bot_user_id=config.bot_user_id, existing_users={THERAPIST})
    timers = RecordingTimers()
    h = await harnesses.build(config, gateway, FakeClock(), timers=timers, with_inbox=True)
    endpoint = TransactionEndpoint(HS_TOKEN, h.inbox, h.metrics)

    async def refresh() -> None:
        await h.inbox.refresh_metrics()
        await h.outbox.refresh_metrics()

    app = build_web_app(endpoint, h.metrics, refresh, config.appservice.max_body_size_mib)
    app[READY]["ready"] = True
    async with TestClient(TestServer(app)) as client:
        yield Stack(client, h.inbox, h.outbox, gateway, config, h.clock, timers)


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
    resp = await stack.client.put(url, json={"events": []}, headers=AUTH)
    assert resp.status == 200


async def test_the_token_in_the_query_only_when_configured(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """?access_token= ends up in proxy logs: refused unless appservice.access_token_in_query."""
    url = f"/_matrix/app/v1/transactions/1?access_token={HS_TOKEN}"
    with caplog.at_level("WARNING", logger="alcove.web.transactions"):
        resp = await stack.client.put(url, json={"events": []})
    assert resp.status == 401
    assert "Authorization header" in (await resp.json())["error"]
    assert "access_token_in_query" in caplog.text
    assert HS_TOKEN not in caplog.text

    metrics = Metrics()
    endpoint = TransactionEndpoint(HS_TOKEN, stack.inbox, metrics, access_token_in_query=True)

    async def refresh() -> None:
        pass

    app = build_web_app(endpoint, metrics, refresh, 10)
    async with TestClient(TestServer(app)) as legacy:
        assert (await legacy.put(url, json={"events": []})).status == 200
        resp = await legacy.put(url.replace(HS_TOKEN, "nope"), json={"events": []})
        assert resp.status == 403
        resp = await legacy.put(url, json={"events": []}, headers={"Authorization": "Bearer x"})
        assert resp.status == 403  # the header wins


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


async def test_a_phrase_with_a_format_spec_is_refused_and_never_rendered(
    stack: Stack, db: Database
) -> None:
    """`{therapist_name:>999999999}` passed validation and `!p` built a ~1 GB string."""
    add = message("!mgmt:x", THERAPIST, "!phrase add big Hi {therapist_name:>999999999}")
    assert await put_txn(stack, "40", [add]) == 200
    await stack.settle()
    (reply,) = stack.gateway.bodies("!mgmt:x")
    assert reply.startswith("Not saved: placeholders take no format spec")
    assert "write just {therapist_name}" in reply
    assert await PhraseRepo(db).get(THERAPIST, "big") is None

    # One saved by an older Alcove is refused when used, with what to do.
    await dm_with_a_client(stack, db)
    await PhraseRepo(db).put(THERAPIST, "old", "Hi {therapist_name:>999999999}")
    assert await put_txn(stack, "41", [message("!dm:x", THERAPIST, "!p old")]) == 200
    await stack.settle()
    (reply,) = stack.gateway.bodies("!dm:x")
    assert reply.startswith("'old' cannot be sent: placeholders take no format spec")
    assert "!phrase add" in reply
    assert [s.sender for s in stack.gateway.sent] == [stack.config.bot_user_id] * 2


async def test_a_non_ascii_digit_txn_id_is_accepted_once(stack: Stack, db: Database) -> None:
    """'²'.isdigit() is true but int('²') fails: that was a 500 after storing the events, and
    Synapse retries a failed transaction forever, stalling every later event."""
    ping = message("!dm:x", THERAPIST, "!ping")
    for txn in ("%C2%B2", "%C2%B2", "1" * 5000, "٣"):
        resp = await stack.client.put(
            f"/_matrix/app/v1/transactions/{txn}", json={"events": [ping]}, headers=AUTH
        )
        assert resp.status == 200, txn
    await stack.settle()
    assert stack.gateway.bodies("!dm:x") == ["pong"]
    assert await db.fetchval("SELECT COUNT(*) FROM inbox_event") == 1


def nested(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = {"x": [value]}
    return value


def deep_message(room_id: str, depth: int) -> dict[str, object]:
    event = message(room_id, THERAPIST, "!ping")
    event["content"] = {"msgtype": "m.text", "body": "!ping", "deep": nested(depth)}
    return event


async def test_deeply_nested_events_are_dropped_and_the_rest_accepted(
    stack: Stack, db: Database
) -> None:
    """A RecursionError while decoding was a 500 and stalled the homeserver's queue; any error
    answer does (Synapse retries 4xx too), so the transaction is accepted without that event."""
    fine = message("!dm:x", THERAPIST, "!ping")
    too_deep_for_python = '{"a":' * 100_000 + "1" + "}" * 100_000
    body = (
        '{"events": ['
        + json.dumps(fine)
        + ', {"type": "m.room.message", "content": '
        + too_deep_for_python
        + "}, "
        + json.dumps(deep_message("!dm:x", 200))  # decodes, but too deep to handle safely
        + '], "ephemeral": []}'
    )
    with pytest.raises(RecursionError):
        json.loads(body)
    resp = await stack.client.put(
        "/_matrix/app/v1/transactions/50",
        data=body.encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status == 200
    await stack.settle()
    assert stack.gateway.bodies("!dm:x") == ["pong"]
    assert await db.fetchval("SELECT COUNT(*) FROM inbox_event") == 1
    text = await (await stack.client.get("/metrics")).text()
    assert 'alcove_inbox_events_total{outcome="too_deep"} 2.0' in text

    # Only a deep event, decodable: dropped, the transaction still answered 200.
    assert await put_txn(stack, "51", [deep_message("!dm:x", 100)]) == 200
    # A body that is not an object at all: a clean 400, not a 500.
    resp = await stack.client.put(
        "/_matrix/app/v1/transactions/52", data=b"[" * 100_000, headers=AUTH
    )
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


async def dm_with_a_client(stack: Stack, db: Database, room_id: str = "!dm:x") -> Client:
    repo = ConversationRepo(db)
    client = Client(f"@c-jane:{DOMAIN}", THERAPIST, "Jane Doe", "J.D.", None)
    await repo.add_client(client, "$origin-jane", 0)
    await repo.add_room(Room(room_id, DM, THERAPIST, client.user_id, "Jane Doe"), 0)
    return client


async def echo(stack: Stack, txn: str, sent: list[Sent]) -> None:
    """The homeserver pushes Alcove's own messages back, as their senders'."""
    events = [
        {
            "type": s.event_type,
            "room_id": s.room_id,
            "sender": s.sender,
            "event_id": f"$echo-{txn}-{i}",
            "origin_server_ts": 1,
            "content": s.content,
        }
        for i, s in enumerate(sent)
    ]
    assert await put_txn(stack, txn, events) == 200
    await stack.settle()


async def test_automated_messages_starting_with_bang_are_not_commands(
    stack: Stack, db: Database
) -> None:
    """A scheduled message, a blast and a phrase are sent as the therapist (double puppet):
    their text "!ping" comes back as the therapist's and must not be run as a command."""
    await dm_with_a_client(stack, db)
    commands = [
        message("!dm:x", THERAPIST, "!schedule in 10m !ping"),
        message("!mgmt:x", THERAPIST, "!blast all !ping"),
        message("!mgmt:x", THERAPIST, "!phrase add bang !ping"),
        message("!dm:x", THERAPIST, "!p bang"),
    ]
    for i, command in enumerate(commands):
        assert await put_txn(stack, f"60{i}", [command]) == 200
        await stack.settle()
    stack.clock.advance(600)
    (job,) = stack.timers.armed
    await stack.timers.run(job)
    await stack.settle()
    as_therapist = [s for s in stack.gateway.sent if s.sender == THERAPIST]
    assert [s.content["body"] for s in as_therapist] == ["!ping"] * 3  # blast, phrase, schedule
    assert all(s.content[AUTOMATED] is True for s in stack.gateway.sent)

    before = len(stack.gateway.sent)
    await echo(stack, "70", as_therapist)
    assert stack.gateway.sent[before:] == []
    assert "pong" not in stack.gateway.bodies()

    # The same text typed by the therapist is a command.
    assert await put_txn(stack, "71", [message("!dm:x", THERAPIST, "!ping")]) == 200
    await stack.settle()
    assert stack.gateway.bodies()[-1] == "pong"


async def test_an_automated_message_is_not_taken_as_awaited_input(
    stack: Stack, db: Database
) -> None:
    """`!blast all` waits for the therapist's next message; a scheduled message that goes out
    meanwhile (sent as the therapist) must not become the blast."""
    await dm_with_a_client(stack, db)
    assert await put_txn(stack, "80", [message("!dm:x", THERAPIST, "!schedule in 1m Hi")]) == 200
    await stack.settle()
    assert await put_txn(stack, "81", [message("!dm:x", THERAPIST, "!blast all")]) == 200
    await stack.settle()
    stack.clock.advance(60)
    (job,) = stack.timers.armed
    await stack.timers.run(job)
    await stack.settle()
    scheduled = [s for s in stack.gateway.sent if s.sender == THERAPIST]
    before = len(stack.gateway.sent)
    await echo(stack, "82", scheduled)
    assert stack.gateway.sent[before:] == []  # no "Send to 1 client? !yes" for it


async def test_a_client_cannot_hide_a_message_behind_the_marker(stack: Stack, db: Database) -> None:
    """Alcove never sends as a managed client: a client's marked message is still handled."""
    client = await dm_with_a_client(stack, db)
    event = message("!dm:x", client.user_id, "!ping")
    event["content"][AUTOMATED] = True
    assert await put_txn(stack, "90", [event]) == 200
    await stack.settle()
    assert stack.gateway.bodies("!dm:x") != []  # answered (a refusal: clients have no !ping)
