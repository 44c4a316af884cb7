"""Issue 11's pieces on a real database (SQLite and PostgreSQL): mautrix's crypto store in
Alcove's own database, the encrypted-room state store, the inbox waiting for room keys, and the
outbox's encryption seam."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from mautrix.crypto import InboundGroupSession, OlmAccount, OutboundGroupSession
from mautrix.errors import MatrixUnknownRequestError, MForbidden
from mautrix.types import EventID, RoomID, SessionID, UserID
from mautrix.util.async_db import Database

from bridge.config import InboxConfig
from bridge.crypto.machine import Crypto, crypto_store
from bridge.crypto.repo import CryptoRoomRepo
from bridge.db.inbox_repo import InboxRepo
from bridge.db.migrations import upgrade_table
from bridge.db.outbox_repo import DeviceRepo, OutboxRepo
from bridge.inbox import Deferred, Inbox
from bridge.matrix.gateway import PermanentError, TemporaryError
from bridge.matrix.mautrix_gateway import MautrixGateway
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from bridge.web.transactions import TransactionEndpoint
from tests.support.builders import message
from tests.support.fakes import FakeClock, RecordingGateway

BOT = "@alcove:test.local"
MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_ms": 604800000}


async def test_the_crypto_store_lives_in_alcoves_database(db: Database) -> None:
    crypto_db, store = crypto_store(db, BOT)
    await crypto_db.start()  # mautrix's own crypto migrations, on Alcove's pool
    await crypto_db.start()  # and again at the next start: nothing to do
    assert await db.table_exists("crypto_account")
    assert await db.fetchval("SELECT version FROM crypto_version") >= 10
    alcove_version = await db.fetchval("SELECT version FROM alcove_version")
    assert alcove_version == len(upgrade_table.upgrades)  # Alcove's own, untouched
    await store.open()
    account = OlmAccount()
    await store.put_device_id("ALCOVE")  # type: ignore[arg-type]
    await store.put_account(account)
    _, again = crypto_store(db, BOT)
    await again.open()
    loaded = await again.get_account()
    assert loaded is not None and loaded.identity_key == account.identity_key
    assert await again.get_device_id() == "ALCOVE"


async def test_encrypted_rooms_and_who_shares_them(db: Database) -> None:
    rooms = CryptoRoomRepo(db)
    a, b, c = RoomID("!a:x"), RoomID("!b:x"), RoomID("!c:x")
    assert not await rooms.known(a)
    await rooms.put_encryption(a, MEGOLM)
    await rooms.put_encryption(b, None)  # asked: not encrypted
    await rooms.put_encryption(c, MEGOLM)
    await rooms.put_encryption(a, None)  # encryption is never turned off
    fresh = CryptoRoomRepo(db)  # after a restart
    assert await fresh.is_encrypted(a) and await fresh.known(b) and not await fresh.is_encrypted(b)
    info = await fresh.get_encryption_info(a)
    assert info is not None and info.rotation_period_ms == 604800000
    await rooms.put_members(a, ["@t:x", "@c-1:x"])
    await rooms.put_members(b, ["@t:x"])  # not encrypted: no session to rotate
    await rooms.put_members(c, ["@t:x"])
    await rooms.put_members(c, ["@c-1:x"])  # the last share replaces the list
    assert sorted(await fresh.find_shared_rooms(UserID("@t:x"))) == [a]
    assert sorted(await fresh.find_shared_rooms(UserID("@c-1:x"))) == [a, c]


class KeyedHandler:
    """Events wait for a key until it is in ``keys``."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.seen: list[str] = []

    async def __call__(self, event: dict[str, Any]) -> None:
        needs = event["content"].get("needs")
        if needs and needs not in self.keys:
            raise Deferred(needs, f"waiting for {needs}", give_up_seconds=600)
        self.seen.append(event["event_id"])


async def test_an_event_waiting_for_its_key_runs_once_when_the_key_arrives(db: Database) -> None:
    clock = FakeClock()
    handler = KeyedHandler()
    inbox = Inbox(InboxRepo(db), handler, clock, Metrics(), InboxConfig(max_attempts=2))
    await inbox.start()
    waiting = message("!a:x", "@u:x", "encrypted")
    waiting["content"]["needs"] = "megolm:S1"
    other = message("!a:x", "@u:x", "plain")
    await inbox.accept("t1", [waiting, other])
    await inbox.join()
    assert handler.seen == [other["event_id"]]  # the room goes on meanwhile
    (row,) = await inbox.repo.pending()  # kept, not dropped
    assert inbox.wake("megolm:other") == 0
    handler.keys.add("megolm:S1")
    assert inbox.wake("megolm:S1") == 1
    await inbox.join()
    assert handler.seen == [other["event_id"], waiting["event_id"]]
    inbox._unpark(row)  # the recheck timer fires after the wake: nothing runs twice
    await inbox.join()
    assert handler.seen.count(waiting["event_id"]) == 1
    await inbox.stop()


