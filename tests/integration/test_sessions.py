"""Issue 5 end to end on a real Synapse: a text-only session leaves nothing behind — not in
Synapse's database, not in Alcove's, not in Alcove's DEBUG log, not in the media store — and a
transcript is made only with every participant's consent, delivered to the management room."""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
from pathlib import Path
from urllib.parse import quote

import aiohttp
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
) -> None:
    canary = f"CANARY{secrets.token_hex(8)}"
    _mgmt, added, client, room = await session_with_client(therapist, synapse, http, "Hana Hill")
    assert (await therapist.state(room, "m.room.history_visibility"))[
        "history_visibility"
    ] == "joined"
    assert (await therapist.state(room, "m.room.create"))["m.federate"] is False
    assert "deleted" in (await therapist.state(room, "m.room.topic"))["topic"]

    await client.send_text(room, f"{canary} something private")
    mxc = await upload(client, f"notes {canary} in a file".encode(), f"notes-{canary}.txt")
    status, _ = await client.raw(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/f1",
        {"msgtype": "m.file", "body": f"notes-{canary}.txt", "url": mxc},
    )
    assert status == 200
    await therapist.send_text(room, f"{canary} the therapist answers")
    await therapist.wait_for(message_in(room, "something private"))  # type: ignore[arg-type]
    await asyncio.sleep(1.0)  # Alcove has seen (and handled) them too
    assert await download_status(therapist, mxc) == 200  # it exists while the session runs

    await therapist.send_text(room, "!end")
    await client.wait_for(from_bot(added.room_id, "session has ended"), timeout=60)

    receipts = await alcove_db.fetch("SELECT detail FROM audit WHERE action = 'session.purged'")
    assert len(receipts) == 1
    detail = receipts[0]["detail"]
    assert '"status": "complete"' in detail and '"files_purged": 1' in detail
    assert '"messages_purged": ' in detail and canary not in detail

    # The homeserver keeps nothing: no row anywhere, and the file is gone.
    assert synapse_rows_containing(synapse.state_dir / "synapse" / "homeserver.db", canary) == []
    assert await download_status(therapist, mxc) == 404
    status, _ = await client.raw("GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b")
    assert status in (403, 404)
    # Alcove keeps nothing: not in any table, not in its log even at DEBUG.
    assert await alcove_rows_containing(alcove_db, canary) == []
    for log in (alcove.log_path, alcove.log_path.with_suffix(".stderr")):
        assert canary not in log.read_text(errors="replace"), log
    assert "Handling m.room.message" in alcove.log_path.read_text()  # the log is at DEBUG


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
    status_code, _ = await client.raw(
        "GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b"
    )
    assert status_code in (403, 404)
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
