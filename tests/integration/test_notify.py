"""Issue 12 (notify, restore, read indicators) on a real Synapse, driven as Element would:
clients' email notifications caught by a local SMTP sink (aiosmtpd), a deleted message restored
by care staff, and read receipts as a client's and a therapist's clients see them."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from mautrix.util.async_db import Database
from nio import ReceiptEvent, RoomReadMarkersResponse, SyncResponse

from bridge.config import load_config
from bridge.devstack import DevStack
from bridge.doctor import synapse_settings
from bridge.notify_email import CHECK_NAME
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.nio_client import NioUser
from tests.support.scenario import (
    THERAPIST,
    add_client,
    from_bot,
    login,
    management_room,
    parse_added,
)

CARE = "@care:localhost"


@dataclass
class Mail:
    to: list[str]
    message: EmailMessage
    at: float

    @property
    def text(self) -> str:
        """Subject, sender and every part, decoded; without the recipient's own address (the
        unsubscribe link names it, as the To: header does)."""
        parts = [str(self.message["Subject"]), str(self.message["From"])]
        for part in self.message.walk():
            if part.get_content_maintype() == "text":
                parts.append(str(part.get_content()))
        text = "\n".join(parts)
        for address in self.to:
            text = text.replace(address, "<to>").replace(quote(address, safe=""), "<to>")
        return text


@dataclass
class Sink:
    """An SMTP server on 127.0.0.1 that keeps what it is sent."""

    mails: list[Mail] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(Mail(list(envelope.rcpt_tos), message, time.monotonic()))
        return "250 Message accepted for delivery"

    async def wait_for(
        self, to: str, after: float, timeout: float = 30.0, subject: str = ""
    ) -> Mail:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for mail in self.mails:
                if to in mail.to and mail.at >= after and subject in str(mail.message["Subject"]):
                    return mail
            await asyncio.sleep(0.2)
        raise AssertionError(f"no mail to {to} within {timeout}s: {[m.to for m in self.mails]}")


@pytest.fixture
async def smtp(synapse: DevStack) -> AsyncIterator[Sink]:
    sink = Sink()
    controller = Controller(sink, hostname=synapse.smtp_host, port=synapse.smtp_port)
    controller.start()
    yield sink
    controller.stop()


async def _threepids(user: MatrixUser) -> list[str]:
    status, body = await user.raw("GET", "/_matrix/client/v3/account/3pid")
    assert status == 200, body
    return [t["address"] for t in body.get("threepids", [])]


async def _email_pushers(user: MatrixUser) -> list[str]:
    status, body = await user.raw("GET", "/_matrix/client/v3/pushers")
    assert status == 200, body
    return [p["pushkey"] for p in body.get("pushers", []) if p.get("kind") == "email"]


async def test_email_notifications_carry_no_text_and_no_names(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    smtp: Sink,
    alcove_db: Database,
) -> None:
    mgmt = await management_room(therapist)
    started = time.monotonic()
    await therapist.send_text(mgmt, "!client add Rosalind Franklin --email Rosalind@Example.ORG")
    reply = await therapist.wait_for(from_bot(mgmt, "Added Rosalind Franklin"), timeout=30)
    added = parse_added(reply["content"]["body"])
    client = await login(http, synapse, added)
    address = "rosalind@example.org"  # as the homeserver keeps it (case-folded)

    # The address is the client's email 3PID, with an email pusher, set up as them.
    assert await _threepids(client) == [address]
    assert await _email_pushers(client) == [address]
    row = await alcove_db.fetchrow("SELECT email FROM client WHERE user_id = $1", added.user_id)
    assert row is not None and row["email"] == address

    # The welcome says how to sign in: the username, and a password by email.
    localpart = added.user_id[1:].split(":")[0]
    welcome = await client.wait_for(
        lambda e: e.get("room_id") == added.room_id and "Hello Rosalind" in str(e.get("content")),
        timeout=20,
    )
    body = welcome["content"]["body"]
    assert f"username is {localpart}" in body and "Forgot password" in body

    # The client does not read: a second later the homeserver mails them about the welcome
    # (the stock templates would show its text, the therapist's name and the room's name).
    forbidden = ["Rosalind", "Franklin", added.initials, "Dr Test Therapist", "therapist"]
    first = await smtp.wait_for(address, after=started)
    assert "new message" in first.text or "invited" in first.text  # the invite, or the welcome
    for word in forbidden:
        assert word.lower() not in first.text.lower(), (word, first.text)

    # "Forgot password" as Element does it, with that address: the client sets a password.
    # (Synapse's reset mail says only "a password reset request"; nothing names anyone.)
    secret_ = "client-secret-1"
    asked = time.monotonic()  # Synapse mails before it answers
    status, token = await client.raw(
        "POST",
        "/_matrix/client/v3/account/password/email/requestToken",
        {"email": address, "client_secret": secret_, "send_attempt": 1},
    )
    assert status == 200, token
    reset = await smtp.wait_for(address, after=asked, subject="Password reset")
    assert "rosalind" not in reset.text.lower()
    plain = reset.message.get_body(("plain",))
    assert isinstance(plain, EmailMessage)
    [url] = re.findall(r"(http\S+submit_token\S+)", str(plain.get_content()))
    async with http.post(url.replace("&amp;", "&")) as resp:  # the confirmation page's button
        assert resp.status == 200, await resp.text()
    async with http.post(  # signed out, as on Element's sign-in screen
        f"{synapse.homeserver_url}/_matrix/client/v3/account/password",
        json={
            "new_password": "chosen by Rosalind 42",
            "logout_devices": False,
            "auth": {
                "type": "m.login.email.identity",
                "threepid_creds": {"sid": token["sid"], "client_secret": secret_},
            },
        },
    ) as resp:
        assert resp.status == 200, await resp.text()
    await MatrixUser(http, synapse.homeserver_url, added.user_id).login("chosen by Rosalind 42")

    # A new address replaces the old one, for 3PIDs and pushers. (Synapse then throttles a
    # room's mails: the next about the same room waits 144 x notif_delay_before_mail, up to a
    # day; a new pusher starts afresh.)
    await therapist.send_text(mgmt, f"!client email {added.user_id} RF@example.net")
    await therapist.wait_for(from_bot(mgmt, "now go to rf@example.net"), timeout=20)
    assert await _threepids(client) == ["rf@example.net"]
    assert await _email_pushers(client) == ["rf@example.net"]
    secret = "Thursday plan: the dosage question we discussed"
    await therapist.send_text(added.room_id, secret)
    sent = time.monotonic()
    second = await smtp.wait_for("rf@example.net", after=sent)
    print(f"MEASURE mail {second.at - sent:.1f}s after the message (delay 1s)")
    for word in [*forbidden, "dosage", "Thursday"]:
        assert word.lower() not in second.text.lower(), (word, second.text)
    assert not [m for m in smtp.mails if address in m.to and m.at >= sent]  # the old one

    await therapist.send_text(mgmt, f"!client email {added.user_id} not-an-address")
    await therapist.wait_for(from_bot(mgmt, "is not an email address"), timeout=20)
    await therapist.send_text(mgmt, f"!client email {added.user_id} off")
    await therapist.wait_for(from_bot(mgmt, "are off"), timeout=20)
    assert await _threepids(client) == []
    assert await _email_pushers(client) == []

    # Doctor: the test Synapse uses Alcove's templates and subjects.
    config = load_config(synapse.config_path, environ={})
    [check] = [c for c in synapse_settings(config) if c.name == CHECK_NAME]
    assert check.ok, check.detail


def _answer_to(room_id: str, event_id: str) -> Any:
    def match(e: dict[str, Any]) -> bool:
        relates = e.get("content", {}).get("m.relates_to", {})
        return e.get("room_id") == room_id and (
            relates.get("m.in_reply_to", {}).get("event_id") == event_id
        )

    return match


async def _receipts(user: NioUser, room_id: str) -> list[tuple[str, str, str]]:
    """One /sync as a matrix-nio client: the read receipts it is shown in the room, as
    (user, receipt type, event id)."""
    response = await user.client.sync(timeout=0)
    assert isinstance(response, SyncResponse), response
    room = response.rooms.join.get(room_id)
    found = []
    for event in room.ephemeral if room else []:
        if isinstance(event, ReceiptEvent):
            found += [(r.user_id, str(r.receipt_type), r.event_id) for r in event.receipts]
    return found


async def _read_as_element(user: NioUser, room_id: str, event_id: str) -> None:
    """What Element Web/Desktop sends when its user reads up to ``event_id``: a public ``m.read``
    receipt, or a private one when the account's "Send read receipts" setting is off."""
    status, settings = await _account_data(user, "im.vector.web.settings")
    public = status != 200 or settings.get("sendReadReceipts", True)
    response = await user.client.room_read_markers(
        room_id,
        event_id,
        read_event=event_id if public else None,
        private_read_event=None if public else event_id,
    )
    assert isinstance(response, RoomReadMarkersResponse), response


