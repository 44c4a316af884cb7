"""Issue 5 end to end on a real Synapse: a text-only session leaves nothing behind — not in
Synapse's database, not in Alcove's, not in Alcove's DEBUG log, not in the media store, not in
any file as raw bytes — a device that was offline at the end still learns it ended (matrix-nio
syncing from its old token), and a transcript is made only with every participant's consent,
delivered to the management room."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import nio
import pytest
from mautrix.util.async_db import Database, Scheme

from bridge.devstack import DevStack
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import Event, MatrixUser
from tests.support.scenario import (
    BOT,
    THERAPIST,
    Added,
    add_client,
    from_bot,
    handled,
    login,
    management_room,
)


async def open_session(therapist: MatrixUser, mgmt: str, who: str, minutes: int = 30) -> str:
    await therapist.send_text(mgmt, f"!session {who} now for {minutes}m")
    reply = await therapist.wait_for(from_bot(mgmt, "is open until"), timeout=30, fresh=True)
    found = re.search(r"matrix\.to/#/(!\S+)", reply["content"]["body"])
    assert found, reply
    return found[1]


async def upload(user: MatrixUser, data: bytes, name: str) -> str:
    url = f"{str(user.api.api.base_url).rstrip('/')}/_matrix/media/v3/upload?filename={quote(name)}"
    headers = {"Authorization": f"Bearer {user.api.api.token}", "Content-Type": "text/plain"}
    async with user.api.api.session.post(url, data=data, headers=headers) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["content_uri"])


async def download_status(user: MatrixUser, mxc: str) -> int:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    status, _ = await user.raw("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}")
    return status


def synapse_rows_containing(db_path: Path, needle: str) -> list[str]:
    """Every (table.column) of Synapse's SQLite database with a value containing ``needle``."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    hits: list[str] = []
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            try:
                columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            except sqlite3.DatabaseError:
                continue
            for column in columns:
                try:
                    count = conn.execute(
                        f'SELECT COUNT(*) FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE ?',
                        (f"%{needle}%",),
                    ).fetchone()[0]
                except sqlite3.DatabaseError:
                    continue  # e.g. FTS internals that cannot be read that way
                if count:
                    hits.append(f"{table}.{column}")
    finally:
        conn.close()
    return hits


