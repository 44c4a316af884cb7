"""The outbox on a real database with a recording gateway: idempotent keys, retries, 429,
permanent failures, devices per acting user, and resumption after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

from mautrix.util.async_db import Database

from bridge.db.outbox_repo import DeviceRepo, OutboxRepo
from bridge.matrix.gateway import PermanentError, TemporaryError
from bridge.matrix.outbox import AUTOMATED, DEVICE_ID, Outbox, txn_id_for
from bridge.metrics import Metrics
from tests.support.fakes import FakeClock, RecordingGateway

BOT = "@alcove:test.local"


def make_outbox(db: Database, gw: RecordingGateway, **kw: float) -> Outbox:
    return Outbox(
        OutboxRepo(db),
        DeviceRepo(db),
        gw,
        FakeClock(),
        Metrics(),
        retry_base_seconds=kw.get("retry_base_seconds", 0.01),
        max_attempts=int(kw.get("max_attempts", 4)),
    )


def text(body: str) -> dict[str, str]:
    return {"msgtype": "m.notice", "body": body}


async def test_same_key_is_sent_once(db: Database) -> None:
    gw = RecordingGateway()
    outbox = make_outbox(db, gw)
    await outbox.start()
    await outbox.send("reply:$1", BOT, "!r:x", text("pong"))
    await outbox.send("reply:$1", BOT, "!r:x", text("pong"))
    row = await outbox.wait("reply:$1", timeout=5)
    await outbox.stop()
    assert row.status == "sent"
    assert len(gw.attempts) == 1
    sent = gw.sent[0]
    assert sent.txn_id == txn_id_for(BOT, "reply:$1")
    assert sent.device_id == DEVICE_ID
    assert gw.devices == [(BOT, DEVICE_ID)]
    stored = await db.fetchrow("SELECT content, event_id FROM outbox")
    assert stored is not None
    assert stored["content"] is None  # not an archive of what was said
    assert stored["event_id"] == row.event_id


async def test_order_within_a_room(db: Database) -> None:
    gw = RecordingGateway()
    outbox = make_outbox(db, gw)
    await outbox.start()
    for i in range(10):
        await outbox.send(f"k{i}", BOT, "!r:x", text(str(i)))
    await outbox.join()
    await outbox.stop()
    assert gw.bodies("!r:x") == [str(i) for i in range(10)]


async def test_temporary_errors_are_retried(db: Database) -> None:
    gw = RecordingGateway(failures=[TemporaryError("502", status=502), TemporaryError("down")])
    outbox = make_outbox(db, gw)
    await outbox.start()
    await outbox.send("k", BOT, "!r:x", text("hello"))
    row = await outbox.wait("k", timeout=5)
    await outbox.stop()
    assert row.status == "sent"
    assert len(gw.attempts) == 3
    assert len(gw.sent) == 1
    assert outbox.metrics.outbox_retries._value.get() == 2
    # Every attempt reused the same transaction id, so the homeserver could dedupe.
    assert {a.txn_id for a in gw.attempts} == {txn_id_for(BOT, "k")}


async def test_429_waits_retry_after(db: Database) -> None:
    gw = RecordingGateway(failures=[TemporaryError("slow down", status=429, retry_after=0.3)])
    outbox = make_outbox(db, gw, retry_base_seconds=0.001)
    await outbox.start()
    await outbox.send("k", BOT, "!r:x", text("hello"))
    await outbox.wait("k", timeout=5)
    await outbox.stop()
    first, second = gw.attempts
    assert second.at - first.at >= 0.29  # the server's retry_after_ms, not our 1 ms backoff


async def test_permanent_error_gives_up_and_later_messages_still_go(db: Database) -> None:
    gw = RecordingGateway(failures=[PermanentError("not in room", status=403)])
    outbox = make_outbox(db, gw)
    await outbox.start()
    await outbox.send("bad", BOT, "!r:x", text("first"))
    await outbox.send("good", BOT, "!r:x", text("second"))
    bad = await outbox.wait("bad", timeout=5)
    good = await outbox.wait("good", timeout=5)
    await outbox.stop()
    assert (bad.status, good.status) == ("failed", "sent")
    assert bad.error == "not in room"
    assert gw.bodies() == ["second"]


async def test_gives_up_after_max_attempts(db: Database) -> None:
    gw = RecordingGateway(failures=[TemporaryError("down")] * 10)
    outbox = make_outbox(db, gw, max_attempts=3)
    await outbox.start()
    await outbox.send("k", BOT, "!r:x", text("x"))
    row = await outbox.wait("k", timeout=5)
    await outbox.stop()
    assert row.status == "failed"
    assert len(gw.attempts) == 3


async def test_queued_before_a_crash_is_sent_exactly_once_after(db: Database) -> None:
    # First run: queued, then the process dies before sending (never started).
    crashed = make_outbox(db, RecordingGateway())
    await crashed.send("k1", BOT, "!r:x", text("one"))
    await crashed.send("k2", BOT, "!r:x", text("two"))
    gw = RecordingGateway()
    # Before the crash, "one" actually reached the homeserver (response lost): same txn id.
    await gw.send_event(
        BOT, "!r:x", "m.room.message", text("one"), txn_id_for(BOT, "k1"), DEVICE_ID
    )
    outbox = make_outbox(db, gw)
    assert await outbox.start() == 2
    await outbox.join()
    await outbox.stop()
    assert gw.bodies() == ["one", "two"]
    assert await OutboxRepo(db).count("sent") == 2


async def test_device_created_once_per_acting_user(db: Database) -> None:
    gw = RecordingGateway()
    outbox = make_outbox(db, gw)
    await outbox.start()
    for i in range(3):
        await outbox.send(f"a{i}", BOT, "!r:x", text("x"))
        await outbox.send(f"b{i}", "@therapist:test.local", "!s:x", text("y"))
    await outbox.join()
    await outbox.stop()
    assert sorted(gw.devices) == sorted([("@therapist:test.local", DEVICE_ID), (BOT, DEVICE_ID)])
    restarted = make_outbox(db, gw)
    assert await restarted.device_for(BOT) == DEVICE_ID
    assert len(gw.devices) == 2  # remembered in the database


async def test_without_a_device_it_still_sends(db: Database) -> None:
    gw = RecordingGateway(device_ok=False)
    outbox = make_outbox(db, gw)
    await outbox.start()
    await outbox.send("k", BOT, "!r:x", text("x"))
    row = await outbox.wait("k", timeout=5)
    await outbox.stop()
    assert row.status == "sent"
    assert gw.sent[0].device_id is None


async def test_wait_sees_a_message_already_sent(db: Database) -> None:
    gw = RecordingGateway()
    outbox = make_outbox(db, gw)
    await outbox.start()
    await outbox.send("k", BOT, "!r:x", text("x"))
    await outbox.join()
    row = await asyncio.wait_for(outbox.wait("k"), 2)
    await outbox.stop()
    assert row.status == "sent"


async def test_a_deleted_device_is_recreated_once_and_the_sends_go_through(db: Database) -> None:
    """The therapist signed out of all sessions (or an admin reset the password): Synapse
    deleted Alcove's device and answers M_UNKNOWN_DEVICE to every send that names it."""
    therapist = "@therapist:test.local"
    gw = RecordingGateway()
    outbox = make_outbox(db, gw)
    await outbox.start()
    await outbox.send("before", therapist, "!r0:x", text("before"))
    await outbox.join()
    gw.deleted_devices.add((therapist, DEVICE_ID))
    # five sends in flight with the old device
    rows = [
        (await outbox.prepare(f"k{i}", therapist, f"!r{i + 1}:x", text(f"m{i}")))[0]
        for i in range(5)
    ]
    for row in rows:
        outbox.submit(row)
    rows = [await outbox.wait(f"k{i}", timeout=5) for i in range(5)]
    await outbox.stop()
    assert [r.status for r in rows] == ["sent"] * 5
    assert sorted(gw.bodies()) == ["before", "m0", "m1", "m2", "m3", "m4"]
    # created at first use, then once more, not once per failed send
    assert gw.devices.count((therapist, DEVICE_ID)) == 2


