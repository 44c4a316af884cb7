"""Issue 12 (notify, restore, read indicators) on a real Synapse, driven as Element would:
clients' email notifications caught by a local SMTP sink (aiosmtpd), a deleted message restored
by care staff, and read receipts as a client's and a therapist's clients see them."""

from __future__ import annotations

import asyncio
import email
import email.policy
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

from bridge.config import load_config
from bridge.devstack import DevStack
from bridge.doctor import synapse_settings
from bridge.notify_email import CHECK_NAME
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.scenario import (
    from_bot,
    login,
    management_room,
    parse_added,
)


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

    async def wait_for(self, to: str, after: float, timeout: float = 30.0) -> Mail:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for mail in self.mails:
                if to in mail.to and mail.at >= after:
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
    assert [m for m in smtp.mails if address in m.to] == [first]

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