async def alcove_rows_containing(db: Database, needle: str) -> list[str]:
    if db.scheme == Scheme.SQLITE:
        tables = [
            r["name"] for r in await db.fetch("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        pairs = []
        for table in tables:
            for col in await db.fetch(f'PRAGMA table_info("{table}")'):
                pairs.append((table, col["name"]))
    else:
        rows = await db.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        )
        pairs = [(r["table_name"], r["column_name"]) for r in rows]
    hits = []
    for table, column in pairs:
        count = await db.fetchval(
            f'SELECT COUNT(*) FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE $1', f"%{needle}%"
        )
        if count:
            hits.append(f"{table}.{column}")
    return hits


def files_containing(roots: list[Path], needle: str) -> list[str]:
    """Every file under ``roots`` holding ``needle`` as raw bytes (any encoding a database or a
    log would use for ASCII text)."""
    raw = needle.encode()
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if raw in data or raw.lower() in data:
                    hits.append(str(path))
    return hits


async def files_clean(roots: list[Path], needle: str, timeout: float = 20.0) -> list[str]:
    """The files still holding ``needle`` once the post-purge scrub has had time to run."""
    deadline = time.monotonic() + timeout
    while True:
        hits = files_containing(roots, needle)
        if not hits or time.monotonic() > deadline:
            return hits
        await asyncio.sleep(0.5)


def alcove_files(db_url: str, alcove: AlcoveProcess) -> list[Path]:
    files = [alcove.log_path, alcove.log_path.with_suffix(".stderr")]
    if db_url.startswith("sqlite:"):
        db = Path(db_url.removeprefix("sqlite:"))
        files += [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    return [f for f in files if f.exists()]


async def purged(alcove_db: Database, room: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await alcove_db.fetchval(
            "SELECT COUNT(*) FROM audit WHERE action = 'session.purged' AND room_id = $1", room
        ):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"session room {room} was not purged")


async def session_with_client(
    therapist: MatrixUser, synapse: DevStack, http: aiohttp.ClientSession, name: str
) -> tuple[str, Added, MatrixUser, str]:
    mgmt = await management_room(therapist)
    added = await add_client(therapist, mgmt, name)
    client = await login(http, synapse, added)
    room = await open_session(therapist, mgmt, name.split()[0])
    assert room in await client.joined_rooms()
    return mgmt, added, client, room


def message_in(room: str, needle: str) -> object:
    def match(e: Event) -> bool:
        return e.get("room_id") == room and needle in str(e.get("content", {}).get("body", ""))

    return match


async def test_nothing_survives_a_session(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
    db_url: str,
) -> None:
    canary = f"CANARY{secrets.token_hex(8)}"
    _mgmt, added, client, room = await session_with_client(therapist, synapse, http, "Hana Hill")
    assert (await therapist.state(room, "m.room.history_visibility"))[
        "history_visibility"
    ] == "joined"
    assert (await therapist.state(room, "m.room.create"))["m.federate"] is False
    assert "deleted" in (await therapist.state(room, "m.room.topic"))["topic"]

    said = await client.send_text(room, f"{canary} something private")
    mxc = await upload(client, f"notes {canary} in a file".encode(), f"notes-{canary}.txt")
    status, filed = await client.raw(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/f1",
        {"msgtype": "m.file", "body": f"notes-{canary}.txt", "url": mxc},
    )
    assert status == 200
    answer = await therapist.send_text(room, f"{canary} the therapist answers")
    await therapist.wait_for(message_in(room, "something private"))  # type: ignore[arg-type]
    await handled(alcove_db, said, filed["event_id"], answer)  # Alcove has handled them too
    assert await download_status(therapist, mxc) == 200  # it exists while the session runs

    await therapist.send_text(room, "!end")
    await client.wait_for(from_bot(added.room_id, "session has ended"), timeout=60)
    await purged(alcove_db, room)

    receipts = await alcove_db.fetch("SELECT detail FROM audit WHERE action = 'session.purged'")
    assert len(receipts) == 1
    detail = receipts[0]["detail"]
    assert '"status": "complete"' in detail and '"files_purged": 1' in detail
    assert '"messages_purged": ' in detail and canary not in detail

    # The homeserver keeps nothing: no row anywhere, and the file is gone.
    assert synapse_rows_containing(synapse.state_dir / "synapse" / "homeserver.db", canary) == []
    assert await download_status(therapist, mxc) == 404
    status, body = await client.raw("GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b")
    assert status in (200, 403, 404)  # 200 while the room (state only) awaits the leave's sync
    assert canary not in json.dumps(body)
    # Alcove keeps nothing: not in any table, not in its log even at DEBUG.
    assert await alcove_rows_containing(alcove_db, canary) == []
    for log in (alcove.log_path, alcove.log_path.with_suffix(".stderr")):
        assert canary not in log.read_text(errors="replace"), log
    assert "Handling m.room.message" in alcove.log_path.read_text()  # the log is at DEBUG
    # Issue 10 item 8: not in any file of the stack as raw bytes — the homeserver's database
    # and its WAL (VACUUMed after the purge), the media store, logs, and Alcove's database.
    roots = [synapse.state_dir, *alcove_files(db_url, alcove)]
    assert await files_clean(roots, canary) == []


async def test_transcript_needs_everyones_consent(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
) -> None:
    mgmt, _added, client, room = await session_with_client(therapist, synapse, http, "Ida Ives")
    await client.send_text(room, "I had a hard week")
    await therapist.send_text(room, "Thank you for telling me")

    # One !decline refuses it.
    await therapist.send_text(room, "!transcript")
    await client.wait_for(from_bot(room, "reply !consent or !decline"), timeout=20)
    await client.send_text(room, "!decline")
    await client.wait_for(from_bot(room, "no transcript will be made"), timeout=20)

    # With every consent it goes to the management room, and only there.
    await therapist.send_text(room, "!transcript")
    await client.wait_for(from_bot(room, "reply !consent or !decline"), timeout=20, fresh=True)
    await client.send_text(room, "!consent")
    await client.wait_for(from_bot(room, "transcript was sent to the therapist"), timeout=30)
    file_event = await therapist.wait_for(
        lambda e: e.get("room_id") == mgmt and e.get("content", {}).get("msgtype") == "m.file",
        timeout=30,
    )
    assert file_event["content"]["body"] == "chat-history.txt"
    server, media_id = file_event["content"]["url"].removeprefix("mxc://").split("/", 1)
    url = f"{synapse.homeserver_url}/_matrix/client/v1/media/download/{server}/{media_id}"
    async with http.get(
        url, headers={"Authorization": f"Bearer {therapist.api.api.token}"}
    ) as resp:
        text = (await resp.read()).decode()
    assert "I.I.: I had a hard week" in text
    assert "Dr Test Therapist: Thank you for telling me" in text
    in_session = [
        e for e in await therapist.room_messages(room) if e["content"].get("msgtype") == "m.file"
    ]
    assert in_session == []

    audit = {
        r["action"]: r["detail"] for r in await alcove_db.fetch("SELECT action, detail FROM audit")
    }
    assert "transcript.declined" in audit and "transcript.consented" in audit
    assert '"sha256": ' in audit["transcript.delivered"]
    assert "hard week" not in audit["transcript.delivered"]

    # The transcript survives the session's deletion: it is the therapist's record.
    await therapist.send_text(room, "!end")
    await client.wait_for(from_bot(_added.room_id, "session has ended"), timeout=60)
    async with http.get(
        url, headers={"Authorization": f"Bearer {therapist.api.api.token}"}
    ) as resp:
        assert resp.status == 200


async def test_session_ended_at_start_up_after_a_crash_across_its_end(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
) -> None:
    _mgmt, added, client, room = await session_with_client(therapist, synapse, http, "Jo Jay")
    await client.send_text(room, "written before the crash")
    await therapist.wait_for(message_in(room, "written before the crash"))  # type: ignore[arg-type]
    alcove.kill9()
    # Time passes beyond the session's end while Alcove is down.
    await alcove_db.execute("UPDATE text_session SET end_at = 1000 WHERE room_id = $1", room)
    await alcove.start()
    # Purged during start-up, before anything else: done by the time Alcove is ready.
    status = await alcove_db.fetchval("SELECT status FROM text_session WHERE room_id = $1", room)
    assert status == "ended"
    await client.wait_for(from_bot(added.room_id, "session has ended"), timeout=30)
    status_code, body = await client.raw(
        "GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b"
    )
    assert status_code in (200, 403, 404)
    assert "written before the crash" not in json.dumps(body)
    assert "written before the crash" not in " ".join(
        synapse_rows_containing(
            synapse.state_dir / "synapse" / "homeserver.db", "written before the crash"
        )
    )


async def test_cancel_before_start_creates_nothing(
    alcove: AlcoveProcess, therapist: MatrixUser, alcove_db: Database
) -> None:
    mgmt = await management_room(therapist)
    await add_client(therapist, mgmt, "Kim Kale")
    rooms_before = set(await therapist.joined_rooms())
    await therapist.send_text(mgmt, "!session Kim at 2099-01-05 10:00 for 45m")
    booked = await therapist.wait_for(from_bot(mgmt, "Booked session #"), timeout=20)
    session_id = booked["content"]["body"].split("#", 1)[1].split()[0]
    await therapist.send_text(mgmt, "!session list")
    await therapist.wait_for(from_bot(mgmt, f"#{session_id} "), timeout=20, fresh=True)
    await therapist.send_text(mgmt, f"!session cancel {session_id}")
    await therapist.wait_for(from_bot(mgmt, f"Cancelled session #{session_id}"), timeout=20)
    row = await alcove_db.fetchrow(
        "SELECT status, room_id FROM text_session WHERE id = $1", int(session_id)
    )
    assert row is not None and row["status"] == "cancelled" and row["room_id"] is None
    assert set(await therapist.joined_rooms()) == rooms_before
    created = await alcove_db.fetch(
        "SELECT detail FROM audit WHERE action = 'room.created' AND detail LIKE '%session%'"
    )
    assert created == []
    assert BOT and THERAPIST  # the scenario constants are the ones the stack uses


# --------------------------------------------------------------------------- a real client


@pytest.fixture
async def phone(tmp_path: Path) -> AsyncIterator[list[nio.AsyncClient]]:
    """matrix-nio clients made by a test, closed after it."""
    made: list[nio.AsyncClient] = []
    yield made
    for client in made:
        await client.close()


async def nio_login(
    synapse: DevStack, added: Added, store: Path, made: list[nio.AsyncClient]
) -> nio.AsyncClient:
    client = nio.AsyncClient(synapse.homeserver_url, added.user_id, store_path=str(store))
    made.append(client)
    response = await client.login(added.password, device_name="Phone")
    assert isinstance(response, nio.LoginResponse), response
    return client


def sources(events: list[Any]) -> str:
    return json.dumps([getattr(e, "source", {}) for e in events])


async def test_an_offline_device_learns_that_the_session_ended(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
    phone: list[nio.AsyncClient],
    tmp_path: Path,
) -> None:
    """Issue 9 item 7 with matrix-nio: a device that was not syncing when the session ended
    gets the room in ``rooms.leave`` at its next /sync from its old token — and nothing of
    what was said there, which the homeserver no longer has."""
    canary = f"CANARY{secrets.token_hex(8)}"
    _mgmt, added, client, room = await session_with_client(therapist, synapse, http, "Lea Lane")
    device = await nio_login(synapse, added, tmp_path, phone)
    first = await device.sync(timeout=0, full_state=True)
    assert isinstance(first, nio.SyncResponse), first
    assert room in first.rooms.join
    event_id = await client.send_text(room, f"{canary} said while the phone listened")
    token = first.next_batch
    for _ in range(20):  # the phone receives (and caches) the message, then goes offline
        seen = await device.sync(timeout=3000, since=token)
        assert isinstance(seen, nio.SyncResponse), seen
        token = seen.next_batch
        joined = seen.rooms.join.get(room)
        if joined is not None and canary in sources(joined.timeline.events):
            break
    else:
        raise AssertionError("the phone never received the message")

    await therapist.send_text(room, "!end")
    await purged(alcove_db, room)

    back = await device.sync(timeout=0, since=token)
    assert isinstance(back, nio.SyncResponse), back
    assert room not in back.rooms.join
    assert room in back.rooms.leave, (list(back.rooms.join), list(back.rooms.leave))
    left = back.rooms.leave[room]
    leaves = [
        e
        for e in left.timeline.events
        if isinstance(e, nio.RoomMemberEvent) and e.state_key == added.user_id
    ]
    assert leaves and leaves[-1].membership == "leave"
    assert leaves[-1].content.get("reason") == "The session has ended"
    assert canary not in sources(left.timeline.events)
    assert device.rooms.get(room) is None or room in back.rooms.leave

    # What the phone may still ask for is gone: the message, its context, the history.
    history = await device.room_messages(room, start=token, direction=nio.MessageDirection.back)
    if isinstance(history, nio.RoomMessagesResponse):
        assert canary not in sources(history.chunk)
    status, _ = await client.raw(
        "GET", f"/_matrix/client/v3/rooms/{quote(room)}/event/{quote(event_id)}"
    )
    assert status in (403, 404)
    assert synapse_rows_containing(synapse.state_dir / "synapse" / "homeserver.db", canary) == []

    # The room itself (state only) waits for the phone, which has not been back since.
    row = await alcove_db.fetchrow(
        "SELECT status, left_at, room_deleted_at FROM text_session WHERE room_id = $1", room
    )
    assert row is not None and row["status"] == "ended"
    assert row["left_at"] is not None and row["room_deleted_at"] is None


async def test_a_redacted_file_is_deleted_at_the_end(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
) -> None:
    """Issue 10 item 7: the end used to find files from message content; a redacted message
    has none, so its file stayed downloadable. Alcove records the mxc as the event arrives."""
    _mgmt, _added, client, room = await session_with_client(therapist, synapse, http, "Max Moe")
    mxc = await upload(client, b"a private drawing", "drawing.txt")
    status, sent = await client.raw(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/redact-me",
        {"msgtype": "m.file", "body": "drawing.txt", "url": mxc},
    )
    assert status == 200
    await handled(alcove_db, sent["event_id"])  # Alcove has the event
    status, _ = await client.raw(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room)}/redact/{quote(sent['event_id'])}/r1",
        {"reason": "sent by mistake"},
    )
    assert status == 200
    assert await download_status(therapist, mxc) == 200

    await therapist.send_text(room, "!end")
    await purged(alcove_db, room)
    assert await download_status(therapist, mxc) == 404


