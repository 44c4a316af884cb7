"""The HTTP API (issue 13) against a real Alcove on a real Synapse, both databases: a booking
for a new client (the client, their 1:1, the welcome and the booking notice, as the client
reads them), its Idempotency-Key, the calendar feed, the email update, a deletion receipt, and
erasure — through the API and through `!client erase` + `!yes` — seen from the homeserver
(login refused, rooms left, the 1:1 renamed), Alcove's database (rows gone) and the audit log
(IDs only); the webhooks those events sent; no token in Alcove's log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from icalendar import Calendar
from mautrix.errors import MatrixRequestError
from mautrix.util.async_db import Database
from ruamel.yaml import YAML

from bots.features.conversations.service import ERASED_ROOM_NAME
from bridge.devstack import DevStack
from bridge.registration import dump_yaml
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.proxy import FaultProxy
from tests.support.scenario import (
    THERAPIST,
    Added,
    add_client,
    from_bot,
    login,
    management_room,
    parse_added,
)

WEBHOOK_SECRET = "w" * 40


class Receiver:
    """A practice's webhook endpoint: records every POST."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for headers, body in self.received:
            t, v1 = (p.split("=", 1)[1] for p in headers["Alcove-Signature"].split(","))
            mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256)
            assert hmac.compare_digest(mac.hexdigest(), v1), headers
            out.append(json.loads(body))
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    async with TestServer(app) as server:
        yield found, str(server.make_url("/hook"))


@pytest.fixture
async def alcove_hooked(
    synapse: DevStack,
    proxy: FaultProxy,
    db_url: str,
    tmp_path: Path,
    receiver: tuple[Receiver, str],
) -> AsyncIterator[AlcoveProcess]:
    """Alcove as the `alcove` fixture runs it, with a webhook to ``receiver`` in its config (a
    copy of the dev stack's, beside it so that its relative paths still resolve)."""
    data = YAML(typ="safe").load(synapse.config_path.read_text())
    data["api"]["webhooks"] = [
        {"name": "crm", "url": receiver[1], "secret": WEBHOOK_SECRET},
    ]
    data["api"]["webhook_retry_seconds"] = 0.2
    path = synapse.state_dir / "config-webhooks.yaml"
    path.write_text(dump_yaml(data))
    process = AlcoveProcess(
        path,
        proxy.url,
        db_url,
        synapse.dev_secrets["as_port"],
        tmp_path / "alcove.log",
    )
    await process.start()
    yield process
    await process.stop()


class Api:
    def __init__(self, http: aiohttp.ClientSession, synapse: DevStack) -> None:
        dev = synapse.dev_secrets
        self.http = http
        self.base = f"http://127.0.0.1:{dev['api_port']}/_alcove/v1"
        self.auth = {"Authorization": f"Bearer {dev['api_token']}"}
        self.calendar = f"{self.base}/calendar/{dev['calendar_token']}"

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        async with self.http.request(
            method, self.base + path, json=body, headers={**self.auth, **(headers or {})}
        ) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


async def assert_erased(
    http: aiohttp.ClientSession,
    synapse: DevStack,
    therapist: MatrixUser,
    alcove_db: Database,
    added: Added,
    full_name: str,
) -> None:
    """Homeserver: the account is deactivated (login refused), it left its 1:1, whose name is no
    longer the client's. Alcove: no row names it; the audit log has the erasure by ID only."""
    try:
        await login(http, synapse, added)
        raise AssertionError("an erased client could still log in")
    except MatrixRequestError as e:
        assert e.http_status in (401, 403), e
    member = await therapist.state(added.room_id, "m.room.member", added.user_id)
    assert member["membership"] == "leave"
    assert (await therapist.state(added.room_id, "m.room.name"))["name"] == ERASED_ROOM_NAME
    for table, column in (("client", "user_id"), ("conv_room", "client_id")):
        count = await alcove_db.fetchval(
            f"SELECT COUNT(*) FROM {table} WHERE {column} = $1",
            added.user_id,
        )
        assert count == 0, table
    rows = await alcove_db.fetch("SELECT * FROM audit ORDER BY id")
    audit = json.dumps([{k: r[k] for k in r.keys()} for r in rows], default=str)
    assert full_name not in audit and full_name.split()[0] not in audit
    erased = [r for r in rows if r["action"] == "client.erased" and r["target"] == added.user_id]
    assert len(erased) == 1