async def test_waiting_does_not_use_up_attempts_and_ends_after_the_bound(db: Database) -> None:
    clock = FakeClock()
    handler = KeyedHandler()
    metrics = Metrics()
    inbox = Inbox(InboxRepo(db), handler, clock, metrics, InboxConfig(max_attempts=1))
    await inbox.start()
    waiting = message("!a:x", "@u:x", "encrypted")
    waiting["content"]["needs"] = "megolm:S2"
    await inbox.accept("t1", [waiting])
    await inbox.join()
    for _ in range(3):  # woken without the key (max_attempts=1 would have failed it)
        inbox.wake("megolm:S2")
        await inbox.join()
    (row,) = await inbox.repo.pending()
    assert row.attempts == 0
    clock.advance(601)
    inbox.wake("megolm:S2")
    await inbox.join()
    assert await inbox.repo.pending() == []
    failed = await db.fetchval("SELECT status FROM inbox_event WHERE event_id = $1", row.event_id)
    assert failed == "failed"
    assert metrics.inbox_events.labels(outcome="failed")._value.get() == 1
    await inbox.stop()


async def test_after_the_bound_the_give_up_runs_once_instead(db: Database) -> None:
    clock = FakeClock()
    given_up: list[str] = []

    async def handler(event: dict[str, Any]) -> None:
        async def give_up() -> None:
            given_up.append(event["event_id"])

        raise Deferred("megolm:S3", "no key", give_up_seconds=600, give_up=give_up)

    inbox = Inbox(InboxRepo(db), handler, clock, Metrics(), InboxConfig())
    await inbox.start()
    waiting = message("!a:x", "@u:x", "encrypted")
    await inbox.accept("t1", [waiting])
    await inbox.join()
    assert given_up == []
    clock.advance(601)
    inbox.wake("megolm:S3")
    await inbox.join()
    assert given_up == [waiting["event_id"]]
    assert await inbox.repo.pending() == []
    status = await db.fetchval(
        "SELECT status FROM inbox_event WHERE event_id = $1", waiting["event_id"]
    )
    assert status != "failed"  # handled: the room was told
    await inbox.stop()


async def test_the_outbox_encrypts_at_each_attempt_with_the_same_txn_id(db: Database) -> None:
    gw = RecordingGateway(failures=[TemporaryError("502", status=502)])
    calls: list[tuple[str, str]] = []

    async def encrypt(
        room_id: str, event_type: str, content: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        calls.append((room_id, event_type))
        if room_id != "!secret:x":
            return event_type, content
        return "m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2", "n": len(calls)}

    outbox = Outbox(
        OutboxRepo(db),
        DeviceRepo(db),
        gw,
        FakeClock(),
        Metrics(),
        retry_base_seconds=0.01,
        encrypt=encrypt,
    )
    await outbox.start()
    await outbox.send("k1", BOT, "!secret:x", {"msgtype": "m.notice", "body": "pong"})
    await outbox.send("k2", BOT, "!plain:x", {"msgtype": "m.notice", "body": "hi"})
    assert (await outbox.wait("k1", 5)).status == "sent"
    assert (await outbox.wait("k2", 5)).status == "sent"
    await outbox.stop()
    secret = [a for a in gw.attempts if a.room_id == "!secret:x"]
    assert [a.event_type for a in secret] == ["m.room.encrypted"] * len(secret)
    assert len({a.txn_id for a in secret}) == 1  # Synapse dedupes whatever the ciphertext
    assert all("body" not in a.content for a in secret)
    (plain,) = [a for a in gw.sent if a.room_id == "!plain:x"]
    assert plain.event_type == "m.room.message" and plain.content["body"] == "hi"


