"""Issue 14, "every command is safe to replay", end to end: Alcove as a subprocess SIGKILLed in
the gap of a two-step blast, a real Synapse, and a proxy holding Alcove's requests so that the
kill lands at the same point every time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mautrix.util.async_db import Database

from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.proxy import BLACKHOLE, PASS, FaultProxy
from tests.support.scenario import BOT, add_many, bodies, from_bot, management_room

TEXT = "Two-step blast, once"


async def wait_until(
    db: Database, query: str, expected: int, *args: str, timeout: float = 30
) -> None:
    """Event ids go in as parameters (``args``), never into the SQL text: on SQLite mautrix
    rewrites ``$<digits>`` to ``?<digits>`` everywhere in it, string literals too, so an id
    such as ``$80dE…`` would never match."""
    got = None
    for _ in range(int(timeout * 20)):
        got = await db.fetchval(query, *args)
        if got == expected:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{query} gave {got}, not {expected}")


async def test_kill9_right_after_yes_of_a_two_step_blast_delivers_once_and_reports(
    alcove: AlcoveProcess,
    proxy: FaultProxy,
    therapist: MatrixUser,
    alcove_db: Database,
    tmp_path: Path,
) -> None:
    """`!blast all`, the message, `!yes` — and Alcove is killed once `!yes` has consumed the
    question and written the blast's outbox rows, before anything went out or was reported
    (its requests to Synapse are held by the proxy). After the restart every client has the
    message exactly once, and the therapist one report — not "There is nothing waiting for
    your confirmation" — and catch-up does not take Alcove's own resent messages for events
    the homeserver never delivered."""
    mgmt = await management_room(therapist)
    people = await add_many(therapist, mgmt, ["Ada Ash", "Bo Birch", "Cy Cedar"])
    await therapist.send_text(mgmt, "!blast all")
    await therapist.wait_for(from_bot(mgmt, "Send the message for 3 clients"))
    await therapist.send_text(mgmt, TEXT)
    await therapist.wait_for(from_bot(mgmt, "Send this message to 3 clients"))

    proxy.mode = BLACKHOLE  # from now on Alcove's requests to Synapse hang
    yes = await therapist.send_text(mgmt, "!yes")
    await wait_until(alcove_db, "SELECT COUNT(*) FROM outbox WHERE key LIKE 'blast:%'", 3)
    await wait_until(
        alcove_db,
        "SELECT COUNT(*) FROM inbox_event WHERE event_id = $1 AND status = 'pending'",
        1,
        yes,
    )
    alcove.kill9()
    proxy.mode = PASS
    proxy.drop_connections()
    log_before = alcove.log_path.read_text(errors="replace") if alcove.log_path.exists() else ""
    await alcove.start()

    await therapist.wait_for(from_bot(mgmt, "Delivered to"), timeout=60, fresh=True)
    await wait_until(
        alcove_db,
        "SELECT COUNT(*) FROM inbox_event WHERE event_id = $1 AND status = 'done'",
        1,
        yes,
    )
    await asyncio.sleep(1.0)  # would a duplicate, or a second reply, still arrive?
    for person in people:
        assert bodies(await therapist.room_messages(person.room_id)).count(TEXT) == 1, person
    said = [
        str(e["content"].get("body"))
        for e in await therapist.room_messages(mgmt)
        if e.get("sender") == BOT
    ]
    reports = [b for b in said if b.startswith("Delivered to")]
    assert reports == ["Delivered to 3 of 3 clients; failed: 0."]
    assert not [b for b in said if "nothing waiting" in b]
    log_after = alcove.log_path.read_text(errors="replace")[len(log_before) :]
    assert "the homeserver never delivered" not in log_after