async def test_unknown_device_without_recovery_gives_up_after_max_attempts(db: Database) -> None:
    gw = RecordingGateway()
    outbox = make_outbox(db, gw, max_attempts=3)
    await outbox.start()
    gw.failures = [PermanentError("device gone", status=400, errcode="M_UNKNOWN_DEVICE")] * 10
    await outbox.send("k", "@therapist:test.local", "!r:x", text("x"))
    row = await outbox.wait("k", timeout=5)
    await outbox.stop()
    assert row.status == "failed" and row.attempts == 3


async def test_prepare_many_keeps_existing_rows_and_the_order(db: Database) -> None:
    gw = RecordingGateway()
    outbox = make_outbox(db, gw)
    await outbox.start()
    await outbox.send("old", BOT, "!r:x", text("old"))
    await outbox.join()
    rows = await outbox.prepare_many(
        [
            ("new1", BOT, "!a:x", text("n1")),
            ("old", BOT, "!r:x", text("changed")),
            ("new2", "@therapist:test.local", "!b:x", text("n2")),
        ]
    )
    assert [r.key for r in rows] == ["new1", "old", "new2"]
    assert [r.status for r in rows] == ["pending", "sent", "pending"]
    assert rows[2].txn_id == txn_id_for("@therapist:test.local", "new2")
    for row in rows:
        outbox.submit(row)
    await outbox.join()
    await outbox.stop()
    assert gw.bodies() == ["old", "n1", "n2"]
    assert await outbox.prepare_many([]) == []


