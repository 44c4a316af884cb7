"""bridge/crypto/seams.py: the inbox-side seam. An encrypted event is decrypted before
dispatch; one whose room key has not arrived waits (inbox.Deferred keyed by its session); one
that can never be decrypted goes on as it is (so "I can't read this" is still said); the bot's
own encrypted echo is not dispatched; state events reach the crypto first."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.crypto.machine import KeysNotYet, Undecryptable, _Machine
from bridge.crypto.seams import Decrypting, wait_key
from bridge.inbox import Deferred

BOT = "@alcove:x"


class StubCrypto:
    bot = BOT

    def __init__(self, outcome: Exception | dict[str, Any]) -> None:
        self.outcome = outcome
        self.states: list[str] = []

    async def on_state(self, event: dict[str, Any]) -> None:
        self.states.append(event["type"])

    async def decrypt(self, event: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def encrypted(sender: str = "@t:x") -> dict[str, Any]:
    return {
        "type": "m.room.encrypted",
        "event_id": "$e",
        "room_id": "!r:x",
        "sender": sender,
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "session_id": "S", "ciphertext": "…"},
    }


def seam(crypto: StubCrypto) -> tuple[Decrypting, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def handler(event: dict[str, Any]) -> None:
        seen.append(event)

    return Decrypting(crypto, handler, key_wait_seconds=3600), seen  # type: ignore[arg-type]


async def test_decrypted_before_dispatch() -> None:
    plain = {**encrypted(), "type": "m.room.message", "content": {"body": "!ping"}}
    decrypting, seen = seam(StubCrypto(plain))
    await decrypting(encrypted())
    assert seen == [plain]


async def test_waits_for_its_room_key() -> None:
    decrypting, seen = seam(StubCrypto(KeysNotYet("!r:x", "S")))
    with pytest.raises(Deferred) as deferred:
        await decrypting(encrypted())
    assert deferred.value.key == wait_key("S") and deferred.value.give_up_seconds == 3600
    assert seen == []
    # The key never came: the event goes on as it is (the room is told it cannot be read).
    assert deferred.value.give_up is not None
    await deferred.value.give_up()
    assert [e["type"] for e in seen] == ["m.room.encrypted"]


async def test_never_decryptable_goes_on_as_it_is() -> None:
    decrypting, seen = seam(StubCrypto(Undecryptable("a replayed message index")))
    await decrypting(encrypted())
    assert [e["type"] for e in seen] == ["m.room.encrypted"]


async def test_own_echo_and_state() -> None:
    crypto = StubCrypto(AssertionError("not decrypted"))
    decrypting, seen = seam(crypto)
    await decrypting(encrypted(sender=BOT))
    assert seen == []
    member = {"type": "m.room.member", "state_key": "@c:x", "room_id": "!r:x", "sender": "@c:x"}
    await decrypting(member)
    assert crypto.states == ["m.room.member"] and seen == [member]


def test_an_arriving_session_is_announced() -> None:
    arrived: list[str] = []
    machine = _Machine.__new__(_Machine)  # only the session bookkeeping is exercised
    machine._inbound_session_waiters = {}
    machine.on_session = arrived.append
    machine._mark_session_received("S1")  # type: ignore[arg-type]
    assert arrived == ["S1"]