async def test_a_room_the_bot_cannot_see_fails_the_send_at_once(db: Database) -> None:
    """403 on the room's state or members: a permanent error (the send would fail the same
    way), not a temporary one retried with backoff; 5xx stays temporary."""
    async with aiohttp.ClientSession() as session:
        gateway = MautrixGateway(session, "http://127.0.0.1:9", "as", BOT, Metrics())
        crypto = Crypto(db, gateway, "ALCOVE", Metrics())

        async def forbidden(*_args: Any, **_kw: Any) -> Any:
            raise MForbidden(403, "You are not in this room")

        async def unavailable(*_args: Any, **_kw: Any) -> Any:
            raise MatrixUnknownRequestError(502, "bad gateway")

        crypto.client.get_state_event = forbidden  # type: ignore[method-assign]
        assert not await crypto.is_encrypted("!left:x")
        assert not await crypto.rooms.known("!left:x")  # not cached: asked again next time
        await crypto.rooms.put_encryption("!enc:x", MEGOLM)
        await crypto.crypto_db.start()
        crypto.client.get_members = forbidden  # type: ignore[method-assign]
        with pytest.raises(PermanentError):
            await crypto.encrypt("!enc:x", "m.room.message", {"body": "x"})
        crypto.client.get_members = unavailable  # type: ignore[method-assign]
        with pytest.raises(TemporaryError):
            await crypto.encrypt("!enc:x", "m.room.message", {"body": "x"})


async def test_transaction_extensions_come_before_its_room_events(db: Database) -> None:
    """To-device events (room keys) reach the crypto before the transaction's room events are
    persisted; while the crypto is not started the transaction is refused (503, nothing kept),
    so Synapse sends all of it again."""
    inbox = Inbox(InboxRepo(db), KeyedHandler(), FakeClock(), Metrics(), InboxConfig())
    seen: list[tuple[list[Any], int]] = []
    ready = False

    async def extensions(body: dict[str, Any]) -> None:
        if not ready:
            raise TemporaryError("crypto is not started yet")
        seen.append((body["de.sorunome.msc2409.to_device"], (await inbox.repo.depth())[0]))

    endpoint = TransactionEndpoint("hs", inbox, Metrics(), extensions=extensions)
    app = web.Application()
    app.add_routes(endpoint.routes())
    body = {
        "events": [message("!a:x", "@u:x", "encrypted")],
        "de.sorunome.msc2409.to_device": [{"type": "m.room.encrypted", "sender": "@u:x"}],
    }
    async with TestClient(TestServer(app)) as client:
        auth = {"Authorization": "Bearer hs"}
        refused = await client.put("/_matrix/app/v1/transactions/1", json=body, headers=auth)
        assert refused.status == 503
        assert (await inbox.repo.depth())[0] == 0
        ready = True
        accepted = await client.put("/_matrix/app/v1/transactions/1", json=body, headers=auth)
        assert accepted.status == 200
    assert seen == [(body["de.sorunome.msc2409.to_device"], 0)]
    assert (await inbox.repo.depth())[0] == 1


async def test_a_rooms_megolm_sessions_are_forgotten(db: Database) -> None:
    """A text-only session's end (issue 11): every Megolm session of the room leaves the crypto
    store (inbound ones with their message indexes, the outbound one); other rooms keep
    theirs."""
    crypto_db, store = crypto_store(db, BOT)
    await crypto_db.start()
    await store.open()
    account = OlmAccount()
    await store.put_account(account)
    ended, other = RoomID("!ended:test.local"), RoomID("!other:test.local")
    sessions: dict[RoomID, list[SessionID]] = {ended: [], other: []}
    for room in (ended, ended, other):
        outbound = OutboundGroupSession(room)
        await store.add_outbound_group_session(outbound)
        inbound = InboundGroupSession(
            outbound.session_key,
            account.signing_key,
            account.identity_key,
            room,
        )
        await store.put_group_session(room, account.identity_key, inbound.id, inbound)
        await store.validate_message_index(
            account.identity_key, inbound.id, EventID(f"$e-{inbound.id}"), 0, 1
        )
        sessions[room].append(inbound.id)

    gone = await CryptoRoomRepo(db).forget_room_keys(BOT, ended)

    assert gone == 2
    for session_id in sessions[ended]:
        assert await store.get_group_session(ended, session_id) is None
    assert await store.get_outbound_group_session(ended) is None
    # Only the other room's message index is left.
    assert await db.fetchval("SELECT COUNT(*) FROM crypto_message_index") == 1
    (kept,) = sessions[other]
    assert await store.get_group_session(other, kept) is not None
    assert await store.get_outbound_group_session(other) is not None
    assert await CryptoRoomRepo(db).forget_room_keys(BOT, ended) == 0  # again: nothing left
