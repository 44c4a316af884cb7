"""Issue 9 items 2 to 5 on a real Synapse, the therapist using matrix-nio — a client nobody on this
project wrote — and sending what Element sends: pills, replies with a fallback, edits, threads.

What the therapist sees in each case:
- pills: `!group create "Pill group" <J.D.> <J.S.>` creates the group with exactly the two
  clients linked, although their visible text matches no client by name;
- a reply with a fallback: the quoted lines are not read; the command runs;
- edits: a typo fixed by an edit runs; an edit of a command that ran is answered "Edits to a
  command are not applied … send the command again", and nothing changes;
- threads: the answer is in the thread (and falls back to a reply to the command); outside a
  thread, every answer is a reply to the command it answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from bridge.devstack import DevStack
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.nio_client import Event, NioUser
from tests.support.scenario import BOT, THERAPIST, add_client, management_room

HTML = "org.matrix.custom.html"


@pytest.fixture
async def nio_therapist(
    alcove: AlcoveProcess, synapse: DevStack, passwords: dict[str, str]
) -> AsyncIterator[NioUser]:
    user = await NioUser(synapse.homeserver_url, THERAPIST).login(passwords[THERAPIST])
    yield user
    await user.close()


def bot_says(room: str, contains: str, replying_to: str | None = None) -> Any:
    def match(e: Event) -> bool:
        content = e.get("content", {})
        if e.get("room_id") != room or e.get("sender") != BOT:
            return False
        if contains not in str(content.get("body", "")):
            return False
        if replying_to is None:
            return True
        relates = content.get("m.relates_to") or {}
        return bool((relates.get("m.in_reply_to") or {}).get("event_id") == replying_to)

    return match


def pill(user_id: str, text: str, uri: bool = False) -> str:
    href = f"matrix:u/{user_id[1:]}" if uri else f"https://matrix.to/#/{user_id}"
    return f'<a href="{href}">{text}</a>'


async def test_a_command_with_pills(
    nio_therapist: NioUser, therapist: MatrixUser, synapse: DevStack, http: aiohttp.ClientSession
) -> None:
    mgmt = await management_room(therapist)
    jane = await add_client(therapist, mgmt, "Jane Doe")
    jake = await add_client(therapist, mgmt, "Jake Dunn")  # also J.D.-ish: must not be picked
    john = await add_client(therapist, mgmt, "John Smith")

    # As Element Web sends it: display names in `body`, user IDs only in the links.
    event = await nio_therapist.send(
        mgmt,
        {
            "msgtype": "m.text",
            "body": f'!group create "Pill group" {jane.initials} {john.initials}',
            "format": HTML,
            "formatted_body": '!group create "Pill group" '
            f"{pill(jane.user_id, jane.initials)} {pill(john.user_id, john.initials, uri=True)}",
            "m.mentions": {"user_ids": [jane.user_id, john.user_id]},
        },
    )
    created = await nio_therapist.wait_for(
        bot_says(mgmt, "Created 'Pill group'", replying_to=event), timeout=30
    )
    found = re.search(r"matrix\.to/#/(!\S+)", created["content"]["body"])
    assert found, created
    status, members = await therapist.raw(
        "GET", f"/_matrix/client/v3/rooms/{quote(found[1])}/joined_members"
    )
    assert status == 200
    joined = set(members["joined"])
    assert {jane.user_id, john.user_id} <= joined
    assert jake.user_id not in joined
    # The visible text alone is not a client name: without pills it is refused.
    await nio_therapist.send(mgmt, {"msgtype": "m.text", "body": "!session J.D. now"})
    await nio_therapist.wait_for(bot_says(mgmt, "No client of yours matches 'J.D.'"))


async def test_a_command_sent_as_a_reply_with_a_fallback(
    nio_therapist: NioUser, therapist: MatrixUser
) -> None:
    mgmt = await management_room(therapist)
    first = await nio_therapist.send(mgmt, {"msgtype": "m.text", "body": "!ping"})
    pong = await nio_therapist.wait_for(bot_says(mgmt, "pong", replying_to=first))

    # A reply to the bot's "pong", with the quoted fallback clients put in front.
    second = await nio_therapist.send(
        mgmt,
        {
            "msgtype": "m.text",
            "body": f"> <{BOT}> pong\n\n!ping",
            "format": HTML,
            "formatted_body": (
                f'<mx-reply><blockquote><a href="https://matrix.to/#/{mgmt}/{pong["event_id"]}">'
                f'In reply to</a> <a href="https://matrix.to/#/{BOT}">{BOT}</a><br>pong'
                "</blockquote></mx-reply>!ping"
            ),
            "m.relates_to": {"m.in_reply_to": {"event_id": pong["event_id"]}},
        },
    )
    await nio_therapist.wait_for(bot_says(mgmt, "pong", replying_to=second))


def edit(original: str, body: str) -> dict[str, Any]:
    return {
        "msgtype": "m.text",
        "body": f"* {body}",
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    }


async def test_edits_of_commands(nio_therapist: NioUser, therapist: MatrixUser) -> None:
    mgmt = await management_room(therapist)

    # A typo: the unknown command did not run, so the corrected text runs.
    typo = await nio_therapist.send(mgmt, {"msgtype": "m.text", "body": "!pnig"})
    await nio_therapist.wait_for(bot_says(mgmt, "Unknown command !pnig", replying_to=typo))
    await nio_therapist.send(mgmt, edit(typo, "!ping"))
    await nio_therapist.wait_for(bot_says(mgmt, "pong", replying_to=typo))

    # A changed argument of a command that ran: answered, not applied.
    saved = await nio_therapist.send(
        mgmt, {"msgtype": "m.text", "body": "!phrase add hello Hi there"}
    )
    await nio_therapist.wait_for(bot_says(mgmt, "Saved phrase 'hello'", replying_to=saved))
    await nio_therapist.send(mgmt, edit(saved, "!phrase add hello Hi again"))
    await nio_therapist.wait_for(
        bot_says(mgmt, "Edits to a command are not applied", replying_to=saved)
    )
    await nio_therapist.send(mgmt, {"msgtype": "m.text", "body": "!phrase show hello"})
    shown = await nio_therapist.wait_for(bot_says(mgmt, "Hi "))
    assert shown["content"]["body"] == "Hi there"


async def test_a_command_in_a_thread_is_answered_in_that_thread(
    nio_therapist: NioUser, therapist: MatrixUser
) -> None:
    mgmt = await management_room(therapist)
    root = await nio_therapist.send(mgmt, {"msgtype": "m.text", "body": "notes for today"})
    command = await nio_therapist.send(
        mgmt,
        {
            "msgtype": "m.text",
            "body": "!ping",
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": root},
            },
        },
    )
    pong = await nio_therapist.wait_for(bot_says(mgmt, "pong", replying_to=command))
    relates = pong["content"]["m.relates_to"]
    assert relates["rel_type"] == "m.thread" and relates["event_id"] == root
    assert relates["is_falling_back"] is True
    # Synapse files it under the thread too.
    status, thread = await therapist.raw(
        "GET",
        f"/_matrix/client/v1/rooms/{quote(mgmt)}/relations/{quote(root)}/m.thread",
    )
    assert status == 200
    assert pong["event_id"] in [e["event_id"] for e in thread["chunk"]]
