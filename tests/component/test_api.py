"""The HTTP API (issue 13) through aiohttp's test client over the bot as Alcove wires it (real
database, real outbox, recording gateway): tokens and scopes, what every 4xx says and where,
clients, bookings with Idempotency-Key, erasure, receipts and the calendar feed. Also: the
checked-in OpenAPI document is the generated one."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from icalendar import Calendar

from bots.features.conversations.service import ERASED_ROOM_NAME
from bridge.api.server import Api, ApiHandlers
from bridge.api.spec import openapi_json
from tests.support.builders import DOMAIN, make_config
from tests.support.fakes import FakeClock, RecordingGateway
from tests.support.harness import BotHarness, Harnesses

THERAPIST = f"@therapist:{DOMAIN}"
CARE = f"@care:{DOMAIN}"
WRITER = "w" * 40
READER = "r" * 40
FEED = "f" * 40
DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def auth(token: str = WRITER) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Stack:
    client: TestClient[Any, Any]
    h: BotHarness
    gateway: RecordingGateway

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = WRITER,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        hdrs = {**auth(token), **(headers or {})}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.client.request(
            method, f"/_alcove/v1{path}", data=data, headers=hdrs
        ) as resp:
            text = await resp.text()
            if resp.content_type == "application/json":
                return resp.status, json.loads(text)
            return resp.status, text

    async def audit_text(self) -> str:
        rows = await self.h.db.fetch("SELECT * FROM audit ORDER BY id")
        return json.dumps([{k: r[k] for k in r.keys()} for r in rows], default=str)


@pytest.fixture
async def stack(harnesses: Harnesses, tmp_path: Path) -> AsyncIterator[Stack]:
    config = make_config(
        tmp_path,
        api={
            "enabled": True,
            "tokens": [
                {
                    "name": "booking",
                    "token": WRITER,
                    "scopes": ["clients:write", "bookings:write", "read"],
                },
                {"name": "reports", "token": READER, "scopes": ["read"]},
            ],
            "calendars": [{"therapist": THERAPIST, "token": FEED}],
        },
    )
    gateway = RecordingGateway(bot_user_id=config.bot_user_id, existing_users={THERAPIST})
    h = await harnesses.build(config, gateway, FakeClock())
    bot = h.bot
    handlers = ApiHandlers(config, h.db, bot.conversations, bot.sessions, bot.audit, h.clock)
    # As bridge/app.py runs it: no access log (a calendar feed's URL holds its token).
    server = TestServer(Api(config, handlers).app())
    await server.start_server(access_log=None)
    async with TestClient(server) as client:
        yield Stack(client, h, gateway)


def locs(body: dict[str, Any]) -> list[list[Any]]:
    return [d["loc"] for d in body["error"]["details"]]


async def test_the_checked_in_openapi_document_is_the_generated_one(stack: Stack) -> None:
    generated = openapi_json()
    assert DOCS.read_text() == generated, (
        "docs/openapi.json is out of date: python -m bridge.api.spec > docs/openapi.json"
    )
    async with stack.client.get("/_alcove/v1/openapi.json") as resp:
        assert resp.status == 200
        assert await resp.text() == generated
    doc = json.loads(generated)
    assert doc["openapi"] == "3.1.0"
    assert "Idempotency-Key" in json.dumps(doc["paths"]["/_alcove/v1/bookings"]["post"])


async def test_tokens_and_scopes(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with stack.client.get(f"/_alcove/v1/clients?therapist={THERAPIST}") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await resp.json())["error"]["code"] == "unauthorized"
    status, body = await stack.call("GET", f"/clients?therapist={THERAPIST}", token="x" * 40)
    assert status == 401 and body["error"]["message"] == "The bearer token is not valid"
    status, body = await stack.call("GET", f"/clients?therapist={THERAPIST}", token=READER)
    assert status == 200 and body == {"clients": []}
    status, body = await stack.call(
        "POST", "/clients", {"full_name": "Jane Doe", "therapist": THERAPIST}, token=READER
    )
    assert status == 403 and "clients:write" in body["error"]["message"]
    assert await stack.h.bot.conversations.clients_of(THERAPIST) == []
    # An unknown path and a wrong method are JSON too.
    status, body = await stack.call("GET", "/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await stack.call("PUT", "/clients")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body = await stack.call("POST", "/clients", raw=b"x" * 70_000)
    assert status == 413 and body["error"]["code"] == "too_large"
    async with stack.client.get(f"/_alcove/v1/calendar/{FEED}") as resp:
        assert resp.status == 200
    # No token is ever logged, not even the calendar's (it is in its URL).
    for secret in (WRITER, READER, FEED, "x" * 40):
        assert secret not in caplog.text


async def test_bad_input_says_what_and_where_and_creates_nothing(stack: Stack) -> None:
    cases: list[tuple[Any, list[Any]]] = [
        ({"therapist": THERAPIST}, ["body", "full_name"]),
        ({"full_name": "Jane", "therapist": THERAPIST, "email": "nope"}, ["body", "email"]),
        ({"full_name": "Jane", "therapist": THERAPIST, "email": "a\x00b@x.org"}, ["body", "email"]),
        ({"full_name": "Ja\x00ne", "therapist": THERAPIST}, ["body", "full_name"]),
        ({"full_name": "Jane", "therapist": THERAPIST, "age": 3}, ["body", "age"]),
        ({"full_name": "1234", "therapist": THERAPIST}, ["body", "full_name"]),
        ({"full_name": "Jane", "therapist": 7}, ["body", "therapist"]),
        ({"full_name": "Jane", "therapist": CARE}, ["body", "therapist"]),  # not a therapist
    ]
    for body, where in cases:
        status, answer = await stack.call("POST", "/clients", body)
        assert status == 422, (body, answer)
        assert where in locs(answer), (body, answer)
        assert answer["error"]["message"]
    status, answer = await stack.call("POST", "/clients", raw=b"{not json")
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    assert locs(answer) == [["body"]]
    status, answer = await stack.call("GET", "/clients")
    assert status == 422 and locs(answer) == [["query", "therapist"]]
    # Every invalid part at once: header and body.
    status, answer = await stack.call("POST", "/bookings", {"duration_minutes": 0})
    assert status == 422
    assert {("header", "Idempotency-Key"), ("body", "therapist"), ("body", "start")} <= {
        tuple(loc) for loc in locs(answer)
    }
    assert ["body", "duration_minutes"] in locs(answer)
    status, answer = await stack.call("GET", "/bookings/abc/receipt")
    assert status == 422 and locs(answer) == [["path", "booking_id"]]
    # Nothing was created by any of them.
    assert await stack.h.bot.conversations.clients_of(THERAPIST) == []
    assert stack.gateway.registered == []
    assert await stack.h.db.fetchval("SELECT COUNT(*) FROM conv_room WHERE kind = 'dm'") == 0


async def test_clients_create_get_list_update_and_erase(stack: Stack) -> None:
    status, jane = await stack.call(
        "POST",
        "/clients",
        {"full_name": "Jane Doe", "therapist": THERAPIST, "email": "j@x.org", "external_id": "P-1"},
    )
    assert status == 201, jane
    cid = jane["client_id"]
    assert jane["initials"] == "J.D." and jane["external_id"] == "P-1"
    assert "full_name" not in jane and "Jane" not in json.dumps(jane)
    # The same service as !client add: the account, the 1:1 and its welcome.
    assert cid in stack.gateway.registered
    welcome = [s for s in await stack.h.sent_to(jane["room_id"]) if "Hello Jane" in str(s.content)]
    assert len(welcome) == 1
    # The external id is this therapist's: a second client with it is refused.
    status, dup = await stack.call(
        "POST",
        "/clients",
        {"full_name": "Jane Again", "therapist": THERAPIST, "external_id": "P-1"},
    )
    assert status == 409 and cid in dup["error"]["message"]
    assert locs(dup) == [["body", "external_id"]]

    # With an Idempotency-Key, a retried create gets the same client (none created twice).
    sam = {"full_name": "Sam Roe", "therapist": THERAPIST}
    key = {"Idempotency-Key": "add-sam"}
    status, first = await stack.call("POST", "/clients", sam, headers=key)
    assert status == 201
    status, again = await stack.call("POST", "/clients", sam, headers=key)
    assert (status, again) == (201, first)
    assert len(await stack.h.bot.conversations.clients_of(THERAPIST)) == 2

    status, got = await stack.call("GET", f"/clients/{cid}", token=READER)
    assert status == 200 and got["email"] == "j@x.org" and got["room_id"] == jane["room_id"]
    status, listed = await stack.call("GET", f"/clients?therapist={THERAPIST}", token=READER)
    assert sorted(c["client_id"] for c in listed["clients"]) == sorted([cid, first["client_id"]])
    status, patched = await stack.call("PATCH", f"/clients/{cid}", {"email": "new@x.org"})
    assert status == 200 and patched["email"] == "new@x.org"
    status, patched = await stack.call("PATCH", f"/clients/{cid}", {"email": None})
    assert status == 200 and patched["email"] is None
    status, _ = await stack.call("GET", f"/clients/@c-nobody:{DOMAIN}")
    assert status == 404

    # Erasure waits for a booked session, then removes the client everywhere.
    start = (stack.h.clock.now() + timedelta(days=1)).isoformat()
    status, booking = await stack.call(
        "POST",
        "/bookings",
        {"therapist": THERAPIST, "client_id": cid, "start": start, "duration_minutes": 30},
        headers={"Idempotency-Key": "b-1"},
    )
    assert status == 201, booking
    status, refused = await stack.call("DELETE", f"/clients/{cid}")
    assert status == 409 and str(booking["booking_id"]) in refused["error"]["message"]
    status, cancelled = await stack.call("DELETE", f"/bookings/{booking['booking_id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    status, erased = await stack.call("DELETE", f"/clients/{cid}")
    assert status == 200 and erased == {"client_id": cid, "erased": True, "rooms_left": 1}
    assert stack.gateway.deactivated == [(cid, True)]
    assert (jane["room_id"], cid) in stack.gateway.kicked
    name = stack.gateway.state[(jane["room_id"], "m.room.name", "")]
    assert name == {"name": ERASED_ROOM_NAME}
    status, _ = await stack.call("GET", f"/clients/{cid}")
    assert status == 404
    db = stack.h.db
    for table, column in (("client", "user_id"), ("conv_room", "client_id")):
        assert await db.fetchval(f"SELECT COUNT(*) FROM {table} WHERE {column} = $1", cid) == 0
    assert (
        await db.fetchval("SELECT COUNT(*) FROM api_request WHERE response LIKE $1", f"%{cid}%")
        == 0
    )
    audit = await stack.audit_text()
    assert "client.erased" in audit and cid in audit
    assert "Jane" not in audit and "j@x.org" not in audit


async def test_a_booking_for_a_new_client_is_idempotent(stack: Stack) -> None:
    start = stack.h.clock.now() + timedelta(days=2)
    body = {
        "therapist": THERAPIST,
        "new_client": {"full_name": "Sam Roe", "external_id": "P-2"},
        "start": start.isoformat(),
        "duration_minutes": 45,
    }
    status, missing = await stack.call("POST", "/bookings", body)
    assert status == 422 and locs(missing) == [["header", "Idempotency-Key"]]
    key = {"Idempotency-Key": "booking-42"}
    status, first = await stack.call("POST", "/bookings", body, headers=key)
    assert status == 201, first
    status, again = await stack.call("POST", "/bookings", body, headers=key)
    assert (status, again) == (201, first)
    status, other = await stack.call(
        "POST", "/bookings", {**body, "duration_minutes": 50}, headers=key
    )
    assert status == 422 and other["error"]["code"] == "idempotency_key_reused"
    assert locs(other) == [["header", "Idempotency-Key"]]
    clients = await stack.h.bot.conversations.clients_of(THERAPIST)
    assert [c.external_id for c in clients] == ["P-2"]
    assert await stack.h.db.fetchval("SELECT COUNT(*) FROM text_session") == 1
    assert first["clients"] == [clients[0].user_id]
    assert datetime.fromisoformat(first["start"]) == start
    assert datetime.fromisoformat(first["end"]) == start + timedelta(minutes=45)
    # The new client got their 1:1, its welcome and the booking notice, once each.
    dm = await stack.h.bot.conversations.dm_of(THERAPIST, clients[0].user_id)
    assert dm is not None
    bodies = [str(s.content.get("body")) for s in await stack.h.sent_to(dm.room_id)]
    assert sum("Hello Sam" in b for b in bodies) == 1
    assert sum("is booked for" in b for b in bodies) == 1

    # A booking in the past, a wrong pair, and a rejected body create nothing.
    for bad, where in (
        ({**body, "start": (start - timedelta(days=5)).isoformat()}, ["body", "start"]),
        ({**body, "start": "2026-12-01T10:00:00"}, ["body", "start"]),  # no offset
        ({**body, "duration_minutes": 0}, ["body", "duration_minutes"]),
        ({**body, "client_id": clients[0].user_id}, ["body"]),  # both given
        ({k: v for k, v in body.items() if k != "new_client"}, ["body"]),  # neither
    ):
        status, answer = await stack.call(
            "POST", "/bookings", bad, headers={"Idempotency-Key": "x"}
        )
        assert status == 422 and where in locs(answer), (bad, answer)
    assert await stack.h.db.fetchval("SELECT COUNT(*) FROM text_session") == 1
    assert len(await stack.h.bot.conversations.clients_of(THERAPIST)) == 1
    # The refused key is free again.
    assert await stack.h.db.fetchval("SELECT COUNT(*) FROM api_request WHERE key = 'x'") == 0

    status, listed = await stack.call("GET", f"/bookings?therapist={THERAPIST}", token=READER)
    assert [b["booking_id"] for b in listed["bookings"]] == [first["booking_id"]]

    # The calendar feed: initials only, at the secret URL.
    async with stack.client.get(f"/_alcove/v1/calendar/{FEED}") as resp:
        assert resp.status == 200 and resp.content_type == "text/calendar"
        feed = await resp.text()
    assert "Sam" not in feed and "Roe" not in feed
    events = Calendar.from_ical(feed).walk("VEVENT")
    assert len(events) == 1
    assert "S.R." in str(events[0]["SUMMARY"])
    assert events[0].decoded("DTSTART") == start.astimezone(UTC)
    async with stack.client.get(f"/_alcove/v1/calendar/{'g' * 40}") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_the_receipt_of_an_ended_session(stack: Stack) -> None:
    status, jane = await stack.call(
        "POST", "/clients", {"full_name": "Jane Doe", "therapist": THERAPIST}
    )
    start = stack.h.clock.now() + timedelta(hours=1)
    status, booking = await stack.call(
        "POST",
        "/bookings",
        {
            "therapist": THERAPIST,
            "client_id": jane["client_id"],
            "start": start.isoformat(),
            "duration_minutes": 30,
        },
        headers={"Idempotency-Key": "r-1"},
    )
    assert status == 201
    bid = booking["booking_id"]
    status, early = await stack.call("GET", f"/bookings/{bid}/receipt", token=READER)
    assert status == 409 and "no deletion receipt" in early["error"]["message"]
    sessions = stack.h.bot.sessions
    await sessions.open(bid)
    status, started = await stack.call("DELETE", f"/bookings/{bid}")
    assert status == 409 and "has started" in started["error"]["message"]
    await sessions.end(bid, "ended by the therapist")
    status, receipt = await stack.call("GET", f"/bookings/{bid}/receipt", token=READER)
    assert status == 200, receipt
    assert receipt["booking_id"] == bid and receipt["status"] == "complete"
    assert receipt["reason"] == "ended by the therapist"
    assert datetime.fromisoformat(receipt["start"]) == start
    assert set(receipt) >= {"messages_purged", "files_purged", "purge_id", "room_id", "ended_at"}
    status, _ = await stack.call("GET", "/bookings/999999/receipt", token=READER)
    assert status == 404
