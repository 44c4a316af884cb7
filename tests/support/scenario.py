"""Steps a therapist takes in Element, as reusable test helpers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from mautrix.util.async_db import Database

from bridge.devstack import DevStack

from .matrix_client import Event, MatrixUser, wait_joined

BOT = "@alcove:localhost"
THERAPIST = "@therapist:localhost"


@dataclass
class Added:
    user_id: str
    password: str
    room_id: str
    initials: str


def from_bot(room: str, contains: str) -> Any:
    def match(e: Event) -> bool:
        return (
            e.get("room_id") == room
            and e.get("sender") == BOT
            and contains in e.get("content", {}).get("body", "")
        )

    return match


async def management_room(staff: MatrixUser, timeout: float = 15.0) -> str:
    """The management room Alcove created for this staff member at start-up: the newest room
    with the bot in their ``m.direct`` (Alcove marks it there, as them, and joins them)."""
    deadline = time.monotonic() + timeout
    while True:
        status, direct = await staff.raw(
            "GET", f"/_matrix/client/v3/user/{quote(staff.user_id)}/account_data/m.direct"
        )
        rooms = direct.get(BOT, []) if status == 200 else []
        if rooms and rooms[-1] in await staff.joined_rooms():
            return str(rooms[-1])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no management room for {staff.user_id}: {status} {direct}")
        await asyncio.sleep(0.1)


async def open_dm_with_bot(staff: MatrixUser) -> str:
    """A DM the staff member opens with the bot themselves (not their management room)."""
    room = await staff.create_dm(BOT)
    await wait_joined(staff, room, BOT)
    return room


def parse_added(body: str) -> Added:
    user_id = re.search(r"as (@c-[a-z0-9]+:localhost)", body)
    password = re.search(r"Initial password: (\S+)", body)
    room = re.search(r"matrix\.to/#/(!\S+)", body)
    initials = re.search(r"shown to other clients as (\S+)\)", body)
    assert user_id and password and room and initials, body
    return Added(user_id[1], password[1], room[1], initials[1])


async def add_client(therapist: MatrixUser, mgmt: str, name: str) -> Added:
    await therapist.send_text(mgmt, f"!client add {name}")
    reply = await therapist.wait_for(from_bot(mgmt, f"Added {name}"), timeout=30)
    return parse_added(reply["content"]["body"])


async def add_many(therapist: MatrixUser, mgmt: str, names: list[str]) -> list[Added]:
    """Send every !client add at once, then collect the replies (faster for many clients)."""
    for name in names:
        await therapist.send_text(mgmt, f"!client add {name}")
    added: list[Added] = []
    for name in names:
        reply = await therapist.wait_for(from_bot(mgmt, f"Added {name} as"), timeout=120)
        added.append(parse_added(reply["content"]["body"]))
    return added


async def login(http: aiohttp.ClientSession, synapse: DevStack, added: Added) -> MatrixUser:
    return await MatrixUser(http, synapse.homeserver_url, added.user_id).login(added.password)


def bodies(events: list[Event]) -> list[str]:
    return [str(e.get("content", {}).get("body", "")) for e in events]


async def assert_no_full_names(
    viewer: MatrixUser, room_id: str, full_names: list[str], *, except_self_renames: bool = False
) -> None:
    """Read the room through the API as ``viewer`` (history and current state) and check that
    no event holds any of ``full_names``. ``except_self_renames`` skips a client's own per-room
    rename (a membership event they sent themselves: issue 10 item 2, handled separately)."""
    base = f"/_matrix/client/v3/rooms/{quote(room_id)}"
    status, history = await viewer.raw("GET", f"{base}/messages?dir=b&limit=1000")
    assert status == 200, history
    # /state answers a JSON list (MatrixUser.raw keeps only objects).
    events = [*history.get("chunk", []), *await _state_list(viewer, base)]
    assert events
    for event in events:
        if except_self_renames and event.get("type") == "m.room.member":
            if event.get("sender") == event.get("state_key"):
                continue
        text = json.dumps(event).lower()
        for name in full_names:
            assert name.lower() not in text, (viewer.user_id, name, event)


async def _state_list(viewer: MatrixUser, base: str) -> list[Event]:
    url = f"{str(viewer.api.api.base_url).rstrip('/')}{base}/state"
    headers = {"Authorization": f"Bearer {viewer.api.api.token}"}
    async with viewer.api.api.session.get(url, headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    return [e for e in body if isinstance(e, dict)]


async def handled(db: Database, *event_ids: str, timeout: float = 30.0) -> None:
    """Wait until Alcove's inbox has handled each event (its row is ``done``): a condition
    instead of a fixed sleep for "Alcove has seen it". ``db`` is the running Alcove's database
    (the ``alcove_db`` fixture)."""
    deadline = time.monotonic() + timeout
    for event_id in event_ids:
        while True:
            status = await db.fetchval(
                "SELECT status FROM inbox_event WHERE event_id = $1", event_id
            )
            if status == "done":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Alcove did not handle {event_id} (status: {status})")
            await asyncio.sleep(0.05)
