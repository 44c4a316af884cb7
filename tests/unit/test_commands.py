"""bots/commands: parsing, the registry, the router, and the core !ping / !help commands."""

from __future__ import annotations

import logging
import re

import pytest

from bots.commands.args import CLIENT, WORD, Arg
from bots.commands.context import CommandContext
from bots.commands.parse import ParsedCommand, ParseError, parse_command
from bots.commands.registry import CommandRegistry
from bots.commands.router import CommandRouter
from bots.commands.spec import STAFF, CommandSpec
from bots.features.core.commands import COMMANDS as CORE_COMMANDS
from bridge.matrix.gateway import TemporaryError

SENDER = "@alice:clinic.test"
ROOM = "!room:clinic.test"


class Recorder:
    """A reply function that records what it was asked to say."""

    def __init__(self) -> None:
        self.replies: list[str] = []

    async def __call__(self, text: str) -> None:
        self.replies.append(text)

    @property
    def only(self) -> str:
        assert len(self.replies) == 1, self.replies
        return self.replies[0]


class Calls:
    def __init__(self) -> None:
        self.contexts: list[CommandContext] = []

    async def record(self, ctx: CommandContext) -> None:
        self.contexts.append(ctx)
        await ctx.reply(f"ok {' | '.join(ctx.args)}")


async def boom(ctx: CommandContext) -> None:
    raise RuntimeError("secret patient detail")


async def homeserver_down(ctx: CommandContext) -> None:
    raise TemporaryError("homeserver said 502", status=502)


def build_router(calls: Calls) -> CommandRouter:
    registry = CommandRegistry(
        (
            *CORE_COMMANDS,
            CommandSpec(
                "note",
                calls.record,
                "write a note",
                (Arg("client", CLIENT), Arg("text", WORD)),
                roles=("therapist",),
            ),
            CommandSpec("staffonly", calls.record, "for staff", roles=STAFF),
            CommandSpec("boom", boom, "always fails"),
            CommandSpec("down", homeserver_down, "the homeserver is down"),
        )
    )
    return CommandRouter(registry)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def router(calls: Calls) -> CommandRouter:
    return build_router(calls)


async def run(router: CommandRouter, body: str, role: str | None = "therapist") -> Recorder:
    reply = Recorder()
    handled = await router.handle(
        body, sender=SENDER, role=role, room_id=ROOM, event_id="$event", reply=reply
    )
    assert handled is True
    return reply


# --------------------------------------------------------------------------- parse_command


@pytest.mark.parametrize("body", ["hello", "", "   ", "!", "! ping", "ping!", "!\tping"])
def test_not_a_command(body: str) -> None:
    assert parse_command(body) is None


def test_plain_command_with_arguments() -> None:
    assert parse_command("  !note  alice   hello  ") == ParsedCommand(
        "note", ("alice", "hello"), "alice   hello"
    )


def test_command_without_arguments() -> None:
    assert parse_command("!ping") == ParsedCommand("ping", (), "")


def test_shell_quoting_keeps_words_together() -> None:
    parsed = parse_command('!note alice "two words"')
    assert isinstance(parsed, ParsedCommand)
    assert parsed.args == ("alice", "two words")
    assert parsed.raw_args == 'alice "two words"'


def test_unbalanced_quote_is_a_parse_error_value() -> None:
    parsed = parse_command('!note alice "unfinished')
    assert isinstance(parsed, ParseError)
    assert parsed.name == "note"
    assert "quotes" in parsed.reason


def test_command_name_is_case_insensitive() -> None:
    parsed = parse_command("!PiNg")
    assert isinstance(parsed, ParsedCommand)
    assert parsed.name == "ping"


def test_newline_after_the_name_starts_the_arguments() -> None:
    parsed = parse_command("!note\nalice hi")
    assert isinstance(parsed, ParsedCommand)
    assert parsed.name == "note"
    assert parsed.args == ("alice", "hi")


# --------------------------------------------------------------------------- registry and spec


def test_registry_refuses_a_duplicate_name(calls: Calls) -> None:
    registry = CommandRegistry([CommandSpec("x", calls.record, "one")])
    with pytest.raises(ValueError, match="declared twice"):
        registry.add(CommandSpec("x", calls.record, "two"))


def test_role_phrase_and_usage_line(calls: Calls) -> None:
    spec = CommandSpec("x", calls.record, "h", (Arg("a"),), roles=("therapist", "care", "admin"))
    assert spec.role_phrase() == "therapists, care staff and admins"
    assert spec.usage_line == "!x <a>"
    assert CommandSpec("y", calls.record, "h").usage_line == "!y"


# --------------------------------------------------------------------------- router