async def receipt_of_an_ended_session(
    api: Api, therapist: MatrixUser, mgmt: str, omar_client: MatrixUser, alcove_db: Database
) -> None:
    """A session with the client, ended with !end: its deletion receipt as JSON."""
    await therapist.send_text(mgmt, "!session Omar now for 30m")
    opened = await therapist.wait_for(from_bot(mgmt, "is open until"), timeout=30, fresh=True)
    room = opened["content"]["body"].rsplit("matrix.to/#/", 1)[1].strip()
    session_id = await alcove_db.fetchval("SELECT id FROM text_session WHERE room_id = $1", room)
    status, early, _ = await api.call("GET", f"/bookings/{session_id}/receipt")
    assert status == 409, early
    await omar_client.send_text(room, "something private")
    await therapist.wait_for(lambda e: e.get("room_id") == room and "private" in str(e["content"]))
    await therapist.send_text(room, "!end")
    status, receipt = 0, cast(Any, {})
    deadline = asyncio.get_running_loop().time() + 60
    while status != 200 and asyncio.get_running_loop().time() < deadline:
        status, receipt, _ = await api.call("GET", f"/bookings/{session_id}/receipt")
        await asyncio.sleep(0.3)
    assert status == 200, receipt
    assert receipt["status"] == "complete" and receipt["room_id"] == room
    assert receipt["messages_purged"] >= 1 and receipt["reason"] == "ended by the therapist"
    assert "private" not in json.dumps(receipt)


