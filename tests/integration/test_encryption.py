"""Issue 11 on a real Synapse: Alcove as a crypto-capable member, driven by matrix-nio with
end-to-end encryption (vodozemac) — a client nobody on this project wrote.

A Synapse of its own, with the appservice encryption extensions, and Alcove with
``encryption.enabled`` (a registration asking for to-device events, device lists and
one-time-key counts). The therapist creates an encrypted DM with the bot the way Element X
does (``m.room.encryption`` in the initial state), trusts the bot's device explicitly, sends
``!ping`` encrypted, and gets ``pong`` back, encrypted by the bot's device and decrypted by nio.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mautrix.util.async_db import Database
from nio import (
    MemoryDownloadResponse,
    RoomEncryptedFile,
    RoomMessageText,
    RoomSendResponse,
    ShareGroupSessionResponse,
)
from nio.crypto.attachments import decrypt_attachment

from bridge.config import load_config
from bridge.devstack import DevStack
from tests.integration.conftest import USERS
from tests.integration.test_sessions import (
    alcove_rows_containing,
    files_clean,
    files_containing,
    purged,
    synapse_rows_containing,
)
from tests.support.alcove_process import AlcoveProcess
from tests.support.nio_e2ee import (
    E2EEUser,
    all_from_bot,
    encrypted_dm,
    first_ping,
    management_room,
    ping,
    wait_for_pong,
    wait_for_text,
)
from tests.support.scenario import BOT, THERAPIST, parse_added


@pytest.fixture(scope="module")
def crypto_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(tmp_path_factory.mktemp("crypto-stack"), users=USERS, encryption=True)
    config = stack.prepare()
    stack.start()
    try:
        asyncio.run(stack.bootstrap(config))
        yield stack
    finally:
        stack.stop()


def reset_bot_device(stack: DevStack) -> None:
    """The reset Alcove's start-up error advises: delete the bot's device (and so its keys),
    so each test's fresh database starts a fresh crypto identity on the shared Synapse."""
    token = load_config(stack.config_path, environ={}).appservice.as_token
    request = urllib.request.Request(  # noqa: S310 (loopback)
        f"{stack.homeserver_url}/_synapse/admin/v2/users/{BOT}/devices/ALCOVE",
        method="DELETE",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 200


@pytest.fixture
async def crypto_alcove(
    crypto_synapse: DevStack, db_url: str, tmp_path: Path
) -> AsyncIterator[AlcoveProcess]:
    reset_bot_device(crypto_synapse)
    process = alcove_on(crypto_synapse, db_url, tmp_path / "alcove.log")
    await process.start()
    yield process
    await process.stop()


def alcove_on(stack: DevStack, db_url: str, log: Path) -> AlcoveProcess:
    return AlcoveProcess(
        stack.config_path, stack.homeserver_url, db_url, stack.dev_secrets["as_port"], log
    )


@pytest.fixture
async def e2ee_therapist(
    crypto_alcove: AlcoveProcess, crypto_synapse: DevStack, tmp_path: Path
) -> AsyncIterator[E2EEUser]:
    password = crypto_synapse.dev_secrets["passwords"]["therapist"]
    user = await E2EEUser(crypto_synapse.homeserver_url, THERAPIST, tmp_path / "nio").login(
        password
    )
    yield user
    await user.close()


async def test_ping_in_an_encrypted_dm(e2ee_therapist: E2EEUser) -> None:
    nio = e2ee_therapist
    room_id = await encrypted_dm(nio)
    await ping(nio, room_id)

    # The bot's device is signed by the bot's own cross-signing key ("verified by its owner").
    async with aiohttp.ClientSession() as http:
        query = http.post(
            f"{nio.client.homeserver}/_matrix/client/v3/keys/query",
            json={"device_keys": {BOT: []}},
            headers={"Authorization": f"Bearer {nio.client.access_token}"},
        )
        async with query as response:
            keys: dict[str, Any] = await response.json()
    self_signing = keys["self_signing_keys"][BOT]["keys"]
    assert keys["master_keys"][BOT]["keys"]
    (ssk_id,) = self_signing
    assert ssk_id in keys["device_keys"][BOT]["ALCOVE"]["signatures"][BOT]


async def test_a_new_device_of_a_member_gets_the_answers_too(
    e2ee_therapist: E2EEUser, crypto_synapse: DevStack, tmp_path: Path
) -> None:
    """The therapist signs in on another device: Synapse reports the device-list change in a
    transaction (MSC3202), Alcove rotates the room's Megolm session, and its next answer is
    readable on the new device as well."""
    nio = e2ee_therapist
    room_id = await encrypted_dm(nio)
    await first_ping(nio, room_id)
    password = crypto_synapse.dev_secrets["passwords"]["therapist"]
    phone = await E2EEUser(crypto_synapse.homeserver_url, THERAPIST, tmp_path / "phone").login(
        password
    )
    try:
        await phone.sync()
        assert phone.trust(BOT) == 1
        await nio.sync()  # the first device learns of the second
        assert nio.trust(THERAPIST) >= 1  # and trusts it, so nio shares its own keys with it
        await ping(nio, room_id)
        await wait_for_pong(phone, room_id)
    finally:
        await phone.close()


async def bot_otk_count(stack: DevStack, http: aiohttp.ClientSession) -> int:
    """The bot device's signed_curve25519 count, as the homeserver tells the device itself."""
    token = load_config(stack.config_path, environ={}).appservice.as_token
    upload = http.post(
        f"{stack.homeserver_url}/_matrix/client/v3/keys/upload",
        params={"user_id": BOT, "device_id": "ALCOVE"},
        json={},
        headers={"Authorization": f"Bearer {token}"},
    )
    async with upload as response:
        body: dict[str, Any] = await response.json()
    return int(body["one_time_key_counts"].get("signed_curve25519", 0))


async def test_one_time_keys_are_topped_up(
    e2ee_therapist: E2EEUser, crypto_synapse: DevStack
) -> None:
    """Others use up the bot's one-time keys (each new Olm session claims one): Synapse
    reports the count in the next transaction (MSC3202) and Alcove uploads new ones."""
    nio = e2ee_therapist
    room_id = await encrypted_dm(nio)
    async with aiohttp.ClientSession() as http:
        full = await bot_otk_count(crypto_synapse, http)
        # 30 claimed leave fewer than 50 unless Alcove tops them up; 49: the test client's own
        # Olm session with the bot may have claimed one already (top-up happens below half).
        assert 49 <= full < 80
        claimed: set[str] = set()
        for _ in range(30):
            claim = http.post(
                f"{crypto_synapse.homeserver_url}/_matrix/client/v3/keys/claim",
                json={"one_time_keys": {BOT: {"ALCOVE": "signed_curve25519"}}},
                headers={"Authorization": f"Bearer {nio.client.access_token}"},
            )
            async with claim as response:
                assert response.status == 200
                body = await response.json()
            claimed.update(body["one_time_keys"][BOT]["ALCOVE"])
        # (Any transaction meanwhile, e.g. from the encrypted management room, may already have
        # started the top-up: the count is not checked here, only that 30 were used up.)
        assert len(claimed) == 30
        await ping(nio, room_id)  # any transaction carries the count
        deadline = time.monotonic() + 15
        while (count := await bot_otk_count(crypto_synapse, http)) < 50:
            assert time.monotonic() < deadline, f"one-time keys not topped up ({count})"
            await asyncio.sleep(0.2)


async def test_a_restart_keeps_the_crypto_store_and_a_lost_one_is_refused(
    e2ee_therapist: E2EEUser,
    crypto_alcove: AlcoveProcess,
    crypto_synapse: DevStack,
    db_url: str,
    tmp_path: Path,
) -> None:
    nio = e2ee_therapist
    room_id = await encrypted_dm(nio)
    await ping(nio, room_id)

    await crypto_alcove.stop()
    await crypto_alcove.start()  # same database: same Olm account, same Megolm sessions
    try:
        await ping(nio, room_id)
    except AssertionError as e:  # say which way it failed (see bridge/app.py SETTLE_SECONDS)
        raise AssertionError(f"{e}\n{restart_diagnosis(crypto_synapse, crypto_alcove)}") from e

    await crypto_alcove.stop()
    fresh = alcove_on(crypto_synapse, f"sqlite:{tmp_path / 'fresh.db'}", tmp_path / "fresh.log")
    with pytest.raises(RuntimeError) as refused:
        await fresh.start()
    await fresh.stop()
    assert "Alcove's crypto store has none" in str(refused.value)
    assert "/_synapse/admin/v2/users/@alcove:localhost/devices/ALCOVE" in str(refused.value)


def restart_diagnosis(stack: DevStack, alcove: AlcoveProcess) -> str:
    """What to look at when no pong came after a restart: did Alcove get the !ping (and wait for
    its room key, which Synapse drops while it holds the appservice for down), and does Synapse
    still hold transactions it never sent?"""
    log = alcove.log_path.read_text(errors="replace").splitlines()
    since = max((i for i, line in enumerate(log) if "Opening database" in line), default=0)
    lines = [
        line
        for line in log[since:]
        if "waits: no room key" in line or "Transaction" in line or "Catching up" in line
    ]
    db = stack.state_dir / "synapse" / "homeserver.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        unsent = conn.execute("SELECT txn_id FROM application_services_txns").fetchall()
        state = conn.execute("SELECT as_id, state FROM application_services_state").fetchall()
    return (
        f"Synapse's unsent transactions: {unsent}, appservice state: {state}\n"
        "Alcove after the restart:\n" + "\n".join(lines[-30:])
    )


async def test_a_client_reads_the_welcome_of_an_encrypted_1to1(
    e2ee_therapist: E2EEUser, crypto_synapse: DevStack, alcove_db: Database, tmp_path: Path
) -> None:
    """encryption.rooms (every kind by default): the therapist's management room and a new
    client's 1:1 are created encrypted. A new client has no device when the 1:1 is made, so
    whatever Alcove sends there before their first sign-in — the welcome, a blast, a phrase,
    a scheduled message — waits in the outbox: their first sign-in is a device-list change
    pushed to Alcove (MSC3202), and the held messages then go in their order, their room key
    shared with that device. The client reads them all decrypted — from the bot, on the
    therapist's behalf (the trust model)."""
    nio = e2ee_therapist
    mgmt = await management_room(nio)
    assert nio.client.rooms[mgmt].encrypted, "the management room is created encrypted"
    nio.trust(BOT)
    await say(nio, mgmt, "!client add Jane Doe")
    reply = await wait_for_text(nio, mgmt, "Added Jane Doe")
    added = parse_added(reply.body)

    # Before Jane ever signs in: a blast, a phrase and a scheduled message in her 1:1.
    await say(nio, mgmt, "!phrase add checkin Hi {client_first_name}, how was your week?")
    await wait_for_text(nio, mgmt, "Saved phrase 'checkin'")
    await say(nio, mgmt, "!blast Jane Group is cancelled this week")
    report = (await wait_for_text(nio, mgmt, "Delivered to")).body
    assert "Delivered to 0 of 1 clients; failed: 0." in report
    assert "1 will get it when they first sign in" in report and "Jane Doe" in report
    await joined_encrypted(nio, added.room_id)
    await say(nio, added.room_id, "!p checkin")
    await say(nio, added.room_id, "!schedule in 1s See you tomorrow at 10")
    # Everything in the 1:1 waits, the confirmation of the !schedule typed there included.
    held = "SELECT COUNT(*) FROM outbox WHERE room_id = $1 AND status = 'pending'"
    deadline = time.monotonic() + 30
    while await alcove_db.fetchval(held, added.room_id) < 5:  # nothing is sent yet
        assert time.monotonic() < deadline, "the five messages were not all held"
        await asyncio.sleep(0.2)

    client = await E2EEUser(crypto_synapse.homeserver_url, added.user_id, tmp_path / "jane").login(
        added.password
    )
    try:
        assert client.client.rooms[added.room_id].encrypted, "the 1:1 is created encrypted"
        assert client.trust(BOT) == 1
        readable = await all_from_bot(client, added.room_id, 5)
        texts = [m.body for m in readable]
        assert "Jane" in texts[0]  # the welcome
        assert "Group is cancelled this week" in texts[1]
        assert "Hi Jane, how was your week?" in texts[2]
        assert texts[3].startswith("Scheduled #")
        assert "See you tomorrow at 10" in texts[4]
        for message in readable:
            assert message.decrypted and message.sender == BOT
            assert message.verified, "the bot's device, trusted by the client: no warning"
        for text in (*texts[:3], texts[4]):
            assert text.startswith("On behalf of "), text
        welcome = readable[0]
        assert "Jane" in welcome.body
        bot_keys = {d.curve25519 for d in client.client.device_store.active_user_devices(BOT)}
        assert welcome.sender_key in bot_keys

        # The alternative the trust model rejects, measured: a message whose claimed sender is
        # not the owner of the device that encrypted it (the foundation's double puppet: the
        # therapist's user ID, the bot's device). Mirrored here with what a test can hold: the
        # therapist's device encrypts, the appservice posts it as the bot.
        forged = await post_encrypted_as_bot(crypto_synapse, nio, added.room_id, "Hello again")
        seen = await event_seen(client, added.room_id, forged)
        assert isinstance(seen, RoomMessageText), seen  # nio decrypts it ...
        assert seen.sender == BOT and seen.body == "Hello again"
        assert seen.sender_key not in bot_keys  # ... from no device of the claimed sender ...
        assert not seen.verified  # ... and marks it unverified, the bot's device trusted or not
    finally:
        await client.close()


async def post_encrypted_as_bot(stack: DevStack, nio: E2EEUser, room_id: str, text: str) -> str:
    """Encrypt ``text`` with ``nio``'s device (its Megolm session shared with the room's
    devices first) and post the ciphertext as the bot with the appservice token."""
    await nio.sync()
    shared = await nio.client.share_group_session(room_id, ignore_unverified_devices=True)
    assert isinstance(shared, ShareGroupSessionResponse), shared
    assert nio.client.olm is not None
    content = nio.client.olm.group_encrypt(
        room_id, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": text}}
    )
    token = load_config(stack.config_path, environ={}).appservice.as_token
    url = (
        f"{stack.homeserver_url}/_matrix/client/v3/rooms/{room_id}/send/m.room.encrypted/"
        f"forged-{time.monotonic_ns()}"
    )
    async with aiohttp.ClientSession() as http:
        put = http.put(url, json=content, headers={"Authorization": f"Bearer {token}"})
        async with put as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 200, body
    return str(body["event_id"])


async def event_seen(user: E2EEUser, room_id: str, event_id: str) -> Any:
    """The event as ``user``'s client shows it (decrypted where it can)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = await user.sync(timeout_ms=1000)
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if event.event_id == event_id:
                return event
    raise AssertionError(f"{event_id} not seen within 30 s")


async def say(user: E2EEUser, room_id: str, text: str) -> None:
    """Send ``text`` encrypted from this device, to every device of the room's members."""
    await user.sync()
    sent = await user.client.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": text},
        ignore_unverified_devices=True,
    )
    assert isinstance(sent, RoomSendResponse), sent


