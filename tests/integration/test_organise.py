"""Issue 12 (organise) on a real Synapse, from the therapist's and a real client's view: the
spaces, !archive, !find, !mute (a timed mute ending across a restart) and !video."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import aiohttp
from mautrix.util.async_db import Database

from bridge.devstack import DevStack
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser, body_is
from tests.support.scenario import THERAPIST, add_client, from_bot, login, management_room


async def wait_until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout} s")
        await asyncio.sleep(0.2)


async def children(user: MatrixUser, space: str) -> tuple[int, set[str]]:
    """What the space's hierarchy shows ``user``: (HTTP status, the rooms below the space)."""
    status, body = await user.raw("GET", f"/_matrix/client/v1/rooms/{quote(space)}/hierarchy")
    rooms = {str(r["room_id"]) for r in body.get("rooms", []) if r.get("room_id") != space}
    return status, rooms


async def test_spaces_archive_find_mute_and_video_from_a_therapist_and_a_client(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
) -> None:
    mgmt = await management_room(therapist)
    jane = await add_client(therapist, mgmt, "Jane Quill")
    sam = await add_client(therapist, mgmt, "Sam Rowan")
    client = await login(http, synapse, jane)

    async def spaces() -> dict[str, str]:
        rows = await alcove_db.fetch("SELECT kind, room_id FROM space WHERE owner = $1", THERAPIST)
        return {str(r["kind"]): str(r["room_id"]) for r in rows}

    space = await wait_until(lambda: _has(spaces, "clients"))

    async def filed() -> bool:
        return (await children(therapist, space["clients"]))[1] == {jane.room_id, sam.room_id}

    # The therapist sees their "Clients" space with both 1:1s in it (and is in every space).
    await wait_until(filed)
    joined = set(await therapist.joined_rooms())
    assert set(space.values()) <= joined
    create = await therapist.state(space["clients"], "m.room.create")
    assert create["type"] == "m.space"
    assert (await therapist.state(space["clients"], "m.room.name"))["name"] == "Clients"

    # The client: in no space, cannot read one, and their 1:1 names none.
    assert not set(space.values()) & set(await client.joined_rooms())
    for space_id in space.values():
        assert (await children(client, space_id))[0] == 403
        status, _ = await client.raw(
            "GET", f"/_matrix/client/v3/rooms/{quote(space_id)}/state/m.room.name/"
        )
        assert status == 403
    assert not await _state_types(client, jane.room_id, "m.space.parent")

    # !archive in the conversation: the 1:1 moves to "Archive", low priority for the therapist.
    await therapist.send_text(jane.room_id, "!archive")
    await therapist.wait_for(from_bot(mgmt, "Archived 'Jane Quill'"), timeout=30)
    space = await spaces()  # the "Archive" space came with its first room
    assert space["archive"] in await therapist.joined_rooms()
    assert space["archive"] not in await client.joined_rooms()
    assert (await children(client, space["archive"]))[0] == 403
    assert (await children(therapist, space["archive"]))[1] == {jane.room_id}
    assert (await children(therapist, space["clients"]))[1] == {sam.room_id}
    status, tags = await therapist.raw(
        "GET",
        f"/_matrix/client/v3/user/{quote(THERAPIST)}/rooms/{quote(jane.room_id)}/tags",
    )
    assert status == 200 and "m.lowpriority" in tags["tags"]
    # The client: the command is removed, nothing from Alcove; the conversation goes on.
    await therapist.send_text(jane.room_id, "Still here for you")
    await client.wait_for(body_is(jane.room_id, THERAPIST, "Still here for you"), timeout=20)
    seen = [str(e["content"].get("body", "")) for e in await client.room_messages(jane.room_id)]
    assert "!archive" not in seen
    assert not any("rchive" in b for b in seen)

    # !find in the management room: full names, archived marked, with links.
    await therapist.send_text(mgmt, "!find quill")
    found = await therapist.wait_for(from_bot(mgmt, "Conversations matching 'quill'"))
    text = found["content"]["body"]
    assert "Jane Quill (J.Q.)" in text and "(archived)" in text and "Sam" not in text
    assert f"https://matrix.to/#/{jane.room_id}" in text

    # !mute for 2h in Sam's 1:1: the therapist's own "Mute" push rule.
    await therapist.send_text(sam.room_id, "!mute for 2h")
    await therapist.wait_for(from_bot(mgmt, "Muted 'Sam Rowan'"), timeout=30)
    rule_path = f"/_matrix/client/v3/pushrules/global/override/{quote(sam.room_id, safe='')}"
    status, rule = await therapist.raw("GET", rule_path)
    assert status == 200 and rule["actions"] == [] and rule["enabled"] is True
    assert rule["conditions"] == [{"kind": "event_match", "key": "room_id", "pattern": sam.room_id}]
    # Alcove is down when the mute ends: it ends at the next start (the row re-arms it).
    alcove.kill9()
    await alcove_db.execute(
        "UPDATE room_mute SET until_at = $1 WHERE room_id = $2",
        int(time.time() * 1000) - 1000,
        sam.room_id,
    )
    await alcove.start()
    await therapist.wait_for(from_bot(mgmt, "Notifications are on again for Sam Rowan"), 30)
    assert (await therapist.raw("GET", rule_path))[0] == 404

    # !video: a client can neither put the widget state (power levels) nor ask the bot.
    widget = {"type": "jitsi", "url": "https://meet.jit.si/x", "name": "x", "data": {}}
    assert await client.put_state(jane.room_id, "im.vector.modular.widgets", "w1", widget) == 403
    await client.send_text(jane.room_id, "!video")
    await client.wait_for(from_bot(jane.room_id, "Only therapists can use !video"), 20)
    await therapist.send_text(jane.room_id, "!video")
    started = await client.wait_for(from_bot(jane.room_id, "started a video meeting"), 20)
    widgets = await _state_types(client, jane.room_id, "im.vector.modular.widgets")
    assert len(widgets) == 1
    content = widgets[0]["content"]
    assert widgets[0]["sender"] == THERAPIST and content["type"] == "jitsi"
    assert content["url"] in started["content"]["body"]


async def _has(spaces: Any, kind: str) -> dict[str, str] | None:
    found: dict[str, str] = await spaces()
    return found if kind in found else None


async def _state_types(user: MatrixUser, room_id: str, etype: str) -> list[dict[str, Any]]:
    url = f"{str(user.api.api.base_url).rstrip('/')}/_matrix/client/v3/rooms/{quote(room_id)}/state"
    headers = {"Authorization": f"Bearer {user.api.api.token}"}
    async with user.api.api.session.get(url, headers=headers) as resp:
        assert resp.status == 200
        events = await resp.json()
    return [e for e in events if e.get("type") == etype and e.get("content")]