async def test_not_a_command_is_not_handled(router: CommandRouter) -> None:
    reply = Recorder()
    handled = await router.handle(
        "just chatting", sender=SENDER, role="client", room_id=ROOM, event_id="$e", reply=reply
    )
    assert handled is False
    assert reply.replies == []


async def test_command_runs_with_a_context(router: CommandRouter, calls: Calls) -> None:
    reply = await run(router, '!NOTE alice "feeling better"')
    assert reply.only == "ok alice | feeling better"
    [ctx] = calls.contexts
    assert (ctx.sender, ctx.role, ctx.room_id, ctx.event_id) == (
        SENDER,
        "therapist",
        ROOM,
        "$event",
    )
    assert ctx.name == "note"
    assert ctx.args == ("alice", "feeling better")


async def test_unknown_command(router: CommandRouter) -> None:
    reply = await run(router, "!frobnicate now")
    assert reply.only == "Unknown command !frobnicate. Send !help for the commands you can use."


async def test_sender_without_a_role_gets_a_polite_refusal(
    router: CommandRouter, calls: Calls
) -> None:
    reply = await run(router, "!note alice hi", role=None)
    assert reply.only == "Sorry, I only take commands from this practice's staff and clients."
    assert calls.contexts == []


async def test_refused_role_names_who_may(router: CommandRouter, calls: Calls) -> None:
    reply = await run(router, "!note alice hi", role="client")
    assert reply.only == "Only therapists can use !note."
    assert calls.contexts == []


async def test_refused_role_is_checked_before_arguments(router: CommandRouter) -> None:
    reply = await run(router, '!note "broken', role="care")
    assert reply.only == "Only therapists can use !note."


@pytest.mark.parametrize("body", ["!note alice hi there", "!note alice", "!note"])
async def test_wrong_number_of_arguments_shows_usage(
    router: CommandRouter, calls: Calls, body: str
) -> None:
    reply = await run(router, body)
    assert reply.only == "Usage: !note <client> <text>"
    assert calls.contexts == []


async def test_parse_error_shows_reason_and_usage(router: CommandRouter, calls: Calls) -> None:
    reply = await run(router, '!note alice "unfinished')
    assert "check your quotes" in reply.only
    assert reply.only.endswith("Usage: !note <client> <text>")
    assert calls.contexts == []


async def test_unexpected_error_gives_a_reference_and_no_details(
    router: CommandRouter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="alcove.commands"):
        reply = await run(router, "!boom")
    text = reply.only
    match = re.search(r"Reference: ([0-9a-f]+)$", text)
    assert match is not None, text
    assert "secret patient detail" not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    # The details go to the log, under the same reference.
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert match.group(1) in record.getMessage()
    assert record.exc_info is not None


async def test_references_differ_between_failures(router: CommandRouter) -> None:
    first = (await run(router, "!boom")).only
    second = (await run(router, "!boom")).only
    assert first != second


async def test_temporary_error_propagates_for_a_retry(router: CommandRouter) -> None:
    reply = Recorder()
    with pytest.raises(TemporaryError):
        await router.handle(
            "!down", sender=SENDER, role="client", room_id=ROOM, event_id="$e", reply=reply
        )
    assert reply.replies == []


# --------------------------------------------------------------------------- core commands


async def test_ping_replies_pong(router: CommandRouter) -> None:
    assert (await run(router, "!ping", role="client")).only == "pong"


async def test_ping_takes_no_arguments(router: CommandRouter) -> None:
    assert (await run(router, "!ping loudly", role="client")).only == "Usage: !ping"


async def test_help_lists_only_what_a_client_may_use(router: CommandRouter) -> None:
    text = (await run(router, "!help", role="client")).only
    lines = text.splitlines()
    assert lines[0] == "Commands you can use:"
    names = {line.split(" ", 1)[0] for line in lines[1:]}
    assert names == {"!boom", "!down", "!help", "!ping"}
    assert "!ping — check that Alcove is listening" in lines


async def test_help_lists_staff_commands_for_a_therapist(router: CommandRouter) -> None:
    text = (await run(router, "!help", role="therapist")).only
    assert "!note <client> <text> — write a note" in text.splitlines()
    assert "!staffonly" in text


async def test_help_for_care_staff_leaves_out_therapist_commands(router: CommandRouter) -> None:
    text = (await run(router, "!help", role="care")).only
    assert "!staffonly" in text
    assert "!note" not in text


def test_apostrophes_are_letters_and_double_quotes_group() -> None:
    parsed = parse_command("!client add Jane O'Neil")
    assert isinstance(parsed, ParsedCommand)
    assert parsed.args == ("add", "Jane", "O'Neil")
    parsed = parse_command("!group create \u201cTuesday circle\u201d Jane")
    assert isinstance(parsed, ParsedCommand)
    assert parsed.args == ("create", "Tuesday circle", "Jane")
