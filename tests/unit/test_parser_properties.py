"""Property: whatever a client sends (body, formatted body, relations), the command path never
raises; every input is either not a command (ignored by rule) or gets an answer.

The real declarations of every feature are used, with handlers that only record, so the
declared arguments of every command are exercised."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bots.commands.args import Sub
from bots.commands.confirm import Confirmations
from bots.commands.context import CommandContext
from bots.commands.incoming import read_message
from bots.commands.registry import CommandRegistry
from bots.commands.router import CommandRouter
from bots.commands.spec import CommandSpec
from bots.features.away.commands import AwayCommands
from bots.features.blasts.commands import BlastCommands
from bots.features.conversations.commands import ConversationCommands
from bots.features.core.commands import COMMANDS
from bots.features.phrases.commands import PhraseCommands
from bots.features.schedule.commands import ScheduleCommands
from bots.features.sessions.commands import SessionCommands


class _Register:
    def register(self, name: str, action: object) -> None:
        return None


async def _ran(ctx: CommandContext) -> None:
    await ctx.reply(f"ran !{ctx.name}")


def _recording(spec: CommandSpec) -> CommandSpec:
    if spec.subs:
        return replace(spec, subs=tuple(replace(s, handler=_ran) for s in spec.subs))
    return replace(spec, handler=_ran)


def declared_specs() -> list[CommandSpec]:
    none = cast(Any, None)
    confirm = cast(Any, _Register())
    confirmations = Confirmations.__new__(Confirmations)
    confirmations._actions = {}
    specs = [
        *COMMANDS,
        *confirmations.specs(),
        *ConversationCommands(none, confirm).specs(),
        *BlastCommands(none, none, confirm).specs(),
        *ScheduleCommands(none, none).specs(),
        *PhraseCommands(none, none, none, none, none, none).specs(),
        *AwayCommands(none).specs(),
        *SessionCommands(none).specs(),
    ]
    return [_recording(s) for s in specs]


ROUTER = CommandRouter(CommandRegistry(declared_specs()))
NAMES = [s.name for s in ROUTER.registry.for_role("therapist")]

words = st.one_of(
    st.sampled_from(
        [
            "add",
            "list",
            "create",
            "remove",
            "in",
            "at",
            "every",
            "cancel",
            "on",
            "off",
            "until",
            "now",
            "for",
            "30m",
            "10m",
            "2026-12-01",
            "09:00",
            "#3",
            "3",
            "all",
            'group:"Tuesday circle"',
            '"quoted words"',
            "--email",
            "a@b.c",
            "monday",
            '"',
            "\\",
            "“curly”",
            "J.D.",
            "@c-1:localhost",
            "O'Neil",
            "\n",
            "> quoted",
            "²",
            "#٣",
            "٣m",
        ]
    ),
    st.text(max_size=12),
)
FORMS = [
    (spec.name, sub.name or "")
    for spec in ROUTER.registry.for_role("therapist")
    for sub in spec.forms
]
command_lines = st.one_of(
    st.builds(
        lambda name, ws: " ".join([f"!{name}", *ws]),
        st.sampled_from([*NAMES, "nope", "PING"]),
        st.lists(words, max_size=8),
    ),
    # Each declared form, with words after it: every argument kind gets odd values.
    st.builds(
        lambda form, ws: " ".join([f"!{form[0]}", form[1], *ws]),
        st.sampled_from(FORMS),
        st.lists(words, max_size=4),
    ),
)
bodies = st.one_of(command_lines, st.text(max_size=80))
links = st.sampled_from(
    [
        "https://matrix.to/#/@c-1:localhost",
        "https://matrix.to/#/%40c-2%3Alocalhost",
        "matrix:u/c-3:localhost",
        "https://matrix.to/#/!room:localhost",
        "matrix:u/",
        "",
    ]
)
html_bits = st.one_of(
    command_lines,
    st.text(max_size=20),
    st.builds(lambda href, text: f'<a href="{href}">{text}</a>', links, st.text(max_size=10)),
    st.sampled_from(
        [
            "<mx-reply>",
            "</mx-reply>",
            "<br>",
            "<p>",
            "</p>",
            "<a>",
            "</a>",
            "&quot;",
            "&amp;",
            "<![CDATA[",
            "<!--",
            "<",
            ">",
            "\ue000",
            "\ue0012\ue001",
        ]
    ),
)
formatted = st.builds("".join, st.lists(html_bits, max_size=8))
relations = st.one_of(
    st.none(),
    st.just({"m.in_reply_to": {"event_id": "$x"}}),
    st.just({"rel_type": "m.thread", "event_id": "$root", "is_falling_back": True}),
    st.builds(
        lambda new: {"rel_type": "m.replace", "event_id": "$orig", "_new": new},
        st.one_of(st.none(), command_lines),
    ),
    st.just({"rel_type": "m.thread"}),
    st.just("not a dict"),
)


def content_of(body: str, html: str | None, relation: Any, mentions: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if html is not None:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    if mentions:
        content["m.mentions"] = {"user_ids": ["@c-1:localhost"]}
    if isinstance(relation, dict) and "_new" in relation:
        relation = dict(relation)
        new = relation.pop("_new")
        if new is not None:
            content["m.new_content"] = {"msgtype": "m.text", "body": new}
    if relation is not None:
        content["m.relates_to"] = relation
    return content


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies, st.one_of(st.none(), formatted), relations, st.booleans())
@example("!schedule cancel ²", None, None, False)  # "²".isdigit() but int("²") fails
@example("!session cancel #٣", None, None, False)
async def test_every_message_is_answered_or_ignored_by_rule(
    body: str, html: str | None, relation: Any, mentions: bool
) -> None:
    incoming = read_message(content_of(body, html, relation, mentions), sent_at=0)
    if incoming is None:
        return  # no text body (or an edit without new content): ignored by rule
    replies: list[str] = []

    async def reply(text: str) -> None:
        replies.append(text)

    handled = await ROUTER.handle(
        incoming, sender="@t:x", role="therapist", room_id="!r:x", event_id="$e", reply=reply
    )
    if not handled:
        # Ignored by rule: not a command, or an edit of nothing this router recorded.
        assert (
            incoming.edit_of is not None
            or not incoming.text.strip().startswith("!")
            or (len(incoming.text.strip()) < 2 or incoming.text.strip()[1].isspace())
        )
        assert replies == []
    else:
        assert len(replies) == 1, replies
        assert "Traceback" not in replies[0] and "Reference" not in replies[0]


def test_every_declared_form_has_a_handler() -> None:
    for spec in ROUTER.registry.for_role("therapist"):
        for sub in spec.forms:
            assert isinstance(sub, Sub) and sub.handler is not None