async def test_catch_up_after_a_restart_does_not_run_session_commands_again(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    alcove_db: Database,
) -> None:
    """Issue 10 item 6: at start-up Alcove offers the rooms' last minutes to the inbox again.
    A handled session event leaves a content-free marker, so `!extend` does not run twice and
    no text is written back."""
    canary = f"CANARY{secrets.token_hex(8)}"
    _mgmt, _added, client, room = await session_with_client(therapist, synapse, http, "Ned Nye")
    end_of = "SELECT end_at FROM text_session WHERE room_id = $1"
    end_before = await alcove_db.fetchval(end_of, room)
    said = await client.send_text(room, f"{canary} before the restart")
    extend = await therapist.send_text(room, "!extend 30m")
    await therapist.wait_for(from_bot(room, "Extended"), timeout=20)
    await handled(alcove_db, said, extend)  # the handled marks are written (group commit)

    await alcove.stop()
    await alcove.start()  # catch-up at start-up re-offers the last minute of every room
    await asyncio.sleep(3.0)

    end_after = await alcove_db.fetchval(end_of, room)
    assert end_after == end_before + 30 * 60_000
    extended = [
        e
        for e in await therapist.room_messages(room)
        if "Extended" in str(e["content"].get("body"))
    ]
    assert len(extended) == 1
    assert await alcove_rows_containing(alcove_db, canary) == []
    await therapist.send_text(room, "!end")
    await purged(alcove_db, room)