async def _account_data(user: NioUser, kind: str) -> tuple[int, dict[str, Any]]:
    path = f"/_matrix/client/v3/user/{quote(user.user_id)}/account_data/{kind}"
    async with aiohttp.ClientSession() as http:
        async with http.get(
            user.client.homeserver + path,
            headers={"Authorization": f"Bearer {user.client.access_token}"},
        ) as resp:
            return resp.status, await resp.json()


async def test_restore_a_deleted_message_and_read_indicators(
    alcove: AlcoveProcess,
    therapist: MatrixUser,
    synapse: DevStack,
    http: aiohttp.ClientSession,
    passwords: dict[str, str],
    alcove_db: Database,
) -> None:
    mgmt = await management_room(therapist)
    ada = await add_client(therapist, mgmt, "Ada Lovelace")
    client = await login(http, synapse, ada)
    care = await MatrixUser(http, synapse.homeserver_url, CARE).login(passwords[CARE])
    care_mgmt = await management_room(care)

    # The client writes, then deletes it.
    text = "I was not honest last week about the drinking"
    deleted = await client.send_text(ada.room_id, text)
    status, _ = await client.raw(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(ada.room_id)}/redact/{quote(deleted)}/t1",
        {"reason": "oops"},
    )
    assert status == 200
    kept = await client.send_text(ada.room_id, "See you Thursday")

    # Care staff restore it with the link Element copies; it comes back as a notice.
    link = f"https://matrix.to/#/{ada.room_id}/{deleted}?via=localhost"
    command = await care.send_text(care_mgmt, f"!restore {link}")
    reply = await care.wait_for(_answer_to(care_mgmt, command), timeout=20)
    assert "Restored the message from" in reply["content"]["body"], reply
    assert f"from {ada.initials} at " in reply["content"]["body"]
    restored = await client.wait_for(from_bot(ada.room_id, "Restored: message from"), timeout=20)
    body = restored["content"]["body"]
    assert body.startswith(f"Restored: message from {ada.initials} at ") and body.endswith(text)
    assert restored["content"]["msgtype"] == "m.notice"
    rows = await alcove_db.fetch(
        "SELECT actor, target, room_id, detail FROM audit WHERE action = 'message.restored'"
    )
    assert [(r["actor"], r["target"], r["room_id"]) for r in rows] == [
        (CARE, ada.user_id, ada.room_id)
    ]
    assert deleted in str(rows[0]["detail"]) and "drinking" not in str(rows[0]["detail"])

    # Refused, with the reason: a message that is not deleted; a therapist; not a link.
    await care.send_text(care_mgmt, f"!restore https://matrix.to/#/{ada.room_id}/{kept}")
    await care.wait_for(from_bot(care_mgmt, "is not deleted"), timeout=20)
    await therapist.send_text(mgmt, f"!restore {link}")
    await therapist.wait_for(from_bot(mgmt, "!restore"), timeout=20)
    await care.send_text(care_mgmt, "!restore the one from yesterday")
    await care.wait_for(from_bot(care_mgmt, "not a link to a message"), timeout=20)
    assert len(await alcove_db.fetch("SELECT 1 FROM audit WHERE action = 'message.restored'")) == 1

    # Read indicators: Alcove turned the therapist's "Send read receipts" off (Element's
    # account setting); with it, a client sees no receipt of theirs, and they see the client's.
    nio_therapist = await NioUser(synapse.homeserver_url, THERAPIST).login(passwords[THERAPIST])
    nio_client = await NioUser(synapse.homeserver_url, ada.user_id).login(ada.password)
    try:
        status, settings = await _account_data(nio_therapist, "im.vector.web.settings")
        assert status == 200 and settings["sendReadReceipts"] is False
        await _read_as_element(nio_therapist, ada.room_id, kept)  # the therapist reads
        await _read_as_element(nio_client, ada.room_id, restored["event_id"])  # the client reads
        seen_by_client = await _receipts(nio_client, ada.room_id)
        seen_by_therapist = await _receipts(nio_therapist, ada.room_id)
        print(f"MEASURE client sees {seen_by_client}; therapist sees {seen_by_therapist}")
        assert (ada.user_id, "m.read", restored["event_id"]) in seen_by_client  # its own
        assert not [r for r in seen_by_client if r[0] == THERAPIST]
        assert (ada.user_id, "m.read", restored["event_id"]) in seen_by_therapist
        assert (THERAPIST, "m.read.private", kept) in seen_by_therapist  # only to themselves
    finally:
        await nio_therapist.close()
        await nio_client.close()

    # The therapist turns "Send read receipts" back on in Element: the homeserver module puts
    # it off again before the request returns (their other settings stay).
    path = f"/_matrix/client/v3/user/{quote(THERAPIST)}/account_data/im.vector.web.settings"
    status, _ = await therapist.raw("PUT", path, {"sendReadReceipts": True, "theme": "dark"})
    assert status == 200
    status, settings = await therapist.raw("GET", path)
    assert settings == {"sendReadReceipts": False, "theme": "dark"}
