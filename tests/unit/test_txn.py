"""bridge/matrix/outbox.py txn_id_for: deterministic transaction ids."""

from __future__ import annotations

from bridge.matrix.outbox import txn_id_for

THERAPIST = "@alice:clinic.test"
BOT = "@alcove:clinic.test"


def test_same_sender_and_key_give_the_same_id() -> None:
    assert txn_id_for(THERAPIST, "blast:7:!room") == txn_id_for(THERAPIST, "blast:7:!room")


def test_id_differs_by_sender() -> None:
    assert txn_id_for(THERAPIST, "welcome:!room") != txn_id_for(BOT, "welcome:!room")


def test_id_differs_by_key() -> None:
    assert txn_id_for(BOT, "welcome:!room1") != txn_id_for(BOT, "welcome:!room2")


def test_sender_and_key_cannot_be_shifted_into_each_other() -> None:
    assert txn_id_for("@a:x", "b") != txn_id_for("@a:x" + "b", "")
    assert txn_id_for("@ab:x", "c") != txn_id_for("@a", "b:xc")


def test_id_is_a_short_url_safe_string() -> None:
    txn = txn_id_for(BOT, "a key with spaces/and/slashes?")
    assert txn.startswith("alcove.")
    suffix = txn.removeprefix("alcove.")
    assert len(suffix) == 40
    assert all(c in "0123456789abcdef" for c in suffix)
