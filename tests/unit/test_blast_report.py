"""The blast report: counts first, failures named (up to a limit), the rest counted by reason."""

from __future__ import annotations

from bots.bot_types import MAX_BODY_BYTES
from bots.features.blasts.commands import LISTED_FAILURES, report
from bots.features.blasts.service import BlastResult
from bots.features.conversations.repo import Client


def client(i: int) -> Client:
    return Client(f"@c-{i:06d}:localhost", "@t:localhost", f"Client {i:04d} Name", "C.N.", None)


def test_everything_delivered() -> None:
    result = BlastResult(delivered=[client(1), client(2)])
    assert report(result) == "Delivered to 2 of 2 clients; failed: 0."


def test_failures_are_named_with_the_reason() -> None:
    result = BlastResult(delivered=[client(1)], failed=[(client(2), "not in room")])
    assert report(result).splitlines() == [
        "Delivered to 1 of 2 clients; failed: 1.",
        "• Client 0002 Name (@c-000002:localhost): not in room",
    ]


def test_many_failures_fit_one_message_and_are_all_counted() -> None:
    failed = [(client(i), "not accepted" if i % 3 else "no conversation room") for i in range(5000)]
    text = report(BlastResult(failed=failed))
    lines = text.splitlines()
    assert lines[0] == "Delivered to 0 of 5000 clients; failed: 5000."
    assert len(lines) == 1 + LISTED_FAILURES + 2
    counted = sum(int(line.split()[1]) for line in lines[1 + LISTED_FAILURES :])
    assert counted == 5000 - LISTED_FAILURES
    assert len(text.encode()) < MAX_BODY_BYTES


def test_clients_not_signed_in_yet_are_told_apart_and_counted() -> None:
    """Encrypted 1:1s of clients without a device: held until their first sign-in."""
    held = [client(i) for i in range(3000)]
    text = report(BlastResult(delivered=[client(9999)], held=held))
    lines = text.splitlines()
    assert lines[0] == "Delivered to 1 of 3001 clients; failed: 0."
    assert lines[1].startswith("3000 will get it when they first sign in")
    assert "Client 0000 Name" in lines[1]
    assert lines[1].endswith(f" and {3000 - LISTED_FAILURES} more")
    assert len(text.encode()) < MAX_BODY_BYTES