async def text_seen(user: E2EEUser, room_id: str, contains: str, sender: str) -> RoomMessageText:
    """Until this device sees (decrypted) a message of ``sender`` containing ``contains``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await user.sync(timeout_ms=1000)
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, RoomMessageText) and event.sender == sender:
                if contains in event.body:
                    assert event.decrypted
                    return event
    raise AssertionError(f"no decrypted message with {contains!r} from {sender} within 60 s")


async def joined_encrypted(user: E2EEUser, room_id: str) -> None:
    deadline = time.monotonic() + 30
    while room_id not in user.client.rooms:
        assert time.monotonic() < deadline, f"{user.client.user_id} did not join {room_id}"
        await user.sync(timeout_ms=1000)
    assert user.client.rooms[room_id].encrypted


async def encrypted_file_in(user: E2EEUser, room_id: str) -> RoomEncryptedFile:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await user.sync(timeout_ms=1000)
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, RoomEncryptedFile) and event.sender == BOT:
                return event
    raise AssertionError(f"no encrypted file from the bot in {room_id} within 60 s")


async def inbound_sessions(db: Database, room_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE room_id = $1", room_id
        )
    )


async def test_an_encrypted_session_leaves_no_plaintext_and_its_keys_end_with_it(
    e2ee_therapist: E2EEUser,
    crypto_alcove: AlcoveProcess,
    crypto_synapse: DevStack,
    alcove_db: Database,
    db_url: str,
    tmp_path: Path,
) -> None:
    """encryption.rooms.session (on by default): the session room is end-to-end encrypted, so
    a canary sent in it is never plaintext in the homeserver's database or any of its files —
    not while the session runs either, which a purge cannot give. The bot, a member, decrypts
    the history in memory for the consented transcript, which reaches the therapist's
    (encrypted) management room as an encrypted attachment; the end purges the ciphertext
    (counted as messages) and the bot's crypto store keeps no Megolm session of the room."""
    nio = e2ee_therapist
    mgmt = await management_room(nio)
    nio.trust(BOT)
    await say(nio, mgmt, "!client add Kim Lee")
    added = parse_added((await wait_for_text(nio, mgmt, "Added Kim Lee")).body)
    client = await E2EEUser(crypto_synapse.homeserver_url, added.user_id, tmp_path / "kim").login(
        added.password
    )
    canary = f"CANARY{secrets.token_hex(8)}"
    homeserver_db = crypto_synapse.state_dir / "synapse" / "homeserver.db"
    try:
        await say(nio, mgmt, "!session Kim now for 30m")
        opened = await wait_for_text(nio, mgmt, "is open until")
        found = re.search(r"matrix\.to/#/(!\S+)", opened.body)
        assert found, opened.body
        room = found[1]
        for user in (nio, client):
            await joined_encrypted(user, room)
        await say(client, room, f"{canary} something private")
        await text_seen(nio, room, "something private", added.user_id)
        await say(nio, room, "Thank you for telling me")
        await text_seen(client, room, "Thank you", THERAPIST)

        # While the session runs: ciphertext only, in the database and in any file.
        assert synapse_rows_containing(homeserver_db, canary) == []
        assert files_containing([crypto_synapse.state_dir], canary) == []
        assert await inbound_sessions(alcove_db, room) >= 2  # the bot reads along, a member

        await say(nio, room, "!transcript")
        await wait_for_text(client, room, "reply !consent or !decline")
        await say(client, room, "!consent")
        await wait_for_text(client, room, "transcript was sent to the therapist")
        delivered = await encrypted_file_in(nio, mgmt)
        assert delivered.body == "chat-history.txt" and delivered.decrypted
        download = await nio.client.download(delivered.url)
        assert isinstance(download, MemoryDownloadResponse), download
        assert canary.encode() not in download.body  # the media store holds ciphertext
        text = decrypt_attachment(
            download.body, delivered.key["k"], delivered.hashes["sha256"], delivered.iv
        ).decode()
        assert f"{added.initials}: {canary} something private" in text
        assert "Dr Test Therapist: Thank you for telling me" in text

        await say(nio, room, "!end")
        await purged(alcove_db, room)
    finally:
        await client.close()
    (receipt,) = await alcove_db.fetch(
        "SELECT detail FROM audit WHERE action = 'session.purged' AND room_id = $1", room
    )
    detail = json.loads(receipt["detail"])
    assert detail["status"] == "complete"
    assert detail["messages_purged"] >= 5  # encrypted ones count: 2 + !transcript/!consent/!end
    assert await inbound_sessions(alcove_db, room) == 0  # not even Alcove could decrypt now
    assert synapse_rows_containing(homeserver_db, canary) == []
    assert await files_clean([crypto_synapse.state_dir], canary) == []
    assert await alcove_rows_containing(alcove_db, canary) == []
    log = crypto_alcove.log_path
    assert canary not in log.read_text(errors="replace") + crypto_alcove.output()