async def test_api_bookings_feed_and_erasure(
    alcove_hooked: AlcoveProcess,
    receiver: tuple[Receiver, str],
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
    db_url: str,
) -> None:
    api = Api(http, synapse)
    mgmt = await management_room(therapist)

    # A booking for a new client, with an Idempotency-Key.
    start = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    booking = {
        "therapist": THERAPIST,
        "new_client": {"full_name": "Nora Api", "external_id": "EXT-1"},
        "start": start.isoformat(),
        "duration_minutes": 30,
    }
    key = {"Idempotency-Key": "booking-1"}
    status, first, _ = await api.call("POST", "/bookings", booking, key)
    assert status == 201, first
    status, again, headers = await api.call("POST", "/bookings", booking, key)
    assert (status, again, headers.get("Idempotent-Replayed")) == (201, first, "true")
    status, reused, _ = await api.call(
        "POST", "/bookings", {**booking, "duration_minutes": 40}, key
    )
    assert status == 422 and reused["error"]["details"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await alcove_db.fetchval("SELECT COUNT(*) FROM text_session") == 1
    assert await alcove_db.fetchval("SELECT COUNT(*) FROM client") == 1

    # The full name and password went to the management room only; the client reads the
    # welcome and the booking notice in their 1:1.
    reply = await therapist.wait_for(from_bot(mgmt, "Added Nora Api as"), timeout=30)
    nora = parse_added(reply["content"]["body"])
    assert first["clients"] == [nora.user_id]
    client = await login(http, synapse, nora)
    assert nora.room_id in await client.joined_rooms()
    welcome = await client.wait_for(
        lambda e: e.get("room_id") == nora.room_id and "Hello Nora" in e["content"].get("body", "")
    )
    assert welcome["sender"] == THERAPIST
    await client.wait_for(
        lambda e: (
            e.get("room_id") == nora.room_id and "is booked for" in e["content"].get("body", "")
        )
    )

    status, listed, _ = await api.call("GET", f"/bookings?therapist={quote(THERAPIST)}")
    assert status == 200 and [b["booking_id"] for b in listed["bookings"]] == [first["booking_id"]]
    async with http.get(api.calendar) as resp:
        assert resp.status == 200
        feed = await resp.text()
    assert "Nora" not in feed
    [event] = Calendar.from_ical(feed).walk("VEVENT")
    assert "N.A." in str(event["SUMMARY"]) and event.decoded("DTSTART") == start

    status, patched, _ = await api.call(
        "PATCH", f"/clients/{quote(nora.user_id)}", {"email": "nora@example.net"}
    )
    assert status == 200 and patched["email"] == "nora@example.net"

    # Erasure through the API: refused while a session is booked, done after its cancellation.
    status, refused, _ = await api.call("DELETE", f"/clients/{quote(nora.user_id)}")
    assert status == 409, refused
    status, cancelled, _ = await api.call("DELETE", f"/bookings/{first['booking_id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    status, erased, _ = await api.call("DELETE", f"/clients/{quote(nora.user_id)}")
    assert (status, erased) == (200, {"client_id": nora.user_id, "erased": True, "rooms_left": 1})
    await assert_erased(http, synapse, therapist, alcove_db, nora, "Nora Api")
    # The message with her name and password is redacted (it was still there).
    await therapist.wait_for(from_bot(mgmt, "the client was erased"), timeout=30)
    status, redacted = await therapist.raw(
        "GET", f"/_matrix/client/v3/rooms/{quote(mgmt)}/event/{quote(reply['event_id'])}"
    )
    assert status == 200 and redacted["content"] == {}, redacted
    status, _, _ = await api.call("GET", f"/clients/{quote(nora.user_id)}")
    assert status == 404

    omar = await add_client(therapist, mgmt, "Omar Command")
    omar_client = await login(http, synapse, omar)
    # A real session's end takes ~20 s: on SQLite only (the receipt's query is checked on both
    # databases by the component tests, tests/component/test_api.py).
    if db_url.startswith("sqlite"):
        await receipt_of_an_ended_session(api, therapist, mgmt, omar_client, alcove_db)

    # Erasure as a bot command: the question (with the name) in the management room; !yes.
    await therapist.send_text(omar.room_id, f"!client erase {omar.user_id}")
    await therapist.wait_for(from_bot(omar.room_id, "in your management room"))
    await therapist.send_text(mgmt, f"!client erase {omar.user_id}")
    await therapist.wait_for(from_bot(mgmt, "Erase Omar Command"))
    await therapist.send_text(mgmt, "!yes")
    done = await therapist.wait_for(from_bot(mgmt, f"Erased {omar.user_id}"), timeout=30)
    assert "Omar" not in done["content"]["body"]
    await assert_erased(http, synapse, therapist, alcove_db, omar, "Omar Command")

    # No token in Alcove's log (at DEBUG), not even the calendar's, which is in its URL.
    logged = alcove_hooked.log_path.read_text() + alcove_hooked.output()
    dev = synapse.dev_secrets
    assert "API listening on" in logged
    assert dev["api_token"] not in logged and dev["calendar_token"] not in logged
    assert WEBHOOK_SECRET not in logged

    # The webhooks: each client created (by the API and by the command), and the ended session
    # (on SQLite), signed, IDs only, in order.
    hooks, expected = receiver[0], [nora.user_id, omar.user_id]
    sessions_ended = 1 if db_url.startswith("sqlite") else 0
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        created = [e["client_id"] for e in hooks.events() if e["event"] == "client.created"]
        ended = [e for e in hooks.events() if e["event"] == "session.ended"]
        if created == expected and len(ended) == sessions_ended:
            break
        await asyncio.sleep(0.2)
    assert created == expected, hooks.events()
    assert len(ended) == sessions_ended, hooks.events()
    sent = json.dumps(hooks.events())
    for name in ("Nora", "Omar", "private"):
        assert name not in sent