async def test_every_message_is_marked_automated(db: Database) -> None:
    """Alcove's messages come back as their senders' (the therapist's, through the double
    puppet): the marker lets the dispatcher tell them from what the therapist typed."""
    gw = RecordingGateway()
    outbox = make_outbox(db, gw)
    await outbox.start()
    await outbox.send("one", "@therapist:test.local", "!r:x", {"msgtype": "m.text", "body": "!p"})
    rows = await outbox.prepare_many([("two", BOT, "!r:x", text("hi"))])
    for row in rows:
        outbox.submit(row)
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "x"}}
    await outbox.send("three", BOT, "!r:x", reaction, event_type="m.reaction")
    await outbox.join()
    await outbox.stop()
    assert [s.content.get(AUTOMATED) for s in gw.sent] == [True, True, None]


async def test_a_failure_that_is_not_the_homeservers_is_retried_then_given_up(
    db: Database,
) -> None:
    """Encryption failing for now (or a bug) neither loses the message at once nor leaves it
    stuck until the next start: it is retried with backoff, and given up after max_attempts."""
    gw = RecordingGateway()
    failures = {"k1": 1, "k2": 99}

    async def encrypt(room_id: str, event_type: str, content: dict[str, Any]) -> Any:
        key = str(content["body"])
        if failures[key]:
            failures[key] -= 1
            raise RuntimeError("the crypto store is busy")
        return event_type, content

    outbox = Outbox(
        OutboxRepo(db),
        DeviceRepo(db),
        gw,
        FakeClock(),
        Metrics(),
        retry_base_seconds=0.01,
        max_attempts=3,
        encrypt=encrypt,
    )
    await outbox.start()
    await outbox.send("k1", BOT, "!r:x", text("k1"))
    await outbox.send("k2", BOT, "!s:x", text("k2"))
    once = await outbox.wait("k1", timeout=5)
    never = await outbox.wait("k2", timeout=5)
    await outbox.stop()
    assert once.status == "sent" and gw.bodies("!r:x") == ["k1"]
    assert never.status == "failed" and never.attempts == 3
    assert never.error is not None and "RuntimeError" in never.error
    assert gw.bodies("!s:x") == []
