"""Messages as clients send them (issue 9): pills, reply fallbacks, edits, threads, m.mentions,
read into the text the command parser sees; and where the answer goes."""

from __future__ import annotations

from typing import Any

import pytest

from bots.bot import answer_relation
from bots.commands.incoming import read_message, strip_reply_fallback, user_of_link
from bots.commands.parse import ParsedCommand, parse_command, pill_ids, show_pills

JD = "@c-0a1b2c:localhost"
JS = "@c-9f8e7d:localhost"


def pill(user: str, text: str, href: str | None = None) -> str:
    return f'<a href="{href or f"https://matrix.to/#/{user}"}">{text}</a>'


def element_message(body: str, html: str, **extra: Any) -> dict[str, Any]:
    return {
        "msgtype": "m.text",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": html,
        **extra,
    }


@pytest.mark.parametrize(
    ("href", "user"),
    [
        (f"https://matrix.to/#/{JD}", JD),
        ("https://matrix.to/#/%40c-0a1b2c%3Alocalhost", JD),
        (f"https://matrix.to/#/{JD}?via=localhost", JD),
        ("matrix:u/c-0a1b2c:localhost", JD),
        ("matrix:u/c-0a1b2c:localhost?action=chat", JD),
        ("https://matrix.to/#/!room:localhost", None),
        ("https://matrix.to/#/#alias:localhost", None),
        ("matrix:r/alias:localhost", None),
        ("https://example.org/@c-0a1b2c:localhost", None),
        ("https://matrix.to/#/@nocolon", None),
    ],
)
def test_user_links(href: str, user: str | None) -> None:
    assert user_of_link(href) == user


def test_pills_are_the_user_ids_and_their_text_is_never_read() -> None:
    # Element: the display name in `body`, the user ID only in the link.
    content = element_message(
        '!group create "Pill group" J.D. J.S.',
        "!group create &quot;Pill group&quot; "
        + f"{pill(JD, 'J.D.')} {pill(JS, 'J.S.', f'matrix:u/{JS[1:]}')}",
        **{"m.mentions": {"user_ids": [JD, JS]}},
    )
    incoming = read_message(content)
    assert incoming is not None
    parsed = parse_command(incoming.text, incoming.pills)
    assert isinstance(parsed, ParsedCommand)
    assert parsed.name == "group"
    words = [w.text for w in parsed.words]
    assert words[:2] == ["create", "Pill group"]
    assert [pill_ids(w, parsed.pills) for w in words[2:]] == [JD, JS]
    assert [show_pills(w, parsed.pills) for w in words[2:]] == ["J.D.", "J.S."]
    assert parsed.args == ("create", "Pill group", "J.D.", "J.S.")


def test_without_user_pills_the_body_is_read() -> None:
    # Markdown Element renders to HTML; the plain body is what the therapist typed.
    content = element_message("!schedule in 10m *see you*", "!schedule in 10m <em>see you</em>")
    incoming = read_message(content)
    assert incoming is not None and incoming.text == "!schedule in 10m *see you*"
    assert incoming.pills == ()


def test_m_mentions_change_nothing() -> None:
    plain = read_message({"msgtype": "m.text", "body": "!ping"})
    mentioned = read_message(
        {"msgtype": "m.text", "body": "!ping", "m.mentions": {"user_ids": ["@alcove:localhost"]}}
    )
    assert plain == mentioned


FALLBACK = "> <@alcove:localhost> pong\n> second line\n\n!ping"


def test_reply_fallback_in_body_is_stripped() -> None:
    assert strip_reply_fallback(FALLBACK) == "!ping"
    assert strip_reply_fallback("!ping\n> not a fallback") == "!ping\n> not a fallback"
    incoming = read_message(
        {
            "msgtype": "m.text",
            "body": FALLBACK,
            "m.relates_to": {"m.in_reply_to": {"event_id": "$pong"}},
        }
    )
    assert incoming is not None and incoming.text == "!ping"
    assert incoming.thread_root is None


def test_reply_fallback_in_formatted_body_is_stripped() -> None:
    html = (
        '<mx-reply><blockquote><a href="https://matrix.to/#/!r:localhost/$pong">In reply to</a>'
        f" {pill('@alcove:localhost', '@alcove:localhost')}<br>pong</blockquote></mx-reply>"
        f"!group add {pill(JD, 'J.D.')}"
    )
    incoming = read_message(element_message("> <@alcove:localhost> pong\n\n!group add J.D.", html))
    assert incoming is not None
    parsed = parse_command(incoming.text, incoming.pills)
    assert isinstance(parsed, ParsedCommand)
    assert parsed.name == "group"
    assert [pill_ids(w.text, parsed.pills) for w in parsed.words] == ["add", JD]


def test_an_edit_is_read_from_its_new_content() -> None:
    incoming = read_message(
        {
            "msgtype": "m.text",
            "body": "* !ping",
            "m.new_content": {"msgtype": "m.text", "body": "!ping"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$original"},
        },
        sent_at=5,
    )
    assert incoming is not None
    assert (incoming.text, incoming.edit_of, incoming.reply_to, incoming.sent_at) == (
        "!ping",
        "$original",
        "$original",
        5,
    )


def test_an_edit_without_new_content_is_not_read() -> None:
    content = {
        "msgtype": "m.text",
        "body": "* !ping",
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$original"},
    }
    assert read_message(content) is None


def test_a_thread_is_remembered_and_answered_in() -> None:
    content = {
        "msgtype": "m.text",
        "body": "!ping",
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": "$root",
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": "$previous"},
        },
    }
    incoming = read_message(content)
    assert incoming is not None and incoming.thread_root == "$root"
    assert answer_relation(incoming, "$cmd") == {
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": "$root",
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": "$cmd"},
        }
    }


def test_outside_a_thread_the_answer_replies_to_the_command() -> None:
    incoming = read_message({"msgtype": "m.text", "body": "!ping"})
    assert answer_relation(incoming, "$cmd") == {
        "m.relates_to": {"m.in_reply_to": {"event_id": "$cmd"}}
    }


def test_placeholder_characters_typed_by_the_sender_are_dropped() -> None:
    incoming = read_message({"msgtype": "m.text", "body": "!ping \ue0000\ue001"})
    assert incoming is not None and incoming.text == "!ping 0"
