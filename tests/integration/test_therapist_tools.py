"""Issue 4 end to end on a real Synapse: blasts, scheduled messages, smart phrases and the
auto-responder, all appearing from the therapist; and exactly-once delivery across kill -9."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import quote

import aiohttp
from mautrix.util.async_db import Database

from bridge.devstack import DevStack
from bridge.matrix.outbox import DEVICE_ID
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import Event, MatrixUser
from tests.support.scenario import (
    BOT,
    THERAPIST,
    add_client,
    add_many,
    bodies,
    from_bot,
    handled,
    login,
    management_room,
)


def text_from(room: str, sender: str, body: str) -> Callable[[Event], bool]:
    def match(e: Event) -> bool:
        content = e.get("content")
        return (
            e.get("room_id") == room
            and e.get("sender") == sender
            and isinstance(content, dict)
            and content.get("body") == body
        )

    return match


async def count_in(user: MatrixUser, room: str, body: str) -> int:
    return bodies(await user.room_messages(room)).count(body)


async def test_blast_reaches_each_client_in_their_own_room(
    alcove: AlcoveProcess, therapist: MatrixUser, synapse: DevStack, http: aiohttp.ClientSession
) -> None:
    mgmt = await management_room(therapist)
    people = [await add_client(therapist, mgmt, n) for n in ("Anna Ash", "Ben Birch", "Cy Cedar")]
    clients = [await login(http, synapse, p) for p in people]

    await therapist.send_text(mgmt, "!blast all Group is cancelled this week")
    report = await therapist.wait_for(from_bot(mgmt, "Delivered to"), timeout=60)
    assert "Delivered to 3 of 3 clients; failed: 0." in report["content"]["body"]
    for person, client in zip(people, clients, strict=True):
        got = await client.wait_for(
            text_from(person.room_id, THERAPIST, "Group is cancelled this week")
        )
        # Only the therapist, the client and the bot are in the room: nobody sees the others.
        status, members = await client.raw(
            "GET", f"/_matrix/client/v3/rooms/{quote(person.room_id)}/joined_members"
        )
        assert status == 200 and set(members["joined"]) == {THERAPIST, person.user_id, BOT}
        assert got["sender"] == THERAPIST

    # A named audience gets it; the others do not.
    await therapist.send_text(mgmt, "!blast Anna,Cy Reminder: forms due Friday")
    await therapist.wait_for(from_bot(mgmt, "Delivered to 2 of 2"), timeout=60)
    assert await count_in(therapist, people[0].room_id, "Reminder: forms due Friday") == 1
    assert await count_in(therapist, people[1].room_id, "Reminder: forms due Friday") == 0
    assert await count_in(therapist, people[2].room_id, "Reminder: forms due Friday") == 1

    # An image: "!blast all", then the image, then !yes.
    image = {"msgtype": "m.image", "body": "flyer.png", "url": "mxc://localhost/flyer"}
    await therapist.send_text(mgmt, "!blast all")
    await therapist.wait_for(from_bot(mgmt, "Send the message for 3 clients"))
    status, _ = await therapist.raw(
        "PUT", f"/_matrix/client/v3/rooms/{quote(mgmt)}/send/m.room.message/img1", image
    )
    assert status == 200
    await therapist.wait_for(from_bot(mgmt, "Send this image to 3 clients"))
    await therapist.send_text(mgmt, "!yes")
    await therapist.wait_for(from_bot(mgmt, "Delivered to 3 of 3"), timeout=60, fresh=True)
    for person in people:
        msgs = [
            e
            for e in await therapist.room_messages(person.room_id)
            if e["content"].get("msgtype") == "m.image"
        ]
        assert [m["content"]["url"] for m in msgs] == ["mxc://localhost/flyer"]

    # Clients cannot blast.
    await clients[0].send_text(people[0].room_id, "!blast all hi")
    await clients[0].wait_for(from_bot(people[0].room_id, "Only therapists can use !blast"))


async def test_sends_as_therapist_survive_signing_out_of_all_other_sessions(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    passwords: dict[str, str],
) -> None:
    """The therapist signs out of every other session in Element, which deletes the device
    Alcove acts through; the next blast still arrives (Alcove recreates the device)."""
    mgmt = await management_room(therapist)
    person = await add_client(therapist, mgmt, "Dora Dogwood")
    await therapist.send_text(mgmt, "!blast Dora Before signing out")
    await therapist.wait_for(from_bot(mgmt, "Delivered to 1 of 1"), timeout=60)

    status, devices = await therapist.raw("GET", "/_matrix/client/v3/devices")
    assert status == 200
    others = [
        d["device_id"] for d in devices["devices"] if d["device_id"] != therapist.api.device_id
    ]
    assert DEVICE_ID in others
    body: dict[str, object] = {"devices": others}
    status, challenge = await therapist.raw("POST", "/_matrix/client/v3/delete_devices", body)
    assert status == 401, challenge
    body["auth"] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": THERAPIST},
        "password": passwords[THERAPIST],
        "session": challenge["session"],
    }
    status, _ = await therapist.raw("POST", "/_matrix/client/v3/delete_devices", body)
    assert status == 200
    _, devices = await therapist.raw("GET", "/_matrix/client/v3/devices")
    assert DEVICE_ID not in [d["device_id"] for d in devices["devices"]]

    await therapist.send_text(mgmt, "!blast Dora After signing out")
    report = await therapist.wait_for(from_bot(mgmt, "Delivered to"), timeout=60, fresh=True)
    assert report["content"]["body"].startswith("Delivered to 1 of 1 clients; failed: 0.")
    assert await count_in(therapist, person.room_id, "After signing out") == 1
    _, devices = await therapist.raw("GET", "/_matrix/client/v3/devices")
    assert DEVICE_ID in [d["device_id"] for d in devices["devices"]]


async def test_scheduled_messages(
    alcove: AlcoveProcess, therapist: MatrixUser, synapse: DevStack, http: aiohttp.ClientSession
) -> None:
    mgmt = await management_room(therapist)
    dee = await add_client(therapist, mgmt, "Dee Dale")
    client = await login(http, synapse, dee)
    room = dee.room_id

    await therapist.send_text(room, "!schedule in 2s See you tomorrow at 10")
    confirm = await therapist.wait_for(from_bot(room, "Scheduled #"))
    assert "Europe/London" in confirm["content"]["body"] or "GMT" in confirm["content"]["body"]
    await therapist.send_text(room, "!schedule at 2099-06-01 09:00 Far future note")
    far = await therapist.wait_for(from_bot(room, "Scheduled #"), timeout=10, fresh=True)
    await therapist.send_text(room, "!schedule every monday 09:00 Weekly check-in")
    weekly = await therapist.wait_for(from_bot(room, "then every monday at 09:00"))
    assert "Mon " in weekly["content"]["body"]

    got = await client.wait_for(text_from(room, THERAPIST, "See you tomorrow at 10"), timeout=20)
    assert got["sender"] == THERAPIST

    await therapist.send_text(mgmt, "!schedule list")
    listing = await therapist.wait_for(from_bot(mgmt, "Your scheduled messages"))
    body = listing["content"]["body"]
    assert "Far future note" in body and "(every monday 09:00)" in body
    assert "See you tomorrow" not in body  # already sent
    far_id = far["content"]["body"].split("#", 1)[1].split()[0]
    await therapist.send_text(mgmt, f"!schedule cancel {far_id}")
    await therapist.wait_for(from_bot(mgmt, f"Cancelled #{far_id}"))
    await therapist.send_text(room, "!schedule at 2020-01-01 09:00 past")
    await therapist.wait_for(from_bot(room, "is in the past"))
    await therapist.send_text(room, "!schedule in soon hello")
    await therapist.wait_for(from_bot(room, "is not a delay"))
    assert await count_in(client, room, "See you tomorrow at 10") == 1


async def test_a_scheduled_bang_message_is_not_run_as_a_command(
    alcove: AlcoveProcess, therapist: MatrixUser
) -> None:
    """The scheduled text "!ping" goes out as the therapist and comes back as theirs: it is
    marked automated and Alcove does not answer it. A room's events are handled, and its
    replies sent, in order: once the answer to a later `!help` is there, a pong would be too."""
    mgmt = await management_room(therapist)
    fay = await add_client(therapist, mgmt, "Fay Fern")
    room = fay.room_id
    await therapist.send_text(room, "!schedule in 1s !ping")
    await therapist.wait_for(from_bot(room, "Scheduled #"))
    scheduled = await therapist.wait_for(text_from(room, THERAPIST, "!ping"), timeout=20)
    assert scheduled["content"]["org.alcove.automated"] is True
    await therapist.send_text(room, "!help")
    await therapist.wait_for(from_bot(room, "!ping"), timeout=20)
    assert await count_in(therapist, room, "pong") == 0


async def test_message_due_while_alcove_was_down_is_sent_once_marked_late(
    alcove: AlcoveProcess, therapist: MatrixUser, synapse: DevStack, http: aiohttp.ClientSession
) -> None:
    mgmt = await management_room(therapist)
    eli = await add_client(therapist, mgmt, "Eli Elm")
    await therapist.send_text(eli.room_id, "!schedule in 2s While you were away")
    await therapist.wait_for(from_bot(eli.room_id, "Scheduled #"))
    alcove.kill9()
    await asyncio.sleep(6)  # due at +2 s, grace 2 s: it will be late
    await alcove.start()
    client = await login(http, synapse, eli)
    got = await client.wait_for(
        lambda e: (
            e.get("room_id") == eli.room_id
            and str(e.get("content", {}).get("body", "")).startswith("While you were away")
        ),
        timeout=20,
    )
    assert "sent late" in got["content"]["body"]
    await asyncio.sleep(1)
    sent = [b for b in bodies(await client.room_messages(eli.room_id)) if b.startswith("While you")]
    assert len(sent) == 1


async def test_smart_phrases(
    alcove: AlcoveProcess, therapist: MatrixUser, synapse: DevStack, http: aiohttp.ClientSession
) -> None:
    mgmt = await management_room(therapist)
    fay = await add_client(therapist, mgmt, "Fay Fir")
    await therapist.send_text(
        mgmt, "!phrase add checkin Hi {client_first_name}, how was your week?"
    )
    await therapist.wait_for(from_bot(mgmt, "Saved phrase 'checkin'"))
    await therapist.send_text(mgmt, "!phrase add bad Hello {client_surname}")
    refused = await therapist.wait_for(from_bot(mgmt, "Not saved"))
    assert "{client_surname}" in refused["content"]["body"]

    command = await therapist.send_text(fay.room_id, "!p checkin")
    client = await login(http, synapse, fay)
    got = await client.wait_for(text_from(fay.room_id, THERAPIST, "Hi Fay, how was your week?"))
    assert got["sender"] == THERAPIST
    # The command message itself is removed.
    for _ in range(50):
        status, event = await therapist.raw(
            "GET", f"/_matrix/client/v3/rooms/{quote(fay.room_id)}/event/{quote(command)}"
        )
        if status == 200 and not event.get("content"):
            break
        await asyncio.sleep(0.1)
    assert event.get("content") == {}

    await therapist.send_text(mgmt, "!phrase list")
    await therapist.wait_for(from_bot(mgmt, "Your phrases: checkin"))
    # {next_session} comes from the client's next booked text-only session.
    await therapist.send_text(mgmt, "!phrase add next Our next session: {next_session}")
    await therapist.wait_for(from_bot(mgmt, "Saved phrase 'next'"))
    await therapist.send_text(mgmt, "!session Fay at 2099-02-03 10:00 for 30m")
    await therapist.wait_for(from_bot(mgmt, "Booked session #"))
    await therapist.send_text(fay.room_id, "!p next")
    await client.wait_for(
        text_from(fay.room_id, THERAPIST, "Our next session: Tue 2099-02-03 10:00 GMT")
    )
    # A client placeholder in a community room would disclose a name: refused.
    await therapist.send_text(mgmt, '!group create "Fir circle" Fay')
    created = await therapist.wait_for(from_bot(mgmt, "Created 'Fir circle'"), timeout=30)
    group = created["content"]["body"].split("matrix.to/#/", 1)[1].split()[0]
    await therapist.send_text(group, "!p checkin")
    await therapist.wait_for(from_bot(group, "uses the client's name"))


async def test_auto_responder(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
) -> None:
    mgmt = await management_room(therapist)
    gus = await add_client(therapist, mgmt, "Gus Gale")
    client = await login(http, synapse, gus)
    room = gus.room_id
    await therapist.send_text(mgmt, "!away on until 2099-01-01 Back on Monday, call 999 in crisis")
    await therapist.wait_for(from_bot(mgmt, "You are away until 2099-01-01"))

    def auto_reply(e: Event) -> bool:
        content = e.get("content")
        return (
            e.get("room_id") == room
            and isinstance(content, dict)
            and content.get("msgtype") == "m.notice"
            and bool(content.get("org.alcove.auto_reply"))
        )

    await client.send_text(room, "are you there?")
    first = await client.wait_for(auto_reply, timeout=20)
    assert first["sender"] == THERAPIST
    assert first["content"]["body"] == "Back on Monday, call 999 in crisis"
    await client.send_text(room, "hello again")
    await asyncio.sleep(2)
    replies = [e for e in await client.room_messages(room) if auto_reply({**e, "room_id": room})]
    assert len(replies) == 1  # once per throttle window
    # The therapist's own reply resets the throttle.
    reply = await therapist.send_text(room, "I'll get back to you")
    await handled(alcove_db, reply)
    await client.send_text(room, "thanks")
    for _ in range(100):
        replies = [
            e for e in await client.room_messages(room) if auto_reply({**e, "room_id": room})
        ]
        if len(replies) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(replies) == 2
    await therapist.send_text(mgmt, "!away off")
    await therapist.wait_for(from_bot(mgmt, "automatic replies are off"))


async def test_kill9_during_blast_and_schedules_delivers_each_exactly_once(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    alcove_db: Database,
) -> None:
    mgmt = await management_room(therapist)
    names = [f"Kay{chr(97 + i // 26)}{chr(97 + i % 26)} Test" for i in range(50)]
    people = await add_many(therapist, mgmt, names)
    # 50 scheduled messages, one per client, all due in a few seconds.
    for person in people:
        await therapist.send_text(person.room_id, "!schedule in 6s Scheduled once")
    for person in people:
        await therapist.wait_for(from_bot(person.room_id, "Scheduled #"), timeout=60)
    # The blast starts; Alcove is killed while deliveries are part done, twice.
    await therapist.send_text(mgmt, "!blast all Blasted once")
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 2 and time.monotonic() < deadline:
        sent = await alcove_db.fetchval(
            "SELECT COUNT(*) FROM outbox WHERE key LIKE 'blast:%' AND status = 'sent'"
        )
        if (kills == 0 and sent >= 5) or (kills == 1 and sent >= 20):
            alcove.kill9()
            kills += 1
            await asyncio.sleep(0.5)
            await alcove.start()
        await asyncio.sleep(0.02)
    assert kills == 2
    # A third kill lands while the schedules fire.
    for _ in range(400):
        fired = await alcove_db.fetchval(
            "SELECT COUNT(*) FROM scheduled_message WHERE status = 'done'"
        )
        if fired:
            break
        await asyncio.sleep(0.02)
    alcove.kill9()
    await alcove.start()
    for _ in range(300):
        pending = await alcove_db.fetchval(
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
        ) + await alcove_db.fetchval(
            "SELECT COUNT(*) FROM scheduled_message WHERE status = 'pending'"
        )
        if pending == 0:
            break
        await asyncio.sleep(0.1)
    assert pending == 0
    await asyncio.sleep(1)
    for person in people:
        got = bodies(await therapist.room_messages(person.room_id))
        assert got.count("Blasted once") == 1, person
        assert sum(b.startswith("Scheduled once") for b in got) == 1, person
